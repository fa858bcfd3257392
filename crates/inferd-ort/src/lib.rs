//! # inferd-ort
//!
//! ONNX models on ONNX Runtime through the `ort` crate, with the runtime library loaded when the
//! first model loads (`ORT_DYLIB_PATH`), so building needs nothing but cargo. Built only with the
//! `inferd` binary's `onnxruntime` feature; it then serves `platform: "onnxruntime_onnx"` /
//! `backend: "onnxruntime"` models, while `backend: "tract"` keeps the pure-Rust backend.
//! Each instance owns its session with one intra-op thread (the server's compute budget decides
//! how many run at once).
//!
//! Execution providers come from the config, as Triton's ONNX Runtime backend reads it:
//! `instance_group { kind: KIND_GPU gpus: [N] }` runs on CUDA device N, and
//! `optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt"
//! parameters { key: "precision_mode" value: "FP16" } } ] } }` puts TensorRT in front of CUDA.
//! GPU providers need this crate's `cuda` / `tensorrt` features (cargo features only switch the
//! API on; the library itself comes from `ORT_DYLIB_PATH`, e.g. the `onnxruntime-gpu` wheel's).
//! A requested provider that the library lacks fails the load with what to do, never a quiet
//! fall-back to CPU.
//!
//! [`OnnxSelect`] (the binary's `--onnx-backend`) decides, model by model, whether tract or ONNX
//! Runtime runs it, cross-checking the two at load in `auto` mode ([`select`], [`check`]).

pub mod check;
pub mod select;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use inferd_core::backend::{
    Backend, BackendError, LoadRequest, LoadedModel, ModelInstance, ModelSignature, NamedTensor,
    TensorSpec,
};
use inferd_core::config::{InstanceKind, ModelConfig, Placement};
use inferd_core::tensor::{DataType, Tensor, TensorData};
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, ValueType};
pub use select::{OnnxChoice, OnnxSelect};

/// How to provide the runtime library, for error messages.
pub const HOWTO: &str = "set ORT_DYLIB_PATH to ONNX Runtime's shared library, e.g. `pip install onnxruntime` and \
point it at <site-packages>/onnxruntime/capi/libonnxruntime.so.<version>, or serve on the pure-Rust \
backend with `--onnx-backend tract` (or `auto`, which uses tract when ONNX Runtime is missing)";

static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Loads the runtime library once per process.
pub fn environment() -> Result<&'static Environment, String> {
    ENV.get_or_init(|| {
        let path = std::env::var_os("ORT_DYLIB_PATH")
            .ok_or_else(|| format!("ONNX Runtime is not available: {HOWTO}"))?;
        if !Path::new(&path).is_file() {
            return Err(format!(
                "ORT_DYLIB_PATH={} is not a file: {HOWTO}",
                Path::new(&path).display()
            ));
        }
        ort::init_from(&path)
            .map_err(|e| {
                format!(
                    "cannot load ONNX Runtime from {}: {e}; {HOWTO}",
                    Path::new(&path).display()
                )
            })?
            .with_name("inferd")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The ONNX Runtime backend.
#[derive(Debug, Default)]
pub struct OrtBackend;

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn platform(&self) -> Option<&'static str> {
        Some("onnxruntime_onnx")
    }

    fn accepts(&self, platform: &str, backend: &str) -> bool {
        platform == "onnxruntime_onnx" || backend == "onnxruntime"
    }

    fn default_model_filename(&self, _config: &ModelConfig, _dir: &Path) -> String {
        "model.onnx".into()
    }

    fn gpu_unsupported(&self) -> Option<String> {
        (!cfg!(feature = "cuda")).then(|| {
            "backend 'onnxruntime' runs on CPU only without the onnxruntime-cuda feature".into()
        })
    }

    fn load(&self, req: &LoadRequest<'_>) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let device = Device::from_config(req.config).map_err(BackendError::Load)?;
        Ok(Arc::new(OrtModel::load_on(&req.model_file, device)?))
    }
}

