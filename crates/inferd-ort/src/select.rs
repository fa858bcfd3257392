//! `--onnx-backend`: which engine runs an ONNX model when both are built in.
//!
//! - `tract`: the pure-Rust backend (`inferd-onnx`) for every model;
//! - `onnxruntime`: ONNX Runtime for every model;
//! - `auto` (the default): tract first; a model tract refuses loads on ONNX Runtime; a model
//!   tract loads is also opened on ONNX Runtime and both run the warm-up rows (the config's
//!   `model_warmup`, else rows made up from the inputs' shapes and types); where any output
//!   disagrees, the model is served on ONNX Runtime with a warning naming the output. A model
//!   with `KIND_GPU` instances goes to ONNX Runtime directly.
//!
//! A model's config can pin its own choice with `parameters { key: "onnx_backend" value: {
//! string_value: "tract" } }` (or `onnxruntime`, `auto`).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use inferd_core::backend::{Backend, BackendError, LoadRequest, LoadedModel, NamedTensor};
use inferd_core::config::ModelConfig;
use inferd_onnx::{OnnxBackend, OnnxModel};

use crate::check::{self, Disagreement};
use crate::{Device, OrtModel};

/// The config parameter that overrides the server's `--onnx-backend` for one model.
pub const PARAMETER: &str = "onnx_backend";

/// Which backend runs ONNX models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnnxChoice {
    /// tract, ONNX Runtime for what tract refuses or answers differently.
    #[default]
    Auto,
    /// tract only.
    Tract,
    /// ONNX Runtime only.
    OnnxRuntime,
}

impl FromStr for OnnxChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(OnnxChoice::Auto),
            "tract" => Ok(OnnxChoice::Tract),
            "onnxruntime" => Ok(OnnxChoice::OnnxRuntime),
            other => Err(format!(
                "'{other}' is not an ONNX backend (auto, tract, onnxruntime)"
            )),
        }
    }
}

impl fmt::Display for OnnxChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnnxChoice::Auto => "auto",
            OnnxChoice::Tract => "tract",
            OnnxChoice::OnnxRuntime => "onnxruntime",
        })
    }
}

/// The ONNX backend of a build with both engines: serves `onnxruntime_onnx` / `onnx` models
/// with the engine [`OnnxChoice`] picks (`backend: "tract"` models stay with [`OnnxBackend`]).
#[derive(Debug, Default)]
pub struct OnnxSelect {
    /// The server-wide choice.
    pub choice: OnnxChoice,
}

impl OnnxSelect {
    /// A backend making `choice` for every model that does not pin its own.
    pub fn new(choice: OnnxChoice) -> Self {
        OnnxSelect { choice }
    }

    fn choice_for(&self, cfg: &ModelConfig) -> Result<OnnxChoice, BackendError> {
        match cfg.parameters.get(PARAMETER) {
            None => Ok(self.choice),
            Some(p) => p
                .string_value
                .parse()
                .map_err(|e| BackendError::Load(format!("config parameters '{PARAMETER}': {e}"))),
        }
    }
}

impl Backend for OnnxSelect {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn platform(&self) -> Option<&'static str> {
        Some("onnxruntime_onnx")
    }

    fn accepts(&self, platform: &str, backend: &str) -> bool {
        matches!(platform, "onnxruntime_onnx" | "onnx") || matches!(backend, "onnxruntime" | "onnx")
    }

    fn default_model_filename(&self, config: &ModelConfig, dir: &Path) -> String {
        OnnxBackend.default_model_filename(config, dir)
    }

    fn gpu_unsupported(&self) -> Option<String> {
        match self.choice {
            OnnxChoice::Tract => Some("--onnx-backend tract runs on CPU only".into()),
            _ => crate::OrtBackend.gpu_unsupported(),
        }
    }

    fn load(&self, req: &LoadRequest<'_>) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let choice = self.choice_for(req.config)?;
        let ort = || -> Result<OrtModel, BackendError> {
            let device = Device::from_config(req.config).map_err(BackendError::Load)?;
            OrtModel::load_on(&req.model_file, device)
        };
        if req.config.wants_gpu() {
            if choice == OnnxChoice::Tract {
                return Err(BackendError::Load(format!(
                    "KIND_GPU instances need ONNX Runtime, and this model's backend is tract \
                     (set '{PARAMETER}' to auto or onnxruntime, or use KIND_CPU)"
                )));
            }
            return Ok(Arc::new(ort()?));
        }
        match choice {
            OnnxChoice::Tract => Ok(Arc::new(tract(req)?)),
            OnnxChoice::OnnxRuntime => Ok(Arc::new(ort()?)),
            OnnxChoice::Auto => auto(req, tract(req), ort),
        }
    }
}

fn tract(req: &LoadRequest<'_>) -> Result<OnnxModel, BackendError> {
    OnnxModel::load_from(
        &req.model_file,
        req.model_bytes.as_deref(),
        Some(req.config),
    )
}

