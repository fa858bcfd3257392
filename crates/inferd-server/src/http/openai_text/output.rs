//! A chat choice's text split into what OpenAI's API returns apart: `reasoning_content` (the
//! `<think>...</think>` a reasoning model writes first), `content`, and `tool_calls` (in the
//! model's own format, see [`ToolFormat`]). It works on streamed text: anything that might
//! still become a tag or a call is held back until it is known not to be, and a call is
//! released whole once its end is seen. Text that looked like a call but does not parse is
//! returned as content, never dropped.

use inferd_core::generate::ToolFormat;
use serde_json::Value;

/// A tool call the model made.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ToolCall {
    /// The function's name.
    pub(super) name: String,
    /// Its arguments, as a JSON text (OpenAI's shape).
    pub(super) arguments: String,
}

/// A piece of a choice's output.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Piece {
    /// Answer text.
    Content(String),
    /// Thinking text.
    Reasoning(String),
    /// A complete call.
    Call(ToolCall),
}

const THINK: &str = "<think>";
const END_THINK: &str = "</think>";
const CALL: &str = "<tool_call>";
const END_CALL: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not yet known whether the output opens with `<think>`.
    Start,
    Thinking,
    /// Answer text; with tools, watching for a call.
    Content,
    /// Inside tool calls (held until each is whole, or the end).
    Calls,
}

/// Splits one choice's streamed text.
pub(super) struct OutputParser {
    tools: Option<ToolFormat>,
    phase: Phase,
    buf: String,
    /// Content seen so far has only been whitespace (a bare-JSON call must come first).
    blank: bool,
    /// Content just began after thinking: its leading blank lines are dropped.
    strip_lead: bool,
    calls: usize,
}

