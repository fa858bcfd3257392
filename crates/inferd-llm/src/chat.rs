//! Chat prompts with tools: which tool-call format a model writes (read off its chat
//! template), and, for templates that know nothing of tools, the messages rewritten so the
//! model still sees them — the tools described in the system turn, earlier calls written the
//! way it is asked to write them, and tool results as user turns.

use inferd_core::generate::{ChatFeatures, ChatMessage, ToolFormat};
use serde_json::Value;

use crate::tokenizer::{Message, TextTokenizer};

/// The tool-call format a chat template asks for. Templates that never mention tools get
/// inferd's own instructions, which ask for the `<tool_call>` form.
pub fn tool_format(template: Option<&str>) -> ToolFormat {
    let t = template.unwrap_or_default();
    if t.contains("[TOOL_CALLS]") {
        ToolFormat::Mistral
    } else if t.contains("<tool_call>") {
        ToolFormat::Hermes
    } else if t.contains("<|python_tag|>") || (t.contains("tools") && t.contains("parameters")) {
        ToolFormat::Llama3Json
    } else {
        ToolFormat::Hermes
    }
}

/// What the model's chat output carries: its tool-call format, and whether it thinks first
/// (`reasoning` forced by the `reasoning_parser` setting, else true when the vocabulary has
/// `<think>` and `</think>` tokens).
pub fn features(tok: &TextTokenizer, reasoning: Option<bool>) -> ChatFeatures {
    ChatFeatures {
        tool_format: tool_format(tok.chat_template()),
        reasoning: reasoning.unwrap_or_else(|| {
            tok.special_token("<think>").is_some() && tok.special_token("</think>").is_some()
        }),
    }
}

/// Whether the template renders `tools` itself.
fn knows_tools(template: Option<&str>) -> bool {
    template.is_some_and(|t| t.contains("tools"))
}

/// The system-turn text that describes `tools` to a model whose template does not.
fn tools_instructions(tools: &[Value]) -> String {
    let mut s = String::from(
        "You can call functions. Each is described below by a JSON object with its name, \
         purpose and the JSON Schema of its arguments:\n<tools>\n",
    );
    for t in tools {
        s.push_str(&t.get("function").unwrap_or(t).to_string());
        s.push('\n');
    }
    s.push_str(
        "</tools>\nTo call one, reply with nothing but a JSON object naming the function and \
         giving its arguments, between <tool_call> and </tool_call>, one block per call:\n\
         <tool_call>\n{\"name\": \"function_name\", \"arguments\": {\"argument\": \"value\"}}\n</tool_call>",
    );
    s
}

/// An assistant turn's calls written as the model is asked to write them.
fn calls_text(calls: &Value) -> String {
    let mut s = String::new();
    for c in calls.as_array().into_iter().flatten() {
        let f = c.get("function").unwrap_or(c);
        let name = f.get("name").cloned().unwrap_or(Value::Null);
        // OpenAI sends arguments as a JSON string; the model writes an object.
        let args = match f.get("arguments") {
            Some(Value::String(a)) => {
                serde_json::from_str(a).unwrap_or_else(|_| Value::String(a.clone()))
            }
            Some(v) => v.clone(),
            None => Value::Object(Default::default()),
        };
        let call = serde_json::json!({"name": name, "arguments": args});
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&format!("<tool_call>\n{call}\n</tool_call>"));
    }
    s
}

/// The messages the template renders: as sent when it knows tools; otherwise with the tools
/// described in the system turn and calls and results written out as text.
pub fn messages(messages: &[ChatMessage], tools: &[Value], template: Option<&str>) -> Vec<Message> {
    let as_is = |m: &ChatMessage| Message {
        role: m.role.clone(),
        content: m.content.clone(),
        tool_calls: m.tool_calls.clone(),
        tool_call_id: m.tool_call_id.clone(),
        name: m.name.clone(),
    };
    if knows_tools(template) {
        return messages.iter().map(as_is).collect();
    }
    let mut out: Vec<Message> = Vec::with_capacity(messages.len() + 1);
    if !tools.is_empty() {
        let block = tools_instructions(tools);
        match messages.first() {
            Some(m) if m.role == "system" => out.push(Message {
                role: "system".into(),
                content: format!("{}\n\n{block}", m.content),
                ..Message::default()
            }),
            _ => out.push(Message {
                role: "system".into(),
                content: block,
                ..Message::default()
            }),
        }
    }
    let skip =
        usize::from(!tools.is_empty() && messages.first().is_some_and(|m| m.role == "system"));
    for m in &messages[skip..] {
        out.push(match m.role.as_str() {
            "assistant" if m.tool_calls.is_some() => {
                let calls = calls_text(m.tool_calls.as_ref().unwrap_or(&Value::Null));
                Message {
                    role: "assistant".into(),
                    content: if m.content.is_empty() {
                        calls
                    } else {
                        format!("{}\n{calls}", m.content)
                    },
                    ..Message::default()
                }
            }
            "tool" => Message {
                role: "user".into(),
                content: format!("<tool_response>\n{}\n</tool_response>", m.content),
                ..Message::default()
            },
            _ => as_is(m),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_names_the_format() {
        assert_eq!(
            tool_format(Some("{{ '[TOOL_CALLS]' }}")),
            ToolFormat::Mistral
        );
        assert_eq!(
            tool_format(Some("<tool_call>{{ tools }}")),
            ToolFormat::Hermes
        );
        assert_eq!(tool_format(Some("<|python_tag|>")), ToolFormat::Llama3Json);
        assert_eq!(tool_format(None), ToolFormat::Hermes);
    }

    #[test]
    fn a_template_without_tools_gets_them_in_the_system_turn_and_results_as_user_turns() {
        let msgs = vec![
            ChatMessage {
                role: "system".into(),
                content: "be brief".into(),
                ..Default::default()
            },
            ChatMessage {
                role: "assistant".into(),
                tool_calls: Some(serde_json::json!([{"id": "c1", "type": "function",
                    "function": {"name": "f", "arguments": "{\"x\": 1}"}}])),
                ..Default::default()
            },
            ChatMessage {
                role: "tool".into(),
                content: "42".into(),
                tool_call_id: Some("c1".into()),
                ..Default::default()
            },
        ];
        let tools = vec![serde_json::json!({"type": "function", "function": {"name": "f"}})];
        let out = messages(&msgs, &tools, Some("{{ messages }}"));
        assert_eq!(out.len(), 3);
        assert!(out[0].content.starts_with("be brief\n\n"));
        assert!(
            out[0].content.contains(r#"{"name":"f"}"#),
            "{}",
            out[0].content
        );
        assert_eq!(
            out[1].content,
            "<tool_call>\n{\"name\":\"f\",\"arguments\":{\"x\":1}}\n</tool_call>"
        );
        assert_eq!(out[2].role, "user");
        assert!(out[2].content.contains("42"));
        // A template that renders tools gets the messages as sent.
        let kept = messages(&msgs, &tools, Some("{% if tools %}{% endif %}"));
        assert_eq!(kept[2].role, "tool");
        assert!(kept[1].tool_calls.is_some());
    }
}
