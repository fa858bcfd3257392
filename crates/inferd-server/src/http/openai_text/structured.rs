//! The request fields that shape the output: `response_format` (OpenAI), vLLM's
//! `structured_outputs` and `guided_*` fields, and `tools` with `tool_choice`. Each becomes at
//! most one [`Constraint`]; two at once, or one that is malformed, is a 400 naming the field.
//! A forced tool choice (`required`, or a named function) is itself a constraint: the call's
//! JSON is generated under the tool's parameter schema, in the model's tool-call format.

use inferd_core::generate::{Constraint, ToolFormat};
use serde_json::{Map, Value, json};

use super::super::openai::{OaResult, OpenAiError};

fn bad(message: impl Into<String>, param: &'static str) -> OpenAiError {
    OpenAiError::bad(message, param)
}

/// What `tool_choice` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ToolChoice {
    /// No calls: tools are not offered.
    None,
    /// The model decides.
    Auto,
    /// At least one call.
    Required,
    /// A call to this function.
    Named(String),
}

/// The request's tools and what it asks of them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Tools {
    /// OpenAI's `tools` list.
    pub(super) list: Vec<Value>,
    /// `tool_choice`.
    pub(super) choice: ToolChoice,
    /// `parallel_tool_calls: true` given: a forced choice may make several calls.
    pub(super) parallel: bool,
}

impl Tools {
    /// Whether the output should be read for calls.
    pub(super) fn offered(&self) -> bool {
        !self.list.is_empty() && self.choice != ToolChoice::None
    }
}

/// A JSON Schema given inline or as a JSON string (vLLM accepts both).
fn schema(v: &Value, param: &'static str) -> OaResult<Value> {
    match v {
        Value::Object(_) | Value::Bool(_) => Ok(v.clone()),
        Value::String(s) => serde_json::from_str(s)
            .map_err(|e| bad(format!("'{param}' is not valid JSON: {e}"), param)),
        other => Err(bad(
            format!("'{param}' must be a JSON Schema object, got {other}"),
            param,
        )),
    }
}

fn text(v: &Value, param: &'static str) -> OaResult<String> {
    v.as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| bad(format!("'{param}' must be a non-empty string"), param))
}

fn choices(v: &Value, param: &'static str) -> OaResult<Vec<String>> {
    v.as_array()
        .filter(|a| !a.is_empty())
        .and_then(|a| {
            a.iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| {
            bad(
                format!("'{param}' must be a non-empty list of strings"),
                param,
            )
        })
}

/// OpenAI's `response_format`.
fn response_format(v: &Value) -> OaResult<Option<Constraint>> {
    const P: &str = "response_format";
    let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(Constraint::JsonObject)),
        "json_schema" => {
            let s = v
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| bad("'response_format.json_schema.schema' is required", P))?;
            Ok(Some(Constraint::JsonSchema(schema(s, P)?)))
        }
        other => Err(bad(
            format!(
                "'response_format.type' must be text, json_object or json_schema, got '{other}'"
            ),
            P,
        )),
    }
}

