//! Traffic routing policy for inferd, pure and synchronous (no I/O, no clock, no randomness of
//! its own: callers pass time and random draws in), so every decision is unit-tested:
//!
//! - [`spec`]: the route schema shared by `--routes-file` (TOML) and the admin API (JSON);
//! - [`validate`]: checks a route against the repository and the other routes;
//! - [`split`]: weighted and sticky target choice, shadow sampling;
//! - [`canary`]: the canary rollout state machine;
//! - [`stats`]: A/B test statistics on outcome feedback;
//! - [`experiment`]: an A/B test's outcomes per arm and its report;
//! - [`shadow`]: a shadow route's comparison of primary and shadow answers;
//! - [`bluegreen`]: the atomic switch and its refusal rules;
//! - [`table`]: the routes in force with their live state, swapped whole on each change.
//!
//! The server crate drives these with thin actors and exposes them over HTTP and gRPC.

pub mod abguard;
pub mod bluegreen;
pub mod canary;
pub mod experiment;
pub mod shadow;
pub mod spec;
pub mod split;
pub mod stats;
pub mod table;
pub mod validate;

#[cfg(test)]
mod canary_tests;
#[cfg(test)]
mod spec_tests;
#[cfg(test)]
mod table_tests;
#[cfg(test)]
mod testutil;

/// Why a route or a routes file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrafficError {
    /// The routes file does not parse.
    #[error("routes file {file}: {reason}")]
    File {
        /// The file.
        file: String,
        /// Where and why, as the TOML parser says it.
        reason: String,
    },
    /// A route breaks a rule.
    #[error("route '{route}'{}: {reason}", if field.is_empty() { String::new() } else { format!(", field '{field}'") })]
    Invalid {
        /// The route's name.
        route: String,
        /// The field at fault (empty when the whole body is).
        field: String,
        /// Why.
        reason: String,
    },
}

/// An action that makes no sense in the route's current state (the HTTP layer answers 409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action}: {why}")]
pub struct Conflict {
    /// The refused action.
    pub action: &'static str,
    /// Why not.
    pub why: String,
}
