//! `inference.GRPCInferenceService`, the gRPC protocol tritonclient speaks.

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use inferd_core::backend::NamedTensor;
use inferd_core::config::{self as cfg, ModelConfig};
use inferd_core::request::{InferRequest, InferResponse, ParamValue};
use inferd_core::tensor::{DataType, Tensor, TensorData};
use inferd_core::{Engine, Error};
use tonic::{Request, Response, Status};

use crate::SERVER_EXTENSIONS;
use crate::error::grpc_status;
use crate::pb::{self, grpc_inference_service_server::GrpcInferenceService};

/// The gRPC service over an engine.
#[derive(Clone)]
pub struct InferenceService {
    engine: Engine,
    inflight: std::sync::Arc<tokio::sync::Semaphore>,
}

impl InferenceService {
    /// Wraps an engine; `inflight` caps concurrent inference requests (shared with HTTP).
    pub fn new(engine: Engine, inflight: std::sync::Arc<tokio::sync::Semaphore>) -> Self {
        InferenceService { engine, inflight }
    }
}

fn status(e: Error) -> Status {
    grpc_status(&e)
}

fn parse_version(v: &str) -> Result<Option<u64>, Status> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<u64>().map(Some).map_err(|_| {
        Status::invalid_argument(format!(
            "invalid model version '{v}': expected a non-negative integer"
        ))
    })
}

fn bad(msg: String) -> Status {
    Status::invalid_argument(msg)
}

