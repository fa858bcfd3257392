//! The route schema: `[routes.NAME]` tables in `--routes-file` (TOML) and the same table as a
//! JSON object in `PUT /v2/routes/NAME`. Field names are fixed (clients and scripts rely on
//! them); unknown fields are refused so a typo is an error, not a silent default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::TrafficError;

/// The sticky key's header when a route names none.
pub const DEFAULT_STICKY_HEADER: &str = "x-user-id";

/// A model version a route sends traffic to; no version means the model's latest ready one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The model's name in the repository.
    pub model: String,
    /// The version; `None`: the latest ready version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}/{v}", self.model),
            None => write!(f, "{}/latest", self.model),
        }
    }
}

/// A target with its share of a split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    /// The model's name.
    pub model: String,
    /// The version; `None`: the latest ready version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Its share, relative to the other targets' weights (not necessarily out of 100).
    pub weight: i64,
}

impl WeightedTarget {
    /// The target without its weight.
    pub fn target(&self) -> Target {
        Target {
            model: self.model.clone(),
            version: self.version,
        }
    }
}

/// An A/B test's statistics settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// The default feedback metric's kind: `conversion` (0/1 outcomes) or `mean` (numbers).
    pub metric: String,
    /// Significance level of the test (default 0.05).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// The smallest effect worth detecting, for the samples-needed estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_detectable_effect: Option<f64>,
}

fn default_alpha() -> f64 {
    0.05
}

/// One canary step: the canary's weight and how long (and over how many of its requests) the
/// step must be healthy before the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The canary's share, 0-100.
    pub weight: i64,
    /// The step's minimum length.
    pub duration_secs: u64,
    /// The canary's minimum requests in the step (default 0).
    #[serde(default)]
    pub min_requests: u64,
}

/// An A/B test's guardrails, checked every `interval_secs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbGuardrails {
    /// Highest PSI of a treatment arm's outputs against the control's drift reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_psi: Option<f64>,
    /// Seconds between checks (default 10).
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
}

/// What a canary analysis checks against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guardrails {
    /// Highest error rate of the canary's own requests in an interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Highest ratio of the canary's p99 latency to the primary's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ratio: Option<f64>,
    /// Highest PSI of the canary's outputs against the primary's (drift monitoring): a canary
    /// that answers fast and without errors but differently is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_psi: Option<f64>,
    /// Business metrics from outcome feedback (`POST /v2/feedback`) the canary must hold
    /// against the primary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricGuard>,
}

/// A feedback metric checked in each canary analysis: the canary's mean over the interval
/// divided by the primary's must stay within the bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricGuard {
    /// The feedback metric's name.
    pub metric: String,
    /// Lowest allowed ratio (for metrics where higher is better, such as a conversion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ratio: Option<f64>,
    /// Highest allowed ratio (for metrics where lower is better, such as refunds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ratio: Option<f64>,
    /// Outcomes each side needs in an interval before the check counts (default 30).
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
}

fn default_min_samples() -> u64 {
    30
}

/// Which environment of a blue-green route takes the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// The `blue` target.
    Blue,
    /// The `green` target.
    Green,
}

impl Color {
    /// The other environment.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }
}

