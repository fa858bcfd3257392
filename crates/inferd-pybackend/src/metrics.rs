//! A python model's own metrics: `pb_utils.MetricFamily(...)`, `family.Metric(labels=...)` and
//! each `increment`/`set`/`observe`/`value` arrive as `metric` messages, applied to the
//! engine's [`CustomMetrics`] on the reader thread (cheap, so in order) and answered with an
//! `rpc_result` carrying the value or the error.

use inferd_core::custom_metrics::{CustomMetrics, Kind, labels};
use serde_json::{Value, json};

fn apply(m: &CustomMetrics, msg: &Value) -> Result<f64, String> {
    let s = |k: &str| msg.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let family = s("family");
    let labels = || {
        labels(
            msg.get("labels")
                .and_then(|l| l.as_object())
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    let v = v
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), v)
                }),
        )
    };
    match s("action") {
        "family" => {
            let kind = Kind::parse(s("kind"))
                .ok_or_else(|| format!("metric family '{family}': unknown kind '{}'", s("kind")))?;
            m.family(family, s("description"), kind).map(|_| 0.0)
        }
        "metric" => {
            let buckets = match msg.get("buckets") {
                None | Some(Value::Null) => None,
                Some(b) => Some(
                    b.as_array()
                        .into_iter()
                        .flatten()
                        .map(|x| {
                            x.as_f64().ok_or_else(|| {
                                format!("histogram '{family}': bucket {x} is no number")
                            })
                        })
                        .collect::<Result<Vec<f64>, String>>()?,
                ),
            };
            m.metric(family, &labels()?, buckets).map(|_| 0.0)
        }
        op @ ("increment" | "set" | "observe" | "value") => {
            let x = msg.get("value").and_then(|v| v.as_f64()).unwrap_or(0.0);
            m.update(family, &labels()?, op, x)
        }
        other => Err(format!("unknown metric action '{other}'")),
    }
}

/// The answer to one `metric` message.
pub(crate) fn handle(m: &CustomMetrics, msg: &Value) -> Value {
    let rpc = msg.get("rpc").cloned().unwrap_or(Value::Null);
    match apply(m, msg) {
        Ok(v) => json!({"op": "rpc_result", "rpc": rpc, "value": v}),
        Err(e) => json!({"op": "rpc_result", "rpc": rpc, "error": e}),
    }
}
