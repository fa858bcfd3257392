//! A loaded python model: instances the engine's executor threads drive (one worker each,
//! `execute` given the batch's requests), or, for a decoupled model, a pool of workers that
//! take its requests directly, each answered with as many responses as the model sends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use inferd_core::backend::{
    BackendError, DecoupledModel, LoadedModel, ModelInstance, ModelSignature, NamedTensor,
};

use crate::worker::{Failure, Worker, WorkerSpec};

/// A loaded version.
pub(crate) struct PythonModel {
    sig: ModelSignature,
    spec: WorkerSpec,
    args: serde_json::Value,
    instances: AtomicUsize,
    decoupled: OnceLock<Arc<DecoupledPool>>,
}

impl PythonModel {
    pub(crate) fn new(sig: ModelSignature, spec: WorkerSpec, args: serde_json::Value) -> Self {
        PythonModel {
            sig,
            spec,
            args,
            instances: AtomicUsize::new(0),
            decoupled: OnceLock::new(),
        }
    }

    /// A started, initialized worker for the next instance.
    fn start_worker(&self) -> Result<(Arc<Worker>, serde_json::Value), BackendError> {
        let index = self.instances.fetch_add(1, Ordering::Relaxed);
        let mut args = self.args.clone();
        args["model_instance_name"] = serde_json::json!(format!("{}_{index}", self.spec.model));
        let worker = Worker::start(&self.spec)?;
        worker.initialize(&args)?;
        Ok((worker, args))
    }

    /// Starts a decoupled model's `n` workers.
    pub(crate) fn start_decoupled(&self, n: usize) -> Result<(), BackendError> {
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            let (worker, args) = self.start_worker()?;
            slots.push(Slot {
                args,
                worker: Mutex::new(Some(worker)),
            });
        }
        let _ = self.decoupled.set(Arc::new(DecoupledPool {
            spec: self.spec.clone(),
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
        let (worker, args) = self.start_worker()?;
        Ok(Box::new(PythonInstance {
            spec: self.spec.clone(),
            slot: Slot {
                args,
                worker: Mutex::new(Some(worker)),
            },
        }))
    }
    fn decoupled(&self) -> Option<Arc<dyn DecoupledModel>> {
        self.decoupled
            .get()
            .map(|p| p.clone() as Arc<dyn DecoupledModel>)
    }
}

/// One instance's worker, restarted when it died.
struct Slot {
    args: serde_json::Value,
    worker: Mutex<Option<Arc<Worker>>>,
}

impl Slot {
    /// The live worker, starting one if the last died.
    fn worker(&self, spec: &WorkerSpec) -> Result<Arc<Worker>, BackendError> {
        let mut w = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(worker) = w.as_ref().filter(|w| !w.is_dead()) {
            return Ok(worker.clone());
        }
        tracing::warn!(model = %spec.model, version = spec.version, "starting a new python worker");
        *w = None;
        let worker = Worker::start(spec)?;
        worker.initialize(&self.args)?;
        *w = Some(worker.clone());
        Ok(worker)
    }

    /// Forgets a worker that died or hung (the next request starts another).
    fn lost(&self, worker: &Arc<Worker>) {
        let mut w = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        if w.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, worker)) {
            *w = None;
        }
    }

    fn finalize(&self) {
        if let Some(w) = self.worker.lock().ok().and_then(|mut w| w.take()) {
            w.finalize();
        }
    }
}

/// An instance the engine's executor thread drives.
struct PythonInstance {
    spec: WorkerSpec,
    slot: Slot,
}

impl ModelInstance for PythonInstance {
    fn execute(
        &mut self,
        inputs: &[NamedTensor],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, BackendError> {
        self.execute_requests(&[inputs], outputs)?
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
        let worker = self.slot.worker(&self.spec)?;
        match worker.execute(requests, outputs) {
            Ok(out) => Ok(out),
            Err(Failure::Request(e)) => Err(e),
            Err(Failure::Worker(e)) => {
                self.slot.lost(&worker);
                Err(e)
            }
        }
    }
}

impl Drop for PythonInstance {
    fn drop(&mut self) {
        self.slot.finalize();
    }
}

/// A decoupled model's workers; requests take them in turn.
struct DecoupledPool {
    spec: WorkerSpec,
    slots: Vec<Slot>,
    next: AtomicUsize,
}

impl DecoupledModel for DecoupledPool {
    fn run(
        &self,
        inputs: &[NamedTensor],
        outputs: &[String],
        send: &mut dyn FnMut(Vec<NamedTensor>) -> bool,
    ) -> Result<(), BackendError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len().max(1);
        let slot = self
            .slots
            .get(i)
            .ok_or_else(|| BackendError::Internal("no workers".into()))?;
        let worker = slot.worker(&self.spec)?;
        match worker.run_decoupled(inputs, outputs, send) {
            Ok(()) => Ok(()),
            Err(Failure::Request(e)) => Err(e),
            Err(Failure::Worker(e)) => {
                slot.lost(&worker);
                Err(e)
            }
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
