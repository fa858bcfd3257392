//! # inferd-onnx
//!
//! ONNX models for inferd, executed by `tract` (pure Rust; no native runtime needed). The model is
//! parsed, typed and optimised once per version; each instance keeps its own execution state.
//! Inputs and outputs, with dynamic dimensions, are read from the model for auto-complete.
//!
//! - [`load`]: parsing, the operator check, facts for unknown dimensions.
//! - [`ml`]: the ONNX-ML operators converters emit (trees, linear models, SVMs, encoders).
//! - `convert`: tensors between inferd and tract.

mod convert;
mod direct;
mod extremum;
pub mod load;
pub mod ml;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use inferd_core::backend::{
    Backend, BackendError, LoadRequest, LoadedModel, ModelInstance, ModelSignature, NamedTensor,
    TensorSpec,
};
use inferd_core::config::ModelConfig;
use tract_onnx::prelude::{
    InferenceModelExt, IntoRunnable, TValue, TVec, TypedModel, TypedRunnableModel, TypedSimpleState,
};

use convert::{from_tract, to_dtype, to_tract};

/// The ONNX backend. Answers to Triton's `platform: "onnxruntime_onnx"` and
/// `backend: "onnxruntime"` so existing repositories load unmodified.
#[derive(Debug, Default)]
pub struct OnnxBackend;

impl Backend for OnnxBackend {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn platform(&self) -> Option<&'static str> {
        Some("onnxruntime_onnx")
    }

    fn accepts(&self, platform: &str, backend: &str) -> bool {
        matches!(platform, "onnxruntime_onnx" | "onnx")
            || matches!(backend, "onnxruntime" | "onnx" | "tract")
    }

    fn default_model_filename(
        &self,
        _config: &inferd_core::config::ModelConfig,
        _dir: &std::path::Path,
    ) -> String {
        "model.onnx".to_string()
    }

    fn load(&self, req: &LoadRequest<'_>) -> Result<Arc<dyn LoadedModel>, BackendError> {
        // A model that asks for ONNX Runtime must not quietly run on tract.
        if let Some(p) = req.config.parameters.get("onnx_backend") {
            match p.string_value.as_str() {
                "auto" | "tract" => {}
                "onnxruntime" => {
                    return Err(BackendError::Load(
                        "config parameters 'onnx_backend' asks for onnxruntime, but tract loads this \
                         model (the build has no ONNX Runtime, or the config pins backend \
                         \"tract\"): build inferd with --features onnxruntime, or remove the pin"
                            .into(),
                    ));
                }
                other => {
                    return Err(BackendError::Load(format!(
                        "config parameters 'onnx_backend': '{other}' is not an ONNX backend \
                         (auto, tract, onnxruntime)"
                    )));
                }
            }
        }
        Ok(Arc::new(OnnxModel::load_from(
            &req.model_file,
            req.model_bytes.as_deref(),
            Some(req.config),
        )?))
    }
}

/// A loaded, optimised ONNX model.
pub struct OnnxModel {
    plan: Arc<TypedRunnableModel>,
    /// Set when the graph is one inferd operator: its kernel runs without the plan.
    direct: Option<direct::Direct>,
    signature: ModelSignature,
    input_index: HashMap<String, usize>,
    output_index: HashMap<String, usize>,
    operators: Arc<load::Operators>,
}

fn load_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Load(e.to_string())
}

