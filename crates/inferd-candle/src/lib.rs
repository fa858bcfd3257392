//! # inferd-candle
//!
//! Hugging Face encoder models served as sentence-embedding models: a version folder laid out as
//! the Hub (or a sentence-transformers export) lays it out —
//!
//! ```text
//! <model>/<version>/model.safetensors   weights, memory-mapped
//!                   config.json         architecture (BERT family)
//!                   tokenizer.json      Hugging Face tokenizer
//!                   modules.json, 1_Pooling/config.json, sentence_bert_config.json  (optional:
//!                                       pooling, normalization, max sequence length)
//! ```
//!
//! — answers to `backend: "candle"` in config.pbtxt (or to a version folder holding
//! `model.safetensors` when the config names no backend). Tensors:
//!
//! - input `TEXT`, BYTES, one UTF-8 string per row (`[-1, 1]` with the batch dimension);
//! - output `EMBEDDING`, FP32 `[-1, hidden]`: the pooled (and, when the model says so,
//!   L2-normalized) sentence embedding;
//! - output `TOKEN_COUNT`, INT64 `[-1, 1]`: tokens the row was embedded from (after truncation,
//!   special tokens included), what OpenAI's `usage.prompt_tokens` counts.
//!
//! Settings come from the sentence-transformers files when present and can be overridden with
//! config.pbtxt parameters `pooling` (`mean`, `cls`, `max`), `normalize` (`true`/`false`) and
//! `max_seq_length` (tokens; longer texts are truncated, as sentence-transformers does).
//!
//! Each instance computes on one thread, taking one slot of the server's compute budget like
//! every other backend; run more instances (`instance_group { count: N }`) to use more cores.
//! candle also has a process-wide pool for large element-wise operations, sized from
//! `CANDLE_NUM_THREADS` (else one thread per core) and shared by all callers one at a time: it
//! would run outside the budget and serialize instances. A process embedding this backend
//! should call [`confine_candle_threads`] first thing in `main`; the `inferd` binary does.

pub mod bert;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

use inferd_core::backend::{
    Backend, BackendError, LoadRequest, LoadedModel, ModelInstance, ModelSignature, NamedTensor,
    TensorSpec,
};
use inferd_core::config::ModelConfig;
use inferd_core::tensor::{DataType, Tensor};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use bert::{Bert, BertConfig, Pooling};
use weights::Weights;

/// Sets `CANDLE_NUM_THREADS=1` unless the environment already sets it, so candle's shared
/// element-wise pool has no threads and every operation runs on the calling instance's own
/// executor thread. Measured with one instance and `--compute-threads 1`: 1.28 cores busy
/// without it, 0.99 with it.
///
/// Call it before the process starts any other thread (environment writes race with reads on
/// other threads), and before the first candle operation (candle reads the variable once).
#[allow(unsafe_code)]
pub fn confine_candle_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: documented precondition: no other thread exists yet, so nothing reads or
        // writes the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// Input tensor name.
pub const TEXT: &str = "TEXT";
/// Embedding output name.
pub const EMBEDDING: &str = "EMBEDDING";
/// Token count output name.
pub const TOKEN_COUNT: &str = "TOKEN_COUNT";

/// Rows embedded together at most; a larger batch is cut into chunks of similar lengths so
/// short texts are not padded to the longest one.
const CHUNK_ROWS: usize = 32;

/// A chunk ends where the next (shorter) row is below this fraction of the chunk's longest, so
/// padding stays under about a fifth of the compute.
const CHUNK_MIN_FILL: f64 = 0.8;

/// Splits row indices, sorted longest first, into chunks of similar lengths.
fn chunks(order: &[usize], counts: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=order.len() {
        let end = i == order.len()
            || i - start == CHUNK_ROWS
            || (counts[order[i]] as f64) < CHUNK_MIN_FILL * counts[order[start]] as f64;
        if end {
            out.push(start..i);
            start = i;
        }
    }
    out
}

/// The sentence-embedding backend.
#[derive(Debug, Default)]
pub struct CandleBackend;

/// Sentence-embedding settings of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddingSettings {
    /// Pooling over tokens.
    pub pooling: Pooling,
    /// L2-normalize the pooled vector.
    pub normalize: bool,
    /// Tokens per text at most (special tokens included).
    pub max_seq_length: usize,
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: not valid JSON: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
    }
}