fn to_dtype(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Float16 => DataType::F16,
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::Bfloat16 => DataType::BF16,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn spec(name: &str, ty: &ValueType) -> Result<TensorSpec, BackendError> {
    let et = ty
        .tensor_type()
        .ok_or_else(|| BackendError::Load(format!("'{name}' is not a tensor")))?;
    let dtype = to_dtype(et).ok_or_else(|| {
        BackendError::Load(format!(
            "'{name}' has type {et:?}, which inferd cannot serve"
        ))
    })?;
    let shape = ty
        .tensor_shape()
        .map(|s| s.iter().map(|&d| if d < 0 { -1 } else { d }).collect());
    Ok(TensorSpec {
        name: name.to_string(),
        dtype,
        shape,
    })
}

/// Where a model's sessions run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// CUDA on a device, with TensorRT in front when `tensorrt` holds its settings.
    Gpu {
        /// CUDA device id.
        device_id: i32,
        /// TensorRT settings (`precision_mode`, `max_workspace_size_bytes`,
        /// `trt_engine_cache_enable`, `trt_engine_cache_path`) when TensorRT is asked for.
        tensorrt: Option<std::collections::BTreeMap<String, String>>,
    },
}

impl Device {
    /// Reads the config's instance kind and execution accelerators.
    pub fn from_config(cfg: &ModelConfig) -> Result<Device, String> {
        if let Some(a) = cfg.cpu_accelerators().first() {
            return Err(format!(
                "optimization.execution_accelerators.cpu_execution_accelerator '{}' is not supported by inferd's onnxruntime backend (remove it to run on ONNX Runtime's CPU provider)",
                a.name
            ));
        }
        if !cfg.wants_gpu() {
            return Ok(Device::Cpu);
        }
        let device_id = cfg
            .instance_group
            .iter()
            .find(|g| g.kind == inferd_core::config::InstanceKind::Gpu)
            .and_then(|g| g.gpus.first().copied())
            .unwrap_or(0);
        let device_id = i32::try_from(device_id)
            .map_err(|_| format!("instance_group gpus: device {device_id} is out of range"))?;
        let mut tensorrt = None;
        for a in cfg.gpu_accelerators() {
            match a.name.as_str() {
                "tensorrt" => tensorrt = Some(a.parameters.clone()),
                "cuda" => {}
                other => {
                    return Err(format!(
                        "optimization.execution_accelerators.gpu_execution_accelerator '{other}' is not supported (supported: tensorrt, cuda)"
                    ));
                }
            }
        }
        Ok(Device::Gpu {
            device_id,
            tensorrt,
        })
    }

    /// The device of one instance: a `KIND_CPU` group runs on the CPU even when another
    /// group of the model asks for a GPU; a GPU group's `gpus` pin each instance to its device.
    pub fn for_placement(&self, p: &Placement) -> Result<Device, String> {
        match (self, p.kind, p.gpu) {
            (_, InstanceKind::Cpu, _) => Ok(Device::Cpu),
            (Device::Gpu { tensorrt, .. }, _, Some(gpu)) => Ok(Device::Gpu {
                device_id: i32::try_from(gpu)
                    .map_err(|_| format!("instance_group gpus: device {gpu} is out of range"))?,
                tensorrt: tensorrt.clone(),
            }),
            _ => Ok(self.clone()),
        }
    }
}

/// A model file checked by ONNX Runtime; instances open their own sessions.
pub struct OrtModel {
    path: std::path::PathBuf,
    device: Device,
    signature: ModelSignature,
}

