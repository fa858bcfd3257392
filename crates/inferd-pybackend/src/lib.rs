//! # inferd-pybackend
//!
//! Triton's python backend (`backend: "python"`, `<version>/model.py` defining
//! `TritonPythonModel`), with the model's code run out of the server's process: each instance of
//! the config's `instance_group` is a worker process running `python/inferd_python_worker.py`
//! with inferd's own `triton_python_backend_utils` (both shipped inside the binary and handed
//! to the interpreter as text: nothing is written to disk or left behind).
//!
//! - [`worker`]: one worker process: start, the message protocol on its pipes, tensors in a
//!   shared-memory file, restart after a crash or a hung `execute`.
//! - `reader`: the connection's reader thread (routing, tensors copied out, BLS, metrics).
//! - [`protocol`]: the messages, and tensors read back from the worker's shared file.
//! - [`arena`]: the server's shared file, where it writes tensors for the worker.
//! - `instance`: a loaded version: executor-driven instances, or a decoupled model's workers.
//! - `bls`: the model's calls to other models, run through the engine.
//! - `metrics`: the model's own metric families (`pb_utils.MetricFamily`), kept by the engine.
//! - [`restart`]: when a crashed worker is started again, and when the model is given up on.
//! - [`sandbox`]: no network, a read-only model folder, a memory limit, a private temp folder.
//! - [`torchscript`]: TorchScript (`platform: "pytorch_libtorch"`) in the same workers.
//! - [`savedmodel`]: TensorFlow SavedModels (Triton's and TF Serving's layouts) in the same workers.
//!
//! What a model gets: `initialize(args)` with Triton's keys, `execute(requests)` with the
//! requests of the batch the engine formed, each answered on its own, `finalize()` at unload, `auto_complete_config(config)` for
//! a config without inputs or outputs.

pub mod arena;
mod bls;
pub mod env;
mod instance;
mod metrics;
mod pipe;
pub mod protocol;
mod reader;
pub mod restart;
pub mod sandbox;
pub mod savedmodel;
pub mod torchscript;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use inferd_core::backend::{
    Backend, BackendError, LoadRequest, LoadedModel, ModelSignature, TensorSpec,
};
use inferd_core::config::ModelConfig;
use inferd_core::tensor::DataType;

use instance::PythonModel;
use worker::{Worker, WorkerSpec};

/// How long `execute` may run before its worker is killed (config parameter
/// `execute_timeout_secs` overrides it).
pub const DEFAULT_EXECUTE_TIMEOUT: Duration = Duration::from_secs(300);

/// The backend (`backend: "python"`).
#[derive(Clone, Debug)]
pub struct PythonBackend {
    /// The interpreter workers run (`--python-executable`).
    pub python: PathBuf,
    /// Where models' packed environments (`EXECUTION_ENV_PATH`) are unpacked.
    pub env_cache: PathBuf,
}

impl PythonBackend {
    /// The SavedModel backend on this backend's workers.
    pub fn savedmodel(&self) -> savedmodel::SavedModelBackend {
        savedmodel::SavedModelBackend {
            python: self.clone(),
        }
    }

    /// The TorchScript backend on this backend's workers.
    pub fn torchscript(&self) -> torchscript::TorchScriptBackend {
        torchscript::TorchScriptBackend {
            python: self.clone(),
        }
    }

    /// The backend with `python` as the default interpreter and the default environment cache.
    pub fn new(python: PathBuf) -> Self {
        PythonBackend {
            python,
            env_cache: env::default_cache(),
        }
    }
}

/// A config tensor: name, datatype, dims as written.
type ConfigTensor = (String, DataType, Vec<i64>);

/// The signature the engine checks the config against. A config the model completed itself
/// (`auto_complete_config`, a SavedModel's signature) gives its dims as the model's shapes
/// (the batch dimension in front as -1 when `max_batch_size` > 0); a config written by hand is
/// the only word on shapes (`None`).
fn specs(tensors: &[ConfigTensor], completed: Option<i64>) -> Vec<TensorSpec> {
    tensors
        .iter()
        .map(|(name, dtype, dims)| TensorSpec {
            name: name.clone(),
            dtype: *dtype,
            shape: completed.map(|max_batch| {
                let mut s = if max_batch > 0 { vec![-1] } else { Vec::new() };
                s.extend(dims);
                s
            }),
        })
        .collect()
}

