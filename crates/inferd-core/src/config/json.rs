//! A model config given as JSON (Triton's load API `parameters.config`, in protobuf's JSON
//! mapping) turned into `config.pbtxt` text, so it goes through the one config reader with all
//! its checks and diagnostics rather than a second, laxer path.
//!
//! The JSON mapping differs from the text format in three ways this undoes: enum values and
//! 64-bit integers are JSON strings (`"TYPE_FP32"`, `"dims": ["-1"]`), and map fields are JSON
//! objects keyed by the map key. Which strings stay quoted is decided by field name: the
//! schema's string fields are few.

use serde_json::Value;

/// Fields of Triton's model config whose values are strings (everything else written as a JSON
/// string is an enum value or a 64-bit integer).
const STRING_FIELDS: &[&str] = &[
    "name",
    "platform",
    "backend",
    "runtime",
    "default_model_filename",
    "label_filename",
    "string_value",
    "model_name",
    "input_name",
    "output_name",
    "data_file",
    "input_data_file",
    "key",
    "profile",
    "host_policy",
    "target_name",
    "source_input",
    "cc_model_filenames",
];

/// Map fields: a JSON object keyed by the map key becomes repeated `{ key value }` entries.
const MAP_FIELDS: &[&str] = &[
    "parameters",
    "input_map",
    "output_map",
    "priority_queue_policy",
    "inputs",
    "cc_model_filenames",
    "metric_tags",
];

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn bare_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' || c == '+')
}

fn scalar(field: &str, v: &Value) -> Result<String, String> {
    Ok(match v {
        Value::String(s) if STRING_FIELDS.contains(&field) => quote(s),
        Value::String(s) if bare_ok(s) => s.clone(),
        Value::String(s) => {
            return Err(format!(
                "field '{field}': {s:?} is neither an enum value nor a number"
            ));
        }
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        Value::Array(_) | Value::Object(_) => {
            return Err(format!("field '{field}': expected a value, found {v}"));
        }
    })
}

/// A field name as the text format writes it: an identifier, nothing that could end or open a
/// field, a message or a comment.
fn identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn field(out: &mut String, name: &str, v: &Value, depth: usize) -> Result<(), String> {
    if depth > 32 {
        return Err("the config nests more than 32 levels".into());
    }
    if !identifier(name) {
        return Err(format!("{name:?} is not a field name"));
    }
    match v {
        Value::Null => {}
        Value::Array(items) => {
            for item in items {
                field(out, name, item, depth + 1)?;
            }
        }
        Value::Object(map) if MAP_FIELDS.contains(&name) && !is_message_map(map) => {
            for (k, val) in map {
                out.push_str(&format!("{name} {{ key: {} value: ", quote(k)));
                match val {
                    Value::Object(m) => {
                        out.push_str("{ ");
                        message(out, m, depth + 1)?;
                        out.push_str("} ");
                    }
                    other => out.push_str(&scalar("string_value", other)?),
                }
                out.push_str(" } ");
            }
        }
        Value::Object(map) => {
            out.push_str(name);
            out.push_str(" { ");
            message(out, map, depth + 1)?;
            out.push_str("} ");
        }
        scalar_value => {
            let text = scalar(name, scalar_value)?;
            out.push_str(&format!("{name}: {text} "));
        }
    }
    Ok(())
}

/// `parameters` is a map in the model config but a message elsewhere; a JSON object that
/// already spells out `key`/`value` entries is taken as written.
fn is_message_map(map: &serde_json::Map<String, Value>) -> bool {
    map.contains_key("key") && map.contains_key("value")
}

fn message(
    out: &mut String,
    map: &serde_json::Map<String, Value>,
    depth: usize,
) -> Result<(), String> {
    for (k, v) in map {
        field(out, k, v, depth)?;
    }
    Ok(())
}

/// Turns a JSON model config into `config.pbtxt` text (an error when it is not a JSON object).
pub fn json_to_pbtxt(json: &str) -> Result<String, String> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| format!("the config override is not valid JSON: {e}"))?;
    let Value::Object(map) = v else {
        return Err("the config override must be a JSON object (a model config)".into());
    };
    let mut out = String::new();
    message(&mut out, &map, 0)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use crate::tensor::DataType;

    #[test]
    fn protobuf_json_reads_like_the_text_format() {
        let json = r#"{
            "name": "m", "backend": "onnxruntime", "max_batch_size": 8,
            "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": ["-1", 4]}],
            "output": [{"name": "OUT", "data_type": "TYPE_INT64", "dims": [1]}],
            "instance_group": [{"kind": "KIND_CPU", "count": 2}],
            "dynamic_batching": {"max_queue_delay_microseconds": "100"},
            "version_policy": {"specific": {"versions": [2]}},
            "parameters": {"k": {"string_value": "v \"q\""}}
        }"#;
        let text = json_to_pbtxt(json).unwrap();
        let p = parse_config(&text, std::path::Path::new("override")).unwrap();
        let c = p.config;
        assert_eq!(c.max_batch_size, 8);
        assert_eq!(c.input[0].dims, vec![-1, 4]);
        assert_eq!(c.output[0].data_type.0, DataType::I64);
        assert_eq!(c.instance_group[0].count, 2);
        assert_eq!(
            c.dynamic_batching.unwrap().max_queue_delay_microseconds,
            100
        );
        assert_eq!(c.parameters["k"].string_value, "v \"q\"");
    }

    #[test]
    fn mistakes_in_json_configs_are_named_like_file_ones() {
        let e = json_to_pbtxt("[1]").unwrap_err();
        assert!(e.contains("JSON object"), "{e}");
        let e = json_to_pbtxt("{").unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = json_to_pbtxt(r#"{"max_batch_size": "eight things"}"#).unwrap_err();
        assert!(e.contains("max_batch_size"), "{e}");
        let e = json_to_pbtxt(r#"{"parameters": {"k": [1]}}"#).unwrap_err();
        assert!(e.contains("expected a value"), "{e}");
        let e = json_to_pbtxt(r#"{"x # ": 1}"#).unwrap_err();
        assert!(e.contains("not a field name"), "{e}");
        let e =
            json_to_pbtxt(r#"{"input": [{"name } max_batch_size: 9 input {": 1}]}"#).unwrap_err();
        assert!(e.contains("not a field name"), "{e}");
        let text = json_to_pbtxt(r#"{"max_batch_sise": 4}"#).unwrap();
        let errs = parse_config(&text, std::path::Path::new("override")).unwrap_err();
        assert!(errs[0].to_string().contains("max_batch_sise"), "{errs:?}");
    }
}
