//! One replica's behaviour, as measured: how long a batch of `n` takes (a fixed part and a
//! part per request, with log-normal spread), how the batcher forms batches (largest batch,
//! longest wait), how many requests it queues, and how long a new replica takes to start, by
//! phase. The default is a mid-sized model (100 ms alone, 160 ms for a batch of four) that
//! starts in 30 s; `--service-profile FILE` reads a JSON object with the same fields, e.g.
//! from a benchmark run or a live server's statistics.

use serde::{Deserialize, Serialize};

use crate::{Error, setting};

/// A replica's service and start-up figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceProfile {
    /// Time for a batch of one, seconds.
    pub base_secs: f64,
    /// Extra time per further request in the batch, seconds.
    pub per_item_secs: f64,
    /// Spread of service times: the standard deviation of their logarithm (0: fixed).
    pub log_sigma: f64,
    /// Largest batch.
    pub max_batch: usize,
    /// Longest a request waits for its batch to fill, seconds (0: run what is there).
    pub batch_delay_secs: f64,
    /// Requests a replica holds (queued and running); past it, requests are refused.
    pub max_queue: usize,
    /// Cold start by phase (name, seconds), in order: e.g. pull, load, warm-up.
    pub start_phases: Vec<(String, f64)>,
    /// Latency every request pays outside the replica's batch queue (network, parsing,
    /// encoding: work done in parallel with the model), seconds.
    pub overhead_secs: f64,
}

impl Default for ServiceProfile {
    fn default() -> Self {
        ServiceProfile {
            base_secs: 0.1,
            per_item_secs: 0.02,
            log_sigma: 0.1,
            max_batch: 4,
            batch_delay_secs: 0.0,
            max_queue: 256,
            start_phases: vec![
                ("schedule".into(), 2.0),
                ("pull".into(), 15.0),
                ("load".into(), 10.0),
                ("warmup".into(), 3.0),
            ],
            overhead_secs: 0.0,
        }
    }
}

impl ServiceProfile {
    /// Reads a profile from JSON text (`file` names it in errors).
    pub fn from_json(file: &str, text: &str) -> Result<ServiceProfile, Error> {
        let p: ServiceProfile =
            serde_json::from_str(text).map_err(|e| setting(file, e.to_string()))?;
        p.check()?;
        Ok(p)
    }

    /// Says which figure is impossible.
    pub fn check(&self) -> Result<(), Error> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        if !positive(self.base_secs) {
            return Err(setting("base_secs", "must be a positive number of seconds"));
        }
        if !non_negative(self.per_item_secs) {
            return Err(setting("per_item_secs", "must be zero or more seconds"));
        }
        if !non_negative(self.log_sigma) || self.log_sigma > 3.0 {
            return Err(setting("log_sigma", "must be from 0 to 3"));
        }
        if self.max_batch == 0 {
            return Err(setting("max_batch", "must be at least 1"));
        }
        if !non_negative(self.overhead_secs) {
            return Err(setting("overhead_secs", "must be zero or more seconds"));
        }
        if !non_negative(self.batch_delay_secs) {
            return Err(setting("batch_delay_secs", "must be zero or more seconds"));
        }
        if self.max_queue < self.max_batch {
            return Err(setting("max_queue", "must hold at least one full batch"));
        }
        if let Some((name, _)) = self.start_phases.iter().find(|(_, s)| !non_negative(*s)) {
            return Err(setting(
                "start_phases",
                format!("phase '{name}' must take zero or more seconds"),
            ));
        }
        Ok(())
    }

    /// Mean time for a batch of `n`.
    pub fn batch_secs(&self, n: usize) -> f64 {
        self.base_secs + self.per_item_secs * n.saturating_sub(1) as f64
    }

    /// A sampled time for a batch of `n` (log-normal around the mean).
    pub fn sample_batch_secs(&self, n: usize, rng: &mut fastrand::Rng) -> f64 {
        let mean = self.batch_secs(n);
        if self.log_sigma == 0.0 {
            return mean;
        }
        let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let s = self.log_sigma;
        // exp(mu + s z) with mu chosen so the mean is `mean`.
        mean * (s * z - s * s / 2.0).exp()
    }

    /// Requests per second one replica sustains with full batches.
    pub fn capacity(&self) -> f64 {
        self.max_batch as f64 / self.batch_secs(self.max_batch)
    }

    /// Seconds from scheduling a replica to it being ready.
    pub fn cold_start_secs(&self) -> f64 {
        self.start_phases.iter().map(|(_, s)| s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sustains_25_per_second_and_starts_in_30_s() {
        let p = ServiceProfile::default();
        assert!((p.capacity() - 25.0).abs() < 1e-9);
        assert_eq!(p.cold_start_secs(), 30.0);
        let mut rng = fastrand::Rng::with_seed(3);
        let n = 20_000;
        let mean = (0..n)
            .map(|_| p.sample_batch_secs(4, &mut rng))
            .sum::<f64>()
            / n as f64;
        assert!((mean - 0.16).abs() < 0.002, "{mean}");
    }

    #[test]
    fn impossible_figures_are_named() {
        for (json, field) in [
            (r#"{"base_secs": 0}"#, "base_secs"),
            (r#"{"max_batch": 0}"#, "max_batch"),
            (r#"{"max_batch": 8, "max_queue": 4}"#, "max_queue"),
            (r#"{"start_phases": [["load", -1]]}"#, "start_phases"),
            (r#"{"surprise": 1}"#, "surprise"),
        ] {
            let e = ServiceProfile::from_json("p.json", json)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{json}: {e}");
        }
        let p =
            ServiceProfile::from_json("p.json", r#"{"base_secs": 0.02, "max_batch": 8}"#).unwrap();
        assert_eq!((p.max_batch, p.base_secs), (8, 0.02));
    }
}
