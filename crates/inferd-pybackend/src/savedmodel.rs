//! TensorFlow SavedModels (`platform: "tensorflow_savedmodel"` or `backend: "tensorflow"`):
//! Triton's layout (`<version>/model.savedmodel/`) or TF Serving's (`saved_model.pb` and
//! `variables/` in the version folder, no config: inputs and outputs come from the signature),
//! served in the python backend's isolated workers by inferd's own runner
//! (`python/inferd_savedmodel.py`, the `tensorflow` package). The runner lists the ops the
//! served signature reaches before TensorFlow loads anything and refuses file, process and
//! Python ops unless the config pins the `saved_model.pb` digest.

use std::path::Path;
use std::sync::Arc;

use inferd_core::backend::{Backend, BackendError, LoadRequest, LoadedModel};
use inferd_core::config::ModelConfig;

use crate::PythonBackend;

const RUNNER: &str = include_str!("../python/inferd_savedmodel.py");

/// The SavedModel backend.
#[derive(Clone, Debug)]
pub struct SavedModelBackend {
    /// The python backend whose workers run the models (interpreter: it needs tensorflow).
    pub python: PythonBackend,
}

impl Backend for SavedModelBackend {
    fn name(&self) -> &'static str {
        "tensorflow"
    }
    fn platform(&self) -> Option<&'static str> {
        Some("tensorflow_savedmodel")
    }
    fn accepts(&self, platform: &str, backend: &str) -> bool {
        platform == "tensorflow_savedmodel" || backend == "tensorflow"
    }
    fn default_model_filename(&self, _config: &ModelConfig, dir: &Path) -> String {
        // TF Serving's layout: the version folder is the SavedModel.
        if !dir.join("model.savedmodel").exists() && dir.join("saved_model.pb").exists() {
            "saved_model.pb".into()
        } else {
            "model.savedmodel".into()
        }
    }
    fn load(&self, req: &LoadRequest<'_>) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let folder = if req.model_file.ends_with("saved_model.pb") {
            req.model_file
                .parent()
                .unwrap_or(req.version_dir)
                .to_path_buf()
        } else {
            req.model_file.clone()
        };
        if !folder.join("saved_model.pb").is_file() {
            return Err(BackendError::Load(format!(
                "'{}' holds no saved_model.pb (a SavedModel folder, as tf.saved_model.save writes it)",
                folder.display()
            )));
        }
        self.python.load_with(req, Some(RUNNER))
    }
}
