//! The console's live charts: the last 15 minutes of requests/s, errors/s, p50/p99 latency
//! and queue depth, per model and for the whole server, kept in-process (no Prometheus).
//!
//! Pure and synchronous: [`Timeline::push`] takes the engine's snapshot and a clock, and turns
//! the difference from the previous snapshot into one point per series. A ring of fixed length
//! per series bounds the memory whatever the traffic (450 points of 24 bytes each, for at most
//! [`MAX_MODELS`] models); the signals task pushes every [`STEP_SECS`] seconds.

use std::collections::{BTreeMap, HashMap, VecDeque};

use inferd_core::engine::VersionMetrics;
use inferd_core::stats::{Histogram, LATENCY_BUCKETS_S};
use serde::Serialize;

/// Seconds between two points.
pub const STEP_SECS: u64 = 2;
/// Points kept per series: 15 minutes.
pub const POINTS: usize = (15 * 60 / STEP_SECS) as usize;
/// Models with a series of their own; the server's totals count every model.
pub const MAX_MODELS: usize = 256;

/// One point of a series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the Unix epoch.
    pub t: f64,
    /// Requests finished per second since the previous point.
    pub rps: f32,
    /// Failed requests per second.
    pub errors: f32,
    /// Median end-to-end latency of those requests, milliseconds (0 without requests).
    pub p50_ms: f32,
    /// 99th percentile, milliseconds.
    pub p99_ms: f32,
    /// Requests waiting in queues at the point.
    pub queue: u32,
}

/// Running totals of one model (every version summed) at the last push.
#[derive(Clone, Copy, Default)]
struct Totals {
    finished: u64,
    failed: u64,
    latency: Histogram,
    queue: u32,
}

impl Totals {
    fn add(&mut self, v: &VersionMetrics) {
        self.queue = self.queue.saturating_add(v.queue_depth as u32);
        if let Some(s) = &v.stats {
            self.finished += s.infer.success.count + s.infer.fail.count;
            self.failed += s.infer.fail.count;
            for (a, b) in self
                .latency
                .counts
                .iter_mut()
                .zip(s.request_duration.counts)
            {
                *a += b;
            }
            self.latency.count += s.request_duration.count;
        }
    }
}

/// The quantile `q` of the observations in `counts` (per bucket of [`LATENCY_BUCKETS_S`], the
/// unbounded one last), interpolated linearly inside its bucket as Prometheus's
/// `histogram_quantile` does; in milliseconds. `None` without observations.
pub fn quantile_ms(counts: &[u64], q: f64) -> Option<f64> {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * n as f64;
    let mut below = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && (below + c) as f64 >= rank {
            let lo = if i == 0 {
                0.0
            } else {
                LATENCY_BUCKETS_S[i - 1]
            };
            let Some(&hi) = LATENCY_BUCKETS_S.get(i) else {
                // Past the last bound: the bound is all that can be said.
                return Some(lo * 1e3);
            };
            let within = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
            return Some((lo + (hi - lo) * within) * 1e3);
        }
        below += c;
    }
    LATENCY_BUCKETS_S.last().map(|b| b * 1e3)
}

fn point(t: f64, secs: f64, now: &Totals, before: &Totals) -> Point {
    let secs = secs.max(1e-3);
    let counts: Vec<u64> = now
        .latency
        .counts
        .iter()
        .zip(before.latency.counts)
        .map(|(a, b)| a.saturating_sub(b))
        .collect();
    Point {
        t,
        rps: (now.finished.saturating_sub(before.finished) as f64 / secs) as f32,
        errors: (now.failed.saturating_sub(before.failed) as f64 / secs) as f32,
        p50_ms: quantile_ms(&counts, 0.5).unwrap_or(0.0) as f32,
        p99_ms: quantile_ms(&counts, 0.99).unwrap_or(0.0) as f32,
        queue: now.queue,
    }
}

/// The server's and each model's series.
#[derive(Default)]
pub struct Timeline {
    last: Option<(f64, Totals, HashMap<String, Totals>)>,
    server: VecDeque<Point>,
    models: BTreeMap<String, VecDeque<Point>>,
}

fn push_capped(series: &mut VecDeque<Point>, p: Point) {
    if series.len() == POINTS {
        series.pop_front();
    }
    series.push_back(p);
}

