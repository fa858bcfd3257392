//! Where an LLM comes from: a GGUF file (weights, tokenizer and chat template in one), or a
//! Hugging Face llama folder as `save_pretrained` writes it (`config.json`, SafeTensors
//! weights, `tokenizer.json`, `tokenizer_config.json`).

use std::path::{Path, PathBuf};

use inferd_gguf::GgufFile;

use crate::model::safetensors::{INDEX, SINGLE};
use crate::model::{Llama, ModelError, Precision};
use crate::tokenizer::TextTokenizer;

/// An opened model source.
#[derive(Debug)]
pub enum Source {
    /// A GGUF file.
    Gguf(GgufFile),
    /// A Hugging Face llama folder.
    HfFolder(PathBuf),
}

/// The weight file that marks `dir` as a Hugging Face llama folder (the shard index, or the
/// single file), when its `config.json` names a llama-family model.
pub fn hf_weights_file(dir: &Path) -> Option<&'static str> {
    let config = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&config).ok()?;
    if !crate::model::hf_config::is_llama(&config) {
        return None;
    }
    [INDEX, SINGLE].into_iter().find(|f| dir.join(f).is_file())
}

impl Source {
    /// Opens `path`: a folder, or a file in one named `model.safetensors` or
    /// `model.safetensors.index.json`, is read as a Hugging Face folder; anything else as
    /// GGUF.
    pub fn open(path: &Path) -> Result<Source, ModelError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            return Ok(Source::HfFolder(path.to_path_buf()));
        }
        if name.ends_with(".safetensors") || name == INDEX {
            let dir = path.parent().unwrap_or(Path::new("."));
            return Ok(Source::HfFolder(dir.to_path_buf()));
        }
        Ok(Source::Gguf(GgufFile::open(path)?))
    }

    /// The model, its weights held at `precision`.
    pub fn model(&self, precision: Precision) -> Result<Llama, ModelError> {
        match self {
            Source::Gguf(f) => Llama::load(f, precision),
            Source::HfFolder(dir) => Llama::load_hf(dir, precision),
        }
    }

    /// The model's tokenizer and chat template.
    pub fn tokenizer(&self) -> Result<TextTokenizer, ModelError> {
        match self {
            Source::Gguf(f) => TextTokenizer::from_gguf(f),
            Source::HfFolder(dir) => TextTokenizer::from_hf_dir(dir),
        }
    }
}
