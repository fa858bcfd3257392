//! OpenAI-compatible endpoints: `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/{id}`.
//!
//! A model serves `/v1/embeddings` when its config has exactly one BYTES input (one text per
//! row) and an FP32 output — `EMBEDDING` when there is one of that name, else the first FP32
//! output. When it also has an INT64/INT32 output `TOKEN_COUNT`, that fills `usage`. Texts are
//! sent to the engine in requests of at most `max_batch_size` rows, all at once, so they batch
//! with other traffic. Errors use OpenAI's body, `{"error": {"message", "type", "param", "code"}}`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use inferd_core::backend::NamedTensor;
use inferd_core::config::ModelConfig;
use inferd_core::request::InferRequest;
use inferd_core::tensor::{DataType, Tensor, TensorData};
use serde::Serialize;
use serde_json::{Value, json};

use super::{HttpState, read_body};
use crate::admission::admit;
use crate::error::ApiError;

/// Most inputs one embeddings request may carry (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// Engine requests one embeddings request keeps queued at once, per model instance (at least
/// [`MIN_CHUNKS_IN_FLIGHT`]): enough to keep every instance fed with full batches, few enough
/// that one large request cannot fill the model's queue by itself.
const CHUNKS_PER_INSTANCE: usize = 2;
/// See [`CHUNKS_PER_INSTANCE`].
const MIN_CHUNKS_IN_FLIGHT: usize = 4;

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
    code: Option<&'static str>,
    retry_after: Option<u32>,
}

impl OpenAiError {
    /// A 400 naming the request field at fault.
    pub(super) fn bad(message: impl Into<String>, param: &'static str) -> Self {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param),
            code: None,
            retry_after: None,
        }
    }
}

impl OpenAiError {
    /// An error with its own status and OpenAI `code`.
    pub(super) fn with_code(
        status: StatusCode,
        message: impl Into<String>,
        param: Option<&'static str>,
        code: Option<&'static str>,
    ) -> Self {
        OpenAiError {
            status,
            message: message.into(),
            param,
            code,
            retry_after: (status == StatusCode::TOO_MANY_REQUESTS).then_some(1),
        }
    }

    pub(super) fn internal(message: String) -> Self {
        OpenAiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
            param: None,
            code: None,
            retry_after: None,
        }
    }
}

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        OpenAiError {
            code: (e.status == StatusCode::NOT_FOUND).then_some("model_not_found"),
            status: e.status,
            message: e.message,
            param: None,
            retry_after: e.retry_after,
        }
    }
}

impl From<inferd_core::Error> for OpenAiError {
    fn from(e: inferd_core::Error) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            s if s.is_server_error() => {
                tracing::warn!(status = %s, "{}", self.message);
                "server_error"
            }
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            _ => "invalid_request_error",
        };
        let body = json!({"error": {
            "message": self.message,
            "type": kind,
            "param": self.param,
            "code": self.code,
        }});
        let mut resp = (self.status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

pub(super) type OaResult<T> = Result<T, OpenAiError>;

/// How an embedding model's tensors are laid out, from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingModel {
    /// The BYTES input.
    pub input: String,
    /// Whether the input has a trailing `[1]` dimension (one text per row, `[n, 1]`).
    pub row_dim: bool,
    /// The FP32 output.
    pub output: String,
    /// Its width, when fixed.
    pub dim: Option<usize>,
    /// The token-count output, if any.
    pub token_count: Option<String>,
    /// Rows per engine request (the model's `max_batch_size`, or all when it does not batch).
    pub rows_per_request: usize,
}

