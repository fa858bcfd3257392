//! The backend seam: what a model format implements so the engine can load and run it.
//!
//! A [`Backend`] loads one model version into an immutable, shareable [`LoadedModel`]; each
//! execution instance gets its own [`ModelInstance`] (per-run state such as scratch buffers), and
//! runs on a dedicated thread, never on the async runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::ModelConfig;
use crate::tensor::{DataType, Tensor};

/// A tensor as a model declares it: full shape including any batch dimension, -1 where dynamic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: DataType,
    /// Shape; -1 is dynamic; `None` when the model does not say.
    pub shape: Option<Vec<i64>>,
}

/// The inputs and outputs a model file declares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelSignature {
    /// Inputs in the model's order.
    pub inputs: Vec<TensorSpec>,
    /// Outputs in the model's order.
    pub outputs: Vec<TensorSpec>,
}

/// A named tensor, as requests and responses carry them.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Name.
    pub name: String,
    /// The tensor.
    pub tensor: Tensor,
}

/// The input named `name`, or an [`BackendError::InvalidInput`] saying it is missing.
pub fn input<'a>(inputs: &'a [NamedTensor], name: &str) -> Result<&'a Tensor, BackendError> {
    inputs
        .iter()
        .find(|t| t.name == name)
        .map(|t| &t.tensor)
        .ok_or_else(|| BackendError::InvalidInput(format!("missing input '{name}'")))
}

/// A backend failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The model files cannot be loaded.
    #[error("{0}")]
    Load(String),
    /// The input does not suit the model (caught late, by the backend).
    #[error("{0}")]
    InvalidInput(String),
    /// Execution failed.
    #[error("{0}")]
    Execution(String),
    /// The server's own fault, not the model's or the request's (an I/O error reading files it
    /// may read, a thread it cannot start): a 5xx, even at load.
    #[error("{0}")]
    Internal(String),
    /// The model says what the request names does not exist (a python model's
    /// `TritonError.NOT_FOUND`): a 404.
    #[error("{0}")]
    NotFound(String),
    /// The model cannot answer now (a python model's `TritonError.UNAVAILABLE`, a worker
    /// restarting): a 503.
    #[error("{0}")]
    Unavailable(String),
}

impl BackendError {
    /// The engine error a request gets when model `model` failed it this way: the model's
    /// own message for the client's faults and the model's statuses, "model 'm' failed: ..."
    /// for the rest.
    pub fn into_request_error(self, model: &str) -> crate::Error {
        use crate::Error;
        match self {
            BackendError::InvalidInput(m) => Error::InvalidArgument(m),
            BackendError::NotFound(m) => Error::NotFound(m),
            BackendError::Unavailable(m) => Error::Unavailable(m),
            other => Error::Internal(format!("model '{model}' failed: {other}")),
        }
    }
}

/// What a backend gets to load one version.
#[derive(Debug, Clone)]
pub struct LoadRequest<'a> {
    /// Model name.
    pub model: &'a str,
    /// Version number.
    pub version: u64,
    /// The version folder.
    pub version_dir: &'a Path,
    /// The model file's path: the version folder joined with the config's
    /// `default_model_filename` or the backend default (use it as is; joining it to
    /// `version_dir` again doubles a relative repository path).
    pub model_file: PathBuf,
    /// The model's config as written (before auto-complete).
    pub config: &'a ModelConfig,
    /// The model file's bytes when the safety checks already read it whole: a loader that
    /// parses from memory takes them instead of reading the file again.
    pub model_bytes: Option<crate::artifact::FileBytes>,
    /// Calls into the server's other models (Triton's BLS), for backends whose models make
    /// such calls; `None` where the engine runs without an async runtime to serve them.
    pub caller: Option<Arc<dyn ModelCaller>>,
    /// Where a model's own metrics go (shown on the server's metrics page).
    pub metrics: Arc<crate::custom_metrics::CustomMetrics>,
}

/// A model's way to call the other models the server has (Triton's business-logic
/// scripting): the same routing, validation, batching and statistics as a client's request.
/// Called from plain threads (never from async code).
pub trait ModelCaller: Send + Sync + std::fmt::Debug {
    /// One request, one response.
    fn infer(
        &self,
        model: &str,
        version: Option<u64>,
        inputs: Vec<NamedTensor>,
        outputs: Option<Vec<String>>,
    ) -> Result<Vec<NamedTensor>, crate::Error>;
    /// A request to a decoupled model: `each` gets every response's outputs as it comes and
    /// returns false to stop early. A model that answers once gives one response.
    fn infer_stream(
        &self,
        model: &str,
        version: Option<u64>,
        inputs: Vec<NamedTensor>,
        outputs: Option<Vec<String>>,
        each: &mut dyn FnMut(Vec<NamedTensor>) -> bool,
    ) -> Result<(), crate::Error>;
}