#[cfg(feature = "cuda")]
fn providers(device: &Device) -> Result<Vec<ort::ep::ExecutionProviderDispatch>, BackendError> {
    use ort::ep::ExecutionProvider;
    let Device::Gpu {
        device_id,
        tensorrt,
    } = device
    else {
        return Ok(Vec::new());
    };
    let missing = |what: &str| {
        BackendError::Load(format!(
            "the ONNX Runtime library at ORT_DYLIB_PATH has no {what} execution provider: point ORT_DYLIB_PATH at a GPU build (e.g. the onnxruntime-gpu wheel's libonnxruntime.so) or use KIND_CPU"
        ))
    };
    let mut eps = Vec::new();
    if let Some(settings) = tensorrt {
        #[cfg(feature = "tensorrt")]
        {
            if !ort::ep::TensorRT::is_available().unwrap_or(false) {
                return Err(missing("TensorRT"));
            }
            let mut trt = ort::ep::TensorRT::default().with_device_id(*device_id);
            for (k, v) in settings {
                trt = match (k.as_str(), v.as_str()) {
                    ("precision_mode", "FP16") => trt.with_fp16(true),
                    ("precision_mode", "FP32") => trt,
                    ("precision_mode", "INT8") => trt.with_int8(true),
                    ("max_workspace_size_bytes", n) => {
                        trt.with_max_workspace_size(n.parse().map_err(|_| {
                            BackendError::Load(format!(
                                "tensorrt max_workspace_size_bytes '{n}' is not a number"
                            ))
                        })?)
                    }
                    ("trt_engine_cache_enable", b) => {
                        trt.with_engine_cache(b == "true" || b == "1")
                    }
                    ("trt_engine_cache_path", p) => trt.with_engine_cache_path(p),
                    (k, v) => {
                        return Err(BackendError::Load(format!(
                            "tensorrt parameter '{k}' = '{v}' is not supported (precision_mode FP32/FP16/INT8, max_workspace_size_bytes, trt_engine_cache_enable, trt_engine_cache_path)"
                        )));
                    }
                };
            }
            eps.push(trt.build().error_on_failure());
        }
        #[cfg(not(feature = "tensorrt"))]
        {
            let _ = settings;
            return Err(BackendError::Load(
                "the tensorrt accelerator needs inferd built with the onnxruntime-tensorrt feature"
                    .into(),
            ));
        }
    }
    if !ort::ep::CUDA::is_available().unwrap_or(false) {
        return Err(missing("CUDA"));
    }
    eps.push(
        ort::ep::CUDA::default()
            .with_device_id(*device_id)
            .build()
            .error_on_failure(),
    );
    Ok(eps)
}

#[cfg(not(feature = "cuda"))]
fn providers(device: &Device) -> Result<Vec<ort::ep::ExecutionProviderDispatch>, BackendError> {
    match device {
        Device::Cpu => Ok(Vec::new()),
        Device::Gpu { .. } => Err(BackendError::Load(
            "KIND_GPU needs inferd built with the onnxruntime-cuda feature".into(),
        )),
    }
}

fn new_session(path: &Path, device: &Device) -> Result<Session, BackendError> {
    let env = environment().map_err(BackendError::Load)?;
    let unzipped = inferd_onnx::load::unzipped_model(path)?;
    if let Some(u) = &unzipped {
        for output in &u.outputs {
            tracing::warn!(
                model = %path.display(),
                output,
                "ZipMap output served as an FP32 tensor, one column per class in class-label order"
            );
        }
    }
    let eps = providers(device)?;
    Session::builder(env)
        .and_then(|b| b.with_intra_threads(1).map_err(Into::into))
        .and_then(|b| {
            if eps.is_empty() {
                Ok(b)
            } else {
                b.with_execution_providers(&eps).map_err(Into::into)
            }
        })
        .and_then(|mut b| match &unzipped {
            // A terminal ZipMap (CatBoost's exporter always adds one) is served as the tensor it
            // maps, as the tract backend serves it: the model goes to ONNX Runtime without it.
            Some(u) => b.commit_from_memory(&u.bytes),
            None => b.commit_from_file(path),
        })
        .map_err(|e| BackendError::Load(format!("ONNX Runtime cannot load the model: {e}")))
}

impl OrtModel {
    /// Loads and describes a model for ONNX Runtime's CPU provider.
    pub fn load(path: &Path) -> Result<Self, BackendError> {
        Self::load_on(path, Device::Cpu)
    }

