//! Auto-complete (fill what the config leaves out from the model file, as Triton does) and
//! validation of the result against the model's own signature.

use crate::backend::{ModelSignature, TensorSpec};
use crate::config::{ConfigDataType, ModelConfig, ModelInput, ModelOutput};

/// Batch size given to models whose config does not set one but whose tensors all have a dynamic
/// leading dimension (Triton's `default-max-batch-size`).
pub const DEFAULT_MAX_BATCH_SIZE: u32 = 4;

/// Fills inputs, outputs and `max_batch_size` from the model signature where the config leaves
/// them out, then checks the config and model agree. Errors name the field and reason.
pub fn complete_config(
    cfg: &mut ModelConfig,
    max_batch_size_set: bool,
    sig: &ModelSignature,
) -> Result<(), String> {
    let leading_dynamic = |t: &TensorSpec| matches!(t.shape.as_deref(), Some([-1, ..]));
    if !max_batch_size_set {
        let all_dynamic = !sig.inputs.is_empty()
            && sig.inputs.iter().all(leading_dynamic)
            && sig.outputs.iter().all(leading_dynamic);
        cfg.max_batch_size = if all_dynamic {
            DEFAULT_MAX_BATCH_SIZE
        } else {
            0
        };
    }
    let batches = cfg.batches();
    let strip = |t: &TensorSpec| -> Vec<i64> {
        let shape = t.shape.clone().unwrap_or_else(|| vec![-1]);
        if batches && !shape.is_empty() {
            shape[1..].to_vec()
        } else {
            shape
        }
    };
    // A stateful model's control and state tensors come from the server, not the client.
    let server_input = |name: &str| {
        cfg.sequence_batching
            .as_ref()
            .is_some_and(|s| s.server_inputs().any(|n| n == name))
    };
    let state_output = |name: &str| {
        cfg.sequence_batching
            .as_ref()
            .is_some_and(|s| s.state.iter().any(|st| st.output_name == name))
    };
    if cfg.input.is_empty() {
        cfg.input = sig
            .inputs
            .iter()
            .filter(|t| !server_input(&t.name))
            .map(|t| ModelInput {
                name: t.name.clone(),
                data_type: ConfigDataType(t.dtype),
                dims: strip(t),
                ..Default::default()
            })
            .collect();
    }
    if cfg.output.is_empty() {
        cfg.output = sig
            .outputs
            .iter()
            .filter(|t| !state_output(&t.name))
            .map(|t| ModelOutput {
                name: t.name.clone(),
                data_type: ConfigDataType(t.dtype),
                dims: strip(t),
                ..Default::default()
            })
            .collect();
    }
    check_against_model(cfg, sig)
}