/// The one output constraint a request names, if any.
pub(super) fn constraint(o: &Map<String, Value>) -> OaResult<Option<Constraint>> {
    let mut found: Vec<(&'static str, Constraint)> = Vec::new();
    let present = |k: &str| o.get(k).filter(|v| !v.is_null());
    if let Some(v) = present("response_format")
        && let Some(c) = response_format(v)?
    {
        found.push(("response_format", c));
    }
    if let Some(v) = present("guided_json") {
        found.push((
            "guided_json",
            Constraint::JsonSchema(schema(v, "guided_json")?),
        ));
    }
    if let Some(v) = present("guided_regex") {
        found.push(("guided_regex", Constraint::Regex(text(v, "guided_regex")?)));
    }
    if let Some(v) = present("guided_choice") {
        found.push((
            "guided_choice",
            Constraint::Choice(choices(v, "guided_choice")?),
        ));
    }
    if let Some(v) = present("guided_grammar") {
        found.push((
            "guided_grammar",
            Constraint::Lark(text(v, "guided_grammar")?),
        ));
    }
    if let Some(v) = present("structured_outputs") {
        const P: &str = "structured_outputs";
        let Value::Object(so) = v else {
            return Err(bad("'structured_outputs' must be an object", P));
        };
        for (k, v) in so.iter().filter(|(_, v)| !v.is_null()) {
            let c = match k.as_str() {
                "json" => Constraint::JsonSchema(schema(v, P)?),
                "json_object" if v.as_bool() == Some(true) => Constraint::JsonObject,
                "regex" => Constraint::Regex(text(v, P)?),
                "choice" => Constraint::Choice(choices(v, P)?),
                "grammar" => Constraint::Lark(text(v, P)?),
                _ => continue,
            };
            found.push((P, c));
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop().map(|(_, c)| c)),
        _ => Err(bad(
            format!(
                "only one output constraint may be given; this request has {}",
                found.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
            ),
            found[1].0,
        )),
    }
}

/// `tools` and `tool_choice`.
pub(super) fn tools(o: &Map<String, Value>) -> OaResult<Tools> {
    let list = match o.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(other) => return Err(bad(format!("'tools' must be a list, got {other}"), "tools")),
    };
    for (i, t) in list.iter().enumerate() {
        let name = t
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str);
        if t.get("type").and_then(Value::as_str) != Some("function")
            || name.is_none_or(str::is_empty)
        {
            return Err(bad(
                format!(
                    "tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
                ),
                "tools",
            ));
        }
        if let Some(p) = t["function"].get("parameters")
            && !(p.is_object() || p.is_null())
        {
            return Err(bad(
                format!("tools[{i}].function.parameters must be a JSON Schema object"),
                "tools",
            ));
        }
    }
    let names: Vec<&str> = list
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    let choice = match o.get("tool_choice") {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad(
                    format!(
                        "'tool_choice' must be none, auto, required or a function, got '{other}'"
                    ),
                    "tool_choice",
                ));
            }
        },
        Some(v @ Value::Object(_)) => {
            let name = v["function"]["name"].as_str().unwrap_or_default();
            if !names.contains(&name) {
                return Err(bad(
                    format!("'tool_choice' names function '{name}', which is not in 'tools'"),
                    "tool_choice",
                ));
            }
            ToolChoice::Named(name.to_string())
        }
        Some(other) => {
            return Err(bad(
                format!("'tool_choice' must be a string or an object, got {other}"),
                "tool_choice",
            ));
        }
    };
    if matches!(choice, ToolChoice::Required) && list.is_empty() {
        return Err(bad("'tool_choice': required needs 'tools'", "tool_choice"));
    }
    let parallel = o.get("parallel_tool_calls").and_then(Value::as_bool) == Some(true);
    Ok(Tools {
        list,
        choice,
        parallel,
    })
}

/// The schema of one call to `tool` in `format`.
fn call_schema(tool: &Value, format: ToolFormat) -> Value {
    let f = &tool["function"];
    let params = match f.get("parameters") {
        Some(p) if p.is_object() => p.clone(),
        _ => json!({"type": "object"}),
    };
    let args_key = if format == ToolFormat::Llama3Json {
        "parameters"
    } else {
        "arguments"
    };
    json!({
        "type": "object",
        "properties": {"name": {"const": f["name"]}, args_key: params},
        "required": ["name", args_key],
        "additionalProperties": false,
    })
}

