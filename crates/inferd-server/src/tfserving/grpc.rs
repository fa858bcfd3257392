//! TF Serving's gRPC API on a listener of its own (`--tfserving-grpc-port`, TF Serving's
//! default 8500), wire-compatible with the `tensorflow-serving-api` client, for every model
//! inferd serves: `tensorflow.serving.PredictionService` (`Predict`, `GetModelMetadata`) and
//! `ModelService.GetModelStatus`. Tensors are TensorFlow's `TensorProto`: read from
//! `tensor_content` or the typed value fields (one value fills the shape, as TensorFlow does),
//! written as `tensor_content` (strings as `string_val`).

use inferd_core::backend::NamedTensor;
use inferd_core::engine::VersionState;
use inferd_core::tensor::{DataType, Tensor, TensorData};
use inferd_core::{Engine, InferRequest};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{SIGNATURE, signature_shape};

/// The generated messages and services.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("tensorflow");
    /// `tensorflow.serving`.
    pub mod serving {
        tonic::include_proto!("tensorflow.serving");
    }
}

use pb::serving::{
    GetModelMetadataRequest, GetModelMetadataResponse, GetModelStatusRequest,
    GetModelStatusResponse, ModelSpec, ModelVersionStatus, PredictRequest, PredictResponse,
    SignatureDefMap, StatusProto, model_spec::VersionChoice, model_version_status::State,
};
use pb::{
    DataType as Dt, SignatureDef, TensorInfo, TensorProto, TensorShapeProto,
    tensor_shape_proto::Dim,
};

fn dt_of(d: DataType) -> Dt {
    match d {
        DataType::Bool => Dt::DtBool,
        DataType::U8 => Dt::DtUint8,
        DataType::U16 => Dt::DtUint16,
        DataType::U32 => Dt::DtUint32,
        DataType::U64 => Dt::DtUint64,
        DataType::I8 => Dt::DtInt8,
        DataType::I16 => Dt::DtInt16,
        DataType::I32 => Dt::DtInt32,
        DataType::I64 => Dt::DtInt64,
        DataType::F16 => Dt::DtHalf,
        DataType::BF16 => Dt::DtBfloat16,
        DataType::F32 => Dt::DtFloat,
        DataType::F64 => Dt::DtDouble,
        DataType::Bytes => Dt::DtString,
    }
}

fn data_type(d: Dt) -> Option<DataType> {
    Some(match d {
        Dt::DtBool => DataType::Bool,
        Dt::DtUint8 => DataType::U8,
        Dt::DtUint16 => DataType::U16,
        Dt::DtUint32 => DataType::U32,
        Dt::DtUint64 => DataType::U64,
        Dt::DtInt8 => DataType::I8,
        Dt::DtInt16 => DataType::I16,
        Dt::DtInt32 => DataType::I32,
        Dt::DtInt64 => DataType::I64,
        Dt::DtHalf => DataType::F16,
        Dt::DtBfloat16 => DataType::BF16,
        Dt::DtFloat => DataType::F32,
        Dt::DtDouble => DataType::F64,
        Dt::DtString => DataType::Bytes,
        _ => return None,
    })
}

fn shape_proto(shape: impl IntoIterator<Item = i64>) -> TensorShapeProto {
    TensorShapeProto {
        dim: shape
            .into_iter()
            .map(|size| Dim {
                size,
                name: String::new(),
            })
            .collect(),
        unknown_rank: false,
    }
}