/// Converts a gRPC request into the engine's form.
pub fn decode_infer(req: pb::ModelInferRequest) -> Result<InferRequest, Status> {
    let raw = req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(bad(format!(
            "raw_input_contents has {} entries but the request has {} inputs; give one per input",
            raw.len(),
            req.inputs.len()
        )));
    }
    let mut out = InferRequest {
        id: req.id,
        ..Default::default()
    };
    for (k, v) in req.parameters {
        if let Some(p) = v.parameter_choice.and_then(param) {
            out.parameters.insert(k, p);
        }
    }
    for (i, input) in req.inputs.into_iter().enumerate() {
        let name = input.name;
        let dtype: DataType = input
            .datatype
            .parse()
            .map_err(|e| bad(format!("input '{name}': {e}")))?;
        let shape = input
            .shape
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| {
                    bad(format!(
                        "input '{name}': shape {:?} has a negative dimension",
                        input.shape
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if input.parameters.contains_key("shared_memory_region") {
            return Err(bad(format!(
                "input '{name}': the shared-memory extension is not supported; send the data in the request"
            )));
        }
        let tensor = if let Some(r) = raw.get(i) {
            if input.contents.as_ref().is_some_and(has_contents) {
                return Err(bad(format!(
                    "input '{name}': give raw_input_contents or contents, not both"
                )));
            }
            match dtype {
                DataType::Bytes => Tensor::from_length_prefixed(shape, r),
                _ => Tensor::new(dtype, shape, TensorData::Raw(r.clone())),
            }
            .map_err(|e| bad(format!("input '{name}': {e}")))?
        } else {
            let c = input.contents.unwrap_or_default();
            typed_tensor(&name, dtype, shape, c)?
        };
        out.inputs.push(NamedTensor { name, tensor });
    }
    if !req.outputs.is_empty() {
        out.outputs = Some(req.outputs.into_iter().map(|o| o.name).collect());
    }
    Ok(out)
}

fn param(p: pb::infer_parameter::ParameterChoice) -> Option<ParamValue> {
    use pb::infer_parameter::ParameterChoice as C;
    Some(match p {
        C::BoolParam(b) => ParamValue::Bool(b),
        C::Int64Param(i) => ParamValue::Int(i),
        C::Uint64Param(u) => ParamValue::Int(i64::try_from(u).ok()?),
        C::DoubleParam(d) => ParamValue::Double(d),
        C::StringParam(s) => ParamValue::String(s),
    })
}

fn has_contents(c: &pb::InferTensorContents) -> bool {
    !(c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty())
}

fn typed_tensor(
    name: &str,
    dtype: DataType,
    shape: Vec<usize>,
    c: pb::InferTensorContents,
) -> Result<Tensor, Status> {
    let mut raw: Vec<u8> = Vec::new();
    let range = |i: usize, v: i64| {
        bad(format!(
            "input '{name}': element {i} ({v}) is out of range for {dtype}"
        ))
    };
    macro_rules! narrow {
        ($src:expr, $t:ty) => {
            for (i, v) in $src.iter().enumerate() {
                let x = <$t>::try_from(*v).map_err(|_| range(i, *v as i64))?;
                raw.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match dtype {
        DataType::Bool => raw.extend(c.bool_contents.iter().map(|&b| b as u8)),
        DataType::I8 => narrow!(c.int_contents, i8),
        DataType::I16 => narrow!(c.int_contents, i16),
        DataType::I32 => narrow!(c.int_contents, i32),
        DataType::I64 => narrow!(c.int64_contents, i64),
        DataType::U8 => narrow!(c.uint_contents, u8),
        DataType::U16 => narrow!(c.uint_contents, u16),
        DataType::U32 => narrow!(c.uint_contents, u32),
        DataType::U64 => narrow!(c.uint64_contents, u64),
        DataType::F32 => c
            .fp32_contents
            .iter()
            .for_each(|v| raw.extend_from_slice(&v.to_le_bytes())),
        DataType::F64 => c
            .fp64_contents
            .iter()
            .for_each(|v| raw.extend_from_slice(&v.to_le_bytes())),
        DataType::F16 | DataType::BF16 => {
            return Err(bad(format!(
                "input '{name}': {dtype} has no typed contents field; send it in raw_input_contents"
            )));
        }
        DataType::Bytes => {
            return Tensor::new(dtype, shape, TensorData::Bytes(c.bytes_contents))
                .map_err(|e| bad(format!("input '{name}': {e}")));
        }
    }
    Tensor::new(dtype, shape, TensorData::Raw(Bytes::from(raw)))
        .map_err(|e| bad(format!("input '{name}': {e}")))
}

/// Converts an engine response to gRPC, every output as raw contents.
pub fn encode_infer(resp: InferResponse) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut raw = Vec::with_capacity(resp.outputs.len());
    for o in resp.outputs {
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name: o.name,
            datatype: o.tensor.dtype().as_str().to_string(),
            shape: o.tensor.shape().iter().map(|&d| d as i64).collect(),
            parameters: Default::default(),
            contents: None,
        });
        raw.push(o.tensor.to_wire_bytes());
    }
    pb::ModelInferResponse {
        model_name: resp.model_name,
        model_version: resp.model_version.to_string(),
        id: resp.id,
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

fn dt_enum(d: DataType) -> i32 {
    pb::DataType::from_str_name(d.config_name())
        .map(|d| d as i32)
        .unwrap_or(0)
}

/// Converts the engine's config into the protocol's `ModelConfig` message.
pub fn config_to_pb(c: &ModelConfig) -> pb::ModelConfig {
    use pb::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let reshape = |r: &Option<cfg::Reshape>| {
        r.as_ref().map(|r| pb::ModelTensorReshape {
            shape: r.shape.clone(),
        })
    };
    let policy = match &c.version_policy {
        cfg::VersionPolicy::Latest { num_versions } => PolicyChoice::Latest(Latest {
            num_versions: *num_versions,
        }),
        cfg::VersionPolicy::All {} => PolicyChoice::All(All {}),
        cfg::VersionPolicy::Specific { versions } => PolicyChoice::Specific(Specific {
            versions: versions.iter().map(|&v| v as i64).collect(),
        }),
    };
    let queue = |q: &cfg::QueuePolicy| pb::ModelQueuePolicy {
        timeout_action: match q.timeout_action {
            cfg::TimeoutAction::Reject => 0,
            cfg::TimeoutAction::Delay => 1,
        },
        default_timeout_microseconds: q.default_timeout_microseconds,
        allow_timeout_override: q.allow_timeout_override,
        max_queue_size: q.max_queue_size,
    };
    let scheduling = if let Some(d) = &c.dynamic_batching {
        Some(pb::model_config::SchedulingChoice::DynamicBatching(
            pb::ModelDynamicBatching {
                preferred_batch_size: d.preferred_batch_size.iter().map(|&v| v as i32).collect(),
                max_queue_delay_microseconds: d.max_queue_delay_microseconds,
                preserve_ordering: d.preserve_ordering,
                priority_levels: d.priority_levels as u64,
                default_priority_level: d.default_priority_level as u64,
                default_queue_policy: d.default_queue_policy.as_ref().map(queue),
                priority_queue_policy: d
                    .priority_queue_policy
                    .iter()
                    .map(|(k, v)| (*k as u64, queue(v)))
                    .collect(),
            },
        ))
    } else {
        c.ensemble_scheduling.as_ref().map(|e| {
            pb::model_config::SchedulingChoice::EnsembleScheduling(pb::ModelEnsembling {
                step: e
                    .step
                    .iter()
                    .map(|s| pb::model_ensembling::Step {
                        model_name: s.model_name.clone(),
                        model_version: s.model_version,
                        input_map: s.input_map.clone().into_iter().collect(),
                        output_map: s.output_map.clone().into_iter().collect(),
                        model_namespace: String::new(),
                    })
                    .collect(),
                ..Default::default()
            })
        })
    };
    pb::ModelConfig {
        name: c.name.clone(),
        platform: c.platform.clone(),
        backend: c.backend.clone(),
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(policy),
        }),
        max_batch_size: c.max_batch_size as i32,
        input: c
            .input
            .iter()
            .map(|i| pb::ModelInput {
                name: i.name.clone(),
                data_type: dt_enum(i.data_type.0),
                dims: i.dims.clone(),
                reshape: reshape(&i.reshape),
                optional: i.optional,
                ..Default::default()
            })
            .collect(),
        output: c
            .output
            .iter()
            .map(|o| pb::ModelOutput {
                name: o.name.clone(),
                data_type: dt_enum(o.data_type.0),
                dims: o.dims.clone(),
                reshape: reshape(&o.reshape),
                label_filename: o.label_filename.clone(),
                ..Default::default()
            })
            .collect(),
        instance_group: c
            .instance_group
            .iter()
            .map(|g| pb::ModelInstanceGroup {
                name: g.name.clone(),
                kind: match g.kind {
                    cfg::InstanceKind::Auto => 0,
                    cfg::InstanceKind::Gpu => 1,
                    cfg::InstanceKind::Cpu => 2,
                    cfg::InstanceKind::Model => 3,
                },
                count: g.count as i32,
                gpus: g.gpus.iter().map(|&x| x as i32).collect(),
                ..Default::default()
            })
            .collect(),
        default_model_filename: c.default_model_filename.clone(),
        parameters: c
            .parameters
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    pb::ModelParameter {
                        string_value: v.string_value.clone(),
                    },
                )
            })
            .collect(),
        scheduling_choice: scheduling,
        optimization: c.optimization.as_ref().map(|o| {
            let accelerators = |list: &[cfg::Accelerator]| {
                list.iter()
                    .map(
                        |a| pb::model_optimization_policy::execution_accelerators::Accelerator {
                            name: a.name.clone(),
                            parameters: a.parameters.clone().into_iter().collect(),
                        },
                    )
                    .collect()
            };
            pb::ModelOptimizationPolicy {
                execution_accelerators: o.execution_accelerators.as_ref().map(|e| {
                    pb::model_optimization_policy::ExecutionAccelerators {
                        gpu_execution_accelerator: accelerators(&e.gpu_execution_accelerator),
                        cpu_execution_accelerator: accelerators(&e.cpu_execution_accelerator),
                    }
                }),
                ..Default::default()
            }
        }),
        ..Default::default()
    }
}

