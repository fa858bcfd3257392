//! The LLM as a model of the repository: `backend: "llm"` in `config.pbtxt`, or no config at
//! all beside a `.gguf` file or in a Hugging Face llama folder (a version folder holding
//! `config.json` with a llama-family `model_type`, SafeTensors weights and `tokenizer.json`;
//! `default_model_filename` may also name such a folder inside the version). Loading builds the model, its tokenizer and its engine thread;
//! the version is then served by the text APIs (through [`TextGenerator`]) and by KServe
//! inference with a BYTES `text_input` and `text_output` (greedy, `max_tokens` from the
//! request parameter of that name, default 128), as Triton's generate-style models take them.
//!
//! Settings, from the config's `parameters` (string values): `kv_cache_bytes` (default
//! `--llm-kv-cache-bytes`, 256 MiB), `block_size` (16), `max_num_seqs` (`--llm-max-num-seqs`, 32), `max_num_batched_tokens` (512), `max_waiting` (256),
//! `weights` (`q8`, the default: requantized to 8-bit blocks at load; or `f32`, exact),
//! `activations` (`f32`, the default; or `int8`: decode quantizes activations to 8-bit blocks
//! for integer dot products, faster, with log-probabilities further from the exact model's),
//! `kv_cache_dtype` (`auto`: `--llm-kv-cache-dtype`; `f32`; or `q8`: 8-bit groups, 3.5x the
//! tokens in the same bytes),
//! `reasoning_parser` (`auto`: `<think>` output is reasoning when the vocabulary has those
//! tokens; `think`: always; `none`: never).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use inferd_core::backend::{
    Backend, BackendError, LoadRequest, LoadedModel, ModelInstance, ModelSignature, NamedTensor,
    TensorSpec,
};
use inferd_core::config::ModelConfig;
use inferd_core::generate::{GenEvent, GenerateRequest, Prompt, Sampling, TextGenerator};
use inferd_core::tensor::{DataType, Tensor, TensorData};

use crate::engine::EngineConfig;
use crate::model::{KvCache, KvDtype, Precision};
use crate::service::{LlmService, ServiceConfig};

/// Server-wide defaults for LLM versions, which a config's `parameters` override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlmDefaults {
    /// KV memory per version, bytes (`--llm-kv-cache-bytes`).
    pub kv_cache_bytes: usize,
    /// Sequences running at once (`--llm-max-num-seqs`).
    pub max_num_seqs: usize,
    /// How keys and values are stored (`--llm-kv-cache-dtype`).
    pub kv_dtype: KvDtype,
}

impl Default for LlmDefaults {
    fn default() -> Self {
        LlmDefaults {
            kv_cache_bytes: 256 << 20,
            max_num_seqs: 32,
            kv_dtype: KvDtype::F32,
        }
    }
}

/// The `llm` backend.
#[derive(Debug, Default, Clone, Copy)]
pub struct LlmBackend {
    /// Defaults for versions whose config does not say.
    pub defaults: LlmDefaults,
}

struct Loaded {
    service: Arc<LlmService>,
    signature: ModelSignature,
}

struct Instance {
    service: Arc<LlmService>,
}

fn param(cfg: &ModelConfig, key: &str, default: usize) -> Result<usize, BackendError> {
    match cfg.parameters.get(key) {
        None => Ok(default),
        Some(v) => v
            .string_value
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                BackendError::Load(format!(
                    "parameter '{key}': '{}' is not a positive integer",
                    v.string_value
                ))
            }),
    }
}

