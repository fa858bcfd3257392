//! Traffic routes at the front door. A request to `/v2/models/{name}/infer` (or gRPC
//! `ModelInfer`) that names a route and no version goes where the route sends it. The policy
//! is pure and lives in `inferd-traffic`; this module holds the table in force and drives it:
//!
//! - this file: [`Traffic`], the table (swapped whole, so a request sees one table from start
//!   to end), resolution, and every change (validated, saved, audited, then swapped);
//! - [`auth`]: admin and feedback bearer tokens;
//! - [`persist`]: the state dir (routes with their state, audit log);
//! - [`observe`]: per-route windows for canary analysis, and per-route metrics;
//! - [`controller`]: the actor that runs canary analyses every interval;
//! - [`prom`]: analyses on Prometheus's numbers, summed over replicas;
//! - [`ab`]: A/B tests' exposures and outcome feedback;
//! - [`shadow`]: shadow routes' mirrored copies, comparison and prediction log;
//! - [`shared`]: state shared by replicas (`--state-store`), and [`etcd`] which keeps it;
//! - [`admin`]: the admin API's HTTP handlers;
//! - [`view`]: the routes as the API shows them.

pub mod ab;
mod ab_guard;
pub mod admin;
pub mod auth;
pub mod controller;
pub mod observe;
pub mod persist;
pub mod prom;
pub mod shadow;
pub mod shared;
pub mod view;

#[cfg(feature = "etcd")]
pub mod etcd;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use inferd_traffic::TrafficError;
use inferd_traffic::canary::{Event, Phase};
use inferd_traffic::spec::{RouteSpec, Target};
use inferd_traffic::table::{ActionError, Decision, Table};

use self::auth::Auth;
use self::observe::Observed;
use self::persist::{AuditEntry, StateDir, rfc3339_now};

/// The audit log's `who` for the canary controller's decisions.
pub const CONTROLLER: &str = "controller";

/// Where one request goes, and under which route.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The route's name.
    pub route: String,
    /// Its decision.
    pub decision: Decision,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The route or body is invalid (400).
    #[error(transparent)]
    Invalid(#[from] TrafficError),
    /// Some other request body is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such route (404).
    #[error("no route named '{0}'")]
    NotFound(String),
    /// The route's kind or state refuses the action (409).
    #[error("{0}")]
    Conflict(String),
    /// The state dir could not be written; nothing changed (500).
    #[error("cannot save the routes in the state dir: {0}")]
    Storage(String),
}

impl ChangeError {
    fn from_action(route: &str, e: ActionError) -> ChangeError {
        match e {
            ActionError::NoRoute => ChangeError::NotFound(route.to_string()),
            other => ChangeError::Conflict(format!("route '{route}': {other}")),
        }
    }
}

/// The traffic routes of one server.
#[derive(Debug, Default)]
pub struct Traffic {
    table: RwLock<Arc<Table>>,
    /// Serialises changes: each builds on the last.
    changes: tokio::sync::Mutex<()>,
    state: Option<StateDir>,
    /// Who may change routes and send feedback.
    pub auth: Auth,
    /// What each route's targets did.
    pub observed: Observed,
    /// A/B tests' outcomes.
    pub experiments: ab::Experiments,
    /// Shadow routes' copies and comparisons.
    pub shadows: Arc<shadow::Shadows>,
    /// When each canary was last analysed (clock seconds).
    analysed: Mutex<HashMap<String, f64>>,
    /// The replicas' shared store, when there is one.
    shared: std::sync::OnceLock<Arc<dyn shared::SharedState>>,
    /// The shared store's revision of the table in force (0 without a store); held while
    /// the table is swapped, so an older revision never replaces a newer one.
    revision: Mutex<i64>,
    /// The engine whose readiness decides when a route's fallback answers.
    engine: std::sync::OnceLock<inferd_core::Engine>,
}

