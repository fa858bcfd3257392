//! Metrics that models define themselves (Triton's custom metrics: a python model's
//! `pb_utils.MetricFamily` and `Metric`), kept by the engine and shown on the server's metrics
//! page beside inferd's own. A family has a name, a description and a kind; its metrics are
//! told apart by their labels. Names are Prometheus names and may not start with `inferd_`
//! (those are the server's); a family asked for again with the same kind is the same family
//! (a model reloaded keeps counting).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// What a family counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

impl Kind {
    /// The kind named `name` (`counter`, `gauge`, `histogram`, any case).
    pub fn parse(name: &str) -> Option<Kind> {
        match name.to_ascii_lowercase().as_str() {
            "counter" => Some(Kind::Counter),
            "gauge" => Some(Kind::Gauge),
            "histogram" => Some(Kind::Histogram),
            _ => None,
        }
    }
}

/// Labels, sorted by name.
pub type Labels = Vec<(String, String)>;

/// One metric's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A counter's or gauge's value.
    Scalar(f64),
    /// A histogram: bucket upper bounds, cumulative counts per bucket, sum and count.
    Histogram {
        /// Upper bounds, ascending (the +Inf bucket is implied).
        bounds: Vec<f64>,
        /// Observations at or below each bound.
        counts: Vec<u64>,
        /// Sum of observations.
        sum: f64,
        /// Number of observations.
        count: u64,
    },
}

/// A family and its metrics.
#[derive(Debug, Clone)]
pub struct Family {
    /// Name.
    pub name: String,
    /// Help text.
    pub description: String,
    /// Kind.
    pub kind: Kind,
    /// Metrics by labels.
    pub metrics: BTreeMap<Labels, Value>,
}

/// All families.
#[derive(Debug, Default)]
pub struct CustomMetrics {
    families: Mutex<BTreeMap<String, Family>>,
}

fn valid_name(name: &str, what: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} '{name}' is not a Prometheus name (letters, digits, '_' and ':', not starting with a digit)"
        ))
    }
}