/// The typed values of a `TensorProto`, as little-endian bytes of `dt`, `n` elements (one value
/// fills them all).
fn typed_values(name: &str, p: &TensorProto, dt: DataType, n: usize) -> Result<Vec<u8>, Status> {
    fn fill<T: Copy>(
        name: &str,
        v: &[T],
        n: usize,
        put: impl Fn(T, &mut Vec<u8>),
    ) -> Result<Vec<u8>, Status> {
        let mut out = Vec::new();
        match v.len() {
            len if len == n => v.iter().for_each(|x| put(*x, &mut out)),
            1 => (0..n).for_each(|_| put(v[0], &mut out)),
            len => {
                return Err(Status::invalid_argument(format!(
                    "input '{name}': {len} values for a shape of {n} elements"
                )));
            }
        }
        Ok(out)
    }
    match dt {
        DataType::F32 => fill(name, &p.float_val, n, |x, o| o.extend(x.to_le_bytes())),
        DataType::F64 => fill(name, &p.double_val, n, |x, o| o.extend(x.to_le_bytes())),
        DataType::I32 => fill(name, &p.int_val, n, |x, o| o.extend(x.to_le_bytes())),
        DataType::I16 => fill(name, &p.int_val, n, |x, o| {
            o.extend((x as i16).to_le_bytes())
        }),
        DataType::I8 => fill(name, &p.int_val, n, |x, o| o.push(x as i8 as u8)),
        DataType::U8 => fill(name, &p.int_val, n, |x, o| o.push(x as u8)),
        DataType::U16 => fill(name, &p.int_val, n, |x, o| {
            o.extend((x as u16).to_le_bytes())
        }),
        DataType::I64 => fill(name, &p.int64_val, n, |x, o| o.extend(x.to_le_bytes())),
        DataType::U32 => fill(name, &p.uint32_val, n, |x, o| o.extend(x.to_le_bytes())),
        DataType::U64 => fill(name, &p.uint64_val, n, |x, o| o.extend(x.to_le_bytes())),
        DataType::Bool => fill(name, &p.bool_val, n, |x, o| o.push(u8::from(x))),
        DataType::F16 | DataType::BF16 => fill(name, &p.half_val, n, |x, o| {
            o.extend((x as u16).to_le_bytes())
        }),
        DataType::Bytes => Ok(Vec::new()),
    }
}

/// A `TensorProto` as a tensor named `name`, at most `max_bytes` of elements (one value may
/// fill a declared shape, so the shape, not the message, sets the size: checked before
/// anything is allocated).
pub fn tensor(name: &str, p: &TensorProto, max_bytes: usize) -> Result<Tensor, Status> {
    let dt = Dt::try_from(p.dtype)
        .ok()
        .and_then(data_type)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "input '{name}': dtype {} is not supported",
                p.dtype
            ))
        })?;
    let dims = p
        .tensor_shape
        .as_ref()
        .map(|s| s.dim.as_slice())
        .unwrap_or_default();
    let mut shape = Vec::with_capacity(dims.len());
    for d in dims {
        shape.push(usize::try_from(d.size).map_err(|_| {
            Status::invalid_argument(format!("input '{name}': dimension {} is negative", d.size))
        })?);
    }
    let n = inferd_core::tensor::element_count(&shape).ok_or_else(|| {
        Status::invalid_argument(format!("input '{name}': shape {shape:?} is too large"))
    })?;
    if n.saturating_mul(dt.size().unwrap_or(1)) > max_bytes {
        return Err(Status::invalid_argument(format!(
            "input '{name}': shape {shape:?} holds {n} elements, more than the request size limit ({max_bytes} bytes) allows"
        )));
    }
    let data = if dt == DataType::Bytes {
        let items = match p.string_val.len() {
            len if len == n => p.string_val.iter().map(|b| b.to_vec().into()).collect(),
            1 => (0..n).map(|_| p.string_val[0].to_vec().into()).collect(),
            len => {
                return Err(Status::invalid_argument(format!(
                    "input '{name}': {len} strings for a shape of {n} elements"
                )));
            }
        };
        TensorData::Bytes(items)
    } else if !p.tensor_content.is_empty() {
        TensorData::Raw(p.tensor_content.to_vec().into())
    } else {
        TensorData::Raw(typed_values(name, p, dt, n)?.into())
    };
    Tensor::new(dt, shape, data)
        .map_err(|e| Status::invalid_argument(format!("input '{name}': {e}")))
}

/// A tensor as a `TensorProto`.
pub fn proto(t: &Tensor) -> TensorProto {
    let mut p = TensorProto {
        dtype: dt_of(t.dtype()) as i32,
        tensor_shape: Some(shape_proto(t.shape().iter().map(|&d| d as i64))),
        ..Default::default()
    };
    match t.data() {
        TensorData::Bytes(items) => {
            p.string_val = items.iter().map(|b| b.to_vec().into()).collect();
        }
        TensorData::Raw(r) => p.tensor_content = r.to_vec().into(),
    }
    p
}

fn version_of(spec: &ModelSpec) -> Result<Option<u64>, Status> {
    match &spec.version_choice {
        None => Ok(None),
        Some(VersionChoice::Version(v)) => u64::try_from(*v)
            .map(Some)
            .map_err(|_| Status::invalid_argument(format!("version {v} is negative"))),
        Some(VersionChoice::VersionLabel(l)) => Err(Status::invalid_argument(format!(
            "version labels are not supported ('{l}'): name the version"
        ))),
    }
}

