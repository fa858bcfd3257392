//! Parsing and checking the text endpoints' request bodies: every mistake is a 400 naming the
//! field; unknown fields are ignored, as OpenAI's clients expect.

use axum::http::StatusCode;
use inferd_core::generate::{
    ChatMessage, ChatOptions, GenerateError, GenerateRequest, Prompt, Sampling,
};
use serde_json::{Map, Value};

use super::super::openai::{OaResult, OpenAiError};

/// Choices one request may ask for (`n`).
const MAX_N: usize = 16;

/// Which endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `/v1/completions`.
    Completion,
    /// `/v1/chat/completions`.
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
            let tool_calls = match m.get("tool_calls") {
                None | Some(Value::Null) => None,
                Some(v @ Value::Array(_)) => Some(v.clone()),
                Some(other) => {
                    return Err(bad(
                        format!("messages[{i}].tool_calls must be a list, got {other}"),
                        "messages",
                    ));
                }
            };
            let string = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
            Ok(ChatMessage {
                role: if role == "developer" { "system" } else { role }.to_string(),
                content: content(m.get("content"), i)?,
                tool_calls,
                tool_call_id: string("tool_call_id"),
                name: string("name"),
            })
        })
        .collect::<OaResult<Vec<_>>>()
        .map(Prompt::Chat)
}

/// One parsed request: prompts, `n`, the shared generation settings, streaming.
pub(super) struct Parsed {
    pub(super) model: String,
    pub(super) prompts: Vec<Prompt>,
    pub(super) n: usize,
    pub(super) template: GenerateRequest,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) user: Option<String>,
    /// The tools offered and `tool_choice` (chat).
    pub(super) tools: super::structured::Tools,
    /// Fields this server does not know, ignored.
    pub(super) ignored: Vec<String>,
}

/// Fields read (or deliberately accepted and ignored: `logit_bias`, `tools`, ...); any other
/// is reported back in a `Warning` header.
const KNOWN: &[&str] = &[
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "logprobs",
    "top_logprobs",
    "echo",
    "ignore_eos",
    "user",
    "logit_bias",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "suffix",
    "best_of",
    "response_format",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
    "chat_template_kwargs",
    "metadata",
    "store",
    "service_tier",
];

pub(super) fn parse(kind: Kind, body: &[u8]) -> OaResult<Parsed> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("malformed JSON body: {e}"), "body"))?;
    let Value::Object(o) = v else {
        return Err(bad("the request body must be a JSON object", "body"));
    };
    let ignored: Vec<String> = o
        .keys()
        .filter(|k| !KNOWN.contains(&k.as_str()))
        .cloned()
        .collect();
    let model = match o.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(bad("'model' is required and must be a string", "model")),
    };
    let prompts = match kind {
        Kind::Completion => prompts(o.get("prompt"))?,
        Kind::Chat => vec![chat(o.get("messages"))?],
    };
    // Completions: `logprobs: k`; chat: `logprobs: true` with `top_logprobs: k`.
    let logprobs = match kind {
        Kind::Completion => integer(&o, "logprobs", 0, 20)?.map(|k| k as usize),
        Kind::Chat => {
            let top = integer(&o, "top_logprobs", 0, 20)?.map(|k| k as usize);
            if top.is_some() && !boolean(&o, "logprobs")? {
                return Err(bad("'top_logprobs' needs 'logprobs': true", "top_logprobs"));
            }
            boolean(&o, "logprobs")?.then(|| top.unwrap_or(0))
        }
    };
    let echo = boolean(&o, "echo")?;
    if echo && kind == Kind::Chat {
        return Err(bad(
            "'echo' is for /v1/completions; chat returns only the new message",
            "echo",
        ));
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
    let template_kwargs = match o.get("chat_template_kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(bad(
                format!("'chat_template_kwargs' must be an object, got {other}"),
                "chat_template_kwargs",
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
            logprobs,
            constraint: super::structured::constraint(&o)?,
            echo,
            prompt_logprobs: if echo { logprobs } else { None },
            chat: ChatOptions {
                tools: Vec::new(),
                template_kwargs,
            },
        },
        tools: super::structured::tools(&o)?,
        stream: boolean(&o, "stream")?,
        include_usage,
        user: o.get("user").and_then(Value::as_str).map(str::to_string),
        ignored,
        prompts,
    })
}

