//! A Hugging Face llama folder's `config.json` (`LlamaForCausalLM`, `MistralForCausalLM`) as
//! the engine's [`LlamaConfig`], in both of the forms `save_pretrained` writes: `rope_theta`
//! and `rope_scaling` (transformers 4), or one `rope_parameters` object (transformers 5).
//! What this engine cannot run exactly (biases, another activation, a head size that is not
//! the width over the heads, quantized checkpoints, dynamic NTK scaling) is refused by name.

use serde::Deserialize;
use serde_json::Value;

use super::rope::RopeScaling;
use super::{LlamaConfig, ModelError};

/// The fields of `config.json` the engine reads; the rest are ignored.
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    model_type: String,
    #[serde(default)]
    architectures: Vec<String>,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    intermediate_size: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    rms_norm_eps: Option<f64>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    sliding_window: Option<usize>,
    quantization_config: Option<Value>,
}

/// The model types read as llama: Mistral's differs only by its optional sliding window.
const FAMILY: [&str; 2] = ["llama", "mistral"];

/// Whether `config` (a parsed `config.json`) describes a model of the llama family.
pub fn is_llama(config: &Value) -> bool {
    let named = |s: &str| FAMILY.contains(&s);
    config["model_type"].as_str().is_some_and(named)
        || config["architectures"].as_array().is_some_and(|a| {
            a.iter().filter_map(Value::as_str).any(|s| {
                s.strip_suffix("ForCausalLM")
                    .is_some_and(|m| named(&m.to_ascii_lowercase()))
            })
        })
}

/// The shape `config` describes, and Llama 3's per-frequency divisors when its RoPE scaling
/// is `llama3` (what a GGUF carries as `rope_freqs.weight`).
pub fn from_hf(config: &Value) -> Result<(LlamaConfig, Option<Vec<f32>>), ModelError> {
    let bad = |m: String| ModelError::Unsupported(format!("config.json: {m}"));
    // serde's message does not name the field; these are checked first so the error does.
    for key in [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
    ] {
        if config[key].as_u64().is_none() {
            return Err(bad(format!(
                "field '{key}': {} is not a non-negative integer",
                config[key]
            )));
        }
    }
    let c = HfConfig::deserialize(config).map_err(|e| bad(e.to_string()))?;
    if !is_llama(config) {
        return Err(bad(format!(
            "model_type '{}' ({}) is not in the llama family this engine runs (llama, mistral)",
            c.model_type,
            c.architectures.join(", ")
        )));
    }
    if let Some(q) = &c.quantization_config {
        let method = q["quant_method"].as_str().unwrap_or("unknown");
        return Err(bad(format!(
            "field 'quantization_config': a '{method}' quantized checkpoint is not supported; \
             serve the full-precision weights or a GGUF file"
        )));
    }
    if c.attention_bias || c.mlp_bias {
        return Err(bad(
            "fields 'attention_bias'/'mlp_bias': projections with biases are not supported".into(),
        ));
    }
    if let Some(act) = c.hidden_act.as_deref().filter(|a| *a != "silu") {
        return Err(bad(format!(
            "field 'hidden_act': '{act}' is not supported (the llama family uses silu)"
        )));
    }
    let (d, heads) = (c.hidden_size, c.num_attention_heads);
    let kv_heads = c.num_key_value_heads.unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || d % heads != 0 || heads % kv_heads != 0 {
        return Err(bad(format!(
            "inconsistent heads: hidden_size {d}, {heads} heads, {kv_heads} KV heads"
        )));
    }
    if let Some(hd) = c.head_dim.filter(|&hd| hd != d / heads) {
        return Err(bad(format!(
            "field 'head_dim': {hd} differs from hidden_size / num_attention_heads = {}; \
             such models are not supported",
            d / heads
        )));
    }
    // transformers 5 keeps theta and scaling in one object; 4 had them apart.
    let rope = c
        .rope_parameters
        .clone()
        .or_else(|| c.rope_scaling.clone())
        .filter(|v| v.is_object())
        .unwrap_or(Value::Null);
    let base = c
        .rope_theta
        .or_else(|| rope["rope_theta"].as_f64())
        .unwrap_or(10_000.0);
    let (scaling, divisors) = rope_scaling(&rope, c.max_position_embeddings, base, d / heads)
        .map_err(|m| bad(format!("RoPE scaling: {m}")))?;
    // Mistral's window: beyond it, windowed attention differs from the full attention this
    // engine computes, so the context stops at the window.
    let context = match c.sliding_window {
        Some(w) if w > 0 && w < c.max_position_embeddings => {
            tracing::warn!(
                window = w,
                trained = c.max_position_embeddings,
                "sliding-window attention: the context is limited to the window"
            );
            w
        }
        _ => c.max_position_embeddings,
    };
    let cfg = LlamaConfig {
        n_layers: c.num_hidden_layers,
        d_model: d,
        n_heads: heads,
        n_kv_heads: kv_heads,
        d_ff: c.intermediate_size,
        vocab: c.vocab_size,
        context,
        eps: c.rms_norm_eps.unwrap_or(1e-6) as f32,
        rope_base: base as f32,
        rope_dims: d / heads,
        rope_scaling: scaling,
    };
    Ok((cfg, divisors))
}