/// A model format.
pub trait Backend: Send + Sync + 'static {
    /// Short name, used in logs and in the config's `backend` field (`onnxruntime`).
    fn name(&self) -> &'static str;
    /// The Triton platform string this backend stands for, if any (`onnxruntime_onnx`).
    fn platform(&self) -> Option<&'static str>;
    /// True when a config's `platform`/`backend` names this backend.
    fn accepts(&self, platform: &str, backend: &str) -> bool;
    /// The file name looked for in a version folder when the config names none. `dir` is the
    /// version folder, for backends whose default depends on which file is there.
    fn default_model_filename(&self, config: &ModelConfig, dir: &Path) -> String;
    /// `None` when this build of the backend can run `KIND_GPU` instances, else why not (and
    /// how to get one that can). The engine refuses GPU instance groups for backends that
    /// cannot, rather than quietly running them on CPU.
    fn gpu_unsupported(&self) -> Option<String> {
        Some(format!("backend '{}' runs on CPU only", self.name()))
    }
    /// Whether a version needs a model file (a backend whose behaviour is all in the config,
    /// like `repeat`, does not).
    fn needs_model_file(&self) -> bool {
        true
    }
    /// Loads a version. May take long: the engine calls it off the async runtime.
    fn load(&self, req: &LoadRequest<'_>) -> Result<Arc<dyn LoadedModel>, BackendError>;
}

/// A loaded, immutable model version, shared by its instances.
pub trait LoadedModel: Send + Sync {
    /// The model's declared inputs and outputs.
    fn signature(&self) -> &ModelSignature;
    /// Creates one execution instance.
    fn new_instance(&self) -> Result<Box<dyn ModelInstance>, BackendError>;
    /// Creates the execution instance for one of the config's placements (its GPU, for
    /// backends that place instances). The default ignores the placement.
    fn new_instance_on(
        &self,
        _placement: &crate::config::Placement,
    ) -> Result<Box<dyn ModelInstance>, BackendError> {
        self.new_instance()
    }
    /// The text generator of a model that generates (an LLM); `None` for the others.
    fn generator(&self) -> Option<Arc<dyn crate::generate::TextGenerator>> {
        None
    }
    /// The decoupled runner of a model that answers a request with any number of responses
    /// (`model_transaction_policy { decoupled: true }`); `None` for the others.
    fn decoupled(&self) -> Option<Arc<dyn DecoupledModel>> {
        None
    }
    /// Whether the loaded model can answer now (a backend whose instances live in other
    /// processes reports them restarting, or given up on). The default is always ready.
    fn health(&self) -> Health {
        Health::Ready
    }
}

/// A loaded model's health, as its backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Answering.
    Ready,
    /// Not ready for now (a worker restarting); the reason.
    Recovering(String),
    /// Given up until the model is loaded again; the reason.
    Failed(String),
}

/// A model that answers each request with zero, one or many responses (Triton's decoupled
/// models). The engine runs it on a blocking thread, one request per call.
pub trait DecoupledModel: Send + Sync {
    /// Runs one request (inputs checked against the config, in its order), handing each
    /// response's outputs to `send`; stops early when `send` returns false (the client left).
    fn run(
        &self,
        inputs: &[NamedTensor],
        outputs: &[String],
        send: &mut dyn FnMut(Vec<NamedTensor>) -> bool,
    ) -> Result<(), BackendError>;
    /// [`DecoupledModel::run`], told the request's id and parameters; the engine calls this
    /// one. The default ignores them.
    fn run_with(
        &self,
        inputs: &[NamedTensor],
        outputs: &[String],
        meta: &crate::request::RequestMeta,
        send: &mut dyn FnMut(Vec<NamedTensor>) -> bool,
    ) -> Result<(), BackendError> {
        let _ = meta;
        self.run(inputs, outputs, send)
    }
}

/// One execution instance; owned by one executor thread.
pub trait ModelInstance: Send {
    /// Runs a batch. Inputs are in the config's input order and already checked against it;
    /// shapes include the batch dimension when the model batches. Returns the requested outputs
    /// (`outputs`, names) in that order.
    fn execute(
        &mut self,
        inputs: &[NamedTensor],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, BackendError>;
    /// Whether this instance takes a batch as its separate requests
    /// ([`ModelInstance::execute_requests`]) instead of as merged tensors: Triton's python
    /// backend hands `execute` the list of the batch's requests, each answered on its own.
    fn takes_requests(&self) -> bool {
        false
    }
    /// Runs a batch's requests, each with its own inputs (config order, checked); one result per
    /// request, in order. The outer error fails the whole batch (the instance broke). Called
    /// only when [`ModelInstance::takes_requests`] says so; the default runs them one by one.
    #[allow(clippy::type_complexity)]
    fn execute_requests(
        &mut self,
        requests: &[&[NamedTensor]],
        outputs: &[String],
    ) -> Result<Vec<Result<Vec<NamedTensor>, BackendError>>, BackendError> {
        Ok(requests.iter().map(|r| self.execute(r, outputs)).collect())
    }
    /// [`ModelInstance::execute_requests`], told each request's id and parameters (`meta`, one
    /// per request) and able to ask, while it runs, whether request `i`'s client has gone
    /// away (`gone(i)`, for Triton's `request.is_cancelled()`); the executor calls this one.
    /// The default ignores both.
    #[allow(clippy::type_complexity)]
    fn execute_requests_with(
        &mut self,
        requests: &[&[NamedTensor]],
        meta: &[&crate::request::RequestMeta],
        gone: &dyn Fn(usize) -> bool,
        outputs: &[String],
    ) -> Result<Vec<Result<Vec<NamedTensor>, BackendError>>, BackendError> {
        let _ = (meta, gone);
        self.execute_requests(requests, outputs)
    }
    /// A second handle on this same instance, for a second executor thread: a backend whose
    /// instance runs elsewhere (a worker process) takes that thread's batch while this one's
    /// runs, so the instance never idles through the round trip between two batches. The
    /// backend still runs the instance's batches one at a time, in the order handed over.
    /// `None` (the default): one executor thread per instance.
    fn pipelined(&self) -> Option<Box<dyn ModelInstance>> {
        None
    }
}