    /// Loads and describes a model for a device.
    pub fn load_on(path: &Path, device: Device) -> Result<Self, BackendError> {
        let session = new_session(path, &device)?;
        let inputs = session
            .inputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype()))
            .collect::<Result<_, _>>()?;
        let outputs = session
            .outputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype()))
            .collect::<Result<_, _>>()?;
        Ok(OrtModel {
            path: path.to_path_buf(),
            device,
            signature: ModelSignature { inputs, outputs },
        })
    }
}

impl LoadedModel for OrtModel {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn new_instance(&self) -> Result<Box<dyn ModelInstance>, BackendError> {
        Ok(Box::new(OrtInstance {
            session: new_session(&self.path, &self.device)?,
        }))
    }

    fn new_instance_on(
        &self,
        placement: &Placement,
    ) -> Result<Box<dyn ModelInstance>, BackendError> {
        let device = self
            .device
            .for_placement(placement)
            .map_err(BackendError::Load)?;
        Ok(Box::new(OrtInstance {
            session: new_session(&self.path, &device)?,
        }))
    }
}

struct OrtInstance {
    session: Session,
}

fn bad(e: impl std::fmt::Display) -> BackendError {
    BackendError::InvalidInput(e.to_string())
}

fn to_ort(t: &Tensor) -> Result<DynValue, BackendError> {
    let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    macro_rules! typed {
        ($ty:ty, $n:expr) => {{
            let raw = t.raw().ok_or_else(|| bad("expected raw data"))?;
            let v: Vec<$ty> = raw
                .chunks_exact($n)
                .map(|c| <$ty>::from_le_bytes(c.try_into().unwrap_or([0; $n])))
                .collect();
            ort::value::Tensor::from_array((shape, v))
                .map(|t| t.into_dyn())
                .map_err(bad)
        }};
    }
    match t.dtype() {
        DataType::F32 => typed!(f32, 4),
        DataType::F64 => typed!(f64, 8),
        DataType::I8 => typed!(i8, 1),
        DataType::I16 => typed!(i16, 2),
        DataType::I32 => typed!(i32, 4),
        DataType::I64 => typed!(i64, 8),
        DataType::U8 => typed!(u8, 1),
        DataType::U16 => typed!(u16, 2),
        DataType::U32 => typed!(u32, 4),
        DataType::U64 => typed!(u64, 8),
        DataType::F16 => typed!(half::f16, 2),
        DataType::BF16 => typed!(half::bf16, 2),
        DataType::Bool => {
            let raw = t.raw().ok_or_else(|| bad("expected raw data"))?;
            let v: Vec<bool> = raw.iter().map(|&b| b != 0).collect();
            ort::value::Tensor::from_array((shape, v))
                .map(|t| t.into_dyn())
                .map_err(bad)
        }
        DataType::Bytes => {
            let items = t
                .bytes_elements()
                .ok_or_else(|| bad("expected BYTES elements"))?;
            let strings = items
                .iter()
                .enumerate()
                .map(|(i, b)| String::from_utf8(b.to_vec()).map_err(|_| bad(format!("BYTES element {i} is not valid UTF-8, which ONNX string tensors require"))))
                .collect::<Result<Vec<_>, _>>()?;
            ort::value::Tensor::from_string_array((shape, strings.as_slice()))
                .map(|t| t.into_dyn())
                .map_err(bad)
        }
    }
}