fn spec_of(req: Option<&ModelSpec>) -> Result<&ModelSpec, Status> {
    req.filter(|s| !s.name.is_empty())
        .ok_or_else(|| Status::invalid_argument("model_spec.name is required"))
}

fn engine_status(e: &inferd_core::Error) -> Status {
    crate::error::grpc_status(e)
}

/// `tensorflow.serving.PredictionService` and `ModelService` over the engine.
#[derive(Clone)]
pub struct TfServing {
    engine: Engine,
    max_body: usize,
}

impl TfServing {
    /// The services over `engine`; a request's tensors may hold at most `max_body` bytes.
    pub fn new(engine: Engine, max_body: usize) -> Self {
        TfServing { engine, max_body }
    }

    fn spec_answer(name: &str, version: u64) -> ModelSpec {
        ModelSpec {
            name: name.to_string(),
            version_choice: Some(VersionChoice::Version(version as i64)),
            signature_name: SIGNATURE.to_string(),
        }
    }
}

#[tonic::async_trait]
impl pb::serving::prediction_service_server::PredictionService for TfServing {
    async fn predict(
        &self,
        request: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        let req = request.into_inner();
        let spec = spec_of(req.model_spec.as_ref())?;
        if !spec.signature_name.is_empty() && spec.signature_name != SIGNATURE {
            return Err(Status::invalid_argument(format!(
                "model '{}' has no signature '{}' (it serves '{SIGNATURE}')",
                spec.name, spec.signature_name
            )));
        }
        let version = version_of(spec)?;
        let info = self
            .engine
            .model_info(&spec.name, version)
            .map_err(|e| engine_status(&e))?;
        let mut inputs = Vec::with_capacity(req.inputs.len());
        for (name, p) in &req.inputs {
            inputs.push(NamedTensor {
                name: name.clone(),
                tensor: tensor(name, p, self.max_body)?,
            });
        }
        let outputs = (!req.output_filter.is_empty()).then(|| req.output_filter.clone());
        let r = self
            .engine
            .infer(
                &spec.name,
                Some(info.version),
                InferRequest {
                    id: String::new(),
                    inputs,
                    outputs,
                    parameters: Default::default(),
                },
            )
            .await
            .map_err(|e| engine_status(&e))?;
        Ok(Response::new(PredictResponse {
            model_spec: Some(Self::spec_answer(&spec.name, r.model_version)),
            outputs: r
                .outputs
                .iter()
                .map(|o| (o.name.clone(), proto(&o.tensor)))
                .collect(),
        }))
    }

    async fn get_model_metadata(
        &self,
        request: Request<GetModelMetadataRequest>,
    ) -> Result<Response<GetModelMetadataResponse>, Status> {
        let req = request.into_inner();
        let spec = spec_of(req.model_spec.as_ref())?;
        if !req.metadata_field.iter().any(|f| f == "signature_def") {
            return Err(Status::invalid_argument(
                "metadata_field must name signature_def (the one metadata field served)",
            ));
        }
        let info = self
            .engine
            .model_info(&spec.name, version_of(spec)?)
            .map_err(|e| engine_status(&e))?;
        let batch = info.config.max_batch_size > 0;
        let tinfo = |name: &str, dt: DataType, dims: &[i64]| TensorInfo {
            encoding: Some(pb::tensor_info::Encoding::Name(name.to_string())),
            dtype: dt_of(dt) as i32,
            tensor_shape: Some(shape_proto(signature_shape(batch, dims))),
        };
        let sig = SignatureDef {
            inputs: info
                .config
                .input
                .iter()
                .map(|i| (i.name.clone(), tinfo(&i.name, i.data_type.0, &i.dims)))
                .collect(),
            outputs: info
                .config
                .output
                .iter()
                .map(|o| (o.name.clone(), tinfo(&o.name, o.data_type.0, &o.dims)))
                .collect(),
            method_name: "tensorflow/serving/predict".into(),
        };
        let map = SignatureDefMap {
            signature_def: [(SIGNATURE.to_string(), sig)].into_iter().collect(),
        };
        let any = prost_types::Any {
            type_url: "type.googleapis.com/tensorflow.serving.SignatureDefMap".into(),
            value: map.encode_to_vec(),
        };
        Ok(Response::new(GetModelMetadataResponse {
            model_spec: Some(Self::spec_answer(&info.name, info.version)),
            metadata: [("signature_def".to_string(), any)].into_iter().collect(),
        }))
    }
}

