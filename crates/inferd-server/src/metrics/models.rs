//! Per model version series, read from the engine at scrape time. Every series is labelled
//! `model` and `version`; only versions the repository has are shown, so a client naming
//! unknown models cannot grow the page.

use inferd_core::Engine;
use inferd_core::engine::{VersionMetrics, VersionState};
use inferd_core::stats::{FailureReason, Histogram, VersionStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Upper bounds of the executed batch-size histogram's buckets.
const BATCH_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

type Labels = Vec<(&'static str, String)>;

fn labels(v: &VersionMetrics) -> Labels {
    vec![
        ("model", v.model.clone()),
        ("version", v.version.to_string()),
    ]
}

/// Reads the engine's versions on each scrape.
#[derive(Debug)]
pub struct ModelCollector {
    engine: Engine,
}

impl ModelCollector {
    /// A collector over `engine`.
    pub fn new(engine: Engine) -> Self {
        ModelCollector { engine }
    }
}

/// A family's descriptor.
pub(super) struct Desc<'a> {
    pub(super) name: &'a str,
    pub(super) help: &'a str,
    pub(super) unit: Option<&'a Unit>,
    pub(super) kind: MetricType,
}

/// One family: a descriptor, then a sample per version that has a value.
pub(super) fn family<T>(
    encoder: &mut DescriptorEncoder,
    d: Desc,
    versions: &[VersionMetrics],
    value: impl Fn(&VersionMetrics) -> Option<T>,
    mut write: impl FnMut(&mut MetricEncoder, T) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    let mut f = encoder.encode_descriptor(d.name, d.help, d.unit, d.kind)?;
    for v in versions {
        if let Some(x) = value(v) {
            let l = labels(v);
            let mut m = f.encode_family(&l)?;
            write(&mut m, x)?;
        }
    }
    Ok(())
}

pub(super) fn counter(m: &mut MetricEncoder, n: u64) -> Result<(), std::fmt::Error> {
    m.encode_counter::<NoLabelSet, _, u64>(&n, None)
}

pub(super) fn gauge(m: &mut MetricEncoder, n: i64) -> Result<(), std::fmt::Error> {
    m.encode_gauge(&n)
}

fn histogram(m: &mut MetricEncoder, h: Histogram) -> Result<(), std::fmt::Error> {
    // The encoder accumulates the per-bucket counts itself.
    m.encode_histogram::<NoLabelSet>(h.sum_ns as f64 / 1e9, h.count, &h.buckets(), None)
}

/// Executed batch sizes: `(upper bound, executions in that bucket alone)` with the larger
/// sizes in a last `+Inf` bucket, the row total and the execution count.
fn batch_sizes(s: &VersionStats) -> (Vec<(f64, u64)>, u64, u64) {
    let mut per_bucket = [0u64; BATCH_BUCKETS.len() + 1];
    let (mut count, mut sum) = (0u64, 0u64);
    for (&size, b) in &s.batches {
        let n = b.compute_infer.count;
        count += n;
        sum += size * n;
        let i = BATCH_BUCKETS
            .iter()
            .position(|&le| size <= le)
            .unwrap_or(BATCH_BUCKETS.len());
        per_bucket[i] += n;
    }
    let buckets = BATCH_BUCKETS
        .iter()
        .map(|&le| le as f64)
        .chain(std::iter::once(f64::INFINITY))
        .zip(per_bucket)
        .collect();
    (buckets, sum, count)
}

impl Collector for ModelCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let vs = self.engine.metrics_snapshot();
        let stat = |f: fn(&VersionStats) -> u64| move |v: &VersionMetrics| v.stats.as_ref().map(f);
        family(
            &mut e,
            Desc {
                name: "inferd_queue_depth",
                help: "Requests waiting in a model version's queue.",
                unit: None,
                kind: MetricType::Gauge,
            },
            &vs,
            |v| v.stats.as_ref().map(|_| v.queue_depth as i64),
            gauge,
        )?;
        family(
            &mut e,
            Desc {
                name: "inferd_inflight_requests",
                help: "Requests holding a model version (queued or running).",
                unit: None,
                kind: MetricType::Gauge,
            },
            &vs,
            |v| v.stats.as_ref().map(|_| v.inflight as i64),
            gauge,
        )?;
        family(
            &mut e,
            Desc {
                name: "inferd_request_success",
                help: "Requests answered successfully.",
                unit: None,
                kind: MetricType::Counter,
            },
            &vs,
            stat(|s| s.infer.success.count),
            counter,
        )?;
        // Failures: one series per reason.
        let mut f = e.encode_descriptor(
            "inferd_request_failure",
            "Requests that failed, by reason (client_error, rejected, timeout, backend_error).",
            None,
            MetricType::Counter,
        )?;
        for v in &vs {
            if let Some(s) = &v.stats {
                for reason in FailureReason::ALL {
                    let mut l = labels(v);
                    l.push(("reason", reason.as_str().to_string()));
                    counter(&mut f.encode_family(&l)?, s.failures.get(reason))?;
                }
            }
        }
        family(
            &mut e,
            Desc {
                name: "inferd_inference",
                help: "Rows inferred (a batch of 8 rows counts 8).",
                unit: None,
                kind: MetricType::Counter,
            },
            &vs,
            stat(|s| s.inference_count),
            counter,
        )?;
        family(
            &mut e,
            Desc {
                name: "inferd_execution",
                help: "Model executions (a batch counts once).",
                unit: None,
                kind: MetricType::Counter,
            },
            &vs,
            stat(|s| s.execution_count),
            counter,
        )?;
        for (name, help, pick) in [
            (
                "inferd_request_duration",
                "Time requests spent in the engine, queue and execution included.",
                (|s: &VersionStats| s.request_duration) as fn(&VersionStats) -> Histogram,
            ),
            (
                "inferd_queue_duration",
                "Time requests waited in the queue.",
                |s: &VersionStats| s.queue_duration,
            ),
            (
                "inferd_compute_duration",
                "Time of each model execution (a batch counts once).",
                |s: &VersionStats| s.compute_duration,
            ),
        ] {
            family(
                &mut e,
                Desc {
                    name,
                    help,
                    unit: Some(&Unit::Seconds),
                    kind: MetricType::Histogram,
                },
                &vs,
                |v| v.stats.as_ref().map(pick),
                histogram,
            )?;
        }
        family(
            &mut e,
            Desc {
                name: "inferd_batch_size",
                help: "Rows per model execution.",
                unit: None,
                kind: MetricType::Histogram,
            },
            &vs,
            |v| v.stats.as_ref().map(batch_sizes),
            |m, (buckets, sum, count)| {
                m.encode_histogram::<NoLabelSet>(sum as f64, count, &buckets, None)
            },
        )?;
        // State: one series per state, 1 for the current one.
        let mut f = e.encode_descriptor(
            "inferd_model_state",
            "A model version's state: 1 for the state it is in, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for v in &vs {
            for state in VersionState::ALL {
                let mut l = labels(v);
                l.push(("state", state.as_str().to_string()));
                gauge(&mut f.encode_family(&l)?, i64::from(v.state == state))?;
            }
        }
        family(
            &mut e,
            Desc {
                name: "inferd_model_load_duration",
                help: "How long loading the serving copy took (backend load, auto-complete, warm-up).",
                unit: Some(&Unit::Seconds),
                kind: MetricType::Gauge,
            },
            &vs,
            |v| v.load_duration.map(|d| d.as_secs_f64()),
            |m, secs| m.encode_gauge(&secs),
        )?;
        Ok(())
    }
}
