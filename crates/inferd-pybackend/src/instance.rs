//! A loaded python model: instances the engine's executor threads drive (one worker each,
//! `execute` given the batch's requests), or, for a decoupled model, a pool of workers that
//! take its requests directly, each answered with as many responses as the model sends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use inferd_core::backend::{
    BackendError, DecoupledModel, Health, LoadedModel, ModelInstance, ModelSignature, NamedTensor,
};
use inferd_core::request::RequestMeta;

use crate::restart::{Decision, RestartPolicy};
use crate::worker::{Failure, Worker, WorkerSpec};

/// A loaded version.
pub(crate) struct PythonModel {
    sig: ModelSignature,
    spec: WorkerSpec,
    args: serde_json::Value,
    instances: AtomicUsize,
    decoupled: OnceLock<Arc<DecoupledPool>>,
    crashes: Arc<Crashes>,
}

impl PythonModel {
    pub(crate) fn new(sig: ModelSignature, spec: WorkerSpec, args: serde_json::Value) -> Self {
        PythonModel {
            sig,
            spec,
            args,
            instances: AtomicUsize::new(0),
            decoupled: OnceLock::new(),
            crashes: Arc::new(Crashes::default()),
        }
    }

    /// A slot with a started, initialized worker for the next instance.
    fn start_slot(&self) -> Result<Arc<Slot>, BackendError> {
        let index = self.instances.fetch_add(1, Ordering::Relaxed);
        let mut args = self.args.clone();
        args["model_instance_name"] = serde_json::json!(format!("{}_{index}", self.spec.model));
        let worker = Worker::start(&self.spec)?;
        worker.initialize(&args)?;
        Ok(Slot::new(
            self.spec.clone(),
            args,
            worker,
            self.crashes.clone(),
        ))
    }

    /// Starts a decoupled model's `n` workers.
    pub(crate) fn start_decoupled(&self, n: usize) -> Result<(), BackendError> {
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            slots.push(self.start_slot()?);
        }
        let _ = self.decoupled.set(Arc::new(DecoupledPool {
            slots,
            next: AtomicUsize::new(0),
        }));
        Ok(())
    }
}

impl LoadedModel for PythonModel {
    fn signature(&self) -> &ModelSignature {
        &self.sig
    }
    fn new_instance(&self) -> Result<Box<dyn ModelInstance>, BackendError> {
        Ok(Box::new(PythonInstance {
            slot: Arc::new(Owned(self.start_slot()?)),
        }))
    }
    fn decoupled(&self) -> Option<Arc<dyn DecoupledModel>> {
        self.decoupled
            .get()
            .map(|p| p.clone() as Arc<dyn DecoupledModel>)
    }
    fn health(&self) -> Health {
        self.crashes.health()
    }
}

/// What a model's slots share: the crash history and what its health is now.
#[derive(Default)]
pub(crate) struct Crashes {
    policy: Mutex<RestartPolicy>,
    restarting: AtomicUsize,
    failed: Mutex<Option<String>>,
    last: Mutex<String>,
}

impl Crashes {
    fn health(&self) -> Health {
        if let Some(why) = self.failed.lock().ok().and_then(|f| f.clone()) {
            return Health::Failed(why);
        }
        if self.restarting.load(Ordering::Acquire) > 0 {
            let last = self.last.lock().map(|l| l.clone()).unwrap_or_default();
            return Health::Recovering(format!(
                "its python worker is restarting after it exited ({last})"
            ));
        }
        Health::Ready
    }
}

/// One instance's worker: when it exits on its own (a crash, a kill after a hung execute) a
/// new one is started in the background after the policy's backoff, or the model is failed.
pub(crate) struct Slot {
    spec: WorkerSpec,
    args: serde_json::Value,
    worker: Mutex<Option<Arc<Worker>>>,
    crashes: Arc<Crashes>,
    closing: AtomicBool,
}