/// (name, datatype, dims) of a JSON config's `input` or `output` list.
fn tensors_of(config: &serde_json::Value, key: &str) -> Result<Vec<ConfigTensor>, String> {
    let mut out = Vec::new();
    for t in config
        .get(key)
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let name = t.get("name").and_then(|v| v.as_str()).unwrap_or_default();
        let dt = t
            .get("data_type")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let dtype = DataType::from_config_name(dt).ok_or_else(|| {
            format!("{key} '{name}' has datatype '{dt}', which inferd does not know")
        })?;
        let dims = t
            .get("dims")
            .and_then(|d| d.as_array())
            .map(|d| d.iter().filter_map(|x| x.as_i64()).collect())
            .unwrap_or_default();
        out.push((name.to_string(), dtype, dims));
    }
    Ok(out)
}

impl Backend for PythonBackend {
    fn name(&self) -> &'static str {
        "python"
    }
    fn platform(&self) -> Option<&'static str> {
        None
    }
    fn accepts(&self, _platform: &str, backend: &str) -> bool {
        backend == "python"
    }
    fn default_model_filename(&self, _config: &ModelConfig, _dir: &Path) -> String {
        "model.py".into()
    }
    fn load(&self, req: &LoadRequest<'_>) -> Result<Arc<dyn LoadedModel>, BackendError> {
        self.load_with(req, None)
    }
}

impl PythonBackend {
    /// Loads a version whose worker runs `req.model_file` as `model.py`, or, with `builtin`,
    /// inferd's own runner for a framework's model file (TorchScript, SavedModel).
    pub(crate) fn load_with(
        &self,
        req: &LoadRequest<'_>,
        builtin: Option<&'static str>,
    ) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let mut config = serde_json::to_value(req.config)
            .map_err(|e| BackendError::Internal(format!("describing the config: {e}")))?;
        let timeout = match req.config.parameters.get("execute_timeout_secs") {
            None => DEFAULT_EXECUTE_TIMEOUT,
            Some(p) => p
                .string_value
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    BackendError::Load(format!(
                        "parameter execute_timeout_secs is '{}': give a positive number of seconds",
                        p.string_value
                    ))
                })?,
        };
        let model_dir = req.version_dir.parent().unwrap_or(req.version_dir);
        let python = match req.config.parameters.get(env::PARAMETER) {
            Some(p) if !p.string_value.is_empty() => {
                env::interpreter(&p.string_value, model_dir, &self.env_cache)?
            }
            _ => self.python.clone(),
        };
        let spec = WorkerSpec {
            python,
            model_py: req.model_file.clone(),
            model: req.model.to_string(),
            version: req.version,
            execute_timeout: timeout,
            caller: req.caller.clone(),
            limits: sandbox::Limits::from_parameters(|k| {
                req.config
                    .parameters
                    .get(k)
                    .map(|p| p.string_value.as_str())
            })
            .map_err(BackendError::Load)?,
            model_dir: model_dir.to_path_buf(),
            read_only: model_dir
                .parent()
                .map(Path::to_path_buf)
                .into_iter()
                .chain([self.env_cache.clone()])
                .collect(),
            metrics: req.metrics.clone(),
            builtin,
        };
        let mut completed = false;
        if req.config.input.is_empty() || req.config.output.is_empty() {
            // auto_complete_config fills in what the config lacks, as in Triton.
            let probe = Worker::start(&spec)?;
            config = probe.auto_complete(config)?;
            completed = true;
            probe.finalize();
        }
        let max_batch = completed.then(|| {
            config
                .get("max_batch_size")
                .and_then(|m| m.as_i64())
                .unwrap_or(0)
        });
        let inputs = tensors_of(&config, "input").map_err(BackendError::Load)?;
        let outputs = tensors_of(&config, "output").map_err(BackendError::Load)?;
        if inputs.is_empty() || outputs.is_empty() {
            return Err(BackendError::Load(format!(
                "{}: the config names no {} and model.py's auto_complete_config adds none",
                req.model_file.display(),
                if inputs.is_empty() {
                    "inputs"
                } else {
                    "outputs"
                }
            )));
        }
        let args = serde_json::json!({
            "model_config": config.to_string(),
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
            "model_repository": model_dir.display().to_string(),
            "model_version": req.version.to_string(),
            "model_name": req.model,
            "inferd_model_file": req.model_file.display().to_string(),
        });
        let model = PythonModel::new(
            ModelSignature {
                inputs: specs(&inputs, max_batch),
                outputs: specs(&outputs, max_batch),
            },
            spec,
            args,
        );
        if req.config.is_decoupled() {
            // A decoupled model's requests go to its workers directly (no executor threads):
            // start them now, so a model that cannot initialize is UNAVAILABLE at load.
            model.start_decoupled(req.config.instance_count().max(1))?;
        }
        Ok(Arc::new(model))
    }
}
