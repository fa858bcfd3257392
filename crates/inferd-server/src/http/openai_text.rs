//! OpenAI's text endpoints for models that generate (see `inferd_core::generate`):
//! `POST /v1/completions` and `POST /v1/chat/completions`, with `stream` as server-sent events.
//!
//! What real clients depend on: `finish_reason` on every chunk (`null` until the last, then
//! `stop` or `length`), a last chunk with an empty `delta`, `data: [DONE]` ending every stream
//! (also after an error in it), `stream_options.include_usage` adding one chunk with `choices: []`
//! and the usage (other chunks `usage: null`), `max_completion_tokens` as well as `max_tokens`,
//! message `content` as a string or a list of text parts, unknown fields ignored. A client that
//! disconnects cancels its generations at once. Each generation holds its model version in use,
//! so a reload lets started streams finish where they began.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use inferd_core::generate::{
    ChatMessage, Finish, GenEvent, GenStream, GenerateError, GenerateRequest, Prompt, Sampling,
};
use serde_json::{Map, Value, json};

use super::openai::{OaResult, OpenAiError};
use super::{HttpState, read_body};
use crate::admission::admit;

/// Choices one request may ask for (`n`).
const MAX_N: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

fn bad(message: impl Into<String>, param: &'static str) -> OpenAiError {
    OpenAiError::bad(message, param)
}

fn number(o: &Map<String, Value>, key: &'static str, lo: f64, hi: f64) -> OaResult<Option<f64>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if (lo..=hi).contains(&v) {
                Ok(Some(v))
            } else {
                Err(bad(
                    format!("'{key}' must be between {lo} and {hi}, got {v}"),
                    key,
                ))
            }
        }
        Some(other) => Err(bad(format!("'{key}' must be a number, got {other}"), key)),
    }
}

fn integer(o: &Map<String, Value>, key: &'static str, lo: i64, hi: i64) -> OaResult<Option<i64>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(i) if (lo..=hi).contains(&i) => Ok(Some(i)),
            _ => Err(bad(
                format!("'{key}' must be an integer from {lo} to {hi}, got {v}"),
                key,
            )),
        },
    }
}

fn boolean(o: &Map<String, Value>, key: &'static str) -> OaResult<bool> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(
            format!("'{key}' must be true or false, got {other}"),
            key,
        )),
    }
}

/// Text of a message's `content`: a string, or a list of `{"type": "text", "text": ...}` parts.
fn content(v: Option<&Value>, i: usize) -> OaResult<String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(
                |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => Ok(t.clone()),
                    _ => Err(bad(
                        format!("messages[{i}].content: only text parts are supported, got {p}"),
                        "messages",
                    )),
                },
            )
            .collect(),
        Some(other) => Err(bad(
            format!("messages[{i}].content must be a string or a list of text parts, got {other}"),
            "messages",
        )),
    }
}

/// The prompts a completions request names: a string, strings, token ids, or lists of them.
fn prompts(v: Option<&Value>) -> OaResult<Vec<Prompt>> {
    let ids = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter()
            .map(|x| x.as_u64().and_then(|i| u32::try_from(i).ok()))
            .collect()
    };
    match v {
        Some(Value::String(s)) => Ok(vec![Prompt::Text(s.clone())]),
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => Ok(a
            .iter()
            .map(|s| Prompt::Text(s.as_str().unwrap_or_default().to_string()))
            .collect()),
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_number) => ids(a)
            .map(|t| vec![Prompt::Tokens(t)])
            .ok_or_else(|| bad("'prompt' token ids must be non-negative integers", "prompt")),
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_array) => a
            .iter()
            .map(|x| {
                ids(x.as_array().map(Vec::as_slice).unwrap_or_default())
                    .map(Prompt::Tokens)
                    .ok_or_else(|| {
                        bad("'prompt' token ids must be non-negative integers", "prompt")
                    })
            })
            .collect(),
        None | Some(Value::Null) => Err(bad("'prompt' is required", "prompt")),
        Some(other) => Err(bad(
            format!("'prompt' must be a string, a list of strings, or token ids; got {other}"),
            "prompt",
        )),
    }
}

fn chat(v: Option<&Value>) -> OaResult<Prompt> {
    let Some(Value::Array(msgs)) = v else {
        return Err(bad(
            "'messages' must be a non-empty list of messages",
            "messages",
        ));
    };
    if msgs.is_empty() {
        return Err(bad(
            "'messages' must be a non-empty list of messages",
            "messages",
        ));
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| bad(format!("messages[{i}] needs a 'role'"), "messages"))?;
            Ok(ChatMessage {
                role: if role == "developer" { "system" } else { role }.to_string(),
                content: content(m.get("content"), i)?,
            })
        })
        .collect::<OaResult<Vec<_>>>()
        .map(Prompt::Chat)
}

/// One parsed request: prompts, `n`, the shared generation settings, streaming.
struct Parsed {
    model: String,
    prompts: Vec<Prompt>,
    n: usize,
    template: GenerateRequest,
    stream: bool,
    include_usage: bool,
    user: Option<String>,
}