fn from_ort(name: &str, v: &DynValue) -> Result<Tensor, BackendError> {
    let exec = |e: String| BackendError::Execution(format!("output '{name}': {e}"));
    let et = v
        .dtype()
        .tensor_type()
        .ok_or_else(|| exec("not a tensor".into()))?;
    let dtype = to_dtype(et).ok_or_else(|| exec(format!("type {et:?} cannot be returned")))?;
    macro_rules! typed {
        ($ty:ty) => {{
            let (shape, data) = v
                .try_extract_tensor::<$ty>()
                .map_err(|e| exec(e.to_string()))?;
            let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (dims, TensorData::Raw(Bytes::from(bytes)))
        }};
    }
    let (dims, data) = match dtype {
        DataType::F32 => typed!(f32),
        DataType::F64 => typed!(f64),
        DataType::I8 => typed!(i8),
        DataType::I16 => typed!(i16),
        DataType::I32 => typed!(i32),
        DataType::I64 => typed!(i64),
        DataType::U8 => typed!(u8),
        DataType::U16 => typed!(u16),
        DataType::U32 => typed!(u32),
        DataType::U64 => typed!(u64),
        DataType::F16 => typed!(half::f16),
        DataType::BF16 => typed!(half::bf16),
        DataType::Bool => {
            let (shape, data) = v
                .try_extract_tensor::<bool>()
                .map_err(|e| exec(e.to_string()))?;
            (
                shape.iter().map(|&d| d.max(0) as usize).collect(),
                TensorData::Raw(data.iter().map(|&b| b as u8).collect::<Vec<_>>().into()),
            )
        }
        DataType::Bytes => {
            let (shape, strings) = v.try_extract_strings().map_err(|e| exec(e.to_string()))?;
            (
                shape.iter().map(|&d| d.max(0) as usize).collect(),
                TensorData::Bytes(strings.into_iter().map(Bytes::from).collect()),
            )
        }
    };
    Tensor::new(dtype, dims, data).map_err(|e| exec(e.to_string()))
}

impl ModelInstance for OrtInstance {
    fn execute(
        &mut self,
        inputs: &[NamedTensor],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, BackendError> {
        let feed: Vec<(String, SessionInputValue)> = inputs
            .iter()
            .map(|nt| {
                Ok((
                    nt.name.clone(),
                    SessionInputValue::from(to_ort(&nt.tensor)?),
                ))
            })
            .collect::<Result<_, BackendError>>()?;
        let result = self.session.run(feed).map_err(|e| match e.code() {
            // ONNX Runtime says the input does not suit the model (shapes, values): the
            // client's mistake, answered with its reason.
            ort::error::ErrorCode::InvalidArgument => {
                BackendError::InvalidInput(format!("the model cannot run on this input: {e}"))
            }
            _ => BackendError::Execution(e.to_string()),
        })?;
        outputs
            .iter()
            .map(|name| {
                let v = result
                    .get(name.as_str())
                    .ok_or_else(|| BackendError::Execution(format!("no output '{name}'")))?;
                Ok(NamedTensor {
                    name: name.clone(),
                    tensor: from_ort(name, v)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> ModelConfig {
        inferd_core::config::parse_config(text, Path::new("config.pbtxt"))
            .expect("config parses")
            .config
    }

    #[test]
    fn each_gpu_instance_runs_on_its_listed_device_and_cpu_groups_on_the_cpu() {
        let cfg = config(
            r#"name: "m"
            instance_group [ { count: 1 kind: KIND_GPU gpus: [ 2, 5 ] }, { kind: KIND_CPU } ]
            optimization { execution_accelerators { gpu_execution_accelerator: [
              { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }"#,
        );
        let model = Device::from_config(&cfg).expect("device");
        let trt = Some([("precision_mode".to_string(), "FP16".to_string())].into());
        let devices: Vec<Device> = cfg
            .placements()
            .iter()
            .map(|p| model.for_placement(p).expect("placement"))
            .collect();
        let gpu = |device_id| Device::Gpu {
            device_id,
            tensorrt: trt.clone(),
        };
        assert_eq!(devices, vec![gpu(2), gpu(5), Device::Cpu]);
    }

    #[test]
    fn a_gpu_group_without_gpus_uses_device_zero() {
        let cfg = config(r#"name: "m" instance_group [ { count: 2 kind: KIND_GPU } ]"#);
        let model = Device::from_config(&cfg).expect("device");
        for p in cfg.placements() {
            assert_eq!(
                model.for_placement(&p),
                Ok(Device::Gpu {
                    device_id: 0,
                    tensorrt: None
                })
            );
        }
    }
}
