//! Autoscaling signals per model, for the metrics page (and so for HPA, KEDA or Knative):
//!
//! - demand: requests arriving per second, over the last minute;
//! - capacity: the requests per second this replica sustains at its current batching, learned
//!   from the newest ready version's own statistics (rows per second of model compute, times
//!   its instances);
//! - utilisation: demand over capacity;
//! - forecast: the largest demand an online Holt-Winters model with a daily season
//!   ([`inferd_autoscale::forecast`]) expects within the horizon: `--forecast-horizon-secs`,
//!   or the measured cold start (the model's load time). Until it has a day of history it says
//!   so (`inferd_demand_forecast_ready` 0) and reports the current demand instead. Its state
//!   is kept in the state dir (`forecast.json`) across restarts.
//!
//! A thin task ticks [`Signals::tick`] once a second with the engine's snapshot; the rest is
//! synchronous and unit-tested.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inferd_autoscale::forecast::HoltWinters;
use inferd_core::Engine;
use inferd_core::engine::{VersionMetrics, VersionState};

/// Seconds of arrivals the demand averages.
const DEMAND_WINDOW: usize = 60;

#[derive(Debug)]
struct Model {
    arrivals: VecDeque<u64>,
    minute: u64,
    seconds: u32,
    forecaster: HoltWinters,
    capacity: Option<f64>,
    load_secs: Option<f64>,
}

impl Model {
    fn new(forecaster: Option<HoltWinters>) -> Model {
        Model {
            arrivals: VecDeque::with_capacity(DEMAND_WINDOW),
            minute: 0,
            seconds: 0,
            forecaster: forecaster.unwrap_or_else(HoltWinters::daily),
            capacity: None,
            load_secs: None,
        }
    }

    fn demand(&self) -> f64 {
        if self.arrivals.is_empty() {
            return 0.0;
        }
        self.arrivals.iter().sum::<u64>() as f64 / self.arrivals.len() as f64
    }
}

/// One model's signals.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// The model.
    pub model: String,
    /// Requests per second over the last minute.
    pub demand: f64,
    /// Requests per second this replica sustains, once measured.
    pub capacity: Option<f64>,
    /// The forecast peak demand within the horizon (the current demand until ready).
    pub forecast: f64,
    /// Whether the forecaster has a full day of history.
    pub forecast_ready: bool,
    /// The horizon, seconds.
    pub horizon_secs: f64,
}

/// The signals of every model.
#[derive(Debug)]
pub struct Signals {
    models: Mutex<BTreeMap<String, Model>>,
    /// Request totals per (model, version) at the last tick.
    totals: Mutex<HashMap<(String, u64), u64>>,
    horizon: Option<f64>,
    state_file: Option<PathBuf>,
    saved: Mutex<BTreeMap<String, HoltWinters>>,
}

