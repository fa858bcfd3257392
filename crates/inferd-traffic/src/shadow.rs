//! A shadow route's comparison of its two sides, fed one pair of answers at a time: how often
//! they agree (argmax per row, or a single score thresholded at 0.5), how far apart their numbers are (mean and max absolute
//! difference), how differently their outputs are distributed (population stability index
//! over the primary's deciles), and each side's latency (p50, p99) and error rate. Memory is
//! bounded: latencies and output values are kept as uniform samples of fixed size.

use serde::Serialize;
use serde_json::{Value, json};

/// Values kept per side for latency quantiles and the PSI.
const SAMPLE: usize = 10_000;

/// One side's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The first output, flattened, when the request succeeded and it is numeric.
    pub values: Option<Vec<f64>>,
    /// Rows in it (the batch size).
    pub rows: usize,
    /// Seconds it took.
    pub secs: f64,
    /// Whether it failed.
    pub failed: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Side {
    requests: u64,
    errors: u64,
    #[serde(skip)]
    latencies: Vec<f64>,
    #[serde(skip)]
    values: Vec<f64>,
}

impl Side {
    fn push(&mut self, a: &Answer, draw: u64) {
        self.requests += 1;
        self.errors += u64::from(a.failed);
        keep(&mut self.latencies, a.secs, self.requests, draw);
        if let Some(v) = &a.values {
            for (i, x) in v.iter().enumerate() {
                keep(
                    &mut self.values,
                    *x,
                    self.requests * 64 + i as u64,
                    draw ^ i as u64,
                );
            }
        }
    }

    fn summary(&self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": (self.requests > 0).then(|| self.errors as f64 / self.requests as f64),
            "p50_secs": quantile(&self.latencies, 0.5),
            "p99_secs": quantile(&self.latencies, 0.99),
        })
    }
}

/// Reservoir update: the `seen`-th value replaces a random slot once the sample is full.
fn keep(sample: &mut Vec<f64>, x: f64, seen: u64, draw: u64) {
    if sample.len() < SAMPLE {
        sample.push(x);
    } else {
        let i = (draw % seen.max(1)) as usize;
        if i < SAMPLE {
            sample[i] = x;
        }
    }
}

fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((s.len() as f64) * q).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

/// A shadow route's comparison so far.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    primary: Side,
    shadow: Side,
    /// Pairs where both sides answered with comparable outputs.
    compared: u64,
    rows: u64,
    agreeing_rows: u64,
    abs_diff_sum: f64,
    abs_diff_n: u64,
    abs_diff_max: f64,
}

/// Each row's label: its argmax, or for one score per row the score thresholded at 0.5.
fn labels(values: &[f64], rows: usize) -> Vec<usize> {
    if rows == 0 || !values.len().is_multiple_of(rows) {
        return Vec::new();
    }
    values
        .chunks(values.len() / rows)
        .map(|row| {
            // One score per row: the label is the score thresholded at 0.5.
            if let [score] = row {
                return usize::from(*score >= 0.5);
            }
            row.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i)
        })
        .collect()
}

impl Comparison {
    /// Adds one request's two answers; `draw` is a uniform random number (for the samples).
    pub fn push(&mut self, primary: &Answer, shadow: &Answer, draw: u64) {
        self.primary.push(primary, draw);
        self.shadow.push(shadow, draw.rotate_left(17));
        let (Some(p), Some(s)) = (&primary.values, &shadow.values) else {
            return;
        };
        if p.len() != s.len() || primary.rows != shadow.rows {
            return;
        }
        self.compared += 1;
        for (a, b) in p.iter().zip(s) {
            let d = (a - b).abs();
            self.abs_diff_sum += d;
            self.abs_diff_n += 1;
            self.abs_diff_max = self.abs_diff_max.max(d);
        }
        let (pa, sa) = (labels(p, primary.rows), labels(s, shadow.rows));
        self.rows += pa.len() as u64;
        self.agreeing_rows += pa.iter().zip(&sa).filter(|(a, b)| a == b).count() as u64;
    }

