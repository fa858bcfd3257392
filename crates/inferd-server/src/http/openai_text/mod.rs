//! OpenAI's text endpoints for models that generate (see `inferd_core::generate`):
//! `POST /v1/completions` and `POST /v1/chat/completions`, with `stream` as server-sent events.
//!
//! What real clients depend on: `finish_reason` on every chunk (`null` until the last, then
//! `stop` or `length`), a last chunk with an empty `delta`, `data: [DONE]` ending every stream
//! (also after an error in it), `stream_options.include_usage` adding one chunk with `choices: []`
//! and the usage (other chunks `usage: null`), `max_completion_tokens` as well as `max_tokens`,
//! message `content` as a string or a list of text parts, unknown fields ignored. Structured
//! output and forced tool calls become a grammar the generator masks tokens by
//! (`structured`); a chat choice's text is split into content, reasoning and tool calls
//! (`output`). A client that
//! disconnects cancels its generations at once. Each generation holds its model version in use,
//! so a reload lets started streams finish where they began.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use inferd_core::generate::{Finish, GenEvent, GenStream, PromptLogprob, TokenLogprob};
use serde_json::{Value, json};

use self::logprobs::{logprobs_json, prompt_logprobs_json};
use self::request::{Kind, parse, start_error};
use super::openai::{OaResult, OpenAiError};
use super::{HttpState, read_body};
use crate::admission::admit;

mod logprobs;
mod output;
mod request;
mod structured;

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

/// Per-choice timings for the LLM histograms.
struct Timer {
    started: std::time::Instant,
    last: Vec<Option<std::time::Instant>>,
    gaps: Vec<(f64, u64)>,
    prompt_tokens: Vec<usize>,
    metrics: crate::metrics::llm::LlmRequests,
    model: String,
}

impl Timer {
    fn text(&mut self, i: usize) {
        let now = std::time::Instant::now();
        match self.last[i] {
            None => self
                .metrics
                .first_token(&self.model, (now - self.started).as_secs_f64()),
            Some(t) => {
                self.gaps[i].0 += (now - t).as_secs_f64();
                self.gaps[i].1 += 1;
            }
        }
        self.last[i] = Some(now);
    }