/// The length of the longest tail of `s` that begins `tag` (so might become it).
fn partial_tail(s: &str, tag: &str) -> usize {
    (1..tag.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

/// One call object: `{"name", "arguments"}` or `{"name", "parameters"}`.
fn call_of(v: &Value) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v
        .get("arguments")
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    let arguments = match args {
        Value::String(s) => s,
        other => other.to_string(),
    };
    Some(ToolCall { name, arguments })
}

/// The calls in a bare JSON text: one object, a list of them, or objects separated by `;`.
fn bare_calls(text: &str) -> Option<Vec<ToolCall>> {
    let t = text.trim();
    let t = t.strip_prefix(PYTHON_TAG).unwrap_or(t).trim();
    let t = t.strip_prefix("[TOOL_CALLS]").unwrap_or(t).trim();
    if let Ok(v) = serde_json::from_str::<Value>(t) {
        return match v {
            Value::Array(a) => a.iter().map(call_of).collect(),
            v => call_of(&v).map(|c| vec![c]),
        };
    }
    t.split(';')
        .map(|p| {
            serde_json::from_str::<Value>(p.trim())
                .ok()
                .as_ref()
                .and_then(call_of)
        })
        .collect()
}

impl OutputParser {
    /// A parser for a model that thinks first when `reasoning`, and writes tool calls in
    /// `tools`' format when the request offered tools.
    pub(super) fn new(reasoning: bool, tools: Option<ToolFormat>) -> OutputParser {
        OutputParser {
            tools,
            phase: if reasoning {
                Phase::Start
            } else {
                Phase::Content
            },
            buf: String::new(),
            blank: true,
            strip_lead: false,
            calls: 0,
        }
    }

    /// Whether any tool call came out (the finish reason is then `tool_calls`).
    pub(super) fn made_calls(&self) -> bool {
        self.calls > 0
    }

    /// Takes more text; the pieces now certain.
    pub(super) fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        self.advance(&mut out, false);
        out
    }

    /// The text has ended: everything still held.
    pub(super) fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        self.advance(&mut out, true);
        out
    }

    fn content(&mut self, out: &mut Vec<Piece>, s: String) {
        if s.is_empty() {
            return;
        }
        if !s.trim().is_empty() {
            self.blank = false;
        }
        match out.last_mut() {
            Some(Piece::Content(c)) => c.push_str(&s),
            _ => out.push(Piece::Content(s)),
        }
    }

    fn advance(&mut self, out: &mut Vec<Piece>, end: bool) {
        loop {
            match self.phase {
                Phase::Start => {
                    let t = self.buf.trim_start();
                    if let Some(rest) = t.strip_prefix(THINK) {
                        self.buf = rest.to_string();
                        self.phase = Phase::Thinking;
                    } else if THINK.starts_with(t) && !end {
                        return; // still might be `<think>`
                    } else {
                        self.phase = Phase::Content;
                    }
                }
                Phase::Thinking => {
                    if let Some(at) = self.buf.find(END_THINK) {
                        let thought: String = self.buf.drain(..at + END_THINK.len()).collect();
                        let thought = &thought[..at];
                        if !thought.is_empty() {
                            out.push(Piece::Reasoning(thought.to_string()));
                        }
                        self.strip_lead = true;
                        self.phase = Phase::Content;
                        continue;
                    }
                    let hold = if end {
                        0
                    } else {
                        partial_tail(&self.buf, END_THINK)
                    };
                    let cut = self.buf.len() - hold;
                    let thought: String = self.buf.drain(..cut).collect();
                    if !thought.is_empty() {
                        out.push(Piece::Reasoning(thought));
                    }
                    return;
                }
                Phase::Content => {
                    if self.strip_lead {
                        if self.buf.trim_start().is_empty() && !end {
                            return;
                        }
                        self.buf = self.buf.trim_start().to_string();
                        self.strip_lead = false;
                    }
                    // Trailing blanks wait for what follows (they may precede a call).
                    let blanks = if end {
                        0
                    } else {
                        self.buf.len() - self.buf.trim_end().len()
                    };
                    match self.tools {
                        None => {
                            let cut = self.buf.len() - blanks;
                            let s: String = self.buf.drain(..cut).collect();
                            self.content(out, s);
                        }
                        Some(ToolFormat::Hermes) => {
                            if let Some(at) = self.buf.find(CALL) {
                                let before: String = self.buf.drain(..at).collect();
                                self.content(out, before.trim_end().to_string());
                                self.phase = Phase::Calls;
                                continue;
                            }
                            // Hold a possible tag start and the blanks before it.
                            let cut = if end {
                                self.buf.len()
                            } else {
                                let tag = self.buf.len() - partial_tail(&self.buf, CALL);
                                self.buf[..tag].trim_end().len()
                            };
                            let s: String = self.buf.drain(..cut).collect();
                            self.content(out, s);
                        }
                        Some(ToolFormat::Llama3Json | ToolFormat::Mistral) => {
                            // A call is the whole answer: it starts with `{`, `[` or the tag.
                            let t = self.buf.trim_start();
                            let opens = t.starts_with('{')
                                || t.starts_with('[')
                                || t.starts_with(PYTHON_TAG);
                            if self.blank && opens {
                                self.phase = Phase::Calls;
                                continue;
                            }
                            if self.blank && !end && (t.is_empty() || PYTHON_TAG.starts_with(t)) {
                                return;
                            }
                            let s = std::mem::take(&mut self.buf);
                            self.content(out, s);
                        }
                    }
                    return;
                }
                Phase::Calls => {
                    match self.tools {
                        Some(ToolFormat::Hermes) => {
                            let Some(start) = self.buf.find(CALL) else {
                                // Text after the calls: answer text again.
                                let t = self.buf.trim();
                                if !t.is_empty() && (end || partial_tail(&self.buf, CALL) == 0) {
                                    self.phase = Phase::Content;
                                    continue;
                                }
                                if end {
                                    self.buf.clear();
                                }
                                return;
                            };
                            let lead: String = self.buf.drain(..start).collect();
                            if !lead.trim().is_empty() {
                                self.content(out, lead.trim().to_string());
                            }
                            let body_at = CALL.len();
                            match self.buf[body_at..].find(END_CALL) {
                                Some(stop) => {
                                    let body = self.buf[body_at..body_at + stop].to_string();
                                    self.release_call(out, &body, body_at + stop + END_CALL.len());
                                }
                                None if end => {
                                    // Unclosed: a call if its JSON is whole, else text.
                                    let body = self.buf[body_at..].to_string();
                                    let all = self.buf.len();
                                    self.release_call(out, &body, all);
                                    return;
                                }
                                None => return,
                            }
                        }
                        _ => {
                            if !end {
                                return;
                            }
                            let text = std::mem::take(&mut self.buf);
                            match bare_calls(&text) {
                                Some(calls) if !calls.is_empty() => {
                                    for c in calls {
                                        self.calls += 1;
                                        out.push(Piece::Call(c));
                                    }
                                }
                                _ => self.content(out, text),
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Releases the call whose JSON is `body` and drops `..upto` from the buffer; a body that
    /// is not a call goes out as text.
    fn release_call(&mut self, out: &mut Vec<Piece>, body: &str, upto: usize) {
        let upto = upto.min(self.buf.len());
        let raw: String = self.buf.drain(..upto).collect();
        match serde_json::from_str::<Value>(body.trim())
            .ok()
            .as_ref()
            .and_then(call_of)
        {
            Some(c) => {
                self.calls += 1;
                out.push(Piece::Call(c));
            }
            None => self.content(out, raw),
        }
    }
}

/// A fresh tool-call id, as OpenAI writes them.
fn call_id() -> String {
    format!("call_{:024x}", fastrand::u128(..) >> 32)
}

/// Streamed deltas for `pieces` (a call: its id, type and name first, then its arguments,
/// the way OpenAI's clients accumulate them); `next_call` numbers the choice's calls.
pub(super) fn deltas(pieces: Vec<Piece>, next_call: &mut usize) -> Vec<Value> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Content(t) => out.push(serde_json::json!({"content": t})),
            Piece::Reasoning(t) => out.push(serde_json::json!({"reasoning_content": t})),
            Piece::Call(c) => {
                let index = *next_call;
                *next_call += 1;
                out.push(serde_json::json!({"tool_calls": [{
                    "index": index, "id": call_id(), "type": "function",
                    "function": {"name": c.name, "arguments": ""},
                }]}));
                out.push(serde_json::json!({"tool_calls": [{
                    "index": index, "function": {"arguments": c.arguments},
                }]}));
            }
        }
    }
    out
}

/// The assistant message `pieces` make (non-streaming): `content` (null when the answer is
/// only calls), `reasoning_content` when the model thought, `tool_calls` when it called.
pub(super) fn message(pieces: Vec<Piece>) -> Value {
    let mut content = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for p in pieces {
        match p {
            Piece::Content(t) => content.push_str(&t),
            Piece::Reasoning(t) => reasoning.push_str(&t),
            Piece::Call(c) => calls.push(serde_json::json!({
                "id": call_id(), "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            })),
        }
    }
    let mut m = serde_json::json!({"role": "assistant"});
    m["content"] = if content.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        Value::String(content)
    };
    if !reasoning.is_empty() {
        m["reasoning_content"] = Value::String(reasoning);
    }
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` a few characters at a time, as tokens arrive.
    fn run(p: &mut OutputParser, text: &str, step: usize) -> Vec<Piece> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        for c in chars.chunks(step) {
            out.extend(p.push(&c.iter().collect::<String>()));
        }
        out.extend(p.finish());
        // Join neighbouring pieces of one kind, as a client accumulating deltas would.
        let mut joined: Vec<Piece> = Vec::new();
        for piece in out {
            match (joined.last_mut(), piece) {
                (Some(Piece::Content(a)), Piece::Content(b)) => a.push_str(&b),
                (Some(Piece::Reasoning(a)), Piece::Reasoning(b)) => a.push_str(&b),
                (_, p) => joined.push(p),
            }
        }
        joined
    }

    fn call(name: &str, args: &str) -> Piece {
        Piece::Call(ToolCall {
            name: name.into(),
            arguments: args.into(),
        })
    }

    #[test]
    fn thinking_is_reasoning_and_the_rest_content_at_any_chunking() {
        for step in [1, 2, 3, 7, 100] {
            let mut p = OutputParser::new(true, None);
            let out = run(&mut p, "<think>\nlet me see</think>\n\nIt is 4.", step);
            assert_eq!(
                out,
                vec![
                    Piece::Reasoning("\nlet me see".into()),
                    Piece::Content("It is 4.".into())
                ],
                "step {step}"
            );
        }
        // No thinking: all content, even with reasoning on.
        let mut p = OutputParser::new(true, None);
        assert_eq!(
            run(&mut p, "<b>4</b>", 1),
            vec![Piece::Content("<b>4</b>".into())]
        );
    }

    #[test]
    fn hermes_calls_come_out_whole_and_text_around_them_as_content() {
        for step in [1, 4, 1000] {
            let mut p = OutputParser::new(false, Some(ToolFormat::Hermes));
            let out = run(
                &mut p,
                "Checking.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>{\"name\": \"g\", \"arguments\": {}}</tool_call>",
                step,
            );
            assert_eq!(
                out,
                vec![
                    Piece::Content("Checking.".into()),
                    call("f", "{\"x\":1}"),
                    call("g", "{}")
                ],
                "step {step}"
            );
            assert!(p.made_calls());
        }
    }

    #[test]
    fn a_call_that_does_not_parse_is_returned_as_text() {
        let mut p = OutputParser::new(false, Some(ToolFormat::Hermes));
        let out = run(&mut p, "<tool_call>{\"name\": oops}</tool_call>", 3);
        assert_eq!(
            out,
            vec![Piece::Content(
                "<tool_call>{\"name\": oops}</tool_call>".into()
            )]
        );
        assert!(!p.made_calls());
        let mut p = OutputParser::new(false, Some(ToolFormat::Hermes));
        assert_eq!(
            run(&mut p, "a < b and <tool_cal", 2),
            vec![Piece::Content("a < b and <tool_cal".into())]
        );
    }

    #[test]
    fn bare_json_calls_for_llama3_and_mistral() {
        let mut p = OutputParser::new(false, Some(ToolFormat::Llama3Json));
        let out = run(
            &mut p,
            "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"q\": \"x\"}}",
            2,
        );
        assert_eq!(out, vec![call("f", "{\"q\":\"x\"}")]);
        let mut p = OutputParser::new(false, Some(ToolFormat::Mistral));
        let out = run(
            &mut p,
            "[{\"name\": \"f\", \"arguments\": {}}, {\"name\": \"g\", \"arguments\": {\"a\": 2}}]",
            5,
        );
        assert_eq!(out, vec![call("f", "{}"), call("g", "{\"a\":2}")]);
        let mut p = OutputParser::new(false, Some(ToolFormat::Llama3Json));
        assert_eq!(
            run(&mut p, "The answer is {4}.", 2),
            vec![Piece::Content("The answer is {4}.".into())]
        );
    }
}
