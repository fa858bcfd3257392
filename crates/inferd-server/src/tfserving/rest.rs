//! TF Serving's REST API on a listener of its own (`--tfserving-rest-port`; TF Serving's
//! paths clash with the OpenAI API's `GET /v1/models/{m}`), for every model inferd serves:
//!
//! - `GET /v1/models/{m}[/versions/{v}]`: `model_version_status`, states as TF Serving names
//!   them (START, LOADING, AVAILABLE, UNLOADING, END);
//! - `GET /v1/models/{m}[/versions/{v}]/metadata`: the `serving_default` signature;
//! - `POST /v1/models/{m}[/versions/{v}]:predict`: the row and columnar forms;
//! - `:classify` and `:regress`: refused by name (no model inferd serves has those signatures).
//!
//! Errors are `{"error": "..."}`, 4xx for the client's mistakes.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use inferd_core::engine::VersionState;
use inferd_core::{Engine, InferRequest};
use serde_json::{Value, json};

use super::json::{InputSpec, request, response};
use super::{SIGNATURE, dt_name, signature_shape};

#[derive(Clone)]
struct Tfs {
    engine: Engine,
    max_body: usize,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": msg.into()}))).into_response()
}

fn engine_error(e: &inferd_core::Error) -> Response {
    error(crate::error::http_status(e), e.to_string())
}

/// The router.
pub fn router(engine: Engine, max_body: usize) -> Router {
    Router::new()
        .route("/v1/models/{*rest}", get(get_model).post(post_model))
        .with_state(Tfs { engine, max_body })
}

/// `m`, `m/versions/v`, with an optional `/metadata` or `:verb` suffix.
struct Target {
    model: String,
    version: Option<u64>,
    tail: String,
}

fn target(rest: &str) -> Result<Target, (StatusCode, String)> {
    let (path, verb) = match rest.rsplit_once(':') {
        Some((p, v)) if !v.contains('/') => (p, format!(":{v}")),
        _ => (rest, String::new()),
    };
    let parts: Vec<&str> = path.split('/').collect();
    let (model, version, tail) = match parts.as_slice() {
        [m] => (*m, None, ""),
        [m, "metadata"] => (*m, None, "/metadata"),
        [m, "versions", v] => (*m, Some(*v), ""),
        [m, "versions", v, "metadata"] => (*m, Some(*v), "/metadata"),
        [_, "labels", ..] => {
            return Err((
                StatusCode::NOT_FOUND,
                "version labels are not supported: name the version (/versions/N)".into(),
            ));
        }
        _ => {
            return Err((
                StatusCode::NOT_FOUND,
                format!("no such path: /v1/models/{rest}"),
            ));
        }
    };
    let version = match version {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                format!("version '{v}' is not a number"),
            )
        })?),
    };
    Ok(Target {
        model: model.to_string(),
        version,
        tail: format!("{tail}{verb}"),
    })
}

fn state_name(s: VersionState) -> &'static str {
    match s {
        VersionState::Loading => "LOADING",
        VersionState::Ready => "AVAILABLE",
        VersionState::Unloading => "UNLOADING",
        VersionState::Unavailable => "END",
    }
}

async fn get_model(State(s): State<Tfs>, Path(rest): Path<String>) -> Response {
    let t = match target(&rest) {
        Ok(t) => t,
        Err((status, msg)) => return error(status, msg),
    };
    match t.tail.as_str() {
        "" => status(&s, &t).await,
        "/metadata" => metadata(&s, &t),
        other => error(
            StatusCode::NOT_FOUND,
            format!("GET does not apply to '{other}'"),
        ),
    }
}

