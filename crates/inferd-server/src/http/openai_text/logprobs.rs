//! Log-probabilities in each endpoint's shape: the completions API's parallel lists
//! (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`), which with `echo` start with
//! the prompt's tokens (the first with `null`s, as OpenAI writes it), or chat's `content`
//! entries.

use inferd_core::generate::{PromptLogprob, TokenLogprob};
use serde_json::{Map, Value, json};

use super::request::Kind;

fn top_map(top: &[(String, f32)], k: usize) -> Value {
    Value::Object(
        top.iter()
            .take(k)
            .map(|(t, p)| (t.clone(), json!(p)))
            .collect::<Map<String, Value>>(),
    )
}

/// Token log-probabilities in the endpoint's shape: the completions API's parallel lists
/// (`offset` counts the text before them), or chat's `content` entries; `k` alternatives each.
pub(super) fn logprobs_json(
    kind: Kind,
    lps: &[TokenLogprob],
    k: usize,
    offset: &mut usize,
) -> Value {
    match kind {
        Kind::Completion => {
            let mut offsets = Vec::with_capacity(lps.len());
            for lp in lps {
                offsets.push(*offset);
                *offset += lp.token.len();
            }
            json!({
                "tokens": lps.iter().map(|l| &l.token).collect::<Vec<_>>(),
                "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
                "top_logprobs": lps.iter().map(|l| top_map(&l.top, k)).collect::<Vec<_>>(),
                "text_offset": offsets,
            })
        }
        Kind::Chat => json!({"content": lps.iter().map(|l| json!({
            "token": l.token,
            "logprob": l.logprob,
            "bytes": l.token.as_bytes(),
            "top_logprobs": l.top.iter().take(k).map(|(t, p)| json!({"token": t, "logprob": p, "bytes": t.as_bytes()})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()}),
    }
}

/// The prompt's tokens in the completions API's lists (`echo` with `logprobs`).
pub(super) fn prompt_logprobs_json(lps: &[PromptLogprob], k: usize, offset: &mut usize) -> Value {
    let mut offsets = Vec::with_capacity(lps.len());
    for lp in lps {
        offsets.push(*offset);
        *offset += lp.token.len();
    }
    json!({
        "tokens": lps.iter().map(|l| &l.token).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|l| match l.logprob {
            None => Value::Null,
            Some(_) => top_map(&l.top, k),
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

/// `a`'s lists followed by `b`'s.
pub(super) fn concat(mut a: Value, b: &Value) -> Value {
    for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        if let (Some(Value::Array(x)), Some(Value::Array(y))) = (a.get_mut(key), b.get(key)) {
            x.extend(y.iter().cloned());
        }
    }
    a
}
