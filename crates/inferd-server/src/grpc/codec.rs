//! The inference messages: a `ModelInferRequest` into the engine's request (typed contents or
//! raw bytes, parameters) and the engine's response back.

use bytes::Bytes;
use inferd_core::backend::NamedTensor;
use inferd_core::request::{InferRequest, InferResponse, ParamValue};
use inferd_core::tensor::{DataType, Tensor, TensorData};
use tonic::Status;

use std::collections::BTreeMap;

use crate::http::codec::ShmRef;
use crate::pb;
use crate::shm::SharedMemory;

pub(super) fn bad(msg: String) -> Status {
    Status::invalid_argument(msg)
}

/// A tensor's place in a shared-memory region, from its parameters.
fn shm_place(
    params: &std::collections::HashMap<String, pb::InferParameter>,
    what: &str,
) -> Result<Option<ShmRef>, Status> {
    use pb::infer_parameter::ParameterChoice as C;
    let Some(region) = params.get("shared_memory_region") else {
        return Ok(None);
    };
    let Some(C::StringParam(region)) = &region.parameter_choice else {
        return Err(bad(format!(
            "{what}: parameter 'shared_memory_region' must be a string"
        )));
    };
    let int = |key: &str| -> Result<Option<u64>, Status> {
        match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
            None => Ok(None),
            Some(C::Int64Param(i)) if *i >= 0 => Ok(Some(*i as u64)),
            Some(C::Uint64Param(u)) => Ok(Some(*u)),
            Some(_) => Err(bad(format!(
                "{what}: parameter '{key}' must be a non-negative integer"
            ))),
        }
    };
    let byte_size = int("shared_memory_byte_size")?.ok_or_else(|| {
        bad(format!(
            "{what}: 'shared_memory_region' needs 'shared_memory_byte_size'"
        ))
    })?;
    Ok(Some(ShmRef {
        region: region.clone(),
        offset: int("shared_memory_offset")?.unwrap_or(0),
        byte_size,
    }))
}

/// The outputs a request asks to have written into shared memory, checked to name registered
/// regions.
pub fn shm_outputs(
    req: &pb::ModelInferRequest,
    shm: &SharedMemory,
) -> Result<BTreeMap<String, ShmRef>, Status> {
    let mut out = BTreeMap::new();
    for o in &req.outputs {
        let what = format!("output '{}'", o.name);
        if let Some(place) = shm_place(&o.parameters, &what)? {
            if shm.status(Some(&place.region)).is_err() {
                return Err(bad(format!(
                    "{what}: shared-memory region '{}' is not registered",
                    place.region
                )));
            }
            out.insert(o.name.clone(), place);
        }
    }
    Ok(out)
}

/// Writes the outputs placed in shared memory into their regions; the response then carries
/// their datatype, shape and size, and an empty raw entry (keeping the others' positions).
pub fn apply_shm_outputs(
    resp: &mut pb::ModelInferResponse,
    places: &BTreeMap<String, ShmRef>,
    shm: &SharedMemory,
) -> Result<(), Status> {
    use pb::infer_parameter::ParameterChoice as C;
    for (i, o) in resp.outputs.iter_mut().enumerate() {
        let Some(place) = places.get(&o.name) else {
            continue;
        };
        let Some(bytes) = resp.raw_output_contents.get_mut(i) else {
            continue;
        };
        let what = format!("output '{}'", o.name);
        if bytes.len() as u64 > place.byte_size {
            return Err(bad(format!(
                "{what}: {} bytes do not fit the {} bytes given in shared-memory region '{}'",
                bytes.len(),
                place.byte_size,
                place.region
            )));
        }
        shm.write(&place.region, place.offset, bytes, &what)
            .map_err(|e| bad(e.0))?;
        let p = |c| pb::InferParameter {
            parameter_choice: Some(c),
        };
        o.parameters.insert(
            "shared_memory_region".into(),
            p(C::StringParam(place.region.clone())),
        );
        o.parameters.insert(
            "shared_memory_byte_size".into(),
            p(C::Int64Param(bytes.len() as i64)),
        );
        if place.offset > 0 {
            o.parameters.insert(
                "shared_memory_offset".into(),
                p(C::Int64Param(place.offset as i64)),
            );
        }
        *bytes = Bytes::new();
    }
    Ok(())
}