    /// The population stability index of the shadow's output values against the primary's,
    /// over ten bins cut at the primary's deciles (a small floor keeps empty bins finite).
    pub fn psi(&self) -> Option<f64> {
        let (p, s) = (&self.primary.values, &self.shadow.values);
        if p.len() < 10 || s.is_empty() {
            return None;
        }
        let mut sorted = p.clone();
        sorted.sort_by(f64::total_cmp);
        let cuts: Vec<f64> = (1..10).map(|i| sorted[i * sorted.len() / 10]).collect();
        let hist = |v: &[f64]| {
            let mut h = [0f64; 10];
            for x in v {
                h[cuts.partition_point(|c| c <= x)] += 1.0;
            }
            h.map(|c| (c / v.len() as f64).max(1e-4))
        };
        let (hp, hs) = (hist(p), hist(s));
        Some(
            hp.iter()
                .zip(&hs)
                .map(|(a, b)| (b - a) * (b / a).ln())
                .sum(),
        )
    }

    /// The report's JSON.
    pub fn report(&self) -> Value {
        json!({
            "compared": self.compared,
            "agreement": (self.rows > 0).then(|| self.agreeing_rows as f64 / self.rows as f64),
            "mean_abs_diff": (self.abs_diff_n > 0).then(|| self.abs_diff_sum / self.abs_diff_n as f64),
            "max_abs_diff": (self.abs_diff_n > 0).then_some(self.abs_diff_max),
            "psi": self.psi(),
            "primary": self.primary.summary(),
            "shadow": self.shadow.summary(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(values: Vec<f64>, rows: usize, secs: f64) -> Answer {
        Answer {
            values: Some(values),
            rows,
            secs,
            failed: false,
        }
    }

    #[test]
    fn a_constructed_case_gives_known_numbers() {
        let mut c = Comparison::default();
        // Row argmax agrees in the first pair, disagrees in the second; diffs 0.1 and 0.5.
        c.push(
            &answer(vec![0.9, 0.1], 1, 0.010),
            &answer(vec![0.8, 0.2], 1, 0.030),
            1,
        );
        c.push(
            &answer(vec![0.6, 0.4], 1, 0.010),
            &answer(vec![0.1, 0.9], 1, 0.030),
            2,
        );
        c.push(
            &answer(vec![0.6, 0.4], 1, 0.010),
            &Answer {
                values: None,
                rows: 1,
                secs: 0.5,
                failed: true,
            },
            3,
        );
        let r = c.report();
        assert_eq!(r["compared"], 2);
        assert_eq!(r["agreement"], 0.5);
        let mean = r["mean_abs_diff"].as_f64().unwrap();
        assert!((mean - 0.3).abs() < 1e-12, "{mean}");
        assert!((r["max_abs_diff"].as_f64().unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(r["shadow"]["errors"], 1);
        assert!((r["shadow"]["error_rate"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(r["primary"]["p99_secs"], 0.010);
        assert_eq!(r["shadow"]["p50_secs"], 0.030);
    }

    #[test]
    fn single_scores_agree_by_their_label_at_0_5() {
        let mut c = Comparison::default();
        // Rows (0.7, 0.2, 0.55) against (0.9, 0.4, 0.45): labels 1,0,1 vs 1,0,0.
        c.push(
            &answer(vec![0.7, 0.2, 0.55], 3, 0.0),
            &answer(vec![0.9, 0.4, 0.45], 3, 0.0),
            1,
        );
        let r = c.report();
        assert!(
            (r["agreement"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12,
            "{r}"
        );
    }

    #[test]
    fn psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() {
        let mut same = Comparison::default();
        let mut shifted = Comparison::default();
        for i in 0..2000 {
            let x = (i % 100) as f64 / 100.0;
            same.push(&answer(vec![x], 1, 0.0), &answer(vec![x], 1, 0.0), i);
            shifted.push(&answer(vec![x], 1, 0.0), &answer(vec![x + 0.5], 1, 0.0), i);
        }
        assert!(same.psi().unwrap() < 0.01, "{:?}", same.psi());
        assert!(shifted.psi().unwrap() > 0.25, "{:?}", shifted.psi());
    }
}