fn signature_of(model: &TypedModel) -> Result<ModelSignature, BackendError> {
    let spec =
        |name: String, fact: &tract_onnx::prelude::TypedFact| -> Result<TensorSpec, BackendError> {
            let dtype = to_dtype(fact.datum_type).ok_or_else(|| {
                load_err(format!(
                    "tensor '{name}' has type {:?}, which inferd cannot serve",
                    fact.datum_type
                ))
            })?;
            let shape = fact
                .shape
                .iter()
                .map(|d| d.to_i64().unwrap_or(-1))
                .collect();
            Ok(TensorSpec {
                name,
                dtype,
                shape: Some(shape),
            })
        };
    let mut sig = ModelSignature::default();
    for (i, outlet) in model.input_outlets().map_err(load_err)?.iter().enumerate() {
        let name = model.node(outlet.node).name.clone();
        sig.inputs
            .push(spec(name, model.input_fact(i).map_err(load_err)?)?);
    }
    for (i, outlet) in model.output_outlets().map_err(load_err)?.iter().enumerate() {
        let name = model
            .outlet_label(*outlet)
            .map(str::to_string)
            .unwrap_or_else(|| model.node(outlet.node).name.clone());
        sig.outputs
            .push(spec(name, model.output_fact(i).map_err(load_err)?)?);
    }
    Ok(sig)
}

impl OnnxModel {
    /// Parses, types and optimises an ONNX file.
    pub fn load(path: &Path) -> Result<Self, BackendError> {
        Self::load_with_config(path, None)
    }

    /// [`OnnxModel::load`], taking the dims the config gives the inputs as facts.
    pub fn load_with_config(
        path: &Path,
        config: Option<&ModelConfig>,
    ) -> Result<Self, BackendError> {
        Self::load_from(path, None, config)
    }

    /// [`OnnxModel::load_with_config`] from the file's bytes when the caller already read
    /// them (`path` still locates external data and names the model in errors).
    pub fn load_from(
        path: &Path,
        bytes: Option<&[u8]>,
        config: Option<&ModelConfig>,
    ) -> Result<Self, BackendError> {
        let (inference, operators) = load::parse(path, bytes, config)?;
        let load_err = |e: String| BackendError::Load(operators.explain(&e));
        let mut typed = inference
            .into_typed()
            .map_err(|e| load_err(format!("cannot infer tensor types and shapes: {e:#}")))?;
        extremum::exact(&mut typed)
            .map_err(|e| load_err(format!("cannot prepare ReduceMax/ReduceMin: {e:#}")))?;
        let signature = signature_of(&typed)?;
        let optimized = typed
            .into_optimized()
            .map_err(|e| load_err(format!("cannot optimise the model: {e:#}")))?;
        let direct = direct::of(&optimized);
        let plan = optimized
            .into_runnable()
            .map_err(|e| load_err(format!("cannot plan the model: {e:#}")))?;
        let input_index = signature
            .inputs
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let output_index = signature
            .outputs
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(OnnxModel {
            plan,
            direct,
            signature,
            input_index,
            output_index,
            operators: Arc::new(operators),
        })
    }
}

impl OnnxModel {
    /// Whether the graph is one inferd operator whose kernel runs without tract's plan.
    pub fn runs_directly(&self) -> bool {
        self.direct.is_some()
    }

    /// The optimised, runnable tract plan (for tools that feed tract values directly, such as
    /// the ONNX node-test report).
    pub fn plan(&self) -> &Arc<TypedRunnableModel> {
        &self.plan
    }

    /// An error from tract about this model, with the ONNX operator of the node it names.
    pub fn explain(&self, msg: &str) -> String {
        self.operators.explain(msg)
    }
}

impl LoadedModel for OnnxModel {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn new_instance(&self) -> Result<Box<dyn ModelInstance>, BackendError> {
        let state = self
            .plan
            .spawn()
            .map_err(|e| BackendError::Load(format!("{e:#}")))?;
        Ok(Box::new(OnnxInstance {
            state,
            direct: self.direct.clone(),
            plan: self.plan.clone(),
            n_inputs: self.signature.inputs.len(),
            input_index: self.input_index.clone(),
            output_index: self.output_index.clone(),
            operators: self.operators.clone(),
        }))
    }
}

