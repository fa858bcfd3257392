//! Triton's generate extension for decoupled tensor models: `POST .../generate_stream` with the
//! inputs as top-level keys (`{"IN": [1, 2], "DELAY": [0, 0], "WAIT": 0}`; a scalar is a
//! one-element tensor, an array a flat one, datatypes from the model's config) answers each
//! response as a server-sent event of `{"model_name", "model_version", <output>: value}` (one
//! element as a scalar, more as an array). The stream ends after the last response; an error
//! is an event `{"error": "..."}`.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::HttpState;
use super::codec::{decode_request, tensor_json};
use crate::error::ApiError;

/// The KServe v2 request the generate body stands for, checked against the model's inputs.
fn as_infer_body(
    s: &HttpState,
    model: &str,
    version: Option<u64>,
    body: &[u8],
) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    let Value::Object(fields) = v else {
        return Err(ApiError::bad_request(
            "the body must be a JSON object of inputs",
        ));
    };
    let info = s.engine.model_info(model, version)?;
    let mut inputs = Vec::new();
    for spec in &info.config.input {
        let Some(value) = fields.get(&spec.name) else {
            if spec.optional {
                continue;
            }
            return Err(ApiError::bad_request(format!(
                "input '{}' is missing from the body",
                spec.name
            )));
        };
        let data = match value {
            Value::Array(a) => a.clone(),
            scalar => vec![scalar.clone()],
        };
        inputs.push(json!({
            "name": spec.name, "shape": [data.len()],
            "datatype": spec.data_type.0.as_str(), "data": data,
        }));
    }
    for k in fields.keys() {
        if k != "id" && k != "parameters" && info.config.input(k).is_none() {
            return Err(ApiError::bad_request(format!(
                "'{k}' is not an input of model '{model}'"
            )));
        }
    }
    let mut out = Map::new();
    out.insert("inputs".into(), Value::Array(inputs));
    if let Some(id) = fields.get("id") {
        out.insert("id".into(), id.clone());
    }
    if let Some(p) = fields.get("parameters") {
        out.insert("parameters".into(), p.clone());
    }
    Ok(Value::Object(out))
}

/// Streams a decoupled model's responses as server-sent events.
pub(super) async fn stream(
    s: HttpState,
    model: String,
    version: Option<u64>,
    body: &[u8],
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    let infer = as_infer_body(&s, &model, version, body)?;
    let bytes = Bytes::from(infer.to_string());
    let (req, _) = decode_request(&bytes, None, &s.shm).map_err(|e| ApiError::bad_request(e.0))?;
    let mut responses = s.engine.infer_decoupled(&model, version, req)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        // The request counts against --max-inflight-requests until its last event.
        let _slot = slot;
        while let Some(item) = responses.recv().await {
            let event = match item {
                Ok(resp) => {
                    let mut m = Map::new();
                    m.insert("model_name".into(), json!(resp.model_name));
                    m.insert(
                        "model_version".into(),
                        json!(resp.model_version.to_string()),
                    );
                    for o in &resp.outputs {
                        let v = match tensor_json(&o.tensor) {
                            Value::Array(mut a) if a.len() == 1 => a.remove(0),
                            other => other,
                        };
                        m.insert(o.name.clone(), v);
                    }
                    Value::Object(m)
                }
                Err(e) => json!({"error": e.to_string()}),
            };
            if tx
                .send(Ok(Bytes::from(format!("data: {event}\n\n"))))
                .await
                .is_err()
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
