//! A llama-family model's shape, from GGUF metadata (`llama.*` keys).

use inferd_gguf::GgufFile;

use super::ModelError;

/// The numbers the forward pass needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub n_layers: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (fewer than `n_heads` with grouped-query attention).
    pub n_kv_heads: usize,
    /// Feed-forward size.
    pub d_ff: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Context length the model was trained for.
    pub context: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE base frequency.
    pub rope_base: f32,
    /// Dimensions rotated per head.
    pub rope_dims: usize,
    /// How RoPE stretches past the trained context.
    pub rope_scaling: super::rope::RopeScaling,
}

impl LlamaConfig {
    /// Per-head size.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// K (or V) values per token per layer.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }

    /// Reads the `llama.*` metadata of `f`.
    pub fn from_gguf(f: &GgufFile) -> Result<LlamaConfig, ModelError> {
        let arch = f.architecture().unwrap_or("unknown");
        if arch != "llama" {
            return Err(ModelError::Unsupported(format!(
                "architecture '{arch}' is not in the llama family this engine runs"
            )));
        }
        let int = |key: &str| -> Result<usize, ModelError> {
            f.arch_value(key)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| {
                    ModelError::Unsupported(format!("metadata 'llama.{key}' is missing"))
                })
        };
        let float = |key: &str, default: f64| -> f32 {
            f.arch_value(key)
                .and_then(|v| v.as_f64())
                .unwrap_or(default) as f32
        };
        let rope_scaling = super::rope::RopeScaling::from_gguf(f)?;
        let d_model = int("embedding_length")?;
        let n_heads = int("attention.head_count")?;
        let n_kv_heads = int("attention.head_count_kv").unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || d_model % n_heads != 0 || n_heads % n_kv_heads != 0 {
            return Err(ModelError::Unsupported(format!(
                "inconsistent heads: {d_model} wide, {n_heads} heads, {n_kv_heads} KV heads"
            )));
        }
        let vocab = match int("vocab_size") {
            Ok(v) => v,
            Err(_) => f
                .tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .ok_or_else(|| ModelError::Unsupported("no vocabulary size".into()))?
                as usize,
        };
        Ok(LlamaConfig {
            n_layers: int("block_count")?,
            d_model,
            n_heads,
            n_kv_heads,
            d_ff: int("feed_forward_length")?,
            vocab,
            context: int("context_length")?,
            eps: float("attention.layer_norm_rms_epsilon", 1e-5),
            rope_base: float("rope.freq_base", 10_000.0),
            rope_dims: int("rope.dimension_count").unwrap_or(d_model / n_heads),
            rope_scaling,
        })
    }
}
