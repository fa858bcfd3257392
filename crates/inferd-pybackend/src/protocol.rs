//! The worker protocol: each message a 4-byte little-endian length and a JSON object, on the
//! worker's stdin (the server's messages) and stdout (the worker's). Tensor bytes never travel
//! in messages: each side lays them out in its own shared file, 64-byte aligned, and a message
//! lists them as `tensors: [{name, datatype, shape, offset, nbytes}]` in a `region` the reader
//! gives back (`{"op": "free", "region": r}`) once it has copied them. BYTES tensors use the
//! length-prefixed wire encoding (4-byte little-endian length before each element).

use std::fs::File;
use std::os::unix::fs::FileExt;

use inferd_core::backend::{BackendError, NamedTensor};
use inferd_core::tensor::{DataType, Tensor, TensorData};
use serde_json::Value;

/// The largest tensor a worker may hand back: the server allocates what the worker names, and
/// the worker controls its file's length, so the size is capped here.
pub const MAX_TENSOR_BYTES: u64 = 1 << 30;

/// Alignment of every tensor in the shared file.
pub const ALIGN: u64 = 64;

/// `n` rounded up to [`ALIGN`].
pub fn align(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// A message framed for the pipe.
pub fn frame(msg: &Value) -> Vec<u8> {
    let body = msg.to_string().into_bytes();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn field<'a>(spec: &'a Value, key: &str) -> Result<&'a Value, BackendError> {
    spec.get(key)
        .ok_or_else(|| BackendError::Internal(format!("the worker's output lacks '{key}': {spec}")))
}

/// Reads one output the worker wrote (the file's length read once for the whole message).
pub fn read_output(shm: &File, spec: &Value) -> Result<NamedTensor, BackendError> {
    let len = shm
        .metadata()
        .map_err(|e| BackendError::Internal(format!("reading the shared file: {e}")))?
        .len();
    read_output_within(shm, spec, len)
}

/// [`read_output`] with the file's length known: `nbytes` must fit within it (the worker's
/// word is not trusted with an allocation size).
pub fn read_output_within(shm: &File, spec: &Value, len: u64) -> Result<NamedTensor, BackendError> {
    let name = field(spec, "name")?
        .as_str()
        .unwrap_or_default()
        .to_string();
    let dt = field(spec, "datatype")?.as_str().unwrap_or_default();
    let dtype: DataType = dt
        .parse()
        .map_err(|e| BackendError::Execution(format!("output '{name}': {e}")))?;
    let shape: Vec<usize> = field(spec, "shape")?
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_u64())
                .map(|d| d as usize)
                .collect()
        })
        .unwrap_or_default();
    let offset = field(spec, "offset")?.as_u64().unwrap_or(0);
    let nbytes = field(spec, "nbytes")?.as_u64().unwrap_or(0);
    if nbytes > MAX_TENSOR_BYTES {
        return Err(BackendError::Execution(format!(
            "output '{name}' of {nbytes} bytes is over the {MAX_TENSOR_BYTES}-byte limit of a python model's tensor"
        )));
    }
    let nbytes = nbytes as usize;
    if offset.saturating_add(nbytes as u64) > len {
        return Err(BackendError::Internal(format!(
            "output '{name}' at {offset}+{nbytes} is past the shared file ({len} bytes)"
        )));
    }
    let mut buf = vec![0u8; nbytes];
    shm.read_exact_at(&mut buf, offset)
        .map_err(|e| BackendError::Internal(format!("reading output '{name}': {e}")))?;
    let tensor = if dtype == DataType::Bytes {
        Tensor::from_length_prefixed(shape, &buf.into())
    } else {
        Tensor::new(dtype, shape, TensorData::Raw(buf.into()))
    }
    .map_err(|e| BackendError::Execution(format!("output '{name}' from model.py: {e}")))?;
    Ok(NamedTensor { name, tensor })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_output_past_the_end_of_the_file_is_an_error_not_a_read() {
        let shm = tempfile::tempfile().expect("file");
        let spec =
            json!({"name": "X", "datatype": "FP32", "shape": [4], "offset": 0, "nbytes": 16});
        let Err(err) = read_output(&shm, &spec) else {
            panic!("an output past the end was read")
        };
        assert!(err.to_string().contains("past the shared file"), "{err}");
    }
}
