//! Traffic routes at the front door: a request to `/v2/models/{name}/infer` (or gRPC
//! `ModelInfer` with that name) and no explicit version goes where route `name` sends it. The
//! policy lives in `inferd-traffic`; this holds the table in force, swapped whole on a change
//! so a request sees one table from start to end.

use std::sync::{Arc, RwLock};

use inferd_traffic::spec::Target;
use inferd_traffic::table::{Decision, Table};
use serde_json::{Value, json};

/// The routes in force.
#[derive(Debug, Default)]
pub struct Routes {
    table: RwLock<Arc<Table>>,
}

impl Routes {
    /// Routes from `table`.
    pub fn new(table: Table) -> Routes {
        Routes {
            table: RwLock::new(Arc::new(table)),
        }
    }

    /// The table now (a cheap snapshot).
    pub fn snapshot(&self) -> Arc<Table> {
        // A poisoned lock still holds a whole table: swaps replace the Arc in one store.
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the table.
    pub fn replace(&self, table: Table) {
        *self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(table);
    }

    /// Where a request for `name` goes, if `name` is a route: `key` finds the request's sticky
    /// key by the route's header name.
    pub fn resolve(&self, name: &str, key: &dyn Fn(&str) -> Option<String>) -> Option<Decision> {
        let table = self.snapshot();
        let route = table.get(name)?;
        let sticky = route.sticky_header().and_then(key);
        Some(route.resolve(
            name,
            sticky.as_deref(),
            fastrand::u64(..),
            fastrand::u64(..),
        ))
    }
}

/// `MODEL/VERSION`, as the `x-inferd-target` header and the `target` parameter name it.
pub fn target_label(model: &str, version: u64) -> String {
    format!("{model}/{version}")
}

fn target_text(t: &Target) -> String {
    t.to_string()
}

/// `GET /v2/routes/{name}`'s body.
pub fn route_json(name: &str, table: &Table) -> Option<Value> {
    let r = table.get(name)?;
    let weights: Vec<Value> = r
        .weights()
        .iter()
        .map(|(t, w)| json!({ "target": target_text(t), "weight": w }))
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
            inferd_traffic::canary::Phase::Progressing { step, .. }
            | inferd_traffic::canary::Phase::Paused { step, .. } => Some(step + 1),
            _ => None,
        });
        v["failures"] = json!(ro.failures);
        v["analyses"] = serde_json::to_value(&ro.last_checks).unwrap_or(Value::Null);
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