/// The scaling a `rope_scaling` / `rope_parameters` object names (`rope_type`, or `type` in
/// older files).
fn rope_scaling(
    rope: &Value,
    trained: usize,
    base: f64,
    dims: usize,
) -> Result<(RopeScaling, Option<Vec<f32>>), String> {
    let kind = rope["rope_type"]
        .as_str()
        .or_else(|| rope["type"].as_str())
        .unwrap_or("default");
    let float = |k: &str| rope[k].as_f64();
    let factor = float("factor").unwrap_or(1.0);
    if kind != "default" && !(factor.is_finite() && factor > 0.0) {
        return Err(format!("factor {factor} is not a positive number"));
    }
    let original = rope["original_max_position_embeddings"]
        .as_u64()
        .map_or(trained, |v| v as usize);
    Ok(match kind {
        "default" => (RopeScaling::None, None),
        _ if factor == 1.0 && kind != "llama3" => (RopeScaling::None, None),
        "linear" => (
            RopeScaling::Linear {
                factor: factor as f32,
            },
            None,
        ),
        "yarn" => (
            RopeScaling::Yarn {
                factor: factor as f32,
                original_context: original,
                beta_fast: float("beta_fast").unwrap_or(32.0) as f32,
                beta_slow: float("beta_slow").unwrap_or(1.0) as f32,
                attn_factor: float("attention_factor")
                    .filter(|&a| a > 0.0)
                    .unwrap_or(0.1 * factor.ln() + 1.0) as f32,
            },
            None,
        ),
        "llama3" => {
            let low = float("low_freq_factor").unwrap_or(1.0);
            let high = float("high_freq_factor").unwrap_or(4.0);
            if high <= low {
                return Err(format!(
                    "high_freq_factor {high} must exceed low_freq_factor {low}"
                ));
            }
            (
                RopeScaling::None,
                Some(llama3_divisors(base, dims, factor, low, high, original)),
            )
        }
        other => {
            return Err(format!(
                "'{other}' is not supported (default, linear, yarn and llama3 are)"
            ));
        }
    })
}