fn auto(
    req: &LoadRequest<'_>,
    tract: Result<OnnxModel, BackendError>,
    ort: impl FnOnce() -> Result<OrtModel, BackendError>,
) -> Result<Arc<dyn LoadedModel>, BackendError> {
    let who = format!("model '{}' version {}", req.model, req.version);
    let tract = match tract {
        Ok(t) => t,
        Err(refusal) => {
            return match ort() {
                Ok(o) => {
                    tracing::info!(
                        "{who}: served on ONNX Runtime, because tract refuses it: {refusal}"
                    );
                    Ok(Arc::new(o))
                }
                Err(e) => Err(BackendError::Load(format!(
                    "tract refuses it: {refusal}; and ONNX Runtime cannot serve it either: {e}"
                ))),
            };
        }
    };
    let ort = match ort() {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(
                "{who}: served on tract without the ONNX Runtime cross-check, which cannot \
                 load it: {e}"
            );
            return Ok(Arc::new(tract));
        }
    };
    match cross_check(req, &tract, &ort) {
        Ok(d) if d.is_empty() => {
            tracing::info!("{who}: served on tract (its answers match ONNX Runtime's)");
            Ok(Arc::new(tract))
        }
        Ok(d) => {
            let list: Vec<String> = d
                .iter()
                .map(|Disagreement { output, detail }| format!("output '{output}' ({detail})"))
                .collect();
            tracing::warn!(
                "{who}: served on ONNX Runtime, because tract disagrees with it on the warm-up \
                 rows: {}",
                list.join("; ")
            );
            Ok(Arc::new(ort))
        }
        Err(CheckFailed::Tract(e)) => {
            tracing::warn!(
                "{who}: served on ONNX Runtime, because tract fails on the warm-up rows: {e}"
            );
            Ok(Arc::new(ort))
        }
        Err(CheckFailed::Inconclusive(e)) => {
            tracing::warn!("{who}: served on tract; the cross-check could not run: {e}");
            Ok(Arc::new(tract))
        }
    }
}

enum CheckFailed {
    /// tract failed on rows ONNX Runtime ran.
    Tract(String),
    /// No rows both could run, or ONNX Runtime failed on them.
    Inconclusive(String),
}

/// Runs the warm-up rows on both and compares every output.
fn cross_check(
    req: &LoadRequest<'_>,
    tract: &OnnxModel,
    ort: &OrtModel,
) -> Result<Vec<Disagreement>, CheckFailed> {
    let samples: Vec<Vec<NamedTensor>> = if req.config.model_warmup.is_empty() {
        vec![check::synthesize(&tract.signature().inputs).map_err(CheckFailed::Inconclusive)?]
    } else {
        req.config
            .model_warmup
            .iter()
            .map(|w| inferd_core::warmup::sample_inputs(req.config, w, req.version_dir))
            .collect::<Result<_, _>>()
            .map_err(CheckFailed::Inconclusive)?
    };
    let outputs = |m: &dyn LoadedModel| -> Vec<String> {
        m.signature()
            .outputs
            .iter()
            .map(|o| o.name.clone())
            .collect()
    };
    let fail = |e: BackendError| CheckFailed::Inconclusive(e.to_string());
    let mut t = tract.new_instance().map_err(fail)?;
    let mut o = ort.new_instance().map_err(fail)?;
    let (t_out, o_out) = (outputs(tract), outputs(ort));
    let mut found = Vec::new();
    for inputs in &samples {
        let theirs = o
            .execute(inputs, &o_out)
            .map_err(|e| CheckFailed::Inconclusive(format!("ONNX Runtime: {e}")))?;
        let ours = t
            .execute(inputs, &t_out)
            .map_err(|e| CheckFailed::Tract(e.to_string()))?;
        for d in check::compare(&ours, &theirs) {
            if !found.iter().any(|f: &Disagreement| f.output == d.output) {
                found.push(d);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print_their_flag_values() {
        for c in [OnnxChoice::Auto, OnnxChoice::Tract, OnnxChoice::OnnxRuntime] {
            assert_eq!(c.to_string().parse::<OnnxChoice>(), Ok(c));
        }
        let e = "ort".parse::<OnnxChoice>().expect_err("not a choice");
        assert!(e.contains("auto, tract, onnxruntime"), "{e}");
    }

    #[test]
    fn a_config_parameter_overrides_the_server_choice() {
        let mut cfg = ModelConfig::default();
        let s = OnnxSelect::new(OnnxChoice::Auto);
        assert_eq!(s.choice_for(&cfg).expect("default"), OnnxChoice::Auto);
        cfg.parameters.insert(
            PARAMETER.into(),
            inferd_core::config::ModelParameter {
                string_value: "tract".into(),
            },
        );
        assert_eq!(s.choice_for(&cfg).expect("pinned"), OnnxChoice::Tract);
        cfg.parameters.insert(
            PARAMETER.into(),
            inferd_core::config::ModelParameter {
                string_value: "gpu".into(),
            },
        );
        let e = s.choice_for(&cfg).expect_err("bad value").to_string();
        assert!(e.contains("onnx_backend") && e.contains("'gpu'"), "{e}");
    }
}