/// Reads pooling, normalization and length from the sentence-transformers files in `dir`
/// (modules.json, its Pooling module's config.json, sentence_bert_config.json), then applies
/// config.pbtxt parameter overrides.
pub fn settings(
    dir: &Path,
    cfg: &ModelConfig,
    bert: &BertConfig,
) -> Result<EmbeddingSettings, String> {
    let mut s = EmbeddingSettings {
        pooling: Pooling::Mean,
        normalize: false,
        max_seq_length: bert.max_position_embeddings,
    };
    if let Some(modules) = read_json(&dir.join("modules.json"))? {
        for m in modules.as_array().into_iter().flatten() {
            let kind = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
            let sub = m.get("path").and_then(|p| p.as_str()).unwrap_or("");
            if kind.ends_with(".Normalize") {
                s.normalize = true;
            } else if kind.ends_with(".Pooling") {
                if sub.contains("..") || Path::new(sub).is_absolute() {
                    return Err(format!(
                        "modules.json: pooling path '{sub}' leaves the version folder"
                    ));
                }
                if let Some(p) = read_json(&dir.join(sub).join("config.json"))? {
                    let on = |k: &str| p.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                    s.pooling = if on("pooling_mode_cls_token") {
                        Pooling::Cls
                    } else if on("pooling_mode_max_tokens") {
                        Pooling::Max
                    } else if on("pooling_mode_mean_tokens") {
                        Pooling::Mean
                    } else {
                        return Err(format!(
                            "{sub}/config.json: no supported pooling mode is on (mean, cls, max)"
                        ));
                    };
                }
            }
        }
    }
    if let Some(sb) = read_json(&dir.join("sentence_bert_config.json"))?
        && let Some(n) = sb.get("max_seq_length").and_then(|v| v.as_u64())
    {
        s.max_seq_length = n as usize;
    }
    for (key, p) in &cfg.parameters {
        let v = p.string_value.as_str();
        match key.as_str() {
            "pooling" => {
                s.pooling = match v {
                    "mean" => Pooling::Mean,
                    "cls" => Pooling::Cls,
                    "max" => Pooling::Max,
                    _ => {
                        return Err(format!(
                            "parameter 'pooling': '{v}' is not one of mean, cls, max"
                        ));
                    }
                }
            }
            "normalize" => {
                s.normalize = match v {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("parameter 'normalize': '{v}' is not true or false")),
                }
            }
            "max_seq_length" => {
                s.max_seq_length = v.parse().map_err(|_| {
                    format!("parameter 'max_seq_length': '{v}' is not a whole number")
                })?
            }
            _ => {}
        }
    }
    if s.max_seq_length < 2 || s.max_seq_length > bert.max_position_embeddings {
        return Err(format!(
            "max_seq_length {} must be between 2 and the model's max_position_embeddings ({})",
            s.max_seq_length, bert.max_position_embeddings
        ));
    }
    Ok(s)
}

/// Why texts could not be embedded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbedError {
    /// A text the tokenizer or the vocabulary cannot take: the client's mistake.
    #[error("{0}")]
    Input(String),
    /// The encoder failed: the server's fault.
    #[error("{0}")]
    Model(String),
}

