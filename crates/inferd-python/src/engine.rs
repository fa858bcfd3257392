//! The `Engine` class: a model repository served in-process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inferd_core::{
    Backend, Engine, InferRequest, InferResponse, NamedTensor, ParamValue, VersionState,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};

use crate::aio::LoopChannel;
use crate::convert::{tensor_from_py, tensor_to_py};
use crate::errors::{internal, to_py};
use crate::options::{OnnxChoice, Settings};

/// A model repository served in-process.
///
/// `Engine(repository, **options)` loads the repository's models (as `inferd serve` does, with
/// the same option names: `compute_threads`, `max_queue_size`, `model_control_mode`, ...) and
/// returns when the startup loads have finished; a model that failed to load is reported by
/// `models()` and by the error of a request to it. Use it as a context manager, or call
/// `close()`, to drain requests in flight on exit.
#[pyclass(frozen, name = "Engine", module = "inferd")]
pub struct PyEngine {
    engine: Engine,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    exit_timeout: Duration,
    closed: AtomicBool,
    /// Each event loop's completion channel (asyncio.run makes a loop per call).
    channels: Mutex<Vec<(Py<PyAny>, Py<LoopChannel>)>>,
}

impl Drop for PyEngine {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn backends(s: &Settings, python: PathBuf) -> PyResult<Vec<Arc<dyn Backend>>> {
    #[cfg(feature = "onnxruntime")]
    let choice = match s.onnx {
        OnnxChoice::Auto => inferd_ort::OnnxChoice::Auto,
        OnnxChoice::Tract => inferd_ort::OnnxChoice::Tract,
        OnnxChoice::OnnxRuntime => inferd_ort::OnnxChoice::OnnxRuntime,
    };
    #[cfg(not(feature = "onnxruntime"))]
    if s.onnx == OnnxChoice::OnnxRuntime {
        return Err(PyValueError::new_err(
            "option 'onnx_backend': onnxruntime is not built into this package (build it with `maturin build --features onnxruntime`, or use auto or tract)",
        ));
    }
    let _ = s;
    // The binary's order: the first backend that accepts a config's platform/backend serves it.
    Ok(vec![
        #[cfg(feature = "onnxruntime")]
        Arc::new(inferd_ort::OnnxSelect::new(choice)),
        #[cfg(feature = "onnx")]
        Arc::new(inferd_onnx::OnnxBackend),
        #[cfg(feature = "trees")]
        Arc::new(inferd_trees::TreesBackend),
        Arc::new(inferd_repeat::RepeatBackend),
        Arc::new(inferd_repeat::IdentityBackend),
        // Before candle: a Hugging Face llama folder holds a model.safetensors too, which
        // candle, guessing from file names, would otherwise take for one of its encoders.
        #[cfg(feature = "llm")]
        Arc::new(inferd_llm::backend::LlmBackend {
            defaults: inferd_llm::backend::LlmDefaults {
                kv_cache_bytes: s.llm_kv_cache_bytes,
                max_num_seqs: s.llm_max_num_seqs,
                ..Default::default()
            },
        }),
        #[cfg(feature = "candle")]
        Arc::new(inferd_candle::CandleBackend),
        // Triton python-backend models run in workers on this very interpreter.
        Arc::new(inferd_pybackend::PythonBackend::new(python.clone()).torchscript()),
        Arc::new(inferd_pybackend::PythonBackend::new(python.clone()).savedmodel()),
        Arc::new(inferd_pybackend::PythonBackend::new(python)),
    ])
}

/// A version argument: an int, a str of digits, or None.
fn version_arg(py: Python<'_>, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    let Some(v) = v else { return Ok(None) };
    if v.is_none() {
        return Ok(None);
    }
    if let Ok(n) = v.extract::<u64>() {
        return Ok(Some(n));
    }
    if let Ok(text) = v.extract::<String>()
        && let Ok(n) = text.parse::<u64>()
    {
        return Ok(Some(n));
    }
    Err(crate::errors::invalid(
        py,
        format!("version must be a non-negative int (or a str of digits), got {v}"),
    ))
}

fn param_value(py: Python<'_>, key: &str, v: &Bound<'_, PyAny>) -> PyResult<ParamValue> {
    // bool first: Python's bool is an int.
    if v.is_instance_of::<PyBool>() {
        return Ok(ParamValue::Bool(v.extract()?));
    }
    if v.is_instance_of::<PyInt>() {
        return v.extract().map(ParamValue::Int).map_err(|_| {
            crate::errors::invalid(
                py,
                format!("parameter '{key}': {v} does not fit in 64 bits"),
            )
        });
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(ParamValue::Double(v.extract()?));
    }
    if v.is_instance_of::<PyString>() {
        return Ok(ParamValue::String(v.extract()?));
    }
    Err(crate::errors::invalid(
        py,
        format!(
            "parameter '{key}': must be a bool, int, float or str, got {}",
            v.get_type().name()?
        ),
    ))
}

/// An inference request from the Python arguments (done with the GIL held).
fn request(
    py: Python<'_>,
    inputs: &Bound<'_, PyDict>,
    parameters: Option<&Bound<'_, PyDict>>,
    outputs: Option<Vec<String>>,
    request_id: Option<String>,
) -> PyResult<InferRequest> {
    let mut tensors = Vec::with_capacity(inputs.len());
    for (k, v) in inputs.iter() {
        let name: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err("input names must be str"))?;
        let tensor = tensor_from_py(py, &name, &v)?;
        tensors.push(NamedTensor { name, tensor });
    }
    let mut params = BTreeMap::new();
    if let Some(p) = parameters {
        for (k, v) in p.iter() {
            let key: String = k
                .extract()
                .map_err(|_| PyTypeError::new_err("parameter names must be str"))?;
            let value = param_value(py, &key, &v)?;
            params.insert(key, value);
        }
    }
    Ok(InferRequest {
        id: request_id.unwrap_or_default(),
        inputs: tensors,
        outputs,
        parameters: params,
    })
}

