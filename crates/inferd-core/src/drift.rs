//! The engine's side of drift monitoring ([`inferd_drift`]): which requests a version samples,
//! their tensors turned into the monitor's values, and the version's monitor behind a lock.
//!
//! Sampling is deterministic (every `1/rate`-th request of a version, by a counter), so a
//! rate of 0.05 costs one observation per 20 requests and nothing else. Settings come from the
//! model's config parameters (`drift_sample_rate`, `drift_reference_requests`,
//! `drift_window_secs`, `drift_psi_warning`, `drift_psi_drift`) over the server's default rate
//! (`--drift-sample-rate`); a rate of 0 turns monitoring off for the model.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use inferd_drift::monitor::Values;
use inferd_drift::{DriftConfig, Monitor, Report, TensorKind};

use crate::backend::NamedTensor;
use crate::config::ModelConfig;
use crate::tensor::{DataType, Tensor, TensorData};

/// The saved reference a model folder may hold.
pub const REFERENCE_FILE: &str = "drift_reference.json";

/// One version's sampler and monitor.
#[derive(Debug)]
pub struct DriftSampler {
    /// Sample every request whose counter crosses a multiple of `1/rate`.
    rate: f64,
    seen: AtomicU64,
    started: Instant,
    monitor: Mutex<Monitor>,
    /// A second monitor judging this version against another version's reference (a canary
    /// against its primary), keyed by that version.
    against: Mutex<Option<(String, Monitor)>>,
}

fn param<T: std::str::FromStr>(cfg: &ModelConfig, key: &str) -> Result<Option<T>, String> {
    match cfg.parameters.get(key) {
        None => Ok(None),
        Some(p) => p
            .string_value
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("parameter {key} is '{}': not a number", p.string_value)),
    }
}

impl DriftSampler {
    /// The sampler a version's config asks for (`None`: monitoring off), or why its parameters
    /// are wrong.
    pub fn from_config(
        cfg: &ModelConfig,
        default_rate: f64,
        model_dir: Option<&std::path::Path>,
    ) -> Result<Option<DriftSampler>, String> {
        let rate: f64 = param(cfg, "drift_sample_rate")?.unwrap_or(default_rate);
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!(
                "parameter drift_sample_rate is {rate}: give a rate from 0 to 1"
            ));
        }
        if rate == 0.0 {
            return Ok(None);
        }
        let mut d = DriftConfig::default();
        if let Some(n) = param::<u64>(cfg, "drift_reference_requests")? {
            if n == 0 {
                return Err("parameter drift_reference_requests must be positive".into());
            }
            d.reference_requests = n;
        }
        if let Some(w) = param::<f64>(cfg, "drift_window_secs")? {
            if !(w.is_finite() && w > 0.0) {
                return Err(format!(
                    "parameter drift_window_secs is {w}: give positive seconds"
                ));
            }
            d.window_secs = w;
        }
        if let Some(v) = param::<f64>(cfg, "drift_psi_warning")? {
            d.psi_warning = v;
        }
        if let Some(v) = param::<f64>(cfg, "drift_psi_drift")? {
            d.psi_drift = v;
        }
        if let Some(v) = param::<u64>(cfg, "drift_min_current")? {
            d.min_current = v;
        }
        // A saved baseline in the model folder is every version's reference.
        let saved = model_dir
            .map(|m| m.join(REFERENCE_FILE))
            .filter(|p| p.is_file());
        let monitor = match saved {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let r: inferd_drift::Reference = serde_json::from_str(&text).map_err(|e| {
                    format!(
                        "{}: not a drift reference (inferd drift baseline writes one): {e}",
                        path.display()
                    )
                })?;
                Monitor::from_reference(d, &r)
            }
            None => Monitor::new(d),
        };
        Ok(Some(DriftSampler {
            rate,
            seen: AtomicU64::new(0),
            started: Instant::now(),
            monitor: Mutex::new(monitor),
            against: Mutex::new(None),
        }))
    }

    /// Whether the next request is sampled.
    pub fn sample(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        ((n + 1) as f64 * self.rate).floor() > (n as f64 * self.rate).floor()
    }

    /// Feeds one request's inputs and outputs (`rows`: its batch size when the model batches,
    /// else 1).
    pub fn observe(&self, inputs: &[NamedTensor], outputs: &[NamedTensor], rows: usize) {
        let mut tensors = Vec::with_capacity(inputs.len() + outputs.len());
        for (kind, list) in [(TensorKind::Input, inputs), (TensorKind::Output, outputs)] {
            for t in list {
                if let Some(v) = values(&t.tensor) {
                    tensors.push((kind, t.name.as_str(), v, rows));
                }
            }
        }
        let now = self.started.elapsed().as_secs_f64();
        if let Ok(mut m) = self.monitor.lock() {
            m.observe(now, &tensors);
        }
        if let Ok(mut a) = self.against.lock()
            && let Some((_, m)) = a.as_mut()
        {
            m.observe(now, &tensors);
        }
    }

    /// The report so far.
    pub fn report(&self) -> Report {
        self.monitor
            .lock()
            .map(|m| m.report())
            .unwrap_or_else(|p| p.into_inner().report())
    }

    /// The largest PSI of this version's outputs against `primary`'s (another version, named
    /// `key`, whose complete `reference` bins both alike), counted from the first call for that
    /// key on: against the primary's current window over the same time when both windows hold
    /// enough values, else against its reference; `None` on that first call and until this
    /// version's window holds enough to judge. Judging against the primary's window keeps a
    /// world that moved for both (a season, a campaign) from rolling a good canary back.
    pub fn outputs_against(
        &self,
        key: &str,
        reference: &inferd_drift::Reference,
        primary: &DriftSampler,
    ) -> Option<f64> {
        let mut a = self.against.lock().ok()?;
        match a.as_ref() {
            Some((k, m)) if k == key => {
                let now = primary
                    .monitor
                    .lock()
                    .ok()
                    .and_then(|p| m.max_psi_against_window(&p, TensorKind::Output));
                now.or_else(|| m.max_psi(TensorKind::Output))
            }
            _ => {
                let cfg = self.monitor.lock().ok()?.config().clone();
                *a = Some((key.to_string(), Monitor::from_reference(cfg, reference)));
                None
            }
        }
    }

    /// The reference, once complete.
    pub fn reference(&self) -> Option<inferd_drift::Reference> {
        self.monitor.lock().ok().and_then(|m| m.reference())
    }

    /// The sampling rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