/// The grammar that forces the calls `tools.choice` asks for, in the model's format; `None`
/// when the model may answer freely. One call, unless the request said
/// `parallel_tool_calls: true` and did not name the function: a small model left free to add
/// calls tends to repeat them until `max_tokens`.
pub(super) fn forced_calls(tools: &Tools, format: ToolFormat) -> OaResult<Option<Constraint>> {
    let chosen: Vec<&Value> = match &tools.choice {
        ToolChoice::None | ToolChoice::Auto => return Ok(None),
        ToolChoice::Required => tools.list.iter().collect(),
        ToolChoice::Named(n) => tools
            .list
            .iter()
            .filter(|t| t["function"]["name"].as_str() == Some(n))
            .collect(),
    };
    let schemas: Vec<Value> = chosen.iter().map(|t| call_schema(t, format)).collect();
    let one = if schemas.len() == 1 {
        schemas[0].clone()
    } else {
        json!({"anyOf": schemas})
    };
    let compact =
        json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "});
    let mut one = one;
    one["x-guidance"] = compact;
    let grammar = match format {
        ToolFormat::Hermes => {
            let more = if tools.parallel && tools.choice == ToolChoice::Required {
                " (\"\\n\" call)*"
            } else {
                ""
            };
            format!(
                "start: call{more}\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: %json {one}"
            )
        }
        ToolFormat::Llama3Json => format!("start: %json {one}"),
        ToolFormat::Mistral => {
            let most = if tools.parallel && tools.choice == ToolChoice::Required {
                Value::Null
            } else {
                json!(1)
            };
            let mut list = json!({"type": "array", "items": one, "minItems": 1,
                "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}});
            if !most.is_null() {
                list["maxItems"] = most;
            }
            format!("start: %json {list}")
        }
    };
    Ok(Some(Constraint::Lark(grammar)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn each_constraint_field_is_read() {
        let c = |s| constraint(&obj(s)).unwrap();
        assert_eq!(c(r#"{"response_format": {"type": "text"}}"#), None);
        assert_eq!(
            c(r#"{"response_format": {"type": "json_object"}}"#),
            Some(Constraint::JsonObject)
        );
        assert_eq!(
            c(
                r#"{"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}}}"#
            ),
            Some(Constraint::JsonSchema(json!({"type": "integer"})))
        );
        assert_eq!(
            c(r#"{"guided_json": "{\"type\": \"string\"}"}"#),
            Some(Constraint::JsonSchema(json!({"type": "string"})))
        );
        assert_eq!(
            c(r#"{"structured_outputs": {"choice": ["yes", "no"]}}"#),
            Some(Constraint::Choice(vec!["yes".into(), "no".into()]))
        );
        assert_eq!(
            c(r#"{"guided_regex": "[0-9]+"}"#),
            Some(Constraint::Regex("[0-9]+".into()))
        );
    }

    #[test]
    fn malformed_or_doubled_constraints_are_refused_by_name() {
        for (body, field) in [
            (r#"{"response_format": {"type": "xml"}}"#, "response_format"),
            (
                r#"{"response_format": {"type": "json_schema"}}"#,
                "response_format",
            ),
            (r#"{"guided_json": "{nope"}"#, "guided_json"),
            (r#"{"guided_choice": []}"#, "guided_choice"),
            (
                r#"{"guided_regex": "a", "response_format": {"type": "json_object"}}"#,
                "guided_regex",
            ),
        ] {
            let e = constraint(&obj(body)).expect_err(body);
            assert!(format!("{e:?}").contains(field), "{body}: {e:?}");
        }
    }

    #[test]
    fn tool_choice_is_checked_against_the_tools() {
        let t = r#"{"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]"#;
        assert_eq!(
            tools(&obj(&format!("{t}}}"))).unwrap().choice,
            ToolChoice::Auto
        );
        assert_eq!(
            tools(&obj(&format!(
                r#"{t}, "tool_choice": {{"type": "function", "function": {{"name": "f"}}}}}}"#
            )))
            .unwrap()
            .choice,
            ToolChoice::Named("f".into())
        );
        assert!(
            tools(&obj(&format!(
                r#"{t}, "tool_choice": {{"type": "function", "function": {{"name": "g"}}}}}}"#
            )))
            .is_err()
        );
        assert!(tools(&obj(r#"{"tools": [{"type": "function"}]}"#)).is_err());
        assert!(tools(&obj(r#"{"tool_choice": "required"}"#)).is_err());
        assert!(!tools(&obj(r#"{"tools": []}"#)).unwrap().offered());
    }

    #[test]
    fn a_forced_call_is_a_grammar_in_the_models_format() {
        let t = tools(&obj(
            r#"{"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}], "tool_choice": "required"}"#,
        ))
        .unwrap();
        let Some(Constraint::Lark(g)) = forced_calls(&t, ToolFormat::Hermes).unwrap() else {
            panic!("no grammar")
        };
        assert!(
            g.contains("<tool_call>") && g.contains(r#""const":"f""#),
            "{g}"
        );
        assert!(
            !g.contains("call)*"),
            "one call unless parallel calls are asked for: {g}"
        );
        let parallel = Tools {
            parallel: true,
            ..t.clone()
        };
        let Some(Constraint::Lark(g)) = forced_calls(&parallel, ToolFormat::Hermes).unwrap() else {
            panic!("no grammar")
        };
        assert!(g.contains("call)*"), "{g}");
        let Some(Constraint::Lark(g)) = forced_calls(&t, ToolFormat::Llama3Json).unwrap() else {
            panic!("no grammar")
        };
        assert!(g.contains(r#""parameters""#), "{g}");
    }
}