fn stat(d: inferd_core::stats::StatDuration) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

/// Requests one ModelStreamInfer stream may have running at once.
const STREAM_INFLIGHT: usize = 64;

/// The in-band answer to a stream request refused for want of a server-wide slot.
fn refused_in_stream(r: &pb::ModelInferRequest, message: String) -> pb::ModelStreamInferResponse {
    pb::ModelStreamInferResponse {
        error_message: message,
        infer_response: Some(pb::ModelInferResponse {
            model_name: r.model_name.clone(),
            id: r.id.clone(),
            ..Default::default()
        }),
    }
}

/// Answers one request of a stream; errors travel in-band, as the protocol has them.
async fn stream_one(engine: &Engine, r: pb::ModelInferRequest) -> pb::ModelStreamInferResponse {
    let model = r.model_name.clone();
    let id = r.id.clone();
    let err = |message: String| pb::ModelStreamInferResponse {
        error_message: message,
        infer_response: Some(pb::ModelInferResponse {
            model_name: model.clone(),
            id: id.clone(),
            ..Default::default()
        }),
    };
    let (version, ireq) =
        match parse_version(&r.model_version).and_then(|v| Ok((v, decode_infer(r)?))) {
            Ok(x) => x,
            Err(s) => return err(s.message().to_string()),
        };
    match engine.infer(&model, version, ireq).await {
        Ok(resp) => pb::ModelStreamInferResponse {
            error_message: String::new(),
            infer_response: Some(encode_infer(resp)),
        },
        Err(e) => err(e.to_string()),
    }
}

