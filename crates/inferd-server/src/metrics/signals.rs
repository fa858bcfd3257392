//! The autoscaling signals (see [`crate::signals`]) and each model's start phases, labelled by
//! `model`: `inferd_demand_requests_per_second`, `inferd_capacity_requests_per_second`,
//! `inferd_utilisation_ratio`, `inferd_demand_forecast_requests_per_second` (with
//! `horizon_seconds`), `inferd_demand_forecast_ready`, and `inferd_model_start_seconds` (with
//! `phase`: `checks`, `load`, `warmup`, of the newest loaded version).

use std::collections::BTreeMap;
use std::sync::Arc;

use inferd_core::Engine;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use crate::signals::Signals;

/// A version's start phases and their durations.
type Phases = Vec<(&'static str, std::time::Duration)>;

/// Reads the signals at scrape time.
#[derive(Debug)]
pub struct SignalCollector {
    signals: Arc<Signals>,
    engine: Engine,
}

impl SignalCollector {
    /// A collector over `signals` and `engine`'s start phases.
    pub fn new(signals: Arc<Signals>, engine: Engine) -> Self {
        SignalCollector { signals, engine }
    }
}

fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, f64)],
) -> Result<(), std::fmt::Error> {
    let mut f = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        f.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

impl Collector for SignalCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.signals.snapshot();
        let model = |m: &str| vec![("model", m.to_string())];
        let rows = |f: &dyn Fn(&crate::signals::Signal) -> Option<f64>| -> Vec<_> {
            snap.iter()
                .filter_map(|s| f(s).map(|v| (model(&s.model), v)))
                .collect()
        };
        gauges(
            &mut encoder,
            "inferd_demand_requests_per_second",
            "Requests arriving per second, averaged over the last minute.",
            &rows(&|s| Some(s.demand)),
        )?;
        gauges(
            &mut encoder,
            "inferd_capacity_requests_per_second",
            "Requests per second this replica sustains at its current batching (rows per second of model compute times instances), once measured.",
            &rows(&|s| s.capacity),
        )?;
        gauges(
            &mut encoder,
            "inferd_utilisation_ratio",
            "Demand over capacity.",
            &rows(&|s| s.capacity.filter(|c| *c > 0.0).map(|c| s.demand / c)),
        )?;
        let forecast: Vec<_> = snap
            .iter()
            .map(|s| {
                (
                    vec![
                        ("model", s.model.clone()),
                        ("horizon_seconds", format!("{}", s.horizon_secs.round())),
                    ],
                    s.forecast,
                )
            })
            .collect();
        gauges(
            &mut encoder,
            "inferd_demand_forecast_requests_per_second",
            "The largest demand forecast within the horizon (the measured cold start unless --forecast-horizon-secs); the current demand until inferd_demand_forecast_ready is 1.",
            &forecast,
        )?;
        gauges(
            &mut encoder,
            "inferd_demand_forecast_ready",
            "1 once the forecaster has a day of history (kept in the state dir across restarts), else 0.",
            &rows(&|s| Some(if s.forecast_ready { 1.0 } else { 0.0 })),
        )?;
        // Start phases of each model's newest loaded version.
        let mut newest: BTreeMap<String, (u64, Phases)> = BTreeMap::new();
        for v in self.engine.metrics_snapshot() {
            if v.start_phases.is_empty() {
                continue;
            }
            if newest.get(&v.model).is_none_or(|(n, _)| *n < v.version) {
                newest.insert(v.model.clone(), (v.version, v.start_phases));
            }
        }
        let phases: Vec<_> = newest
            .iter()
            .flat_map(|(m, (_, ps))| {
                ps.iter().map(move |(p, d)| {
                    (
                        vec![("model", m.clone()), ("phase", (*p).to_string())],
                        d.as_secs_f64(),
                    )
                })
            })
            .collect();
        gauges(
            &mut encoder,
            "inferd_model_start_seconds",
            "How long each phase of the newest loaded version's start took.",
            &phases,
        )?;
        Ok(())
    }
}
