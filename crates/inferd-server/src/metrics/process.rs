//! `process_*` series, as Prometheus client libraries export them, read from Linux's `/proc`
//! (absent elsewhere, never an error): CPU time, resident memory, open file descriptors, start
//! time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second of `/proc/<pid>/stat`'s times: 100 on every Linux architecture
/// inferd builds for (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads `/proc/self` on each scrape.
#[derive(Debug)]
pub struct ProcessCollector;

/// What `/proc/self` says.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Start time, seconds since the epoch.
    pub start_time_seconds: f64,
}

/// Parses `/proc/self/stat`'s CPU ticks and start ticks, `/proc/self/status`'s `VmRSS`, and the
/// boot time from `/proc/stat`.
pub fn parse(stat: &str, status: &str, proc_stat: &str) -> Option<ProcessStats> {
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so field k is f[k - 3].
    let utime: f64 = f.get(14 - 3)?.parse().ok()?;
    let stime: f64 = f.get(15 - 3)?.parse().ok()?;
    let start_ticks: f64 = f.get(22 - 3)?.parse().ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let boot: f64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())?;
    Some(ProcessStats {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        resident_bytes: rss_kb * 1024,
        open_fds: 0,
        start_time_seconds: boot + start_ticks / TICKS_PER_SECOND,
    })
}

/// The boot time to the clock tick from `/proc/uptime` (seconds since boot, to 10 ms) and the
/// wall clock `now`; `/proc/stat`'s `btime` is whole seconds, which puts the start time up to a
/// second early (too coarse to time a cold start by).
pub fn precise_boot(uptime: &str, now: f64) -> Option<f64> {
    let up: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    Some(now - up)
}

fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let mut proc_stat = std::fs::read_to_string("/proc/stat").ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    if let Some(boot) = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| precise_boot(&u, now))
    {
        // Boot time to the tick in place of the whole second (the parse reads it from here).
        proc_stat = format!("btime {boot}\n{proc_stat}");
    }
    let mut p = parse(&stat, &status, &proc_stat)?;
    p.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    Some(p)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(e.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent.",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(p.resident_bytes as i64);
        rss.encode(e.encode_descriptor(
            "process_resident_memory",
            "Resident memory size.",
            Some(&Unit::Bytes),
            rss.metric_type(),
        )?)?;
        let fds = ConstGauge::new(p.open_fds as i64);
        fds.encode(e.encode_descriptor(
            "process_open_fds",
            "Open file descriptors.",
            None,
            fds.metric_type(),
        )?)?;
        let start = ConstGauge::new(p.start_time_seconds);
        start.encode(e.encode_descriptor(
            "process_start_time",
            "Start time of the process since the Unix epoch.",
            Some(&Unit::Seconds),
            start.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_even_with_spaces_in_the_command_name() {
        let stat = "4242 (inferd serve) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 \
                    12345 100000 2000 18446744073709551615";
        let status = "Name:\tinferd\nVmRSS:\t   2048 kB\nThreads:\t9\n";
        let proc_stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        let p = parse(stat, status, proc_stat).expect("parsed");
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.resident_bytes, 2048 * 1024);
        assert_eq!(p.start_time_seconds, 1_700_000_000.0 + 123.45);
    }

    #[test]
    fn this_process_reads_on_linux() {
        let p = read().expect("/proc on Linux");
        assert!(p.resident_bytes > 0 && p.open_fds > 0, "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(p.start_time_seconds <= now + 0.02, "{p:?}");
    }

    #[test]
    fn the_boot_time_comes_from_uptime_to_the_tick() {
        let boot = precise_boot("12345.67 24000.10\n", 1_700_012_345.9).unwrap();
        assert!((boot - 1_700_000_000.23).abs() < 1e-6, "{boot}");
        assert_eq!(precise_boot("", 1.0), None);
    }
}