impl Timeline {
    /// Adds a point per series from the engine's snapshot `versions`, taken at `t` (seconds
    /// since the epoch). The first push only sets the baseline. A model that is gone loses its
    /// series; a counter that went down (a version reloaded) counts from zero again.
    pub fn push(&mut self, t: f64, versions: &[VersionMetrics]) {
        let mut server = Totals::default();
        let mut per_model: HashMap<String, Totals> = HashMap::new();
        for v in versions {
            server.add(v);
            if per_model.len() < MAX_MODELS || per_model.contains_key(&v.model) {
                per_model.entry(v.model.clone()).or_default().add(v);
            }
        }
        if let Some((t0, before, models_before)) = &self.last {
            let secs = t - t0;
            push_capped(&mut self.server, point(t, secs, &server, before));
            self.models.retain(|m, _| per_model.contains_key(m));
            for (m, now) in &per_model {
                let prev = models_before.get(m).copied().unwrap_or_default();
                let prev = if prev.finished > now.finished {
                    Totals::default()
                } else {
                    prev
                };
                let series = self.models.entry(m.clone()).or_default();
                push_capped(series, point(t, secs, now, &prev));
            }
        }
        self.last = Some((t, server, per_model));
    }

    /// The whole server's series, oldest first.
    pub fn server(&self) -> Vec<Point> {
        self.server.iter().copied().collect()
    }

    /// One model's series, oldest first (empty if it has none).
    pub fn model(&self, model: &str) -> Vec<Point> {
        self.models
            .get(model)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The latest point of each model.
    pub fn latest(&self) -> BTreeMap<String, Point> {
        self.models
            .iter()
            .filter_map(|(m, s)| s.back().map(|p| (m.clone(), *p)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferd_core::engine::VersionState;
    use inferd_core::stats::VersionStats;
    use std::time::Duration;

    fn version(model: &str, ok: u64, failed: u64, each: Duration, queue: usize) -> VersionMetrics {
        let mut stats = VersionStats::default();
        stats.infer.success.count = ok;
        stats.infer.fail.count = failed;
        for _ in 0..ok + failed {
            stats.request_duration.observe(each);
        }
        VersionMetrics {
            model: model.into(),
            version: 1,
            state: VersionState::Ready,
            queue_depth: queue,
            inflight: 0,
            instances: 1,
            load_duration: None,
            start_phases: Vec::new(),
            stats: Some(stats),
            generator: None,
        }
    }

    #[test]
    fn a_point_is_the_rate_and_latency_of_the_requests_since_the_previous_one() {
        let mut t = Timeline::default();
        t.push(100.0, &[version("a", 10, 0, Duration::from_millis(1), 0)]);
        assert!(t.server().is_empty(), "the first push is the baseline");
        t.push(102.0, &[version("a", 30, 4, Duration::from_millis(1), 3)]);
        let p = t.server()[0];
        assert_eq!(p.rps, 12.0);
        assert_eq!(p.errors, 2.0);
        assert_eq!(p.queue, 3);
        // Every request took 1 ms: the bucket (0.5 ms, 1 ms].
        assert!(p.p50_ms > 0.5 && p.p50_ms <= 1.0, "{p:?}");
        assert!(p.p99_ms > 0.5 && p.p99_ms <= 1.0, "{p:?}");
        assert_eq!(t.model("a"), vec![p]);
    }

    #[test]
    fn p99_sees_the_slow_tail_and_p50_does_not() {
        let mut counts = [0u64; LATENCY_BUCKETS_S.len() + 1];
        counts[3] = 98; // (0.5 ms, 1 ms]
        counts[12] = 2; // (0.5 s, 1 s]
        let p50 = quantile_ms(&counts, 0.5).unwrap();
        let p99 = quantile_ms(&counts, 0.99).unwrap();
        assert!(p50 <= 1.0, "{p50}");
        assert!(p99 > 500.0 && p99 <= 1000.0, "{p99}");
        assert_eq!(quantile_ms(&[0; 17], 0.5), None);
    }

    #[test]
    fn series_are_capped_at_fifteen_minutes() {
        let mut t = Timeline::default();
        for i in 0..(POINTS + 50) {
            t.push(
                i as f64 * STEP_SECS as f64,
                &[version("a", i as u64, 0, Duration::from_millis(2), 0)],
            );
        }
        assert_eq!(t.server().len(), POINTS);
        assert_eq!(t.model("a").len(), POINTS);
        assert_eq!(
            t.server().last().unwrap().t,
            (POINTS + 49) as f64 * STEP_SECS as f64
        );
    }

    #[test]
    fn a_reloaded_model_counts_from_zero_and_a_removed_one_loses_its_series() {
        let mut t = Timeline::default();
        t.push(0.0, &[version("a", 100, 0, Duration::from_millis(1), 0)]);
        t.push(2.0, &[version("a", 4, 0, Duration::from_millis(1), 0)]);
        assert_eq!(t.model("a")[0].rps, 2.0);
        t.push(4.0, &[]);
        assert!(t.model("a").is_empty());
        assert!(t.latest().is_empty());
    }
}
