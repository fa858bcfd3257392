//! The executor of one loaded model version: a [`Scheduler`] (bounded priority queues, dynamic
//! batcher) feeding one thread per instance. Compute never runs on the async runtime; callers
//! await a oneshot. Executions across all versions share one [`ComputeBudget`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::Notify;

use crate::backend::{LoadedModel, ModelSignature, NamedTensor};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::request::PreparedRequest;
use crate::scheduler::{ComputeBudget, Scheduler, SchedulerSettings};
use crate::stats::{FailureReason, VersionStats};

/// Server-wide settings every version's executor shares.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// Queue bound where the config sets none.
    pub default_queue: usize,
    /// The shared compute budget.
    pub budget: Arc<ComputeBudget>,
    /// How long idle executors poll before sleeping.
    pub idle_spin: std::time::Duration,
    /// The server's response cache, used by versions whose config enables it.
    pub cache: Option<Arc<crate::cache::ResponseCache>>,
    /// The version's drift sampler, when monitoring is on.
    pub drift: Option<Arc<crate::drift::DriftSampler>>,
}

/// What a version runs besides plain requests.
#[derive(Default)]
pub struct VersionExtras {
    /// The sequence table of a stateful model (`sequence_batching`).
    pub sequences: Option<crate::sequence::Sequences>,
    /// The plan of an ensemble: it has no executors; the engine runs its steps.
    pub ensemble: Option<crate::ensemble::Plan>,
}

/// A running model version.
pub struct VersionRunner {
    model: String,
    version: u64,
    config: Arc<ModelConfig>,
    signature: ModelSignature,
    generator: Option<Arc<dyn crate::generate::TextGenerator>>,
    decoupled: Option<Arc<dyn crate::backend::DecoupledModel>>,
    /// The loaded model, asked for its health.
    loaded: Arc<dyn LoadedModel>,
    /// Drift monitoring, when on.
    drift: Option<Arc<crate::drift::DriftSampler>>,
    scheduler: Arc<Scheduler>,
    /// Sequences of a stateful model, or the plan of an ensemble.
    extras: VersionExtras,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<Mutex<VersionStats>>,
    inflight: AtomicUsize,
    idle: Notify,
    /// How long loading took (backend load, auto-complete, warm-up), in nanoseconds.
    load_ns: std::sync::atomic::AtomicU64,
    /// The load's phases (artifact checks, backend load, warm-up) and how long each took.
    start_phases: Mutex<Vec<(&'static str, std::time::Duration)>>,
    /// The response cache, when the server has one and the config enables it.
    cache: Option<Arc<crate::cache::ResponseCache>>,
}

impl std::fmt::Debug for VersionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionRunner")
            .field("model", &self.model)
            .field("version", &self.version)
            .finish()
    }
}

/// Holds a version in use by one request; the version is not unloaded while any exists.
#[derive(Debug)]
pub struct InflightGuard {
    runner: Arc<VersionRunner>,
}

impl InflightGuard {
    /// The version.
    pub fn runner(&self) -> &Arc<VersionRunner> {
        &self.runner
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.runner.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.runner.idle.notify_waiters();
        }
    }
}

impl VersionRunner {
    /// Starts one executor thread over `model` per placement of `config` (none for an
    /// ensemble, whose steps run on their members); `extras`: a stateful model's sequences or an
    /// ensemble's plan.
    pub fn start(
        model_name: &str,
        version: u64,
        config: Arc<ModelConfig>,
        model: Arc<dyn LoadedModel>,
        opts: &RunnerOptions,
        extras: VersionExtras,
    ) -> Result<Arc<Self>> {
        let mut settings = SchedulerSettings::from_config(&config, opts.default_queue);
        settings.idle_spin = opts.idle_spin;
        let budget = opts.budget.clone();
        let scheduler = Arc::new(Scheduler::new(model_name, settings));
        let stats = Arc::new(Mutex::new(VersionStats::default()));
        let mut threads = Vec::new();
        // Ensembles run on their members, decoupled models on the engine's blocking threads.
        let placements = if extras.ensemble.is_some() || model.decoupled().is_some() {
            Vec::new()
        } else {
            config.placements()
        };
        for (i, placement) in placements.iter().enumerate() {
            let instance = match model.new_instance_on(placement) {
                Ok(inst) => inst,
                Err(e) => {
                    scheduler.close();
                    return Err(Error::Internal(e.to_string()));
                }
            };
            // A stateful model's requests stay one executor per instance: two threads handing
            // over one sequence's requests could hand them over out of order.
            let second = if extras.sequences.is_none() {
                instance.pipelined()
            } else {
                None
            };
            let lanes = std::iter::once(instance).chain(second);
            for (lane, instance) in lanes.enumerate() {
                let ctx = crate::executor::Executor {
                    model: model_name.to_string(),
                    config: config.clone(),
                    scheduler: scheduler.clone(),
                    stats: stats.clone(),
                    budget: budget.clone(),
                    drift: opts.drift.clone(),
                };
                let suffix = if lane == 0 {
                    String::new()
                } else {
                    format!("-{lane}")
                };
                let handle = std::thread::Builder::new()
                    .name(format!("{model_name}-v{version}-{i}{suffix}"))
                    .spawn(move || ctx.run(instance))
                    .map_err(|e| {
                        scheduler.close();
                        Error::Internal(format!("cannot start executor thread: {e}"))
                    })?;
                threads.push(handle);
            }
        }
        let cache = opts
            .cache
            .clone()
            .filter(|_| config.response_cache.as_ref().is_some_and(|c| c.enable));
        Ok(Arc::new(VersionRunner {
            model: model_name.to_string(),
            version,
            config,
            signature: model.signature().clone(),
            generator: model.generator(),
            decoupled: model.decoupled(),
            loaded: model.clone(),
            drift: opts.drift.clone(),
            scheduler,
            extras,
            threads: Mutex::new(threads),
            stats,
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            load_ns: std::sync::atomic::AtomicU64::new(0),
            start_phases: Mutex::new(Vec::new()),
            cache,
        }))
    }