#[tonic::async_trait]
impl pb::serving::model_service_server::ModelService for TfServing {
    async fn get_model_status(
        &self,
        request: Request<GetModelStatusRequest>,
    ) -> Result<Response<GetModelStatusResponse>, Status> {
        let req = request.into_inner();
        let spec = spec_of(req.model_spec.as_ref())?;
        let version = version_of(spec)?;
        let index = self
            .engine
            .index(false)
            .await
            .map_err(|e| engine_status(&e))?;
        let rows: Vec<ModelVersionStatus> = index
            .iter()
            .filter(|e| e.name == spec.name && (version.is_none() || e.version == version))
            .filter_map(|e| {
                let v = e.version?;
                let state = match e.state {
                    Some(VersionState::Loading) => State::Loading,
                    Some(VersionState::Ready) => State::Available,
                    Some(VersionState::Unloading) => State::Unloading,
                    Some(VersionState::Unavailable) => State::End,
                    None => State::Start,
                };
                let failed = e.state == Some(VersionState::Unavailable) && !e.reason.is_empty();
                Some(ModelVersionStatus {
                    version: v as i64,
                    state: state as i32,
                    status: Some(StatusProto {
                        error_code: if failed { 2 } else { 0 },
                        error_message: if failed {
                            e.reason.clone()
                        } else {
                            String::new()
                        },
                    }),
                })
            })
            .collect();
        if rows.is_empty() {
            return Err(Status::not_found(match version {
                Some(v) => format!("Could not find version {v} of model {}", spec.name),
                None => format!("Could not find any versions of model {}", spec.name),
            }));
        }
        Ok(Response::new(GetModelStatusResponse {
            model_version_status: rows,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_and_tensor_content_read_alike_and_one_value_fills() {
        let shape = Some(shape_proto([2, 2]));
        let typed = TensorProto {
            dtype: Dt::DtFloat as i32,
            tensor_shape: shape.clone(),
            float_val: vec![1.0, 2.0, 3.0, 4.0],
            ..Default::default()
        };
        let t = tensor("x", &typed, 1 << 20).expect("typed");
        let back = tensor("x", &proto(&t), 1 << 20).expect("content");
        assert_eq!(t, back);
        let filled = TensorProto {
            dtype: Dt::DtInt32 as i32,
            tensor_shape: shape,
            int_val: vec![7],
            ..Default::default()
        };
        assert_eq!(
            tensor("y", &filled, 1 << 20).expect("filled"),
            Tensor::new(
                DataType::I32,
                vec![2, 2],
                TensorData::Raw(
                    [7i32; 4]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect::<Vec<u8>>()
                        .into()
                )
            )
            .expect("t")
        );
    }

    #[test]
    fn mistakes_are_invalid_argument_naming_the_input() {
        let bad = TensorProto {
            dtype: Dt::DtFloat as i32,
            tensor_shape: Some(shape_proto([3])),
            float_val: vec![1.0, 2.0],
            ..Default::default()
        };
        let e = tensor("x", &bad, 1 << 20).expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("input 'x'") && e.message().contains("2 values"),
            "{e}"
        );
        let neg = TensorProto {
            dtype: Dt::DtFloat as i32,
            tensor_shape: Some(shape_proto([-1])),
            ..Default::default()
        };
        assert!(
            tensor("x", &neg, 1 << 20)
                .expect_err("refused")
                .message()
                .contains("negative")
        );
        let variant = TensorProto {
            dtype: Dt::DtVariant as i32,
            ..Default::default()
        };
        assert!(
            tensor("x", &variant, 1 << 20)
                .expect_err("refused")
                .message()
                .contains("not supported")
        );
    }

    #[test]
    fn one_value_cannot_fill_a_shape_past_the_size_limit() {
        let huge = TensorProto {
            dtype: Dt::DtFloat as i32,
            tensor_shape: Some(shape_proto([1 << 40])),
            float_val: vec![0.0],
            ..Default::default()
        };
        let e = tensor("x", &huge, 1 << 20).expect_err("refused before allocating");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("size limit"), "{e}");
    }
}
