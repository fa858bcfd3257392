//! Inference requests and responses in the engine's terms, and the check of a request against a
//! model's config (names, datatypes, shapes, batch size) that runs before anything is queued.

use std::collections::BTreeMap;

use crate::backend::{ModelSignature, NamedTensor};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tensor::{Tensor, element_count};

/// A request parameter value (KServe v2 `parameters`).
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    /// Boolean.
    Bool(bool),
    /// Signed integer.
    Int(i64),
    /// Floating point.
    Double(f64),
    /// String.
    String(String),
}

/// An inference request.
#[derive(Clone, Debug, Default)]
pub struct InferRequest {
    /// Client-chosen id, echoed in the response.
    pub id: String,
    /// Input tensors.
    pub inputs: Vec<NamedTensor>,
    /// Outputs to return; all outputs when `None`.
    pub outputs: Option<Vec<String>>,
    /// Request parameters.
    pub parameters: BTreeMap<String, ParamValue>,
}

/// An inference response.
#[derive(Clone, Debug)]
pub struct InferResponse {
    /// Model that answered.
    pub model_name: String,
    /// Version that answered (the whole response comes from it).
    pub model_version: u64,
    /// Echo of the request id.
    pub id: String,
    /// Output tensors, in the order requested (config order when all).
    pub outputs: Vec<NamedTensor>,
}

/// What a backend that takes requests whole (the python backend) is told of each request
/// besides its inputs: the client's id and its parameters.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    /// The request's `id` (empty when the client gave none).
    pub id: String,
    /// The request's parameters, as the client sent them.
    pub parameters: BTreeMap<String, ParamValue>,
}

/// A request that passed validation, in the form the backend takes.
#[derive(Debug)]
pub struct PreparedRequest {
    /// The client's id and parameters.
    pub meta: RequestMeta,
    /// Inputs in config order, reshaped to what the model sees.
    pub inputs: Vec<NamedTensor>,
    /// Output names to produce.
    pub outputs: Vec<String>,
    /// Batch size (1 when the model does not batch).
    pub batch: usize,
    /// Priority level (1 is highest); 0 when the model has no priority levels.
    pub priority: u32,
    /// Queue timeout asked for by the request (`timeout` parameter, microseconds), if the model
    /// allows overriding its default.
    pub timeout: Option<std::time::Duration>,
    /// Hash of everything but the batch dimension (input names, types, shapes): only requests
    /// with equal keys are batched together.
    pub shape_key: u64,
}

impl PreparedRequest {
    /// Whether two requests to a model that batches may run in one batch: the same inputs, in
    /// the same order, of the same types and the same shapes past the batch dimension, asking for
    /// the same outputs. Compared exactly; [`PreparedRequest::shape_key`] (a hash) only lets
    /// unequal requests be told apart fast.
    pub fn same_batch_as(&self, other: &PreparedRequest) -> bool {
        self.shape_key == other.shape_key
            && self.outputs == other.outputs
            && self.inputs.len() == other.inputs.len()
            && self.inputs.iter().zip(&other.inputs).all(|(a, b)| {
                a.name == b.name
                    && a.tensor.dtype() == b.tensor.dtype()
                    && a.tensor.shape().get(1..) == b.tensor.shape().get(1..)
            })
    }
}