    /// The decoupled runner, for a decoupled model.
    pub fn decoupled(&self) -> Option<Arc<dyn crate::backend::DecoupledModel>> {
        self.decoupled.clone()
    }

    /// The live sequences, for a stateful model.
    pub fn sequences(&self) -> Option<&crate::sequence::Sequences> {
        self.extras.sequences.as_ref()
    }

    /// The steps, for an ensemble.
    pub fn ensemble(&self) -> Option<&crate::ensemble::Plan> {
        self.extras.ensemble.as_ref()
    }

    /// Model name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Version number.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The effective (auto-completed) config.
    pub fn config(&self) -> &Arc<ModelConfig> {
        &self.config
    }

    /// The inputs and outputs the model file declares.
    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// The version's text generator, when it generates.
    pub fn generator(&self) -> Option<Arc<dyn crate::generate::TextGenerator>> {
        self.generator.clone()
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> VersionStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Requests waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.scheduler.depth()
    }

    /// Requests currently holding this version.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Marks one request as using this version. Call while the version is reachable for routing,
    /// so an unload that removes it first can wait for every guard.
    pub fn begin(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard {
            runner: self.clone(),
        }
    }

    /// Queues a prepared request and waits for its outputs; `spin`: how long to poll for them
    /// at low load before sleeping (see the body).
    pub async fn infer(
        &self,
        req: PreparedRequest,
        spin: std::time::Duration,
    ) -> Result<Vec<NamedTensor>> {
        let start = Instant::now();
        let key = match self.cached(&req, start) {
            Ok(outputs) => return Ok(outputs),
            Err(key) => key,
        };
        let r = self.infer_unrecorded(req, spin).await;
        self.remember(key, &r);
        self.record(start, &r);
        r
    }

    /// The cached response to `req` (counted as a hit), or the key to store its response
    /// under (None: no cache).
    fn cached(
        &self,
        req: &PreparedRequest,
        start: Instant,
    ) -> std::result::Result<Vec<NamedTensor>, Option<(crate::cache::Key, std::time::Duration)>>
    {
        let Some(cache) = &self.cache else {
            return Err(None);
        };
        let key = crate::cache::key(&self.model, self.version, req);
        match cache.get(&key) {
            Some(outputs) => {
                let took = start.elapsed();
                if let Ok(mut s) = self.stats.lock() {
                    s.infer.cache_hit.add(took);
                }
                self.record(start, &Ok(Vec::new()));
                Ok(outputs)
            }
            None => Err(Some((key, start.elapsed()))),
        }
    }

    /// Stores a computed response and counts the miss (its lookup and insertion time).
    fn remember(
        &self,
        key: Option<(crate::cache::Key, std::time::Duration)>,
        r: &Result<Vec<NamedTensor>>,
    ) {
        let (Some(cache), Some((key, lookup)), Ok(outputs)) = (&self.cache, key, r) else {
            return;
        };
        let t = Instant::now();
        cache.put(key, outputs);
        if let Ok(mut s) = self.stats.lock() {
            s.infer.cache_miss.add(lookup + t.elapsed());
        }
    }

