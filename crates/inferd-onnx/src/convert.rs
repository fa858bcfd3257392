//! Tensors between inferd and tract: element types both ways, request tensors in, results out.
//! tract types integer results of shape arithmetic (`Shape`, `ArgMax` of some exports) as
//! dimensions (`TDim`); they leave as INT64, which is what the ONNX graph declares.

use bytes::Bytes;
use inferd_core::backend::BackendError;
use inferd_core::tensor::{DataType, Tensor, TensorData};
use tract_onnx::prelude::{DatumType, IntoTValue, TValue};
use tract_onnx::tract_hir::internal::tract_ndarray::{ArrayD, IxDyn};

/// The inferd type of a tract type, if inferd can carry it.
pub(crate) fn to_dtype(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::U8,
        DatumType::U16 => DataType::U16,
        DatumType::U32 => DataType::U32,
        DatumType::U64 => DataType::U64,
        DatumType::I8 => DataType::I8,
        DatumType::I16 => DataType::I16,
        DatumType::I32 => DataType::I32,
        DatumType::I64 | DatumType::TDim => DataType::I64,
        DatumType::F16 => DataType::F16,
        DatumType::F32 => DataType::F32,
        DatumType::F64 => DataType::F64,
        DatumType::String => DataType::Bytes,
        _ => return None,
    })
}

fn from_dtype(dt: DataType) -> Option<DatumType> {
    Some(match dt {
        DataType::Bool => DatumType::Bool,
        DataType::U8 => DatumType::U8,
        DataType::U16 => DatumType::U16,
        DataType::U32 => DatumType::U32,
        DataType::U64 => DatumType::U64,
        DataType::I8 => DatumType::I8,
        DataType::I16 => DatumType::I16,
        DataType::I32 => DatumType::I32,
        DataType::I64 => DatumType::I64,
        DataType::F16 => DatumType::F16,
        DataType::F32 => DatumType::F32,
        DataType::F64 => DatumType::F64,
        DataType::Bytes => DatumType::String,
        DataType::BF16 => return None,
    })
}

/// A request tensor as a tract value.
pub(crate) fn to_tract(t: &Tensor) -> Result<TValue, BackendError> {
    let bad = |e: String| BackendError::InvalidInput(e);
    match t.data() {
        TensorData::Raw(raw) => {
            let dt = from_dtype(t.dtype()).ok_or_else(|| {
                bad(format!(
                    "{} tensors are not supported by the ONNX backend",
                    t.dtype()
                ))
            })?;
            let mut out = tract_onnx::prelude::Tensor::zero_dt(dt, t.shape())
                .map_err(|e| bad(format!("{e:#}")))?;
            let dst = out.as_bytes_mut();
            if dst.len() != raw.len() {
                return Err(bad(format!(
                    "expected {} bytes, got {}",
                    dst.len(),
                    raw.len()
                )));
            }
            dst.copy_from_slice(raw);
            Ok(out.into_tvalue())
        }
        TensorData::Bytes(items) => {
            let strings = items
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    String::from_utf8(b.to_vec()).map_err(|_| bad(format!("BYTES element {i} is not valid UTF-8, which ONNX string tensors require")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let arr = ArrayD::from_shape_vec(IxDyn(t.shape()), strings)
                .map_err(|e| bad(e.to_string()))?;
            Ok(tract_onnx::prelude::Tensor::from(arr).into_tvalue())
        }
    }
}

/// A result value as an inferd tensor.
pub(crate) fn from_tract(
    name: &str,
    v: &tract_onnx::prelude::Tensor,
) -> Result<Tensor, BackendError> {
    let exec = |e: String| BackendError::Execution(format!("output '{name}': {e}"));
    let dt = v.datum_type();
    let dtype = to_dtype(dt).ok_or_else(|| exec(format!("type {dt:?} cannot be returned")))?;
    let shape = v.shape().to_vec();
    if dtype == DataType::Bytes {
        let view = v
            .to_plain_array_view::<String>()
            .map_err(|e| exec(format!("{e:#}")))?;
        let items = view
            .iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        return Tensor::new(dtype, shape, TensorData::Bytes(items))
            .map_err(|e| exec(e.to_string()));
    }
    if dt == DatumType::TDim {
        // A dimension left symbolic at run time has no integer value to return.
        let ints = v.cast_to::<i64>().map_err(|e| exec(format!("{e:#}")))?;
        return Tensor::new(
            dtype,
            shape,
            TensorData::Raw(Bytes::copy_from_slice(ints.as_bytes())),
        )
        .map_err(|e| exec(e.to_string()));
    }
    Tensor::new(
        dtype,
        shape,
        TensorData::Raw(Bytes::copy_from_slice(v.as_bytes())),
    )
    .map_err(|e| exec(e.to_string()))
}
