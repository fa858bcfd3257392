//! The engine: model lifecycle over a repository, routing of requests to ready versions, and the
//! embedding API. Front-ends (HTTP, gRPC) and embedders call the same methods.
//!
//! Reload is availability-preserving: new versions load while the old ones serve; routing
//! switches under one write lock; replaced versions stop taking requests, finish the ones they
//! hold, then unload. A version that fails to load leaves the serving versions untouched.
//!
//! One job per file:
//! - this file: the engine's types, startup and health;
//! - [`routing`]: admission and routing of inference requests to a ready version;
//! - [`introspect`]: metadata, readiness, statistics and the repository index;
//! - [`control`]: the explicit load/unload API and retiring versions;
//! - [`reconcile`]: bringing a model in line with its folder, and poll mode;
//! - [`loading`]: reading a config, choosing a backend, loading one version;
//! - [`lifecycle`]: the version state machine, as pure functions.

mod caller;
mod control;
pub(crate) mod decoupled;
mod drift;
mod ensemble;
mod introspect;
pub(crate) mod lifecycle;
mod loading;
mod overrides;
mod reconcile;
mod routing;

use loading::{LoadFailure, relative_to};
pub use overrides::LoadOverride;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::backend::{Backend, LoadRequest, NamedTensor};
use crate::config::{ModelConfig, ParsedConfig, complete_config, parse_config, validate_config};
use crate::error::{Error, Result};
use crate::repository::{self, ModelDir};
use crate::request::{InferRequest, InferResponse, PreparedRequest, check_model_shapes, prepare};
use crate::runner::{InflightGuard, RunnerOptions, VersionRunner};
use crate::scheduler::ComputeBudget;
use crate::stats::VersionStats;
use crate::warmup;

/// How the set of loaded models is decided (Triton's `--model-control-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ControlMode {
    /// Load everything at start; never change.
    #[default]
    None,
    /// Load everything at start and follow the repository's changes.
    Poll,
    /// Load only what is asked for, at start or through the API.
    Explicit,
}

impl std::str::FromStr for ControlMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(ControlMode::None),
            "poll" => Ok(ControlMode::Poll),
            "explicit" => Ok(ControlMode::Explicit),
            other => Err(format!(
                "unknown model control mode '{other}' (expected none, poll or explicit)"
            )),
        }
    }
}

impl std::fmt::Display for ControlMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ControlMode::None => "none",
            ControlMode::Poll => "poll",
            ControlMode::Explicit => "explicit",
        })
    }
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// The model repository folder.
    pub repository: PathBuf,
    /// Model control mode.
    pub control_mode: ControlMode,
    /// How often poll mode rescans the repository.
    pub poll_interval: Duration,
    /// Models to load at start in explicit mode (`*` for all).
    pub startup_models: Vec<String>,
    /// Ready only when every wanted model is ready.
    pub strict_readiness: bool,
    /// Bound of each version's request queue when its config sets none.
    pub queue_capacity: usize,
    /// Executions that may run at once across all models and instances; 0 means one per core.
    pub compute_threads: usize,
    /// How long an idle executor polls its queue before sleeping (lower latency at low load,
    /// at the price of some CPU).
    pub executor_spin: Duration,
    /// How long an unloaded version may take to finish its requests; then what is still queued
    /// is failed (UNAVAILABLE) and the version stops.
    pub unload_timeout: Duration,
    /// Called after a version loads (on the loading thread) and after one unloads, to return
    /// freed memory to the OS; the binary passes its allocator's (see `inferd`'s `alloc.rs`).
    pub reclaim_memory: Option<fn()>,
    /// Versions that may load at once (`--model-load-threads`); 0 means one per core.
    pub model_load_threads: usize,
    /// How long a request for a model that is still loading (or a server still loading its
    /// startup models) waits for it to turn ready before failing (`--cold-start-wait-secs`;
    /// zero: fail at once).
    pub cold_start_wait: Duration,
    /// Requests that may wait so at once; past it they fail at once (503).
    pub cold_start_queue: usize,
    /// Bytes of the response cache shared by the models whose config enables it
    /// (`--cache-config local,size=N`); 0: no cache.
    pub response_cache_bytes: usize,
    /// Live sequences each stateful model may hold (`--max-sequences`), unless its config's
    /// `sequence_batching.oldest.max_candidate_sequences` sets it.
    pub max_sequences: usize,
    /// Where files given with a load request are staged (`--staging-dir`); `None`: a private
    /// folder under the system's temporary folder.
    pub staging_dir: Option<PathBuf>,
    /// Share of each version's requests drift monitoring samples (`--drift-sample-rate`); a
    /// model's `drift_sample_rate` parameter wins; 0 turns it off.
    pub drift_sample_rate: f64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            repository: PathBuf::from("models"),
            control_mode: ControlMode::None,
            poll_interval: Duration::from_secs(5),
            startup_models: Vec::new(),
            strict_readiness: true,
            queue_capacity: 1024,
            compute_threads: 0,
            executor_spin: crate::scheduler::IDLE_SPIN,
            unload_timeout: Duration::from_secs(30),
            reclaim_memory: None,
            model_load_threads: 0,
            cold_start_wait: Duration::ZERO,
            cold_start_queue: 1024,
            response_cache_bytes: 0,
            max_sequences: 1024,
            staging_dir: None,
            drift_sample_rate: 0.05,
        }
    }
}

