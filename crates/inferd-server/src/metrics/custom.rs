//! Metrics that models define themselves (python models' `pb_utils.MetricFamily`), read from
//! the engine at scrape time and shown under the names the models gave them. A counter's name
//! gets Prometheus's `_total` suffix where it lacks one (a family named `requests_total` shows as
//! `requests_total`, one named `requests` as `requests_total`).

use inferd_core::Engine;
use inferd_core::custom_metrics::{Kind, Value};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Reads the engine's custom metrics on each scrape.
#[derive(Debug)]
pub struct CustomCollector {
    engine: Engine,
}

impl CustomCollector {
    /// A collector over `engine`.
    pub fn new(engine: Engine) -> Self {
        CustomCollector { engine }
    }
}

impl Collector for CustomCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for fam in self.engine.custom_metrics().snapshot() {
            let (name, kind) = match fam.kind {
                // The encoder appends `_total` to counters.
                Kind::Counter => (
                    fam.name
                        .strip_suffix("_total")
                        .unwrap_or(&fam.name)
                        .to_string(),
                    MetricType::Counter,
                ),
                Kind::Gauge => (fam.name.clone(), MetricType::Gauge),
                Kind::Histogram => (fam.name.clone(), MetricType::Histogram),
            };
            let mut f = e.encode_descriptor(&name, &fam.description, None, kind)?;
            for (labels, value) in &fam.metrics {
                let mut m = f.encode_family(labels)?;
                match value {
                    Value::Scalar(v) if fam.kind == Kind::Counter => {
                        m.encode_counter::<NoLabelSet, _, u64>(v, None)?
                    }
                    Value::Scalar(v) => m.encode_gauge(v)?,
                    Value::Histogram {
                        bounds,
                        counts,
                        sum,
                        count,
                    } => {
                        // Per-bucket counts (the encoder accumulates them), +Inf last.
                        let mut buckets = Vec::with_capacity(bounds.len() + 1);
                        let mut below = 0;
                        for (b, c) in bounds.iter().zip(counts) {
                            buckets.push((*b, c - below));
                            below = *c;
                        }
                        buckets.push((f64::INFINITY, count - below));
                        m.encode_histogram::<NoLabelSet>(*sum, *count, &buckets, None)?
                    }
                }
            }
        }
        Ok(())
    }
}
