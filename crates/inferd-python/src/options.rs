//! `Engine(repository, **options)`: the options of `inferd serve` that concern the engine, by
//! the same names with `_` for `-` (`compute_threads` is `--compute-threads`), with the same
//! defaults and checks. Unknown names are refused with the list of known ones.

use std::path::PathBuf;
use std::time::Duration;

use inferd_core::{ControlMode, EngineOptions};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Which ONNX backend serves ONNX models (`--onnx-backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnnxChoice {
    /// ONNX Runtime where built in and the library is found, else tract.
    Auto,
    /// tract, always.
    Tract,
    /// ONNX Runtime (built with the `onnxruntime` feature).
    OnnxRuntime,
}

/// Everything `Engine()` was given, checked.
pub struct Settings {
    /// The engine's own options.
    pub engine: EngineOptions,
    /// `--onnx-backend`.
    pub onnx: OnnxChoice,
    /// `--llm-kv-cache-bytes`.
    pub llm_kv_cache_bytes: usize,
    /// `--llm-max-num-seqs`.
    pub llm_max_num_seqs: usize,
    /// `--exit-timeout-secs`: how long `close()` waits for requests in flight.
    pub exit_timeout: Duration,
}

/// The names `Engine()` accepts, as `inferd serve`'s flags without the dashes.
pub const NAMES: &[&str] = &[
    "model_control_mode",
    "load_model",
    "strict_readiness",
    "repository_poll_secs",
    "max_queue_size",
    "compute_threads",
    "model_load_threads",
    "executor_spin_us",
    "model_unload_timeout_secs",
    "cold_start_wait_secs",
    "cold_start_queue",
    "max_sequences",
    "cache_config",
    "staging_dir",
    "onnx_backend",
    "llm_kv_cache_bytes",
    "llm_max_num_seqs",
    "exit_timeout_secs",
    "drift_sample_rate",
];

fn bad(name: &str, why: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("option '{name}': {why}"))
}

fn seconds(name: &str, v: f64, min: f64) -> PyResult<Duration> {
    if !(v.is_finite() && v >= min) {
        return Err(bad(
            name,
            format!("must be a number of seconds of at least {min}, got {v}"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

fn positive(name: &str, v: usize) -> PyResult<usize> {
    if v == 0 {
        return Err(bad(name, "must be positive"));
    }
    Ok(v)
}

impl Settings {
    /// Reads `repository` and the keyword options.
    pub fn from_py(repository: PathBuf, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut engine = EngineOptions {
            repository,
            poll_interval: Duration::from_secs(15),
            executor_spin: Duration::from_micros(100),
            ..Default::default()
        };
        let mut s = Settings {
            engine: EngineOptions::default(),
            onnx: OnnxChoice::Auto,
            llm_kv_cache_bytes: 256 << 20,
            llm_max_num_seqs: 32,
            exit_timeout: Duration::from_secs(30),
        };
        let Some(options) = options else {
            s.engine = engine;
            return Ok(s);
        };
        for (key, value) in options.iter() {
            let name: String = key.extract()?;
            let typed = |what: &str| {
                PyTypeError::new_err(format!(
                    "option '{name}': must be {what}, got {}",
                    value
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            };
            match name.as_str() {
                "model_control_mode" => {
                    let text: String = value.extract().map_err(|_| typed("a str"))?;
                    engine.control_mode = text.parse::<ControlMode>().map_err(|e| bad(&name, e))?;
                }
                "load_model" => {
                    engine.startup_models = if let Ok(one) = value.extract::<String>() {
                        vec![one]
                    } else {
                        value
                            .extract::<Vec<String>>()
                            .map_err(|_| typed("a str or a list of str"))?
                    };
                }
                "strict_readiness" => {
                    engine.strict_readiness = value.extract().map_err(|_| typed("a bool"))?;
                }
                "repository_poll_secs" => {
                    let v: f64 = value.extract().map_err(|_| typed("a number"))?;
                    if !(v.is_finite() && v > 0.0) {
                        return Err(bad(
                            &name,
                            format!("must be a positive number of seconds, got {v}"),
                        ));
                    }
                    engine.poll_interval = Duration::from_secs_f64(v);
                }
                "max_queue_size" => {
                    engine.queue_capacity =
                        positive(&name, value.extract().map_err(|_| typed("an int >= 1"))?)?;
                }
                "compute_threads" => {
                    engine.compute_threads = value.extract().map_err(|_| typed("an int >= 0"))?;
                }
                "model_load_threads" => {
                    engine.model_load_threads =
                        value.extract().map_err(|_| typed("an int >= 0"))?;
                }
                "executor_spin_us" => {
                    let us: u64 = value.extract().map_err(|_| typed("an int >= 0"))?;
                    engine.executor_spin = Duration::from_micros(us);
                }
                "model_unload_timeout_secs" => {
                    let v: f64 = value.extract().map_err(|_| typed("a number"))?;
                    engine.unload_timeout = seconds(&name, v, 0.0)?;
                }
                "cold_start_wait_secs" => {
                    let v: f64 = value.extract().map_err(|_| typed("a number"))?;
                    engine.cold_start_wait = seconds(&name, v, 0.0)?;
                }
                "drift_sample_rate" => {
                    let v: f64 = value.extract().map_err(|_| typed("a number from 0 to 1"))?;
                    if !(0.0..=1.0).contains(&v) {
                        return Err(bad(&name, format!("{v} is not a rate from 0 to 1")));
                    }
                    engine.drift_sample_rate = v;
                }
                "cold_start_queue" => {
                    engine.cold_start_queue = value.extract().map_err(|_| typed("an int >= 0"))?;
                }
                "max_sequences" => {
                    engine.max_sequences =
                        positive(&name, value.extract().map_err(|_| typed("an int >= 1"))?)?;
                }
                "cache_config" => {
                    let text: String = value.extract().map_err(|_| typed("a str"))?;
                    engine.response_cache_bytes =
                        inferd_core::cache::parse_config(&text).map_err(|e| bad(&name, e))?;
                }
                "staging_dir" => {
                    engine.staging_dir = Some(value.extract().map_err(|_| typed("a path"))?);
                }
                "onnx_backend" => {
                    let text: String = value.extract().map_err(|_| typed("a str"))?;
                    s.onnx = match text.as_str() {
                        "auto" => OnnxChoice::Auto,
                        "tract" => OnnxChoice::Tract,
                        "onnxruntime" => OnnxChoice::OnnxRuntime,
                        other => {
                            return Err(bad(
                                &name,
                                format!(
                                    "unknown backend '{other}' (expected auto, tract or onnxruntime)"
                                ),
                            ));
                        }
                    };
                }
                "llm_kv_cache_bytes" => {
                    s.llm_kv_cache_bytes = value.extract().map_err(|_| typed("an int >= 0"))?;
                }
                "llm_max_num_seqs" => {
                    s.llm_max_num_seqs =
                        positive(&name, value.extract().map_err(|_| typed("an int >= 1"))?)?;
                }
                "exit_timeout_secs" => {
                    let v: f64 = value.extract().map_err(|_| typed("a number"))?;
                    s.exit_timeout = seconds(&name, v, 0.0)?;
                }
                other => {
                    return Err(PyTypeError::new_err(format!(
                        "Engine() got an unknown option '{other}' (options: {})",
                        NAMES.join(", ")
                    )));
                }
            }
        }
        if !engine.startup_models.is_empty() && engine.control_mode != ControlMode::Explicit {
            return Err(bad(
                "load_model",
                format!(
                    "only valid with model_control_mode='explicit' (it is '{}')",
                    engine.control_mode
                ),
            ));
        }
        s.engine = engine;
        Ok(s)
    }
}
