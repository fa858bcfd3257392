//! Demand forecasting: additive Holt-Winters (level, trend, and a daily season) updated online
//! once per bucket of arrivals (one minute by default, so a day is 1,440 seasonal slots). A
//! forecast needs a full season of history; before that it says so and callers fall back to
//! the current demand. The state is plain data (serde) so a server keeps it across restarts.
//!
//! Written here rather than taken from a crate: the forecasting crates on crates.io fit models
//! in batch over a whole series; an autoscaler needs an O(1) update per minute and a forecast
//! of the largest demand within the cold-start horizon.

use serde::{Deserialize, Serialize};

/// The forecaster's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoltWinters {
    /// Seconds per bucket.
    pub bucket_secs: f64,
    /// Level smoothing.
    pub alpha: f64,
    /// Trend smoothing.
    pub beta: f64,
    /// Season smoothing.
    pub gamma: f64,
    level: f64,
    trend: f64,
    season: Vec<f64>,
    /// Buckets seen.
    seen: u64,
}

impl HoltWinters {
    /// A forecaster over buckets of `bucket_secs` with a season of `period_secs` (a day for
    /// traffic).
    pub fn new(bucket_secs: f64, period_secs: f64) -> HoltWinters {
        let period = (period_secs / bucket_secs).round().max(1.0) as usize;
        HoltWinters {
            bucket_secs,
            alpha: 0.3,
            beta: 0.005,
            gamma: 0.4,
            level: 0.0,
            trend: 0.0,
            season: vec![0.0; period],
            seen: 0,
        }
    }

    /// A day-long season in one-minute buckets.
    pub fn daily() -> HoltWinters {
        HoltWinters::new(60.0, 86_400.0)
    }

    fn period(&self) -> usize {
        self.season.len()
    }

    fn slot(&self, ahead: u64) -> usize {
        ((self.seen + ahead) % self.period() as u64) as usize
    }

    /// Takes the demand (requests per second) of the bucket that just ended.
    pub fn observe(&mut self, rate: f64) {
        let i = self.slot(0);
        if self.seen == 0 {
            self.level = rate;
        }
        let s = self.season[i];
        let level = self.alpha * (rate - s) + (1.0 - self.alpha) * (self.level + self.trend);
        self.trend = self.beta * (level - self.level) + (1.0 - self.beta) * self.trend;
        self.season[i] = if self.seen < self.period() as u64 {
            // The first season sets each slot's offset from the level.
            rate - level
        } else {
            self.gamma * (rate - level) + (1.0 - self.gamma) * s
        };
        self.level = level;
        self.seen += 1;
    }

    /// Whether a full season has been seen (forecasts exist).
    pub fn ready(&self) -> bool {
        self.seen >= self.period() as u64
    }

    /// The forecast demand `k` buckets ahead (1: the bucket now starting).
    pub fn forecast(&self, k: u64) -> Option<f64> {
        self.ready().then(|| {
            let s = self.season[self.slot(k - 1)];
            (self.level + k as f64 * self.trend + s).max(0.0)
        })
    }

    /// The largest forecast demand from now to `horizon_secs` ahead: the bucket now running,
    /// the ones the horizon spans and the one it ends in; `None` with too little history.
    pub fn peak_within(&self, horizon_secs: f64) -> Option<f64> {
        let k = (horizon_secs / self.bucket_secs).ceil().max(0.0) as u64 + 1;
        (1..=k).filter_map(|i| self.forecast(i)).reduce(f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeating_day_is_forecast_ahead_of_time() {
        // A day of 10-minute buckets: 10 requests/s, 100 from 09:00 to 09:20.
        let mut hw = HoltWinters::new(600.0, 86_400.0);
        let rate = |b: usize| {
            if (54..56).contains(&(b % 144)) {
                100.0
            } else {
                10.0
            }
        };
        assert_eq!(
            hw.peak_within(600.0),
            None,
            "no forecast before a full season"
        );
        for b in 0..144 * 2 {
            hw.observe(rate(b));
        }
        // Now at midnight of day three: 08:50 is one bucket before the spike.
        for b in 288..288 + 53 {
            hw.observe(rate(b));
        }
        let f = hw.peak_within(600.0).unwrap();
        assert!(f > 60.0, "the spike is foreseen a bucket ahead: {f}");
        let calm = {
            let mut h = hw.clone();
            for b in 341..341 + 10 {
                h.observe(rate(b));
            }
            h.peak_within(600.0).unwrap()
        };
        assert!(calm < 25.0, "and the calm after it: {calm}");
    }

    #[test]
    fn a_flat_series_forecasts_itself() {
        let mut hw = HoltWinters::new(60.0, 3600.0);
        for _ in 0..120 {
            hw.observe(42.0);
        }
        assert!((hw.forecast(5).unwrap() - 42.0).abs() < 1e-6);
    }
}
