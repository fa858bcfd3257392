//! Shadow routes at run time: after the primary has answered, a copy of the request goes to
//! the shadow target in a task of its own, so the caller never waits for it and never sees
//! its failures. Copies in flight are bounded ([`IN_FLIGHT`]); a copy that finds no slot is
//! shed and counted, so a slow shadow cannot pile up memory or steal the primary's workers
//! beyond that bound. Each pair of answers feeds the route's [`Comparison`] and, with a state
//! dir, one line of `predictions/ROUTE.jsonl` (rotated at [`LOG_BYTES`] to `ROUTE.jsonl.1`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use inferd_core::Engine;
use inferd_core::request::{InferRequest, InferResponse};
use inferd_traffic::shadow::{Answer, Comparison};
use inferd_traffic::spec::Target;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Shadow copies in flight at once, across routes.
pub const IN_FLIGHT: usize = 64;
/// A prediction log's size before it rotates.
pub const LOG_BYTES: u64 = 64 << 20;
/// Output values written per side in one prediction log line.
const LOGGED_VALUES: usize = 256;

#[derive(Debug, Default)]
struct RouteShadow {
    comparison: Comparison,
    shed: u64,
}

/// Every shadow route's comparison and prediction log.
#[derive(Debug)]
pub struct Shadows {
    slots: Arc<tokio::sync::Semaphore>,
    routes: Mutex<HashMap<String, RouteShadow>>,
    logs: Mutex<HashMap<String, (File, u64)>>,
    log_dir: Option<PathBuf>,
}

impl Default for Shadows {
    fn default() -> Self {
        Shadows::new(None)
    }
}

/// One side's answer, for the comparison.
pub fn answer(result: &Result<InferResponse, inferd_core::Error>, secs: f64) -> Answer {
    let Ok(resp) = result else {
        return Answer {
            values: None,
            rows: 0,
            secs,
            failed: true,
        };
    };
    let first = resp.outputs.first();
    let values = first.and_then(|o| {
        o.tensor
            .to_f32_vec()
            .map(|v| v.into_iter().map(f64::from).collect())
            .or_else(|| {
                o.tensor
                    .to_i64_vec()
                    .map(|v| v.into_iter().map(|x| x as f64).collect())
            })
    });
    Answer {
        values,
        rows: first.map_or(0, |o| o.tensor.shape().first().copied().unwrap_or(1)),
        secs,
        failed: false,
    }
}

/// A digest of a request's inputs (names, shapes and bytes), so log lines can be joined to
/// the requests that made them without keeping the inputs.
fn inputs_digest(req: &InferRequest) -> String {
    let mut h = Sha256::new();
    for i in &req.inputs {
        h.update(i.name.as_bytes());
        h.update(format!("{:?}", i.tensor.shape()).as_bytes());
        h.update(i.tensor.to_wire_bytes());
    }
    format!("{:x}", h.finalize())
}

fn side_json(target: &Target, a: &Answer, error: Option<&str>) -> Value {
    json!({
        "target": target.to_string(),
        "secs": a.secs,
        "error": error,
        "values": a.values.as_ref().map(|v| &v[..v.len().min(LOGGED_VALUES)]),
        "values_truncated": a.values.as_ref().is_some_and(|v| v.len() > LOGGED_VALUES),
    })
}

/// What one mirrored request carries into its task.
#[derive(Debug)]
pub struct Mirror {
    /// The route.
    pub route: String,
    /// The request id, when it had one.
    pub request_id: Option<String>,
    /// The primary target and what it answered.
    pub primary: (Target, Answer),
    /// The shadow target.
    pub shadow: Target,
    /// A copy of the request.
    pub request: InferRequest,
}

impl Shadows {
    /// Shadows whose prediction logs go under `log_dir` (none without).
    pub fn new(log_dir: Option<PathBuf>) -> Shadows {
        Shadows {
            slots: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
            routes: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            log_dir,
        }
    }

    /// Sends `m` to its shadow target in the background, or sheds it when [`IN_FLIGHT`]
    /// copies are already running.
    pub fn mirror(self: &Arc<Self>, engine: &Engine, m: Mirror) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.with_route(&m.route, |r| r.shed += 1);
            return;
        };
        let (this, engine) = (self.clone(), engine.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let digest = inputs_digest(&m.request);
            let result = engine
                .infer(&m.shadow.model, m.shadow.version, m.request)
                .await;
            drop(slot);
            let shadow = answer(&result, started.elapsed().as_secs_f64());
            this.with_route(&m.route, |r| {
                r.comparison.push(&m.primary.1, &shadow, fastrand::u64(..))
            });
            if this.log_dir.is_none() {
                return;
            }
            let line = json!({
                "time": super::persist::rfc3339_now(),
                "route": m.route,
                "request_id": m.request_id,
                "inputs_sha256": digest,
                "primary": side_json(&m.primary.0, &m.primary.1, None),
                "shadow": side_json(&m.shadow, &shadow, result.as_ref().err().map(|e| e.to_string()).as_deref()),
            });
            let route = m.route;
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = this.log(&route, &line) {
                    tracing::warn!(route = %route, "cannot write the prediction log: {e}");
                }
            })
            .await;
        });
    }

    fn with_route(&self, route: &str, f: impl FnOnce(&mut RouteShadow)) {
        f(self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(route.to_string())
            .or_default());
    }

    fn log(&self, route: &str, line: &Value) -> std::io::Result<()> {
        let Some(dir) = &self.log_dir else {
            return Ok(());
        };
        let mut text = line.to_string();
        text.push('\n');
        let path = dir.join(format!("{route}.jsonl"));
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if logs.get(route).is_some_and(|(_, n)| *n >= LOG_BYTES) {
            logs.remove(route);
            std::fs::rename(&path, dir.join(format!("{route}.jsonl.1")))?;
        }
        if !logs.contains_key(route) {
            std::fs::create_dir_all(dir)?;
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            let n = f.metadata()?.len();
            logs.insert(route.to_string(), (f, n));
        }
        let (f, n) = logs.get_mut(route).expect("inserted above");
        f.write_all(text.as_bytes())?;
        *n += text.len() as u64;
        Ok(())
    }

    /// `route`'s comparison so far, with the copies shed.
    pub fn report(&self, route: &str) -> Value {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let r = routes.get(route);
        let mut v = r.map_or_else(|| Comparison::default().report(), |r| r.comparison.report());
        v["shed"] = json!(r.map_or(0, |r| r.shed));
        v["in_flight_limit"] = json!(IN_FLIGHT);
        v
    }

    /// Drops `route`'s comparison (the route was replaced or deleted).
    pub fn forget(&self, route: &str) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(route);
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(route);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prediction_log_rotates_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let s = Shadows::new(Some(dir.path().to_path_buf()));
        let line = json!({ "pad": "x".repeat(1000) });
        let lines = (LOG_BYTES / 1000) as usize + 10;
        for _ in 0..lines {
            s.log("r", &line).unwrap();
        }
        let rotated = std::fs::metadata(dir.path().join("r.jsonl.1"))
            .unwrap()
            .len();
        let current = std::fs::metadata(dir.path().join("r.jsonl")).unwrap().len();
        assert!(rotated >= LOG_BYTES, "{rotated}");
        assert!(current > 0 && current < LOG_BYTES, "{current}");
        let count = |f: &str| {
            std::fs::read_to_string(dir.path().join(f))
                .unwrap()
                .lines()
                .count()
        };
        assert_eq!(
            count("r.jsonl.1") + count("r.jsonl"),
            lines,
            "no line lost in the rotation"
        );
    }
}