/// A loaded embedding model: encoder, tokenizer, settings.
pub struct Embedder {
    bert: Bert,
    tokenizer: Tokenizer,
    settings: EmbeddingSettings,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("bert", &self.bert)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Embedder {
    /// Loads a version folder: `weights_file` (SafeTensors) plus config.json and tokenizer.json
    /// beside it.
    pub fn load(dir: &Path, weights_file: &Path, cfg: &ModelConfig) -> Result<Embedder, String> {
        let bert_cfg: BertConfig = match read_json(&dir.join("config.json"))? {
            Some(v) => serde_json::from_value(v)
                .map_err(|e| format!("{}: {e}", dir.join("config.json").display()))?,
            None => {
                return Err(format!(
                    "{}: missing (the Hugging Face model config is needed beside the weights)",
                    dir.join("config.json").display()
                ));
            }
        };
        bert_cfg
            .check()
            .map_err(|e| format!("{}: {e}", dir.join("config.json").display()))?;
        let settings = settings(dir, cfg, &bert_cfg)?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(format!(
                "{}: missing (a Hugging Face tokenizer.json is needed beside the weights)",
                tok_path.display()
            ));
        }
        let mut tokenizer =
            Tokenizer::from_file(&tok_path).map_err(|e| format!("{}: {e}", tok_path.display()))?;
        // Pad per batch ourselves (to the batch's longest row); truncate as sentence-transformers
        // does, to max_seq_length tokens including the special ones.
        tokenizer.with_padding(None::<PaddingParams>);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: settings.max_seq_length,
                ..Default::default()
            }))
            .map_err(|e| format!("{}: {e}", tok_path.display()))?;
        let w =
            Weights::open(weights_file).map_err(|e| format!("{}: {e}", weights_file.display()))?;
        let reader = w
            .reader()
            .map_err(|e| format!("{}: {e}", weights_file.display()))?;
        let prefix = bert::weight_prefix(reader.names()).ok_or_else(|| {
            format!(
                "{}: no BERT encoder weights (embeddings.word_embeddings.weight) in this file",
                weights_file.display()
            )
        })?;
        let bert = Bert::load(bert_cfg, &reader, prefix)
            .map_err(|e| format!("{}: {e}", weights_file.display()))?;
        Ok(Embedder {
            bert,
            tokenizer,
            settings,
        })
    }

    /// The embedding width.
    pub fn dim(&self) -> usize {
        self.bert.config().hidden_size
    }

    /// The settings in force.
    pub fn settings(&self) -> EmbeddingSettings {
        self.settings
    }

    /// Embeds texts; returns one `dim()`-long vector per text (row-major) and each text's token
    /// count.
    pub fn embed(&self, texts: &[&str]) -> Result<(Vec<f32>, Vec<usize>), EmbedError> {
        let mut encodings = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            encodings.push(
                self.tokenizer
                    .encode(*t, true)
                    .map_err(|e| EmbedError::Input(format!("row {i}: cannot tokenize: {e}")))?,
            );
        }
        let counts: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
        let dim = self.dim();
        let vocab = self.bert.config().vocab_size as u32;
        let types = self.bert.config().type_vocab_size as u32;
        let mut out = vec![0f32; texts.len() * dim];
        // Longest first, in chunks of similar lengths.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(counts[i]));
        for range in chunks(&order, &counts) {
            let chunk = &order[range];
            let len = chunk.iter().map(|&i| counts[i]).max().unwrap_or(0).max(1);
            let b = chunk.len();
            let mut ids = vec![0u32; b * len];
            let mut type_ids = vec![0u32; b * len];
            let mut mask = vec![0f32; b * len];
            for (r, &i) in chunk.iter().enumerate() {
                let e = &encodings[i];
                for (j, (&id, &ty)) in e.get_ids().iter().zip(e.get_type_ids()).enumerate() {
                    if id >= vocab || ty >= types {
                        return Err(EmbedError::Input(format!(
                            "row {i}: token id {id} (type {ty}) is outside the model's vocabulary"
                        )));
                    }
                    ids[r * len + j] = id;
                    type_ids[r * len + j] = ty;
                    mask[r * len + j] = 1.0;
                }
            }
            let pooled = self
                .bert
                .forward(&ids, &type_ids, &mask, b, len)
                .and_then(|t| {
                    bert::pool(
                        &t,
                        &mask,
                        b,
                        len,
                        self.settings.pooling,
                        self.settings.normalize,
                    )
                })
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(|e| EmbedError::Model(format!("encoder failed: {e}")))?;
            for (r, &i) in chunk.iter().enumerate() {
                out[i * dim..(i + 1) * dim].copy_from_slice(&pooled[r * dim..(r + 1) * dim]);
            }
        }
        Ok((out, counts))
    }
}

