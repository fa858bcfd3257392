//! The edges of Triton's binary tensor extension: the `Inference-Header-Content-Length` header
//! (parsed and ranged as Triton does, with its words), the request limits Triton's tests check
//! (request JSON size, JSON nesting depth), and raw binary requests
//! (`Inference-Header-Content-Length: 0`): the whole body is the bytes of the model's single
//! input, its shape deduced from the config.

use bytes::Bytes;
use inferd_core::backend::NamedTensor;
use inferd_core::config::ModelConfig;
use inferd_core::request::InferRequest;
use inferd_core::tensor::{DataType, Tensor, TensorData};

use super::codec::OutputEncoding;
use crate::error::ApiError;

/// JSON nesting deeper than this is refused (Triton's `HTTP_MAX_JSON_NESTING_DEPTH`).
pub const MAX_JSON_DEPTH: usize = 100;

const HEADER: &str = "Inference-Header-Content-Length";

/// Parses the header's value as Triton does (a 32-bit integer).
pub(super) fn parse_header_len(v: &str) -> Result<i64, ApiError> {
    let t = v.trim();
    match t.parse::<i64>() {
        Ok(n) if i32::try_from(n).is_ok() => Ok(n),
        Ok(_) => Err(ApiError::bad_request(format!(
            "Unable to parse {HEADER}, value is out of range [ {}, {} ], got: {t}",
            i32::MIN,
            i32::MAX
        ))),
        Err(_)
            if !t.is_empty()
                && t.trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit()) =>
        {
            Err(ApiError::bad_request(format!(
                "Unable to parse {HEADER}, value is out of range [ {}, {} ], got: {t}",
                i32::MIN,
                i32::MAX
            )))
        }
        Err(_) => Err(ApiError::bad_request(format!(
            "Unable to parse {HEADER}, got: {t}"
        ))),
    }
}

/// The header length checked against the body (`0..=body`).
pub(super) fn header_in_body(n: i64, body: usize) -> Result<usize, ApiError> {
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= body)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "inference header size should be in range (0, {body}), got: {n}"
            ))
        })
}