/// Reads the `priority` and `timeout` request parameters (Triton's names) against the model's
/// dynamic batching settings.
fn scheduling_params(
    model: &str,
    cfg: &ModelConfig,
    params: &BTreeMap<String, ParamValue>,
) -> Result<(u32, Option<std::time::Duration>)> {
    let int_param = |key: &str| -> Result<Option<u64>> {
        match params.get(key) {
            None => Ok(None),
            Some(ParamValue::Int(v)) if *v >= 0 => Ok(Some(*v as u64)),
            Some(other) => Err(Error::invalid(format!(
                "parameter '{key}' must be a non-negative integer, got {other:?}"
            ))),
        }
    };
    let priority = int_param("priority")?;
    let timeout_us = int_param("timeout")?;
    let Some(db) = &cfg.dynamic_batching else {
        return Ok((0, None));
    };
    let level = match (db.priority_levels, priority) {
        (0, _) => 0,
        (_, None | Some(0)) => db.default_priority_level,
        (levels, Some(p)) if p > levels as u64 => {
            return Err(Error::invalid(format!(
                "parameter 'priority' is {p} but model '{model}' has priority levels 1..={levels}"
            )));
        }
        (_, Some(p)) => p as u32,
    };
    let policy = db
        .priority_queue_policy
        .get(&level)
        .or(db.default_queue_policy.as_ref());
    let timeout = match (timeout_us, policy) {
        // As in Triton, a timeout of 0 means none.
        (Some(t), Some(p)) if p.allow_timeout_override && t > 0 => {
            Some(std::time::Duration::from_micros(t))
        }
        _ => None,
    };
    Ok((level, timeout))
}

fn shape_matches(expected: &[i64], actual: &[usize]) -> bool {
    expected.len() == actual.len()
        && expected
            .iter()
            .zip(actual)
            .all(|(&e, &a)| e == -1 || e as usize == a)
}

/// Resolves a target shape that may contain one -1, given the element count.
fn resolve_shape(target: &[i64], elements: usize) -> Option<Vec<usize>> {
    let known: usize = target
        .iter()
        .filter(|&&d| d > 0)
        .map(|&d| d as usize)
        .product();
    let wild = target.iter().filter(|&&d| d == -1).count();
    match wild {
        0 => (known == elements).then(|| target.iter().map(|&d| d as usize).collect()),
        1 if known > 0 && elements.is_multiple_of(known) => Some(
            target
                .iter()
                .map(|&d| {
                    if d == -1 {
                        elements / known
                    } else {
                        d as usize
                    }
                })
                .collect(),
        ),
        _ => None,
    }
}

/// Returns `t` with a new shape (same elements).
pub fn with_shape(t: Tensor, shape: Vec<usize>) -> Result<Tensor> {
    let (dtype, _, data) = t.into_parts();
    Tensor::new(dtype, shape, data).map_err(|e| Error::Internal(format!("reshape failed: {e}")))
}

