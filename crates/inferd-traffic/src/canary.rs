//! The canary rollout as a pure state machine: steps of rising weight, an analysis every
//! interval on the canary's own numbers against the primary's, rollback after `threshold`
//! failed analyses, promotion after the last step. Time comes in as seconds on a monotonic
//! clock, numbers as [`Window`]s; an actor feeds it and applies the weight it answers.
//!
//! Failed analyses count over the whole rollout (as Flagger's failed checks do): a canary that
//! fails now and then is rolled back, not retried forever.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::Conflict;
use crate::spec::{Guardrails, Step};
use crate::stats::Moments;

/// A side's numbers over one analysis interval.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Window {
    /// Requests finished in the interval.
    pub requests: u64,
    /// Of which failed (server-side: backend errors and timeouts, not client mistakes).
    pub errors: u64,
    /// p99 latency in seconds, when there were requests.
    pub p99_secs: Option<f64>,
    /// Outcome feedback received in the interval, by metric.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, Moments>,
    /// The largest PSI of this side's outputs against the primary's (drift monitoring; set
    /// on the canary's window when its route has `max_output_psi`), once there is enough to
    /// judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_psi: Option<f64>,
}

impl Window {
    /// Errors over requests; `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Phase {
    /// At `step`, since `since` (clock seconds), with `step_requests` canary requests seen in it.
    Progressing {
        /// Index into the steps.
        step: usize,
        /// When the step began.
        since: f64,
        /// Canary requests analysed in this step.
        step_requests: u64,
    },
    /// Held at `step` by an operator; analyses neither advance nor roll back.
    Paused {
        /// Index into the steps.
        step: usize,
        /// How far into the step it was when paused.
        elapsed: f64,
        /// Canary requests analysed in this step.
        step_requests: u64,
    },
    /// The canary takes all traffic.
    Promoted,
    /// The primary takes all traffic.
    RolledBack,
}

/// What happens to a rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An analysis at clock `now` over the last interval.
    Analysis {
        /// Clock seconds.
        now: f64,
        /// The canary's numbers.
        canary: Window,
        /// The primary's numbers.
        primary: Window,
    },
    /// An operator promotes the canary now.
    Promote,
    /// An operator rolls back now, for `reason`.
    Abort {
        /// Recorded as the decision's reason.
        reason: String,
    },
    /// An operator holds the rollout at clock `now`.
    Pause {
        /// Clock seconds.
        now: f64,
    },
    /// An operator lets it go on at clock `now`.
    Resume {
        /// Clock seconds.
        now: f64,
    },
}

/// One guardrail's result in an analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// `error_rate` or `p99_ratio`.
    pub name: String,
    /// The measured value (`None`: not enough data to say).
    pub value: Option<f64>,
    /// The limit.
    pub limit: f64,
    /// Whether the limit is a floor (the value must stay at or above it), not a ceiling.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub floor: bool,
    /// Whether it passed (a check without data passes: no traffic is not a failure).
    pub passed: bool,
}

/// Analyses a rollout remembers for its timeline.
pub const HISTORY: usize = 128;

/// One analysis as the rollout's timeline shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisRecord {
    /// When (the clock the analysis came with: wall-clock seconds in the server).
    pub at: f64,
    /// The step analysed, from 1.
    pub step: usize,
    /// The canary's weight during it.
    pub weight: u64,
    /// Canary requests in the analysis window.
    pub requests: u64,
    /// The checks and their numbers.
    pub checks: Vec<Check>,
    /// Whether every check passed.
    pub passed: bool,
    /// The decision taken (the rollout's reason after it).
    pub decision: String,
    /// The phase after it.
    pub phase: String,
}

/// A canary rollout: its plan and where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    steps: Vec<Step>,
    threshold: u32,
    guardrails: Guardrails,
    /// Where it is.
    pub phase: Phase,
    /// Failed analyses so far.
    pub failures: u32,
    /// Why the last decision (step, promotion, rollback, pause) was taken.
    pub reason: String,
    /// The last analysis's checks.
    pub last_checks: Vec<Check>,
    /// The last [`HISTORY`] analyses, oldest first.
    #[serde(default)]
    pub history: VecDeque<AnalysisRecord>,
}

