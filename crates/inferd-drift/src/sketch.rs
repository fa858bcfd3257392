//! One feature's sketch over fixed bins.
//!
//! Numeric features: while the reference is being collected the raw values are kept (at most
//! [`REFERENCE_VALUES`]); once it is complete, [`BINS`] bin edges are set at its quantiles and
//! every later value is only counted (two overflow bins catch values outside the reference's
//! range). Categorical features: counts per category, at most [`CATEGORIES`] distinct ones, the
//! rest counted as "other". Memory is fixed either way.

use serde::{Deserialize, Serialize};

/// Raw values kept per numeric feature while the reference is collected (then freed: 32 KiB per
/// feature at most, 8 MiB for a tensor of the 256 features watched).
pub const REFERENCE_VALUES: usize = 4096;
/// Inner bins of a numeric histogram (plus one below the first edge and one above the last).
pub const BINS: usize = 20;
/// Distinct categories counted per categorical feature (then "other").
pub const CATEGORIES: usize = 64;

/// Bin edges: `edges.len() + 1` bins, bin `i` holding values in `(edges[i-1], edges[i]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Edges(pub Vec<f64>);

impl Edges {
    /// Edges at the reference's quantiles (ties collapsed), from its values.
    pub fn from_values(values: &mut [f64]) -> Edges {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let mut edges: Vec<f64> = Vec::with_capacity(BINS - 1);
        if n > 0 {
            for k in 1..BINS {
                let at = ((k * n) / BINS).min(n - 1);
                let v = values[at];
                if edges.last().is_none_or(|last| v > *last) {
                    edges.push(v);
                }
            }
        }
        Edges(edges)
    }

    /// The bin of `v` (`0..=edges.len()`).
    pub fn bin(&self, v: f64) -> usize {
        self.0.partition_point(|e| *e < v)
    }

    /// Number of bins.
    pub fn bins(&self) -> usize {
        self.0.len() + 1
    }
}

/// Counts over bins (numeric) or categories.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Count per bin, or per category in `labels`' order (then "other" last).
    pub counts: Vec<u64>,
    /// Total.
    pub total: u64,
}

impl Counts {
    /// Zero counts over `n` bins.
    pub fn zeros(n: usize) -> Counts {
        Counts {
            counts: vec![0; n],
            total: 0,
        }
    }

    /// Adds one to bin `i` (growing the vector when a category is new).
    pub fn add(&mut self, i: usize) {
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.total += 1;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Counts) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    /// The shares of each bin, over `n` bins.
    pub fn shares(&self, n: usize) -> Vec<f64> {
        let t = self.total.max(1) as f64;
        (0..n)
            .map(|i| self.counts.get(i).copied().unwrap_or(0) as f64 / t)
            .collect()
    }
}

/// Category labels seen, in first-seen order, bounded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Categories {
    /// Labels, at most [`CATEGORIES`].
    pub labels: Vec<String>,
}

impl Categories {
    /// The index of `label`: its position, a new one while there is room, else "other"
    /// ([`CATEGORIES`]).
    pub fn index(&mut self, label: &str) -> usize {
        if let Some(i) = self.labels.iter().position(|l| l == label) {
            return i;
        }
        if self.labels.len() < CATEGORIES {
            self.labels.push(label.to_string());
            return self.labels.len() - 1;
        }
        CATEGORIES
    }

    /// The index of `label` without adding it.
    pub fn find(&self, label: &str) -> usize {
        self.labels
            .iter()
            .position(|l| l == label)
            .unwrap_or(CATEGORIES)
    }

    /// Bins: every category plus "other".
    pub fn bins(&self) -> usize {
        CATEGORIES + 1
    }
}

/// A 64-bit FNV-1a hash (stable across runs and builds: baselines saved by one version of
/// the server are read by the next). Our own: eight lines, and `std`'s hasher is seeded per
/// process.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_sit_at_quantiles_and_bins_cover_the_line() {
        let mut v: Vec<f64> = (0..1000).map(f64::from).collect();
        let e = Edges::from_values(&mut v);
        assert_eq!(e.bins(), BINS);
        assert_eq!(e.bin(-5.0), 0);
        assert_eq!(e.bin(1e9), BINS - 1);
        assert_eq!(e.0[0], 50.0);
        // Ties collapse: a constant feature has one edge, two bins.
        let mut c = vec![3.0; 100];
        assert_eq!(Edges::from_values(&mut c).0, vec![3.0]);
    }

    #[test]
    fn categories_are_bounded_and_the_rest_is_other() {
        let mut c = Categories::default();
        for i in 0..100 {
            let idx = c.index(&i.to_string());
            assert_eq!(idx, if i < CATEGORIES { i } else { CATEGORIES });
        }
        assert_eq!(c.labels.len(), CATEGORIES);
        assert_eq!(c.find("3"), 3);
        assert_eq!(c.find("99"), CATEGORIES);
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
