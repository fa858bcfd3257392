//! GPU series through NVML (`nvml-wrapper`, which loads `libnvidia-ml.so` at run time): per GPU
//! (labels `gpu`, the index, and `uuid`), utilisation as a ratio and memory used and total in
//! bytes. Without NVML (no driver, no GPU) the family is absent, never an error: the collector
//! tries once at start and stays silent.

use nvml_wrapper::Nvml;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// NVML, when it could be opened.
pub struct GpuCollector {
    nvml: Option<Nvml>,
}

impl std::fmt::Debug for GpuCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuCollector")
            .field("nvml", &self.nvml.is_some())
            .finish()
    }
}

impl GpuCollector {
    /// Opens NVML if the machine has it.
    pub fn new() -> Self {
        let nvml = match Nvml::init() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::debug!("no GPU metrics: NVML is not available ({e})");
                None
            }
        };
        GpuCollector { nvml }
    }

    /// Whether GPU series are exported.
    pub fn available(&self) -> bool {
        self.nvml.is_some()
    }
}

impl Default for GpuCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// One GPU's readings.
struct Reading {
    labels: Vec<(&'static str, String)>,
    utilization: f64,
    used: u64,
    total: u64,
}

impl Collector for GpuCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(nvml) = &self.nvml else {
            return Ok(());
        };
        let count = nvml.device_count().unwrap_or(0);
        let readings: Vec<Reading> = (0..count)
            .filter_map(|i| {
                let d = nvml.device_by_index(i).ok()?;
                let u = d.utilization_rates().ok()?;
                let m = d.memory_info().ok()?;
                Some(Reading {
                    labels: vec![
                        ("gpu", i.to_string()),
                        ("uuid", d.uuid().unwrap_or_default()),
                    ],
                    utilization: f64::from(u.gpu) / 100.0,
                    used: m.used,
                    total: m.total,
                })
            })
            .collect();
        let mut f = e.encode_descriptor(
            // Prometheus names ratios `_ratio` (the crate's unit would write `_ratios`).
            "inferd_gpu_utilization_ratio",
            "Fraction of the last sample period in which a kernel ran on the GPU.",
            None,
            MetricType::Gauge,
        )?;
        for r in &readings {
            f.encode_family(&r.labels)?.encode_gauge(&r.utilization)?;
        }
        let mut f = e.encode_descriptor(
            "inferd_gpu_memory_used",
            "GPU memory in use (all processes).",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for r in &readings {
            f.encode_family(&r.labels)?.encode_gauge(&(r.used as i64))?;
        }
        let mut f = e.encode_descriptor(
            "inferd_gpu_memory_total",
            "GPU memory installed.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for r in &readings {
            f.encode_family(&r.labels)?
                .encode_gauge(&(r.total as i64))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn without_a_gpu_the_family_is_absent_and_nothing_fails() {
        let gpu = GpuCollector { nvml: None };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(gpu));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).expect("encodes");
        assert!(!out.contains("inferd_gpu"), "{out}");
    }
}
