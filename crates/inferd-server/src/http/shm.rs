//! Triton's shared-memory endpoints over HTTP: `/v2/systemsharedmemory/...` (register, status,
//! unregister; the regions themselves are in [`crate::shm`]) and `/v2/cudasharedmemory/...`,
//! present so clients get a precise answer: this build has no CUDA shared memory.
//!
//! Registering and unregistering open and close files of the host: with `--admin-token` they
//! need the token, as repository load does (status stays open).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::{ApiResult, HttpState, admin, json_body};
use crate::error::ApiError;

fn field_u64(body: &Value, key: &str) -> ApiResult<u64> {
    match body.get(key) {
        None => Ok(0),
        Some(v) => v.as_u64().ok_or_else(|| {
            ApiError::bad_request(format!("'{key}' must be a non-negative integer, got {v}"))
        }),
    }
}

/// `POST /v2/systemsharedmemory/region/{name}/register` with `{"key", "offset", "byte_size"}`.
pub(super) async fn register(
    State(s): State<HttpState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    admin::admin(&s, &headers)?;
    let b = json_body(body, &s, &headers).await?;
    let Some(key) = b.get("key").and_then(Value::as_str) else {
        return Err(ApiError::bad_request(
            "register needs 'key' (the shared-memory segment's name, '/...')",
        ));
    };
    let offset = field_u64(&b, "offset")?;
    let byte_size = field_u64(&b, "byte_size")?;
    s.shm
        .register(&name, key, offset, byte_size)
        .map_err(|e| ApiError::bad_request(e.0))?;
    Ok(Json(json!({})))
}

/// `POST /v2/systemsharedmemory/region/{name}/unregister`.
pub(super) async fn unregister(
    State(s): State<HttpState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    admin::admin(&s, &headers)?;
    s.shm.unregister(Some(&name));
    Ok(Json(json!({})))
}

/// `POST /v2/systemsharedmemory/unregister`: every region.
pub(super) async fn unregister_all(
    State(s): State<HttpState>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    admin::admin(&s, &headers)?;
    s.shm.unregister(None);
    Ok(Json(json!({})))
}

/// `GET /v2/systemsharedmemory/status`.
pub(super) async fn status_all(State(s): State<HttpState>) -> ApiResult<Json<Value>> {
    let all = s.shm.status(None).map_err(|e| ApiError::bad_request(e.0))?;
    Ok(Json(json!(all)))
}

/// `GET /v2/systemsharedmemory/region/{name}/status`.
pub(super) async fn status(
    State(s): State<HttpState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let one = s
        .shm
        .status(Some(&name))
        .map_err(|e| ApiError::bad_request(e.0))?;
    Ok(Json(json!(one)))
}

/// `GET /v2/cudasharedmemory/status` (and a region's): none are ever registered.
pub(super) async fn cuda_status() -> Json<Value> {
    Json(json!([]))
}

/// `POST /v2/cudasharedmemory/region/{name}/register`: refused, with why.
pub(super) async fn cuda_register(Path(name): Path<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, cuda_refusal(&name))
}

/// `POST /v2/cudasharedmemory/.../unregister`: nothing to do.
pub(super) async fn cuda_unregister() -> Json<Value> {
    Json(json!({}))
}

/// Why a CUDA shared-memory region cannot be registered here.
pub fn cuda_refusal(name: &str) -> String {
    format!(
        "CUDA shared-memory region '{name}' cannot be registered: this inferd build runs models on the CPU and has no CUDA IPC; use system shared memory (/v2/systemsharedmemory) instead"
    )
}
