//! Triton's generate extension for models that generate: `POST /v2/models/{m}[/versions/{v}]/generate`
//! takes `{"text_input": "...", "parameters": {...}}` and answers `{"model_name",
//! "model_version", "text_output"}`; `.../generate_stream` sends the same object per piece of
//! text as server-sent events. Parameters: `max_tokens`, `temperature`, `top_p`, `top_k`,
//! `min_p`, `seed`, `stop` (a string or strings), `ignore_eos`; others are ignored. Errors are
//! KServe's `{"error": "..."}` with a 4xx for the caller's mistakes. Decoupled tensor models
//! stream through `generate_stream` too (see `generate_decoupled.rs`).

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use inferd_core::generate::{GenEvent, GenerateError, GenerateRequest, Prompt, Sampling};
use serde_json::{Map, Value, json};

use super::{HttpState, read_body};
use crate::admission::admit;
use crate::error::ApiError;

fn start_error(e: GenerateError) -> ApiError {
    match e {
        GenerateError::Invalid(_) | GenerateError::ContextLength { .. } => {
            ApiError::bad_request(e.to_string())
        }
        GenerateError::Overloaded(m) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, m),
        GenerateError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
    }
}

fn request(body: &[u8]) -> Result<GenerateRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    let text = v
        .get("text_input")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("'text_input' must be a string"))?;
    let empty = Map::new();
    let p = match v.get("parameters") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "'parameters' must be an object, got {other}"
            )));
        }
    };
    let num = |k: &str, lo: f64, hi: f64, default: f64| -> Result<f64, ApiError> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x.as_f64().filter(|f| (lo..=hi).contains(f)).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "parameter '{k}' must be a number from {lo} to {hi}, got {x}"
                ))
            }),
        }
    };
    let int = |k: &str| -> Result<Option<u64>, ApiError> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_u64().map(Some).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "parameter '{k}' must be a non-negative integer, got {x}"
                ))
            }),
        }
    };
    let stop = match p.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "parameter 'stop' must be a string or a list of strings, got {other}"
            )));
        }
    };
    Ok(GenerateRequest {
        prompt: Prompt::Text(text.to_string()),
        max_tokens: Some(int("max_tokens")?.unwrap_or(128) as usize),
        sampling: Sampling {
            temperature: num("temperature", 0.0, 2.0, 1.0)? as f32,
            top_p: num("top_p", 0.0, 1.0, 1.0)? as f32,
            top_k: int("top_k")?.unwrap_or(0) as usize,
            min_p: num("min_p", 0.0, 1.0, 0.0)? as f32,
            seed: int("seed")?,
            ..Sampling::default()
        },
        stop,
        ignore_eos: p
            .get("ignore_eos")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        logprobs: None,
        constraint: None,
        echo: false,
        prompt_logprobs: None,
        chat: Default::default(),
    })
}

async fn run(
    s: HttpState,
    model: String,
    version: Option<u64>,
    headers: HeaderMap,
    body: Body,
    stream: bool,
) -> Result<Response, ApiError> {
    let body = read_body(body, &s, &headers).await?;
    let _slot = admit(&s.inflight).map_err(ApiError::overloaded)?;
    if s.engine.is_decoupled(&model, version) {
        if !stream {
            return Err(ApiError::bad_request(format!(
                "model '{model}' is decoupled (any number of responses per request): use generate_stream"
            )));
        }
        return super::generate_decoupled::stream(s, model, version, &body, _slot).await;
    }
    let req = request(&body)?;
    s.engine.wait_for_cold_start(&model, version).await;
    let (guard, generator) = s.engine.generator(&model, version)?;
    let v = guard.runner().version().to_string();
    let mut g = generator.start(req).map_err(start_error)?;
    if !stream {
        let mut text = String::new();
        while let Some(e) = g.events.recv().await {
            match e {
                GenEvent::Text { text: t, .. } => text.push_str(&t),
                GenEvent::PromptLogprobs(_) => {}
                GenEvent::Done { .. } => break,
                GenEvent::Failed(m) => {
                    return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m));
                }
            }
        }
        return Ok(axum::Json(
            json!({"model_name": model, "model_version": v, "text_output": text}),
        )
        .into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        let _guard = guard;
        while let Some(e) = g.events.recv().await {
            let out = match e {
                GenEvent::PromptLogprobs(_) => continue,
                GenEvent::Text { text, .. } => {
                    json!({"model_name": model, "model_version": v, "text_output": text})
                }
                GenEvent::Done { finish, .. } => json!({
                    "model_name": model, "model_version": v, "text_output": "",
                    "finish_reason": finish.as_str(),
                }),
                GenEvent::Failed(m) => json!({"error": m}),
            };
            let last = !out["finish_reason"].is_null() || !out["error"].is_null();
            if tx
                .send(Ok(Bytes::from(format!("data: {out}\n\n"))))
                .await
                .is_err()
                || last
            {
                return;
            }
        }
    });
    let mut r = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    Ok(r)
}

fn version(v: &str) -> Result<Option<u64>, ApiError> {
    v.parse()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("version '{v}' is not a number")))
}

/// `POST /v2/models/{m}/generate`.
pub async fn generate(
    State(s): State<HttpState>,
    Path(m): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(s, m, None, headers, body, false)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v2/models/{m}/generate_stream`.
pub async fn generate_stream(
    State(s): State<HttpState>,
    Path(m): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(s, m, None, headers, body, true)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn versioned(
    s: HttpState,
    m: String,
    v: String,
    headers: HeaderMap,
    body: Body,
    stream: bool,
) -> Response {
    let r = match version(&v) {
        Ok(v) => run(s, m, v, headers, body, stream).await,
        Err(e) => Err(e),
    };
    r.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v2/models/{m}/versions/{v}/generate`.
pub async fn generate_v(
    State(s): State<HttpState>,
    Path((m, v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    versioned(s, m, v, headers, body, false).await
}

/// `POST /v2/models/{m}/versions/{v}/generate_stream`.
pub async fn generate_stream_v(
    State(s): State<HttpState>,
    Path((m, v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    versioned(s, m, v, headers, body, true).await
}
