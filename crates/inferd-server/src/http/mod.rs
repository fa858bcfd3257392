//! KServe v2 / Open Inference Protocol over HTTP, with the Triton extensions clients use
//! (binary tensor data, model configuration, model repository, statistics).
//!
//! - [`codec`]: the inference body (JSON + binary tensor extension).
//! - [`openai`]: OpenAI-compatible `/v1/embeddings` and `/v1/models`.

pub mod codec;
mod drift;
pub mod generate;
mod generate_decoupled;
mod health;
pub mod openai;
pub mod openai_text;
mod raw;
pub mod shm;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use inferd_core::Engine;
use inferd_core::describe::{metadata_json, statistics_json};
use inferd_core::engine::IndexEntry;
use serde_json::{Value, json};

use crate::SERVER_EXTENSIONS;
use crate::admission::admit;
use crate::error::ApiError;
use crate::traffic::admin;

/// Header naming the JSON part's length when binary tensor data follows.
pub const HEADER_LEN: &str = "inference-header-content-length";

/// Response header naming the model version that produced the answer (`MODEL/VERSION`).
pub const TARGET_HEADER: &str = "x-inferd-target";

/// State shared by the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// The engine.
    pub engine: Engine,
    /// Largest accepted request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Largest inference request JSON and raw binary input, in bytes (400 above, Triton's text).
    pub max_input_size: usize,
    /// Inference requests served at once, over HTTP and gRPC together (see [`crate::admission`]);
    /// past it requests are answered 503 once their bodies are in.
    pub inflight: std::sync::Arc<tokio::sync::Semaphore>,
    /// Deadline for a request body, from the moment its handler starts (408 past it).
    pub read_timeout: std::time::Duration,
    /// The metrics page (also on its own listener).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Traffic routes: a request naming a route goes where it sends it.
    pub traffic: std::sync::Arc<crate::traffic::Traffic>,
    /// Registered system shared-memory regions (shared with gRPC).
    pub shm: std::sync::Arc<crate::shm::SharedMemory>,
    /// The console's live series and the signals it shows.
    pub console: std::sync::Arc<crate::ui::Console>,
}

type ApiResult<T> = Result<T, ApiError>;

/// Builds the HTTP router. With `admin_here` false (an admin listener of its own, see
/// [`admin_router`]) the admin endpoints answer 404 here, saying where they are.
pub fn router(state: HttpState, admin_here: bool) -> Router {
    let r = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(health::live))
        .route("/v2/health/ready", get(health::ready))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/feedback", post(admin::feedback))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{model}/ready", get(health::model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(health::model_ready_v),
        )
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config_v),
        )
        .route("/v2/models/{model}/stats", get(model_stats))
        .route("/v2/models/{model}/drift", get(drift::model_drift))
        .route(
            "/v2/models/{model}/drift/reference",
            get(drift::model_reference),
        )
        .route(
            "/v2/models/{model}/versions/{version}/drift/reference",
            get(drift::version_reference),
        )
        .route(
            "/v2/models/{model}/versions/{version}/drift",
            get(drift::version_drift),
        )
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(model_stats_v),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .route("/v2/models/{model}/generate", post(generate::generate))
        .route(
            "/v2/models/{model}/generate_stream",
            post(generate::generate_stream),
        )
        .route(
            "/v2/models/{model}/versions/{version}/generate",
            post(generate::generate_v),
        )
        .route(
            "/v2/models/{model}/versions/{version}/generate_stream",
            post(generate::generate_stream_v),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/systemsharedmemory/status", get(shm::status_all))
        .route(
            "/v2/systemsharedmemory/region/{name}/status",
            get(shm::status),
        )
        .route(
            "/v2/systemsharedmemory/region/{name}/register",
            post(shm::register),
        )
        .route(
            "/v2/systemsharedmemory/region/{name}/unregister",
            post(shm::unregister),
        )
        .route(
            "/v2/systemsharedmemory/unregister",
            post(shm::unregister_all),
        )
        .route("/v2/cudasharedmemory/status", get(shm::cuda_status))
        .route(
            "/v2/cudasharedmemory/region/{name}/status",
            get(shm::cuda_status),
        )
        .route(
            "/v2/cudasharedmemory/region/{name}/register",
            post(shm::cuda_register),
        )
        .route(
            "/v2/cudasharedmemory/region/{name}/unregister",
            post(shm::cuda_unregister),
        )
        .route(
            "/v2/cudasharedmemory/unregister",
            post(shm::cuda_unregister),
        )
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/completions", post(openai_text::completions))
        .route("/v1/chat/completions", post(openai_text::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{model}", get(openai::model));
    let r = if admin_here {
        r.merge(admin_routes()).merge(crate::ui::routes())
    } else {
        r.route("/v2/routes", any(admin_elsewhere))
            .route("/ui", any(admin_elsewhere))
            .route("/ui/{*rest}", any(admin_elsewhere))
            .route("/v2/routes/{*rest}", any(admin_elsewhere))
            .route("/v2/repository/models/{*rest}", any(admin_elsewhere))
    };
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The admin endpoints: routes and their actions and reports, feedback, and the repository's
/// load/unload.
fn admin_routes() -> Router<HttpState> {
    Router::new()
        .route("/v2/routes", get(admin::list_routes))
        .route(
            "/v2/routes/{route}",
            get(admin::get_route)
                .put(admin::put_route)
                .delete(admin::delete_route),
        )
        .route(
            "/v2/routes/{route}/{action}",
            get(admin::route_report).post(admin::route_action),
        )
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
}

/// The admin listener's router (`--admin-port`): the admin endpoints, feedback and liveness.
pub fn admin_router(state: HttpState) -> Router {
    admin_routes()
        .merge(crate::ui::routes())
        .route("/v2/feedback", post(admin::feedback))
        .route("/v2/health/live", get(health::live))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn admin_elsewhere(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "{} {} is served on the admin listener (--admin-port), not on this port",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}

pub(crate) fn parse_version(v: &str) -> ApiResult<Option<u64>> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<u64>().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "invalid model version '{v}': expected a non-negative integer"
        ))
    })
}