/// Converts a gRPC request into the engine's form; inputs naming a shared-memory region are
/// read from `shm`.
pub fn decode_infer(
    req: pb::ModelInferRequest,
    shm: &SharedMemory,
) -> Result<InferRequest, Status> {
    let raw = req.raw_input_contents;
    if !raw.is_empty()
        && let Some(i) = req
            .inputs
            .iter()
            .find(|i| i.contents.as_ref().is_some_and(has_contents))
    {
        // Triton's words, which its clients match on.
        return Err(bad(format!(
            "contents field must not be specified when using raw_input_contents for '{}' for model '{}'",
            i.name, req.model_name
        )));
    }
    let in_body = req
        .inputs
        .iter()
        .filter(|i| !i.parameters.contains_key("shared_memory_region"))
        .count();
    if !raw.is_empty() && raw.len() != in_body {
        return Err(bad(format!(
            "raw_input_contents has {} entries but the request has {in_body} inputs not in shared memory; give one per input",
            raw.len(),
        )));
    }
    let mut raw = raw.into_iter();
    let mut out = InferRequest {
        id: req.id,
        ..Default::default()
    };
    for (k, v) in req.parameters {
        if let Some(p) = v.parameter_choice.and_then(param) {
            out.parameters.insert(k, p);
        }
    }
    for input in req.inputs {
        let name = input.name;
        let dtype: DataType = input
            .datatype
            .parse()
            .map_err(|e| bad(format!("input '{name}': {e}")))?;
        let shape = input
            .shape
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| {
                    bad(format!(
                        "input '{name}': shape {:?} has a negative dimension",
                        input.shape
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let what = format!("input '{name}'");
        if let Some(place) = shm_place(&input.parameters, &what)? {
            if input.contents.as_ref().is_some_and(has_contents) {
                return Err(bad(format!(
                    "{what}: give shared_memory_region or contents, not both"
                )));
            }
            let r = Bytes::from(
                shm.read(&place.region, place.offset, place.byte_size, &what)
                    .map_err(|e| bad(e.0))?,
            );
            let tensor = match dtype {
                DataType::Bytes => Tensor::from_length_prefixed(shape, &r),
                _ => Tensor::new(dtype, shape, TensorData::Raw(r)),
            }
            .map_err(|e| bad(format!("{what} (from shared memory): {e}")))?;
            out.inputs.push(NamedTensor { name, tensor });
            continue;
        }
        let tensor = if let Some(r) = raw.next() {
            if input.contents.as_ref().is_some_and(has_contents) {
                return Err(bad(format!(
                    "input '{name}': give raw_input_contents or contents, not both"
                )));
            }
            match dtype {
                DataType::Bytes => Tensor::from_length_prefixed(shape, &r),
                _ => Tensor::new(dtype, shape, TensorData::Raw(r)),
            }
            .map_err(|e| bad(format!("input '{name}': {e}")))?
        } else {
            let c = input.contents.unwrap_or_default();
            typed_tensor(&name, dtype, shape, c)?
        };
        out.inputs.push(NamedTensor { name, tensor });
    }
    if !req.outputs.is_empty() {
        out.outputs = Some(req.outputs.into_iter().map(|o| o.name).collect());
    }
    Ok(out)
}

pub(super) fn param(p: pb::infer_parameter::ParameterChoice) -> Option<ParamValue> {
    use pb::infer_parameter::ParameterChoice as C;
    Some(match p {
        C::BoolParam(b) => ParamValue::Bool(b),
        C::Int64Param(i) => ParamValue::Int(i),
        C::Uint64Param(u) => ParamValue::Int(i64::try_from(u).ok()?),
        C::DoubleParam(d) => ParamValue::Double(d),
        C::StringParam(s) => ParamValue::String(s),
    })
}

pub(super) fn has_contents(c: &pb::InferTensorContents) -> bool {
    !(c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty())
}

pub(super) fn typed_tensor(
    name: &str,
    dtype: DataType,
    shape: Vec<usize>,
    c: pb::InferTensorContents,
) -> Result<Tensor, Status> {
    let mut raw: Vec<u8> = Vec::new();
    let range = |i: usize, v: i64| {
        bad(format!(
            "input '{name}': element {i} ({v}) is out of range for {dtype}"
        ))
    };
    macro_rules! narrow {
        ($src:expr, $t:ty) => {
            for (i, v) in $src.iter().enumerate() {
                let x = <$t>::try_from(*v).map_err(|_| range(i, *v as i64))?;
                raw.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match dtype {
        DataType::Bool => raw.extend(c.bool_contents.iter().map(|&b| b as u8)),
        DataType::I8 => narrow!(c.int_contents, i8),
        DataType::I16 => narrow!(c.int_contents, i16),
        DataType::I32 => narrow!(c.int_contents, i32),
        DataType::I64 => narrow!(c.int64_contents, i64),
        DataType::U8 => narrow!(c.uint_contents, u8),
        DataType::U16 => narrow!(c.uint_contents, u16),
        DataType::U32 => narrow!(c.uint_contents, u32),
        DataType::U64 => narrow!(c.uint64_contents, u64),
        DataType::F32 => c
            .fp32_contents
            .iter()
            .for_each(|v| raw.extend_from_slice(&v.to_le_bytes())),
        DataType::F64 => c
            .fp64_contents
            .iter()
            .for_each(|v| raw.extend_from_slice(&v.to_le_bytes())),
        DataType::F16 | DataType::BF16 => {
            return Err(bad(format!(
                "input '{name}': {dtype} has no typed contents field; send it in raw_input_contents"
            )));
        }
        DataType::Bytes => {
            return Tensor::new(dtype, shape, TensorData::Bytes(c.bytes_contents))
                .map_err(|e| bad(format!("input '{name}': {e}")));
        }
    }
    Tensor::new(dtype, shape, TensorData::Raw(Bytes::from(raw)))
        .map_err(|e| bad(format!("input '{name}': {e}")))
}

/// Converts an engine response to gRPC, every output as raw contents.
pub fn encode_infer(resp: InferResponse) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut raw = Vec::with_capacity(resp.outputs.len());
    for o in resp.outputs {
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name: o.name,
            datatype: o.tensor.dtype().as_str().to_string(),
            shape: o.tensor.shape().iter().map(|&d| d as i64).collect(),
            parameters: Default::default(),
            contents: None,
        });
        raw.push(o.tensor.to_wire_bytes());
    }
    pb::ModelInferResponse {
        model_name: resp.model_name,
        model_version: resp.model_version.to_string(),
        id: resp.id,
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

pub(super) fn dt_enum(d: DataType) -> i32 {
    pb::DataType::from_str_name(d.config_name())
        .map(|d| d as i32)
        .unwrap_or(0)
}
