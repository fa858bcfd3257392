//! The routes as the admin API shows them: `GET /v2/routes` and `GET /v2/routes/{route}`
//! answer `{"name", "kind", "state", "weights": [{"target", "weight"}], "reason"}`, plus
//! `step`, `failures`, `analyses` (the last analysis's checks) and `history` (every analysis:
//! step, weight, numbers, decision) for a canary and `active` for a blue-green route, and the
//! route as written under `spec`.

use inferd_traffic::canary::Phase;
use inferd_traffic::table::Table;
use serde_json::{Value, json};

/// `MODEL/VERSION`, as the `x-inferd-target` header and the `target` parameter name it.
pub fn target_label(model: &str, version: u64) -> String {
    format!("{model}/{version}")
}

/// `GET /v2/routes/{name}`'s body.
pub fn route_json(name: &str, table: &Table) -> Option<Value> {
    let r = table.get(name)?;
    let weights: Vec<Value> = r
        .weights()
        .iter()
        .map(|(t, w)| json!({ "target": t.to_string(), "weight": w }))
        .collect();
    let mut v = json!({
        "name": name,
        "kind": r.spec.kind(),
        "state": r.state(),
        "weights": weights,
        "reason": r.rollout.as_ref().map_or("", |ro| ro.reason.as_str()),
        "spec": serde_json::to_value(&r.spec).unwrap_or(Value::Null),
    });
    if let Some(ro) = &r.rollout {
        v["step"] = json!(match ro.phase {
            Phase::Progressing { step, .. } | Phase::Paused { step, .. } => Some(step + 1),
            _ => None,
        });
        v["failures"] = json!(ro.failures);
        v["analyses"] = serde_json::to_value(&ro.last_checks).unwrap_or(Value::Null);
        v["history"] = serde_json::to_value(&ro.history).unwrap_or(Value::Null);
    }
    if !r.halted.is_empty() {
        v["halted"] = serde_json::to_value(&r.halted).unwrap_or(Value::Null);
        v["reason"] = Value::from(r.halted.values().cloned().collect::<Vec<_>>().join("; "));
    }
    if let Some(active) = r.active {
        v["active"] = serde_json::to_value(active).unwrap_or(Value::Null);
    }
    Some(v)
}

/// `GET /v2/routes`'s body.
pub fn routes_json(table: &Table) -> Value {
    Value::Array(
        table
            .iter()
            .filter_map(|(n, _)| route_json(n, table))
            .collect(),
    )
}