/// Reads a request body of at most `s.max_body_bytes` (413 past it) that must be complete within
/// `s.read_timeout` (408 past it; both answers close the connection).
pub(crate) async fn read_body(body: Body, s: &HttpState, headers: &HeaderMap) -> ApiResult<Bytes> {
    let secs = s.read_timeout.as_secs_f64();
    tokio::time::timeout(
        s.read_timeout,
        read_body_limited(body, s.max_body_bytes, headers),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {secs} s (--http-read-timeout-secs)"),
        ))
    })
}

async fn read_body_limited(body: Body, limit: usize, headers: &HeaderMap) -> ApiResult<Bytes> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// The same page as the metrics listener's.
async fn metrics_page(State(s): State<HttpState>) -> Response {
    s.metrics.response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "inferd",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": SERVER_EXTENSIONS,
    }))
}

async fn model_metadata(
    State(s): State<HttpState>,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(metadata_json(&s.engine.model_info(&model, None)?)))
}

async fn model_metadata_v(
    State(s): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(metadata_json(
        &s.engine.model_info(&model, parse_version(&version)?)?,
    )))
}

async fn model_config(
    State(s): State<HttpState>,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    let info = s.engine.model_info(&model, None)?;
    Ok(Json(
        serde_json::to_value(&*info.config).unwrap_or(Value::Null),
    ))
}

async fn model_config_v(
    State(s): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let info = s.engine.model_info(&model, parse_version(&version)?)?;
    Ok(Json(
        serde_json::to_value(&*info.config).unwrap_or(Value::Null),
    ))
}

async fn all_stats(State(s): State<HttpState>) -> ApiResult<Json<Value>> {
    Ok(Json(statistics_json(&s.engine.statistics(None, None)?)))
}

async fn model_stats(
    State(s): State<HttpState>,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(statistics_json(
        &s.engine.statistics(Some(&model), None)?,
    )))
}

async fn model_stats_v(
    State(s): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(statistics_json(
        &s.engine
            .statistics(Some(&model), parse_version(&version)?)?,
    )))
}