pub(super) fn start_error(e: GenerateError) -> OpenAiError {
    match e {
        GenerateError::Invalid(m) if m.starts_with("the output constraint") => {
            bad(m, "response_format")
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kind: Kind, body: &str) -> OaResult<Parsed> {
        parse(kind, body.as_bytes())
    }

    #[test]
    fn prompts_come_as_text_texts_or_token_ids() {
        let one = p(Kind::Completion, r#"{"model": "m", "prompt": "hi"}"#).unwrap();
        assert_eq!(one.prompts, vec![Prompt::Text("hi".into())]);
        let many = p(
            Kind::Completion,
            r#"{"model": "m", "prompt": ["a", "b"], "n": 2}"#,
        )
        .unwrap();
        assert_eq!((many.prompts.len(), many.n), (2, 2));
        let ids = p(Kind::Completion, r#"{"model": "m", "prompt": [1, 2, 3]}"#).unwrap();
        assert_eq!(ids.prompts, vec![Prompt::Tokens(vec![1, 2, 3])]);
        let batch = p(
            Kind::Completion,
            r#"{"model": "m", "prompt": [[1], [2, 3]]}"#,
        )
        .unwrap();
        assert_eq!(batch.prompts.len(), 2);
    }

    #[test]
    fn chat_content_may_be_text_parts_and_developer_is_system() {
        let c = p(
            Kind::Chat,
            r#"{"model": "m", "messages": [{"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
        )
        .unwrap();
        let Prompt::Chat(m) = &c.prompts[0] else {
            panic!("not a chat")
        };
        assert_eq!(m[0].role, "system");
        assert_eq!(m[1].content, "ab");
    }

    #[test]
    fn settings_are_read_and_unknown_fields_ignored() {
        let r = p(
            Kind::Chat,
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
                "max_completion_tokens": 7, "temperature": 0, "stop": "\n", "seed": 3,
                "stream": true, "stream_options": {"include_usage": true}, "logit_bias": {}, "tools": []}"#,
        )
        .unwrap();
        assert_eq!(r.template.max_tokens, Some(7), "max_completion_tokens wins");
        assert_eq!(r.template.stop, vec!["\n".to_string()]);
        assert_eq!(
            (r.template.sampling.temperature, r.template.sampling.seed),
            (0.0, Some(3))
        );
        assert!(r.stream && r.include_usage);
        assert!(r.ignored.is_empty(), "{:?}", r.ignored);
        let odd = p(
            Kind::Completion,
            r#"{"model": "m", "prompt": "x", "frobnicate": 1}"#,
        )
        .unwrap();
        assert_eq!(odd.ignored, vec!["frobnicate".to_string()]);
    }

    #[test]
    fn mistakes_name_their_field() {
        for (body, field) in [
            (r#"{"prompt": "x"}"#, "'model'"),
            (r#"{"model": "m"}"#, "'prompt'"),
            (
                r#"{"model": "m", "prompt": "x", "temperature": "hot"}"#,
                "'temperature'",
            ),
            (
                r#"{"model": "m", "prompt": "x", "temperature": 3}"#,
                "'temperature'",
            ),
            (
                r#"{"model": "m", "prompt": "x", "max_tokens": -1}"#,
                "'max_tokens'",
            ),
            (r#"{"model": "m", "prompt": "x", "n": 0}"#, "'n'"),
            (r#"{"model": "m", "prompt": "x", "stop": 5}"#, "'stop'"),
            (r#"{"model": "m", "prompt": [-1]}"#, "'prompt'"),
            (
                r#"{"model": "m", "prompt": "x", "logprobs": 21}"#,
                "'logprobs'",
            ),
            (r#"{"model": "m", "prompt": "x", "echo": "yes"}"#, "'echo'"),
            (r#"[1]"#, "JSON object"),
        ] {
            let e = p(Kind::Completion, body).err().expect(body);
            let r = axum::response::IntoResponse::into_response(e);
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
            let b =
                futures::executor::block_on(axum::body::to_bytes(r.into_body(), 1 << 16)).unwrap();
            let text = String::from_utf8_lossy(&b);
            assert!(text.contains(field), "{body}: {text}");
        }
    }
}
