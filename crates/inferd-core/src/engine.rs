//! The engine: model lifecycle over a repository, routing of requests to ready versions, and the
//! embedding API. Front-ends (HTTP, gRPC) and embedders call the same methods.
//!
//! Reload is availability-preserving: new versions load while the old ones serve; routing
//! switches under one write lock; replaced versions stop taking requests, finish the ones they
//! hold, then unload. A version that fails to load leaves the serving versions untouched.

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

struct VersionEntry {
    state: VersionState,
    reason: String,
    runner: Option<Arc<VersionRunner>>,
    fingerprint: u64,
    config_fingerprint: u64,
}

#[derive(Default)]
struct ModelEntry {
    versions: BTreeMap<u64, VersionEntry>,
    /// A problem with the model as a whole (bad config, no versions).
    error: Option<String>,
    /// Should be loaded (counts for strict readiness).
    wanted: bool,
}

struct Inner {
    opts: EngineOptions,
    backends: Vec<Arc<dyn Backend>>,
    models: RwLock<BTreeMap<String, ModelEntry>>,
    /// Serialises lifecycle operations per model.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    started: AtomicBool,
    stopping: AtomicBool,
    budget: Arc<ComputeBudget>,
}

/// The inferd engine. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// Why a version did not load, and whose fault it is: the model's (bad files, config, an
/// operator the backend refuses: the client's to fix, 400 on the load API) or the server's
/// (I/O, resources, a backend panic: 500).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoadFailure {
    /// What went wrong, paths relative to the repository.
    pub reason: String,
    /// The server is at fault, not the model.
    pub server_fault: bool,
}

impl From<String> for LoadFailure {
    fn from(reason: String) -> Self {
        LoadFailure {
            reason,
            server_fault: false,
        }
    }
}

