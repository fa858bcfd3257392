//! Traffic traces: how many requests arrive in each second. The shipped scenarios are two days
//! long; the simulator replays the second and gives the first to the forecaster as history (a
//! replica that kept its state across restarts has it). A user's trace is a CSV of
//! `timestamp,count` rows (seconds, any origin, sorted), which the simulator replays whole.

use crate::Error;

/// Seconds in a day.
pub const DAY: usize = 86_400;

/// Arrivals per second.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Its name (a scenario or a file).
    pub name: String,
    /// Requests arriving in each second.
    pub counts: Vec<u32>,
    /// Leading seconds that are history only (fed to the forecaster, not replayed).
    pub history: usize,
    /// The exact arrival instants, seconds from the start, when the trace gave them (a CSV
    /// with fractional timestamps); empty otherwise, and each second's count is then placed
    /// at random within it.
    pub instants: Vec<f64>,
}

/// A Poisson draw with mean `mean` (Knuth's method below 30, a rounded normal above).
fn poisson(rng: &mut fastrand::Rng, mean: f64) -> u32 {
    if mean <= 0.0 {
        return 0;
    }
    if mean < 30.0 {
        let limit = (-mean).exp();
        let mut k = 0;
        let mut p = 1.0;
        loop {
            p *= rng.f64();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }
    // Box-Muller.
    let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (mean + z * mean.sqrt()).round().max(0.0) as u32
}

/// Seconds from `rate(t)` (requests per second at second `t`) over `len` seconds.
fn from_rate(
    name: &str,
    len: usize,
    history: usize,
    seed: u64,
    rate: impl Fn(usize) -> f64,
) -> Trace {
    let mut rng = fastrand::Rng::with_seed(seed);
    Trace {
        name: name.into(),
        counts: (0..len).map(|t| poisson(&mut rng, rate(t))).collect(),
        history,
        instants: Vec::new(),
    }
}

/// The names of the shipped scenarios.
pub const SCENARIOS: &[&str] = &["diurnal", "spike", "bursty", "daily-spike"];

impl Trace {
    /// A shipped scenario: `diurnal` (a daily cycle from 15 to 150 requests/s, trough at 04:00,
    /// peak at 16:00), `spike` (20 requests/s, then ten times that for 10 minutes from 12:00,
    /// unannounced), `bursty` (a two-state Markov-modulated Poisson process: 20 or 120
    /// requests/s, bursts of 30 s on average every 3 minutes), `daily-spike` (20 requests/s and
    /// ten times that every day from 09:00 for 15 minutes). Each covers two days, the first
    /// being history; the same `seed` gives the same trace.
    pub fn scenario(name: &str, seed: u64) -> Result<Trace, Error> {
        let day_phase = |t: usize| (t % DAY) as f64 / DAY as f64;
        match name {
            "diurnal" => Ok(from_rate(name, 2 * DAY, DAY, seed, |t| {
                // Trough at 04:00 (phase 1/6), peak twelve hours later.
                let x = 2.0 * std::f64::consts::PI * (day_phase(t) - 1.0 / 6.0);
                82.5 - 67.5 * x.cos()
            })),
            "spike" => Ok(from_rate(name, 2 * DAY, DAY, seed, |t| {
                let in_day = t % DAY;
                // Only on the replayed day: nothing in the history foretells it.
                if t >= DAY && (12 * 3600..12 * 3600 + 600).contains(&in_day) {
                    200.0
                } else {
                    20.0
                }
            })),
            "daily-spike" => Ok(from_rate(name, 2 * DAY, DAY, seed, |t| {
                if (9 * 3600..9 * 3600 + 900).contains(&(t % DAY)) {
                    200.0
                } else {
                    20.0
                }
            })),
            "bursty" => {
                let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
                let mut high = false;
                let states: Vec<bool> = (0..2 * DAY)
                    .map(|_| {
                        // Mean sojourn 150 s low, 30 s high.
                        let leave = if high { 1.0 / 30.0 } else { 1.0 / 150.0 };
                        if rng.f64() < leave {
                            high = !high;
                        }
                        high
                    })
                    .collect();
                Ok(from_rate(name, 2 * DAY, DAY, seed, |t| {
                    if states[t] { 120.0 } else { 20.0 }
                }))
            }
            other => Err(crate::setting(
                "trace",
                format!(
                    "'{other}' is not a shipped trace ({})",
                    SCENARIOS.join(", ")
                ),
            )),
        }
    }

    /// A trace from CSV text (`file` names it in errors): a header line, then
    /// `timestamp,count` rows with whole or fractional seconds, sorted; counts of requests
    /// that arrived in that second. Seconds without a row had none.
    pub fn from_csv(file: &str, text: &str) -> Result<Trace, Error> {
        let err = |line: usize, reason: String| Error::TraceLine {
            file: file.into(),
            line,
            reason,
        };
        let mut rows: Vec<(f64, u32)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let raw = raw.trim();
            if line == 1 {
                let header: Vec<&str> = raw.split(',').map(str::trim).collect();
                if header != ["timestamp", "count"] {
                    return Err(err(
                        line,
                        format!("the header must be 'timestamp,count', got '{raw}'"),
                    ));
                }
                continue;
            }
            if raw.is_empty() {
                continue;
            }
            let mut cols = raw.split(',').map(str::trim);
            let (Some(ts), Some(count), None) = (cols.next(), cols.next(), cols.next()) else {
                return Err(err(
                    line,
                    format!("expected 'timestamp,count', got '{raw}'"),
                ));
            };
            let ts: f64 = ts
                .parse()
                .ok()
                .filter(|t: &f64| t.is_finite())
                .ok_or_else(|| err(line, format!("timestamp '{ts}' is not a number")))?;
            if ts < 0.0 {
                return Err(err(line, format!("timestamp {ts} is negative")));
            }
            let count: u32 = count.parse().map_err(|_| {
                err(
                    line,
                    format!("count '{count}' is not a whole number of requests"),
                )
            })?;
            if let Some(&(prev, _)) = rows.last()
                && ts < prev
            {
                return Err(err(
                    line,
                    format!(
                        "timestamp {ts} comes before the previous row's {prev}; rows must be sorted"
                    ),
                ));
            }
            rows.push((ts, count));
        }
        let Some(&(first, _)) = rows.first() else {
            return Err(err(1, "the trace has no rows".into()));
        };
        let last = rows.last().map_or(first, |r| r.0);
        let len = (last - first).floor() as usize + 1;
        let mut counts = vec![0u32; len];
        let exact = rows.iter().any(|(ts, _)| ts.fract() != 0.0);
        let mut instants = Vec::new();
        for (ts, c) in rows {
            let s = ((ts - first).floor() as usize).min(len - 1);
            counts[s] = counts[s].saturating_add(c);
            if exact {
                instants.extend(std::iter::repeat_n(ts - first, c as usize));
            }
        }
        Ok(Trace {
            name: file.into(),
            counts,
            history: 0,
            instants,
        })
    }

    /// Requests in the replayed part.
    pub fn requests(&self) -> u64 {
        self.counts[self.history..]
            .iter()
            .map(|&c| u64::from(c))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_have_their_shape_and_repeat_with_the_seed() {
        let d = Trace::scenario("diurnal", 1).unwrap();
        assert_eq!((d.counts.len(), d.history), (2 * DAY, DAY));
        let mean = |r: std::ops::Range<usize>| {
            d.counts[r.clone()]
                .iter()
                .map(|&c| f64::from(c))
                .sum::<f64>()
                / r.len() as f64
        };
        let trough = mean(DAY + 4 * 3600 - 600..DAY + 4 * 3600 + 600);
        let peak = mean(DAY + 16 * 3600 - 600..DAY + 16 * 3600 + 600);
        assert!(
            (14.0..17.0).contains(&trough) && (145.0..155.0).contains(&peak),
            "{trough} {peak}"
        );
        assert_eq!(Trace::scenario("diurnal", 1).unwrap(), d);
        assert_ne!(Trace::scenario("diurnal", 2).unwrap().counts, d.counts);
        let s = Trace::scenario("daily-spike", 1).unwrap();
        for day in 0..2 {
            let at = day * DAY + 9 * 3600 + 300;
            assert!(s.counts[at] > 150 && s.counts[at - 900] < 50);
        }
        let spike = Trace::scenario("spike", 1).unwrap();
        assert!(
            spike.counts[12 * 3600 + 300] < 50,
            "no spike in the history"
        );
        assert!(spike.counts[DAY + 12 * 3600 + 300] > 150);
        let b = Trace::scenario("bursty", 1).unwrap();
        let high = b.counts.iter().filter(|&&c| c > 70).count() as f64 / b.counts.len() as f64;
        assert!((0.1..0.25).contains(&high), "{high}");
        assert!(Trace::scenario("weekly", 1).is_err());
    }

    #[test]
    fn a_csv_trace_is_read_by_the_second() {
        let t = Trace::from_csv("t.csv", "timestamp,count\n100,3\n100.5,2\n103,1\n").unwrap();
        assert_eq!(t.counts, vec![5, 0, 0, 1]);
        assert_eq!(t.requests(), 6);
    }

    #[test]
    fn fractional_timestamps_keep_their_exact_instants_and_whole_seconds_do_not() {
        let t = Trace::from_csv("t.csv", "timestamp,count\n10.25,1\n10.75,2\n12.5,1\n").unwrap();
        assert_eq!(t.counts, vec![3, 0, 1]);
        assert_eq!(t.instants, vec![0.0, 0.5, 0.5, 2.25]);
        let whole = Trace::from_csv("t.csv", "timestamp,count\n0,5\n1,7\n").unwrap();
        assert!(whole.instants.is_empty());
    }

    #[test]
    fn csv_mistakes_name_their_line() {
        for (text, line, words) in [
            ("ts,n\n1,2\n", 1, "header"),
            ("timestamp,count\n1,2\n0,1\n", 3, "sorted"),
            ("timestamp,count\n-1,2\n", 2, "negative"),
            ("timestamp,count\n1,2\nx,1\n", 3, "not a number"),
            ("timestamp,count\n1,-2\n", 2, "whole number"),
            ("timestamp,count\n1,2,3\n", 2, "expected"),
            ("timestamp,count\n", 1, "no rows"),
        ] {
            let e = Trace::from_csv("t.csv", text).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("line {line}:")) && msg.contains(words),
                "{text:?}: {msg}"
            );
        }
    }
}
