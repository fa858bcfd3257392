//! A model version's drift monitor: the reference, the sliding current window, the report.
//!
//! Feed it sampled requests with [`Monitor::observe`] (the caller samples and passes the time).
//! The first [`DriftConfig::reference_requests`] requests make the reference (or a saved
//! [`Reference`] is given up front); every later one is counted in the time bucket of its
//! arrival, and the current window is the buckets of the last [`DriftConfig::window_secs`].
//! Each tensor contributes one feature per position of its per-row shape (at most
//! [`DriftConfig::max_features`]); a float output with several positions also gets its argmax
//! as a categorical feature; strings give their length (numeric) and hashed tokens
//! (categorical).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

pub use crate::report::{FeatureReport, Report, TensorReport};

use crate::sketch::{Categories, Counts, Edges, REFERENCE_VALUES, fnv1a};

mod compare;
mod reference;

use crate::stats::{jensen_shannon, ks, ks_p_value, psi};
pub use reference::{FeatureReference, Reference, TensorReference};

/// Settings (the config parameters of the same names, the server's flags).
#[derive(Clone, Debug, PartialEq)]
pub struct DriftConfig {
    /// Requests that make the reference.
    pub reference_requests: u64,
    /// Length of the current window, seconds.
    pub window_secs: f64,
    /// Time buckets the window is kept in.
    pub buckets: usize,
    /// PSI at which a feature is reported as a warning.
    pub psi_warning: f64,
    /// PSI at which a feature is reported as drifted.
    pub psi_drift: f64,
    /// Sampled values a feature's window needs before it is judged.
    pub min_current: u64,
    /// Features watched per tensor (the first ones by position).
    pub max_features: usize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            reference_requests: 1000,
            window_secs: 3600.0,
            buckets: 12,
            psi_warning: 0.1,
            psi_drift: 0.2,
            min_current: 100,
            max_features: 256,
        }
    }
}

/// Input or output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TensorKind {
    /// A request input.
    Input,
    /// A response output.
    Output,
}

/// One tensor of one request, row-major: `rows` rows of `width` elements.
#[derive(Clone, Debug)]
pub enum Values {
    /// Floating-point elements.
    Float(Vec<f64>),
    /// Integer elements (inputs: numeric; outputs: labels).
    Integer(Vec<i64>),
    /// Booleans (categorical).
    Bool(Vec<bool>),
    /// Strings.
    Bytes(Vec<Vec<u8>>),
}

/// What a feature is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Sketch {
    Numeric {
        /// Raw values while the reference is collected.
        #[serde(skip)]
        raw: Vec<f64>,
        edges: Option<Edges>,
    },
    Categorical {
        categories: Categories,
    },
}

/// A feature's reference and window.
#[derive(Clone, Debug)]
struct Feature {
    name: String,
    index: usize,
    sketch: Sketch,
    reference: Counts,
    /// (bucket id, counts) for the current window, oldest first.
    window: VecDeque<(i64, Counts)>,
}

impl Feature {
    fn numeric(name: String, index: usize) -> Feature {
        Feature {
            name,
            index,
            sketch: Sketch::Numeric {
                raw: Vec::new(),
                edges: None,
            },
            reference: Counts::default(),
            window: VecDeque::new(),
        }
    }

    fn categorical(name: String, index: usize) -> Feature {
        Feature {
            name,
            index,
            sketch: Sketch::Categorical {
                categories: Categories::default(),
            },
            reference: Counts::default(),
            window: VecDeque::new(),
        }
    }

    /// Counts `v` into the reference or the bucket `bucket` (numeric).
    fn number(&mut self, v: f64, bucket: Option<i64>) {
        if !v.is_finite() {
            return;
        }
        let Sketch::Numeric { raw, edges } = &mut self.sketch else {
            return;
        };
        match (bucket, edges.as_ref()) {
            (None, _) => {
                if raw.len() < REFERENCE_VALUES {
                    raw.push(v);
                }
            }
            (Some(b), Some(e)) => {
                let i = e.bin(v);
                bucket_counts(&mut self.window, b).add(i);
            }
            (Some(_), None) => {}
        }
    }

    /// Counts category `label` into the reference or the bucket `bucket`.
    fn category(&mut self, label: &str, bucket: Option<i64>) {
        let Sketch::Categorical { categories } = &mut self.sketch else {
            return;
        };
        let i = categories.index(label);
        match bucket {
            None => self.reference.add(i),
            Some(b) => bucket_counts(&mut self.window, b).add(i),
        }
    }

    /// Ends the reference: a numeric feature's bins are set at its quantiles.
    fn close_reference(&mut self) {
        if let Sketch::Numeric { raw, edges } = &mut self.sketch {
            let e = Edges::from_values(raw);
            let mut counts = Counts::zeros(e.bins());
            for v in raw.iter() {
                counts.add(e.bin(*v));
            }
            self.reference = counts;
            *edges = Some(e);
            *raw = Vec::new();
        }
    }

    fn bins(&self) -> usize {
        match &self.sketch {
            Sketch::Numeric { edges, .. } => edges.as_ref().map_or(1, Edges::bins),
            Sketch::Categorical { categories } => categories.bins(),
        }
    }

