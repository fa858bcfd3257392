//! Tensors: the KServe v2 datatypes, shapes and element storage shared by every front-end and
//! backend.
//!
//! Fixed-size elements are stored as little-endian raw bytes (the layout of KServe's binary tensor
//! extension and of gRPC `raw_input_contents`), so protocol bodies can be sliced into tensors
//! without decoding. BYTES tensors hold one buffer per element.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Element type of a tensor, named as in the KServe v2 protocol (`"FP32"`, `"BYTES"`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DataType {
    /// Boolean, one byte per element (0 or 1).
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// IEEE 754 half precision.
    F16,
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
    /// bfloat16.
    BF16,
    /// Variable-length byte strings.
    Bytes,
}

impl DataType {
    /// Every datatype, in protocol order.
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::U8,
        DataType::U16,
        DataType::U32,
        DataType::U64,
        DataType::I8,
        DataType::I16,
        DataType::I32,
        DataType::I64,
        DataType::F16,
        DataType::F32,
        DataType::F64,
        DataType::BF16,
        DataType::Bytes,
    ];

    /// The KServe v2 name (`"FP32"`).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F16 => "FP16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::BF16 => "BF16",
            DataType::Bytes => "BYTES",
        }
    }

    /// The Triton model-config name (`"TYPE_FP32"`; BYTES is `"TYPE_STRING"`).
    pub fn config_name(self) -> &'static str {
        match self {
            DataType::Bool => "TYPE_BOOL",
            DataType::U8 => "TYPE_UINT8",
            DataType::U16 => "TYPE_UINT16",
            DataType::U32 => "TYPE_UINT32",
            DataType::U64 => "TYPE_UINT64",
            DataType::I8 => "TYPE_INT8",
            DataType::I16 => "TYPE_INT16",
            DataType::I32 => "TYPE_INT32",
            DataType::I64 => "TYPE_INT64",
            DataType::F16 => "TYPE_FP16",
            DataType::F32 => "TYPE_FP32",
            DataType::F64 => "TYPE_FP64",
            DataType::BF16 => "TYPE_BF16",
            DataType::Bytes => "TYPE_STRING",
        }
    }

    /// Parses a Triton model-config name (`TYPE_FP32`).
    pub fn from_config_name(s: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.config_name() == s)
    }

    /// Size of one element in bytes; `None` for BYTES.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 | DataType::F16 | DataType::BF16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataType {
    type Err = TensorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataType::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| TensorError::UnknownDataType(s.to_string()))
    }
}

impl TryFrom<String> for DataType {
    type Error = TensorError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DataType> for String {
    fn from(d: DataType) -> String {
        d.as_str().to_string()
    }
}

/// A tensor failed a structural check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TensorError {
    /// The datatype name is not a KServe v2 datatype.
    #[error(
        "unknown datatype '{0}' (expected one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BF16, BYTES)"
    )]
    UnknownDataType(String),
    /// The byte length does not fit the shape.
    #[error("shape {shape:?} of {dtype} needs {expected} bytes but {actual} were given")]
    ByteLength {
        /// The declared shape.
        shape: Vec<usize>,
        /// The declared datatype.
        dtype: DataType,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes supplied.
        actual: usize,
    },
    /// The element count does not fit the shape.
    #[error("shape {shape:?} has {expected} elements but {actual} were given")]
    ElementCount {
        /// The declared shape.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements supplied.
        actual: usize,
    },
    /// BYTES data given for a fixed-size type, or the reverse.
    #[error("{0}")]
    Storage(String),
    /// A length-prefixed BYTES buffer is malformed.
    #[error("malformed BYTES data: element {index} {why}")]
    BytesPrefix {
        /// Index of the element that failed.
        index: usize,
        /// What was wrong.
        why: String,
    },
    /// The shape's element count overflows.
    #[error("shape {0:?} is too large")]
    ShapeOverflow(Vec<usize>),
}

/// Element storage of a tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Little-endian raw elements of a fixed-size datatype.
    Raw(Bytes),
    /// One buffer per element of a BYTES tensor.
    Bytes(Vec<Bytes>),
}

