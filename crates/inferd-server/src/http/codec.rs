//! The KServe v2 HTTP inference body, with Triton's binary tensor extension (decoding here; the
//! response in `codec_encode.rs`): a JSON header
//! (`Inference-Header-Content-Length` bytes long when binary data follows) and, after it, the raw
//! tensors in input order, each `binary_data_size` bytes. BYTES elements are length-prefixed.
//!
//! Decoding never panics and never trusts a size from the client: every slice is checked against
//! the body first.

use std::collections::BTreeMap;

use bytes::Bytes;
use half::{bf16, f16};
use inferd_core::backend::NamedTensor;
use inferd_core::request::{InferRequest, ParamValue};
use inferd_core::tensor::{DataType, Tensor, TensorData};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A decode failure; always the client's fault (HTTP 400).
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

type Result<T> = std::result::Result<T, DecodeError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(DecodeError(msg.into()))
}

#[derive(Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    /// Kept as raw JSON text and parsed straight into typed storage once the datatype is
    /// known: no `Value` tree, whose size would be many times the body's.
    #[serde(default)]
    data: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// How to encode each output of the response.
#[derive(Debug, Default, Clone)]
pub struct OutputEncoding {
    /// Output name -> send as binary.
    pub binary: BTreeMap<String, bool>,
    /// Default for outputs not listed (`binary_data_output` request parameter).
    pub binary_default: bool,
    /// Outputs written into a shared-memory region instead of the body.
    pub shm: BTreeMap<String, ShmRef>,
}

/// A tensor's place in a registered shared-memory region (Triton's `shared_memory_region`,
/// `shared_memory_offset`, `shared_memory_byte_size` parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmRef {
    /// The region's registered name.
    pub region: String,
    /// Offset into the region.
    pub offset: u64,
    /// Bytes available there.
    pub byte_size: u64,
}

fn param_u64(params: &Map<String, Value>, key: &str, what: &str) -> Result<Option<u64>> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            DecodeError(format!(
                "{what}: parameter '{key}' must be a non-negative integer, got {v}"
            ))
        }),
    }
}

/// The shared-memory place a tensor's parameters name, if any.
fn shm_ref(params: &Option<Map<String, Value>>, what: &str) -> Result<Option<ShmRef>> {
    let Some(p) = params else { return Ok(None) };
    let Some(region) = p.get("shared_memory_region") else {
        return Ok(None);
    };
    let Some(region) = region.as_str() else {
        return err(format!(
            "{what}: parameter 'shared_memory_region' must be a string, got {region}"
        ));
    };
    let byte_size = param_u64(p, "shared_memory_byte_size", what)?.ok_or_else(|| {
        DecodeError(format!(
            "{what}: 'shared_memory_region' needs 'shared_memory_byte_size'"
        ))
    })?;
    Ok(Some(ShmRef {
        region: region.to_string(),
        offset: param_u64(p, "shared_memory_offset", what)?.unwrap_or(0),
        byte_size,
    }))
}

impl OutputEncoding {
    fn is_binary(&self, name: &str) -> bool {
        self.binary
            .get(name)
            .copied()
            .unwrap_or(self.binary_default)
    }
}

fn param_bool(params: &Option<Map<String, Value>>, key: &str, what: &str) -> Result<Option<bool>> {
    match params.as_ref().and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => err(format!(
            "{what}: parameter '{key}' must be a boolean, got {other}"
        )),
    }
}

fn to_param(v: &Value) -> Option<ParamValue> {
    match v {
        Value::Bool(b) => Some(ParamValue::Bool(*b)),
        Value::Number(n) => n
            .as_i64()
            .map(ParamValue::Int)
            .or_else(|| n.as_f64().map(ParamValue::Double)),
        Value::String(s) => Some(ParamValue::String(s.clone())),
        _ => None,
    }
}