fn names(ts: &[TensorSpec]) -> String {
    ts.iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the (completed) config against the model's declared tensors.
fn check_against_model(cfg: &ModelConfig, sig: &ModelSignature) -> Result<(), String> {
    let batches = cfg.batches();
    let check = |kind: &str,
                 name: &str,
                 dt: ConfigDataType,
                 dims: &[i64],
                 reshape: Option<&[i64]>,
                 specs: &[TensorSpec]|
     -> Result<(), String> {
        let spec = specs.iter().find(|s| s.name == name).ok_or_else(|| {
            format!(
                "{kind} '{name}' is not in the model; the model's {kind}s are: {}",
                names(specs)
            )
        })?;
        if spec.dtype != dt.0 {
            return Err(format!(
                "{kind} '{name}': config data_type {} does not match the model's {}",
                dt.0.config_name(),
                spec.dtype.config_name()
            ));
        }
        let Some(model_shape) = &spec.shape else {
            return Ok(());
        };
        let mut expected: Vec<i64> = reshape.unwrap_or(dims).to_vec();
        if batches {
            expected.insert(0, -1);
        }
        let compatible = model_shape.len() == expected.len()
            && model_shape
                .iter()
                .zip(&expected)
                .enumerate()
                .all(|(i, (&m, &c))| {
                    m == -1
                        || c == -1
                        || m == c
                        || (batches && i == 0 && m >= cfg.max_batch_size as i64)
                });
        if !compatible {
            return Err(format!(
                "{kind} '{name}': config shape {expected:?} (batch dimension included as -1{}) does not match the model's {model_shape:?}",
                if reshape.is_some() {
                    ", after reshape"
                } else {
                    ""
                }
            ));
        }
        Ok(())
    };
    for i in &cfg.input {
        check(
            "input",
            &i.name,
            i.data_type,
            &i.dims,
            i.reshape.as_ref().map(|r| r.shape.as_slice()),
            &sig.inputs,
        )?;
    }
    for o in &cfg.output {
        check(
            "output",
            &o.name,
            o.data_type,
            &o.dims,
            o.reshape.as_ref().map(|r| r.shape.as_slice()),
            &sig.outputs,
        )?;
    }
    let server_inputs: Vec<&str> = cfg
        .sequence_batching
        .as_ref()
        .map(|sb| sb.server_inputs().collect())
        .unwrap_or_default();
    for s in &sig.inputs {
        if cfg.input(&s.name).is_none() && !server_inputs.contains(&s.name.as_str()) {
            return Err(format!(
                "the model's input '{}' is missing from the config inputs ({})",
                s.name,
                cfg.input
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(())
}

/// Checks a config on its own (no model file needed): names, dims, batching settings.
pub fn validate_config(cfg: &ModelConfig) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (i, inp) in cfg.input.iter().enumerate() {
        if !seen.insert(("input", inp.name.as_str())) {
            return Err(format!("input[{i}]: duplicate input name '{}'", inp.name));
        }
        check_dims(&format!("input[{i}].dims"), &inp.dims)?;
        if let Some(r) = &inp.reshape {
            check_reshape(&format!("input[{i}]"), &inp.dims, &r.shape)?;
        }
    }
    for (i, out) in cfg.output.iter().enumerate() {
        if !seen.insert(("output", out.name.as_str())) {
            return Err(format!("output[{i}]: duplicate output name '{}'", out.name));
        }
        check_dims(&format!("output[{i}].dims"), &out.dims)?;
        if let Some(r) = &out.reshape {
            check_reshape(&format!("output[{i}]"), &out.dims, &r.shape)?;
        }
    }
    if let Some(sb) = &cfg.sequence_batching {
        if cfg.is_decoupled() {
            return Err("sequence_batching: a decoupled model cannot keep sequences here; set one or the other".into());
        }
        if cfg.platform == "ensemble" {
            return Err(
                "sequence_batching: an ensemble keeps no sequences itself; give them to its member"
                    .into(),
            );
        }
        if cfg.dynamic_batching.is_some() {
            return Err(
                "a model has one scheduler: set sequence_batching or dynamic_batching, not both"
                    .into(),
            );
        }
        if cfg.response_cache.as_ref().is_some_and(|c| c.enable) {
            return Err("response_cache: a stateful model (sequence_batching) answers from its state, so its responses cannot be cached".into());
        }
        for n in sb.server_inputs() {
            if cfg.input(n).is_some() {
                return Err(format!(
                    "sequence_batching: input '{n}' is filled in by the server (a control or state input), so it cannot also be a client input"
                ));
            }
        }
        for s in &sb.state {
            if cfg.output(&s.output_name).is_some() {
                return Err(format!(
                    "sequence_batching.state: output '{}' carries the state, so it cannot also be a client output",
                    s.output_name
                ));
            }
        }
        if let Some(o) = &sb.oldest {
            for &p in &o.preferred_batch_size {
                if p > cfg.max_batch_size.max(1) {
                    return Err(format!(
                        "sequence_batching.oldest.preferred_batch_size: {p} exceeds max_batch_size {}",
                        cfg.max_batch_size
                    ));
                }
            }
        }
    }
    if let Some(db) = &cfg.dynamic_batching {
        if !cfg.batches() {
            return Err("dynamic_batching: requires max_batch_size > 0".into());
        }
        for &p in &db.preferred_batch_size {
            if p > cfg.max_batch_size {
                return Err(format!(
                    "dynamic_batching.preferred_batch_size: {p} exceeds max_batch_size {}",
                    cfg.max_batch_size
                ));
            }
        }
        if db.priority_levels > 0
            && (db.default_priority_level == 0 || db.default_priority_level > db.priority_levels)
        {
            return Err(format!(
                "dynamic_batching.default_priority_level: must be between 1 and priority_levels ({})",
                db.priority_levels
            ));
        }
        for &level in db.priority_queue_policy.keys() {
            if level == 0 || level > db.priority_levels {
                return Err(format!(
                    "dynamic_batching.priority_queue_policy: level {level} is outside 1..={}",
                    db.priority_levels
                ));
            }
        }
    }
    Ok(())
}

fn check_dims(field: &str, dims: &[i64]) -> Result<(), String> {
    for &d in dims {
        if d == 0 || d < -1 {
            return Err(format!(
                "{field}: dimension {d} is invalid (use a positive size or -1 for variable)"
            ));
        }
    }
    Ok(())
}

fn check_reshape(field: &str, dims: &[i64], shape: &[i64]) -> Result<(), String> {
    check_dims(&format!("{field}.reshape.shape"), shape)?;
    let fixed = |d: &[i64]| d.iter().all(|&x| x > 0);
    if fixed(dims) && fixed(shape) && dims.iter().product::<i64>() != shape.iter().product::<i64>()
    {
        return Err(format!(
            "{field}.reshape: shape {shape:?} has a different element count than dims {dims:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Reshape;
    use crate::tensor::DataType;

    fn spec(name: &str, dtype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: Some(shape.to_vec()),
        }
    }

    fn sig() -> ModelSignature {
        ModelSignature {
            inputs: vec![
                spec("a", DataType::I64, &[-1, 4]),
                spec("b", DataType::I64, &[-1, 4]),
            ],
            outputs: vec![spec("y", DataType::F32, &[-1, 4])],
        }
    }

    #[test]
    fn fills_inputs_outputs_and_batch_from_model() {
        let mut cfg = ModelConfig {
            name: "m".into(),
            ..Default::default()
        };
        complete_config(&mut cfg, false, &sig()).unwrap();
        assert_eq!(cfg.max_batch_size, DEFAULT_MAX_BATCH_SIZE);
        assert_eq!(cfg.input.len(), 2);
        assert_eq!(cfg.input[0].dims, vec![4]);
        assert_eq!(cfg.output[0].data_type.0, DataType::F32);
    }

    #[test]
    fn explicit_zero_batch_keeps_full_shape() {
        let mut cfg = ModelConfig::default();
        complete_config(&mut cfg, true, &sig()).unwrap();
        assert_eq!(cfg.max_batch_size, 0);
        assert_eq!(cfg.input[0].dims, vec![-1, 4]);
    }

    #[test]
    fn config_that_disagrees_with_model_is_refused() {
        let mut cfg = ModelConfig {
            max_batch_size: 8,
            ..Default::default()
        };
        cfg.input = vec![
            ModelInput {
                name: "a".into(),
                data_type: ConfigDataType(DataType::F32),
                dims: vec![4],
                ..Default::default()
            },
            ModelInput {
                name: "b".into(),
                data_type: ConfigDataType(DataType::I64),
                dims: vec![4],
                ..Default::default()
            },
        ];
        let err = complete_config(&mut cfg.clone(), true, &sig()).unwrap_err();
        assert!(
            err.contains("input 'a'") && err.contains("TYPE_FP32") && err.contains("TYPE_INT64"),
            "{err}"
        );

        cfg.input[0].data_type = ConfigDataType(DataType::I64);
        cfg.input[0].dims = vec![5];
        let err = complete_config(&mut cfg.clone(), true, &sig()).unwrap_err();
        assert!(err.contains("shape"), "{err}");

        cfg.input[0].dims = vec![2, 2];
        cfg.input[0].reshape = Some(Reshape { shape: vec![4] });
        complete_config(&mut cfg.clone(), true, &sig()).unwrap();

        cfg.input[0].name = "nope".into();
        let err = complete_config(&mut cfg, true, &sig()).unwrap_err();
        assert!(
            err.contains("'nope' is not in the model") && err.contains("a, b"),
            "{err}"
        );
    }

    #[test]
    fn validate_rejects_bad_dims_and_batching() {
        let mut cfg = ModelConfig {
            input: vec![ModelInput {
                name: "x".into(),
                dims: vec![0],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(validate_config(&cfg).unwrap_err().contains("input[0].dims"));
        cfg.input[0].dims = vec![4];
        cfg.input[0].reshape = Some(Reshape { shape: vec![3] });
        assert!(validate_config(&cfg).unwrap_err().contains("element count"));
        cfg.input[0].reshape = None;
        cfg.dynamic_batching = Some(Default::default());
        assert!(
            validate_config(&cfg)
                .unwrap_err()
                .contains("max_batch_size")
        );
    }
}
