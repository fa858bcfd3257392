//! The worker protocol: each message a 4-byte little-endian length and a JSON object, on the
//! worker's stdin (the server's messages) and stdout (the worker's). Tensor bytes never travel
//! in messages: each side lays them out in its own shared file, 64-byte aligned, and a message
//! lists them as `tensors: [{name, datatype, shape, offset, nbytes}]` in a `region` the reader
//! gives back (`{"op": "free", "region": r}`) once it has copied them. BYTES tensors use the
//! length-prefixed wire encoding (4-byte little-endian length before each element).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

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
    let out = Spec::parse(spec)?;
    out.check(len)?;
    out.read(shm)
}

/// The most bytes one `pread` covers for several outputs at once.
const SPAN_READ_LIMIT: u64 = 1 << 20;

/// Reads every output a message lists. `known_len` is a length the worker's file has had (it
/// never shrinks): the file is asked for its length again only when an output lies past it.
/// Outputs lying together (one message's region, the usual case) come in one `pread` of the
/// span they cover, copied out per output: two system calls fewer per small request than a
/// length query and a read per output.
pub fn read_outputs(
    shm: &File,
    specs: &[Value],
    known_len: &AtomicU64,
) -> Result<Vec<NamedTensor>, BackendError> {
    let outs = specs
        .iter()
        .map(Spec::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let (Some(first), Some(end)) = (
        outs.iter().map(|o| o.offset).min(),
        outs.iter()
            .map(|o| o.offset.saturating_add(o.nbytes as u64))
            .max(),
    ) else {
        return Ok(Vec::new());
    };
    let mut len = known_len.load(Ordering::Acquire);
    if end > len {
        len = shm
            .metadata()
            .map_err(|e| BackendError::Internal(format!("reading the shared file: {e}")))?
            .len();
        known_len.fetch_max(len, Ordering::AcqRel);
    }
    for o in &outs {
        o.check(len)?;
    }
    let total: u64 = outs.iter().map(|o| o.nbytes as u64).sum();
    let span = end - first;
    if outs.len() > 1 && span <= SPAN_READ_LIMIT && span <= 2 * total + 4096 {
        let mut buf = vec![0u8; span as usize];
        shm.read_exact_at(&mut buf, first)
            .map_err(|e| BackendError::Internal(format!("reading outputs: {e}")))?;
        return outs
            .into_iter()
            .map(|o| {
                let at = (o.offset - first) as usize;
                let bytes = buf[at..at + o.nbytes].to_vec();
                o.tensor(bytes)
            })
            .collect();
    }
    outs.into_iter().map(|o| o.read(shm)).collect()
}

/// One output as a message describes it.
struct Spec {
    name: String,
    dtype: DataType,
    shape: Vec<usize>,
    offset: u64,
    nbytes: usize,
}

impl Spec {
    fn parse(spec: &Value) -> Result<Spec, BackendError> {
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
        Ok(Spec {
            name,
            dtype,
            shape,
            offset,
            nbytes: nbytes as usize,
        })
    }

    /// The output lies inside a file of `len` bytes.
    fn check(&self, len: u64) -> Result<(), BackendError> {
        if self.offset.saturating_add(self.nbytes as u64) > len {
            return Err(BackendError::Internal(format!(
                "output '{}' at {}+{} is past the shared file ({len} bytes)",
                self.name, self.offset, self.nbytes
            )));
        }
        Ok(())
    }

    /// Reads the output alone, with a `pread` of its own.
    fn read(self, shm: &File) -> Result<NamedTensor, BackendError> {
        let mut buf = vec![0u8; self.nbytes];
        shm.read_exact_at(&mut buf, self.offset)
            .map_err(|e| BackendError::Internal(format!("reading output '{}': {e}", self.name)))?;
        self.tensor(buf)
    }

    fn tensor(self, buf: Vec<u8>) -> Result<NamedTensor, BackendError> {
        let Spec {
            name, dtype, shape, ..
        } = self;
        let tensor = if dtype == DataType::Bytes {
            Tensor::from_length_prefixed(shape, &buf.into())
        } else {
            Tensor::new(dtype, shape, TensorData::Raw(buf.into()))
        }
        .map_err(|e| BackendError::Execution(format!("output '{name}' from model.py: {e}")))?;
        Ok(NamedTensor { name, tensor })
    }
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

    #[test]
    fn outputs_read_together_equal_outputs_read_one_by_one_and_the_length_is_asked_again_when_needed()
     {
        let shm = tempfile::tempfile().expect("file");
        let a: Vec<u8> = (0..16u8).collect();
        let b: Vec<u8> = (100..108u8).collect();
        shm.write_all_at(&a, 0).expect("a");
        shm.write_all_at(&b, 64).expect("b");
        let specs = vec![
            json!({"name": "A", "datatype": "FP32", "shape": [4], "offset": 0, "nbytes": 16}),
            json!({"name": "B", "datatype": "INT16", "shape": [2, 2], "offset": 64, "nbytes": 8}),
        ];
        // A stale (smaller) known length: the file is asked again, and the answer kept.
        let known = AtomicU64::new(10);
        let together = read_outputs(&shm, &specs, &known).expect("read");
        assert_eq!(known.load(Ordering::Acquire), 72);
        let alone: Vec<NamedTensor> = specs
            .iter()
            .map(|s| read_output(&shm, s).expect("one"))
            .collect();
        assert_eq!(together.len(), 2);
        for (t, o) in together.iter().zip(&alone) {
            assert_eq!(t.name, o.name);
            assert_eq!(t.tensor, o.tensor);
        }
        let past = vec![
            json!({"name": "C", "datatype": "FP32", "shape": [4], "offset": 72, "nbytes": 16}),
        ];
        let Err(err) = read_outputs(&shm, &past, &known) else {
            panic!("an output past the end was read")
        };
        assert!(err.to_string().contains("past the shared file"), "{err}");
    }
}