/// Decodes an inference request body. `header_len` is the `Inference-Header-Content-Length`
/// header, when present.
/// A declared shape, checked as Triton checks it (and in its words): no negative dimension, an
/// element count and a byte size that fit in an i64.
fn checked_shape(name: &str, shape: &[i64], dtype: DataType) -> Result<Vec<usize>> {
    let shown = format!(
        "[{}]",
        shape
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    if shape.iter().any(|&d| d < 0) {
        return err(format!(
            "invalid shape for input '{name}': shape {shown} contains one or more invalid dimensions (a dimension is negative)"
        ));
    }
    let Some(count) = shape.iter().try_fold(1i64, |acc, &d| acc.checked_mul(d)) else {
        return err(format!(
            "invalid shape for input '{name}': shape {shown} causes total element count to exceed maximum size of {}",
            i64::MAX
        ));
    };
    if let Some(size) = dtype.size()
        && size > 1
        && count.checked_mul(size as i64).is_none()
    {
        return err(format!(
            "byte size overflow for input '{name}': element count ({count}) * data type size ({size}) exceeds maximum allowed size ({})",
            i64::MAX
        ));
    }
    Ok(shape.iter().map(|&d| d as usize).collect())
}

/// Inputs that name a shared-memory region are read from `shm`.
pub fn decode_request(
    body: &Bytes,
    header_len: Option<usize>,
    shm: &crate::shm::SharedMemory,
) -> Result<(InferRequest, OutputEncoding)> {
    let hlen = match header_len {
        Some(n) if n > body.len() => {
            return err(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            ));
        }
        Some(n) => n,
        None => body.len(),
    };
    let json: RequestJson = serde_json::from_slice(&body[..hlen])
        .map_err(|e| DecodeError(format!("malformed inference request JSON: {e}")))?;
    let mut binary = body.slice(hlen..);
    let mut req = InferRequest {
        id: json.id.unwrap_or_default(),
        ..Default::default()
    };
    let mut enc = OutputEncoding {
        binary_default: param_bool(&json.parameters, "binary_data_output", "request")?
            .unwrap_or(false),
        ..Default::default()
    };
    if let Some(params) = &json.parameters {
        for (k, v) in params {
            if let Some(p) = to_param(v) {
                req.parameters.insert(k.clone(), p);
            }
        }
    }
    for input in json.inputs {
        let name = input.name;
        let dtype: DataType = input
            .datatype
            .parse()
            .map_err(|e| DecodeError(format!("input '{name}': {e}")))?;
        let shape = checked_shape(&name, &input.shape, dtype)?;
        if let Some(place) = shm_ref(&input.parameters, &format!("input '{name}'"))? {
            if input.data.is_some()
                || input
                    .parameters
                    .as_ref()
                    .is_some_and(|p| p.contains_key("binary_data_size"))
            {
                return err(format!(
                    "input '{name}': give shared_memory_region or data, not both"
                ));
            }
            let what = format!("input '{name}'");
            let raw = shm
                .read(&place.region, place.offset, place.byte_size, &what)
                .map_err(|e| DecodeError(e.0))?;
            let raw = Bytes::from(raw);
            let tensor = match dtype {
                DataType::Bytes => Tensor::from_length_prefixed(shape, &raw),
                _ => Tensor::new(dtype, shape, TensorData::Raw(raw)),
            }
            .map_err(|e| DecodeError(format!("{what} (from shared memory): {e}")))?;
            req.inputs.push(NamedTensor { name, tensor });
            continue;
        }
        let bin_size = match input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
        {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                DecodeError(format!(
                    "input '{name}': binary_data_size must be a non-negative integer, got {v}"
                ))
            })? as usize),
        };
        let tensor = match (bin_size, input.data) {
            (Some(_), Some(_)) => {
                return err(format!(
                    "input '{name}': give either 'data' or binary_data_size, not both"
                ));
            }
            (None, None) => {
                return err(format!(
                    "input '{name}': has neither 'data' nor binary_data_size"
                ));
            }
            (Some(size), None) => {
                if size > binary.len() {
                    return err(format!(
                        "input '{name}': binary_data_size is {size} but only {} bytes of binary data remain in the body",
                        binary.len()
                    ));
                }
                let raw = binary.split_to(size);
                match dtype {
                    DataType::Bytes => Tensor::from_length_prefixed(shape, &raw),
                    _ => Tensor::new(dtype, shape, TensorData::Raw(raw)),
                }
                .map_err(|e| DecodeError(format!("input '{name}': {e}")))?
            }
            (None, Some(data)) => json_tensor(&name, dtype, shape, &data)?,
        };
        req.inputs.push(NamedTensor { name, tensor });
    }
    if !binary.is_empty() {
        return err(format!(
            "the body has {} bytes of binary data after the inputs' binary_data_size total",
            binary.len()
        ));
    }
    if let Some(outputs) = json.outputs {
        let mut names = Vec::with_capacity(outputs.len());
        for o in outputs {
            if let Some(b) = param_bool(
                &o.parameters,
                "binary_data",
                &format!("output '{}'", o.name),
            )? {
                enc.binary.insert(o.name.clone(), b);
            }
            if let Some(place) = shm_ref(&o.parameters, &format!("output '{}'", o.name))? {
                if shm.status(Some(&place.region)).is_err() {
                    return err(format!(
                        "output '{}': shared-memory region '{}' is not registered",
                        o.name, place.region
                    ));
                }
                enc.shm.insert(o.name.clone(), place);
            }
            if o.parameters
                .as_ref()
                .is_some_and(|p| p.contains_key("classification"))
            {
                return err(format!(
                    "output '{}': the classification extension is not supported",
                    o.name
                ));
            }
            names.push(o.name);
        }
        req.outputs = Some(names);
    }
    Ok((req, enc))
}

/// Where JSON elements go: typed little-endian bytes, or BYTES elements.
struct Sink<'a> {
    name: &'a str,
    dtype: DataType,
    raw: Vec<u8>,
    items: Vec<Bytes>,
    count: usize,
}

/// A JSON number as written.
#[derive(Clone, Copy)]
enum Num {
    I(i64),
    U(u64),
    F(f64),
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::I(v) => write!(f, "{v}"),
            Num::U(v) => write!(f, "{v}"),
            Num::F(v) => write!(f, "{v}"),
        }
    }
}

