//! The A/B drift guardrail's driver: every `guardrails.interval_secs`, each treatment arm's
//! outputs are compared with the control's over the same window (this replica's own monitors, as
//! for a canary's `max_output_psi`); the pure [`inferd_traffic::abguard::judge`] says which arms
//! to halt, and each halt is a change of the route (audit log, state dir, replicas).

use inferd_traffic::abguard;
use inferd_traffic::spec::{RouteSpec, Target};

use super::{CONTROLLER, ChangeError, Traffic};

impl Traffic {
    /// Runs every A/B guardrail check due at clock `now`; returns how many arms it halted.
    pub async fn guard_ab_due(&self, now: f64) -> usize {
        if self.shared.get().is_some_and(|s| !s.is_decider()) {
            return 0;
        }
        let Some(engine) = self.engine.get() else {
            return 0;
        };
        // (route, control, limit, arms still running)
        let due: Vec<(String, Target, f64, Vec<Target>)> = {
            let table = self.snapshot();
            let mut analysed = self.analysed.lock().unwrap_or_else(|p| p.into_inner());
            table
                .iter()
                .filter_map(|(name, r)| {
                    let RouteSpec::Ab {
                        targets,
                        guardrails: Some(g),
                        ..
                    } = &r.spec
                    else {
                        return None;
                    };
                    let limit = g.max_output_psi?;
                    let last = analysed.entry(name.clone()).or_insert(now);
                    if now - *last < g.interval_secs as f64 {
                        return None;
                    }
                    *last = now;
                    let control = targets.first()?.target();
                    let arms = targets
                        .iter()
                        .skip(1)
                        .map(|t| t.target())
                        .filter(|t| !r.halted.contains_key(&t.to_string()))
                        .collect();
                    Some((name.clone(), control, limit, arms))
                })
                .collect()
        };
        let mut halted = 0;
        for (name, control, limit, arms) in due {
            let psis: Vec<(Target, Option<f64>)> = arms
                .into_iter()
                .map(|a| {
                    let psi = engine
                        .drift_output_psi((&a.model, a.version), (&control.model, control.version));
                    (a, psi)
                })
                .collect();
            for (arm, why) in abguard::judge(&control, limit, &psis) {
                let reason = format!("{arm} {why}");
                let result = self
                    .change(CONTROLLER, "halt", &name, &reason, |t| {
                        t.with_ab_halt(&name, &arm, &reason)
                            .map_err(|e| ChangeError::from_action(&name, e))
                    })
                    .await;
                match result {
                    Ok(_) => {
                        tracing::warn!(route = %name, "A/B arm {reason}");
                        halted += 1;
                    }
                    Err(e) => tracing::warn!(route = %name, "A/B halt not applied: {e}"),
                }
            }
        }
        halted
    }
}