fn parse(kind: Kind, body: &[u8]) -> OaResult<Parsed> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("malformed JSON body: {e}"), "body"))?;
    let Value::Object(o) = v else {
        return Err(bad("the request body must be a JSON object", "body"));
    };
    let model = match o.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(bad("'model' is required and must be a string", "model")),
    };
    let prompts = match kind {
        Kind::Completion => prompts(o.get("prompt"))?,
        Kind::Chat => vec![chat(o.get("messages"))?],
    };
    let wants_logprobs = match kind {
        Kind::Completion => integer(&o, "logprobs", 0, 20)?.is_some(),
        Kind::Chat => boolean(&o, "logprobs")?,
    };
    if wants_logprobs {
        return Err(bad(
            "'logprobs' is not supported yet by this server",
            "logprobs",
        ));
    }
    if boolean(&o, "echo")? {
        return Err(bad("'echo' is not supported yet by this server", "echo"));
    }
    let max_tokens = integer(&o, "max_completion_tokens", 0, i64::from(u32::MAX))?
        .or(integer(&o, "max_tokens", 0, i64::from(u32::MAX))?)
        .map(|m| m as usize);
    let stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) && a.len() <= 16 => a
            .iter()
            .map(|s| s.as_str().unwrap_or_default().to_string())
            .collect(),
        Some(other) => {
            return Err(bad(
                format!("'stop' must be a string or a list of up to 16 strings, got {other}"),
                "stop",
            ));
        }
    };
    let top_k = integer(&o, "top_k", -1, 1 << 20)?.unwrap_or(0);
    let sampling = Sampling {
        temperature: number(&o, "temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32,
        top_p: number(&o, "top_p", 0.0, 1.0)?.unwrap_or(1.0) as f32,
        top_k: top_k.max(0) as usize,
        min_p: number(&o, "min_p", 0.0, 1.0)?.unwrap_or(0.0) as f32,
        repetition_penalty: number(&o, "repetition_penalty", 0.01, 10.0)?.unwrap_or(1.0) as f32,
        presence_penalty: number(&o, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        frequency_penalty: number(&o, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        seed: integer(&o, "seed", i64::MIN, i64::MAX)?.map(|s| s as u64),
    };
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => boolean(so, "include_usage")?,
        Some(other) => {
            return Err(bad(
                format!("'stream_options' must be an object, got {other}"),
                "stream_options",
            ));
        }
    };
    Ok(Parsed {
        model,
        n: integer(&o, "n", 1, MAX_N as i64)?.unwrap_or(1) as usize,
        template: GenerateRequest {
            prompt: Prompt::Text(String::new()),
            max_tokens,
            sampling,
            stop,
            ignore_eos: boolean(&o, "ignore_eos")?,
            logprobs: None,
        },
        stream: boolean(&o, "stream")?,
        include_usage,
        user: o.get("user").and_then(Value::as_str).map(str::to_string),
        prompts,
    })
}

fn start_error(e: GenerateError) -> OpenAiError {
    match e {
        GenerateError::Invalid(m) => bad(m, "prompt"),
        e @ GenerateError::ContextLength { .. } => OpenAiError::with_code(
            StatusCode::BAD_REQUEST,
            e.to_string(),
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        GenerateError::Overloaded(m) => {
            OpenAiError::with_code(StatusCode::TOO_MANY_REQUESTS, m, None, None)
        }
        GenerateError::Unavailable(m) => {
            OpenAiError::with_code(StatusCode::SERVICE_UNAVAILABLE, m, None, None)
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `POST /v1/completions`.
pub async fn completions(State(s): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    serve(s, headers, body, Kind::Completion)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve(s, headers, body, Kind::Chat)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// A choice's event, tagged with its index.
type Tagged = (usize, GenEvent);

fn events(i: usize, g: GenStream) -> impl futures::Stream<Item = Tagged> {
    futures::stream::unfold(g.events, move |mut rx| async move {
        rx.recv().await.map(|e| ((i, e), rx))
    })
}

async fn serve(s: HttpState, headers: HeaderMap, body: Body, kind: Kind) -> OaResult<Response> {
    let body = read_body(body, &s, &headers).await?;
    let _slot = admit(&s.inflight).map_err(crate::error::ApiError::overloaded)?;
    let p = parse(kind, &body)?;
    // A route named in `model` picks the target (sticky by its header, else `user`).
    let routed = s.traffic.resolve(&p.model, &|name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| p.user.clone())
    });
    let (target, version) = match &routed {
        Some(r) => (r.decision.target.model.clone(), r.decision.target.version),
        None => (p.model.clone(), None),
    };
    let (guard, generator) = s.engine.generator(&target, version)?;
    let label = crate::traffic::view::target_label(&target, guard.runner().version());
    let mut streams = Vec::with_capacity(p.prompts.len() * p.n);
    for prompt in &p.prompts {
        for _ in 0..p.n {
            let mut req = p.template.clone();
            req.prompt = prompt.clone();
            // n > 1 with a seed: each choice its own seed, so they differ and repeat.
            if streams.len() % p.n > 0
                && let Some(seed) = req.sampling.seed.as_mut()
            {
                *seed = seed.wrapping_add((streams.len() % p.n) as u64);
            }
            streams.push(generator.start(req).map_err(start_error)?);
        }
    }
    let prompt_tokens: usize = streams.iter().step_by(p.n).map(|g| g.prompt_tokens).sum();
    let id = format!(
        "{}-{:024x}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        fastrand::u128(..) >> 32
    );
    let created = now();
    let merged = futures::stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, g)| Box::pin(events(i, g))),
    );
    let started = std::time::Instant::now();
    let request_id = headers
        .get(&crate::request_id::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let record = move |failed: bool| {
        if let Some(r) = &routed {
            s.traffic.served(
                r,
                started.elapsed().as_secs_f64(),
                failed,
                request_id.as_deref(),
            );
        }
    };
    let total = p.prompts.len() * p.n;
    if !p.stream {
        let mut texts = vec![String::new(); total];
        let mut finishes = vec![None; total];
        let mut completion_tokens = 0;
        let mut merged = merged;
        while let Some((i, e)) = merged.next().await {
            match e {
                GenEvent::Text { text, .. } => texts[i].push_str(&text),
                GenEvent::Done {
                    finish,
                    completion_tokens: c,
                    ..
                } => {
                    finishes[i] = Some(finish);
                    completion_tokens += c;
                }
                GenEvent::Failed(m) => {
                    record(true);
                    return Err(OpenAiError::internal(m));
                }
            }
        }
        drop(guard);
        record(false);
        let choices: Vec<Value> = texts
            .into_iter()
            .zip(finishes)
            .enumerate()
            .map(|(i, (text, f))| {
                let finish = f.unwrap_or(Finish::Length).as_str();
                match kind {
                    Kind::Completion => {
                        json!({"index": i, "text": text, "finish_reason": finish, "logprobs": null})
                    }
                    Kind::Chat => json!({
                        "index": i, "finish_reason": finish, "logprobs": null,
                        "message": {"role": "assistant", "content": text},
                    }),
                }
            })
            .collect();
        let out = json!({
            "id": id,
            "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
            "created": created,
            "model": p.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        });
        let mut r = axum::Json(out).into_response();
        if let Ok(v) = HeaderValue::from_str(&label) {
            r.headers_mut().insert(super::TARGET_HEADER, v);
        }
        return Ok(r);
    }
    // Streaming: chunks go through a small bounded channel; when the client goes away the
    // send fails, the task ends and drops the generations, which cancels them.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    let model = p.model.clone();
    let include_usage = p.include_usage;
    tokio::spawn(async move {
        let _guard = guard;
        let object = if kind == Kind::Chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let chunk = |choices: Value, usage: Value| {
            let mut c = json!({"id": id, "object": object, "created": created, "model": model, "choices": choices});
            if include_usage {
                c["usage"] = usage;
            }
            Bytes::from(format!("data: {c}\n\n"))
        };
        let choice = |i: usize, text: Option<&str>, finish: Option<&str>, first: bool| match kind {
            Kind::Completion => {
                json!({"index": i, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null})
            }
            Kind::Chat => {
                let delta = match (first, text) {
                    (true, _) => json!({"role": "assistant", "content": ""}),
                    (false, Some(t)) => json!({"content": t}),
                    (false, None) => json!({}),
                };
                json!({"index": i, "delta": delta, "finish_reason": finish, "logprobs": null})
            }
        };
        if kind == Kind::Chat {
            for i in 0..total {
                if tx
                    .send(Ok(chunk(json!([choice(i, None, None, true)]), Value::Null)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let mut completion_tokens = 0;
        let mut merged = merged;
        let mut failed = false;
        while let Some((i, e)) = merged.next().await {
            let bytes = match e {
                GenEvent::Text { text, .. } => {
                    chunk(json!([choice(i, Some(&text), None, false)]), Value::Null)
                }
                GenEvent::Done {
                    finish,
                    completion_tokens: c,
                    ..
                } => {
                    completion_tokens += c;
                    chunk(
                        json!([choice(i, None, Some(finish.as_str()), false)]),
                        Value::Null,
                    )
                }
                GenEvent::Failed(m) => {
                    failed = true;
                    let err = json!({"error": {"message": m, "type": "server_error", "param": null, "code": null}});
                    Bytes::from(format!("data: {err}\n\n"))
                }
            };
            if tx.send(Ok(bytes)).await.is_err() {
                return; // the client went away: dropping `merged` cancels the generations
            }
            if failed {
                break;
            }
        }
        if include_usage && !failed {
            let usage = json!({
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            });
            let _ = tx.send(Ok(chunk(json!([]), usage))).await;
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
        record(failed);
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&label) {
        h.insert(super::TARGET_HEADER, v);
    }
    Ok(r)
}
