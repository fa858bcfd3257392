//! `inference.GRPCInferenceService`, the gRPC protocol tritonclient speaks.
//!
//! - this file: the service (one method per RPC, streaming included);
//! - [`codec`]: inference requests and responses;
//! - [`config`]: the model config message.

mod codec;
mod config;
mod decoupled;
mod generate;
mod sequence_order;

pub use codec::{decode_infer, encode_infer};
pub use config::config_to_pb;

use std::pin::Pin;

use futures::Stream;
use inferd_core::tensor::DataType;
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
    traffic: std::sync::Arc<crate::traffic::Traffic>,
    shm: std::sync::Arc<crate::shm::SharedMemory>,
}

impl InferenceService {
    /// Wraps an engine; `inflight` caps concurrent inference requests (shared with HTTP);
    /// `traffic` sends requests naming a route to its targets and guards repository changes;
    /// `shm`: the registered shared-memory regions (shared with HTTP).
    pub fn new(
        engine: Engine,
        inflight: std::sync::Arc<tokio::sync::Semaphore>,
        traffic: std::sync::Arc<crate::traffic::Traffic>,
        shm: std::sync::Arc<crate::shm::SharedMemory>,
    ) -> Self {
        InferenceService {
            engine,
            inflight,
            traffic,
            shm,
        }
    }
}

impl InferenceService {
    /// Refuses a mutating call without a valid admin token (`authorization` metadata,
    /// `Bearer ...`): UNAUTHENTICATED without one, PERMISSION_DENIED when wrong.
    fn admin<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let value = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.traffic.auth.admin(value).map_err(|d| match d {
            crate::traffic::auth::Denied::Missing => Status::unauthenticated(d.message()),
            crate::traffic::auth::Denied::Wrong => Status::permission_denied(d.message()),
        })
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
        // Triton's words, which its clients match on.
        Status::invalid_argument(format!(
            "failed to get model version from specified version string '{v}' (expected a non-negative integer)"
        ))
    })
}

fn stat(d: inferd_core::stats::StatDuration) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

/// Requests one ModelStreamInfer stream may have running at once.
const STREAM_INFLIGHT: usize = 64;

/// An in-band error on a stream, naming the request's model and id.
pub(crate) fn in_band(model: &str, id: &str, message: String) -> pb::ModelStreamInferResponse {
    pb::ModelStreamInferResponse {
        error_message: message,
        infer_response: Some(pb::ModelInferResponse {
            model_name: model.to_string(),
            id: id.to_string(),
            ..Default::default()
        }),
    }
}

/// The in-band answer to a stream request refused for want of a server-wide slot.
fn refused_in_stream(r: &pb::ModelInferRequest, message: String) -> pb::ModelStreamInferResponse {
    in_band(&r.model_name, &r.id, message)
}