impl Backend for LlmBackend {
    fn name(&self) -> &'static str {
        "llm"
    }

    fn platform(&self) -> Option<&'static str> {
        None
    }

    fn accepts(&self, _platform: &str, backend: &str) -> bool {
        backend == "llm"
    }

    fn default_model_filename(&self, _config: &ModelConfig, dir: &Path) -> String {
        let mut ggufs: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n.ends_with(".gguf"))
                    .collect()
            })
            .unwrap_or_default();
        ggufs.sort();
        ggufs
            .into_iter()
            .next()
            .or_else(|| crate::source::hf_weights_file(dir).map(str::to_string))
            .unwrap_or_else(|| "model.gguf".into())
    }

    fn load(&self, req: &LoadRequest<'_>) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let started = std::time::Instant::now();
        let path = req.model_file.clone();
        let source = crate::source::Source::open(&path)
            .map_err(|e| BackendError::Load(format!("{}: {e}", path.display())))?;
        let precision = match req
            .config
            .parameters
            .get("weights")
            .map(|p| p.string_value.as_str())
        {
            None | Some("auto") => Precision::Q4,
            Some("q8") => Precision::Q8,
            Some("f32") => Precision::F32,
            Some(other) => {
                return Err(BackendError::Load(format!(
                    "parameter 'weights': '{other}' is not one of auto, q8, f32"
                )));
            }
        };
        let precision = match req
            .config
            .parameters
            .get("activations")
            .map(|p| p.string_value.as_str())
        {
            None | Some("f32") => precision,
            Some("int8") if precision == Precision::Q8 => Precision::Q8Int8,
            Some("int8") if precision == Precision::Q4 => Precision::Q4Int8,
            Some("int8") => {
                return Err(BackendError::Load(
                    "parameter 'activations': int8 needs quantized weights (weights: auto or q8)"
                        .into(),
                ));
            }
            Some(other) => {
                return Err(BackendError::Load(format!(
                    "parameter 'activations': '{other}' is not one of f32, int8"
                )));
            }
        };
        let weights_at = std::time::Instant::now();
        let model = source
            .model(precision)
            .map_err(|e| BackendError::Load(format!("{}: {e}", path.display())))?;
        let weights_ms = weights_at.elapsed().as_secs_f64() * 1e3;
        let tokenizer_at = std::time::Instant::now();
        let tok = source
            .tokenizer()
            .map_err(|e| BackendError::Load(format!("{}: {e}", path.display())))?;
        let tokenizer_ms = tokenizer_at.elapsed().as_secs_f64() * 1e3;
        let cfg = req.config;
        let block_size = param(cfg, "block_size", 16)?;
        let c = &model.cfg;
        let kv_dtype = match cfg
            .parameters
            .get("kv_cache_dtype")
            .map(|p| p.string_value.as_str())
        {
            None | Some("auto") => self.defaults.kv_dtype,
            Some("f32") => KvDtype::F32,
            Some("q8") => KvDtype::Q8,
            Some(other) => {
                return Err(BackendError::Load(format!(
                    "parameter 'kv_cache_dtype': '{other}' is not one of auto, f32, q8"
                )));
            }
        };
        if !KvCache::supports(kv_dtype, c.kv_dim(), c.head_dim()) {
            return Err(BackendError::Load(format!(
                "parameter 'kv_cache_dtype': q8 needs heads of a multiple of 32 values; this model's have {}",
                c.head_dim()
            )));
        }
        let per_block = KvCache::bytes_per_block(c.n_layers, block_size, c.kv_dim(), kv_dtype);
        let kv_bytes = param(cfg, "kv_cache_bytes", self.defaults.kv_cache_bytes)?;
        let num_blocks = kv_bytes / per_block;
        if num_blocks == 0 {
            return Err(BackendError::Load(format!(
                "parameter 'kv_cache_bytes': {kv_bytes} bytes hold no KV block of {per_block} bytes"
            )));
        }
        let svc = ServiceConfig {
            engine: EngineConfig {
                block_size,
                num_blocks,
                max_num_seqs: param(cfg, "max_num_seqs", self.defaults.max_num_seqs)?,
                max_num_batched_tokens: param(cfg, "max_num_batched_tokens", 512)?,
                kv_dtype,
            },
            max_waiting: param(cfg, "max_waiting", 256)?,
            reasoning: match cfg
                .parameters
                .get("reasoning_parser")
                .map(|p| p.string_value.as_str())
            {
                None | Some("auto") => None,
                Some("think") => Some(true),
                Some("none") => Some(false),
                Some(other) => {
                    return Err(BackendError::Load(format!(
                        "parameter 'reasoning_parser': '{other}' is not one of auto, think, none"
                    )));
                }
            },
        };
        tracing::info!(
            model = req.model,
            version = req.version,
            layers = c.n_layers,
            context = c.context,
            kv_blocks = num_blocks,
            kv_tokens = num_blocks * block_size,
            kv_bytes = num_blocks * per_block,
            kv_dtype = ?kv_dtype,
            ms = started.elapsed().as_secs_f64() * 1e3,
            weights_ms,
            tokenizer_ms,
            "LLM loaded"
        );
        let service = LlmService::start(model, tok, svc, req.model)
            .map_err(|e| BackendError::Load(format!("cannot start the engine thread: {e}")))?;
        let text = |name: &str| TensorSpec {
            name: name.into(),
            dtype: DataType::Bytes,
            shape: Some(vec![1]),
        };
        Ok(Arc::new(Loaded {
            service: Arc::new(service),
            signature: ModelSignature {
                inputs: vec![text("text_input")],
                outputs: vec![text("text_output")],
            },
        }))
    }
}

impl LoadedModel for Loaded {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn new_instance(&self) -> Result<Box<dyn ModelInstance>, BackendError> {
        Ok(Box::new(Instance {
            service: self.service.clone(),
        }))
    }

    fn generator(&self) -> Option<Arc<dyn TextGenerator>> {
        Some(self.service.clone())
    }
}

impl ModelInstance for Instance {
    fn execute(
        &mut self,
        inputs: &[NamedTensor],
        _outputs: &[String],
    ) -> Result<Vec<NamedTensor>, BackendError> {
        let t = inferd_core::backend::input(inputs, "text_input")?;
        let texts = t
            .bytes_elements()
            .ok_or_else(|| BackendError::InvalidInput("text_input must be BYTES".into()))?;
        let mut outs = Vec::with_capacity(texts.len());
        // Each row is its own generation; they run side by side in the engine.
        let mut streams = Vec::new();
        for raw in texts {
            let prompt = std::str::from_utf8(raw)
                .map_err(|_| BackendError::InvalidInput("text_input is not UTF-8".into()))?;
            let s = self
                .service
                .start(GenerateRequest {
                    prompt: Prompt::Text(prompt.to_string()),
                    max_tokens: Some(128),
                    sampling: Sampling {
                        temperature: 0.0,
                        ..Sampling::default()
                    },
                    stop: Vec::new(),
                    ignore_eos: false,
                    logprobs: None,
                    constraint: None,
                    echo: false,
                    prompt_logprobs: None,
                    chat: Default::default(),
                })
                .map_err(|e| BackendError::InvalidInput(e.to_string()))?;
            streams.push(s);
        }
        for mut s in streams {
            let mut text = String::new();
            while let Some(e) = s.events.blocking_recv() {
                match e {
                    GenEvent::Text { text: t, .. } => text.push_str(&t),
                    GenEvent::Done { .. } => break,
                    GenEvent::Failed(m) => return Err(BackendError::Execution(m)),
                    GenEvent::PromptLogprobs(_) => {}
                }
            }
            outs.push(Bytes::from(text));
        }
        let n = outs.len();
        let tensor = Tensor::new(DataType::Bytes, t.shape().to_vec(), TensorData::Bytes(outs))
            .map_err(|e| BackendError::Execution(format!("text_output ({n} rows): {e}")))?;
        Ok(vec![NamedTensor {
            name: "text_output".into(),
            tensor,
        }])
    }
}
