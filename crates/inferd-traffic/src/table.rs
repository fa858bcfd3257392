//! The routes in force and their live state, as one value the server swaps atomically: a
//! request resolves against a snapshot, a change builds a new table (validated first, so a
//! refused change leaves the running routes as they were), and the state a restart must keep
//! (canary progress, blue-green side) round-trips through [`Snapshot`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::canary::{Event, Rollout};
use crate::spec::{Color, RouteSpec, Target};
use crate::split::{pick, sampled};
use crate::validate::{Names, validate};
use crate::{Conflict, TrafficError, bluegreen};

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The target whose answer the caller gets.
    pub target: Target,
    /// A target that gets a copy (shadow routes), answered to nobody.
    pub shadow: Option<Target>,
}

/// A route with its live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The route as written.
    pub spec: RouteSpec,
    /// A canary's rollout (canary routes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// A blue-green route's active side, which `switch` changes (starts as the spec's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<Color>,
    /// An A/B test's arms halted by its drift guardrail (`MODEL/VERSION` -> why); their
    /// share goes to the control. Cleared when the route is written again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub halted: BTreeMap<String, String>,
}

impl Route {
    /// A route starting now (clock seconds `now`).
    pub fn new(spec: RouteSpec, now: f64) -> Route {
        let rollout = match &spec {
            RouteSpec::Canary {
                steps,
                threshold,
                guardrails,
                ..
            } => Some(Rollout::new(
                steps.clone(),
                *threshold,
                guardrails.clone(),
                now,
            )),
            _ => None,
        };
        let active = match &spec {
            RouteSpec::Bluegreen { active, .. } => Some(*active),
            _ => None,
        };
        Route {
            spec,
            rollout,
            active,
            halted: BTreeMap::new(),
        }
    }

    /// The state the API shows: `progressing`, `paused`, `promoted`, `rolled_back` for a
    /// canary, `steady` otherwise.
    pub fn state(&self) -> &'static str {
        if !self.halted.is_empty() {
            return "halted";
        }
        self.rollout.as_ref().map_or("steady", Rollout::phase_name)
    }

    /// Each target with its current weight (out of their sum).
    pub fn weights(&self) -> Vec<(Target, u64)> {
        match &self.spec {
            RouteSpec::Split { targets, .. } => targets
                .iter()
                .map(|t| (t.target(), t.weight.max(0) as u64))
                .collect(),
            RouteSpec::Ab { targets, .. } => {
                // Halted arms' shares go to the control (the first arm).
                let mut w: Vec<(Target, u64)> = targets
                    .iter()
                    .map(|t| (t.target(), t.weight.max(0) as u64))
                    .collect();
                let freed: u64 = w
                    .iter_mut()
                    .skip(1)
                    .filter(|(t, _)| self.halted.contains_key(&t.to_string()))
                    .map(|(_, x)| std::mem::take(x))
                    .sum();
                if let Some(first) = w.first_mut() {
                    first.1 += freed;
                }
                w
            }
            RouteSpec::Shadow { primary, .. } => vec![(primary.clone(), 100)],
            RouteSpec::Canary {
                primary, canary, ..
            } => {
                let c = self.rollout.as_ref().map_or(0, Rollout::canary_weight);
                vec![(primary.clone(), 100 - c), (canary.clone(), c)]
            }
            RouteSpec::Bluegreen { blue, green, .. } => {
                let on_blue = self.active.unwrap_or(Color::Blue) == Color::Blue;
                vec![
                    (blue.clone(), u64::from(on_blue) * 100),
                    (green.clone(), u64::from(!on_blue) * 100),
                ]
            }
        }
    }

    /// The header (or metadata key, or request parameter) holding the sticky key, if the
    /// route's kind splits.
    pub fn sticky_header(&self) -> Option<&str> {
        match &self.spec {
            RouteSpec::Split { sticky_header, .. }
            | RouteSpec::Ab { sticky_header, .. }
            | RouteSpec::Canary { sticky_header, .. } => Some(sticky_header),
            _ => None,
        }
    }

    /// Where a request goes: `name` salts the sticky hash, `key` is its sticky key if any,
    /// `random` and `random2` are uniform draws (the split's and the shadow sample's).
    pub fn resolve(&self, name: &str, key: Option<&str>, random: u64, random2: u64) -> Decision {
        let weights = self.weights();
        let w: Vec<u64> = weights.iter().map(|(_, w)| *w).collect();
        let arm = pick(&w, name, key, random);
        let target = weights[arm.min(weights.len() - 1)].0.clone();
        let shadow = match &self.spec {
            RouteSpec::Shadow {
                shadow, percent, ..
            } if sampled(percent.clamp(&0, &100).unsigned_abs(), random2) => Some(shadow.clone()),
            _ => None,
        };
        Decision { target, shadow }
    }
}

/// The routes by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    routes: BTreeMap<String, Route>,
}

/// What a restart keeps: every route with its state. Written as JSON to the state dir.
pub type Snapshot = Table;

