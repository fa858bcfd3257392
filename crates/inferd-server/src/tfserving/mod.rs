//! TF Serving's APIs, for clients that speak them: REST ([`rest`], `--tfserving-rest-port`,
//! TF Serving's default 8501) with its JSON forms ([`json`]), and gRPC ([`grpc`],
//! `--tfserving-grpc-port`, TF Serving's default 8500). Every model inferd serves answers on
//! them, under one signature, `serving_default`.

pub mod grpc;
pub mod json;
pub mod rest;

use inferd_core::DataType;

/// The one signature every model answers under.
pub const SIGNATURE: &str = "serving_default";

/// TensorFlow's name for a datatype (`DT_FLOAT`, ...).
pub fn dt_name(dt: DataType) -> &'static str {
    match dt {
        DataType::Bool => "DT_BOOL",
        DataType::U8 => "DT_UINT8",
        DataType::U16 => "DT_UINT16",
        DataType::U32 => "DT_UINT32",
        DataType::U64 => "DT_UINT64",
        DataType::I8 => "DT_INT8",
        DataType::I16 => "DT_INT16",
        DataType::I32 => "DT_INT32",
        DataType::I64 => "DT_INT64",
        DataType::F16 => "DT_HALF",
        DataType::BF16 => "DT_BFLOAT16",
        DataType::F32 => "DT_FLOAT",
        DataType::F64 => "DT_DOUBLE",
        DataType::Bytes => "DT_STRING",
    }
}

/// A config tensor's shape as a signature gives it: the batch dimension first (-1) when the
/// model batches.
pub fn signature_shape(batch: bool, dims: &[i64]) -> Vec<i64> {
    let mut s = if batch { vec![-1] } else { Vec::new() };
    s.extend_from_slice(dims);
    s
}