/// Reads the embedding layout from a config, or says why the model is not an embedding model.
pub fn embedding_model(cfg: &ModelConfig) -> Result<EmbeddingModel, String> {
    let bytes_inputs: Vec<_> = cfg
        .input
        .iter()
        .filter(|i| i.data_type.0 == DataType::Bytes)
        .collect();
    let [input] = bytes_inputs.as_slice() else {
        return Err(format!(
            "model '{}' is not an embedding model: it needs exactly one BYTES (text) input",
            cfg.name
        ));
    };
    if cfg
        .input
        .iter()
        .any(|i| i.name != input.name && !i.optional)
    {
        // Other required inputs cannot be filled from an OpenAI request.
        return Err(format!(
            "model '{}' is not an embedding model: it has required inputs besides the text",
            cfg.name
        ));
    }
    let fp32: Vec<_> = cfg
        .output
        .iter()
        .filter(|o| o.data_type.0 == DataType::F32)
        .collect();
    let output = fp32
        .iter()
        .find(|o| o.name == "EMBEDDING")
        .or_else(|| fp32.first())
        .ok_or_else(|| {
            format!(
                "model '{}' is not an embedding model: it has no FP32 output",
                cfg.name
            )
        })?;
    let dim = match output.dims.last() {
        Some(&d) if d > 0 => Some(d as usize),
        _ => None,
    };
    let token_count = cfg
        .output
        .iter()
        .find(|o| o.name == "TOKEN_COUNT" && matches!(o.data_type.0, DataType::I64 | DataType::I32))
        .map(|o| o.name.clone());
    let row_dim = if cfg.batches() {
        matches!(input.dims.as_slice(), [1] | [-1])
    } else {
        matches!(input.dims.as_slice(), [_, 1] | [_, -1])
    };
    Ok(EmbeddingModel {
        input: input.name.clone(),
        row_dim,
        output: output.name.clone(),
        dim,
        token_count,
        rows_per_request: if cfg.batches() {
            cfg.max_batch_size as usize
        } else {
            MAX_INPUTS
        },
    })
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Item {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<Item>,
    model: String,
    usage: Usage,
}

/// The texts of an `input` field.
fn texts(input: Option<&Value>) -> OaResult<Vec<String>> {
    let list = match input {
        None | Some(Value::Null) => {
            return Err(OpenAiError::bad("'input' is required", "input"));
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(OpenAiError::bad(
                    "'input' is an empty array; send at least one text",
                    "input",
                ));
            }
            if items.len() > MAX_INPUTS {
                return Err(OpenAiError::bad(
                    format!(
                        "'input' has {} items; at most {MAX_INPUTS} per request",
                        items.len()
                    ),
                    "input",
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, v) in items.iter().enumerate() {
                match v {
                    Value::String(s) => out.push(s.clone()),
                    Value::Number(_) | Value::Array(_) => {
                        return Err(OpenAiError::bad(
                            format!(
                                "'input[{i}]': token arrays are not supported; send the text as a string"
                            ),
                            "input",
                        ));
                    }
                    other => {
                        return Err(OpenAiError::bad(
                            format!("'input[{i}]' must be a string, got {other}"),
                            "input",
                        ));
                    }
                }
            }
            out
        }
        Some(other) => {
            return Err(OpenAiError::bad(
                format!("'input' must be a string or an array of strings, got {other}"),
                "input",
            ));
        }
    };
    if let Some(i) = list.iter().position(String::is_empty) {
        return Err(OpenAiError::bad(
            if list.len() == 1 {
                "'input' is an empty string".to_string()
            } else {
                format!("'input[{i}]' is an empty string")
            },
            "input",
        ));
    }
    Ok(list)
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        s.push(T[(n >> 18) as usize & 63] as char);
        s.push(T[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(s): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    do_embeddings(s, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn do_embeddings(s: HttpState, headers: HeaderMap, body: Body) -> OaResult<Response> {
    let body = read_body(body, &s, &headers).await?;
    let _slot = admit(&s.inflight).map_err(ApiError::overloaded)?;
    let req: Value = serde_json::from_slice(&body)
        .map_err(|e| OpenAiError::bad(format!("malformed JSON body: {e}"), "body"))?;
    let Value::Object(req) = req else {
        return Err(OpenAiError::bad(
            "the request body must be a JSON object",
            "body",
        ));
    };
    let model = match req.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        None | Some(Value::Null) => return Err(OpenAiError::bad("'model' is required", "model")),
        Some(other) => {
            return Err(OpenAiError::bad(
                format!("'model' must be a non-empty string, got {other}"),
                "model",
            ));
        }
    };
    let base64_out = match req.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return Err(OpenAiError::bad(
                format!("'encoding_format' must be \"float\" or \"base64\", got {other}"),
                "encoding_format",
            ));
        }
    };
    let texts = texts(req.get("input"))?;
    // A route named in `model` picks the target (sticky by its header, else OpenAI's `user`).
    let routed = s.traffic.resolve(&model, &|name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.get("user").and_then(Value::as_str).map(str::to_string))
    });
    let (target, target_version) = match &routed {
        Some(r) => (r.decision.target.model.clone(), r.decision.target.version),
        None => (model.clone(), None),
    };
    let started = std::time::Instant::now();
    let info = s.engine.model_info(&target, target_version)?;
    let layout = embedding_model(&info.config).map_err(|m| OpenAiError::bad(m, "model"))?;
    match req.get("dimensions") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let want = v.as_u64().filter(|&d| d > 0).ok_or_else(|| {
                OpenAiError::bad(
                    format!("'dimensions' must be a positive integer, got {v}"),
                    "dimensions",
                )
            })?;
            if layout.dim != Some(want as usize) {
                return Err(OpenAiError::bad(
                    format!(
                        "model '{model}' produces {}-dimensional embeddings and cannot shorten them; omit 'dimensions' or set it to that",
                        layout.dim.map_or("variable".to_string(), |d| d.to_string())
                    ),
                    "dimensions",
                ));
            }
        }
    }
    // Ask the engine in chunks the model accepts, all at once, so the chunks batch.
    let version = info.version;
    let per = layout.rows_per_request.max(1);
    let mut outputs = vec![layout.output.clone()];
    outputs.extend(layout.token_count.clone());
    let calls: Vec<_> = texts
        .chunks(per)
        .map(|chunk| {
            let items: Vec<Bytes> = chunk.iter().map(|t| Bytes::from(t.clone())).collect();
            let shape = if layout.row_dim {
                vec![items.len(), 1]
            } else {
                vec![items.len()]
            };
            let tensor = Tensor::new(DataType::Bytes, shape, TensorData::Bytes(items));
            let engine = s.engine.clone();
            let model = target.clone();
            let input = layout.input.clone();
            let outputs = outputs.clone();
            async move {
                let tensor = tensor.map_err(|e| OpenAiError::bad(e.to_string(), "input"))?;
                let req = InferRequest {
                    id: String::new(),
                    inputs: vec![NamedTensor {
                        name: input,
                        tensor,
                    }],
                    outputs: Some(outputs),
                    parameters: Default::default(),
                };
                engine
                    .infer(&model, Some(version), req)
                    .await
                    .map_err(OpenAiError::from)
            }
        })
        .collect();
    // A bounded number of chunks queue at once (answers kept in order), so a 2048-text request
    // to a model that batches a few rows cannot fill the model's queue by itself.
    let in_flight = (CHUNKS_PER_INSTANCE * info.config.instance_count()).max(MIN_CHUNKS_IN_FLIGHT);
    let responses: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffered(
        futures::stream::iter(calls),
        in_flight,
    ))
    .await;
    if let Some(r) = &routed {
        let failed = responses
            .iter()
            .any(|r| r.as_ref().is_err_and(|e| e.status.is_server_error()));
        let id = headers
            .get(&crate::request_id::REQUEST_ID)
            .and_then(|v| v.to_str().ok());
        s.traffic
            .served(r, started.elapsed().as_secs_f64(), failed, id);
    }
    let mut data = Vec::with_capacity(texts.len());
    let mut tokens = 0u64;
    for resp in responses {
        let resp = resp?;
        let emb = resp
            .outputs
            .iter()
            .find(|o| o.name == layout.output)
            .ok_or_else(|| {
                OpenAiError::internal(format!("model '{model}' returned no '{}'", layout.output))
            })?;
        let (Some(raw), Some(values)) = (emb.tensor.raw(), emb.tensor.to_f32_vec()) else {
            return Err(OpenAiError::internal(format!(
                "'{}' is not FP32",
                layout.output
            )));
        };
        let width: usize = emb.tensor.shape().iter().skip(1).product();
        if width == 0 {
            return Err(OpenAiError::internal(format!(
                "'{}' has shape {:?}: no embedding per row",
                layout.output,
                emb.tensor.shape()
            )));
        }
        for (row, floats) in raw.chunks_exact(width * 4).zip(values.chunks_exact(width)) {
            let embedding = if base64_out {
                Vector::Base64(base64(row))
            } else {
                Vector::Float(floats.to_vec())
            };
            data.push(Item {
                object: "embedding",
                index: data.len(),
                embedding,
            });
        }
        if let Some(name) = &layout.token_count
            && let Some(t) = resp.outputs.iter().find(|o| &o.name == name)
        {
            tokens += t
                .tensor
                .to_i64_vec()
                .map(|v| v.iter().map(|&c| c.max(0) as u64).sum::<u64>())
                .unwrap_or(0);
        }
    }
    if data.len() != texts.len() {
        return Err(OpenAiError::internal(format!(
            "model '{model}' returned {} embeddings for {} inputs",
            data.len(),
            texts.len()
        )));
    }
    let out = EmbeddingsResponse {
        object: "list",
        data,
        model,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    let body = serde_json::to_vec(&out).map_err(|e| OpenAiError::internal(e.to_string()))?;
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&crate::traffic::view::target_label(&target, version)) {
        r.headers_mut().insert(super::TARGET_HEADER, v);
    }
    Ok(r)
}