/// The outputs as `{name: ndarray}`.
pub(crate) fn outputs_dict(py: Python<'_>, response: InferResponse) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    for t in response.outputs {
        let name = t.name.clone();
        d.set_item(name, tensor_to_py(py, t)?)?;
    }
    Ok(d)
}

/// A JSON value as Python objects (through the json module: these are small, rare answers).
fn json_to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    Ok(py
        .import("json")?
        .call_method1("loads", (v.to_string(),))?
        .unbind())
}

impl PyEngine {
    /// What the engine knows of `model`'s ready version (newest, or `version`).
    fn info(
        &self,
        py: Python<'_>,
        model: &str,
        version: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<inferd_core::ModelInfo> {
        let version = version_arg(py, version)?;
        self.engine
            .model_info(model, version)
            .map_err(|e| to_py(py, e))
    }

    /// The completion channel of `event_loop`, made and registered on its first request.
    fn channel(&self, py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<LoopChannel>> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| internal("the event-loop channels' lock was poisoned"))?;
        if let Some((_, c)) = channels.iter().find(|(l, _)| l.bind(py).is(event_loop)) {
            return Ok(c.clone_ref(py));
        }
        // Loops that have closed take no more requests.
        channels.retain(|(l, _)| {
            !l.bind(py)
                .call_method0("is_closed")
                .and_then(|c| c.is_truthy())
                .unwrap_or(true)
        });
        let c = LoopChannel::attach(py, event_loop)?;
        channels.push((event_loop.clone().unbind(), c.clone_ref(py)));
        Ok(c)
    }
}