    fn done(&self, i: usize, generated: usize) {
        self.metrics.observe(
            &self.model,
            crate::metrics::llm::RequestTimes {
                gaps: self.gaps[i],
                e2e: self.started.elapsed().as_secs_f64(),
                prompt_tokens: self.prompt_tokens[i],
                generated_tokens: generated,
            },
        );
    }
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
    s.engine.wait_for_cold_start(&target, version).await;
    let (guard, generator) = s.engine.generator(&target, version)?;
    let features = generator.chat_features();
    let mut template = p.template.clone();
    let offered = kind == Kind::Chat && p.tools.offered();
    if offered {
        template.chat.tools = p.tools.list.clone();
        if let Some(forced) = structured::forced_calls(&p.tools, features.tool_format)? {
            if template.constraint.is_some() {
                return Err(OpenAiError::bad(
                    "a forced 'tool_choice' cannot be combined with another output constraint",
                    "tool_choice",
                ));
            }
            template.constraint = Some(forced);
        }
    }
    let parser = move || {
        output::OutputParser::new(
            kind == Kind::Chat && features.reasoning,
            offered.then_some(features.tool_format),
        )
    };
    let label = crate::traffic::view::target_label(&target, guard.runner().version());
    let mut streams = Vec::with_capacity(p.prompts.len() * p.n);
    for prompt in &p.prompts {
        for _ in 0..p.n {
            let mut req = template.clone();
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
    // `echo`: each choice's text starts with its prompt.
    let echoes: Vec<Option<String>> = streams.iter_mut().map(|g| g.prompt_text.take()).collect();
    let mut timer = Timer {
        started: std::time::Instant::now(),
        last: vec![None; streams.len()],
        gaps: vec![(0.0, 0); streams.len()],
        prompt_tokens: streams.iter().map(|g| g.prompt_tokens).collect(),
        metrics: s.metrics.llm.clone(),
        model: target.clone(),
    };
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
        let mut texts: Vec<String> = echoes
            .iter()
            .map(|e| e.clone().unwrap_or_default())
            .collect();
        let mut finishes = vec![None; total];
        let mut lps: Vec<Vec<TokenLogprob>> = vec![Vec::new(); total];
        let mut prompt_lps: Vec<Vec<PromptLogprob>> = vec![Vec::new(); total];
        let mut completion_tokens = 0;
        let mut merged = merged;
        while let Some((i, e)) = merged.next().await {
            match e {
                GenEvent::Text { text, logprobs } => {
                    timer.text(i);
                    texts[i].push_str(&text);
                    lps[i].extend(logprobs);
                }
                GenEvent::PromptLogprobs(l) => prompt_lps[i].extend(l),
                GenEvent::Done {
                    finish,
                    completion_tokens: c,
                    ..
                } => {
                    timer.done(i, c);
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
        let k = p.template.logprobs;
        let choices: Vec<Value> = texts
            .into_iter()
            .zip(finishes)
            .enumerate()
            .map(|(i, (text, f))| {
                let finish = f.unwrap_or(Finish::Length).as_str();
                let logprobs = k.map_or(Value::Null, |k| {
                    let mut offset = 0;
                    let generated = |offset: &mut usize| logprobs_json(kind, &lps[i], k, offset);
                    if echoes[i].is_some() {
                        let head = prompt_logprobs_json(&prompt_lps[i], k, &mut offset);
                        logprobs::concat(head, &generated(&mut offset))
                    } else {
                        generated(&mut offset)
                    }
                });
                match kind {
                    Kind::Completion => {
                        json!({"index": i, "text": text, "finish_reason": finish, "logprobs": logprobs})
                    }
                    Kind::Chat => {
                        let mut parse = parser();
                        let mut pieces = parse.push(&text);
                        pieces.extend(parse.finish());
                        let finish = if parse.made_calls() && f != Some(Finish::Length) {
                            "tool_calls"
                        } else {
                            finish
                        };
                        json!({
                            "index": i, "finish_reason": finish, "logprobs": logprobs,
                            "message": output::message(pieces),
                        })
                    }
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
        warn_ignored(r.headers_mut(), &p.ignored);
        return Ok(r);
    }
    // Streaming: chunks go through a small bounded channel; when the client goes away the
    // send fails, the task ends and drops the generations, which cancels them.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    let model = p.model.clone();
    let include_usage = p.include_usage;
    let logprobs_k = p.template.logprobs;
    let ignored = p.ignored.clone();
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
        let choice = |i: usize,
                      delta: Value,
                      text: Option<&str>,
                      finish: Option<&str>,
                      lp: Value| {
            match kind {
                Kind::Completion => {
                    json!({"index": i, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": lp})
                }
                Kind::Chat => {
                    json!({"index": i, "delta": delta, "finish_reason": finish, "logprobs": lp})
                }
            }
        };
        let k = logprobs_k;
        let mut offsets = vec![0usize; total];
        let mut parsers: Vec<output::OutputParser> = (0..total).map(|_| parser()).collect();
        let mut calls = vec![0usize; total];
        // Chat log-probabilities wait for the text they belong to (held while a tag or call
        // is undecided).
        let mut held: Vec<Vec<TokenLogprob>> = vec![Vec::new(); total];
        if kind == Kind::Chat {
            for i in 0..total {
                let first = json!({"role": "assistant", "content": ""});
                if tx
                    .send(Ok(chunk(
                        json!([choice(i, first, None, None, Value::Null)]),
                        Value::Null,
                    )))
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
        let mut echoes = echoes;
        let mut prompt_lps: Vec<Vec<PromptLogprob>> = vec![Vec::new(); total];
        while let Some((i, e)) = merged.next().await {
            if let GenEvent::PromptLogprobs(l) = e {
                prompt_lps[i].extend(l);
                continue;
            }
            // `echo`: the prompt (with its log-probabilities) goes first.
            if let Some(text) = echoes[i].take() {
                let lp = k.map_or(Value::Null, |k| {
                    prompt_logprobs_json(&prompt_lps[i], k, &mut offsets[i])
                });
                let c = chunk(
                    json!([choice(i, Value::Null, Some(&text), None, lp)]),
                    Value::Null,
                );
                if tx.send(Ok(c)).await.is_err() {
                    return;
                }
            }
            let bytes: Vec<Bytes> = match e {
                GenEvent::PromptLogprobs(_) => Vec::new(),
                GenEvent::Text { text, logprobs } if kind == Kind::Completion => {
                    timer.text(i);
                    let lp = k.map_or(Value::Null, |k| {
                        logprobs_json(kind, &logprobs, k, &mut offsets[i])
                    });
                    vec![chunk(
                        json!([choice(i, Value::Null, Some(&text), None, lp)]),
                        Value::Null,
                    )]
                }
                GenEvent::Text { text, logprobs } => {
                    timer.text(i);
                    held[i].extend(logprobs);
                    output::deltas(parsers[i].push(&text), &mut calls[i])
                        .into_iter()
                        .map(|d| {
                            let lp = k.map_or(Value::Null, |k| {
                                logprobs_json(
                                    kind,
                                    &std::mem::take(&mut held[i]),
                                    k,
                                    &mut offsets[i],
                                )
                            });
                            chunk(json!([choice(i, d, None, None, lp)]), Value::Null)
                        })
                        .collect()
                }
                GenEvent::Done {
                    finish,
                    completion_tokens: c,
                    ..
                } => {
                    timer.done(i, c);
                    completion_tokens += c;
                    let mut out: Vec<Bytes> = Vec::new();
                    if kind == Kind::Chat {
                        for d in output::deltas(parsers[i].finish(), &mut calls[i]) {
                            let lp = k.map_or(Value::Null, |k| {
                                logprobs_json(
                                    kind,
                                    &std::mem::take(&mut held[i]),
                                    k,
                                    &mut offsets[i],
                                )
                            });
                            out.push(chunk(json!([choice(i, d, None, None, lp)]), Value::Null));
                        }
                    }
                    let reason = if parsers[i].made_calls() && finish == Finish::Stop {
                        "tool_calls"
                    } else {
                        finish.as_str()
                    };
                    out.push(chunk(
                        json!([choice(i, json!({}), None, Some(reason), Value::Null)]),
                        Value::Null,
                    ));
                    out
                }
                GenEvent::Failed(m) => {
                    failed = true;
                    let err = json!({"error": {"message": m, "type": "server_error", "param": null, "code": null}});
                    vec![Bytes::from(format!("data: {err}\n\n"))]
                }
            };
            for b in bytes {
                if tx.send(Ok(b)).await.is_err() {
                    return; // the client went away: dropping `merged` cancels the generations
                }
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
    warn_ignored(h, &ignored);
    Ok(r)
}

/// An RFC 7234 `Warning` header naming request fields this server ignored.
fn warn_ignored(h: &mut HeaderMap, ignored: &[String]) {
    if ignored.is_empty() {
        return;
    }
    let names: Vec<String> = ignored
        .iter()
        .map(|k| {
            k.chars()
                .filter(|c| c.is_ascii_graphic() && *c != '"')
                .collect()
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "299 - \"ignored unknown fields: {}\"",
        names.join(", ")
    )) {
        h.insert(header::WARNING, v);
    }
}
