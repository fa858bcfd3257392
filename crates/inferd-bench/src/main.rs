//! `inferd-bench inprocess`: the in-process ceiling for a model, measured two ways in one run:
//! the backend instance called directly (no engine at all) and the embedding API
//! (`Engine::infer`: validation, queue, executor thread, oneshot back; and
//! `Engine::infer_blocking`, the same from a plain thread). Prints one JSON object
//! per (path, batch) with calls/s, rows/s and latency percentiles.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use inferd_core::backend::LoadedModel;
use inferd_core::{Engine, EngineOptions, InferRequest, NamedTensor, Tensor};
use inferd_onnx::{OnnxBackend, OnnxModel};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "in-process ceiling of an ONNX model with one FP32 input named 'input'")]
struct Args {
    /// Model repository holding MODEL (its version 1 file is also run directly).
    #[arg(long, default_value = ".")]
    repository: PathBuf,
    /// Model name in the repository.
    #[arg(long, default_value = "")]
    model: String,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    batch: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Instead of an ONNX model: a tree-ensemble file (.json/.ubj XGBoost, .txt LightGBM),
    /// evaluated directly, one thread.
    #[arg(long)]
    trees: Option<PathBuf>,
    /// Only the bare backend (the ceiling), not the engine paths.
    #[arg(long)]
    backend_only: bool,
}

fn report(path: &str, model: &str, batch: usize, mut lat: Vec<Duration>, wall: Duration) {
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
    let calls = lat.len() as f64 / wall.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "path": path, "model": model, "batch": batch,
            "calls_per_s": calls.round(), "rows_per_s": (calls * batch as f64).round(),
            "p50_us": (pct(0.5) * 100.0).round() / 100.0, "p99_us": (pct(0.99) * 100.0).round() / 100.0,
        })
    );
}

/// `n` values in [-1, 1) from a xorshift generator: distinct rows for every call, cheap to make.
fn random_rows(state: &mut u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 17;
            *state ^= *state << 5;
            (*state % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn measure(seconds: f64, mut f: impl FnMut() -> Result<()>) -> Result<(Vec<Duration>, Duration)> {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) {
        f()?;
    }
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        f()?;
        lat.push(t.elapsed());
    }
    Ok((lat, start.elapsed()))
}

/// Tree-ensemble evaluation cost per row, one thread.
fn bench_trees(path: &std::path::Path, batches: &[usize], seconds: f64) -> Result<()> {
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => inferd_trees::Format::XgboostJson,
        Some("ubj") => inferd_trees::Format::XgboostUbj,
        _ => inferd_trees::Format::Lightgbm,
    };
    let forest = inferd_trees::load_forest(path, format).map_err(anyhow::Error::msg)?;
    let nf = forest.n_features;
    let simd = inferd_trees::Compiled::new(&forest)
        .ok_or_else(|| anyhow::anyhow!("the model's trees are too deep for the compiled path"))?;
    let portable = inferd_trees::Compiled::new_portable(&forest)
        .ok_or_else(|| anyhow::anyhow!("the model's trees are too deep for the compiled path"))?;
    let walks: &[&str] = if simd.uses_simd() {
        &["simd", "compiled", "reference"]
    } else {
        eprintln!("no SIMD kernel for this model on this CPU: the portable walk serves it");
        &["compiled", "reference"]
    };
    let mut state = 0x9e37_79b9u32;
    for (walk, &batch) in walks
        .iter()
        .flat_map(|w| batches.iter().map(move |b| (*w, b)))
    {
        // Distinct rows on every call (a repeated row lets the branch predictor learn the walk).
        let pool = batch.max(1024) * 4;
        let rows = random_rows(&mut state, pool * nf);
        let mut out = vec![0f32; batch * forest.n_outputs];
        let mut at = 0usize;
        let mut scratch = inferd_trees::Scratch::default();
        let (lat, wall) = measure(seconds, || {
            let chunk = &rows[at * nf..(at + batch) * nf];
            match walk {
                "simd" => {
                    simd.predict_with(&forest, std::hint::black_box(chunk), &mut out, &mut scratch)
                }
                "compiled" => portable.predict_with(
                    &forest,
                    std::hint::black_box(chunk),
                    &mut out,
                    &mut scratch,
                ),
                _ => forest.predict(std::hint::black_box(chunk), &mut out),
            }
            at = (at + batch) % (pool - batch);
            Ok(())
        })?;
        let name = format!(
            "{} ({walk} walk)",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        report("trees", &name, batch, lat.clone(), wall);
        let per_row_ns = wall.as_secs_f64() * 1e9 / (lat.len() * batch) as f64;
        println!(
            "{}",
            serde_json::json!({"path": "trees", "walk": walk, "model": name, "batch": batch, "ns_per_row": per_row_ns.round()})
        );
    }
    served_trees(path, batches, seconds, nf, &mut state)
}