async fn infer(
    State(s): State<HttpState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    do_infer(s, model, None, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn infer_v(
    State(s): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match parse_version(&version) {
        Ok(v) => do_infer(s, model, v, headers, body)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    }
}

async fn do_infer(
    s: HttpState,
    model: String,
    version: Option<u64>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let header_len = match headers.get(HEADER_LEN) {
        None => None,
        Some(v) => Some(raw::parse_header_len(v.to_str().unwrap_or("(not text)"))?),
    };
    if let Some(enc) = headers.get(header::CONTENT_ENCODING)
        && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {enc:?} is not supported; send the request uncompressed"),
        ));
    }
    let body = read_body(body, &s, &headers).await?;
    let _slot = admit(&s.inflight).map_err(ApiError::overloaded)?;
    let header_len = header_len
        .map(|n| raw::header_in_body(n, body.len()))
        .transpose()?;
    let (req, enc) = if header_len == Some(0) {
        // A raw binary request: the body is the model's single input.
        let cfg = s.engine.model_info(&model, version)?.config;
        raw::decode_raw(&model, &cfg, body, s.max_input_size)?
    } else {
        raw::check_json(&body[..header_len.unwrap_or(body.len())], s.max_input_size)?;
        let decoded = codec::decode_request(&body, header_len, &s.shm)
            .map_err(|e| ApiError::bad_request(e.0))?;
        drop(body);
        decoded
    };
    // A route takes the unversioned calls (its sticky key from the header the route names,
    // else the request parameter of that name); `/versions/N/` goes direct.
    let routed = match version {
        None => s.traffic.resolve(&model, &|name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| crate::traffic::param_key(&req.parameters, name))
        }),
        Some(_) => None,
    };
    let resp = match &routed {
        None => s.engine.infer(&model, version, req).await?,
        Some(r) => {
            let id = headers
                .get(&crate::request_id::REQUEST_ID)
                .and_then(|v| v.to_str().ok());
            s.traffic.infer(&s.engine, r, req, id).await?
        }
    };
    codec::write_shm_outputs(&resp, &enc, &s.shm).map_err(|e| ApiError::bad_request(e.0))?;
    let out = codec::encode_response(&resp, &enc);
    let mut r = Response::new(Body::from(out.body));
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&crate::traffic::view::target_label(
        &resp.model_name,
        resp.model_version,
    )) {
        h.insert(TARGET_HEADER, v);
    }
    match out.header_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(HEADER_LEN, HeaderValue::from(n));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(r)
}

fn index_json(rows: &[IndexEntry]) -> Value {
    Value::Array(
        rows.iter()
            .map(|e| {
                let mut m = serde_json::Map::new();
                m.insert("name".into(), Value::String(e.name.clone()));
                if let Some(v) = e.version {
                    m.insert("version".into(), Value::String(v.to_string()));
                }
                if let Some(st) = e.state {
                    m.insert("state".into(), Value::String(st.as_str().into()));
                }
                if !e.reason.is_empty() {
                    m.insert("reason".into(), Value::String(e.reason.clone()));
                }
                Value::Object(m)
            })
            .collect(),
    )
}

async fn json_body(body: Body, s: &HttpState, headers: &HeaderMap) -> ApiResult<Value> {
    let bytes = read_body(body, s, headers).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

async fn repository_index(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let req = json_body(body, &s, &headers).await?;
    let ready = match req.get("ready") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        // Triton's words, which its tests match on.
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid value for 'ready': expected a boolean, got {other}"
            )));
        }
    };
    Ok(Json(index_json(&s.engine.index(ready).await?)))
}

async fn repository_load(
    State(s): State<HttpState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    admin::admin(&s, &headers)?;
    let req = json_body(body, &s, &headers).await?;
    let mut o = inferd_core::LoadOverride::default();
    if let Some(params) = req.get("parameters").and_then(Value::as_object) {
        for (k, v) in params {
            if k == "config" {
                let Some(text) = v.as_str() else {
                    return Err(ApiError::bad_request(
                        "load parameter 'config' must be a string holding the model config as JSON",
                    ));
                };
                o.config_json = Some(text.to_string());
            } else if let Some(file) = k.strip_prefix("file:") {
                use base64::Engine as _;
                let data = v
                    .as_str()
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "load parameter '{k}' must be the file's contents in base64"
                        ))
                    })?;
                o.files.push((file.to_string(), data));
            }
        }
    }
    s.engine.load_with(&model, o).await?;
    Ok(Json(json!({})))
}

async fn repository_unload(
    State(s): State<HttpState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    admin::admin(&s, &headers)?;
    let _ = json_body(body, &s, &headers).await?;
    s.engine.unload_api(&model).await?;
    Ok(Json(json!({})))
}
