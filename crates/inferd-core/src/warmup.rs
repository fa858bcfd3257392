//! Warm-up: runs a version's `model_warmup` requests on a fresh instance before the version is
//! marked ready, so the first real request does not pay for lazy initialisation.

use std::path::Path;

use bytes::Bytes;

use crate::backend::{LoadedModel, NamedTensor};
use crate::config::{ModelConfig, ModelWarmup, WarmupInput};
use crate::tensor::{DataType, Tensor, TensorData, element_count};

/// Runs every warm-up sample; an error names the sample and why it failed.
pub fn run(
    model: &str,
    cfg: &ModelConfig,
    loaded: &dyn LoadedModel,
    version_dir: &Path,
) -> Result<(), String> {
    if cfg.model_warmup.is_empty() {
        return Ok(());
    }
    // Warm-up runs on the first placement's device (what a request would meet first).
    let first = cfg.placements().first().copied().unwrap_or_default();
    let mut instance = loaded
        .new_instance_on(&first)
        .map_err(|e| format!("warm-up: {e}"))?;
    let outputs: Vec<String> = cfg.output.iter().map(|o| o.name.clone()).collect();
    for w in &cfg.model_warmup {
        let mut inputs = Vec::new();
        for spec in &cfg.input {
            let Some(wi) = w.inputs.get(&spec.name) else {
                return Err(format!(
                    "warm-up '{}' of model '{model}' gives no data for input '{}'",
                    w.name, spec.name
                ));
            };
            let t = tensor_for(cfg, w.batch_size, wi, version_dir)
                .map_err(|e| format!("warm-up '{}' input '{}': {e}", w.name, spec.name))?;
            inputs.push(NamedTensor {
                name: spec.name.clone(),
                tensor: t,
            });
        }
        for _ in 0..w.count.max(1) {
            instance
                .execute(&inputs, &outputs)
                .map_err(|e| format!("warm-up '{}' of model '{model}' failed: {e}", w.name))?;
        }
    }
    Ok(())
}

/// The inputs of one warm-up sample, by the names its config gives them (for a backend that runs
/// the warm-up rows itself, such as the ONNX cross-check; the config may be the one written,
/// before auto-complete).
pub fn sample_inputs(
    cfg: &ModelConfig,
    w: &ModelWarmup,
    version_dir: &Path,
) -> Result<Vec<NamedTensor>, String> {
    w.inputs
        .iter()
        .map(|(name, wi)| {
            let tensor = tensor_for(cfg, w.batch_size, wi, version_dir)
                .map_err(|e| format!("warm-up '{}' input '{name}': {e}", w.name))?;
            Ok(NamedTensor {
                name: name.clone(),
                tensor,
            })
        })
        .collect()
}

fn tensor_for(
    cfg: &ModelConfig,
    batch: u32,
    wi: &WarmupInput,
    version_dir: &Path,
) -> Result<Tensor, String> {
    if wi.dims.iter().any(|&d| d < 0) {
        return Err("warm-up dims must be fixed sizes".into());
    }
    let mut shape: Vec<usize> = wi.dims.iter().map(|&d| d as usize).collect();
    if cfg.batches() {
        shape.insert(0, batch.max(1) as usize);
    }
    let n = element_count(&shape).ok_or("shape too large")?;
    let dtype = wi.data_type.0;
    if !wi.input_data_file.is_empty() {
        let name = Path::new(&wi.input_data_file);
        if name.components().count() != 1 {
            return Err(format!(
                "input_data_file '{}' must be a plain file name",
                wi.input_data_file
            ));
        }
        let path = version_dir
            .parent()
            .unwrap_or(version_dir)
            .join("warmup")
            .join(name);
        let raw =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        return match dtype {
            DataType::Bytes => {
                Tensor::from_length_prefixed(shape, &Bytes::from(raw)).map_err(|e| e.to_string())
            }
            _ => Tensor::new(dtype, shape, TensorData::Raw(raw.into())).map_err(|e| e.to_string()),
        };
    }
    match dtype.size() {
        None => Tensor::new(dtype, shape, TensorData::Bytes(vec![Bytes::new(); n]))
            .map_err(|e| e.to_string()),
        Some(size) => {
            let mut raw = vec![0u8; n * size];
            if wi.random_data && matches!(dtype, DataType::F32) {
                // Small deterministic values in [0, 1).
                let mut state = 0x2545_f491_4f6c_dd1du64;
                for chunk in raw.chunks_exact_mut(4) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let v = (state >> 40) as f32 / (1u64 << 24) as f32;
                    chunk.copy_from_slice(&v.to_le_bytes());
                }
            }
            Tensor::new(dtype, shape, TensorData::Raw(raw.into())).map_err(|e| e.to_string())
        }
    }
}