/// Llama 3.1's frequency divisors: wavelengths shorter than `original / high` keep their
/// frequency, those longer than `original / low` are divided by `factor`, and the band
/// between blends the two by where the wavelength falls (Meta's published rule, which
/// llama.cpp's converter stores as `rope_freqs.weight`).
pub fn llama3_divisors(
    base: f64,
    dims: usize,
    factor: f64,
    low: f64,
    high: f64,
    original: usize,
) -> Vec<f32> {
    let original = original as f64;
    (0..dims / 2)
        .map(|i| {
            let freq = base.powf(-((2 * i) as f64) / dims as f64);
            let wavelength = 2.0 * std::f64::consts::PI / freq;
            if wavelength < original / high {
                1.0
            } else if wavelength > original / low {
                factor as f32
            } else {
                let smooth = (original / wavelength - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smollm2(extra: Value) -> Value {
        let mut c = json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "head_dim": 64, "tie_word_embeddings": true,
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        c
    }

    #[test]
    fn both_rope_forms_of_transformers_give_the_same_config() {
        let v5 =
            smollm2(json!({"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}));
        let v4 = smollm2(json!({"rope_theta": 100000.0, "rope_scaling": null}));
        let (a, _) = from_hf(&v5).unwrap();
        let (b, _) = from_hf(&v4).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            (a.n_kv_heads, a.head_dim(), a.rope_base, a.context),
            (3, 64, 100000.0, 8192)
        );
    }

    #[test]
    fn what_the_engine_cannot_run_is_refused_by_name() {
        for (extra, named) in [
            (
                json!({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}),
                "qwen2",
            ),
            (json!({"attention_bias": true}), "attention_bias"),
            (json!({"hidden_act": "gelu"}), "gelu"),
            (json!({"head_dim": 128}), "head_dim"),
            (
                json!({"quantization_config": {"quant_method": "gptq"}}),
                "gptq",
            ),
            (
                json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
                "dynamic",
            ),
            (json!({"hidden_size": null}), "hidden_size"),
        ] {
            let e = from_hf(&smollm2(extra)).unwrap_err().to_string();
            assert!(e.contains(named), "{e} should name {named}");
        }
    }

    #[test]
    fn mistral_reads_as_llama_with_its_window_as_the_context() {
        let c = smollm2(
            json!({"model_type": "mistral", "architectures": ["MistralForCausalLM"],
                               "sliding_window": 4096}),
        );
        assert_eq!(from_hf(&c).unwrap().0.context, 4096);
        let c = smollm2(json!({"model_type": "mistral", "sliding_window": null}));
        assert_eq!(from_hf(&c).unwrap().0.context, 8192);
    }

    #[test]
    fn llama3_divisors_keep_short_waves_stretch_long_ones_and_blend_between() {
        // Llama 3.1 8B's settings.
        let d = llama3_divisors(500_000.0, 128, 8.0, 1.0, 4.0, 8192);
        assert_eq!(d.len(), 64);
        assert_eq!(d[0], 1.0);
        assert_eq!(d[63], 8.0);
        let blended: Vec<&f32> = d.iter().filter(|&&x| x > 1.0 && x < 8.0).collect();
        assert!(!blended.is_empty());
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "{d:?}");
        let c = smollm2(
            json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}, "rope_theta": 500000.0}),
        );
        let (cfg, div) = from_hf(&c).unwrap();
        assert_eq!(cfg.rope_scaling, RopeScaling::None);
        assert_eq!(
            div.unwrap(),
            llama3_divisors(500_000.0, 64, 8.0, 1.0, 4.0, 8192)
        );
    }

    #[test]
    fn yarn_and_linear_read_their_fields() {
        let c = smollm2(json!({"rope_scaling": {"type": "linear", "factor": 2.0}}));
        assert_eq!(
            from_hf(&c).unwrap().0.rope_scaling,
            RopeScaling::Linear { factor: 2.0 }
        );
        let c = smollm2(
            json!({"rope_parameters": {"rope_type": "yarn", "factor": 4.0,
            "rope_theta": 10000.0, "original_max_position_embeddings": 2048}}),
        );
        match from_hf(&c).unwrap().0.rope_scaling {
            RopeScaling::Yarn {
                factor,
                original_context,
                attn_factor,
                ..
            } => {
                assert_eq!((factor, original_context), (4.0, 2048));
                assert!((attn_factor - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
            }
            other => panic!("{other:?}"),
        }
    }
}