/// A typed, shaped tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    dtype: DataType,
    shape: Vec<usize>,
    data: TensorData,
}

/// Number of elements in a shape, or `None` on overflow.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl Tensor {
    /// Builds a tensor, checking that the data fits the shape and datatype.
    pub fn new(dtype: DataType, shape: Vec<usize>, data: TensorData) -> Result<Self, TensorError> {
        let n = element_count(&shape).ok_or_else(|| TensorError::ShapeOverflow(shape.clone()))?;
        match (&data, dtype.size()) {
            (TensorData::Raw(raw), Some(size)) => {
                let expected = n
                    .checked_mul(size)
                    .ok_or_else(|| TensorError::ShapeOverflow(shape.clone()))?;
                if raw.len() != expected {
                    return Err(TensorError::ByteLength {
                        shape,
                        dtype,
                        expected,
                        actual: raw.len(),
                    });
                }
            }
            (TensorData::Bytes(items), None) => {
                if items.len() != n {
                    return Err(TensorError::ElementCount {
                        shape,
                        expected: n,
                        actual: items.len(),
                    });
                }
            }
            (TensorData::Raw(_), None) => {
                return Err(TensorError::Storage(
                    "BYTES tensors need one buffer per element, not raw data".into(),
                ));
            }
            (TensorData::Bytes(_), Some(_)) => {
                return Err(TensorError::Storage(format!(
                    "{dtype} tensors need raw little-endian data, not byte strings"
                )));
            }
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// Builds a BYTES tensor from the length-prefixed encoding (4-byte little-endian length before
    /// each element) used by the binary tensor extension and gRPC raw contents.
    pub fn from_length_prefixed(shape: Vec<usize>, raw: &Bytes) -> Result<Self, TensorError> {
        let items = decode_length_prefixed(raw)?;
        Tensor::new(DataType::Bytes, shape, TensorData::Bytes(items))
    }

    /// Builds an FP32 tensor from values (convenience for embedders and tests).
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Self, TensorError> {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::new(DataType::F32, shape, TensorData::Raw(raw.into()))
    }

    /// Builds an INT64 tensor from values.
    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Result<Self, TensorError> {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::new(DataType::I64, shape, TensorData::Raw(raw.into()))
    }

    /// The datatype.
    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    /// The shape, batch dimension included where the model batches.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element storage.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::Raw(r) => r.len() / self.dtype.size().unwrap_or(1),
            TensorData::Bytes(items) => items.len(),
        }
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Raw little-endian bytes of a fixed-size tensor; `None` for BYTES.
    pub fn raw(&self) -> Option<&Bytes> {
        match &self.data {
            TensorData::Raw(r) => Some(r),
            TensorData::Bytes(_) => None,
        }
    }

    /// The element buffers of a BYTES tensor; `None` for fixed-size types.
    pub fn bytes_elements(&self) -> Option<&[Bytes]> {
        match &self.data {
            TensorData::Bytes(items) => Some(items),
            TensorData::Raw(_) => None,
        }
    }

    /// Serialises the tensor as the wire encoding: raw bytes for fixed-size types, length-prefixed
    /// elements for BYTES.
    pub fn to_wire_bytes(&self) -> Bytes {
        match &self.data {
            TensorData::Raw(r) => r.clone(),
            TensorData::Bytes(items) => encode_length_prefixed(items).into(),
        }
    }

    /// Size of [`Tensor::to_wire_bytes`] without building it.
    pub fn wire_len(&self) -> usize {
        match &self.data {
            TensorData::Raw(r) => r.len(),
            TensorData::Bytes(items) => items.iter().map(|i| 4 + i.len()).sum(),
        }
    }

    /// Reads the elements as `f32` (FP32 only).
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        match (self.dtype, &self.data) {
            (DataType::F32, TensorData::Raw(r)) => Some(
                r.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Reads the elements as `i64` (INT64 only).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        match (self.dtype, &self.data) {
            (DataType::I64, TensorData::Raw(r)) => Some(
                r.chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Splits the tensor's storage into its parts.
    pub fn into_parts(self) -> (DataType, Vec<usize>, TensorData) {
        (self.dtype, self.shape, self.data)
    }
}

/// Decodes length-prefixed BYTES elements (`u32` little-endian length, then the bytes).
pub fn decode_length_prefixed(raw: &Bytes) -> Result<Vec<Bytes>, TensorError> {
    let mut items = Vec::new();
    let mut pos = 0usize;
    while pos < raw.len() {
        let index = items.len();
        if raw.len() - pos < 4 {
            return Err(TensorError::BytesPrefix {
                index,
                why: format!(
                    "has a truncated 4-byte length prefix ({} bytes left at offset {pos})",
                    raw.len() - pos
                ),
            });
        }
        let len = u32::from_le_bytes([raw[pos], raw[pos + 1], raw[pos + 2], raw[pos + 3]]) as usize;
        pos += 4;
        if raw.len() - pos < len {
            return Err(TensorError::BytesPrefix {
                index,
                why: format!(
                    "claims {len} bytes but only {} remain at offset {pos}",
                    raw.len() - pos
                ),
            });
        }
        items.push(raw.slice(pos..pos + len));
        pos += len;
    }
    Ok(items)
}

/// Encodes BYTES elements with 4-byte little-endian length prefixes.
pub fn encode_length_prefixed(items: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|i| 4 + i.len()).sum());
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(d.as_str().parse::<DataType>(), Ok(d));
            assert_eq!(DataType::from_config_name(d.config_name()), Some(d));
        }
        assert!("FLOAT".parse::<DataType>().is_err());
        assert_eq!(
            DataType::from_config_name("TYPE_STRING"),
            Some(DataType::Bytes)
        );
    }

    #[test]
    fn raw_tensor_rejects_wrong_byte_length() {
        let err = Tensor::new(
            DataType::F32,
            vec![2, 3],
            TensorData::Raw(vec![0u8; 20].into()),
        )
        .unwrap_err();
        assert_eq!(
            err,
            TensorError::ByteLength {
                shape: vec![2, 3],
                dtype: DataType::F32,
                expected: 24,
                actual: 20
            }
        );
        assert!(
            Tensor::new(
                DataType::F32,
                vec![2, 3],
                TensorData::Raw(vec![0u8; 24].into())
            )
            .is_ok()
        );
    }

    #[test]
    fn overflowing_shape_is_an_error_not_a_panic() {
        let err = Tensor::new(
            DataType::F64,
            vec![usize::MAX / 2, 4],
            TensorData::Raw(Bytes::new()),
        )
        .unwrap_err();
        assert!(matches!(err, TensorError::ShapeOverflow(_)));
    }

    #[test]
    fn length_prefixed_round_trip() {
        let items: Vec<Bytes> = vec![
            Bytes::from_static(b""),
            Bytes::from_static("héllo".as_bytes()),
            Bytes::from_static(b"\x00\xff"),
        ];
        let enc = Bytes::from(encode_length_prefixed(&items));
        assert_eq!(decode_length_prefixed(&enc).unwrap(), items);
        let t = Tensor::from_length_prefixed(vec![3], &enc).unwrap();
        assert_eq!(t.to_wire_bytes(), enc);
        assert_eq!(t.wire_len(), enc.len());
    }

    #[test]
    fn length_prefix_that_overruns_is_rejected() {
        let mut enc = encode_length_prefixed(&[Bytes::from_static(b"abc")]);
        enc[0] = 200;
        let err = decode_length_prefixed(&Bytes::from(enc)).unwrap_err();
        assert!(err.to_string().contains("claims 200 bytes"), "{err}");
        let err = decode_length_prefixed(&Bytes::from_static(&[1, 0])).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn bytes_tensor_counts_elements() {
        let err = Tensor::new(
            DataType::Bytes,
            vec![2],
            TensorData::Bytes(vec![Bytes::from_static(b"a")]),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            TensorError::ElementCount {
                expected: 2,
                actual: 1,
                ..
            }
        ));
    }
}
