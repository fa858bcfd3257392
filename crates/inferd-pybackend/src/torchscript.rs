//! TorchScript models (`platform: "pytorch_libtorch"` or `backend: "pytorch"`, `model.pt`),
//! served in the python backend's isolated workers by inferd's own runner
//! (`python/inferd_torchscript.py`, `torch.jit.load`, never `torch.load`).
//!
//! A TorchScript archive holds pickles, so the server's artifact checks refuse it unless the
//! model's config pins its sha256 (`parameters { key: "sha256:1/model.pt" ... }`); even pinned,
//! an archive whose pickles import anything outside TorchScript's own classes, or one that is
//! `torch.save` output rather than TorchScript, is refused (checked again here, on the bytes
//! the worker will load).

use std::path::Path;
use std::sync::Arc;

use inferd_core::artifact::pickle::zip_pickles;
use inferd_core::backend::{Backend, BackendError, LoadRequest, LoadedModel};
use inferd_core::config::ModelConfig;

use crate::PythonBackend;

const RUNNER: &str = include_str!("../python/inferd_torchscript.py");

/// The TorchScript backend.
#[derive(Clone, Debug)]
pub struct TorchScriptBackend {
    /// The python backend whose workers run the models (interpreter: it needs torch).
    pub python: PythonBackend,
}

/// Why `data` is no TorchScript archive inferd will load; `None` when it is one.
pub fn refusal(data: &[u8]) -> Option<String> {
    let Some(z) = zip_pickles(data) else {
        return Some(
            "not a TorchScript archive (no zip with pickles): save the model with torch.jit.script(model).save(path) or torch.jit.trace".into(),
        );
    };
    if !z.torchscript {
        return Some("torch.save output, not TorchScript: save the model with torch.jit.script(model).save(path) or torch.jit.trace".into());
    }
    let foreign = z.foreign();
    (!foreign.is_empty()).then(|| {
        format!(
            "its pickles import {} (outside TorchScript's own classes); refused even when pinned",
            foreign.join(", ")
        )
    })
}

impl Backend for TorchScriptBackend {
    fn name(&self) -> &'static str {
        "pytorch"
    }
    fn platform(&self) -> Option<&'static str> {
        Some("pytorch_libtorch")
    }
    fn accepts(&self, platform: &str, backend: &str) -> bool {
        platform == "pytorch_libtorch" || backend == "pytorch"
    }
    fn default_model_filename(&self, _config: &ModelConfig, _dir: &Path) -> String {
        "model.pt".into()
    }
    fn load(&self, req: &LoadRequest<'_>) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let bytes = match &req.model_bytes {
            Some(b) => b.to_vec(),
            None => std::fs::read(&req.model_file).map_err(|e| {
                BackendError::Load(format!("reading {}: {e}", req.model_file.display()))
            })?,
        };
        if let Some(why) = refusal(&bytes) {
            return Err(BackendError::Load(why));
        }
        if req.config.input.is_empty() || req.config.output.is_empty() {
            return Err(BackendError::Load(
                "a TorchScript model's config must name its inputs and outputs (INPUT__0, OUTPUT__0, ... or names in forward's order)".into(),
            ));
        }
        self.python.load_with(req, Some(RUNNER))
    }
}