/// The same forest through the trees backend's instance (request tensors in, tensors out), as
/// `--backend-only` measures an ONNX model: the like-for-like peer of an ONNX forest.
fn served_trees(
    path: &std::path::Path,
    batches: &[usize],
    seconds: f64,
    nf: usize,
    state: &mut u32,
) -> Result<()> {
    use inferd_core::backend::{Backend, LoadRequest};
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let config = inferd_core::config::ModelConfig {
        backend: if path.extension().is_some_and(|e| e == "txt") {
            "lightgbm".into()
        } else {
            "xgboost".into()
        },
        ..Default::default()
    };
    let loaded = inferd_trees::TreesBackend.load(&LoadRequest {
        model: "forest",
        version: 1,
        version_dir: dir,
        model_file: path.to_path_buf(),
        config: &config,
        model_bytes: None,
        caller: None,
        metrics: Default::default(),
    })?;
    let outs = vec![inferd_trees::OUTPUT.to_string()];
    for &batch in batches {
        let mut inst = loaded.new_instance()?;
        // Distinct rows on every call, as the ONNX backend is measured.
        let pool: Vec<Vec<NamedTensor>> = (0..16)
            .map(|_| {
                let v = random_rows(state, batch * nf);
                Ok(vec![NamedTensor {
                    name: inferd_trees::INPUT.into(),
                    tensor: Tensor::from_f32(vec![batch, nf], &v)?,
                }])
            })
            .collect::<Result<_>>()?;
        let mut at = 0;
        let (lat, wall) = measure(seconds, || {
            inst.execute(std::hint::black_box(&pool[at]), &outs)?;
            at = (at + 1) % pool.len();
            Ok(())
        })?;
        let name = format!(
            "{} (served)",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        report("backend", &name, batch, lat, wall);
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(t) = &args.trees {
        return bench_trees(t, &args.batch, args.seconds);
    }
    let file = args.repository.join(&args.model).join("1/model.onnx");
    let loaded = OnnxModel::load(&file).with_context(|| format!("loading {}", file.display()))?;
    let width = loaded.signature().inputs[0]
        .shape
        .as_ref()
        .and_then(|s| s.last().copied())
        .context("input has no static width")? as usize;
    let output = loaded.signature().outputs[0].name.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let engine = if args.backend_only {
        None
    } else {
        let engine = Engine::new(
            EngineOptions {
                repository: args.repository.clone(),
                ..Default::default()
            },
            vec![Arc::new(OnnxBackend)],
        );
        rt.block_on(engine.load(&args.model))?;
        Some(engine)
    };
    let mut state = 0x9e37_79b9u32;
    for &batch in &args.batch {
        let x = Tensor::from_f32(vec![batch, width], &vec![0.5; batch * width])?;
        let mut inst = loaded.new_instance()?;
        let inputs = vec![NamedTensor {
            name: "input".into(),
            tensor: x.clone(),
        }];
        // Distinct rows on every backend call, made beforehand: a repeated row lets the
        // branch predictor learn a tree model's walk.
        let pool: Vec<Vec<NamedTensor>> = (0..16)
            .map(|_| {
                let v = random_rows(&mut state, batch * width);
                Ok(vec![NamedTensor {
                    name: "input".into(),
                    tensor: Tensor::from_f32(vec![batch, width], &v)?,
                }])
            })
            .collect::<Result<_>>()?;
        let outs = vec![output.clone()];
        let mut at = 0;
        let (lat, wall) = measure(args.seconds, || {
            inst.execute(std::hint::black_box(&pool[at]), &outs)?;
            at = (at + 1) % pool.len();
            Ok(())
        })?;
        report("backend", &args.model, batch, lat, wall);
        let Some(engine) = &engine else { continue };
        let (lat, wall) = measure(args.seconds, || {
            let req = InferRequest {
                inputs: inputs.clone(),
                ..Default::default()
            };
            rt.block_on(engine.infer(&args.model, None, req))?;
            Ok(())
        })?;
        report("engine", &args.model, batch, lat, wall);
        // The same engine from a plain thread: no async runtime between caller and result.
        let (lat, wall) = measure(args.seconds, || {
            let req = InferRequest {
                inputs: inputs.clone(),
                ..Default::default()
            };
            engine.infer_blocking(&args.model, None, req)?;
            Ok(())
        })?;
        report("engine_blocking", &args.model, batch, lat, wall);
    }
    Ok(())
}
