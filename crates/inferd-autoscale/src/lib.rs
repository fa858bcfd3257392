//! Autoscaling for inferd, as pure parts a thin driver runs:
//!
//! - [`trace`]: request arrivals per second, from the shipped scenarios (`diurnal`, `spike`,
//!   `bursty`, `daily-spike`) or a user's CSV (`timestamp,count`);
//! - [`profile`]: one replica's measured behaviour (service time by batch size, batching,
//!   cold start by phase), the numbers the simulator replays;
//! - [`forecast`]: an online Holt-Winters forecaster with a daily season, also what the server
//!   exports as its demand forecast;
//! - [`policy`]: the scaling policies (Kubernetes' HPA algorithm on CPU or queue depth, KEDA
//!   on a demand query, Knative's KPA with its stable and panic windows and scale to zero,
//!   and inferd's forecast), each a synchronous function of what it observes;
//! - [`sim`]: a discrete-event simulation of replicas behind a load balancer that replays a
//!   trace against a policy and reports SLO violations, drops, replica-hours and cold starts;
//! - [`plot`]: the replay drawn as a PNG;
//! - [`control`]: the same policies fed from live replicas' metrics pages, for a scaling loop
//!   outside Kubernetes (`inferd autoscale control`).
//!
//! Scaling itself stays with Kubernetes: these are the same rules, run here to compare them
//! before they are deployed.

pub mod control;
pub mod forecast;
pub mod plot;
pub mod policy;
pub mod profile;
pub mod sim;
pub mod trace;

/// A mistake in a trace, a profile or a policy's settings: what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A trace file's line is wrong (`line` counts from 1, the header being line 1).
    #[error("{file}: line {line}: {reason}")]
    TraceLine {
        /// The file.
        file: String,
        /// The line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A setting is impossible.
    #[error("{field}: {reason}")]
    Setting {
        /// The setting's name.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read.
    #[error("{0}")]
    Io(String),
}

/// Shorthand for an impossible setting.
pub(crate) fn setting(field: &str, reason: impl Into<String>) -> Error {
    Error::Setting {
        field: field.into(),
        reason: reason.into(),
    }
}
