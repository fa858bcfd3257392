//! Encoding the KServe v2 HTTP inference response: outputs as JSON arrays, or as raw bytes
//! after the JSON header (Triton's binary extension), or written into the shared-memory regions
//! the request named. The decoding side is the parent module.

use bytes::{Bytes, BytesMut};
use half::{bf16, f16};
use inferd_core::request::InferResponse;
use inferd_core::tensor::{DataType, Tensor, TensorData};
use serde_json::{Map, Number, Value};

use super::{DecodeError, OutputEncoding, Result, err};

/// Writes a tensor's elements as a flat JSON array.
pub fn tensor_json(t: &Tensor) -> Value {
    let num = |f: f64| {
        Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    };
    match t.data() {
        TensorData::Bytes(items) => Value::Array(
            items
                .iter()
                .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
                .collect(),
        ),
        TensorData::Raw(r) => {
            let vals: Vec<Value> = match t.dtype() {
                DataType::Bool => r.iter().map(|&b| Value::Bool(b != 0)).collect(),
                DataType::U8 => r.iter().map(|&b| Value::from(b)).collect(),
                DataType::I8 => r.iter().map(|&b| Value::from(b as i8)).collect(),
                DataType::U16 => r
                    .chunks_exact(2)
                    .map(|c| Value::from(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
                DataType::I16 => r
                    .chunks_exact(2)
                    .map(|c| Value::from(i16::from_le_bytes([c[0], c[1]])))
                    .collect(),
                DataType::U32 => r
                    .chunks_exact(4)
                    .map(|c| Value::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
                DataType::I32 => r
                    .chunks_exact(4)
                    .map(|c| Value::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
                DataType::U64 => r
                    .chunks_exact(8)
                    .map(|c| Value::from(u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
                    .collect(),
                DataType::I64 => r
                    .chunks_exact(8)
                    .map(|c| Value::from(i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
                    .collect(),
                DataType::F16 => r
                    .chunks_exact(2)
                    .map(|c| num(f16::from_le_bytes([c[0], c[1]]).to_f64()))
                    .collect(),
                DataType::BF16 => r
                    .chunks_exact(2)
                    .map(|c| num(bf16::from_le_bytes([c[0], c[1]]).to_f64()))
                    .collect(),
                DataType::F32 => r
                    .chunks_exact(4)
                    .map(|c| num(f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64))
                    .collect(),
                DataType::F64 => r
                    .chunks_exact(8)
                    .map(|c| num(f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
                    .collect(),
                DataType::Bytes => Vec::new(),
            };
            Value::Array(vals)
        }
    }
}

/// An encoded response: body and, when binary outputs follow, the JSON header's length.
pub struct EncodedResponse {
    /// The body.
    pub body: Bytes,
    /// `Inference-Header-Content-Length`, set when the body carries binary data.
    pub header_len: Option<usize>,
}

/// Writes the outputs the request placed in shared memory into their regions (before
/// [`encode_response`], which then sends only their datatype, shape and size).
pub fn write_shm_outputs(
    resp: &InferResponse,
    enc: &OutputEncoding,
    shm: &crate::shm::SharedMemory,
) -> Result<()> {
    for o in &resp.outputs {
        let Some(place) = enc.shm.get(&o.name) else {
            continue;
        };
        let bytes = o.tensor.to_wire_bytes();
        if bytes.len() as u64 > place.byte_size {
            return err(format!(
                "output '{}': {} bytes do not fit the {} bytes given in shared-memory region '{}'",
                o.name,
                bytes.len(),
                place.byte_size,
                place.region
            ));
        }
        shm.write(
            &place.region,
            place.offset,
            &bytes,
            &format!("output '{}'", o.name),
        )
        .map_err(|e| DecodeError(e.0))?;
    }
    Ok(())
}

/// Encodes an inference response.
pub fn encode_response(resp: &InferResponse, enc: &OutputEncoding) -> EncodedResponse {
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut blobs = Vec::new();
    for o in &resp.outputs {
        let mut m = Map::new();
        m.insert("name".into(), Value::String(o.name.clone()));
        m.insert(
            "datatype".into(),
            Value::String(o.tensor.dtype().as_str().into()),
        );
        m.insert("shape".into(), Value::from(o.tensor.shape().to_vec()));
        if let Some(place) = enc.shm.get(&o.name) {
            let mut p = Map::new();
            p.insert(
                "shared_memory_region".into(),
                Value::String(place.region.clone()),
            );
            p.insert(
                "shared_memory_byte_size".into(),
                Value::from(o.tensor.wire_len()),
            );
            if place.offset > 0 {
                p.insert("shared_memory_offset".into(), Value::from(place.offset));
            }
            m.insert("parameters".into(), Value::Object(p));
        } else if enc.is_binary(&o.name) {
            let mut p = Map::new();
            p.insert("binary_data_size".into(), Value::from(o.tensor.wire_len()));
            m.insert("parameters".into(), Value::Object(p));
            blobs.push(o.tensor.to_wire_bytes());
        } else {
            m.insert("data".into(), tensor_json(&o.tensor));
        }
        outputs.push(Value::Object(m));
    }
    let mut head = Map::new();
    head.insert("model_name".into(), Value::String(resp.model_name.clone()));
    head.insert(
        "model_version".into(),
        Value::String(resp.model_version.to_string()),
    );
    if !resp.id.is_empty() {
        head.insert("id".into(), Value::String(resp.id.clone()));
    }
    // The model version that produced the answer, also when a route chose it.
    let mut params = Map::new();
    params.insert(
        "target".into(),
        Value::String(crate::traffic::view::target_label(
            &resp.model_name,
            resp.model_version,
        )),
    );
    head.insert("parameters".into(), Value::Object(params));
    head.insert("outputs".into(), Value::Array(outputs));
    let header = serde_json::to_vec(&Value::Object(head)).unwrap_or_default();
    if blobs.is_empty() {
        return EncodedResponse {
            body: header.into(),
            header_len: None,
        };
    }
    let total = header.len() + blobs.iter().map(Bytes::len).sum::<usize>();
    let mut body = BytesMut::with_capacity(total);
    body.extend_from_slice(&header);
    for b in &blobs {
        body.extend_from_slice(b);
    }
    EncodedResponse {
        body: body.freeze(),
        header_len: Some(header.len()),
    }
}
