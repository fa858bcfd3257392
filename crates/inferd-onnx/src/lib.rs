//! # inferd-onnx
//!
//! ONNX models for inferd, executed by `tract` (pure Rust; no native runtime needed). The model is
//! parsed, typed and optimised once per version; each instance keeps its own execution state.
//! Inputs and outputs, with dynamic dimensions, are read from the model for auto-complete.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use inferd_core::backend::{
    Backend, BackendError, LoadRequest, LoadedModel, ModelInstance, ModelSignature, NamedTensor,
    TensorSpec,
};
use inferd_core::tensor::{DataType, Tensor, TensorData};
use tract_onnx::prelude::{
    DatumType, Framework, InferenceModelExt, IntoRunnable, IntoTValue, TValue, TVec, TypedModel,
    TypedRunnableModel, TypedSimpleState,
};
use tract_onnx::tract_hir::internal::tract_ndarray::{ArrayD, IxDyn};

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
        Ok(Arc::new(OnnxModel::load(&req.model_file)?))
    }
}

/// A loaded, optimised ONNX model.
pub struct OnnxModel {
    plan: Arc<TypedRunnableModel>,
    signature: ModelSignature,
    input_index: HashMap<String, usize>,
    output_index: HashMap<String, usize>,
}

fn load_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Load(e.to_string())
}

fn to_dtype(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::U8,
        DatumType::U16 => DataType::U16,
        DatumType::U32 => DataType::U32,
        DatumType::U64 => DataType::U64,
        DatumType::I8 => DataType::I8,
        DatumType::I16 => DataType::I16,
        DatumType::I32 => DataType::I32,
        DatumType::I64 => DataType::I64,
        DatumType::F16 => DataType::F16,
        DatumType::F32 => DataType::F32,
        DatumType::F64 => DataType::F64,
        DatumType::String => DataType::Bytes,
        _ => return None,
    })
}

fn from_dtype(dt: DataType) -> Option<DatumType> {
    Some(match dt {
        DataType::Bool => DatumType::Bool,
        DataType::U8 => DatumType::U8,
        DataType::U16 => DatumType::U16,
        DataType::U32 => DatumType::U32,
        DataType::U64 => DatumType::U64,
        DataType::I8 => DatumType::I8,
        DataType::I16 => DatumType::I16,
        DataType::I32 => DatumType::I32,
        DataType::I64 => DatumType::I64,
        DataType::F16 => DatumType::F16,
        DataType::F32 => DatumType::F32,
        DataType::F64 => DatumType::F64,
        DataType::Bytes => DatumType::String,
        DataType::BF16 => return None,
    })
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
        let inference = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| load_err(format!("not a loadable ONNX model: {e:#}")))?;
        let typed = inference
            .into_typed()
            .map_err(|e| load_err(format!("cannot infer tensor types and shapes: {e:#}")))?;
        let signature = signature_of(&typed)?;
        let optimized = typed
            .into_optimized()
            .map_err(|e| load_err(format!("cannot optimise the model: {e:#}")))?;
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
            signature,
            input_index,
            output_index,
        })
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
            n_inputs: self.signature.inputs.len(),
            input_index: self.input_index.clone(),
            output_index: self.output_index.clone(),
        }))
    }
}

struct OnnxInstance {
    state: TypedSimpleState,
    n_inputs: usize,
    input_index: HashMap<String, usize>,
    output_index: HashMap<String, usize>,
}

fn to_tract(t: &Tensor) -> Result<TValue, BackendError> {
    let bad = |e: String| BackendError::InvalidInput(e);
    match t.data() {
        TensorData::Raw(raw) => {
            let dt = from_dtype(t.dtype()).ok_or_else(|| {
                bad(format!(
                    "{} tensors are not supported by the ONNX backend",
                    t.dtype()
                ))
            })?;
            let mut out = tract_onnx::prelude::Tensor::zero_dt(dt, t.shape())
                .map_err(|e| bad(format!("{e:#}")))?;
            let dst = out.as_bytes_mut();
            if dst.len() != raw.len() {
                return Err(bad(format!(
                    "expected {} bytes, got {}",
                    dst.len(),
                    raw.len()
                )));
            }
            dst.copy_from_slice(raw);
            Ok(out.into_tvalue())
        }
        TensorData::Bytes(items) => {
            let strings = items
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    String::from_utf8(b.to_vec()).map_err(|_| bad(format!("BYTES element {i} is not valid UTF-8, which ONNX string tensors require")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let arr = ArrayD::from_shape_vec(IxDyn(t.shape()), strings)
                .map_err(|e| bad(e.to_string()))?;
            Ok(tract_onnx::prelude::Tensor::from(arr).into_tvalue())
        }
    }
}

fn from_tract(name: &str, v: &TValue) -> Result<Tensor, BackendError> {
    let exec = |e: String| BackendError::Execution(format!("output '{name}': {e}"));
    let dt = v.datum_type();
    let dtype = to_dtype(dt).ok_or_else(|| exec(format!("type {dt:?} cannot be returned")))?;
    let shape = v.shape().to_vec();
    if dtype == DataType::Bytes {
        let view = v
            .to_plain_array_view::<String>()
            .map_err(|e| exec(format!("{e:#}")))?;
        let items = view
            .iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        return Tensor::new(dtype, shape, TensorData::Bytes(items))
            .map_err(|e| exec(e.to_string()));
    }
    Tensor::new(
        dtype,
        shape,
        TensorData::Raw(Bytes::copy_from_slice(v.as_bytes())),
    )
    .map_err(|e| exec(e.to_string()))
}

impl ModelInstance for OnnxInstance {
    fn execute(
        &mut self,
        inputs: &[NamedTensor],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, BackendError> {
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
        let result = self
            .state
            .run(args)
            .map_err(|e| BackendError::Execution(format!("{e:#}")))?;
        let mut out = Vec::with_capacity(outputs.len());
        for name in outputs {
            let &i = self.output_index.get(name).ok_or_else(|| {
                BackendError::Execution(format!("the model has no output '{name}'"))
            })?;
            out.push(NamedTensor {
                name: name.clone(),
                tensor: from_tract(name, &result[i])?,
            });
        }
        Ok(out)
    }
}
