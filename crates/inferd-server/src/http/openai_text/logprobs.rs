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
        Kind::Completion => completion_lists(
            lps.iter()
                .map(|l| (l.token.as_str(), Some(l.logprob), top_map(&l.top, k))),
            offset,
        ),
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
    completion_lists(
        lps.iter().map(|l| {
            let top = l.logprob.map_or(Value::Null, |_| top_map(&l.top, k));
            (l.token.as_str(), l.logprob, top)
        }),
        offset,
    )
}

/// The completions API's parallel lists of `(token, log-probability, alternatives)` rows;
/// `offset` counts the text before them.
fn completion_lists<'a>(
    rows: impl Iterator<Item = (&'a str, Option<f32>, Value)>,
    offset: &mut usize,
) -> Value {
    let (mut tokens, mut logprobs, mut tops, mut offsets) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (token, logprob, top) in rows {
        offsets.push(*offset);
        *offset += token.len();
        tokens.push(token);
        logprobs.push(logprob);
        tops.push(top);
    }
    json!({
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": tops,
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
