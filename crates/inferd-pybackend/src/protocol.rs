//! The worker protocol: each message a 4-byte little-endian length and a JSON object, on the
//! worker's stdin (requests) and stdout (answers). Tensor bytes never travel in messages: they
//! are laid out in the worker's shared-memory file, 64-byte aligned, and messages carry
//! `{name, datatype, shape, offset, nbytes}`. BYTES tensors use the length-prefixed wire
//! encoding (4-byte little-endian length before each element).

use std::fs::File;
use std::os::unix::fs::FileExt;

use inferd_core::backend::{BackendError, NamedTensor};
use inferd_core::tensor::{DataType, Tensor, TensorData};
use serde_json::{Value, json};

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

/// Writes `inputs` into the shared file from `start`; returns their descriptions and where
/// the free space after them starts.
pub fn write_inputs(
    shm: &File,
    inputs: &[NamedTensor],
    start: u64,
) -> std::io::Result<(Vec<Value>, u64)> {
    let mut offset = start;
    let mut specs = Vec::with_capacity(inputs.len());
    let wire: Vec<_> = inputs.iter().map(|t| t.tensor.to_wire_bytes()).collect();
    let end = wire.iter().fold(start, |at, b| align(at) + b.len() as u64);
    if shm.metadata()?.len() < end {
        shm.set_len(end)?;
    }
    for (t, bytes) in inputs.iter().zip(&wire) {
        offset = align(offset);
        shm.write_all_at(bytes, offset)?;
        specs.push(json!({
            "name": t.name,
            "datatype": t.tensor.dtype().as_str(),
            "shape": t.tensor.shape(),
            "offset": offset,
            "nbytes": bytes.len(),
        }));
        offset += bytes.len() as u64;
    }
    Ok((specs, align(offset)))
}

fn field<'a>(spec: &'a Value, key: &str) -> Result<&'a Value, BackendError> {
    spec.get(key)
        .ok_or_else(|| BackendError::Internal(format!("the worker's output lacks '{key}': {spec}")))
}

/// Reads one output the worker wrote.
pub fn read_output(shm: &File, spec: &Value) -> Result<NamedTensor, BackendError> {
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
    let nbytes = field(spec, "nbytes")?.as_u64().unwrap_or(0) as usize;
    let len = shm
        .metadata()
        .map_err(|e| BackendError::Internal(format!("reading the shared file: {e}")))?
        .len();
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

    #[test]
    fn inputs_are_laid_out_aligned_and_read_back_as_written() {
        let shm = tempfile::tempfile().expect("file");
        let a = Tensor::from_f32(vec![1, 3], &[1.0, 2.0, 3.0]).expect("tensor");
        let b = Tensor::new(
            DataType::Bytes,
            vec![2],
            TensorData::Bytes(vec!["x".into(), "yz".into()]),
        )
        .expect("tensor");
        let inputs = vec![
            NamedTensor {
                name: "A".into(),
                tensor: a.clone(),
            },
            NamedTensor {
                name: "B".into(),
                tensor: b.clone(),
            },
        ];
        let (specs, end) = write_inputs(&shm, &inputs, 0).expect("written");
        assert_eq!(specs[0]["offset"], 0);
        assert_eq!(specs[1]["offset"], 64);
        assert_eq!(end, 128);
        assert_eq!(read_output(&shm, &specs[0]).expect("A").tensor, a);
        assert_eq!(read_output(&shm, &specs[1]).expect("B").tensor, b);
    }

    #[test]
    fn an_output_past_the_end_of_the_file_is_an_error_not_a_read() {
        let shm = tempfile::tempfile().expect("file");
        let spec =
            json!({"name": "X", "datatype": "FP32", "shape": [4], "offset": 0, "nbytes": 16});
        let err = read_output(&shm, &spec).err().expect("refused");
        assert!(err.to_string().contains("past the shared file"), "{err}");
    }
}