/// Checks a request against a model config and prepares it for the backend.
pub fn prepare(model: &str, cfg: &ModelConfig, req: InferRequest) -> Result<PreparedRequest> {
    let expected_inputs = || {
        cfg.input
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut by_name: BTreeMap<String, Tensor> = BTreeMap::new();
    for nt in req.inputs {
        if cfg.input(&nt.name).is_none() {
            return Err(Error::invalid(format!(
                "unexpected input '{}' for model '{model}'; its inputs are: {}",
                nt.name,
                expected_inputs()
            )));
        }
        if by_name.contains_key(&nt.name) {
            return Err(Error::invalid(format!(
                "input '{}' is given more than once",
                nt.name
            )));
        }
        by_name.insert(nt.name, nt.tensor);
    }
    let batching = cfg.batches();
    let mut batch: Option<usize> = None;
    let mut inputs = Vec::with_capacity(cfg.input.len());
    for spec in &cfg.input {
        let Some(t) = by_name.remove(&spec.name) else {
            if spec.optional {
                continue;
            }
            return Err(Error::invalid(format!(
                "missing input '{}' for model '{model}' (its inputs are: {})",
                spec.name,
                expected_inputs()
            )));
        };
        if t.dtype() != spec.data_type.0 {
            return Err(Error::invalid(format!(
                "input '{}': datatype {} does not match the model's {}",
                spec.name,
                t.dtype(),
                spec.data_type.0
            )));
        }
        let shape = t.shape().to_vec();
        let mut full: Vec<i64> = spec.dims.clone();
        if batching {
            let Some(&b) = shape.first() else {
                return Err(Error::invalid(format!(
                    "input '{}': shape [] has no batch dimension; model '{model}' expects [-1, {}]",
                    spec.name,
                    fmt_dims(&spec.dims)
                )));
            };
            if b == 0 {
                return Err(Error::invalid(format!(
                    "input '{}': batch size is 0",
                    spec.name
                )));
            }
            if b > cfg.max_batch_size as usize {
                return Err(Error::invalid(format!(
                    "input '{}': batch size {b} exceeds max_batch_size {} of model '{model}'",
                    spec.name, cfg.max_batch_size
                )));
            }
            match batch {
                Some(prev) if prev != b => {
                    return Err(Error::invalid(format!(
                        "input '{}': batch size {b} differs from other inputs' batch size {prev}",
                        spec.name
                    )));
                }
                _ => batch = Some(b),
            }
            full.insert(0, -1);
        }
        if !shape_matches(&full, &shape) {
            return Err(Error::invalid(format!(
                "input '{}': shape {shape:?} does not match the model's [{}]",
                spec.name,
                fmt_dims(&full)
            )));
        }
        let t = match &spec.reshape {
            Some(r) => {
                let per_batch = if batching {
                    element_count(&shape[1..])
                } else {
                    element_count(&shape)
                }
                .unwrap_or(0);
                let resolved = resolve_shape(&r.shape, per_batch).ok_or_else(|| {
                    Error::invalid(format!(
                        "input '{}': shape {shape:?} cannot be reshaped to {:?}",
                        spec.name, r.shape
                    ))
                })?;
                let mut s = if batching { vec![shape[0]] } else { vec![] };
                s.extend(resolved);
                with_shape(t, s)?
            }
            None => t,
        };
        inputs.push(NamedTensor {
            name: spec.name.clone(),
            tensor: t,
        });
    }
    let outputs = match req.outputs {
        None => cfg.output.iter().map(|o| o.name.clone()).collect(),
        Some(names) => {
            let mut seen = std::collections::HashSet::new();
            for n in &names {
                if cfg.output(n).is_none() {
                    return Err(Error::invalid(format!(
                        "unknown output '{n}' requested from model '{model}'; its outputs are: {}",
                        cfg.output
                            .iter()
                            .map(|o| o.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                if !seen.insert(n.as_str()) {
                    return Err(Error::invalid(format!(
                        "output '{n}' already exists in request"
                    )));
                }
            }
            names
        }
    };
    let (priority, timeout) = scheduling_params(model, cfg, &req.parameters)?;
    let shape_key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for nt in &inputs {
            nt.name.hash(&mut h);
            nt.tensor.dtype().as_str().hash(&mut h);
            let dims = nt.tensor.shape();
            let skip = usize::from(batching);
            dims[skip.min(dims.len())..].hash(&mut h);
        }
        outputs.hash(&mut h);
        h.finish()
    };
    Ok(PreparedRequest {
        meta: RequestMeta {
            id: req.id,
            parameters: req.parameters,
        },
        inputs,
        outputs,
        batch: batch.unwrap_or(1),
        priority,
        timeout,
        shape_key,
    })
}

/// Checks a prepared request against the shapes the model file itself declares. A config may
/// leave a dimension open (-1) that the model fixes; a request that passes the config but not
/// the model is still the client's mistake, and is answered as one here instead of failing
/// inside the backend. The batch dimension is the batcher's to fill and is not checked.
pub fn check_model_shapes(
    model: &str,
    batching: bool,
    sig: &ModelSignature,
    req: &PreparedRequest,
) -> Result<()> {
    for nt in &req.inputs {
        let Some(model_shape) = sig
            .inputs
            .iter()
            .find(|s| s.name == nt.name)
            .and_then(|s| s.shape.as_ref())
        else {
            continue;
        };
        let shape = nt.tensor.shape();
        let skip = usize::from(batching);
        let fits = model_shape.len() == shape.len()
            && model_shape
                .iter()
                .zip(shape)
                .skip(skip)
                .all(|(&m, &a)| m < 0 || m as usize == a);
        if !fits {
            return Err(Error::invalid(format!(
                "input '{}': shape {shape:?} does not fit model '{model}', whose file takes [{}]{}",
                nt.name,
                fmt_dims(model_shape),
                if batching {
                    " (the first dimension is the batch)"
                } else {
                    ""
                }
            )));
        }
    }
    Ok(())
}

/// Checks a backend's outputs against the config and applies output reshapes.
pub fn finish_outputs(
    model: &str,
    cfg: &ModelConfig,
    outs: Vec<NamedTensor>,
    batch: usize,
) -> Result<Vec<NamedTensor>> {
    outs.into_iter()
        .map(|nt| {
            let Some(spec) = cfg.output(&nt.name) else {
                let state = cfg
                    .sequence_batching
                    .as_ref()
                    .is_some_and(|s| s.state.iter().any(|st| st.output_name == nt.name));
                if state {
                    // Taken out by the sequence driver, never returned to the client.
                    return Ok(nt);
                }
                return Err(Error::Internal(format!(
                    "model '{model}' produced unknown output '{}'",
                    nt.name
                )));
            };
            if nt.tensor.dtype() != spec.data_type.0 {
                return Err(Error::Internal(format!(
                    "model '{model}' output '{}' is {} but its config says {}",
                    nt.name,
                    nt.tensor.dtype(),
                    spec.data_type.0
                )));
            }
            if spec.reshape.is_none() {
                return Ok(nt);
            }
            let n = nt.tensor.len();
            let per = if cfg.batches() { n / batch.max(1) } else { n };
            let dims = resolve_shape(&spec.dims, per).ok_or_else(|| {
                Error::Internal(format!(
                    "output '{}' cannot be reshaped to {:?}",
                    nt.name, spec.dims
                ))
            })?;
            let mut s = if cfg.batches() { vec![batch] } else { vec![] };
            s.extend(dims);
            Ok(NamedTensor {
                name: nt.name,
                tensor: with_shape(nt.tensor, s)?,
            })
        })
        .collect()
}

fn fmt_dims(d: &[i64]) -> String {
    d.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigDataType, ModelInput, ModelOutput, Reshape};
    use crate::tensor::DataType;

    fn cfg() -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            max_batch_size: 8,
            input: vec![ModelInput {
                name: "x".into(),
                data_type: ConfigDataType(DataType::F32),
                dims: vec![4],
                ..Default::default()
            }],
            output: vec![ModelOutput {
                name: "y".into(),
                data_type: ConfigDataType(DataType::F32),
                dims: vec![2],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn req(shape: Vec<usize>, n: usize) -> InferRequest {
        InferRequest {
            inputs: vec![NamedTensor {
                name: "x".into(),
                tensor: Tensor::from_f32(shape, &vec![0.5; n]).unwrap(),
            }],
            ..Default::default()
        }
    }

    fn err(r: Result<PreparedRequest>) -> String {
        match r {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_good_batch() {
        let p = prepare("m", &cfg(), req(vec![3, 4], 12)).unwrap();
        assert_eq!(p.batch, 3);
        assert_eq!(p.outputs, vec!["y"]);
    }

    #[test]
    fn refuses_batch_over_max() {
        let m = err(prepare("m", &cfg(), req(vec![9, 4], 36)));
        assert!(m.contains("batch size 9 exceeds max_batch_size 8"), "{m}");
    }

    fn sig(shape: Option<Vec<i64>>) -> ModelSignature {
        ModelSignature {
            inputs: vec![crate::backend::TensorSpec {
                name: "x".into(),
                dtype: DataType::F32,
                shape,
            }],
            outputs: vec![],
        }
    }

    #[test]
    fn shape_the_config_leaves_open_but_the_model_fixes_is_refused_naming_both() {
        let mut c = cfg();
        c.input[0].dims = vec![-1];
        let p = prepare("m", &c, req(vec![2, 3], 6)).unwrap();
        let m = match check_model_shapes("m", true, &sig(Some(vec![-1, 4])), &p) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        assert!(m.contains("input 'x'") && m.contains("[2, 3]"), "{m}");
        assert!(m.contains("[-1, 4]") && m.contains("batch"), "{m}");
        // What the model takes passes, whatever the batch size; so does a model silent on shape.
        let p = prepare("m", &c, req(vec![3, 4], 12)).unwrap();
        check_model_shapes("m", true, &sig(Some(vec![-1, 4])), &p).unwrap();
        check_model_shapes("m", true, &sig(Some(vec![1, 4])), &p).unwrap();
        check_model_shapes("m", true, &sig(None), &p).unwrap();
        // Without batching every dimension counts.
        let mut c = cfg();
        c.max_batch_size = 0;
        c.input[0].dims = vec![-1, -1];
        let p = prepare("m", &c, req(vec![3, 4], 12)).unwrap();
        assert!(check_model_shapes("m", false, &sig(Some(vec![1, 4])), &p).is_err());
        check_model_shapes("m", false, &sig(Some(vec![3, -1])), &p).unwrap();
    }

    #[test]
    fn refuses_wrong_shape_names_and_types() {
        assert!(err(prepare("m", &cfg(), req(vec![1, 3], 3))).contains("shape [1, 3]"));
        let mut r = req(vec![1, 4], 4);
        r.inputs[0].name = "z".into();
        let m = err(prepare("m", &cfg(), r));
        assert!(m.contains("unexpected input 'z'") && m.contains("x"), "{m}");
        let m = err(prepare("m", &cfg(), InferRequest::default()));
        assert!(m.contains("missing input 'x'"), "{m}");
        let mut r = req(vec![1, 4], 4);
        r.inputs[0].tensor = Tensor::from_i64(vec![1, 4], &[1, 2, 3, 4]).unwrap();
        assert!(
            err(prepare("m", &cfg(), r)).contains("datatype INT64 does not match the model's FP32")
        );
        let mut r = req(vec![1, 4], 4);
        r.outputs = Some(vec!["q".into()]);
        assert!(err(prepare("m", &cfg(), r)).contains("unknown output 'q'"));
        let mut r = req(vec![1, 4], 4);
        r.inputs.push(r.inputs[0].clone());
        assert!(err(prepare("m", &cfg(), r)).contains("more than once"));
    }

    #[test]
    fn zero_timeout_means_no_timeout_and_bad_params_are_refused() {
        use crate::config::{DynamicBatching, QueuePolicy};
        let mut c = cfg();
        c.dynamic_batching = Some(DynamicBatching {
            default_queue_policy: Some(QueuePolicy {
                allow_timeout_override: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut r = req(vec![1, 4], 4);
        r.parameters.insert("timeout".into(), ParamValue::Int(0));
        assert_eq!(prepare("m", &c, r).unwrap().timeout, None);
        let mut r = req(vec![1, 4], 4);
        r.parameters.insert("timeout".into(), ParamValue::Int(250));
        assert_eq!(
            prepare("m", &c, r).unwrap().timeout,
            Some(std::time::Duration::from_micros(250))
        );
        let mut r = req(vec![1, 4], 4);
        r.parameters
            .insert("timeout".into(), ParamValue::String("soon".into()));
        assert!(err(prepare("m", &c, r)).contains("parameter 'timeout'"));
    }

    #[test]
    fn applies_reshape() {
        let mut c = cfg();
        c.input[0].reshape = Some(Reshape { shape: vec![2, -1] });
        let p = prepare("m", &c, req(vec![3, 4], 12)).unwrap();
        assert_eq!(p.inputs[0].tensor.shape(), &[3, 2, 2]);
    }
}