/// A sticky key carried as the KServe request parameter `name` (a string or an integer).
pub fn param_key(
    params: &std::collections::BTreeMap<String, inferd_core::request::ParamValue>,
    name: &str,
) -> Option<String> {
    use inferd_core::request::ParamValue;
    match params.get(name)? {
        ParamValue::String(s) => Some(s.clone()),
        ParamValue::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Wall-clock seconds: rollouts keep their step start across restarts, so not a monotonic clock.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Traffic {
    /// Routes guarded by `auth`, saved in `state` when given.
    pub fn new(auth: Auth, state: Option<StateDir>) -> Traffic {
        Traffic {
            auth,
            shadows: Arc::new(shadow::Shadows::new(
                state.as_ref().map(|s| s.path().join("predictions")),
            )),
            state,
            ..Traffic::default()
        }
    }

    /// Gives routes the engine, whose versions' readiness decides when a fallback answers.
    pub fn attach(&self, engine: inferd_core::Engine) {
        let _ = self.engine.set(engine);
    }

    /// The state dir, if any.
    pub fn state_dir(&self) -> Option<&StateDir> {
        self.state.as_ref()
    }

    /// The table now (a cheap snapshot).
    pub fn snapshot(&self) -> Arc<Table> {
        // A poisoned lock still holds a whole table: swaps replace the Arc in one store.
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, table: Table) {
        *self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(table);
    }

    /// Puts `table` in force at start (before any request) and saves it; restores saved A/B
    /// outcomes.
    pub fn install(&self, table: Table) -> Result<(), String> {
        if let Some(s) = &self.state {
            if let Some(o) = s.load_outcomes()? {
                self.experiments.restore(o);
            }
            s.save(&table)
                .map_err(|e| format!("state dir {}: {e}", s.path().display()))?;
        }
        self.replace(table);
        Ok(())
    }

    /// Where a request for `name` goes, if `name` is a route: `key` finds the request's sticky
    /// key by the route's header name.
    pub fn resolve(&self, name: &str, key: &dyn Fn(&str) -> Option<String>) -> Option<Resolved> {
        let table = self.snapshot();
        let route = table.get(name)?;
        let sticky = route.sticky_header().and_then(key);
        let mut decision = route.resolve(
            name,
            sticky.as_deref(),
            fastrand::u64(..),
            fastrand::u64(..),
        );
        // A target with no ready version (scaled from zero, still loading) hands its
        // requests to the route's fallback while the fallback is ready.
        if let (Some(fallback), Some(engine)) = (route.spec.fallback(), self.engine.get()) {
            let ready = |t: &Target| engine.route(&t.model, t.version).is_ok();
            if !ready(&decision.target) && ready(fallback) {
                decision.target = fallback.clone();
            }
        }
        Some(Resolved {
            route: name.to_string(),
            decision,
        })
    }

    /// Records what a routed request did: its window and metrics, and an A/B exposure.
    pub fn served(&self, r: &Resolved, secs: f64, failed: bool, request_id: Option<&str>) {
        let arm = r.decision.target.to_string();
        self.observed.record(&r.route, &arm, secs, failed);
        if failed {
            return;
        }
        match self.snapshot().get(&r.route).map(|route| &route.spec) {
            Some(RouteSpec::Ab { .. }) => self.experiments.exposed(&r.route, &arm, request_id),
            Some(RouteSpec::Canary { guardrails, .. }) if !guardrails.metrics.is_empty() => {
                if let Some(id) = request_id {
                    self.experiments.remember(&r.route, &arm, id);
                }
            }
            _ => {}
        }
    }

    /// Records outcome feedback (see [`ab::Feedback`]) against the arm that answered.
    pub fn feedback(&self, body: &serde_json::Value) -> Result<serde_json::Value, ChangeError> {
        let f = ab::Feedback::parse(body).map_err(ChangeError::BadRequest)?;
        let table = self.snapshot();
        let (route, arm) = match &f.by {
            ab::By::Request(id) => self.experiments.by_request(id).ok_or_else(|| {
                ChangeError::NotFound(format!(
                    "request '{id}' (no A/B route answered it recently)"
                ))
            })?,
            ab::By::Key { route, key } => {
                let r = table
                    .get(route)
                    .ok_or_else(|| ChangeError::NotFound(route.clone()))?;
                (
                    route.clone(),
                    r.resolve(route, Some(key), 0, 0).target.to_string(),
                )
            }
        };
        let metric = match table.get(&route).map(|r| &r.spec) {
            Some(RouteSpec::Ab { experiment, .. }) => {
                let metric = f.metric.unwrap_or_else(|| experiment.metric.clone());
                self.experiments.feedback(&route, &arm, &metric, f.value);
                metric
            }
            // A canary's business metrics: into the current analysis window.
            Some(RouteSpec::Canary { guardrails, .. }) if !guardrails.metrics.is_empty() => {
                let metric = f
                    .metric
                    .unwrap_or_else(|| guardrails.metrics[0].metric.clone());
                self.observed.feedback(&route, &arm, &metric, f.value);
                metric
            }
            _ => {
                return Err(ChangeError::Conflict(format!(
                    "route '{route}' is not an A/B test or a canary with metric guardrails"
                )));
            }
        };
        Ok(serde_json::json!({ "route": route, "target": arm, "metric": metric }))
    }

    /// Serves one routed request: the decision's target answers; the request is recorded
    /// (window, metrics, A/B exposure) and, on a shadow route, copied to the shadow once the
    /// answer is in.
    pub async fn infer(
        &self,
        engine: &inferd_core::Engine,
        r: &Resolved,
        req: inferd_core::InferRequest,
        request_id: Option<&str>,
    ) -> inferd_core::Result<inferd_core::InferResponse> {
        let t = &r.decision.target;
        let copy = r.decision.shadow.as_ref().map(|_| req.clone());
        let started = std::time::Instant::now();
        let result = engine.infer(&t.model, t.version, req).await;
        let secs = started.elapsed().as_secs_f64();
        let failed = result
            .as_ref()
            .is_err_and(|e| crate::error::codes(e).0.is_server_error());
        self.served(r, secs, failed, request_id);
        if let Some(copy) = copy {
            self.mirror(engine, r, copy, &result, secs, request_id);
        }
        result
    }

    /// Sends a copy of a shadow route's request to its shadow target, after the primary
    /// answered `result` in `secs` (see [`shadow`]).
    fn mirror(
        &self,
        engine: &inferd_core::Engine,
        r: &Resolved,
        request: inferd_core::InferRequest,
        result: &inferd_core::Result<inferd_core::InferResponse>,
        secs: f64,
        request_id: Option<&str>,
    ) {
        let Some(target) = &r.decision.shadow else {
            return;
        };
        self.shadows.mirror(
            engine,
            shadow::Mirror {
                route: r.route.clone(),
                request_id: request_id.map(str::to_string),
                primary: (r.decision.target.clone(), shadow::answer(result, secs)),
                shadow: target.clone(),
                request,
            },
        );
    }

    /// A shadow route's comparison so far.
    pub fn shadow_report(&self, route: &str) -> serde_json::Value {
        self.shadows.report(route)
    }

    /// Saves A/B outcomes that changed since the last save.
    pub async fn save_outcomes(&self) {
        if let Some(store) = self.shared.get() {
            if let Some(o) = self.experiments.take_changed() {
                let json = serde_json::to_string(&o).unwrap_or_default();
                if let Err(e) = store.save_outcomes(json).await {
                    tracing::warn!("cannot save A/B outcomes in {}: {e}", store.describe());
                }
            }
            return;
        }
        let (Some(s), Some(o)) = (self.state.clone(), self.experiments.take_changed()) else {
            return;
        };
        match tokio::task::spawn_blocking(move || s.save_outcomes(&o)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cannot save A/B outcomes in the state dir: {e}"),
            Err(e) => tracing::warn!("cannot save A/B outcomes in the state dir: {e}"),
        }
    }

    /// Applies one change: `build` makes the new table from the current one; it is saved,
    /// audited and swapped in, or refused with nothing changed. An empty `why` is filled with
    /// the rollout's own reason. Controller analyses are audited only when they move the
    /// rollout (a phase, a step, a failed check), so the log holds decisions, not heartbeats.
    pub async fn change(
        &self,
        who: &str,
        action: &str,
        route: &str,
        why: &str,
        build: impl FnOnce(&Table) -> Result<Table, ChangeError>,
    ) -> Result<Arc<Table>, ChangeError> {
        let _one_at_a_time = self.changes.lock().await;
        let current = self.snapshot();
        let next = build(&current)?;
        let before = current.get(route).and_then(|r| r.rollout.as_ref());
        let after = next.get(route).and_then(|r| r.rollout.as_ref());
        let moved = match (before, after) {
            (Some(b), Some(a)) => {
                b.phase_name() != a.phase_name()
                    || b.canary_weight() != a.canary_weight()
                    || b.failures != a.failures
            }
            _ => true,
        };
        let entry = AuditEntry {
            time: rfc3339_now(),
            who: who.to_string(),
            action: action.to_string(),
            route: route.to_string(),
            why: if why.is_empty() {
                after.map(|a| a.reason.clone()).unwrap_or_default()
            } else {
                why.to_string()
            },
            state: next.get(route).map(|r| r.state().to_string()),
        };
        let audit = action != "analysis" || moved;
        let revision = match self.shared.get() {
            Some(store) => Some(self.swap_shared(store, &next, &entry).await?),
            None => None,
        };
        if let Some(s) = self.state.clone() {
            let t = next.clone();
            let e = entry.clone();
            tokio::task::spawn_blocking(move || {
                s.save(&t)?;
                if audit { s.audit(&e) } else { Ok(()) }
            })
            .await
            .map_err(|e| ChangeError::Storage(e.to_string()))?
            .map_err(|e| ChangeError::Storage(e.to_string()))?;
        }
        if audit {
            tracing::info!(
                who = %entry.who,
                action = %entry.action,
                route = %entry.route,
                why = %entry.why,
                state = entry.state.as_deref().unwrap_or("deleted"),
                "route changed"
            );
        }
        if matches!(action, "put" | "delete") {
            self.observed.forget(route);
            self.experiments.forget(route);
            self.shadows.forget(route);
            self.analysed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(route);
        }
        match revision {
            Some(rev) => {
                self.replace_at(next, rev);
            }
            None => self.replace(next),
        }
        Ok(self.snapshot())
    }

    /// Sets route `name` to `spec`, validated against `models` (the repository's model names).
    pub async fn put(
        &self,
        who: &str,
        name: &str,
        spec: RouteSpec,
        models: &(dyn Fn(&str) -> bool + Sync),
        why: &str,
    ) -> Result<Arc<Table>, ChangeError> {
        self.change(who, "put", name, why, |t| {
            Ok(t.with_route(name, spec, models, now())?)
        })
        .await
    }

    /// Deletes route `name`.
    pub async fn delete(&self, who: &str, name: &str, why: &str) -> Result<(), ChangeError> {
        self.change(who, "delete", name, why, |t| {
            t.without_route(name)
                .ok_or_else(|| ChangeError::NotFound(name.to_string()))
        })
        .await
        .map(|_| ())
    }

    /// An operator's canary action (`promote`, `abort`, `pause`, `resume`).
    pub async fn canary_action(
        &self,
        who: &str,
        name: &str,
        action: &str,
        why: &str,
    ) -> Result<Arc<Table>, ChangeError> {
        let event = match action {
            "promote" => Event::Promote,
            "abort" => Event::Abort {
                reason: if why.is_empty() {
                    format!("by {who}")
                } else {
                    why.to_string()
                },
            },
            "pause" => Event::Pause { now: now() },
            "resume" => Event::Resume { now: now() },
            other => return Err(ChangeError::Conflict(format!("unknown action '{other}'"))),
        };
        self.change(who, action, name, why, |t| {
            t.with_canary_event(name, event)
                .map_err(|e| ChangeError::from_action(name, e))
        })
        .await
    }

    /// Switches blue-green route `name`, if `ready` says the incoming side can serve.
    pub async fn switch(
        &self,
        who: &str,
        name: &str,
        ready: &(dyn Fn(&Target) -> bool + Sync),
        why: &str,
    ) -> Result<Arc<Table>, ChangeError> {
        self.change(who, "switch", name, why, |t| {
            t.with_switch(name, ready)
                .map_err(|e| ChangeError::from_action(name, e))
        })
        .await
    }

    /// Runs every canary analysis that is due at clock `now`; returns how many ran.
    pub async fn analyse_due(&self, now: f64) -> usize {
        // With replicas, one decides (the lease holder) and the others follow its writes.
        if self.shared.get().is_some_and(|s| !s.is_decider()) {
            return 0;
        }
        let due: Vec<(String, Target, Target, Option<String>, u64, bool)> = {
            let table = self.snapshot();
            let mut analysed = self.analysed.lock().unwrap_or_else(|p| p.into_inner());
            table
                .iter()
                .filter_map(|(name, r)| {
                    let RouteSpec::Canary {
                        primary,
                        canary,
                        interval_secs,
                        prometheus,
                        guardrails,
                        ..
                    } = &r.spec
                    else {
                        return None;
                    };
                    let ro = r.rollout.as_ref()?;
                    if !matches!(ro.phase, Phase::Progressing { .. }) {
                        return None;
                    }
                    let last = analysed.entry(name.clone()).or_insert(now);
                    if now - *last < *interval_secs as f64 {
                        return None;
                    }
                    *last = now;
                    Some((
                        name.clone(),
                        primary.clone(),
                        canary.clone(),
                        prometheus.clone(),
                        *interval_secs,
                        guardrails.max_output_psi.is_some(),
                    ))
                })
                .collect()
        };
        let mut ran = 0;
        for (name, primary, canary, prometheus, interval, output_psi) in due {
            let mut c = self.observed.take(&name, &canary.to_string());
            let mut p = self.observed.take(&name, &primary.to_string());
            if let Some(url) = prometheus {
                // Request numbers from Prometheus; feedback metrics stay this replica's.
                match prom::windows(&url, &name, &primary, &canary, interval).await {
                    Ok((pw, cw)) => {
                        tracing::debug!(route = %name, primary = ?pw, canary = ?cw, "canary analysis: Prometheus's numbers");
                        (p, c) = (
                            inferd_traffic::canary::Window {
                                metrics: p.metrics,
                                ..pw
                            },
                            inferd_traffic::canary::Window {
                                metrics: c.metrics,
                                ..cw
                            },
                        );
                    }
                    Err(e) => {
                        // No numbers, no decision: the rollout holds where it is.
                        tracing::warn!(route = %name, "canary analysis skipped: Prometheus: {e}");
                        continue;
                    }
                }
            }
            // Drift is this replica's own: the canary's outputs against the primary's over the
            // same window (its reference while that window is thin).
            if output_psi && let Some(engine) = self.engine.get() {
                c.output_psi = engine.drift_output_psi(
                    (&canary.model, canary.version),
                    (&primary.model, primary.version),
                );
            }
            let event = Event::Analysis {
                now,
                canary: c,
                primary: p,
            };
            let result = self
                .change(CONTROLLER, "analysis", &name, "", |t| {
                    t.with_canary_event(&name, event)
                        .map_err(|e| ChangeError::from_action(&name, e))
                })
                .await;
            match result {
                Ok(_) => ran += 1,
                Err(e) => tracing::warn!(route = %name, "canary analysis not applied: {e}"),
            }
        }
        ran
    }
}