fn model_object(name: &str) -> Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "inferd"})
}

/// `GET /v1/models`: the ready models.
pub async fn models(State(s): State<HttpState>) -> Response {
    match s.engine.index(true).await {
        Ok(rows) => {
            let mut names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
            names.dedup();
            let data: Vec<Value> = names.into_iter().map(model_object).collect();
            axum::Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(e) => OpenAiError::from(e).into_response(),
    }
}

/// `GET /v1/models/{id}`.
pub async fn model(State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    match s.engine.model_info(&id, None) {
        Ok(_) => axum::Json(model_object(&id)).into_response(),
        Err(e) => OpenAiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(base64(plain.as_bytes()), enc, "{plain}");
        }
    }

    #[test]
    fn input_forms_and_their_errors() {
        assert_eq!(texts(Some(&json!("a"))).unwrap(), vec!["a"]);
        assert_eq!(texts(Some(&json!(["a", "b"]))).unwrap(), vec!["a", "b"]);
        let msg = |v: Value| texts(Some(&v)).unwrap_err().message;
        assert!(msg(json!([])).contains("empty array"));
        assert!(msg(json!("")).contains("empty string"));
        assert!(msg(json!(["a", ""])).contains("input[1]"));
        assert!(msg(json!([1, 2])).contains("token arrays"));
        assert!(msg(json!([[1, 2]])).contains("token arrays"));
        assert!(msg(json!(["a", null])).contains("input[1]"));
        assert!(msg(json!(7)).contains("string or an array"));
        assert!(texts(None).unwrap_err().message.contains("required"));
        let many = Value::Array(vec![json!("x"); MAX_INPUTS + 1]);
        assert!(msg(many).contains("at most"));
    }

    #[test]
    fn embedding_layout_from_config() {
        let cfg: ModelConfig = serde_json::from_value(json!({
            "name": "m", "max_batch_size": 8,
            "input": [{"name": "TEXT", "data_type": "TYPE_STRING", "dims": [1]}],
            "output": [
                {"name": "TOKEN_COUNT", "data_type": "TYPE_INT64", "dims": [1]},
                {"name": "EMBEDDING", "data_type": "TYPE_FP32", "dims": [384]}
            ]
        }))
        .unwrap();
        let l = embedding_model(&cfg).unwrap();
        assert_eq!(l.input, "TEXT");
        assert_eq!(l.output, "EMBEDDING");
        assert_eq!(l.dim, Some(384));
        assert!(l.row_dim);
        assert_eq!(l.token_count.as_deref(), Some("TOKEN_COUNT"));
        assert_eq!(l.rows_per_request, 8);

        let mlp: ModelConfig = serde_json::from_value(json!({
            "name": "mlp", "max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}]
        }))
        .unwrap();
        assert!(embedding_model(&mlp).unwrap_err().contains("BYTES"));
    }
}