struct OnnxInstance {
    state: TypedSimpleState,
    direct: Option<direct::Direct>,
    /// To start a fresh state after tract panics mid-run.
    plan: Arc<TypedRunnableModel>,
    n_inputs: usize,
    input_index: HashMap<String, usize>,
    output_index: HashMap<String, usize>,
    operators: Arc<load::Operators>,
}

impl ModelInstance for OnnxInstance {
    fn execute(
        &mut self,
        inputs: &[NamedTensor],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, BackendError> {
        if let Some(d) = &self.direct
            && let [only] = inputs
            && self.n_inputs == 1
            && self.input_index.contains_key(&only.name)
            && let Some(result) = direct::run_rows(d, &only.tensor)
        {
            let result = result.map_err(|e| {
                BackendError::InvalidInput(format!(
                    "the model cannot run on this input: {}: {e:#}",
                    d.kernel.name()
                ))
            })?;
            return outputs
                .iter()
                .map(|name| {
                    let &i = self.output_index.get(name).ok_or_else(|| {
                        BackendError::Execution(format!("the model has no output '{name}'"))
                    })?;
                    let tensor = direct::plain_tensor(&result[d.outputs[i]])
                        .map_err(|e| BackendError::Execution(format!("output '{name}': {e}")))?;
                    Ok(NamedTensor {
                        name: name.clone(),
                        tensor,
                    })
                })
                .collect();
        }
        let mut slots: Vec<Option<TValue>> = vec![None; self.n_inputs];
        for nt in inputs {
            let &i = self.input_index.get(&nt.name).ok_or_else(|| {
                BackendError::InvalidInput(format!("the model has no input '{}'", nt.name))
            })?;
            slots[i] = Some(to_tract(&nt.tensor)?);
        }
        let args: TVec<TValue> = slots
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                s.ok_or_else(|| {
                    BackendError::InvalidInput(format!("model input #{i} was not given"))
                })
            })
            .collect::<Result<_, _>>()?;
        if let Some(d) = &self.direct {
            let kernel_inputs: TVec<TValue> = d.inputs.iter().map(|&i| args[i].clone()).collect();
            let result = d.kernel.eval(&kernel_inputs).map_err(|e| {
                BackendError::InvalidInput(format!(
                    "the model cannot run on this input: {}: {e:#}",
                    d.kernel.name()
                ))
            })?;
            return self.named_outputs(outputs, |i| &result[d.outputs[i]]);
        }
        // tract panics on some inputs its plan cannot take (a Gather index past the axis): the
        // plan is fixed at load, so the input is the cause. The state may be half-updated, so a
        // fresh one replaces it.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.state.run(args)));
        let ran = match run {
            Ok(r) => r,
            Err(panic) => {
                if let Ok(fresh) = self.plan.spawn() {
                    self.state = fresh;
                }
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                return Err(BackendError::InvalidInput(format!(
                    "the model cannot run on this input: the ONNX backend stopped: {why}"
                )));
            }
        };
        let result = ran
            // The plan is fixed at load and was warmed up: what makes it fail now is the input
            // (dims the config leaves open but the graph constrains, indices out of range).
            .map_err(|e| {
                BackendError::InvalidInput(format!(
                    "the model cannot run on this input: {}",
                    self.operators.explain(&format!("{e:#}"))
                ))
            })?;
        self.named_outputs(outputs, |i| &result[i])
    }
}

impl OnnxInstance {
    /// The requested outputs, by name, from `value(model output index)`.
    fn named_outputs<'a>(
        &self,
        outputs: &[String],
        value: impl Fn(usize) -> &'a tract_onnx::prelude::Tensor,
    ) -> Result<Vec<NamedTensor>, BackendError> {
        outputs
            .iter()
            .map(|name| {
                let &i = self.output_index.get(name).ok_or_else(|| {
                    BackendError::Execution(format!("the model has no output '{name}'"))
                })?;
                Ok(NamedTensor {
                    name: name.clone(),
                    tensor: from_tract(name, value(i))?,
                })
            })
            .collect()
    }
}
