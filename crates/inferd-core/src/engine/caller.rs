//! The engine as a [`ModelCaller`]: what a model's calls to other models (Triton's BLS) go
//! through. It holds the engine weakly (the engine owns the models that hold it) and the
//! runtime handle that decoupled calls need.

use std::sync::Weak;

use super::*;
use crate::backend::ModelCaller;

/// Calls other models through the engine that loaded the caller.
#[derive(Debug)]
pub(super) struct EngineCaller {
    inner: Weak<Inner>,
    runtime: tokio::runtime::Handle,
}

impl Engine {
    /// The caller handed to backends at load; `None` outside a Tokio runtime.
    pub(super) fn caller(&self) -> Option<Arc<dyn ModelCaller>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(Arc::new(EngineCaller {
            inner: Arc::downgrade(&self.inner),
            runtime,
        }))
    }
}

impl EngineCaller {
    fn engine(&self) -> Result<Engine> {
        self.inner
            .upgrade()
            .map(|inner| Engine { inner })
            .ok_or_else(|| Error::Unavailable("the server is shutting down".into()))
    }
}

fn request(inputs: Vec<NamedTensor>, outputs: Option<Vec<String>>) -> InferRequest {
    InferRequest {
        id: String::new(),
        inputs,
        outputs,
        parameters: BTreeMap::new(),
    }
}

impl ModelCaller for EngineCaller {
    fn infer(
        &self,
        model: &str,
        version: Option<u64>,
        inputs: Vec<NamedTensor>,
        outputs: Option<Vec<String>>,
    ) -> Result<Vec<NamedTensor>> {
        let engine = self.engine()?;
        if engine.is_decoupled(model, version) {
            return Err(decoupled::answers_many(model));
        }
        Ok(engine
            .infer_blocking(model, version, request(inputs, outputs))?
            .outputs)
    }

    fn infer_stream(
        &self,
        model: &str,
        version: Option<u64>,
        inputs: Vec<NamedTensor>,
        outputs: Option<Vec<String>>,
        each: &mut dyn FnMut(Vec<NamedTensor>) -> bool,
    ) -> Result<()> {
        let engine = self.engine()?;
        if !engine.is_decoupled(model, version) {
            let out = engine.infer_blocking(model, version, request(inputs, outputs))?;
            each(out.outputs);
            return Ok(());
        }
        let mut rx = {
            let _in = self.runtime.enter();
            engine.infer_decoupled(model, version, request(inputs, outputs))?
        };
        while let Some(r) = rx.blocking_recv() {
            if !each(r?.outputs) {
                break;
            }
        }
        Ok(())
    }
}
