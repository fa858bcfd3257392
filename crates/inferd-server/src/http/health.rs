//! Health and readiness, with the bodies the Open Inference Protocol defines (`{"live": true}`,
//! `{"ready": ...}`, `{"name": ..., "ready": ...}`, read by the KServe SDK) and the status
//! codes Triton's clients read (200, or 503 when not).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiResult, HttpState, parse_version};

fn answer(ok: bool, body: Value) -> (StatusCode, Json<Value>) {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `GET /v2/health/live`.
pub(super) async fn live(State(s): State<HttpState>) -> (StatusCode, Json<Value>) {
    let live = s.engine.is_live();
    answer(live, json!({ "live": live }))
}

/// `GET /v2/health/ready`.
pub(super) async fn ready(State(s): State<HttpState>) -> (StatusCode, Json<Value>) {
    let ready = s.engine.is_ready();
    answer(ready, json!({ "ready": ready }))
}

/// `GET /v2/models/{m}/ready`.
pub(super) async fn model_ready(
    State(s): State<HttpState>,
    Path(model): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ready = s.engine.is_model_ready(&model, None)?;
    Ok(answer(ready, json!({ "name": model, "ready": ready })))
}

/// `GET /v2/models/{m}/versions/{v}/ready`.
pub(super) async fn model_ready_v(
    State(s): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let v = parse_version(&version)?;
    let ready = s.engine.is_model_ready(&model, v)?;
    Ok(answer(ready, json!({ "name": model, "ready": ready })))
}
