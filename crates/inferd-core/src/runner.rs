//! The executor of one loaded model version: a bounded queue feeding one thread per instance.
//! Compute never runs on the async runtime; callers await a oneshot.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use tokio::sync::{Notify, oneshot};

use crate::backend::{LoadedModel, ModelInstance, NamedTensor};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::request::{PreparedRequest, finish_outputs};
use crate::stats::{ExecutionTimes, VersionStats};

struct Job {
    req: PreparedRequest,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<NamedTensor>>>,
}

/// A running model version.
pub struct VersionRunner {
    model: String,
    version: u64,
    config: Arc<ModelConfig>,
    tx: Mutex<Option<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<Mutex<VersionStats>>,
    inflight: AtomicUsize,
    idle: Notify,
    queue_capacity: usize,
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
    /// Starts `config.instance_count()` executor threads over `model`.
    pub fn start(
        model_name: &str,
        version: u64,
        config: Arc<ModelConfig>,
        model: Arc<dyn LoadedModel>,
        queue_capacity: usize,
    ) -> Result<Arc<Self>> {
        let (tx, rx) = bounded::<Job>(queue_capacity.max(1));
        let stats = Arc::new(Mutex::new(VersionStats::default()));
        let mut threads = Vec::new();
        for i in 0..config.instance_count() {
            let instance = model
                .new_instance()
                .map_err(|e| Error::Internal(e.to_string()))?;
            let rx = rx.clone();
            let stats = stats.clone();
            let cfg = config.clone();
            let name = model_name.to_string();
            let handle = std::thread::Builder::new()
                .name(format!("{model_name}-v{version}-{i}"))
                .spawn(move || executor_loop(&name, &cfg, instance, rx, stats))
                .map_err(|e| Error::Internal(format!("cannot start executor thread: {e}")))?;
            threads.push(handle);
        }
        Ok(Arc::new(VersionRunner {
            model: model_name.to_string(),
            version,
            config,
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(threads),
            stats,
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            queue_capacity,
        }))
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

    /// A snapshot of the statistics.
    pub fn stats(&self) -> VersionStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
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

    /// Queues a prepared request and waits for its outputs.
    pub async fn infer(&self, req: PreparedRequest) -> Result<Vec<NamedTensor>> {
        let start = Instant::now();
        let (reply, rx) = oneshot::channel();
        let job = Job {
            req,
            enqueued: start,
            reply,
        };
        let sent = {
            let tx = self
                .tx
                .lock()
                .map_err(|_| Error::Internal("executor lock poisoned".into()))?;
            match tx.as_ref() {
                Some(tx) => tx.try_send(job),
                None => {
                    return Err(Error::Unavailable(format!(
                        "model '{}' version {} is unloading",
                        self.model, self.version
                    )));
                }
            }
        };
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.record(false, start.elapsed(), None);
                return Err(Error::Overloaded {
                    message: format!(
                        "model '{}' version {} queue is full ({} requests); retry later",
                        self.model, self.version, self.queue_capacity
                    ),
                    retry_after_secs: 1,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::Unavailable(format!(
                    "model '{}' version {} has stopped",
                    self.model, self.version
                )));
            }
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(Error::Internal(format!(
                "model '{}' version {} dropped the request",
                self.model, self.version
            ))),
        }
    }

    fn record(&self, ok: bool, total: Duration, queue: Option<Duration>) {
        if let Ok(mut s) = self.stats.lock() {
            s.record_request(ok, total, queue);
        }
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

    /// Closes the queue and joins the executor threads (blocking; call off the runtime).
    pub fn shutdown_blocking(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
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
        // Closing the channel ends the threads; they are detached if not joined already.
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }
}

fn executor_loop(
    model: &str,
    cfg: &ModelConfig,
    mut instance: Box<dyn ModelInstance>,
    rx: Receiver<Job>,
    stats: Arc<Mutex<VersionStats>>,
) {
    while let Ok(job) = rx.recv() {
        if job.reply.is_closed() {
            // The caller went away while queued: do not spend compute on it.
            continue;
        }
        let queued = job.enqueued.elapsed();
        let t0 = Instant::now();
        let batch = job.req.batch;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            instance.execute(&job.req.inputs, &job.req.outputs)
        }));
        let t1 = Instant::now();
        let result = match result {
            Ok(Ok(outs)) => finish_outputs(model, cfg, outs, batch),
            Ok(Err(e)) => Err(match e {
                crate::backend::BackendError::InvalidInput(m) => Error::InvalidArgument(m),
                other => Error::Internal(format!("model '{model}' failed: {other}")),
            }),
            Err(_) => Err(Error::Internal(format!(
                "model '{model}' panicked during execution"
            ))),
        };
        let t2 = Instant::now();
        if let Ok(mut s) = stats.lock() {
            if result.is_ok() {
                s.record_execution(ExecutionTimes {
                    batch,
                    requests: 1,
                    input: Duration::ZERO,
                    infer: t1 - t0,
                    output: t2 - t1,
                });
            }
            s.record_request(result.is_ok(), job.enqueued.elapsed(), Some(queued));
        }
        let _ = job.reply.send(result);
    }
}