impl Signals {
    /// Signals with a fixed forecast horizon (`None`: each model's measured load time), kept
    /// in `state_dir` when given.
    pub fn new(horizon: Option<f64>, state_dir: Option<PathBuf>) -> Signals {
        let state_file = state_dir.map(|d| d.join("forecast.json"));
        let saved = state_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| match serde_json::from_slice(&b) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("ignoring the saved forecasts: {e}");
                    None
                }
            })
            .unwrap_or_default();
        Signals {
            models: Mutex::new(BTreeMap::new()),
            totals: Mutex::new(HashMap::new()),
            horizon,
            state_file,
            saved: Mutex::new(saved),
        }
    }

    /// One second passed: `versions` is the engine's snapshot now.
    pub fn tick(&self, versions: &[VersionMetrics]) {
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        let mut arrived: BTreeMap<&str, u64> = BTreeMap::new();
        let mut newest: BTreeMap<&str, &VersionMetrics> = BTreeMap::new();
        for v in versions {
            let Some(s) = &v.stats else { continue };
            let total = s.infer.success.count + s.infer.fail.count;
            let key = (v.model.clone(), v.version);
            let before = totals.insert(key, total).unwrap_or(total);
            *arrived.entry(&v.model).or_default() += total.saturating_sub(before);
            if v.state == VersionState::Ready
                && newest
                    .get(v.model.as_str())
                    .is_none_or(|n| n.version < v.version)
            {
                newest.insert(&v.model, v);
            }
        }
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        for (name, n) in arrived {
            let m = models
                .entry(name.to_string())
                .or_insert_with(|| Model::new(saved.remove(name)));
            if m.arrivals.len() == DEMAND_WINDOW {
                m.arrivals.pop_front();
            }
            m.arrivals.push_back(n);
            m.minute += n;
            m.seconds += 1;
            if m.seconds == 60 {
                m.forecaster.observe(m.minute as f64 / 60.0);
                m.minute = 0;
                m.seconds = 0;
            }
            if let Some(v) = newest.get(name) {
                m.load_secs = v.load_duration.map(|d| d.as_secs_f64());
                if let Some(s) = &v.stats {
                    let compute = s.compute_duration.sum_ns as f64 / 1e9;
                    if s.inference_count > 0 && compute > 0.0 {
                        m.capacity = Some(s.inference_count as f64 / compute * v.instances as f64);
                    }
                }
            }
        }
    }

    /// Every model's signals now.
    pub fn snapshot(&self) -> Vec<Signal> {
        let models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        models
            .iter()
            .map(|(name, m)| {
                let horizon = self.horizon.or(m.load_secs).unwrap_or(0.0);
                let demand = m.demand();
                let forecast = m.forecaster.peak_within(horizon);
                Signal {
                    model: name.clone(),
                    demand,
                    capacity: m.capacity,
                    forecast: forecast.unwrap_or(demand),
                    forecast_ready: forecast.is_some(),
                    horizon_secs: horizon,
                }
            })
            .collect()
    }

    /// Writes the forecasters to the state dir (when there is one).
    pub fn save(&self) {
        let Some(file) = &self.state_file else { return };
        let all: BTreeMap<String, HoltWinters> = self
            .models
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, m)| (k.clone(), m.forecaster.clone()))
            .collect();
        let tmp = file.with_extension("json.tmp");
        let written = serde_json::to_vec(&all)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), "cannot save the forecasts: {e}");
        }
    }
}

/// Ticks `signals` (and the console's charts) once a second from `engine`'s snapshot, saving
/// the forecasts each minute.
pub fn spawn(
    engine: Engine,
    signals: Arc<Signals>,
    console: Arc<crate::ui::Console>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            every.tick().await;
            let snapshot = engine.metrics_snapshot();
            signals.tick(&snapshot);
            console.tick(&snapshot);
            n += 1;
            if n.is_multiple_of(60) {
                let s = signals.clone();
                // File writes off the async threads.
                let _ = tokio::task::spawn_blocking(move || s.save()).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferd_core::stats::VersionStats;

    fn version(model: &str, requests: u64, rows: u64, compute_ns: u64) -> VersionMetrics {
        let mut stats = VersionStats::default();
        stats.infer.success.count = requests;
        stats.inference_count = rows;
        stats.compute_duration.sum_ns = compute_ns;
        VersionMetrics {
            model: model.into(),
            version: 1,
            state: VersionState::Ready,
            queue_depth: 0,
            inflight: 0,
            instances: 2,
            load_duration: Some(Duration::from_millis(1500)),
            start_phases: Vec::new(),
            stats: Some(stats),
            generator: None,
        }
    }

    #[test]
    fn demand_capacity_and_a_forecast_that_says_when_it_has_too_little_history() {
        let s = Signals::new(None, None);
        // 10 requests a second for a minute; 400 rows took 2 s of compute on each of 2 instances.
        for t in 0..=60u64 {
            s.tick(&[version("m", 10 * t, 400, 2_000_000_000)]);
        }
        let sig = &s.snapshot()[0];
        assert!((sig.demand - 10.0).abs() < 1e-9, "{sig:?}");
        assert_eq!(sig.capacity, Some(400.0));
        assert!(!sig.forecast_ready);
        assert_eq!(sig.forecast, sig.demand, "falls back to the current demand");
        assert_eq!(sig.horizon_secs, 1.5, "the measured load time");
    }

    #[test]
    fn forecasts_survive_a_restart_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signals::new(Some(60.0), Some(dir.path().to_path_buf()));
        for t in 0..=(86_400 + 120) as u64 {
            s.tick(&[version("m", 5 * t, 1, 1)]);
        }
        let before = s.snapshot()[0].clone();
        assert!(
            before.forecast_ready && (before.forecast - 5.0).abs() < 0.5,
            "{before:?}"
        );
        s.save();
        let again = Signals::new(Some(60.0), Some(dir.path().to_path_buf()));
        again.tick(&[version("m", 0, 1, 1)]);
        let after = &again.snapshot()[0];
        assert!(after.forecast_ready, "the day of history came back");
        assert!((after.forecast - before.forecast).abs() < 1e-9);
    }
}