type StreamResult =
    Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse {
            live: self.engine.is_live(),
        }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.engine.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let v = parse_version(&r.version)?;
        let ready = self.engine.is_model_ready(&r.name, v).map_err(status)?;
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "inferd".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: SERVER_EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let info = self
            .engine
            .model_info(&r.name, parse_version(&r.version)?)
            .map_err(status)?;
        let batch = info.config.batches();
        let meta = |name: &str, dt: DataType, dims: &[i64]| {
            let mut shape = if batch { vec![-1] } else { vec![] };
            shape.extend_from_slice(dims);
            pb::model_metadata_response::TensorMetadata {
                name: name.into(),
                datatype: dt.as_str().into(),
                shape,
            }
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: info.name.clone(),
            versions: info.versions.iter().map(|v| v.to_string()).collect(),
            platform: info.config.platform.clone(),
            inputs: info
                .config
                .input
                .iter()
                .map(|i| meta(&i.name, i.data_type.0, &i.dims))
                .collect(),
            outputs: info
                .config
                .output
                .iter()
                .map(|o| meta(&o.name, o.data_type.0, &o.dims))
                .collect(),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let _slot = crate::admission::admit(&self.inflight).map_err(Status::resource_exhausted)?;
        let r = req.into_inner();
        let model = r.model_name.clone();
        let version = parse_version(&r.model_version)?;
        let ireq = decode_infer(r)?;
        let resp = self
            .engine
            .infer(&model, version, ireq)
            .await
            .map_err(status)?;
        Ok(Response::new(encode_infer(resp)))
    }

    type ModelStreamInferStream = StreamResult;

    async fn model_stream_infer(
        &self,
        req: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let mut incoming = req.into_inner();
        let engine = self.engine.clone();
        let inflight = self.inflight.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_INFLIGHT);
        tokio::spawn(async move {
            // Requests on one stream run concurrently (so they can batch together), at most
            // STREAM_INFLIGHT at a time; responses carry the request id and leave as they finish.
            let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(STREAM_INFLIGHT));
            loop {
                let r = match incoming.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let engine = engine.clone();
                let tx = tx.clone();
                // Each request of a stream counts against --max-inflight-requests like any other;
                // one refused is answered in-band and the stream goes on.
                let server_slot = match crate::admission::admit(&inflight) {
                    Ok(slot) => slot,
                    Err(message) => {
                        let _ = tx.send(Ok(refused_in_stream(&r, message))).await;
                        continue;
                    }
                };
                tokio::spawn(async move {
                    let _server_slot = server_slot;
                    let out = stream_one(&engine, r).await;
                    let _ = tx.send(Ok(out)).await;
                    drop(slot);
                });
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn model_config(
        &self,
        req: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = req.into_inner();
        let info = self
            .engine
            .model_info(&r.name, parse_version(&r.version)?)
            .map_err(status)?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(config_to_pb(&info.config)),
        }))
    }

    async fn model_statistics(
        &self,
        req: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = req.into_inner();
        let model = (!r.name.is_empty()).then_some(r.name.as_str());
        let rows = self
            .engine
            .statistics(model, parse_version(&r.version)?)
            .map_err(status)?;
        let model_stats = rows
            .into_iter()
            .map(|(name, v, s)| pb::ModelStatistics {
                name,
                version: v.to_string(),
                last_inference: s.last_inference_ms,
                inference_count: s.inference_count,
                execution_count: s.execution_count,
                inference_stats: Some(pb::InferStatistics {
                    success: stat(s.infer.success),
                    fail: stat(s.infer.fail),
                    queue: stat(s.infer.queue),
                    compute_input: stat(s.infer.compute_input),
                    compute_infer: stat(s.infer.compute_infer),
                    compute_output: stat(s.infer.compute_output),
                    cache_hit: stat(Default::default()),
                    cache_miss: stat(Default::default()),
                }),
                batch_stats: s
                    .batches
                    .iter()
                    .map(|(b, bs)| pb::InferBatchStatistics {
                        batch_size: *b,
                        compute_input: stat(bs.compute_input),
                        compute_infer: stat(bs.compute_infer),
                        compute_output: stat(bs.compute_output),
                    })
                    .collect(),
                memory_usage: vec![],
                response_stats: Default::default(),
            })
            .collect();
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        req: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let r = req.into_inner();
        if !r.repository_name.is_empty() {
            return Err(Status::invalid_argument(format!(
                "unknown repository '{}': inferd serves one repository, leave repository_name empty",
                r.repository_name
            )));
        }
        let rows = self.engine.index(r.ready).await.map_err(status)?;
        Ok(Response::new(pb::RepositoryIndexResponse {
            models: rows
                .into_iter()
                .map(|e| pb::repository_index_response::ModelIndex {
                    name: e.name,
                    version: e.version.map(|v| v.to_string()).unwrap_or_default(),
                    state: e.state.map(|s| s.as_str().to_string()).unwrap_or_default(),
                    reason: e.reason,
                })
                .collect(),
        }))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let r = req.into_inner();
        if let Some(k) = r
            .parameters
            .keys()
            .find(|k| *k == "config" || k.starts_with("file:"))
        {
            return Err(Status::invalid_argument(format!(
                "load parameter '{k}' (config override) is not supported; change the repository instead"
            )));
        }
        self.engine.load_api(&r.model_name).await.map_err(status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let r = req.into_inner();
        self.engine
            .unload_api(&r.model_name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryStatusResponse>, Status> {
        Ok(Response::new(
            pb::SystemSharedMemoryStatusResponse::default(),
        ))
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryRegisterResponse>, Status> {
        Err(Status::unimplemented(
            "system shared memory is not supported by inferd",
        ))
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryUnregisterResponse>, Status> {
        Ok(Response::new(pb::SystemSharedMemoryUnregisterResponse {}))
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryStatusResponse>, Status> {
        Ok(Response::new(pb::CudaSharedMemoryStatusResponse::default()))
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryRegisterResponse>, Status> {
        Err(Status::unimplemented(
            "CUDA shared memory is not supported by inferd",
        ))
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryUnregisterResponse>, Status> {
        Ok(Response::new(pb::CudaSharedMemoryUnregisterResponse {}))
    }

    async fn trace_setting(
        &self,
        _: Request<pb::TraceSettingRequest>,
    ) -> Result<Response<pb::TraceSettingResponse>, Status> {
        Err(Status::unimplemented(
            "trace settings are not supported by inferd",
        ))
    }

    async fn log_settings(
        &self,
        _: Request<pb::LogSettingsRequest>,
    ) -> Result<Response<pb::LogSettingsResponse>, Status> {
        Err(Status::unimplemented(
            "log settings are not supported by inferd",
        ))
    }
}
