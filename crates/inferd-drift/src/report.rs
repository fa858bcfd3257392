//! What a monitor reports: per tensor and feature, the distances, the verdicts and both
//! distributions.

use serde::Serialize;

use crate::monitor::TensorKind;

/// One feature in a report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FeatureReport {
    /// Position in the tensor's per-row shape (flattened).
    pub index: usize,
    /// The position, or `argmax`, or `N.length` / `N.tokens` for strings.
    pub name: String,
    /// `numeric` or `categorical`.
    pub kind: &'static str,
    /// PSI, once the window has enough values.
    pub psi: Option<f64>,
    /// Kolmogorov-Smirnov statistic (numeric features).
    pub ks: Option<f64>,
    /// Its asymptotic p-value.
    pub ks_p_value: Option<f64>,
    /// Jensen-Shannon divergence (categorical features).
    pub js: Option<f64>,
    /// PSI at or past the warning level.
    pub warning: bool,
    /// PSI at or past the drift level.
    pub drifted: bool,
    /// Values in the reference.
    pub reference_count: u64,
    /// Values in the current window.
    pub current_count: u64,
    /// Reference shares per bin (or category, then "other").
    pub reference: Vec<f64>,
    /// Current shares per bin.
    pub current: Vec<f64>,
    /// Numeric: the bin edges.
    pub edges: Option<Vec<f64>>,
    /// Categorical: the category labels.
    pub labels: Option<Vec<String>>,
}

/// One tensor in a report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorReport {
    /// Name.
    pub name: String,
    /// `input` or `output`.
    pub kind: TensorKind,
    /// Whether any feature drifted.
    pub drifted: bool,
    /// The largest PSI over its features.
    pub max_psi: Option<f64>,
    /// Features.
    pub features: Vec<FeatureReport>,
}

/// A version's drift report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Requests in the reference so far.
    pub reference_requests: u64,
    /// Requests the reference needs.
    pub reference_target: u64,
    /// Whether the reference is complete (only then is the current window counted).
    pub reference_complete: bool,
    /// Sampled requests in the current window.
    pub current_requests: u64,
    /// The window's length.
    pub window_secs: f64,
    /// PSI warning level applied.
    pub psi_warning: f64,
    /// PSI drift level applied.
    pub psi_drift: f64,
    /// Whether any tensor drifted.
    pub drifted: bool,
    /// Tensors, inputs then outputs in first-seen order.
    pub tensors: Vec<TensorReport>,
}