    fn current(&self, oldest: i64) -> Counts {
        let mut c = Counts::default();
        for (b, counts) in &self.window {
            if *b >= oldest {
                c.merge(counts);
            }
        }
        c
    }

    fn report(&self, cfg: &DriftConfig, oldest: i64) -> FeatureReport {
        let cur = self.current(oldest);
        let n = self.bins();
        let (r, c) = (self.reference.shares(n), cur.shares(n));
        let judged = cur.total >= cfg.min_current && self.reference.total > 0;
        let psi_v = judged.then(|| psi(&r, &c));
        let (ks_v, p) = match (&self.sketch, judged) {
            (Sketch::Numeric { .. }, true) => {
                let d = ks(&r, &c);
                (
                    Some(d),
                    Some(ks_p_value(d, self.reference.total, cur.total)),
                )
            }
            _ => (None, None),
        };
        let js = match (&self.sketch, judged) {
            (Sketch::Categorical { .. }, true) => Some(jensen_shannon(&r, &c)),
            _ => None,
        };
        let (edges, labels) = match &self.sketch {
            Sketch::Numeric { edges, .. } => (edges.as_ref().map(|e| e.0.clone()), None),
            Sketch::Categorical { categories } => (None, Some(categories.labels.clone())),
        };
        FeatureReport {
            index: self.index,
            name: self.name.clone(),
            kind: match self.sketch {
                Sketch::Numeric { .. } => "numeric",
                Sketch::Categorical { .. } => "categorical",
            },
            psi: psi_v,
            ks: ks_v,
            ks_p_value: p,
            js,
            warning: psi_v.is_some_and(|v| v >= cfg.psi_warning),
            drifted: psi_v.is_some_and(|v| v >= cfg.psi_drift),
            reference_count: self.reference.total,
            current_count: cur.total,
            reference: r,
            current: c,
            edges,
            labels,
        }
    }
}

fn bucket_counts(window: &mut VecDeque<(i64, Counts)>, b: i64) -> &mut Counts {
    if window.back().is_none_or(|(last, _)| *last < b) {
        window.push_back((b, Counts::default()));
    }
    // Out-of-order times land in the newest bucket (the caller's clock only moves forward).
    let last = window.len() - 1;
    &mut window[last].1
}

/// One tensor's features.
#[derive(Clone, Debug)]
struct TensorState {
    name: String,
    kind: TensorKind,
    features: Vec<Feature>,
    argmax: Option<Feature>,
}

/// A version's monitor.
#[derive(Clone, Debug)]
pub struct Monitor {
    cfg: DriftConfig,
    tensors: Vec<TensorState>,
    reference_requests: u64,
    reference_done: bool,
    /// (bucket id, requests) of the current window.
    requests: VecDeque<(i64, u64)>,
    newest: i64,
}

impl Monitor {
    /// An empty monitor: the next `cfg.reference_requests` requests make the reference.
    pub fn new(cfg: DriftConfig) -> Monitor {
        Monitor {
            cfg,
            tensors: Vec::new(),
            reference_requests: 0,
            reference_done: false,
            requests: VecDeque::new(),
            newest: i64::MIN,
        }
    }

    /// The settings.
    pub fn config(&self) -> &DriftConfig {
        &self.cfg
    }

    fn bucket_secs(&self) -> f64 {
        (self.cfg.window_secs / self.cfg.buckets.max(1) as f64).max(1e-3)
    }

    fn tensor(
        &mut self,
        kind: TensorKind,
        name: &str,
        values: &Values,
        width: usize,
    ) -> &mut TensorState {
        let pos = self
            .tensors
            .iter()
            .position(|t| t.kind == kind && t.name == name);
        let i = match pos {
            Some(i) => i,
            None => {
                let n = width.min(self.cfg.max_features);
                let mut features = Vec::new();
                for k in 0..n {
                    match values {
                        Values::Float(_) => features.push(Feature::numeric(k.to_string(), k)),
                        Values::Integer(_) if kind == TensorKind::Input => {
                            features.push(Feature::numeric(k.to_string(), k))
                        }
                        Values::Integer(_) | Values::Bool(_) => {
                            features.push(Feature::categorical(k.to_string(), k))
                        }
                        Values::Bytes(_) => {
                            features.push(Feature::numeric(format!("{k}.length"), k));
                            features.push(Feature::categorical(format!("{k}.tokens"), k));
                        }
                    }
                }
                let argmax =
                    (kind == TensorKind::Output && matches!(values, Values::Float(_)) && width > 1)
                        .then(|| Feature::categorical("argmax".into(), width));
                self.tensors.push(TensorState {
                    name: name.to_string(),
                    kind,
                    features,
                    argmax,
                });
                self.tensors.len() - 1
            }
        };
        &mut self.tensors[i]
    }

