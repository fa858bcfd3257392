//! The JSON shapes in which the engine describes its models: KServe v2 model metadata and
//! Triton's statistics extension. Shared by the HTTP front-end and the Python package, so an
//! embedded engine and a server answer with the same fields.

use serde_json::{Value, json};

use crate::engine::ModelInfo;
use crate::stats::{StatDuration, VersionStats};

/// KServe v2 model metadata: name, ready versions, platform, and the inputs and outputs with
/// the batch dimension (`-1`) in front when the model batches.
pub fn metadata_json(info: &ModelInfo) -> Value {
    let batch = info.config.batches();
    let tensor = |name: &str, dt: &str, dims: &[i64]| {
        let mut shape: Vec<i64> = Vec::with_capacity(dims.len() + 1);
        if batch {
            shape.push(-1);
        }
        shape.extend_from_slice(dims);
        json!({ "name": name, "datatype": dt, "shape": shape })
    };
    json!({
        "name": info.name,
        "versions": info.versions.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        "platform": info.config.platform,
        "inputs": info.config.input.iter().map(|i| tensor(&i.name, i.data_type.0.as_str(), &i.dims)).collect::<Vec<_>>(),
        "outputs": info.config.output.iter().map(|o| tensor(&o.name, o.data_type.0.as_str(), &o.dims)).collect::<Vec<_>>(),
    })
}

fn dur(d: StatDuration) -> Value {
    json!({ "count": d.count, "ns": d.ns })
}

/// Statistics of (model, version) rows in Triton's JSON shape (`{"model_stats": [...]}`).
pub fn statistics_json(rows: &[(String, u64, VersionStats)]) -> Value {
    let model_stats: Vec<Value> = rows
        .iter()
        .map(|(name, version, s)| {
            json!({
                "name": name,
                "version": version.to_string(),
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": dur(s.infer.success),
                    "fail": dur(s.infer.fail),
                    "queue": dur(s.infer.queue),
                    "compute_input": dur(s.infer.compute_input),
                    "compute_infer": dur(s.infer.compute_infer),
                    "compute_output": dur(s.infer.compute_output),
                    "cache_hit": dur(s.infer.cache_hit),
                    "cache_miss": dur(s.infer.cache_miss),
                },
                "batch_stats": s.batches.iter().map(|(b, bs)| json!({
                    "batch_size": b,
                    "compute_input": dur(bs.compute_input),
                    "compute_infer": dur(bs.compute_infer),
                    "compute_output": dur(bs.compute_output),
                })).collect::<Vec<_>>(),
                "memory_usage": [],
            })
        })
        .collect();
    json!({ "model_stats": model_stats })
}