/// Labels checked and sorted.
pub fn labels(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Labels, String> {
    let mut out: Labels = pairs.into_iter().collect();
    for (k, _) in &out {
        valid_name(k, "label")?;
        if k.starts_with("__") {
            return Err(format!(
                "label '{k}': names starting with '__' are Prometheus's own"
            ));
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

impl CustomMetrics {
    /// Creates the family (or returns the existing one of the same kind).
    pub fn family(&self, name: &str, description: &str, kind: Kind) -> Result<(), String> {
        valid_name(name, "metric family")?;
        if name.starts_with("inferd_") {
            return Err(format!(
                "metric family '{name}': names starting with 'inferd_' are the server's own"
            ));
        }
        let mut f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        match f.get(name) {
            Some(existing) if existing.kind != kind => Err(format!(
                "metric family '{name}' exists as a {:?}; it cannot also be a {kind:?}",
                existing.kind
            )),
            Some(_) => Ok(()),
            None => {
                f.insert(
                    name.to_string(),
                    Family {
                        name: name.to_string(),
                        description: description.to_string(),
                        kind,
                        metrics: BTreeMap::new(),
                    },
                );
                Ok(())
            }
        }
    }

    /// Creates a metric of `family` with `labels` (at zero; a histogram with `buckets`).
    pub fn metric(
        &self,
        family: &str,
        labels: &Labels,
        buckets: Option<Vec<f64>>,
    ) -> Result<(), String> {
        let mut f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let fam = f
            .get_mut(family)
            .ok_or_else(|| format!("metric family '{family}' does not exist"))?;
        let value = match (fam.kind, buckets) {
            (Kind::Histogram, Some(mut b)) => {
                if b.iter().any(|x| !x.is_finite()) {
                    return Err(format!(
                        "histogram '{family}': buckets must be finite numbers"
                    ));
                }
                b.sort_by(f64::total_cmp);
                b.dedup();
                Value::Histogram {
                    counts: vec![0; b.len()],
                    bounds: b,
                    sum: 0.0,
                    count: 0,
                }
            }
            (Kind::Histogram, None) => {
                return Err(format!("histogram '{family}': a metric needs its buckets"));
            }
            (_, Some(_)) => {
                return Err(format!(
                    "metric family '{family}' is no histogram: buckets do not apply"
                ));
            }
            (_, None) => Value::Scalar(0.0),
        };
        fam.metrics.entry(labels.clone()).or_insert(value);
        Ok(())
    }

    /// Applies `op` (`increment`, `set`, `observe`, or `value` to read) to a metric; returns
    /// its value after (a histogram's: its sum).
    pub fn update(&self, family: &str, labels: &Labels, op: &str, x: f64) -> Result<f64, String> {
        let mut f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let fam = f
            .get_mut(family)
            .ok_or_else(|| format!("metric family '{family}' does not exist"))?;
        let kind = fam.kind;
        let v = fam.metrics.get_mut(labels).ok_or_else(|| {
            format!("metric family '{family}' has no metric with labels {labels:?}")
        })?;
        if op != "value" && !x.is_finite() {
            return Err(format!(
                "metric '{family}': {op} takes a finite number, not {x}"
            ));
        }
        match (kind, v, op) {
            (_, Value::Scalar(s), "value") => Ok(*s),
            (_, Value::Histogram { sum, .. }, "value") => Ok(*sum),
            (Kind::Counter, Value::Scalar(_), "increment") if x < 0.0 => Err(format!(
                "counter '{family}' only goes up: increment by {x} refused"
            )),
            (Kind::Counter | Kind::Gauge, Value::Scalar(s), "increment") => {
                *s += x;
                Ok(*s)
            }
            (Kind::Gauge, Value::Scalar(s), "set") => {
                *s = x;
                Ok(*s)
            }
            (
                Kind::Histogram,
                Value::Histogram {
                    bounds,
                    counts,
                    sum,
                    count,
                },
                "observe",
            ) => {
                for (b, c) in bounds.iter().zip(counts.iter_mut()) {
                    if x <= *b {
                        *c += 1;
                    }
                }
                *sum += x;
                *count += 1;
                Ok(*sum)
            }
            (k, _, op) => Err(format!(
                "metric '{family}' is a {k:?}: '{op}' does not apply"
            )),
        }
    }

    /// A copy of every family, by name.
    pub fn snapshot(&self) -> Vec<Family> {
        self.families
            .lock()
            .map(|f| f.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        labels(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string()))).expect("labels")
    }

    #[test]
    fn counters_go_up_gauges_set_and_histograms_count_into_buckets() {
        let m = CustomMetrics::default();
        m.family("requests_total", "Requests.", Kind::Counter)
            .expect("family");
        m.family("queue", "Queue.", Kind::Gauge).expect("family");
        m.family("latency", "Latency.", Kind::Histogram)
            .expect("family");
        let a = l(&[("model", "m")]);
        m.metric("requests_total", &a, None).expect("metric");
        m.metric("queue", &a, None).expect("metric");
        m.metric("latency", &a, Some(vec![1.0, 0.1]))
            .expect("metric");
        assert_eq!(m.update("requests_total", &a, "increment", 2.0), Ok(2.0));
        assert!(m.update("requests_total", &a, "increment", -1.0).is_err());
        assert!(m.update("requests_total", &a, "set", 5.0).is_err());
        assert_eq!(m.update("queue", &a, "set", 7.0), Ok(7.0));
        assert_eq!(m.update("queue", &a, "increment", -2.0), Ok(5.0));
        m.update("latency", &a, "observe", 0.05).expect("observe");
        m.update("latency", &a, "observe", 0.5).expect("observe");
        m.update("latency", &a, "observe", 5.0).expect("observe");
        let fam = m
            .snapshot()
            .into_iter()
            .find(|f| f.name == "latency")
            .expect("family");
        assert_eq!(
            fam.metrics[&a],
            Value::Histogram {
                bounds: vec![0.1, 1.0],
                counts: vec![1, 2],
                sum: 5.55,
                count: 3
            }
        );
    }

    #[test]
    fn names_are_checked_and_a_family_keeps_its_kind() {
        let m = CustomMetrics::default();
        assert!(m.family("9lives", "", Kind::Counter).is_err());
        assert!(
            m.family("inferd_requests", "", Kind::Counter)
                .unwrap_err()
                .contains("server's own")
        );
        m.family("x", "", Kind::Counter).expect("family");
        m.family("x", "", Kind::Counter)
            .expect("the same family again");
        assert!(
            m.family("x", "", Kind::Gauge)
                .unwrap_err()
                .contains("cannot also be")
        );
        assert!(labels([("__name__".to_string(), "v".to_string())]).is_err());
        assert!(m.metric("x", &l(&[]), Some(vec![1.0])).is_err());
        assert!(m.metric("nope", &l(&[]), None).is_err());
    }
}