/// Answers one request of a stream; errors travel in-band, as the protocol has them.
async fn stream_one(
    engine: &Engine,
    shm: &crate::shm::SharedMemory,
    r: pb::ModelInferRequest,
) -> pb::ModelStreamInferResponse {
    let model = r.model_name.clone();
    let id = r.id.clone();
    let err = |message: String| in_band(&model, &id, message);
    let decoded = parse_version(&r.model_version).and_then(|v| {
        let places = codec::shm_outputs(&r, shm)?;
        Ok((v, places, decode_infer(r, shm)?))
    });
    let (version, places, ireq) = match decoded {
        Ok(x) => x,
        Err(s) => return err(s.message().to_string()),
    };
    match engine.infer(&model, version, ireq).await {
        Ok(resp) => {
            let mut out = encode_infer(resp);
            if let Err(s) = codec::apply_shm_outputs(&mut out, &places, shm) {
                return err(s.message().to_string());
            }
            pb::ModelStreamInferResponse {
                error_message: String::new(),
                infer_response: Some(out),
            }
        }
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
        let metadata = req.metadata().clone();
        let r = req.into_inner();
        let model = r.model_name.clone();
        let version = parse_version(&r.model_version)?;
        // A route takes the unversioned calls; its sticky key comes from the metadata entry
        // named by the route's header, else the request parameter of that name.
        let routed = match version {
            None => self.traffic.resolve(&model, &|name| {
                metadata
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .or_else(
                        || match r.parameters.get(name)?.parameter_choice.as_ref()? {
                            pb::infer_parameter::ParameterChoice::StringParam(s) => Some(s.clone()),
                            pb::infer_parameter::ParameterChoice::Int64Param(i) => {
                                Some(i.to_string())
                            }
                            _ => None,
                        },
                    )
            }),
            Some(_) => None,
        };
        let places = codec::shm_outputs(&r, &self.shm)?;
        let ireq = decode_infer(r, &self.shm)?;
        let resp = match &routed {
            None => self.engine.infer(&model, version, ireq).await,
            Some(rt) => {
                let id = metadata.get("x-request-id").and_then(|v| v.to_str().ok());
                self.traffic.infer(&self.engine, rt, ireq, id).await
            }
        }
        .map_err(status)?;
        let target = crate::traffic::view::target_label(&resp.model_name, resp.model_version);
        let mut out = encode_infer(resp);
        codec::apply_shm_outputs(&mut out, &places, &self.shm)?;
        out.parameters.insert(
            "target".into(),
            pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::StringParam(target)),
            },
        );
        Ok(Response::new(out))
    }

    type ModelStreamInferStream = StreamResult;

    async fn model_stream_infer(
        &self,
        req: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let mut incoming = req.into_inner();
        let engine = self.engine.clone();
        let inflight = self.inflight.clone();
        let shm = self.shm.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_INFLIGHT);
        tokio::spawn(async move {
            // Requests on one stream run concurrently (so they can batch together), at most
            // STREAM_INFLIGHT at a time; responses carry the request id and leave as they finish.
            let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(STREAM_INFLIGHT));
            let mut order = sequence_order::SequenceOrder::default();
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
                let shm = shm.clone();
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
                let mut turn = order.turn(&r);
                tokio::spawn(async move {
                    let _server_slot = server_slot;
                    turn.wait().await;
                    // A model that generates streams its text; the others answer once.
                    let generator = parse_version(&r.model_version)
                        .ok()
                        .and_then(|v| engine.generator(&r.model_name, v).ok());
                    match generator {
                        Some((guard, g)) => {
                            let (model, id) = (r.model_name.clone(), r.id.clone());
                            match decode_infer(r, &shm) {
                                Ok(req) => generate::stream(guard, g, model, req, tx).await,
                                Err(s) => {
                                    let msg = in_band(&model, &id, s.message().to_string());
                                    let _ = tx.send(Ok(msg)).await;
                                }
                            }
                        }
                        None => {
                            let decoupled = parse_version(&r.model_version)
                                .is_ok_and(|v| engine.is_decoupled(&r.model_name, v));
                            if decoupled {
                                decoupled::stream(&engine, &shm, r, tx).await;
                            } else {
                                let out = stream_one(&engine, &shm, r).await;
                                let _ = tx.send(Ok(out)).await;
                            }
                        }
                    }
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
                    cache_hit: stat(s.infer.cache_hit),
                    cache_miss: stat(s.infer.cache_miss),
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
        self.admin(&req)?;
        let r = req.into_inner();
        use pb::model_repository_parameter::ParameterChoice as P;
        let mut o = inferd_core::LoadOverride::default();
        for (k, v) in r.parameters {
            if k == "config" {
                let Some(P::StringParam(text)) = v.parameter_choice else {
                    return Err(Status::invalid_argument(
                        "load parameter 'config' must be a string holding the model config as JSON",
                    ));
                };
                o.config_json = Some(text);
            } else if let Some(file) = k.strip_prefix("file:") {
                let Some(P::BytesParam(data)) = v.parameter_choice else {
                    return Err(Status::invalid_argument(format!(
                        "load parameter '{k}' must carry the file's contents as bytes"
                    )));
                };
                o.files.push((file.to_string(), data.to_vec()));
            }
        }
        self.engine
            .load_with(&r.model_name, o)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        self.admin(&req)?;
        let r = req.into_inner();
        self.engine
            .unload_api(&r.model_name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        req: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryStatusResponse>, Status> {
        let name = req.into_inner().name;
        let regions = self
            .shm
            .status((!name.is_empty()).then_some(name.as_str()))
            .map_err(|e| Status::invalid_argument(e.0))?;
        Ok(Response::new(pb::SystemSharedMemoryStatusResponse {
            regions: regions
                .into_iter()
                .map(|r| {
                    let status = pb::system_shared_memory_status_response::RegionStatus {
                        name: r.name.clone(),
                        key: r.key,
                        offset: r.offset,
                        byte_size: r.byte_size,
                    };
                    (r.name, status)
                })
                .collect(),
        }))
    }

    async fn system_shared_memory_register(
        &self,
        req: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryRegisterResponse>, Status> {
        self.admin(&req)?;
        let r = req.into_inner();
        self.shm
            .register(&r.name, &r.key, r.offset, r.byte_size)
            .map_err(|e| Status::invalid_argument(e.0))?;
        Ok(Response::new(pb::SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        req: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryUnregisterResponse>, Status> {
        self.admin(&req)?;
        let name = req.into_inner().name;
        self.shm
            .unregister((!name.is_empty()).then_some(name.as_str()));
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
        req: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryRegisterResponse>, Status> {
        Err(Status::invalid_argument(crate::http::shm::cuda_refusal(
            &req.into_inner().name,
        )))
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
