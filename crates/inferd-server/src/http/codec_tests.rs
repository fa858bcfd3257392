//! Tests of [`super`]: the inference body, JSON and binary.

use super::*;
use inferd_core::request::InferResponse;
use inferd_core::tensor::encode_length_prefixed;

fn body(json: &str, bin: &[u8]) -> (Bytes, Option<usize>) {
    let mut b = json.as_bytes().to_vec();
    b.extend_from_slice(bin);
    (
        b.into(),
        if bin.is_empty() {
            None
        } else {
            Some(json.len())
        },
    )
}

fn decode_err(json: &str, bin: &[u8], hlen: Option<usize>) -> String {
    let (b, h) = body(json, bin);
    decode_request(&b, hlen.or(h), &Default::default())
        .expect_err("should fail")
        .0
}

#[test]
fn decodes_json_and_binary_inputs() {
    let raw: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let json = r#"{"id":"7","inputs":[
        {"name":"a","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}},
        {"name":"b","shape":[2,2],"datatype":"INT64","data":[[1,2],[3,-4]]},
        {"name":"c","shape":[2],"datatype":"BYTES","data":["x","héllo"]}],
        "outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
    let (b, h) = body(json, &raw);
    let (req, enc) = decode_request(&b, h, &Default::default()).unwrap();
    assert_eq!(req.id, "7");
    assert_eq!(req.inputs[0].tensor.to_f32_vec().unwrap(), vec![1.5, -2.0]);
    assert_eq!(
        req.inputs[1].tensor.to_i64_vec().unwrap(),
        vec![1, 2, 3, -4]
    );
    assert_eq!(
        req.inputs[2].tensor.bytes_elements().unwrap()[1],
        Bytes::from("héllo".as_bytes())
    );
    assert_eq!(req.outputs, Some(vec!["y".to_string()]));
    assert!(enc.is_binary("y"));
}

#[test]
fn binary_size_larger_than_body_is_refused() {
    let m = decode_err(
        r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#,
        &[0; 4],
        None,
    );
    assert!(m.contains("binary_data_size is 8 but only 4 bytes"), "{m}");
}

#[test]
fn trailing_binary_bytes_are_refused() {
    let m = decode_err(
        r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#,
        &[0; 6],
        None,
    );
    assert!(m.contains("2 bytes of binary data after"), "{m}");
}

#[test]
fn header_length_beyond_body_is_refused() {
    let m = decode_err(r#"{"inputs":[]}"#, b"", Some(1000));
    assert!(m.contains("Inference-Header-Content-Length is 1000"), "{m}");
}

#[test]
fn malformed_json_and_types_are_refused() {
    assert!(decode_err("{not json", b"", None).contains("malformed inference request JSON"));
    let m = decode_err(
        r#"{"inputs":[{"name":"a","shape":[2],"datatype":"INT8","data":[1,300]}]}"#,
        b"",
        None,
    );
    assert!(m.contains("element 1 (300) is not a valid INT8"), "{m}");
    let m = decode_err(
        r#"{"inputs":[{"name":"a","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
        b"",
        None,
    );
    assert!(m.contains("negative"), "{m}");
    let m = decode_err(
        r#"{"inputs":[{"name":"a","shape":[3],"datatype":"FP32","data":[1,2]}]}"#,
        b"",
        None,
    );
    assert!(
        m.contains("input 'a'") && m.contains("needs 12 bytes"),
        "{m}"
    );
    let m = decode_err(
        r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FLOAT","data":[1]}]}"#,
        b"",
        None,
    );
    assert!(m.contains("unknown datatype 'FLOAT'"), "{m}");
}

#[test]
fn json_data_with_a_lying_shape_is_refused_without_a_huge_allocation() {
    // Pre-sizing from a billion-element shape would allocate 4 GB; the text holds one element.
    let m = decode_err(
        r#"{"inputs":[{"name":"a","shape":[1000000000],"datatype":"FP32","data":[1.5]}]}"#,
        b"",
        None,
    );
    assert!(
        m.contains("input 'a'") && m.contains("4000000000 bytes"),
        "{m}"
    );
    let m = decode_err(
        r#"{"inputs":[{"name":"a","shape":[2],"datatype":"BOOL","data":[true, null]}]}"#,
        b"",
        None,
    );
    assert!(m.contains("element 1 (null) is not a valid BOOL"), "{m}");
    let m = decode_err(
        r#"{"inputs":[{"name":"a","shape":[1],"datatype":"BYTES","data":[7]}]}"#,
        b"",
        None,
    );
    assert!(m.contains("element 0 (7) is not a valid BYTES"), "{m}");
}

#[test]
fn broken_bytes_prefix_is_refused() {
    let mut raw = encode_length_prefixed(&[Bytes::from_static(b"abc")]);
    raw[0] = 50;
    let json = format!(
        r#"{{"inputs":[{{"name":"s","shape":[1],"datatype":"BYTES","parameters":{{"binary_data_size":{}}}}}]}}"#,
        raw.len()
    );
    let m = decode_err(&json, &raw, None);
    assert!(
        m.contains("input 's'") && m.contains("claims 50 bytes"),
        "{m}"
    );
}

#[test]
fn response_round_trips_binary_and_json() {
    let resp = InferResponse {
        model_name: "m".into(),
        model_version: 2,
        id: String::new(),
        outputs: vec![
            NamedTensor {
                name: "bin".into(),
                tensor: Tensor::from_f32(vec![2], &[1.0, 2.0]).unwrap(),
            },
            NamedTensor {
                name: "js".into(),
                tensor: Tensor::from_i64(vec![1], &[5]).unwrap(),
            },
        ],
    };
    let enc = OutputEncoding {
        binary: [("bin".to_string(), true)].into(),
        binary_default: false,
        ..Default::default()
    };
    let out = encode_response(&resp, &enc);
    let h = out.header_len.unwrap();
    let head: Value = serde_json::from_slice(&out.body[..h]).unwrap();
    assert_eq!(head["model_version"], "2");
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
    assert_eq!(head["outputs"][1]["data"], serde_json::json!([5]));
    assert_eq!(&out.body[h..], &[0, 0, 128, 63, 0, 0, 0, 64]);
}