/// Lifecycle state of a model version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionState {
    /// Being loaded.
    Loading,
    /// Serving.
    Ready,
    /// No longer routed to; finishing in-flight requests.
    Unloading,
    /// Not serving (see the reason).
    Unavailable,
}

impl VersionState {
    /// Every state, in lifecycle order.
    pub const ALL: [VersionState; 4] = [
        VersionState::Loading,
        VersionState::Ready,
        VersionState::Unloading,
        VersionState::Unavailable,
    ];

    /// Triton's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Loading => "LOADING",
            VersionState::Ready => "READY",
            VersionState::Unloading => "UNLOADING",
            VersionState::Unavailable => "UNAVAILABLE",
        }
    }
}

/// One row of the repository index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version; `None` for a model with no version state.
    pub version: Option<u64>,
    /// State; `None` when the model was never loaded.
    pub state: Option<VersionState>,
    /// Why, when not ready.
    pub reason: String,
}

/// One version as a metrics page sees it.
#[derive(Clone, Debug)]
pub struct VersionMetrics {
    /// Model name.
    pub model: String,
    /// Version.
    pub version: u64,
    /// Lifecycle state.
    pub state: VersionState,
    /// Requests waiting in its queue.
    pub queue_depth: usize,
    /// Requests holding it (queued or running).
    pub inflight: usize,
    /// Model instances executing side by side (1 without a loaded copy).
    pub instances: usize,
    /// How long its load took, while a loaded copy exists.
    pub load_duration: Option<Duration>,
    /// The load's phases (`checks`, `load`, `warmup`) and their durations.
    pub start_phases: Vec<(&'static str, Duration)>,
    /// Its statistics, while a loaded copy exists.
    pub stats: Option<VersionStats>,
    /// A generating model's live numbers.
    pub generator: Option<crate::generate::GeneratorStats>,
}

/// What the metadata endpoints describe.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Name.
    pub name: String,
    /// Ready versions, ascending.
    pub versions: Vec<u64>,
    /// The version described.
    pub version: u64,
    /// Its effective config.
    pub config: Arc<ModelConfig>,
}

/// A model's versions, each holding its loaded copy when it has one.
type ModelEntry = lifecycle::ModelEntry<Arc<VersionRunner>>;

struct Inner {
    opts: EngineOptions,
    backends: Vec<Arc<dyn Backend>>,
    /// Metrics models define themselves (python models' MetricFamily).
    custom_metrics: Arc<crate::custom_metrics::CustomMetrics>,
    models: RwLock<BTreeMap<String, ModelEntry>>,
    /// Serialises lifecycle operations per model.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    started: AtomicBool,
    stopping: AtomicBool,
    /// Past the drain delay: new inference requests are refused.
    refusing: AtomicBool,
    budget: Arc<ComputeBudget>,
    /// Load slots: a version loads only while it holds one.
    load_slots: Arc<tokio::sync::Semaphore>,
    /// Woken whenever loads settle (a version ready or failed, startup done).
    settled: tokio::sync::Notify,
    /// Requests waiting for a cold start.
    cold_waiting: std::sync::atomic::AtomicUsize,
    /// Time spent fetching a model's files (from object storage) since its last load: the
    /// `fetch` phase of its next start.
    fetch_times: Mutex<HashMap<String, std::time::Duration>>,
    /// The response cache (`response_cache_bytes` > 0).
    cache: Option<Arc<crate::cache::ResponseCache>>,
    /// Models loaded with overrides (load API `config`/`file:` parameters).
    overrides: Mutex<HashMap<String, overrides::Override>>,
    /// Decoupled requests running at once.
    decoupled_slots: Arc<tokio::sync::Semaphore>,
    /// Serialises loads with overrides and unloads through the API.
    override_lock: tokio::sync::Mutex<()>,
}

/// The inferd engine. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("repository", &self.inner.opts.repository)
            .finish_non_exhaustive()
    }
}

fn lock_err<T>(_: T) -> Error {
    Error::Internal("engine state lock poisoned".into())
}