    /// Feeds one sampled request, at `now` (seconds on any clock that only moves forward):
    /// each tensor as `(kind, name, values, rows)`.
    pub fn observe(&mut self, now: f64, tensors: &[(TensorKind, &str, Values, usize)]) {
        let bucket = if self.reference_done {
            Some((now / self.bucket_secs()).floor() as i64)
        } else {
            None
        };
        for (kind, name, values, rows) in tensors {
            let rows = (*rows).max(1);
            let len = match values {
                Values::Float(v) => v.len(),
                Values::Integer(v) => v.len(),
                Values::Bool(v) => v.len(),
                Values::Bytes(v) => v.len(),
            };
            if len == 0 || len % rows != 0 {
                continue;
            }
            let width = len / rows;
            let t = self.tensor(*kind, name, values, width);
            for r in 0..rows {
                let row = r * width;
                match values {
                    // A tensor whose width changed since its features were made (variable
                    // dims): only the positions it has are counted.
                    Values::Float(v) => {
                        for f in t.features.iter_mut().filter(|f| f.index < width) {
                            f.number(v[row + f.index], bucket);
                        }
                        if let Some(a) = t.argmax.as_mut() {
                            let best = v[row..row + width]
                                .iter()
                                .enumerate()
                                .max_by(|x, y| x.1.total_cmp(y.1))
                                .map_or(0, |(i, _)| i);
                            a.category(&best.to_string(), bucket);
                        }
                    }
                    Values::Integer(v) => {
                        for f in t.features.iter_mut().filter(|f| f.index < width) {
                            let x = v[row + f.index];
                            match f.sketch {
                                Sketch::Numeric { .. } => f.number(x as f64, bucket),
                                Sketch::Categorical { .. } => f.category(&x.to_string(), bucket),
                            }
                        }
                    }
                    Values::Bool(v) => {
                        for f in t.features.iter_mut().filter(|f| f.index < width) {
                            f.category(if v[row + f.index] { "true" } else { "false" }, bucket);
                        }
                    }
                    Values::Bytes(v) => {
                        for f in t.features.iter_mut().filter(|f| f.index < width) {
                            let s = &v[row + f.index];
                            match f.sketch {
                                Sketch::Numeric { .. } => f.number(s.len() as f64, bucket),
                                Sketch::Categorical { .. } => {
                                    for tok in s
                                        .split(|b| b.is_ascii_whitespace())
                                        .filter(|t| !t.is_empty())
                                    {
                                        f.category(&format!("h{}", fnv1a(tok) % 64), bucket);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        match bucket {
            None => {
                self.reference_requests += 1;
                if self.reference_requests >= self.cfg.reference_requests {
                    for t in &mut self.tensors {
                        t.features.iter_mut().for_each(Feature::close_reference);
                    }
                    self.reference_done = true;
                }
            }
            Some(b) => {
                if self.requests.back().is_none_or(|(last, _)| *last < b) {
                    self.requests.push_back((b, 0));
                }
                if let Some(last) = self.requests.back_mut() {
                    last.1 += 1;
                }
                self.newest = self.newest.max(b);
                self.expire();
            }
        }
    }

    /// Drops buckets older than the window.
    fn expire(&mut self) {
        let oldest = self.oldest();
        while self.requests.front().is_some_and(|(b, _)| *b < oldest) {
            self.requests.pop_front();
        }
        for t in &mut self.tensors {
            for f in t.features.iter_mut().chain(t.argmax.as_mut()) {
                while f.window.front().is_some_and(|(b, _)| *b < oldest) {
                    f.window.pop_front();
                }
            }
        }
    }

    fn oldest(&self) -> i64 {
        self.newest
            .saturating_sub(self.cfg.buckets.max(1) as i64 - 1)
    }

    /// Whether the reference is complete.
    pub fn reference_complete(&self) -> bool {
        self.reference_done
    }

    /// The report as of the newest request seen.
    pub fn report(&self) -> Report {
        let oldest = self.oldest();
        let tensors: Vec<TensorReport> = self
            .tensors
            .iter()
            .map(|t| {
                let features: Vec<FeatureReport> = t
                    .features
                    .iter()
                    .chain(t.argmax.as_ref())
                    .map(|f| f.report(&self.cfg, oldest))
                    .collect();
                TensorReport {
                    name: t.name.clone(),
                    kind: t.kind,
                    drifted: features.iter().any(|f| f.drifted),
                    max_psi: features
                        .iter()
                        .filter_map(|f| f.psi)
                        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
                    features,
                }
            })
            .collect();
        Report {
            reference_requests: self.reference_requests,
            reference_target: self.cfg.reference_requests,
            reference_complete: self.reference_done,
            current_requests: self
                .requests
                .iter()
                .filter(|(b, _)| *b >= oldest)
                .map(|(_, n)| n)
                .sum(),
            window_secs: self.cfg.window_secs,
            psi_warning: self.cfg.psi_warning,
            psi_drift: self.cfg.psi_drift,
            drifted: tensors.iter().any(|t| t.drifted),
            tensors,
        }
    }

    /// The largest PSI over one kind's features (an output guardrail reads this).
    pub fn max_psi(&self, kind: TensorKind) -> Option<f64> {
        self.report()
            .tensors
            .iter()
            .filter(|t| t.kind == kind)
            .filter_map(|t| t.max_psi)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    }
}

#[cfg(test)]
#[path = "monitor_tests.rs"]
mod tests;