impl Backend for CandleBackend {
    fn name(&self) -> &'static str {
        "candle"
    }

    fn platform(&self) -> Option<&'static str> {
        None
    }

    fn accepts(&self, _platform: &str, backend: &str) -> bool {
        backend == "candle"
    }

    fn default_model_filename(&self, _cfg: &ModelConfig, _dir: &Path) -> String {
        "model.safetensors".into()
    }

    fn load(&self, req: &LoadRequest<'_>) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let started = std::time::Instant::now();
        let emb = Embedder::load(req.version_dir, &req.model_file, req.config)
            .map_err(BackendError::Load)?;
        tracing::info!(
            model = req.model,
            version = req.version,
            dim = emb.dim(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "embedding model loaded"
        );
        let dim = emb.dim() as i64;
        let signature = ModelSignature {
            inputs: vec![TensorSpec {
                name: TEXT.into(),
                dtype: DataType::Bytes,
                shape: Some(vec![-1, 1]),
            }],
            outputs: vec![
                TensorSpec {
                    name: EMBEDDING.into(),
                    dtype: DataType::F32,
                    shape: Some(vec![-1, dim]),
                },
                TensorSpec {
                    name: TOKEN_COUNT.into(),
                    dtype: DataType::I64,
                    shape: Some(vec![-1, 1]),
                },
            ],
        };
        Ok(Arc::new(CandleModel {
            emb: Arc::new(emb),
            signature,
        }))
    }
}

struct CandleModel {
    emb: Arc<Embedder>,
    signature: ModelSignature,
}

impl LoadedModel for CandleModel {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn new_instance(&self) -> Result<Box<dyn ModelInstance>, BackendError> {
        // candle and the tokenizer compute on rayon; a one-thread pool per instance keeps each
        // instance to the one core its compute-budget slot stands for.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "inferd-candle".into())
            .build()
            .map_err(|e| BackendError::Internal(format!("cannot start a compute thread: {e}")))?;
        Ok(Box::new(CandleInstance {
            emb: self.emb.clone(),
            pool,
        }))
    }
}

struct CandleInstance {
    emb: Arc<Embedder>,
    pool: rayon::ThreadPool,
}