impl Rollout {
    /// A rollout starting its first step at clock `now`. `steps` is non-empty and `threshold`
    /// at least 1 (validation guarantees both).
    pub fn new(steps: Vec<Step>, threshold: u32, guardrails: Guardrails, now: f64) -> Rollout {
        Rollout {
            steps,
            threshold: threshold.max(1),
            guardrails,
            phase: Phase::Progressing {
                step: 0,
                since: now,
                step_requests: 0,
            },
            failures: 0,
            reason: "started".into(),
            last_checks: Vec::new(),
            history: VecDeque::new(),
        }
    }

    /// The phase's name as the API shows it.
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Progressing { .. } => "progressing",
            Phase::Paused { .. } => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
        }
    }

    /// The canary's share of traffic now, 0-100.
    pub fn canary_weight(&self) -> u64 {
        match self.phase {
            Phase::Progressing { step, .. } | Phase::Paused { step, .. } => self
                .steps
                .get(step)
                .map_or(0, |s| s.weight.clamp(0, 100) as u64),
            Phase::Promoted => 100,
            Phase::RolledBack => 0,
        }
    }

    /// Applies `event`; a refused action changes nothing.
    pub fn apply(&mut self, event: Event) -> Result<(), Conflict> {
        let phase = self.phase_name();
        let conflict = |action| Conflict {
            action,
            why: format!("the canary is {phase}"),
        };
        match event {
            Event::Analysis {
                now,
                canary,
                primary,
            } => {
                if let Phase::Progressing { .. } = self.phase {
                    self.analyse(now, canary, primary);
                }
                // Analyses of a paused or finished rollout change nothing.
                Ok(())
            }
            Event::Promote => match self.phase {
                Phase::Progressing { .. } | Phase::Paused { .. } => {
                    self.phase = Phase::Promoted;
                    self.reason = "promoted by an operator".into();
                    Ok(())
                }
                Phase::Promoted | Phase::RolledBack => Err(conflict("promote")),
            },
            Event::Abort { reason } => match self.phase {
                Phase::Progressing { .. } | Phase::Paused { .. } => {
                    self.phase = Phase::RolledBack;
                    self.reason = format!("aborted by an operator: {reason}");
                    Ok(())
                }
                Phase::Promoted | Phase::RolledBack => Err(conflict("abort")),
            },
            Event::Pause { now } => match self.phase {
                Phase::Progressing {
                    step,
                    since,
                    step_requests,
                } => {
                    self.phase = Phase::Paused {
                        step,
                        elapsed: (now - since).max(0.0),
                        step_requests,
                    };
                    self.reason = "paused by an operator".into();
                    Ok(())
                }
                _ => Err(conflict("pause")),
            },
            Event::Resume { now } => match self.phase {
                Phase::Paused {
                    step,
                    elapsed,
                    step_requests,
                } => {
                    self.phase = Phase::Progressing {
                        step,
                        since: now - elapsed,
                        step_requests,
                    };
                    self.reason = "resumed by an operator".into();
                    Ok(())
                }
                _ => Err(conflict("resume")),
            },
        }
    }

    fn checks(&self, canary: &Window, primary: &Window) -> Vec<Check> {
        let mut checks = Vec::new();
        if let Some(limit) = self.guardrails.max_error_rate {
            let value = canary.error_rate();
            checks.push(Check {
                name: "error_rate".into(),
                value,
                limit,
                passed: value.is_none_or(|v| v <= limit),
                floor: false,
            });
        }
        if let Some(limit) = self.guardrails.max_p99_ratio {
            let value = match (canary.p99_secs, primary.p99_secs) {
                (Some(c), Some(p)) if p > 0.0 => Some(c / p),
                _ => None,
            };
            checks.push(Check {
                name: "p99_ratio".into(),
                value,
                limit,
                passed: value.is_none_or(|v| v <= limit),
                floor: false,
            });
        }
        if let Some(limit) = self.guardrails.max_output_psi {
            let value = canary.output_psi;
            checks.push(Check {
                name: "output_psi".into(),
                value,
                limit,
                passed: value.is_none_or(|v| v <= limit),
                floor: false,
            });
        }
        for g in &self.guardrails.metrics {
            let value = match (
                canary.metrics.get(&g.metric),
                primary.metrics.get(&g.metric),
            ) {
                (Some(c), Some(p))
                    if c.n >= g.min_samples && p.n >= g.min_samples && p.mean != 0.0 =>
                {
                    Some(c.mean / p.mean)
                }
                _ => None,
            };
            let name = format!("{}_ratio", g.metric);
            for (limit, floor) in [(g.min_ratio, true), (g.max_ratio, false)] {
                let Some(limit) = limit else { continue };
                checks.push(Check {
                    name: name.clone(),
                    value,
                    limit,
                    passed: value.is_none_or(|v| if floor { v >= limit } else { v <= limit }),
                    floor,
                });
            }
        }
        checks
    }

    fn analyse(&mut self, now: f64, canary: Window, primary: Window) {
        let Phase::Progressing { step, .. } = self.phase else {
            return;
        };
        let weight = self.canary_weight();
        let requests = canary.requests;
        self.decide(now, canary, primary);
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(AnalysisRecord {
            at: now,
            step: step + 1,
            weight,
            requests,
            checks: self.last_checks.clone(),
            passed: self.last_checks.iter().all(|c| c.passed),
            decision: self.reason.clone(),
            phase: self.phase_name().to_string(),
        });
    }

    fn decide(&mut self, now: f64, canary: Window, primary: Window) {
        let Phase::Progressing {
            step,
            since,
            step_requests,
        } = self.phase
        else {
            return;
        };
        let checks = self.checks(&canary, &primary);
        let failed: Vec<String> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| {
                format!(
                    "{} {:.4} {} {}",
                    c.name,
                    c.value.unwrap_or(f64::NAN),
                    if c.floor { "<" } else { ">" },
                    c.limit
                )
            })
            .collect();
        self.last_checks = checks;
        let step_requests = step_requests + canary.requests;
        if !failed.is_empty() {
            self.failures += 1;
            if self.failures >= self.threshold {
                self.phase = Phase::RolledBack;
                self.reason = format!(
                    "rolled back at step {} after {} failed analyses: {}",
                    step + 1,
                    self.failures,
                    failed.join(", ")
                );
                return;
            }
            self.reason = format!(
                "analysis failed ({} of {} allowed): {}",
                self.failures,
                self.threshold,
                failed.join(", ")
            );
            self.phase = Phase::Progressing {
                step,
                since,
                step_requests,
            };
            return;
        }
        let plan = &self.steps[step.min(self.steps.len() - 1)];
        let long_enough = now - since >= plan.duration_secs as f64;
        if long_enough && step_requests >= plan.min_requests {
            if step + 1 >= self.steps.len() {
                self.phase = Phase::Promoted;
                self.reason = format!("promoted after {} healthy steps", self.steps.len());
            } else {
                self.phase = Phase::Progressing {
                    step: step + 1,
                    since: now,
                    step_requests: 0,
                };
                self.reason = format!(
                    "step {} healthy; canary weight {} -> {}",
                    step + 1,
                    plan.weight,
                    self.steps[step + 1].weight
                );
            }
        } else {
            self.phase = Phase::Progressing {
                step,
                since,
                step_requests,
            };
            self.reason = if long_enough {
                format!(
                    "waiting for requests: {step_requests} of {} in step {}",
                    plan.min_requests,
                    step + 1
                )
            } else {
                format!("step {} healthy so far", step + 1)
            };
        }
    }
}
