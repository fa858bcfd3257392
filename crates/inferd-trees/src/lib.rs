//! # inferd-trees
//!
//! Tree ensembles served natively: XGBoost models in their JSON or UBJSON format and LightGBM
//! text models, evaluated with each library's own comparison, missing-value and summation
//! rules so predictions match the reference libraries. Answers to `backend: "xgboost"`,
//! `"lightgbm"`, and Triton FIL's `backend: "fil"` (with its `model_type` parameter).
//!
//! Input `input__0` (FP32, one row of features) and output `output__0` (FP32: the probability,
//! value, or one probability per class), as Triton's FIL backend names them.
//!
//! - [`forest`]: the model as node arrays, and the reference walk.
//! - [`compiled`]: the fast path (perfect-tree layout, branch-free interleaved walks; an
//!   AVX-512 kernel for trees up to 6 deep).
//! - [`xgboost`]: XGBoost JSON/UBJSON -> forest.
//! - [`lightgbm`]: LightGBM text -> forest.

pub mod compiled;
pub mod forest;
pub mod lightgbm;
pub mod xgboost;

use std::path::Path;
use std::sync::Arc;

use inferd_core::backend::{
    Backend, BackendError, LoadRequest, LoadedModel, ModelInstance, ModelSignature, NamedTensor,
    TensorSpec,
};
use inferd_core::config::ModelConfig;
use inferd_core::tensor::{DataType, Tensor};

pub use compiled::{Compiled, Scratch};
pub use forest::Forest;

/// A forest with its compiled form when it has one: predicts on the fast path when it can.
#[derive(Clone, Debug)]
pub struct Predictor {
    forest: Forest,
    compiled: Option<Compiled>,
}

impl Predictor {
    /// Compiles the forest where its trees allow.
    pub fn new(forest: Forest) -> Predictor {
        let compiled = Compiled::new(&forest);
        Predictor { forest, compiled }
    }

    /// The forest.
    pub fn forest(&self) -> &Forest {
        &self.forest
    }

    /// Whether the fast path serves this forest.
    pub fn is_compiled(&self) -> bool {
        self.compiled.is_some()
    }

    /// Predicts `rows` (row-major) into `out` (`n_outputs` per row).
    pub fn predict(&self, rows: &[f32], out: &mut [f32]) {
        self.predict_with(rows, out, &mut Scratch::default());
    }

    /// [`Predictor::predict`] reusing the caller's buffers.
    pub fn predict_with(&self, rows: &[f32], out: &mut [f32], scratch: &mut Scratch) {
        match &self.compiled {
            Some(c) => c.predict_with(&self.forest, rows, out, scratch),
            None => self.forest.predict(rows, out),
        }
    }
}

/// Input tensor name (Triton FIL's).
pub const INPUT: &str = "input__0";
/// Output tensor name (Triton FIL's).
pub const OUTPUT: &str = "output__0";

/// Model file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// XGBoost JSON.
    XgboostJson,
    /// XGBoost UBJSON.
    XgboostUbj,
    /// LightGBM text.
    Lightgbm,
}

/// Reads a model file of a given format into a forest.
pub fn load_forest(path: &Path, format: Format) -> Result<Forest, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    forest_from(&data, format)
}

/// A model file's content, already read, into a forest.
pub fn forest_from(data: &[u8], format: Format) -> Result<Forest, String> {
    match format {
        Format::XgboostJson => {
            let doc: serde_json::Value =
                serde_json::from_slice(data).map_err(|e| format!("not valid XGBoost JSON: {e}"))?;
            xgboost::from_json(&doc)
        }
        Format::XgboostUbj => xgboost::from_json(&xgboost::ubjson(data)?),
        Format::Lightgbm => lightgbm::from_text(
            std::str::from_utf8(data).map_err(|_| "not UTF-8 text".to_string())?,
        ),
    }
}

/// The tree-ensemble backend.
#[derive(Debug, Default)]
pub struct TreesBackend;

fn model_type(cfg: &ModelConfig) -> Option<&str> {
    cfg.parameters
        .get("model_type")
        .map(|p| p.string_value.as_str())
}

