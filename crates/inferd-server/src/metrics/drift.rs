//! Drift per feature: `inferd_drift_psi` and `inferd_drift_ks`, labelled `model`, `version`,
//! `tensor`, `feature` (the position, `argmax`, or a string's `N.length` / `N.tokens`), for
//! the features whose current window has enough values to judge; `inferd_drift_drifted` per
//! tensor (1 when any feature is past the drift level).

use inferd_core::Engine;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

/// Reads the engine's drift reports on each scrape.
#[derive(Debug)]
pub struct DriftCollector {
    engine: Engine,
}

impl DriftCollector {
    /// A collector over `engine`.
    pub fn new(engine: Engine) -> Self {
        DriftCollector { engine }
    }
}

impl Collector for DriftCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reports = self.engine.drift_reports();
        if reports.is_empty() {
            return Ok(());
        }
        for (name, help, ks) in [
            (
                "inferd_drift_psi",
                "Population stability index of a feature's current window against its reference.",
                false,
            ),
            (
                "inferd_drift_ks",
                "Two-sample Kolmogorov-Smirnov statistic of a numeric feature, current window against reference.",
                true,
            ),
        ] {
            let mut f = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (model, version, r) in &reports {
                for t in &r.tensors {
                    for feat in &t.features {
                        let v = if ks { feat.ks } else { feat.psi };
                        if let Some(v) = v {
                            let labels = [
                                ("model", model.clone()),
                                ("version", version.to_string()),
                                ("tensor", t.name.clone()),
                                ("feature", feat.name.clone()),
                            ];
                            f.encode_family(&labels)?.encode_gauge(&v)?;
                        }
                    }
                }
            }
        }
        let mut f = e.encode_descriptor(
            "inferd_drift_drifted",
            "1 when a tensor has a feature past the drift level (PSI), else 0.",
            None,
            MetricType::Gauge,
        )?;
        for (model, version, r) in &reports {
            for t in &r.tensors {
                let labels = [
                    ("model", model.clone()),
                    ("version", version.to_string()),
                    ("tensor", t.name.clone()),
                    ("kind", format!("{:?}", t.kind).to_lowercase()),
                ];
                f.encode_family(&labels)?
                    .encode_gauge(&i64::from(t.drifted))?;
            }
        }
        Ok(())
    }
}
