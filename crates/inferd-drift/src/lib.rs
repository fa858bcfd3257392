//! # inferd-drift
//!
//! A model that answers wrong does not throw errors: the distributions of what it is asked and
//! what it answers move. This crate watches them, per model version, in bounded memory:
//!
//! - [`sketch`]: one feature's sketch: a numeric histogram over bins fixed by the reference's
//!   quantiles, or category counts (labels, argmax, booleans, hashed tokens of strings).
//! - [`stats`]: PSI, the two-sample Kolmogorov-Smirnov statistic and its p-value, and the
//!   Jensen-Shannon divergence, from two sketches over the same bins.
//! - [`monitor`]: a version's monitor: the reference (the first requests after READY, or a
//!   saved baseline), a sliding current window of time buckets, and the report with the
//!   thresholds it applied.
//! - [`report`]: the report's types.
//!
//! Pure and synchronous: no clock, no I/O. The caller passes the time and the rows.

pub mod monitor;
pub mod report;
pub mod sketch;
pub mod stats;

pub use monitor::{
    DriftConfig, FeatureReport, Monitor, Reference, Report, TensorKind, TensorReport,
};