/// `asyncio.get_running_loop`, looked up once: every `infer_async` call needs its loop, and
/// importing the module and finding the function each time was a third of the call's cost
/// under load (py-spy --native on the FastAPI example at 32 clients).
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The event loop running in this thread (an error outside one, as asyncio raises it).
fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    GET_RUNNING_LOOP
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("asyncio")?.getattr("get_running_loop")?.unbind())
        })?
        .bind(py)
        .call0()
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (repository, **options))]
    fn new(
        py: Python<'_>,
        repository: PathBuf,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        if !repository.is_dir() {
            return Err(PyValueError::new_err(format!(
                "model repository {} is not a folder",
                repository.display()
            )));
        }
        let settings = Settings::from_py(repository, options)?;
        let python: PathBuf = py.import("sys")?.getattr("executable")?.extract()?;
        let backends = backends(&settings, python)?;
        // Async glue only (asyncio requests, poll mode, loads): models run on the engine's own
        // executor threads.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("inferd-runtime")
            .enable_all()
            .build()
            .map_err(|e| internal(format!("starting the engine's runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let engine = {
            let _entered = runtime.enter();
            Engine::new(settings.engine.clone(), backends)
        };
        let started = py.detach(|| handle.block_on(engine.start()));
        started.map_err(|e| to_py(py, e))?;
        Ok(PyEngine {
            engine,
            runtime: Some(runtime),
            handle,
            exit_timeout: settings.exit_timeout,
            closed: AtomicBool::new(false),
            channels: Mutex::new(Vec::new()),
        })
    }

    /// Runs `model` (its newest ready version, or `version`) on `inputs`, a dict of input name
    /// to NumPy array (or `(array, "DATATYPE")`), and returns `{output name: ndarray}`. The GIL
    /// is released while the request waits and runs, so concurrent calls batch together.
    #[pyo3(signature = (model, inputs, version=None, parameters=None, outputs=None, request_id=None))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn infer<'py>(
        &self,
        py: Python<'py>,
        model: String,
        inputs: &Bound<'py, PyDict>,
        version: Option<&Bound<'py, PyAny>>,
        parameters: Option<&Bound<'py, PyDict>>,
        outputs: Option<Vec<String>>,
        request_id: Option<String>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let version = version_arg(py, version)?;
        let req = request(py, inputs, parameters, outputs, request_id)?;
        let engine = &self.engine;
        let r = py.detach(|| engine.infer_blocking(&model, version, req));
        outputs_dict(py, r.map_err(|e| to_py(py, e))?)
    }

    /// `infer` for asyncio: returns an awaitable that the engine completes on the running event
    /// loop. Many tasks awaiting at once batch together; no thread is held per request.
    #[pyo3(signature = (model, inputs, version=None, parameters=None, outputs=None, request_id=None))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn infer_async<'py>(
        &self,
        py: Python<'py>,
        model: String,
        inputs: &Bound<'py, PyDict>,
        version: Option<&Bound<'py, PyAny>>,
        parameters: Option<&Bound<'py, PyDict>>,
        outputs: Option<Vec<String>>,
        request_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let event_loop = running_loop(py)?;
        let version = version_arg(py, version)?;
        let req = request(py, inputs, parameters, outputs, request_id)?;
        let future = event_loop.call_method0("create_future")?;
        let channel = self.channel(py, &event_loop)?;
        let (id, completions) = channel.get().expect(future.clone().unbind());
        let engine = self.engine.clone();
        self.handle.spawn(async move {
            let r = engine.infer(&model, version, req).await;
            completions.push(id, r);
        });
        Ok(future)
    }

    /// Streams text from an LLM (a GGUF model): an iterator of text pieces. `prompt` is a str,
    /// or a list of chat messages (`{"role": ..., "content": ...}`) rendered by the model's chat
    /// template. After the last piece, `finish_reason`, `prompt_tokens` and `completion_tokens`
    /// are set on the iterator.
    #[pyo3(signature = (model, prompt, max_tokens=None, temperature=None, top_p=None, top_k=None, stop=None, seed=None, ignore_eos=false, version=None))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn generate(
        &self,
        py: Python<'_>,
        model: String,
        prompt: &Bound<'_, PyAny>,
        max_tokens: Option<usize>,
        temperature: Option<f32>,
        top_p: Option<f32>,
        top_k: Option<usize>,
        stop: Option<Vec<String>>,
        seed: Option<u64>,
        ignore_eos: bool,
        version: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<crate::generate::Generation> {
        let version = version_arg(py, version)?;
        let req = crate::generate::request(
            py,
            prompt,
            crate::generate::Knobs {
                max_tokens,
                temperature,
                top_p,
                top_k,
                stop: stop.unwrap_or_default(),
                seed,
                ignore_eos,
            },
        )?;
        let (guard, generator) = self
            .engine
            .generator(&model, version)
            .map_err(|e| to_py(py, e))?;
        let stream = generator
            .start(req)
            .map_err(|e| crate::errors::generate_to_py(py, e))?;
        Ok(crate::generate::Generation::new(guard, stream))
    }

    /// KServe v2 metadata of a model: name, ready versions, platform, inputs and outputs.
    #[pyo3(signature = (model, version=None))]
    fn model_metadata(
        &self,
        py: Python<'_>,
        model: &str,
        version: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let info = self.info(py, model, version)?;
        json_to_py(py, &inferd_core::describe::metadata_json(&info))
    }

    /// The model's effective configuration (Triton's model config, as JSON).
    #[pyo3(signature = (model, version=None))]
    fn model_config(
        &self,
        py: Python<'_>,
        model: &str,
        version: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let info = self.info(py, model, version)?;
        let v = serde_json::to_value(&*info.config)
            .map_err(|e| internal(format!("describing the config: {e}")))?;
        json_to_py(py, &v)
    }

    /// Whether startup is done and (with strict readiness) every wanted model is ready.
    fn is_ready(&self) -> bool {
        self.engine.is_ready()
    }

    /// Whether the engine is up (until `close()`).
    fn is_live(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// Whether a model (or one version of it) is ready; unknown models raise `ModelNotFound`.
    #[pyo3(signature = (model, version=None))]
    fn is_model_ready(
        &self,
        py: Python<'_>,
        model: &str,
        version: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let version = version_arg(py, version)?;
        self.engine
            .is_model_ready(model, version)
            .map_err(|e| to_py(py, e))
    }

    /// The repository index: `[{"name", "version", "state", "reason"}]`, every model folder
    /// with the state of each version it has (`READY`, `UNAVAILABLE` with the reason, ...).
    #[pyo3(signature = (ready_only=false))]
    fn models(&self, py: Python<'_>, ready_only: bool) -> PyResult<Py<PyAny>> {
        let engine = &self.engine;
        let handle = &self.handle;
        let index = py
            .detach(|| handle.block_on(engine.index(ready_only)))
            .map_err(|e| to_py(py, e))?;
        let rows: Vec<serde_json::Value> = index
            .into_iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "version": e.version.map(|v| v.to_string()),
                    "state": e.state.map(VersionState::as_str),
                    "reason": e.reason,
                })
            })
            .collect();
        json_to_py(py, &serde_json::Value::Array(rows))
    }

    /// Statistics in Triton's shape (`{"model_stats": [...]}`, with `batch_stats` per executed
    /// batch size): of every ready version, one model, or one version.
    #[pyo3(signature = (model=None, version=None))]
    fn statistics(
        &self,
        py: Python<'_>,
        model: Option<&str>,
        version: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let version = version_arg(py, version)?;
        let rows = self
            .engine
            .statistics(model, version)
            .map_err(|e| to_py(py, e))?;
        json_to_py(py, &inferd_core::describe::statistics_json(&rows))
    }

    /// Loads (or reloads) a model: explicit model control mode only, as on the server.
    fn load(&self, py: Python<'_>, model: String) -> PyResult<()> {
        let (engine, handle) = (&self.engine, &self.handle);
        py.detach(|| handle.block_on(engine.load_api(&model)))
            .map_err(|e| to_py(py, e))
    }

    /// Unloads a model once its requests in flight finish: explicit mode only.
    fn unload(&self, py: Python<'_>, model: String) -> PyResult<()> {
        let (engine, handle) = (&self.engine, &self.handle);
        py.detach(|| handle.block_on(engine.unload_api(&model)))
            .map_err(|e| to_py(py, e))
    }

    /// Stops taking requests, waits (up to `exit_timeout_secs`) for those in flight, and
    /// unloads every model. Requests after it raise `Unavailable`. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (engine, handle, timeout) = (&self.engine, &self.handle, self.exit_timeout);
        py.detach(|| {
            engine.refuse_new_requests();
            let deadline = Instant::now() + timeout;
            while engine.inflight() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            handle.block_on(async {
                if let Ok(index) = engine.index(false).await {
                    let mut names: Vec<String> = index.into_iter().map(|e| e.name).collect();
                    names.dedup();
                    for name in names {
                        let _ = engine.unload(&name).await;
                    }
                }
            });
        });
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "inferd.Engine(repository={:?}, ready={})",
            self.engine.options().repository.display().to_string(),
            self.engine.is_ready()
        )
    }
}