impl Sink<'_> {
    fn bad(&self, what: impl std::fmt::Display) -> String {
        format!(
            "input '{}': element {} ({what}) is not a valid {}",
            self.name, self.count, self.dtype
        )
    }

    fn num(&mut self, n: Num) -> std::result::Result<(), String> {
        macro_rules! int {
            ($t:ty) => {{
                let v: Option<$t> = match n {
                    Num::I(v) => <$t>::try_from(v).ok(),
                    Num::U(v) => <$t>::try_from(v).ok(),
                    Num::F(_) => None,
                };
                let v = v.ok_or_else(|| self.bad(n))?;
                self.raw.extend_from_slice(&v.to_le_bytes());
            }};
        }
        let f = match n {
            Num::I(v) => v as f64,
            Num::U(v) => v as f64,
            Num::F(v) => v,
        };
        match self.dtype {
            DataType::U8 => int!(u8),
            DataType::U16 => int!(u16),
            DataType::U32 => int!(u32),
            DataType::U64 => int!(u64),
            DataType::I8 => int!(i8),
            DataType::I16 => int!(i16),
            DataType::I32 => int!(i32),
            DataType::I64 => int!(i64),
            DataType::F16 => self.raw.extend_from_slice(&f16::from_f64(f).to_le_bytes()),
            DataType::BF16 => self.raw.extend_from_slice(&bf16::from_f64(f).to_le_bytes()),
            DataType::F32 => self.raw.extend_from_slice(&(f as f32).to_le_bytes()),
            DataType::F64 => self.raw.extend_from_slice(&f.to_le_bytes()),
            DataType::Bool | DataType::Bytes => return Err(self.bad(n)),
        }
        self.count += 1;
        Ok(())
    }

    fn boolean(&mut self, b: bool) -> std::result::Result<(), String> {
        if self.dtype != DataType::Bool {
            return Err(self.bad(b));
        }
        self.raw.push(b as u8);
        self.count += 1;
        Ok(())
    }

    fn string(&mut self, s: &str) -> std::result::Result<(), String> {
        if self.dtype != DataType::Bytes {
            return Err(self.bad(format!("{s:?}")));
        }
        self.items.push(Bytes::copy_from_slice(s.as_bytes()));
        self.count += 1;
        Ok(())
    }
}

/// Walks (nested) JSON arrays, pushing each scalar into the sink.
struct Flatten<'s, 'a> {
    sink: &'s mut Sink<'a>,
    depth: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for Flatten<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Flatten<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a (nested) array of values")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        if self.depth > 64 {
            return Err(serde::de::Error::custom("'data' is nested too deeply"));
        }
        while seq
            .next_element_seed(Flatten {
                sink: &mut *self.sink,
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<(), E> {
        self.sink.boolean(v).map_err(E::custom)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<(), E> {
        self.sink.num(Num::I(v)).map_err(E::custom)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<(), E> {
        self.sink.num(Num::U(v)).map_err(E::custom)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<(), E> {
        self.sink.num(Num::F(v)).map_err(E::custom)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<(), E> {
        self.sink.string(v).map_err(E::custom)
    }
    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        Err(E::custom(self.sink.bad("null")))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> std::result::Result<(), A::Error> {
        Err(serde::de::Error::custom(self.sink.bad("an object")))
    }
}

fn json_tensor(
    name: &str,
    dtype: DataType,
    shape: Vec<usize>,
    data: &serde_json::value::RawValue,
) -> Result<Tensor> {
    let text = data.get();
    // Pre-size from the declared shape, bounded by what the text can hold (one element needs at
    // least two characters), so a lying shape cannot force a large allocation.
    let expected = inferd_core::tensor::element_count(&shape)
        .unwrap_or(0)
        .min(text.len() / 2 + 1);
    let mut sink = Sink {
        name,
        dtype,
        raw: Vec::with_capacity(if dtype == DataType::Bytes {
            0
        } else {
            expected * dtype.size().unwrap_or(1)
        }),
        items: Vec::with_capacity(if dtype == DataType::Bytes {
            expected
        } else {
            0
        }),
        count: 0,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    serde::de::DeserializeSeed::deserialize(
        Flatten {
            sink: &mut sink,
            depth: 0,
        },
        &mut de,
    )
    .map_err(|e| {
        let msg = e.to_string();
        // Our own messages already name the input; serde's need the context.
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        if msg.starts_with("input '") {
            DecodeError(msg)
        } else {
            DecodeError(format!("input '{name}': malformed 'data': {msg}"))
        }
    })?;
    let data = if dtype == DataType::Bytes {
        TensorData::Bytes(sink.items)
    } else {
        TensorData::Raw(sink.raw.into())
    };
    Tensor::new(dtype, shape, data).map_err(|e| DecodeError(format!("input '{name}': {e}")))
}

// The response side, a job of its own.
#[path = "codec_encode.rs"]
mod encode;
pub use encode::{EncodedResponse, encode_response, tensor_json, write_shm_outputs};

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