    async fn infer_unrecorded(
        &self,
        req: PreparedRequest,
        spin: std::time::Duration,
    ) -> Result<Vec<NamedTensor>> {
        let mut rx = self.submit(req)?;
        // At low load (this the only request on the version), keep polling for the result for
        // up to `spin` instead of letting the runtime's worker park: a parked worker takes
        // ~80 us to wake on a VM, several times a small model's execution. Each poll yields,
        // so other tasks still run; under concurrency the plain await is used.
        if !spin.is_zero() && self.inflight() <= 1 {
            use tokio::sync::oneshot::error::TryRecvError;
            let until = Instant::now() + spin;
            while Instant::now() < until {
                match rx.try_recv() {
                    Ok(r) => return r,
                    Err(TryRecvError::Closed) => break,
                    Err(TryRecvError::Empty) => {
                        // Offer the core to other threads first (see the scheduler's poll).
                        std::thread::yield_now();
                        tokio::task::yield_now().await
                    }
                }
            }
        }
        rx.await.unwrap_or_else(|_| Err(self.dropped()))
    }

    /// Counts how a request ended (every request is counted once, here).
    fn record(&self, start: Instant, r: &Result<Vec<NamedTensor>>) {
        let outcome = r.as_ref().map(|_| ()).map_err(FailureReason::of);
        self.record_outcome(outcome, start.elapsed());
    }

    /// Counts a request that ended before or outside the queue (e.g. refused by validation).
    pub fn record_outcome(
        &self,
        outcome: std::result::Result<(), FailureReason>,
        total: std::time::Duration,
    ) {
        if let Ok(mut s) = self.stats.lock() {
            s.record_outcome(outcome, total);
        }
    }

    /// Queues a request.
    fn submit(
        &self,
        req: PreparedRequest,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Vec<NamedTensor>>>> {
        self.scheduler.submit(req)
    }

    fn dropped(&self) -> Error {
        Error::Internal(format!(
            "model '{}' version {} dropped the request",
            self.model, self.version
        ))
    }

    /// [`VersionRunner::infer`] for a caller that is a plain thread, not async code: polls for
    /// the result for up to `spin` before sleeping on it, so a result that comes back within
    /// that window costs no thread wake-up (~80 us on a VM). Never blocks an async runtime's
    /// worker: do not call it from async code (use `infer().await` there).
    pub fn infer_blocking(
        &self,
        req: PreparedRequest,
        spin: std::time::Duration,
    ) -> Result<Vec<NamedTensor>> {
        let start = Instant::now();
        let key = match self.cached(&req, start) {
            Ok(outputs) => return Ok(outputs),
            Err(key) => key,
        };
        let r = self.infer_blocking_unrecorded(req, spin);
        self.remember(key, &r);
        self.record(start, &r);
        r
    }

    fn infer_blocking_unrecorded(
        &self,
        req: PreparedRequest,
        spin: std::time::Duration,
    ) -> Result<Vec<NamedTensor>> {
        use tokio::sync::oneshot::error::TryRecvError;
        let mut rx = self.submit(req)?;
        let until = Instant::now() + spin;
        loop {
            match rx.try_recv() {
                Ok(r) => return r,
                Err(TryRecvError::Closed) => return Err(self.dropped()),
                Err(TryRecvError::Empty) if Instant::now() < until => std::hint::spin_loop(),
                Err(TryRecvError::Empty) => break,
            }
        }
        park_on(rx).unwrap_or_else(|_| Err(self.dropped()))
    }

    /// The version's drift sampler, when monitoring is on.
    pub fn drift(&self) -> Option<&Arc<crate::drift::DriftSampler>> {
        self.drift.as_ref()
    }

    /// The loaded model's health (a backend's workers restarting or given up on).
    pub fn health(&self) -> crate::backend::Health {
        self.loaded.health()
    }

    /// Waits until no request holds this version.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.inflight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Notes how long loading this version took.
    pub fn set_load_duration(&self, d: std::time::Duration) {
        self.load_ns
            .store(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// How long loading this version took.
    pub fn load_duration(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.load_ns.load(Ordering::Relaxed))
    }

    /// Records the load's phases.
    pub fn set_start_phases(&self, phases: Vec<(&'static str, std::time::Duration)>) {
        *self.start_phases.lock().unwrap_or_else(|p| p.into_inner()) = phases;
    }

    /// The load's phases and their durations, in order.
    pub fn start_phases(&self) -> Vec<(&'static str, std::time::Duration)> {
        self.start_phases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Closes the queue and fails the requests still waiting in it with `error`; returns how
    /// many (requests already executing finish).
    pub fn cancel_queued(&self, error: &Error) -> usize {
        self.scheduler.cancel_queued(error)
    }

    /// Closes the queue (queued requests still run) and joins the executor threads (blocking;
    /// call off the runtime).
    pub fn shutdown_blocking(&self) {
        self.scheduler.close();
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for VersionRunner {
    fn drop(&mut self) {
        // Ends the executor threads once the queue drains; they are detached if not joined.
        self.scheduler.close();
    }
}

/// Waits for a future on the current thread, parking it between polls (no runtime needed).
fn park_on<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