async fn status(s: &Tfs, t: &Target) -> Response {
    let index = match s.engine.index(false).await {
        Ok(i) => i,
        Err(e) => return engine_error(&e),
    };
    let rows: Vec<Value> = index
        .iter()
        .filter(|e| e.name == t.model)
        .filter(|e| t.version.is_none() || e.version == t.version)
        .filter_map(|e| {
            let v = e.version?;
            let state = e.state.map(state_name).unwrap_or("START");
            let failed = e.state == Some(VersionState::Unavailable) && !e.reason.is_empty();
            Some(json!({
                "version": v.to_string(),
                "state": state,
                "status": {
                    "error_code": if failed { "UNKNOWN" } else { "OK" },
                    "error_message": if failed { e.reason.as_str() } else { "" },
                },
            }))
        })
        .collect();
    if rows.is_empty() {
        let what = match t.version {
            Some(v) => format!("Could not find version {v} of model {}", t.model),
            None => format!("Could not find any versions of model {}", t.model),
        };
        return error(StatusCode::NOT_FOUND, what);
    }
    axum::Json(json!({"model_version_status": rows})).into_response()
}

fn metadata(s: &Tfs, t: &Target) -> Response {
    let info = match s.engine.model_info(&t.model, t.version) {
        Ok(i) => i,
        Err(e) => return engine_error(&e),
    };
    let cfg = &info.config;
    let batch = cfg.max_batch_size > 0;
    let tensor = |name: &str, dt: inferd_core::DataType, dims: &[i64]| {
        json!({
            "dtype": dt_name(dt),
            "tensor_shape": {
                "dim": signature_shape(batch, dims).iter().map(|d| json!({"size": d.to_string(), "name": ""})).collect::<Vec<_>>(),
                "unknown_rank": false,
            },
            "name": name,
        })
    };
    let inputs: serde_json::Map<String, Value> = cfg
        .input
        .iter()
        .map(|i| (i.name.clone(), tensor(&i.name, i.data_type.0, &i.dims)))
        .collect();
    let outputs: serde_json::Map<String, Value> = cfg
        .output
        .iter()
        .map(|o| (o.name.clone(), tensor(&o.name, o.data_type.0, &o.dims)))
        .collect();
    axum::Json(json!({
        "model_spec": {"name": info.name, "signature_name": "", "version": info.version.to_string()},
        "metadata": {"signature_def": {"signature_def": {
            SIGNATURE: {"inputs": inputs, "outputs": outputs, "method_name": "tensorflow/serving/predict"}
        }}},
    }))
    .into_response()
}

async fn post_model(State(s): State<Tfs>, Path(rest): Path<String>, body: Bytes) -> Response {
    let t = match target(&rest) {
        Ok(t) => t,
        Err((status, msg)) => return error(status, msg),
    };
    match t.tail.as_str() {
        ":predict" => predict(&s, &t, &body).await,
        ":classify" | ":regress" => error(
            StatusCode::BAD_REQUEST,
            format!(
                "model '{}' has no {} signature (inferd serves the predict API for every model)",
                t.model,
                &t.tail[1..]
            ),
        ),
        other => error(
            StatusCode::NOT_FOUND,
            format!("POST does not apply to '{other}'"),
        ),
    }
}

async fn predict(s: &Tfs, t: &Target, body: &[u8]) -> Response {
    if body.len() > s.max_body {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is {} bytes; the limit is {}",
                body.len(),
                s.max_body
            ),
        );
    }
    let body: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
            );
        }
    };
    if let Some(sig) = body.get("signature_name").and_then(|v| v.as_str())
        && !sig.is_empty()
        && sig != SIGNATURE
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "model '{}' has no signature '{sig}' (it serves '{SIGNATURE}')",
                t.model
            ),
        );
    }
    let info = match s.engine.model_info(&t.model, t.version) {
        Ok(i) => i,
        Err(e) => return engine_error(&e),
    };
    let specs: Vec<InputSpec> = info
        .config
        .input
        .iter()
        .map(|i| InputSpec {
            name: i.name.clone(),
            dtype: i.data_type.0,
        })
        .collect();
    let (form, inputs) = match request(&body, &specs) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let req = InferRequest {
        id: String::new(),
        inputs,
        outputs: None,
        parameters: Default::default(),
    };
    match s.engine.infer(&t.model, Some(info.version), req).await {
        Ok(r) => match response(form, &r.outputs) {
            Ok(v) => axum::Json(v).into_response(),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        Err(e) => engine_error(&e),
    }
}
