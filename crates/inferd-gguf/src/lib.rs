//! # inferd-gguf
//!
//! Loads GGUF files (llama.cpp's weight format): typed metadata, the tensor table, and tensor
//! data read on demand, with dequantization to `f32` for the common types. GGUF holds no code,
//! so loading never executes anything; every length and offset is checked against the file
//! before it is used, so a truncated or hostile file is an error, never a panic or a huge
//! allocation.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

mod dequant;

pub use dequant::dequantize;

/// A GGUF loading error.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not well-formed GGUF.
    #[error("{path}: not a valid GGUF file: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A tensor the caller asked for is missing or cannot be converted.
    #[error("{0}")]
    Tensor(String),
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// u8.
    U8(u8),
    /// i8.
    I8(i8),
    /// u16.
    U16(u16),
    /// i16.
    I16(i16),
    /// u32.
    U32(u32),
    /// i32.
    I32(i32),
    /// f32.
    F32(f32),
    /// bool.
    Bool(bool),
    /// UTF-8 string (invalid sequences replaced).
    String(String),
    /// Array of values.
    Array(Vec<Value>),
    /// u64.
    U64(u64),
    /// i64.
    I64(i64),
    /// f64.
    F64(f64),
}

impl Value {
    /// The value as a flag: a boolean, or an integer (non-zero is true).
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => self.as_u64().map(|v| v != 0),
        }
    }

    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// GGML tensor element types (the ones with a known block layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    /// The type's name as llama.cpp spells it.
    pub fn name(self) -> String {
        let n = match self.0 {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            30 => "BF16",
            other => return format!("type{other}"),
        };
        n.to_string()
    }

    /// (bytes per block, elements per block), if known.
    pub fn block(self) -> Option<(u64, u64)> {
        inferd_core::artifact::headers::ggml_block(self.0)
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, innermost first (GGUF order).
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An opened GGUF file: metadata and tensor table in memory, tensor data read on demand.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment.
    pub alignment: u64,
    /// File size.
    pub file_len: u64,
}

const MAX_STRING: u64 = 16 << 20;
const MAX_ARRAY: u64 = 1 << 26;
const MAX_COUNT: u64 = 1 << 20;