/// One route, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RouteSpec {
    /// Fixed weights, optionally sticky by a key.
    Split {
        /// The targets and their weights.
        targets: Vec<WeightedTarget>,
        /// The header (or gRPC metadata, or request parameter) holding the sticky key.
        #[serde(default = "default_sticky")]
        sticky_header: String,
        /// Answers while the chosen target has no ready version (a replica just scaled from
        /// zero, a version still loading); the answer names it in `x-inferd-target`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback: Option<Target>,
    },
    /// An A/B test: a sticky split whose arms are compared on outcome feedback.
    Ab {
        /// The arms and their weights.
        targets: Vec<WeightedTarget>,
        /// The header holding the sticky key.
        #[serde(default = "default_sticky")]
        sticky_header: String,
        /// The statistics settings.
        experiment: Experiment,
        /// A drift guardrail: a treatment arm whose outputs drift from the control's
        /// reference past the limit is halted (its share goes to the control).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guardrails: Option<AbGuardrails>,
        /// Answers while the chosen target has no ready version (a replica just scaled from
        /// zero, a version still loading); the answer names it in `x-inferd-target`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback: Option<Target>,
    },
    /// The primary answers; a copy of (`percent` of) the requests goes to the shadow.
    Shadow {
        /// Answers the caller.
        primary: Target,
        /// Gets copies; its answers are only logged and compared.
        shadow: Target,
        /// The share of requests copied, 0-100 (default 100).
        #[serde(default = "default_percent")]
        percent: i64,
        /// Answers while the chosen target has no ready version (a replica just scaled from
        /// zero, a version still loading); the answer names it in `x-inferd-target`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback: Option<Target>,
    },
    /// A canary rollout in steps with automated analysis and rollback.
    Canary {
        /// The current version.
        primary: Target,
        /// The candidate.
        canary: Target,
        /// The steps, in order; passing the last promotes the canary.
        steps: Vec<Step>,
        /// Seconds between analyses (default 10).
        #[serde(default = "default_interval")]
        interval_secs: u64,
        /// Failed analyses before rollback (default 1).
        #[serde(default = "default_threshold")]
        threshold: u32,
        /// The checks.
        #[serde(default = "no_guardrails")]
        guardrails: Guardrails,
        /// The header holding the sticky key (a user stays on one side within a step).
        #[serde(default = "default_sticky")]
        sticky_header: String,
        /// A Prometheus server (`http://host:9090`) that scrapes every replica: when set, the
        /// analyses read the error rate and p99 of both sides from it (summed over replicas),
        /// not from this replica's own requests.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prometheus: Option<String>,
        /// Answers while the chosen target has no ready version (a replica just scaled from
        /// zero, a version still loading); the answer names it in `x-inferd-target`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback: Option<Target>,
    },
    /// Two environments, one active; `switch` flips them atomically.
    Bluegreen {
        /// One environment.
        blue: Target,
        /// The other.
        green: Target,
        /// The one taking traffic.
        active: Color,
        /// Answers while the chosen target has no ready version (a replica just scaled from
        /// zero, a version still loading); the answer names it in `x-inferd-target`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback: Option<Target>,
    },
}

fn default_sticky() -> String {
    DEFAULT_STICKY_HEADER.to_string()
}
fn default_percent() -> i64 {
    100
}
fn default_interval() -> u64 {
    10
}
fn default_threshold() -> u32 {
    1
}
fn no_guardrails() -> Guardrails {
    Guardrails {
        max_error_rate: None,
        max_p99_ratio: None,
        max_output_psi: None,
        metrics: Vec::new(),
    }
}

impl RouteSpec {
    /// The kind's name, as the schema spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            RouteSpec::Split { .. } => "split",
            RouteSpec::Ab { .. } => "ab",
            RouteSpec::Shadow { .. } => "shadow",
            RouteSpec::Canary { .. } => "canary",
            RouteSpec::Bluegreen { .. } => "bluegreen",
        }
    }

    /// Every target the route names, with the field that names it.
    pub fn targets(&self) -> Vec<(String, Target)> {
        let mut all = self.traffic_targets();
        if let Some(f) = self.fallback() {
            all.push(("fallback".into(), f.clone()));
        }
        all
    }

    /// The targets that take traffic by the route's own rule (not the fallback).
    fn traffic_targets(&self) -> Vec<(String, Target)> {
        match self {
            RouteSpec::Split { targets, .. } | RouteSpec::Ab { targets, .. } => targets
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("targets[{i}]"), t.target()))
                .collect(),
            RouteSpec::Shadow {
                primary, shadow, ..
            } => vec![
                ("primary".into(), primary.clone()),
                ("shadow".into(), shadow.clone()),
            ],
            RouteSpec::Canary {
                primary, canary, ..
            } => vec![
                ("primary".into(), primary.clone()),
                ("canary".into(), canary.clone()),
            ],
            RouteSpec::Bluegreen { blue, green, .. } => vec![
                ("blue".into(), blue.clone()),
                ("green".into(), green.clone()),
            ],
        }
    }

    /// The target that answers while the chosen one is not ready, when the route names one.
    pub fn fallback(&self) -> Option<&Target> {
        match self {
            RouteSpec::Split { fallback, .. }
            | RouteSpec::Ab { fallback, .. }
            | RouteSpec::Shadow { fallback, .. }
            | RouteSpec::Canary { fallback, .. }
            | RouteSpec::Bluegreen { fallback, .. } => fallback.as_ref(),
        }
    }

    /// Parses one route from the JSON body of `PUT /v2/routes/{name}`.
    pub fn from_json(name: &str, body: &[u8]) -> Result<RouteSpec, TrafficError> {
        serde_json::from_slice(body).map_err(|e| TrafficError::Invalid {
            route: name.to_string(),
            field: String::new(),
            reason: e.to_string(),
        })
    }
}

/// The routes file: `[routes.NAME]` tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// The routes by name.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteSpec>,
}

impl RoutesFile {
    /// Parses the TOML text of `file` (named in errors).
    pub fn parse(file: &str, text: &str) -> Result<RoutesFile, TrafficError> {
        toml::from_str(text).map_err(|e| TrafficError::File {
            file: file.to_string(),
            reason: e.to_string().trim_end().to_string(),
        })
    }
}