impl ModelInstance for CandleInstance {
    fn execute(
        &mut self,
        inputs: &[NamedTensor],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, BackendError> {
        let x = inferd_core::backend::input(inputs, TEXT)?;
        let items = x
            .bytes_elements()
            .ok_or_else(|| BackendError::InvalidInput(format!("'{TEXT}' must be BYTES")))?;
        let mut texts = Vec::with_capacity(items.len());
        for (i, b) in items.iter().enumerate() {
            texts.push(std::str::from_utf8(b).map_err(|e| {
                BackendError::InvalidInput(format!("'{TEXT}' element {i} is not UTF-8 text: {e}"))
            })?);
        }
        let emb = &self.emb;
        let (vectors, counts) = self
            .pool
            .install(|| emb.embed(&texts))
            .map_err(|e| match e {
                EmbedError::Input(m) => BackendError::InvalidInput(m),
                EmbedError::Model(m) => BackendError::Execution(m),
            })?;
        let shape = x.shape();
        let rows: Vec<usize> = match shape {
            [rest @ .., 1] if !rest.is_empty() => rest.to_vec(),
            _ => shape.to_vec(),
        };
        let mut e_shape = rows.clone();
        e_shape.push(emb.dim());
        let mut c_shape = rows;
        c_shape.push(1);
        let mut result = Vec::with_capacity(outputs.len());
        for name in outputs {
            let tensor = match name.as_str() {
                EMBEDDING => Tensor::from_f32(e_shape.clone(), &vectors),
                TOKEN_COUNT => {
                    let c: Vec<i64> = counts.iter().map(|&c| c as i64).collect();
                    Tensor::from_i64(c_shape.clone(), &c)
                }
                other => {
                    return Err(BackendError::InvalidInput(format!(
                        "unknown output '{other}' (outputs: {EMBEDDING}, {TOKEN_COUNT})"
                    )));
                }
            }
            .map_err(|e| BackendError::Execution(e.to_string()))?;
            result.push(NamedTensor {
                name: name.clone(),
                tensor,
            });
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bert_cfg() -> BertConfig {
        serde_json::from_value(serde_json::json!({
            "model_type": "bert", "vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 64,
        }))
        .unwrap()
    }

    fn config(params: &[(&str, &str)]) -> ModelConfig {
        let mut cfg = ModelConfig::default();
        for (k, v) in params {
            cfg.parameters.insert(
                (*k).into(),
                inferd_core::config::ModelParameter {
                    string_value: (*v).into(),
                },
            );
        }
        cfg
    }

    #[test]
    fn chunks_group_similar_lengths_and_cover_every_row_once() {
        let counts = [40, 39, 12, 35, 11, 10, 9, 33, 5];
        let mut order: Vec<usize> = (0..counts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(counts[i]));
        let parts = chunks(&order, &counts);
        let lens: Vec<Vec<usize>> = parts
            .iter()
            .map(|r| order[r.clone()].iter().map(|&i| counts[i]).collect())
            .collect();
        assert_eq!(
            lens,
            vec![vec![40, 39, 35, 33], vec![12, 11, 10], vec![9], vec![5]]
        );
        let many = vec![7usize; 70];
        let order: Vec<usize> = (0..70).collect();
        let sizes: Vec<usize> = chunks(&order, &many).iter().map(|r| r.len()).collect();
        assert_eq!(sizes, vec![32, 32, 6]);
        assert!(chunks(&[], &[]).is_empty());
    }

    #[test]
    fn sentence_transformers_files_set_pooling_normalization_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Without the files: mean pooling, no normalization, the position table's length.
        let s = settings(d, &config(&[]), &bert_cfg()).unwrap();
        assert_eq!(
            (s.pooling, s.normalize, s.max_seq_length),
            (Pooling::Mean, false, 64)
        );
        std::fs::write(
            d.join("modules.json"),
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        )
        .unwrap();
        std::fs::create_dir(d.join("1_Pooling")).unwrap();
        std::fs::write(
            d.join("1_Pooling/config.json"),
            r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
        )
        .unwrap();
        std::fs::write(
            d.join("sentence_bert_config.json"),
            r#"{"max_seq_length": 32}"#,
        )
        .unwrap();
        let s = settings(d, &config(&[]), &bert_cfg()).unwrap();
        assert_eq!(
            (s.pooling, s.normalize, s.max_seq_length),
            (Pooling::Cls, true, 32)
        );
        // config.pbtxt parameters win.
        let s = settings(
            d,
            &config(&[
                ("pooling", "max"),
                ("normalize", "false"),
                ("max_seq_length", "16"),
            ]),
            &bert_cfg(),
        )
        .unwrap();
        assert_eq!(
            (s.pooling, s.normalize, s.max_seq_length),
            (Pooling::Max, false, 16)
        );
    }

    #[test]
    fn bad_settings_name_the_parameter_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let err = |p: &[(&str, &str)]| settings(d, &config(p), &bert_cfg()).unwrap_err();
        assert!(err(&[("pooling", "median")]).contains("parameter 'pooling'"));
        assert!(err(&[("normalize", "yes")]).contains("parameter 'normalize'"));
        assert!(err(&[("max_seq_length", "x")]).contains("parameter 'max_seq_length'"));
        assert!(err(&[("max_seq_length", "65")]).contains("max_position_embeddings (64)"));
        std::fs::write(
            d.join("modules.json"),
            r#"[{"path":"../../elsewhere","type":"sentence_transformers.models.Pooling"}]"#,
        )
        .unwrap();
        assert!(err(&[]).contains("leaves the version folder"));
        std::fs::write(d.join("modules.json"), "{not json").unwrap();
        assert!(err(&[]).contains("modules.json: not valid JSON"));
    }

    #[test]
    fn missing_companion_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let weights = d.join("model.safetensors");
        let e = Embedder::load(d, &weights, &config(&[])).unwrap_err();
        assert!(e.contains("config.json") && e.contains("missing"), "{e}");
        std::fs::write(d.join("config.json"), r#"{"model_type": "t5"}"#).unwrap();
        let e = Embedder::load(d, &weights, &config(&[])).unwrap_err();
        assert!(e.contains("config.json"), "{e}");
        std::fs::write(
            d.join("config.json"),
            serde_json::to_string(&serde_json::json!({
                "model_type": "bert", "vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 64,
            }))
            .unwrap(),
        )
        .unwrap();
        let e = Embedder::load(d, &weights, &config(&[])).unwrap_err();
        assert!(e.contains("tokenizer.json") && e.contains("missing"), "{e}");
    }
}
