//! A/B tests' live outcomes: exposures counted as arms answer, feedback attributed to an arm
//! by the request id it answered (remembered for the last [`RECENT_IDS`] requests) or by the
//! sticky key (which names the same arm on every replica), and the counts saved in the state
//! dir so they survive restarts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use inferd_traffic::experiment::Outcomes;

/// Request ids remembered for feedback: a bounded memory, oldest forgotten first.
pub const RECENT_IDS: usize = 200_000;

#[derive(Debug, Default)]
struct Recent {
    arm: HashMap<String, (String, String)>,
    order: VecDeque<String>,
}

/// Every A/B route's outcomes.
#[derive(Debug, Default)]
pub struct Experiments {
    outcomes: Mutex<BTreeMap<String, Outcomes>>,
    recent: Mutex<Recent>,
    dirty: AtomicBool,
}

impl Experiments {
    /// `arm` of `route` answered a request (with `request_id`, when it had one).
    pub fn exposed(&self, route: &str, arm: &str, request_id: Option<&str>) {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(route.to_string())
            .or_default()
            .expose(arm);
        self.dirty.store(true, Ordering::Relaxed);
        if let Some(id) = request_id {
            self.remember(route, arm, id);
        }
    }

    /// Remembers that `arm` of `route` answered request `id`, for feedback by request id
    /// (A/B tests and canaries' business metrics).
    pub fn remember(&self, route: &str, arm: &str, id: &str) {
        {
            let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if r.arm
                .insert(id.to_string(), (route.to_string(), arm.to_string()))
                .is_none()
            {
                r.order.push_back(id.to_string());
            }
            while r.order.len() > RECENT_IDS {
                if let Some(old) = r.order.pop_front() {
                    r.arm.remove(&old);
                }
            }
        }
    }

    /// The route and arm that answered request `id`, if it is still remembered.
    pub fn by_request(&self, id: &str) -> Option<(String, String)> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .arm
            .get(id)
            .cloned()
    }

    /// Records feedback.
    pub fn feedback(&self, route: &str, arm: &str, metric: &str, value: f64) {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(route.to_string())
            .or_default()
            .feedback(arm, metric, value);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// `route`'s outcomes so far.
    pub fn outcomes(&self, route: &str) -> Outcomes {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets `route`'s outcomes (the route was replaced or deleted).
    pub fn forget(&self, route: &str) {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(route);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// All outcomes, if they changed since the last call.
    pub fn take_changed(&self) -> Option<BTreeMap<String, Outcomes>> {
        self.dirty.swap(false, Ordering::Relaxed).then(|| {
            self.outcomes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }

    /// Restores saved outcomes at start.
    pub fn restore(&self, saved: BTreeMap<String, Outcomes>) {
        *self.outcomes.lock().unwrap_or_else(|p| p.into_inner()) = saved;
    }
}

/// How feedback names the arm it is about.
#[derive(Debug, Clone, PartialEq)]
pub enum By {
    /// The request id a routed answer carried (`x-request-id`).
    Request(String),
    /// The route and the sticky key that chose the arm.
    Key {
        /// The route.
        route: String,
        /// The sticky key.
        key: String,
    },
}

/// One outcome, as `POST /v2/feedback` takes it: `{"request_id": ...}` or
/// `{"route": ..., "key": ...}`, with a `"value"` (a number; `true`/`false` count as 1/0)
/// and an optional `"metric"` (the experiment's own metric when absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    /// Whose outcome.
    pub by: By,
    /// The outcome.
    pub value: f64,
    /// Its metric, when not the experiment's.
    pub metric: Option<String>,
}

impl Feedback {
    /// Parses a feedback body, naming the field at fault.
    pub fn parse(body: &serde_json::Value) -> Result<Feedback, String> {
        use serde_json::Value;
        let obj = body
            .as_object()
            .ok_or_else(|| format!("feedback must be a JSON object, got {body}"))?;
        if let Some(k) = obj.keys().find(|k| {
            !matches!(
                k.as_str(),
                "request_id" | "route" | "key" | "value" | "metric"
            )
        }) {
            return Err(format!(
                "unknown feedback field '{k}'; known: request_id, route, key, value, metric"
            ));
        }
        let text = |k: &str| -> Result<Option<String>, String> {
            match obj.get(k) {
                None => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(other) => Err(format!("'{k}' must be a non-empty string, got {other}")),
            }
        };
        let value = match obj.get("value") {
            Some(Value::Bool(b)) => f64::from(u8::from(*b)),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("'value' must be a finite number, got {n}"))?,
            Some(other) => return Err(format!("'value' must be a number or boolean, got {other}")),
            None => return Err("feedback needs a 'value'".into()),
        };
        let by = match (text("request_id")?, text("route")?, text("key")?) {
            (Some(id), None, None) => By::Request(id),
            (None, Some(route), Some(key)) => By::Key { route, key },
            _ => return Err("feedback names either 'request_id', or 'route' and 'key'".into()),
        };
        Ok(Feedback {
            by,
            value,
            metric: text("metric")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn feedback_bodies_parse_or_name_the_field_at_fault() {
        assert_eq!(
            Feedback::parse(&json!({"request_id": "abc", "value": true})).unwrap(),
            Feedback {
                by: By::Request("abc".into()),
                value: 1.0,
                metric: None
            }
        );
        let f =
            Feedback::parse(&json!({"route": "r", "key": "u1", "value": 2.5, "metric": "revenue"}))
                .unwrap();
        assert_eq!(
            f.by,
            By::Key {
                route: "r".into(),
                key: "u1".into()
            }
        );
        assert_eq!((f.value, f.metric.as_deref()), (2.5, Some("revenue")));
        for (body, names) in [
            (json!([1]), "JSON object"),
            (json!({"request_id": "a"}), "'value'"),
            (json!({"request_id": "a", "value": "yes"}), "'value'"),
            (json!({"request_id": "", "value": 1}), "'request_id'"),
            (json!({"route": "r", "value": 1}), "'route' and 'key'"),
            (
                json!({"request_id": "a", "route": "r", "key": "k", "value": 1}),
                "either",
            ),
            (
                json!({"request_id": "a", "value": 1, "colour": "red"}),
                "'colour'",
            ),
        ] {
            let e = Feedback::parse(&body).unwrap_err();
            assert!(e.contains(names), "{body}: {e}");
        }
    }

    #[test]
    fn feedback_finds_the_arm_of_a_recent_request_and_forgets_old_ones() {
        let e = Experiments::default();
        for i in 0..(RECENT_IDS + 10) {
            e.exposed("r", "m/1", Some(&format!("id-{i}")));
        }
        assert_eq!(e.by_request("id-5"), None);
        assert_eq!(
            e.by_request(&format!("id-{}", RECENT_IDS + 9)),
            Some(("r".into(), "m/1".into()))
        );
        assert_eq!(
            e.outcomes("r").arms["m/1"].exposures,
            (RECENT_IDS + 10) as u64
        );
        assert!(e.take_changed().is_some());
        assert!(e.take_changed().is_none());
    }
}