struct Reader<R> {
    r: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, String> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(format!(
                "a {n}-byte field at offset {} runs past the end of the file",
                self.pos
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.r.read_exact(&mut buf).map_err(|e| e.to_string())?;
        self.pos += n;
        Ok(buf)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let v = self.bytes(N as u64)?;
        v.try_into().map_err(|_| "short read".to_string())
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()?;
        if n > MAX_STRING {
            return Err(format!(
                "a string of {n} bytes at offset {} is implausibly long",
                self.pos
            ));
        }
        Ok(String::from_utf8_lossy(&self.bytes(n)?).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>()?[0]),
            1 => Value::I8(self.arr::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr()?)),
            3 => Value::I16(i16::from_le_bytes(self.arr()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.arr()?)),
            6 => Value::F32(f32::from_le_bytes(self.arr()?)),
            7 => match self.arr::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("bool value {b} is neither 0 nor 1")),
            },
            8 => Value::String(self.string()?),
            9 if depth < 4 => {
                let inner = self.u32()?;
                let n = self.u64()?;
                if n > MAX_ARRAY {
                    return Err(format!("an array of {n} elements is implausibly long"));
                }
                let mut v = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    v.push(self.value(inner, depth + 1)?);
                }
                Value::Array(v)
            }
            9 => return Err("arrays nested too deeply".into()),
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.arr()?)),
            12 => Value::F64(f64::from_le_bytes(self.arr()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file: header, metadata, tensor table, and that every tensor's
    /// data lies inside the file without overlapping another.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Self::from_reader(BufReader::with_capacity(1 << 20, file), len, path)
    }

    /// Parses the header of a GGUF stream of `len` bytes (`path` names it in errors and is where
    /// tensor data is read from later).
    pub fn from_reader(reader: impl Read, len: u64, path: &Path) -> Result<Self, GgufError> {
        let fmt = |why: String| GgufError::Format {
            path: path.to_path_buf(),
            why,
        };
        let mut r = Reader {
            r: reader,
            pos: 0,
            len,
        };
        let magic = r.arr::<4>().map_err(fmt)?;
        if &magic != b"GGUF" {
            return Err(fmt(format!("magic is {magic:?}, expected \"GGUF\"")));
        }
        let version = r.u32().map_err(fmt)?;
        if !(2..=3).contains(&version) {
            return Err(fmt(format!(
                "version {version} is not supported (2 and 3 are)"
            )));
        }
        let n_tensors = r.u64().map_err(fmt)?;
        let n_kv = r.u64().map_err(fmt)?;
        if n_tensors > MAX_COUNT || n_kv > MAX_COUNT {
            return Err(fmt(format!(
                "implausible counts: {n_tensors} tensors, {n_kv} metadata entries"
            )));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string().map_err(fmt)?;
            let ty = r.u32().map_err(fmt)?;
            let v = r
                .value(ty, 0)
                .map_err(|e| fmt(format!("metadata '{key}': {e}")))?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .ok_or_else(|| fmt("general.alignment is not a power of two".into()))?,
        };
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string().map_err(fmt)?;
            let n_dims = r.u32().map_err(fmt)?;
            if n_dims == 0 || n_dims > 8 {
                return Err(fmt(format!("tensor '{name}' has {n_dims} dimensions")));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64())
                .collect::<Result<Vec<_>, _>>()
                .map_err(fmt)?;
            let ty = GgmlType(r.u32().map_err(fmt)?);
            let offset = r.u64().map_err(fmt)?;
            raw.push((name, dims, ty, offset));
        }
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, rel) in raw {
            let elements = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| fmt(format!("tensor '{name}': element count overflows")))?;
            let (bytes, per) = ty
                .block()
                .ok_or_else(|| fmt(format!("tensor '{name}': unknown type {}", ty.name())))?;
            if elements % per != 0 {
                return Err(fmt(format!(
                    "tensor '{name}': {elements} elements are not whole {per}-element blocks"
                )));
            }
            let size = (elements / per)
                .checked_mul(bytes)
                .ok_or_else(|| fmt(format!("tensor '{name}': size overflows")))?;
            if rel % alignment != 0 {
                return Err(fmt(format!(
                    "tensor '{name}': offset {rel} is not aligned to {alignment}"
                )));
            }
            let offset = data_start
                .checked_add(rel)
                .filter(|o| o.checked_add(size).is_some_and(|end| end <= len))
                .ok_or_else(|| fmt(format!("tensor '{name}': data at {rel}+{size} runs past the end of the {len}-byte file")))?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type: ty,
                offset,
                size,
            });
        }
        let mut spans: Vec<&TensorInfo> = tensors.iter().collect();
        spans.sort_by_key(|t| t.offset);
        for w in spans.windows(2) {
            if w[1].offset < w[0].offset + w[0].size {
                return Err(fmt(format!(
                    "tensors '{}' and '{}' overlap",
                    w[0].name, w[1].name
                )));
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            file_len: len,
        })
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `general.architecture` (`llama`).
    pub fn architecture(&self) -> Option<&str> {
        self.metadata
            .get("general.architecture")
            .and_then(Value::as_str)
    }

    /// An architecture-scoped metadata value (`<arch>.<key>`).
    pub fn arch_value(&self, key: &str) -> Option<&Value> {
        let arch = self.architecture()?;
        self.metadata.get(&format!("{arch}.{key}"))
    }

    /// The file this table was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes of tensor `t` within `file`, the whole file's bytes (a caller's memory map:
    /// no copy). An error when `file` is not as long as the file was at open.
    pub fn tensor_data<'a>(&self, t: &TensorInfo, file: &'a [u8]) -> Result<&'a [u8], GgufError> {
        let changed = || {
            GgufError::Tensor(format!(
                "tensor '{}': the file is {} bytes now, {} when opened",
                t.name,
                file.len(),
                self.file_len
            ))
        };
        if file.len() as u64 != self.file_len {
            return Err(changed());
        }
        let start = usize::try_from(t.offset).map_err(|_| changed())?;
        let end = usize::try_from(t.offset + t.size).map_err(|_| changed())?;
        file.get(start..end).ok_or_else(changed)
    }

    /// The raw bytes of a tensor.
    pub fn read_raw(&self, t: &TensorInfo) -> Result<Vec<u8>, GgufError> {
        let io = |source| GgufError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = File::open(&self.path).map_err(io)?;
        f.seek(SeekFrom::Start(t.offset)).map_err(io)?;
        let mut buf = vec![0u8; t.size as usize];
        f.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }

    /// A tensor's elements as `f32` (F32, F16, BF16, Q4_0, Q4_1, Q8_0).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let t = self
            .tensor(name)
            .ok_or_else(|| GgufError::Tensor(format!("no tensor '{name}'")))?;
        let raw = self.read_raw(t)?;
        dequantize(t.ggml_type, &raw).ok_or_else(|| {
            GgufError::Tensor(format!(
                "tensor '{name}': dequantizing {} is not supported",
                t.ggml_type.name()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: &mut Vec<u8>, x: &str) {
        f.extend_from_slice(&(x.len() as u64).to_le_bytes());
        f.extend_from_slice(x.as_bytes());
    }

    /// A tiny GGUF: metadata (string, u32, string array) and two tensors (F32 and Q8_0).
    fn tiny() -> Vec<u8> {
        let mut f = b"GGUF".to_vec();
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&2u64.to_le_bytes());
        f.extend_from_slice(&3u64.to_le_bytes());
        s(&mut f, "general.architecture");
        f.extend_from_slice(&8u32.to_le_bytes());
        s(&mut f, "llama");
        s(&mut f, "llama.block_count");
        f.extend_from_slice(&4u32.to_le_bytes());
        f.extend_from_slice(&2u32.to_le_bytes());
        s(&mut f, "tokenizer.ggml.tokens");
        f.extend_from_slice(&9u32.to_le_bytes());
        f.extend_from_slice(&8u32.to_le_bytes());
        f.extend_from_slice(&2u64.to_le_bytes());
        s(&mut f, "<s>");
        s(&mut f, "hi");
        s(&mut f, "a");
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&4u64.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes());
        s(&mut f, "b");
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&32u64.to_le_bytes());
        f.extend_from_slice(&8u32.to_le_bytes());
        f.extend_from_slice(&32u64.to_le_bytes());
        while !f.len().is_multiple_of(32) {
            f.push(0);
        }
        for v in [1.0f32, -2.0, 0.5, 3.0] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend(std::iter::repeat_n(0u8, 16));
        f.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        f.extend((0..32).map(|i| (i as i8 - 16) as u8));
        f
    }

    #[test]
    fn reads_metadata_tensors_and_dequantizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gguf");
        std::fs::write(&p, tiny()).unwrap();
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.arch_value("block_count").and_then(Value::as_u64), Some(2));
        assert_eq!(
            g.metadata["tokenizer.ggml.tokens"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(g.dequantize("a").unwrap(), vec![1.0, -2.0, 0.5, 3.0]);
        let b = g.dequantize("b").unwrap();
        assert_eq!(b.len(), 32);
        assert_eq!(b[0], -8.0);
        assert_eq!(b[31], 7.5);
    }

    #[test]
    fn truncated_and_hostile_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gguf");
        let full = tiny();
        for cut in [0, 3, 10, 40, 100, full.len() - 1] {
            std::fs::write(&p, &full[..cut]).unwrap();
            assert!(GgufFile::open(&p).is_err(), "cut at {cut} must fail");
        }
        let mut huge = full.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&p, &huge).unwrap();
        assert!(
            GgufFile::open(&p)
                .unwrap_err()
                .to_string()
                .contains("implausible")
        );
    }
}