impl Slot {
    fn new(
        spec: WorkerSpec,
        args: serde_json::Value,
        worker: Arc<Worker>,
        crashes: Arc<Crashes>,
    ) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            spec,
            args,
            worker: Mutex::new(None),
            crashes,
            closing: AtomicBool::new(false),
        });
        slot.install(worker);
        slot
    }

    /// Makes `worker` the slot's, watching for its exit.
    fn install(self: &Arc<Self>, worker: Arc<Worker>) {
        let weak: Weak<Slot> = Arc::downgrade(self);
        let watched = Arc::downgrade(&worker);
        *self.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(worker.clone());
        worker.on_exit(Box::new(move || {
            if let (Some(slot), Some(w)) = (weak.upgrade(), watched.upgrade()) {
                slot.exited(w);
            }
        }));
    }

    /// The live worker, or why there is none now (503).
    fn worker(&self) -> Result<Arc<Worker>, BackendError> {
        let current = self
            .worker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(w) = current {
            if !w.is_dead() {
                return Ok(w);
            }
            // Dead but not yet handed to the restart thread: its own exit status says why
            // (a request must not see "restarting" before the crash is recorded).
            return Err(BackendError::Unavailable(format!(
                "model '{}' cannot answer now: its python worker is restarting after it exited ({})",
                self.spec.model,
                w.exit_status()
            )));
        }
        let why = match self.crashes.health() {
            Health::Failed(why) | Health::Recovering(why) => why,
            Health::Ready => "its python worker is restarting".into(),
        };
        Err(BackendError::Unavailable(format!(
            "model '{}' cannot answer now: {why}",
            self.spec.model
        )))
    }

    /// A worker of this slot exited: unless the slot is closing, restart it after the
    /// policy's backoff (on a thread of its own), or give up on the model.
    fn exited(self: &Arc<Self>, worker: Arc<Worker>) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        // The status is recorded before the slot forgets the worker, so no request in between
        // is told the worker is restarting without being told why (this thread is the dead
        // worker's reader; waiting here for its exit status is bounded by a second).
        let mut status = worker.exit_status();
        if let Ok(mut l) = self.crashes.last.lock() {
            l.clone_from(&status);
        }
        self.crashes.restarting.fetch_add(1, Ordering::AcqRel);
        {
            let mut w = self.worker.lock().unwrap_or_else(|p| p.into_inner());
            match w.as_ref() {
                Some(cur) if Arc::ptr_eq(cur, &worker) => *w = None,
                _ => {
                    self.crashes.restarting.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            }
        }
        drop(worker);
        let slot = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("inferd-py-restart-{}", self.spec.model))
            .spawn(move || {
                loop {
                    if let Ok(mut l) = slot.crashes.last.lock() {
                        l.clone_from(&status);
                    }
                    let decision = slot
                        .crashes
                        .policy
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .crashed(Instant::now(), &status);
                    let wait = match decision {
                        Decision::RestartAfter(wait) => wait,
                        Decision::GiveUp(why) => {
                            tracing::error!(model = %slot.spec.model, version = slot.spec.version, "{why}");
                            if let Ok(mut f) = slot.crashes.failed.lock() {
                                *f = Some(why);
                            }
                            break;
                        }
                    };
                    tracing::warn!(model = %slot.spec.model, version = slot.spec.version,
                        "python worker exited ({status}); restarting in {} ms", wait.as_millis());
                    std::thread::sleep(wait);
                    if slot.closing.load(Ordering::Acquire) {
                        break;
                    }
                    match Worker::start(&slot.spec).and_then(|w| w.initialize(&slot.args).map(|_| w)) {
                        Ok(w) => {
                            slot.install(w);
                            break;
                        }
                        Err(e) => status = format!("restart failed: {e}"),
                    }
                }
                slot.crashes.restarting.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            self.crashes.restarting.fetch_sub(1, Ordering::AcqRel);
            tracing::error!("cannot start a restart thread: {e}");
        }
    }

    fn finalize(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(w) = self.worker.lock().ok().and_then(|mut w| w.take()) {
            w.finalize();
        }
    }
}

/// A slot whose worker is finalized when the last executor thread driving it lets go.
struct Owned(Arc<Slot>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.finalize();
    }
}

/// An instance the engine's executor threads drive: two of them per worker, so the next batch
/// is already in the worker's pipe when `execute` returns (the worker runs them one at a time,
/// as Triton runs an instance's). With one, the worker idled through every round trip: the
/// reply read by the server, the executor woken, the next batch taken and written, the
/// worker's threads woken (bench/results/python-backend-2026-12-07.md).
struct PythonInstance {
    slot: Arc<Owned>,
}

impl ModelInstance for PythonInstance {
    fn execute(
        &mut self,
        inputs: &[NamedTensor],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, BackendError> {
        self.execute_requests_with(&[inputs], &[], &|_| false, outputs)?
            .pop()
            .unwrap_or_else(|| Err(BackendError::Internal("no answer".into())))
    }

    fn takes_requests(&self) -> bool {
        true
    }

    fn execute_requests(
        &mut self,
        requests: &[&[NamedTensor]],
        outputs: &[String],
    ) -> Result<Vec<Result<Vec<NamedTensor>, BackendError>>, BackendError> {
        self.execute_requests_with(requests, &[], &|_| false, outputs)
    }

    fn execute_requests_with(
        &mut self,
        requests: &[&[NamedTensor]],
        meta: &[&RequestMeta],
        gone: &dyn Fn(usize) -> bool,
        outputs: &[String],
    ) -> Result<Vec<Result<Vec<NamedTensor>, BackendError>>, BackendError> {
        // A worker that died or hung is restarted by its slot's watcher.
        match self.slot.0.worker()?.execute(requests, meta, gone, outputs) {
            Ok(out) => Ok(out),
            Err(Failure::Request(e) | Failure::Worker(e)) => Err(e),
        }
    }

    fn pipelined(&self) -> Option<Box<dyn ModelInstance>> {
        Some(Box::new(PythonInstance {
            slot: self.slot.clone(),
        }))
    }
}

/// A decoupled model's workers; requests take them in turn.
struct DecoupledPool {
    slots: Vec<Arc<Slot>>,
    next: AtomicUsize,
}

impl DecoupledModel for DecoupledPool {
    fn run(
        &self,
        inputs: &[NamedTensor],
        outputs: &[String],
        send: &mut dyn FnMut(Vec<NamedTensor>) -> bool,
    ) -> Result<(), BackendError> {
        self.run_with(inputs, outputs, &RequestMeta::default(), send)
    }

    fn run_with(
        &self,
        inputs: &[NamedTensor],
        outputs: &[String],
        meta: &RequestMeta,
        send: &mut dyn FnMut(Vec<NamedTensor>) -> bool,
    ) -> Result<(), BackendError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len().max(1);
        let slot = self
            .slots
            .get(i)
            .ok_or_else(|| BackendError::Internal("no workers".into()))?;
        match slot.worker()?.run_decoupled(inputs, outputs, meta, send) {
            Ok(()) => Ok(()),
            Err(Failure::Request(e) | Failure::Worker(e)) => Err(e),
        }
    }
}

impl Drop for DecoupledPool {
    fn drop(&mut self) {
        for s in &self.slots {
            s.finalize();
        }
    }
}