/// A tensor's elements as the monitor takes them (`None` for types it does not watch).
fn values(t: &Tensor) -> Option<Values> {
    let raw = match t.data() {
        TensorData::Bytes(items) => {
            return Some(Values::Bytes(items.iter().map(|b| b.to_vec()).collect()));
        }
        TensorData::Raw(r) => r,
    };
    macro_rules! ints {
        ($t:ty, $w:expr) => {
            Values::Integer(
                raw.chunks_exact($w)
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $w])) as i64)
                    .collect(),
            )
        };
    }
    Some(match t.dtype() {
        DataType::Bool => Values::Bool(raw.iter().map(|b| *b != 0).collect()),
        DataType::U8 => Values::Integer(raw.iter().map(|b| i64::from(*b)).collect()),
        DataType::I8 => Values::Integer(raw.iter().map(|b| i64::from(*b as i8)).collect()),
        DataType::U16 => ints!(u16, 2),
        DataType::I16 => ints!(i16, 2),
        DataType::U32 => ints!(u32, 4),
        DataType::I32 => ints!(i32, 4),
        DataType::U64 => ints!(u64, 8),
        DataType::I64 => ints!(i64, 8),
        DataType::F16 => Values::Float(
            raw.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
        ),
        DataType::BF16 => Values::Float(
            raw.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
        ),
        DataType::F32 => Values::Float(
            raw.chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        DataType::F64 => Values::Float(
            raw.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        DataType::Bytes => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_twentieth_request_is_sampled_at_five_percent() {
        let cfg = ModelConfig::default();
        let s = DriftSampler::from_config(&cfg, 0.05, None)
            .expect("ok")
            .expect("on");
        let n = (0..1000).filter(|_| s.sample()).count();
        assert_eq!(n, 50);
        assert!(
            DriftSampler::from_config(&cfg, 0.0, None)
                .expect("ok")
                .is_none()
        );
    }
}