impl LoadFailure {
    fn server(reason: String) -> Self {
        LoadFailure {
            reason,
            server_fault: true,
        }
    }
}

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// `message` with the repository's absolute path taken out, so clients see paths relative to
/// the repository and never the server's filesystem layout.
pub(crate) fn relative_to(repository: &Path, message: &str) -> String {
    let mut out = message.to_string();
    let mut prefixes = vec![repository.to_path_buf()];
    if let Ok(c) = repository.canonicalize() {
        prefixes.push(c);
    }
    if let Ok(cwd) = std::env::current_dir()
        && repository.is_relative()
    {
        prefixes.push(cwd.join(repository));
    }
    for p in prefixes {
        let p = p.display().to_string();
        if p.is_empty() || p == "/" || !p.starts_with('/') {
            continue;
        }
        out = out.replace(&format!("{}/", p.trim_end_matches('/')), "");
    }
    out
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
        Engine {
            inner: Arc::new(Inner {
                opts,
                backends,
                models: RwLock::new(BTreeMap::new()),
                locks: Mutex::new(HashMap::new()),
                started: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                budget,
            }),
        }
    }

    /// The options.
    pub fn options(&self) -> &EngineOptions {
        &self.inner.opts
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

    /// Runs inference on a model (newest ready version unless `version` is given).
    pub async fn infer(
        &self,
        model: &str,
        version: Option<u64>,
        req: InferRequest,
    ) -> Result<InferResponse> {
        let (guard, prepared, id) = self.admit(model, version, req)?;
        let runner = guard.runner();
        let outputs = runner.infer(prepared, self.result_spin(runner)).await?;
        Ok(respond(model, runner, id, outputs))
    }

    /// [`Engine::infer`] for callers on a plain thread (an application embedding the engine
    /// without async code): the same validation, queue and batching, but the caller polls
    /// for its result (for the model's batching delay plus `executor_spin`) before sleeping,
    /// so a short request pays no thread wake-up on the way back. Must not be called from
    /// async code.
    pub fn infer_blocking(
        &self,
        model: &str,
        version: Option<u64>,
        req: InferRequest,
    ) -> Result<InferResponse> {
        let (guard, prepared, id) = self.admit(model, version, req)?;
        let runner = guard.runner();
        let outputs = runner.infer_blocking(prepared, self.result_spin(runner))?;
        Ok(respond(model, runner, id, outputs))
    }

    /// Routes a request to a version (held by the guard) and validates it against its config.
    fn admit(
        &self,
        model: &str,
        version: Option<u64>,
        req: InferRequest,
    ) -> Result<(InflightGuard, PreparedRequest, String)> {
        let guard = self.route(model, version)?;
        let id = req.id.clone();
        let runner = guard.runner();
        let prepared = prepare(model, runner.config(), req)?;
        check_model_shapes(
            model,
            runner.config().batches(),
            runner.signature(),
            &prepared,
        )?;
        Ok((guard, prepared, id))
    }

    /// How long a caller polls for its result before sleeping: as long as the batcher may hold
    /// the request, plus the executor's own spin (0 when spinning is off).
    fn result_spin(&self, runner: &VersionRunner) -> Duration {
        let spin = self.inner.opts.executor_spin;
        if spin.is_zero() {
            return spin;
        }
        let delay = runner
            .config()
            .dynamic_batching
            .as_ref()
            .map_or(0, |d| d.max_queue_delay_microseconds);
        spin + Duration::from_micros(delay)
    }

    /// Picks the version to serve a request and marks it in use.
    pub fn route(&self, model: &str, version: Option<u64>) -> Result<InflightGuard> {
        let models = self.inner.models.read().map_err(lock_err)?;
        let Some(entry) = models.get(model) else {
            return Err(Error::NotFound(format!("unknown model '{model}'")));
        };
        let pick = match version {
            Some(v) => match entry.versions.get(&v) {
                None => {
                    return Err(Error::NotFound(format!(
                        "model '{model}' has no version {v}"
                    )));
                }
                Some(e) => match (&e.state, &e.runner) {
                    (VersionState::Ready, Some(r)) => r,
                    _ => {
                        let msg = format!(
                            "model '{model}' version {v} is not ready ({}{})",
                            e.state.as_str(),
                            if e.reason.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", e.reason)
                            }
                        );
                        // Loading is transient (503); unloaded or failed is the client's to fix.
                        return Err(if e.state == VersionState::Loading {
                            Error::Unavailable(msg)
                        } else {
                            Error::NotFound(msg)
                        });
                    }
                },
            },
            None => match entry
                .versions
                .values()
                .rev()
                .find_map(|e| match (&e.state, &e.runner) {
                    (VersionState::Ready, Some(r)) => Some(r),
                    _ => None,
                }) {
                Some(r) => r,
                None => {
                    let loading = entry
                        .versions
                        .values()
                        .any(|e| e.state == VersionState::Loading);
                    let why = entry.error.clone().unwrap_or_else(|| {
                        let states: Vec<String> = entry
                            .versions
                            .iter()
                            .map(|(v, e)| {
                                let reason = if e.reason.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {}", e.reason)
                                };
                                format!("version {v} {}{reason}", e.state.as_str())
                            })
                            .collect();
                        if states.is_empty() {
                            "no version is loaded".to_string()
                        } else {
                            states.join("; ")
                        }
                    });
                    let msg = format!("model '{model}' is not ready: {why}");
                    return Err(if loading {
                        Error::Unavailable(msg)
                    } else {
                        Error::NotFound(msg)
                    });
                }
            },
        };
        Ok(pick.begin())
    }

    /// Metadata of a model's ready version (newest unless `version` is given).
    pub fn model_info(&self, model: &str, version: Option<u64>) -> Result<ModelInfo> {
        let guard = self.route(model, version)?;
        let runner = guard.runner();
        let models = self.inner.models.read().map_err(lock_err)?;
        let versions = models
            .get(model)
            .map(|m| {
                m.versions
                    .iter()
                    .filter(|(_, v)| v.state == VersionState::Ready)
                    .map(|(k, _)| *k)
                    .collect()
            })
            .unwrap_or_default();
        Ok(ModelInfo {
            name: model.to_string(),
            versions,
            version: runner.version(),
            config: runner.config().clone(),
        })
    }

    /// Whether a model (or one version) is ready.
    pub fn is_model_ready(&self, model: &str, version: Option<u64>) -> Result<bool> {
        match self.route(model, version) {
            Ok(_) => Ok(true),
            Err(Error::Unavailable(_)) => Ok(false),
            Err(Error::NotFound(_)) if self.knows(model)? => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn knows(&self, model: &str) -> Result<bool> {
        Ok(self
            .inner
            .models
            .read()
            .map_err(lock_err)?
            .contains_key(model))
    }

    /// Statistics of ready versions: of one model (or one version), or of all.
    pub fn statistics(
        &self,
        model: Option<&str>,
        version: Option<u64>,
    ) -> Result<Vec<(String, u64, VersionStats)>> {
        let models = self.inner.models.read().map_err(lock_err)?;
        if let Some(m) = model {
            let entry = models
                .get(m)
                .ok_or_else(|| Error::NotFound(format!("unknown model '{m}'")))?;
            if let Some(v) = version
                && !entry.versions.contains_key(&v)
            {
                return Err(Error::NotFound(format!("model '{m}' has no version {v}")));
            }
        }
        let mut out = Vec::new();
        for (name, entry) in models.iter() {
            if model.is_some_and(|m| m != name) {
                continue;
            }
            for (v, e) in &entry.versions {
                if version.is_some_and(|want| want != *v) {
                    continue;
                }
                if let (VersionState::Ready, Some(r)) = (e.state, &e.runner) {
                    out.push((name.clone(), *v, r.stats()));
                }
            }
        }
        Ok(out)
    }

    /// Live load of every ready version: (model, version, queue depth, requests in flight).
    pub fn load_gauges(&self) -> Vec<(String, u64, usize, usize)> {
        let Ok(models) = self.inner.models.read() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, entry) in models.iter() {
            for (v, e) in &entry.versions {
                if let Some(r) = &e.runner {
                    out.push((name.clone(), *v, r.queue_depth(), r.inflight()));
                }
            }
        }
        out
    }

    /// The repository index: every model folder, with per-version states where known.
    pub async fn index(&self, ready_only: bool) -> Result<Vec<IndexEntry>> {
        let repo = self.inner.opts.repository.clone();
        let on_disk = blocking(move || repository::list_models(&repo)).await??;
        let models = self.inner.models.read().map_err(lock_err)?;
        let mut names: Vec<&str> = on_disk.iter().map(String::as_str).collect();
        names.extend(models.keys().map(String::as_str));
        names.sort_unstable();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            match models.get(name) {
                Some(entry) if !entry.versions.is_empty() => {
                    for (v, e) in &entry.versions {
                        out.push(IndexEntry {
                            name: name.to_string(),
                            version: Some(*v),
                            state: Some(e.state),
                            reason: e.reason.clone(),
                        });
                    }
                }
                Some(entry) if entry.error.is_some() => out.push(IndexEntry {
                    name: name.to_string(),
                    version: None,
                    state: Some(VersionState::Unavailable),
                    reason: entry.error.clone().unwrap_or_default(),
                }),
                _ => out.push(IndexEntry {
                    name: name.to_string(),
                    version: None,
                    state: None,
                    reason: String::new(),
                }),
            }
        }
        if ready_only {
            out.retain(|e| e.state == Some(VersionState::Ready));
        }
        Ok(out)
    }

    /// Loads (or reloads what changed of) a model from the repository, as the explicit-mode
    /// load API does. Fails if the model ends with no ready version.
    pub async fn load(&self, name: &str) -> Result<()> {
        repository::validate_model_name(name)?;
        if !self.inner.opts.repository.join(name).is_dir() && !self.knows(name)? {
            return Err(Error::NotFound(format!(
                "model '{name}' is not in the repository"
            )));
        }
        let failed = self.reconcile(name, true).await?;
        if !failed.is_empty() {
            let why: Vec<String> = failed
                .iter()
                .map(|(v, m)| format!("version {v}: {m}"))
                .collect();
            let message = format!(
                "failed to load model '{name}' ({}); versions that were serving keep serving",
                why.join("; ")
            );
            return Err(if failed.iter().any(|(_, f)| f.server_fault) {
                Error::Internal(message)
            } else {
                Error::InvalidArgument(message)
            });
        }
        let models = self.inner.models.read().map_err(lock_err)?;
        let entry = models
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("model '{name}' is not in the repository")))?;
        if entry
            .versions
            .values()
            .any(|v| v.state == VersionState::Ready)
        {
            return Ok(());
        }
        let reason = entry.error.clone().unwrap_or_else(|| {
            entry
                .versions
                .iter()
                .map(|(v, e)| format!("version {v}: {}", e.reason))
                .collect::<Vec<_>>()
                .join("; ")
        });
        Err(Error::InvalidArgument(format!(
            "failed to load model '{name}': {reason}"
        )))
    }

    /// Explicit-mode load API: refuses in other modes.
    pub async fn load_api(&self, name: &str) -> Result<()> {
        self.require_explicit("load")?;
        repository::validate_model_name(name)?;
        self.load(name).await
    }

    /// Explicit-mode unload API: stops routing to every version of the model at once; the
    /// versions finish their in-flight requests in the background, then unload.
    pub async fn unload_api(&self, name: &str) -> Result<()> {
        self.require_explicit("unload")?;
        repository::validate_model_name(name)?;
        self.unload(name).await
    }

    fn require_explicit(&self, what: &str) -> Result<()> {
        if self.inner.opts.control_mode != ControlMode::Explicit {
            return Err(Error::FailedPrecondition(format!(
                "explicit model {what} is not allowed in model control mode '{}'; start the server with --model-control-mode explicit",
                self.inner.opts.control_mode
            )));
        }
        Ok(())
    }

    /// Unloads every version of a model.
    pub async fn unload(&self, name: &str) -> Result<()> {
        if !self.knows(name)? {
            return Err(Error::NotFound(format!("model '{name}' is not loaded")));
        }
        let lock = self.model_lock(name)?;
        let _g = lock.lock().await;
        let retired = {
            let mut models = self.inner.models.write().map_err(lock_err)?;
            let Some(entry) = models.get_mut(name) else {
                return Err(Error::NotFound(format!("model '{name}' is not loaded")));
            };
            entry.wanted = false;
            entry.error = None;
            let mut retired = Vec::new();
            for (v, e) in entry.versions.iter_mut() {
                if let Some(r) = e.runner.take() {
                    e.state = VersionState::Unloading;
                    e.reason.clear();
                    retired.push((*v, r));
                }
            }
            retired
        };
        self.retire(name, retired, true);
        Ok(())
    }

    fn model_lock(&self, name: &str) -> Result<Arc<tokio::sync::Mutex<()>>> {
        let mut locks = self.inner.locks.lock().map_err(lock_err)?;
        Ok(locks.entry(name.to_string()).or_default().clone())
    }

    /// Drains and unloads runners in the background; with `mark`, their entries become
    /// UNAVAILABLE ("unloaded") afterwards.
    fn retire(&self, name: &str, runners: Vec<(u64, Arc<VersionRunner>)>, mark: bool) {
        for (v, runner) in runners {
            let this = self.clone();
            let name = name.to_string();
            let limit = self.inner.opts.unload_timeout;
            tokio::spawn(async move {
                if tokio::time::timeout(limit, runner.wait_idle())
                    .await
                    .is_err()
                {
                    let cancelled = runner.cancel_queued(&Error::Unavailable(format!(
                        "model '{name}' version {v} was unloaded before this request ran"
                    )));
                    tracing::warn!(
                        model = %name,
                        version = v,
                        "unload: requests still in flight after {limit:?}; cancelled {cancelled} \
                         queued, waiting for {} executing",
                        runner.inflight().saturating_sub(cancelled)
                    );
                }
                let r = runner.clone();
                let _ = blocking(move || r.shutdown_blocking()).await;
                drop(runner);
                tracing::info!(model = %name, version = v, "unloaded");
                if mark
                    && let Ok(mut models) = this.inner.models.write()
                    && let Some(e) = models.get_mut(&name).and_then(|m| m.versions.get_mut(&v))
                    && e.state == VersionState::Unloading
                    && e.runner.is_none()
                {
                    e.state = VersionState::Unavailable;
                    e.reason = "unloaded".into();
                }
            });
        }
    }

    /// Brings a model in line with the repository: loads new and changed versions (all versions
    /// when the config changed), switches routing, then retires versions no longer wanted.
    /// Returns the versions that failed to load, with why.
    async fn reconcile(&self, name: &str, wanted: bool) -> Result<Vec<(u64, LoadFailure)>> {
        let lock = self.model_lock(name)?;
        let _g = lock.lock().await;
        let repo = self.inner.opts.repository.clone();
        let n = name.to_string();
        let scanned = blocking(move || repository::scan_model(&repo, &n)).await?;
        let Some(dir) = scanned else {
            // Folder gone: unload everything, forget the model.
            let retired = {
                let mut models = self.inner.models.write().map_err(lock_err)?;
                let Some(mut entry) = models.remove(name) else {
                    return Err(Error::NotFound(format!(
                        "model '{name}' is not in the repository"
                    )));
                };
                entry
                    .versions
                    .iter_mut()
                    .filter_map(|(v, e)| e.runner.take().map(|r| (*v, r)))
                    .collect()
            };
            self.retire(name, retired, false);
            return Ok(Vec::new());
        };
        let cfg_fp = dir.config_fingerprint();
        let parsed = match self.read_config(name, &dir) {
            Ok(p) => p,
            Err(msg) => {
                tracing::error!(model = %name, "{msg}");
                let mut models = self.inner.models.write().map_err(lock_err)?;
                let entry = models.entry(name.to_string()).or_default();
                entry.wanted |= wanted;
                entry.error = Some(relative_to(&self.inner.opts.repository, &msg));
                return Ok(Vec::new());
            }
        };
        let targets = parsed
            .config
            .version_policy
            .select(&dir.versions.keys().copied().collect::<Vec<_>>());
        if targets.is_empty() {
            let msg = format!(
                "no version folder under '{}' matches the version policy (found: {:?})",
                dir.path.display(),
                dir.versions.keys().collect::<Vec<_>>()
            );
            let mut models = self.inner.models.write().map_err(lock_err)?;
            let entry = models.entry(name.to_string()).or_default();
            entry.wanted |= wanted;
            entry.error = Some(relative_to(&self.inner.opts.repository, &msg));
            return Ok(Vec::new());
        }
        // Decide what to load; mark new versions LOADING.
        let to_load: Vec<u64> = {
            let mut models = self.inner.models.write().map_err(lock_err)?;
            let entry = models.entry(name.to_string()).or_default();
            entry.wanted |= wanted;
            let mut out = Vec::new();
            for v in &targets {
                let fp = dir.versions[v].fingerprint;
                let needs = match entry.versions.get(v) {
                    Some(e) => {
                        e.runner.is_none() || e.fingerprint != fp || e.config_fingerprint != cfg_fp
                    }
                    None => true,
                };
                if needs {
                    let e = entry.versions.entry(*v).or_insert(VersionEntry {
                        state: VersionState::Loading,
                        reason: String::new(),
                        runner: None,
                        fingerprint: fp,
                        config_fingerprint: cfg_fp,
                    });
                    if e.runner.is_none() {
                        e.state = VersionState::Loading;
                        e.reason.clear();
                    }
                    out.push(*v);
                }
            }
            out
        };
        // Load off the runtime, in parallel across versions.
        let mut handles = Vec::new();
        for v in to_load {
            let this = self.clone();
            let vdir = dir.versions[&v].clone();
            let cfg = parsed.clone();
            let n = name.to_string();
            handles.push((
                v,
                vdir.fingerprint,
                blocking(move || this.load_version(&n, v, &vdir.path, cfg)),
            ));
        }
        let mut results = Vec::new();
        for (v, fp, h) in handles {
            let r = match h.await {
                Ok(r) => r,
                Err(e) => Err(LoadFailure::server(e.to_string())),
            };
            results.push((v, fp, r));
        }
        // Switch routing under one lock.
        let mut replaced = Vec::new();
        let mut retired = Vec::new();
        let mut failed = Vec::new();
        {
            let mut models = self.inner.models.write().map_err(lock_err)?;
            let entry = models.entry(name.to_string()).or_default();
            entry.error = None;
            let mut any_failed = false;
            for (v, fp, r) in results {
                let e = entry.versions.entry(v).or_insert(VersionEntry {
                    state: VersionState::Loading,
                    reason: String::new(),
                    runner: None,
                    fingerprint: fp,
                    config_fingerprint: cfg_fp,
                });
                match r {
                    Ok(runner) => {
                        tracing::info!(model = %name, version = v, "ready");
                        if let Some(old) = e.runner.replace(runner) {
                            replaced.push((v, old));
                        }
                        e.state = VersionState::Ready;
                        e.reason.clear();
                        e.fingerprint = fp;
                        e.config_fingerprint = cfg_fp;
                    }
                    Err(failure) => {
                        let msg = failure.reason.clone();
                        any_failed = true;
                        failed.push((v, failure));
                        tracing::error!(model = %name, version = v, "load failed: {msg}");
                        if e.runner.is_some() {
                            // Keep serving the loaded copy; remember the files so an unchanged
                            // broken copy is not retried on every poll.
                            e.reason =
                                format!("reload failed, still serving the previous load: {msg}");
                        } else {
                            e.state = VersionState::Unavailable;
                            e.reason = msg;
                        }
                        e.fingerprint = fp;
                        e.config_fingerprint = cfg_fp;
                    }
                }
            }
            if !any_failed {
                for (v, e) in entry.versions.iter_mut() {
                    if !targets.contains(v)
                        && let Some(r) = e.runner.take()
                    {
                        e.state = VersionState::Unloading;
                        e.reason.clear();
                        retired.push((*v, r));
                    }
                }
            }
            // Forget versions whose folders are gone and that hold nothing.
            entry.versions.retain(|v, e| {
                dir.versions.contains_key(v)
                    || e.runner.is_some()
                    || e.state == VersionState::Unloading
            });
        }
        self.retire(name, replaced, false);
        self.retire(name, retired, true);
        Ok(failed)
    }

    /// Checks one model folder without serving it: config syntax and fields, version folders,
    /// and a full load (and warm-up) of every version the policy selects. Blocking. Returns the
    /// problems found (empty when the model is fine) and the warnings.
    pub fn check_model_blocking(&self, name: &str) -> (Vec<String>, Vec<String>) {
        let mut problems = Vec::new();
        let Some(dir) = repository::scan_model(&self.inner.opts.repository, name) else {
            return (vec![format!("model folder '{name}' not found")], vec![]);
        };
        let parsed = match self.read_config(name, &dir) {
            Ok(p) => p,
            Err(e) => return (vec![e], vec![]),
        };
        let warnings = parsed.warnings.iter().map(|w| w.to_string()).collect();
        let targets = parsed
            .config
            .version_policy
            .select(&dir.versions.keys().copied().collect::<Vec<_>>());
        if targets.is_empty() {
            problems.push(format!(
                "{}: no numeric version folder matches the version policy (found: {:?})",
                dir.path.display(),
                dir.versions.keys().collect::<Vec<_>>()
            ));
        }
        for v in targets {
            let vdir = &dir.versions[&v].path;
            match self.load_version(name, v, vdir, parsed.clone()) {
                Ok(runner) => runner.shutdown_blocking(),
                Err(e) => problems.push(format!("version {v}: {e}")),
            }
        }
        (problems, warnings)
    }

    fn read_config(&self, name: &str, dir: &ModelDir) -> std::result::Result<ParsedConfig, String> {
        let file = dir.path.join(repository::CONFIG_FILE);
        let mut parsed = match &dir.config {
            None => ParsedConfig {
                config: ModelConfig::default(),
                max_batch_size_set: false,
                warnings: vec![],
            },
            Some(Err(e)) => return Err(e.clone()),
            Some(Ok(text)) => parse_config(text, &file).map_err(|errs| {
                errs.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            })?,
        };
        for w in &parsed.warnings {
            tracing::warn!(model = %name, "{w}");
        }
        if parsed.config.name.is_empty() {
            parsed.config.name = name.to_string();
        } else if parsed.config.name != name {
            return Err(format!(
                "{}: field 'name': \"{}\" does not match the model folder name \"{name}\"",
                file.display(),
                parsed.config.name
            ));
        }
        Ok(parsed)
    }

    fn pick_backend(
        &self,
        cfg: &ModelConfig,
        version_dir: &Path,
    ) -> std::result::Result<Arc<dyn Backend>, String> {
        if !cfg.platform.is_empty() || !cfg.backend.is_empty() {
            return self
                .inner
                .backends
                .iter()
                .find(|b| b.accepts(&cfg.platform, &cfg.backend))
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "no backend for platform '{}' / backend '{}' in this build (available: {})",
                        cfg.platform,
                        cfg.backend,
                        self.inner
                            .backends
                            .iter()
                            .map(|b| b.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                });
        }
        self.inner
            .backends
            .iter()
            .find(|b| version_dir.join(b.default_model_filename(cfg, version_dir)).exists())
            .cloned()
            .ok_or_else(|| {
                format!(
                    "config sets neither platform nor backend, and '{}' holds no file a backend recognises ({})",
                    version_dir.display(),
                    self.inner.backends.iter().map(|b| b.default_model_filename(cfg, version_dir)).collect::<Vec<_>>().join(", ")
                )
            })
    }

    /// Loads one version: backend load, auto-complete, validation, instances, warm-up.
    fn load_version(
        &self,
        name: &str,
        version: u64,
        dir: &Path,
        parsed: ParsedConfig,
    ) -> std::result::Result<Arc<VersionRunner>, LoadFailure> {
        self.load_version_inner(name, version, dir, parsed)
            .map_err(|f| LoadFailure {
                reason: relative_to(&self.inner.opts.repository, &f.reason),
                ..f
            })
    }

    fn load_version_inner(
        &self,
        name: &str,
        version: u64,
        dir: &Path,
        parsed: ParsedConfig,
    ) -> std::result::Result<Arc<VersionRunner>, LoadFailure> {
        tracing::info!(model = %name, version, "loading");
        let mut cfg = parsed.config;
        if cfg.ensemble_scheduling.is_some() || cfg.platform == "ensemble" {
            return Err(
                "field 'ensemble_scheduling': inferd does not execute ensembles yet \
                 (a pipeline of models); the model is not loaded rather than served differently"
                    .to_string()
                    .into(),
            );
        }
        // Safety before anything is interpreted, and before the backend is chosen, so a pickle
        // is refused as a pickle even for a backend this build lacks (`pytorch_libtorch`,
        // `python`): escaping links or external data, malformed headers, pinned digests.
        let mut findings = crate::artifact::scan_tree(dir, &self.inner.opts.repository);
        if let Some(model_dir) = dir.parent() {
            findings.extend(crate::artifact::check_pins(
                model_dir,
                cfg.parameters.iter().map(|(k, v)| (k, &v.string_value)),
                Some(dir),
            ));
        }
        if !findings.is_empty() {
            let shown: Vec<String> = findings.iter().take(5).map(|f| f.to_string()).collect();
            return Err(format!(
                "refused before loading ({} finding{}): {}",
                findings.len(),
                if findings.len() == 1 { "" } else { "s" },
                shown.join("; ")
            )
            .into());
        }
        let backend = self.pick_backend(&cfg, dir)?;
        if cfg.wants_gpu()
            && let Some(why) = backend.gpu_unsupported()
        {
            return Err(format!(
                "instance_group asks for KIND_GPU, but {why} in this build; use KIND_CPU or KIND_AUTO"
            )
            .into());
        }
        let file_name = if cfg.default_model_filename.is_empty() {
            backend.default_model_filename(&cfg, dir)
        } else {
            cfg.default_model_filename.clone()
        };
        let model_file = dir.join(&file_name);
        if !model_file.exists() {
            return Err(format!("model file '{}' not found", model_file.display()).into());
        }
        let loaded = backend
            .load(&LoadRequest {
                model: name,
                version,
                version_dir: dir,
                model_file: model_file.clone(),
                config: &cfg,
            })
            .map_err(|e| {
                let reason = format!("{}: {e}", model_file.display());
                match e {
                    crate::BackendError::Internal(_) => LoadFailure::server(reason),
                    _ => LoadFailure::from(reason),
                }
            })?;
        if cfg.platform.is_empty() && cfg.backend.is_empty() {
            cfg.backend = backend.name().to_string();
        }
        if cfg.platform.is_empty()
            && let Some(p) = backend.platform()
        {
            cfg.platform = p.to_string();
        }
        complete_config(&mut cfg, parsed.max_batch_size_set, loaded.signature()).map_err(|e| {
            format!(
                "config does not match the model file {}: {e}",
                model_file.display()
            )
        })?;
        validate_config(&cfg).map_err(|e| format!("invalid config: {e}"))?;
        warmup::run(name, &cfg, loaded.as_ref(), dir)?;
        let runner_opts = RunnerOptions {
            default_queue: self.inner.opts.queue_capacity,
            budget: self.inner.budget.clone(),
            idle_spin: self.inner.opts.executor_spin,
        };
        VersionRunner::start(name, version, Arc::new(cfg), loaded, &runner_opts)
            .map_err(|e| LoadFailure::server(e.to_string()))
    }

    async fn poll_loop(&self, baseline: HashMap<String, Option<u64>>) {
        // A change is acted on once two consecutive scans agree, so a version folder that is
        // still being copied is not loaded half-written.
        let mut previous = baseline.clone();
        let mut applied = baseline;
        loop {
            tokio::time::sleep(self.inner.opts.poll_interval).await;
            if self.inner.stopping.load(Ordering::Acquire) {
                return;
            }
            let Ok(current) = self.snapshot().await else {
                continue;
            };
            let mut names: Vec<String> = current.keys().chain(applied.keys()).cloned().collect();
            names.sort();
            names.dedup();
            for name in names {
                let now = current.get(&name).copied().flatten();
                let before = previous.get(&name).copied().flatten();
                let done = applied.get(&name).copied().flatten();
                if now != before || now == done {
                    continue;
                }
                tracing::info!(model = %name, "repository change detected");
                if let Err(e) = self.reconcile(&name, true).await {
                    tracing::warn!(model = %name, "reload: {e}");
                }
                applied.insert(name, now);
            }
            applied.retain(|k, v| v.is_some() || current.contains_key(k));
            previous = current;
        }
    }

    async fn snapshot(&self) -> Result<HashMap<String, Option<u64>>> {
        let repo = self.inner.opts.repository.clone();
        blocking(move || {
            let names = repository::list_models(&repo)?;
            Ok(names
                .into_iter()
                .map(|n| {
                    let fp = repository::scan_model(&repo, &n).map(|d| d.fingerprint());
                    (n, fp)
                })
                .collect())
        })
        .await?
    }
}

/// Runs blocking work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("background task failed: {e}")))
}

fn respond(
    model: &str,
    runner: &VersionRunner,
    id: String,
    outputs: Vec<NamedTensor>,
) -> InferResponse {
    InferResponse {
        model_name: model.to_string(),
        model_version: runner.version(),
        id,
        outputs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_visible_reasons_name_paths_relative_to_the_repository() {
        let repo = Path::new("/srv/models");
        assert_eq!(
            relative_to(repo, "/srv/models/mlp/1/model.onnx: bad operator"),
            "mlp/1/model.onnx: bad operator"
        );
        assert_eq!(
            relative_to(
                Path::new("/srv/models/"),
                "config file /srv/models/a/config.pbtxt"
            ),
            "config file a/config.pbtxt"
        );
        assert_eq!(relative_to(repo, "/etc/other: x"), "/etc/other: x");
    }
}