/// Refuses a request JSON larger than `max` or nested deeper than [`MAX_JSON_DEPTH`]
/// (checked on the bytes, before parsing: the parser never sees a hostile depth).
pub(super) fn check_json(json: &[u8], max: usize) -> Result<(), ApiError> {
    if json.len() > max {
        return Err(ApiError::bad_request(format!(
            "request JSON size of {} bytes exceeds the maximum allowed input size of {max} bytes. Use --http-max-input-size to increase the limit.",
            json.len()
        )));
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(ApiError::bad_request(format!(
                        "JSON nesting depth exceeds maximum allowed limit ({MAX_JSON_DEPTH})"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A raw binary request: the body is the model's single input; the answer is binary.
pub(super) fn decode_raw(
    model: &str,
    cfg: &ModelConfig,
    body: Bytes,
    max: usize,
) -> Result<(InferRequest, OutputEncoding), ApiError> {
    let bad = |m: String| Err(ApiError::bad_request(m));
    if body.len() > max {
        return bad(format!(
            "Raw input has a byte_size ({} bytes) that exceeds the maximum allowed value of {max} bytes. Use --http-max-input-size to increase the limit.",
            body.len()
        ));
    }
    if cfg.input.len() != 1 {
        return bad(format!(
            "Raw request must only have 1 input (found 1) to be deduced but got {} inputs in '{model}' model configuration",
            cfg.input.len()
        ));
    }
    let spec = &cfg.input[0];
    let name = &spec.name;
    let dtype = spec.data_type.0;
    let variable = spec.dims.iter().filter(|&&d| d < 0).count();
    if variable > 1 {
        return bad(format!(
            "The shape of the raw input '{name}' can not be deduced because there are more than one variable-sized dimension"
        ));
    }
    let batching = cfg.batches();
    let known: usize = spec
        .dims
        .iter()
        .filter(|&&d| d >= 0)
        .map(|&d| d as usize)
        .product();
    let tensor = match dtype.size() {
        None => {
            if variable > 0 || known != 1 {
                return bad(format!(
                    "For BYTE datatype raw input '{name}', the model must have input shape [1]"
                ));
            }
            let mut shape = vec![1; spec.dims.len()];
            if batching {
                shape.insert(0, 1);
            }
            Tensor::new(DataType::Bytes, shape, TensorData::Bytes(vec![body]))
        }
        Some(size) => {
            let per = known * size;
            if per == 0 || !body.len().is_multiple_of(per) || body.is_empty() {
                return bad(format!(
                    "raw input '{name}': {} bytes are not a whole number of {dtype} elements of the shape the model takes ({per} bytes each)",
                    body.len()
                ));
            }
            let n = body.len() / per;
            let mut shape: Vec<usize> = spec
                .dims
                .iter()
                .map(|&d| if d < 0 { n } else { d as usize })
                .collect();
            match (batching, variable) {
                // The batch is the one variable dimension: deduced.
                (true, 0) => shape.insert(0, n),
                // Another dimension varies: the batch is 1, as in Triton.
                (true, _) => shape.insert(0, 1),
                (false, 0) if n != 1 => {
                    return bad(format!(
                        "raw input '{name}': {} bytes do not match the model's fixed shape {:?} ({per} bytes)",
                        body.len(),
                        spec.dims
                    ));
                }
                (false, _) => {}
            }
            Tensor::new(dtype, shape, TensorData::Raw(body))
        }
    }
    .map_err(|e| ApiError::bad_request(format!("raw input '{name}': {e}")))?;
    let req = InferRequest {
        inputs: vec![NamedTensor {
            name: name.clone(),
            tensor,
        }],
        ..Default::default()
    };
    let enc = OutputEncoding {
        binary_default: true,
        ..Default::default()
    };
    Ok((req, enc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferd_core::config::parse_config;

    fn cfg(text: &str) -> ModelConfig {
        parse_config(text, std::path::Path::new("m/config.pbtxt"))
            .unwrap()
            .config
    }

    fn err(r: Result<(InferRequest, OutputEncoding), ApiError>) -> String {
        r.err().map(|e| e.message).unwrap_or_default()
    }

    #[test]
    fn shapes_are_deduced_with_at_most_one_variable_dimension() {
        let c = cfg(
            r#"name: "m" max_batch_size: 8 input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]"#,
        );
        let (r, enc) = decode_raw("m", &c, Bytes::from(vec![0u8; 32]), 1 << 20).unwrap();
        assert_eq!(r.inputs[0].tensor.shape(), &[2, 4]);
        assert!(enc.binary_default);
        let c = cfg(
            r#"name: "m" max_batch_size: 8 input [ { name: "x" data_type: TYPE_INT32 dims: [ -1, 2 ] } ]"#,
        );
        let (r, _) = decode_raw("m", &c, Bytes::from(vec![0u8; 24]), 1 << 20).unwrap();
        assert_eq!(r.inputs[0].tensor.shape(), &[1, 3, 2]);
        let c = cfg(r#"name: "m" input [ { name: "x" data_type: TYPE_INT32 dims: [ -1, -1 ] } ]"#);
        let e = err(decode_raw("m", &c, Bytes::from(vec![0u8; 24]), 1 << 20));
        assert!(e.contains("more than one variable-sized dimension"), "{e}");
    }

    #[test]
    fn what_cannot_be_deduced_is_named_in_tritons_words() {
        let two = cfg(
            r#"name: "m" input [ { name: "a" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "b" data_type: TYPE_FP32 dims: [ 1 ] } ]"#,
        );
        let e = err(decode_raw("m", &two, Bytes::from(vec![0u8; 4]), 1 << 20));
        assert!(e.contains("Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in 'm' model configuration"), "{e}");
        let s = cfg(r#"name: "m" input [ { name: "s" data_type: TYPE_STRING dims: [ 2 ] } ]"#);
        let e = err(decode_raw("m", &s, Bytes::from_static(b"hi"), 1 << 20));
        assert!(
            e.contains("For BYTE datatype raw input 's', the model must have input shape [1]"),
            "{e}"
        );
        let s = cfg(r#"name: "m" input [ { name: "s" data_type: TYPE_STRING dims: [ 1 ] } ]"#);
        let (r, _) = decode_raw("m", &s, Bytes::from_static(b"hello"), 1 << 20).unwrap();
        assert_eq!(
            r.inputs[0].tensor.bytes_elements().unwrap()[0].as_ref(),
            b"hello"
        );
        let f = cfg(r#"name: "m" input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]"#);
        let e = err(decode_raw("m", &f, Bytes::from(vec![0u8; 6]), 1 << 20));
        assert!(e.contains("not a whole number"), "{e}");
        let e = err(decode_raw("m", &f, Bytes::from(vec![0u8; 32]), 16));
        assert!(e.contains("Raw input has a byte_size (32 bytes) that exceeds the maximum allowed value of 16 bytes"), "{e}");
    }

    #[test]
    fn header_lengths_and_json_limits_use_tritons_words() {
        assert!(
            parse_header_len("abc")
                .err()
                .unwrap()
                .message
                .contains("Unable to parse Inference-Header-Content-Length, got: abc")
        );
        assert!(
            parse_header_len("99999999999")
                .err()
                .unwrap()
                .message
                .contains("value is out of range [ -2147483648, 2147483647 ]")
        );
        let e = header_in_body(-1, 10).err().unwrap();
        assert!(
            e.message
                .contains("inference header size should be in range (0, 10), got: -1")
        );
        assert_eq!(header_in_body(10, 10).unwrap(), 10);
        let deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
        let e = check_json(deep.as_bytes(), 1 << 20).err().unwrap();
        assert!(
            e.message
                .contains("JSON nesting depth exceeds maximum allowed limit (100)")
        );
        let in_string = format!("{{\"a\": \"{}\"}}", "[".repeat(500));
        check_json(in_string.as_bytes(), 1 << 20).unwrap();
        let e = check_json(b"{}", 1).err().unwrap();
        assert!(e.message.contains(
            "request JSON size of 2 bytes exceeds the maximum allowed input size of 1 bytes"
        ));
    }
}