impl Table {
    /// A table of `specs` (a routes file), each validated against `models`; the first
    /// refusal is the error.
    pub fn from_specs(
        specs: &BTreeMap<String, RouteSpec>,
        models: &dyn Fn(&str) -> bool,
        now: f64,
    ) -> Result<Table, TrafficError> {
        let mut t = Table::default();
        for (name, spec) in specs {
            let names = Known {
                models,
                routes: specs,
                this: name,
            };
            validate(name, spec, &names)?;
            t.routes.insert(name.clone(), Route::new(spec.clone(), now));
        }
        Ok(t)
    }

    /// The table a restart starts from: the `saved` routes with their state, except where
    /// the routes `file` now says something else (a route whose spec changed in the file
    /// starts over from the file; one the file adds is added). Routes made through the API
    /// and absent from the file are kept.
    pub fn restored(saved: Table, file: Table) -> Table {
        let mut t = saved;
        for (name, route) in file.routes {
            let same = t.routes.get(&name).is_some_and(|r| r.spec == route.spec);
            if !same {
                t.routes.insert(name, route);
            }
        }
        t
    }

    /// The route called `name`.
    pub fn get(&self, name: &str) -> Option<&Route> {
        self.routes.get(name)
    }

    /// Every route, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Route)> {
        self.routes.iter()
    }

    /// A table with `name` set to `spec` (new, or replacing the route and restarting its
    /// state), or the refusal; `self` is unchanged either way.
    pub fn with_route(
        &self,
        name: &str,
        spec: RouteSpec,
        models: &dyn Fn(&str) -> bool,
        now: f64,
    ) -> Result<Table, TrafficError> {
        let specs: BTreeMap<String, RouteSpec> = self
            .routes
            .iter()
            .map(|(n, r)| (n.clone(), r.spec.clone()))
            .collect();
        validate(
            name,
            &spec,
            &Known {
                models,
                routes: &specs,
                this: name,
            },
        )?;
        let mut t = self.clone();
        t.routes.insert(name.to_string(), Route::new(spec, now));
        Ok(t)
    }

    /// A table without `name`; `None` when there is no such route.
    pub fn without_route(&self, name: &str) -> Option<Table> {
        let mut t = self.clone();
        t.routes.remove(name).map(|_| t)
    }

    /// A table with `event` applied to canary route `name`'s rollout.
    pub fn with_canary_event(&self, name: &str, event: Event) -> Result<Table, ActionError> {
        let mut t = self.clone();
        let route = t.routes.get_mut(name).ok_or(ActionError::NoRoute)?;
        let rollout = route.rollout.as_mut().ok_or(ActionError::WrongKind {
            kind: route.spec.kind(),
        })?;
        rollout.apply(event).map_err(ActionError::Conflict)?;
        Ok(t)
    }

    /// A table with A/B route `name`'s arm `arm` halted for `why` (already halted: unchanged).
    pub fn with_ab_halt(&self, name: &str, arm: &Target, why: &str) -> Result<Table, ActionError> {
        let mut t = self.clone();
        let route = t.routes.get_mut(name).ok_or(ActionError::NoRoute)?;
        if !matches!(route.spec, RouteSpec::Ab { .. }) {
            return Err(ActionError::WrongKind {
                kind: route.spec.kind(),
            });
        }
        route
            .halted
            .entry(arm.to_string())
            .or_insert_with(|| why.to_string());
        Ok(t)
    }

    /// A table with blue-green route `name` switched, if `ready(target)` says the incoming
    /// side can serve.
    pub fn with_switch(
        &self,
        name: &str,
        ready: &dyn Fn(&Target) -> bool,
    ) -> Result<Table, ActionError> {
        let mut t = self.clone();
        let route = t.routes.get_mut(name).ok_or(ActionError::NoRoute)?;
        let RouteSpec::Bluegreen { blue, green, .. } = &route.spec else {
            return Err(ActionError::WrongKind {
                kind: route.spec.kind(),
            });
        };
        let active = route.active.unwrap_or(Color::Blue);
        let incoming = match active {
            Color::Blue => green,
            Color::Green => blue,
        };
        let next = bluegreen::switch(active, ready(incoming)).map_err(ActionError::Conflict)?;
        route.active = Some(next);
        Ok(t)
    }
}

/// Why an action on a route was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// No route of that name (404).
    #[error("no such route")]
    NoRoute,
    /// The action does not apply to the route's kind (409).
    #[error("the action does not apply to a {kind} route")]
    WrongKind {
        /// The route's kind.
        kind: &'static str,
    },
    /// The route's state refuses it (409).
    #[error(transparent)]
    Conflict(Conflict),
}

struct Known<'a> {
    models: &'a dyn Fn(&str) -> bool,
    routes: &'a BTreeMap<String, RouteSpec>,
    this: &'a str,
}

impl Names for Known<'_> {
    fn is_model(&self, name: &str) -> bool {
        (self.models)(name)
    }
    fn is_route(&self, name: &str) -> bool {
        // A route named after its own model is that model's policy, not another route.
        name != self.this && self.routes.contains_key(name) && !(self.models)(name)
    }
}