impl Engine {
    /// Creates an engine; nothing is loaded until [`Engine::start`].
    pub fn new(opts: EngineOptions, backends: Vec<Arc<dyn Backend>>) -> Self {
        let threads = match opts.compute_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        let budget = Arc::new(ComputeBudget::new(threads));
        let load_slots = match opts.model_load_threads {
            0 => threads,
            n => n,
        };
        let opts_cache_bytes = opts.response_cache_bytes;
        Engine {
            inner: Arc::new(Inner {
                opts,
                backends,
                custom_metrics: Arc::default(),
                models: RwLock::new(BTreeMap::new()),
                locks: Mutex::new(HashMap::new()),
                started: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                refusing: AtomicBool::new(false),
                budget,
                load_slots: Arc::new(tokio::sync::Semaphore::new(load_slots)),
                settled: tokio::sync::Notify::new(),
                cold_waiting: std::sync::atomic::AtomicUsize::new(0),
                fetch_times: Mutex::new(HashMap::new()),
                cache: (opts_cache_bytes > 0)
                    .then(|| Arc::new(crate::cache::ResponseCache::new(opts_cache_bytes))),
                overrides: Mutex::new(HashMap::new()),
                override_lock: tokio::sync::Mutex::new(()),
                decoupled_slots: Arc::new(tokio::sync::Semaphore::new(decoupled::MAX_DECOUPLED)),
            }),
        }
    }

    /// Metrics that models define themselves, for the metrics page.
    pub fn custom_metrics(&self) -> &Arc<crate::custom_metrics::CustomMetrics> {
        &self.inner.custom_metrics
    }

    /// The options.
    pub fn options(&self) -> &EngineOptions {
        &self.inner.opts
    }

    /// Records `took` spent fetching `model`'s files (a repository on object storage): the
    /// `fetch` phase of the model's next start, added to what earlier fetches recorded.
    pub fn record_fetch(&self, model: &str, took: std::time::Duration) {
        let mut times = self
            .inner
            .fetch_times
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *times.entry(model.to_string()).or_default() += took;
    }

    /// What the response cache holds (None: the server has none).
    pub fn cache_usage(&self) -> Option<crate::cache::CacheUsage> {
        self.inner.cache.as_ref().map(|c| c.usage())
    }

    /// Takes what [`Engine::record_fetch`] recorded for `model`.
    pub(crate) fn take_fetch(&self, model: &str) -> Option<std::time::Duration> {
        self.inner
            .fetch_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(model)
    }

    /// Loads the startup models and, in poll mode, starts following the repository. Returns when
    /// the startup loads have finished (failures leave those models UNAVAILABLE).
    pub async fn start(&self) -> Result<()> {
        let repo = self.inner.opts.repository.clone();
        let all = blocking(move || repository::list_models(&repo)).await??;
        let names: Vec<String> = match self.inner.opts.control_mode {
            ControlMode::None | ControlMode::Poll => all,
            ControlMode::Explicit => {
                if self.inner.opts.startup_models.iter().any(|m| m == "*") {
                    all
                } else {
                    self.inner.opts.startup_models.clone()
                }
            }
        };
        // What poll mode compares against: taken before loading, so edits made while the
        // startup loads run are seen as changes.
        let baseline = if self.inner.opts.control_mode == ControlMode::Poll {
            self.snapshot().await.unwrap_or_default()
        } else {
            HashMap::new()
        };
        let mut tasks = Vec::new();
        for name in names {
            let this = self.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = this.load(&name).await {
                    tracing::error!(model = %name, "startup load failed: {e}");
                    if let (Error::NotFound(msg) | Error::InvalidArgument(msg), Ok(mut models)) =
                        (&e, this.inner.models.write())
                    {
                        // Asked for but absent or invalid: it counts against strict readiness.
                        let entry = models.entry(name.clone()).or_default();
                        entry.wanted = true;
                        if entry.error.is_none() && entry.versions.is_empty() {
                            entry.error = Some(msg.clone());
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        self.inner.started.store(true, Ordering::Release);
        self.inner.settled.notify_waiters();
        if self.inner.opts.control_mode == ControlMode::Poll {
            let this = self.clone();
            tokio::spawn(async move { this.poll_loop(baseline).await });
        }
        Ok(())
    }

    /// Stops polling and marks the engine as shutting down (not ready).
    pub fn begin_shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
    }

    /// Refuses every new inference request from now on (UNAVAILABLE: the server is shutting
    /// down); requests already admitted run to the end.
    pub fn refuse_new_requests(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.refusing.store(true, Ordering::Release);
    }

    /// Inference requests admitted and not yet answered, across every model and version.
    pub fn inflight(&self) -> usize {
        self.inner.models.read().map_or(0, |models| {
            models
                .values()
                .flat_map(|m| m.versions.values())
                .filter_map(|v| v.runner.as_ref())
                .map(|r| r.inflight())
                .sum()
        })
    }

    /// Live: the process is up and answering.
    pub fn is_live(&self) -> bool {
        true
    }

    /// Ready: startup loading is done and, with strict readiness, every wanted model is ready.
    pub fn is_ready(&self) -> bool {
        if !self.inner.started.load(Ordering::Acquire)
            || self.inner.stopping.load(Ordering::Acquire)
        {
            return false;
        }
        if !self.inner.opts.strict_readiness {
            return true;
        }
        let Ok(models) = self.inner.models.read() else {
            return false;
        };
        models
            .values()
            .filter(|m| m.wanted)
            .all(|m| m.versions.values().any(|v| v.state == VersionState::Ready))
    }
}

/// Runs blocking work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("background task failed: {e}")))
}