fn format_for(cfg: &ModelConfig, file: &Path) -> Result<Format, String> {
    if let Some(t) = model_type(cfg) {
        return match t {
            "xgboost_json" => Ok(Format::XgboostJson),
            "xgboost_ubj" => Ok(Format::XgboostUbj),
            "lightgbm" => Ok(Format::Lightgbm),
            other => Err(format!(
                "model_type '{other}' is not supported (xgboost_json, xgboost_ubj, lightgbm)"
            )),
        };
    }
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    match (cfg.backend.as_str(), ext) {
        (_, "json") => Ok(Format::XgboostJson),
        (_, "ubj") => Ok(Format::XgboostUbj),
        ("lightgbm", _) | (_, "txt") => Ok(Format::Lightgbm),
        _ => Err(format!(
            "cannot tell the model format of '{}': use .json, .ubj or .txt, or set parameter model_type",
            file.display()
        )),
    }
}

impl Backend for TreesBackend {
    fn name(&self) -> &'static str {
        "fil"
    }

    fn platform(&self) -> Option<&'static str> {
        None
    }

    fn accepts(&self, _platform: &str, backend: &str) -> bool {
        matches!(backend, "xgboost" | "lightgbm" | "fil")
    }

    fn default_model_filename(&self, cfg: &ModelConfig, dir: &Path) -> String {
        let pick = |names: &[&str]| {
            names
                .iter()
                .find(|n| dir.join(n).exists())
                .unwrap_or(&names[0])
                .to_string()
        };
        match (cfg.backend.as_str(), model_type(cfg)) {
            (_, Some("xgboost_json")) => pick(&["xgboost.json", "model.json"]),
            (_, Some("xgboost_ubj")) => pick(&["xgboost.ubj", "model.ubj"]),
            (_, Some("lightgbm")) | ("lightgbm", _) => "model.txt".into(),
            ("xgboost", _) => pick(&["model.json", "model.ubj"]),
            _ => pick(&["model.json", "model.ubj", "model.txt"]),
        }
    }

    fn load(&self, req: &LoadRequest<'_>) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let format = format_for(req.config, &req.model_file).map_err(BackendError::Load)?;
        // The bytes the safety checks read, when they did: the file is read once.
        let forest = match &req.model_bytes {
            Some(data) => forest_from(data, format),
            None => load_forest(&req.model_file, format),
        }
        .map_err(BackendError::Load)?;
        let signature = ModelSignature {
            inputs: vec![TensorSpec {
                name: INPUT.into(),
                dtype: DataType::F32,
                shape: Some(vec![-1, forest.n_features as i64]),
            }],
            outputs: vec![TensorSpec {
                name: OUTPUT.into(),
                dtype: DataType::F32,
                shape: Some(vec![-1, forest.n_outputs as i64]),
            }],
        };
        Ok(Arc::new(TreesModel {
            forest: Arc::new(Predictor::new(forest)),
            signature,
        }))
    }
}

struct TreesModel {
    forest: Arc<Predictor>,
    signature: ModelSignature,
}

impl LoadedModel for TreesModel {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn new_instance(&self) -> Result<Box<dyn ModelInstance>, BackendError> {
        Ok(Box::new(TreesInstance {
            forest: self.forest.clone(),
            rows: Vec::new(),
            scratch: Scratch::default(),
        }))
    }
}

struct TreesInstance {
    forest: Arc<Predictor>,
    rows: Vec<f32>,
    scratch: Scratch,
}

impl ModelInstance for TreesInstance {
    fn execute(
        &mut self,
        inputs: &[NamedTensor],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, BackendError> {
        let x = inferd_core::backend::input(inputs, INPUT)?;
        let raw = x
            .raw()
            .ok_or_else(|| BackendError::InvalidInput(format!("'{INPUT}' must be FP32")))?;
        let nf = self.forest.forest().n_features.max(1);
        self.rows.clear();
        self.rows.extend(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        let n = self.rows.len() / nf;
        let no = self.forest.forest().n_outputs;
        let mut out = vec![0f32; n * no];
        self.forest
            .predict_with(&self.rows, &mut out, &mut self.scratch);
        let mut shape = x.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = no;
        }
        let t =
            Tensor::from_f32(shape, &out).map_err(|e| BackendError::Execution(e.to_string()))?;
        Ok(outputs
            .iter()
            .map(|name| NamedTensor {
                name: name.clone(),
                tensor: t.clone(),
            })
            .collect())
    }
}
