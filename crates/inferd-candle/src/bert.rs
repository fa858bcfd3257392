//! A BERT encoder (Hugging Face `BertModel` weights) on candle tensors, with sentence pooling.
//!
//! Written for inference on padded batches: the attention mask is turned into an additive bias
//! so padded positions get no attention weight, and pooling divides by the number of real tokens
//! of each row, so a sentence embeds the same alone or in a batch with longer ones.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear};
use serde::Deserialize;

use crate::weights::Reader;

/// The fields of a Hugging Face `config.json` a BERT encoder needs.
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    /// Architecture family; "bert" is supported.
    #[serde(default)]
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden (embedding) width.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Activation of the feed-forward layer.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Position table length.
    pub max_position_embeddings: usize,
    /// Token type table length.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Position embedding kind; "absolute" is supported.
    #[serde(default = "default_position")]
    pub position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Checks the config describes something this encoder runs.
    pub fn check(&self) -> Result<(), String> {
        if self.model_type != "bert" {
            return Err(format!(
                "model_type '{}' is not supported (supported: bert)",
                self.model_type
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type '{}' is not supported (supported: absolute)",
                self.position_embedding_type
            ));
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_new" | "relu") {
            return Err(format!(
                "hidden_act '{}' is not supported (supported: gelu, gelu_new, relu)",
                self.hidden_act
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.vocab_size == 0 || self.max_position_embeddings == 0 || self.type_vocab_size == 0 {
            return Err(
                "vocab_size, max_position_embeddings and type_vocab_size must be > 0".into(),
            );
        }
        Ok(())
    }
}

/// How token vectors become one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over real (unmasked) tokens.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise max over real tokens.
    Max,
}

type E = candle_core::Error;

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
}

/// A loaded BERT encoder.
pub struct Bert {
    cfg: BertConfig,
    word: Embedding,
    position: Tensor,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl std::fmt::Debug for Bert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bert").field("cfg", &self.cfg).finish()
    }
}

/// Finds the prefix under which the encoder's tensors are stored: "" for `BertModel`
/// checkpoints, "bert." for task heads (`BertForMaskedLM`, ...).
pub fn weight_prefix<'a>(mut names: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    let mut prefixed = false;
    let found = names.any(|n| {
        if n == "bert.embeddings.word_embeddings.weight" {
            prefixed = true;
            true
        } else {
            n == "embeddings.word_embeddings.weight"
        }
    });
    found.then_some(if prefixed { "bert." } else { "" })
}

impl Bert {
    /// Builds the encoder from a weights reader; `prefix` from [`weight_prefix`].
    pub fn load(cfg: BertConfig, w: &Reader<'_>, prefix: &str) -> Result<Bert, String> {
        cfg.check()?;
        let h = cfg.hidden_size;
        let get = |name: &str, shape: &[usize]| w.get(&format!("{prefix}{name}"), shape);
        // Older checkpoints name LayerNorm parameters gamma/beta.
        let norm = |base: &str| -> Result<LayerNorm, String> {
            let weight = get(&format!("{base}.weight"), &[h])
                .or_else(|_| get(&format!("{base}.gamma"), &[h]))?;
            let bias = get(&format!("{base}.bias"), &[h])
                .or_else(|_| get(&format!("{base}.beta"), &[h]))?;
            Ok(LayerNorm::new(weight, bias, cfg.layer_norm_eps))
        };
        let linear = |base: &str, out: usize, inp: usize| -> Result<Linear, String> {
            Ok(Linear::new(
                get(&format!("{base}.weight"), &[out, inp])?,
                Some(get(&format!("{base}.bias"), &[out])?),
            ))
        };
        let word = Embedding::new(
            get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?,
            h,
        );
        let position = get(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
        )?;
        let token_type = get(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
        )?;
        let emb_norm = norm("embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                q: linear(&format!("{p}.attention.self.query"), h, h)?,
                k: linear(&format!("{p}.attention.self.key"), h, h)?,
                v: linear(&format!("{p}.attention.self.value"), h, h)?,
                attn_out: linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                inter: linear(&format!("{p}.intermediate.dense"), cfg.intermediate_size, h)?,
                out: linear(&format!("{p}.output.dense"), h, cfg.intermediate_size)?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Bert {
            cfg,
            word,
            position,
            token_type,
            emb_norm,
            layers,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// Runs the encoder on a padded batch: `ids`, `type_ids` and `mask` are `[batch, len]`
    /// row-major, `mask` 1 for real tokens and 0 for padding. Returns `[batch, len, hidden]`.
    pub fn forward(
        &self,
        ids: &[u32],
        type_ids: &[u32],
        mask: &[f32],
        batch: usize,
        len: usize,
    ) -> Result<Tensor, E> {
        let dev = Device::Cpu;
        let h = self.cfg.hidden_size;
        let heads = self.cfg.num_attention_heads;
        let dh = h / heads;
        let ids_t = Tensor::from_slice(ids, (batch, len), &dev)?;
        let types_t = Tensor::from_slice(type_ids, (batch * len,), &dev)?;
        let mut x = self.word.forward(&ids_t)?;
        let pos = self.position.narrow(0, 0, len)?;
        x = x.broadcast_add(&pos)?;
        let types = self
            .token_type
            .index_select(&types_t, 0)?
            .reshape((batch, len, h))?;
        x = self.emb_norm.forward(&(x + types)?)?;

        // Additive attention bias: 0 for real tokens, a large negative for padding.
        let bias: Vec<f32> = mask
            .iter()
            .map(|&m| if m > 0.0 { 0.0 } else { -1e30 })
            .collect();
        let bias = Tensor::from_vec(bias, (batch, 1, 1, len), &dev)?;
        let scale = 1.0 / (dh as f64).sqrt();
        for l in &self.layers {
            let split = |t: Tensor| -> Result<Tensor, E> {
                t.reshape((batch, len, heads, dh))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = split(l.q.forward(&x)?)?;
            let k = split(l.k.forward(&x)?)?;
            let v = split(l.v.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((batch, len, h))?;
            let a = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + &x)?)?;
            let i = l.inter.forward(&a)?;
            let i = match self.cfg.hidden_act.as_str() {
                "relu" => i.relu()?,
                "gelu_new" => i.gelu()?,
                _ => gelu_erf(&i)?,
            };
            x = l.out_norm.forward(&(l.out.forward(&i)? + a)?)?;
        }
        Ok(x)
    }
}

/// Exact (erf) GELU, `x/2 * (1 + erf(x/sqrt 2))`, over a whole tensor in one pass that the
/// compiler vectorizes. candle's own calls libm's scalar `erff` per element: about a fifth of
/// the encoder's time in a profile of MiniLM.
fn gelu_erf(t: &Tensor) -> Result<Tensor, E> {
    let mut v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    for x in &mut v {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
    Tensor::from_vec(v, t.shape(), t.device())
}

/// `erf`, within 6e-7 of the exact value in f32 arithmetic: Abramowitz and Stegun's formula 7.1.26
/// (`1 - (a1 t + ... + a5 t^5) e^(-x^2)`, `t = 1 / (1 + p|x|)`, error <= 1.5e-7) with [`exp_neg`].
/// Branch-free, so a loop over it vectorizes.
#[inline]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let z = x.abs();
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp_neg(-z * z);
    y.copysign(x)
}

/// `e^y` for `y <= 0` (relative error < 3e-7; 0 below -87), branch-free: `y = n ln 2 + r` with
/// `n` rounded to nearest by the 1.5 * 2^23 trick, `r` reduced with `ln 2` split in two parts
/// (Cody and Waite) so it stays exact for large `|y|`, `e^r` by a degree-6 Taylor polynomial
/// (`|r| <= ln 2 / 2`), `2^n` built in the exponent bits.
#[inline]
fn exp_neg(y: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    const LN2_HI: f32 = f32::from_bits(0x3f31_7000); // ln 2, low 12 bits cleared: n * LN2_HI exact
    const LN2_LO: f32 = 3.194_618_5e-5; // ln 2 - LN2_HI
    let y = y.max(-87.0);
    let n = (y * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (y - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
    p * scale
}

/// Pools `[batch, len, hidden]` token vectors into `[batch, hidden]` under the mask, and
/// L2-normalizes each row when asked.
pub fn pool(
    tokens: &Tensor,
    mask: &[f32],
    batch: usize,
    len: usize,
    pooling: Pooling,
    normalize: bool,
) -> Result<Tensor, E> {
    let dev = Device::Cpu;
    let pooled = match pooling {
        Pooling::Cls => tokens.narrow(1, 0, 1)?.squeeze(1)?,
        Pooling::Mean => {
            let m = Tensor::from_slice(mask, (batch, len, 1), &dev)?;
            let sum = tokens.broadcast_mul(&m)?.sum(1)?;
            let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
            sum.broadcast_div(&count)?
        }
        Pooling::Max => {
            let neg: Vec<f32> = mask
                .iter()
                .map(|&v| if v > 0.0 { 0.0 } else { -1e30 })
                .collect();
            let m = Tensor::from_vec(neg, (batch, len, 1), &dev)?;
            tokens.broadcast_add(&m)?.max(1)?
        }
    };
    if !normalize {
        return Ok(pooled);
    }
    let norm = pooled
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    pooled.broadcast_div(&norm)?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_erf_and_exp_stay_within_their_bounds() {
        let mut worst_erf = 0f64;
        let mut worst_exp = 0f64;
        for i in -80_000i32..=80_000 {
            let x = i as f32 * 1e-4; // -8 .. 8
            let want = libm::erf(f64::from(x));
            worst_erf = worst_erf.max((f64::from(erf(x)) - want).abs());
            let y = -(i.abs() as f32) * 1e-3; // 0 .. -80
            let want = f64::from(y).exp();
            worst_exp = worst_exp.max((f64::from(exp_neg(y)) - want).abs() / want);
        }
        assert!(worst_erf < 6e-7, "erf off by {worst_erf}");
        assert!(worst_exp < 3e-7, "exp off by {worst_exp} (relative)");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(-10.0), -1.0);
        assert_eq!(exp_neg(-200.0), exp_neg(-87.0));
    }

    #[test]
    fn gelu_matches_candles_exact_gelu() {
        let x: Vec<f32> = (-600..600).map(|i| i as f32 * 0.01).collect();
        let t = Tensor::from_vec(x, (2, 600), &Device::Cpu).unwrap();
        let want: Vec<f32> = t
            .gelu_erf()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got: Vec<f32> = gelu_erf(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(gelu_erf(&t).unwrap().dims(), t.dims());
        for (a, b) in want.iter().zip(&got) {
            assert!((a - b).abs() <= 2e-6, "{a} vs {b}");
        }
    }
    use crate::weights::Weights;
    use safetensors::tensor::TensorView;

    /// Writes a 2-layer BERT with deterministic pseudo-random weights, F32 or F16.
    fn tiny(dir: &std::path::Path, prefix: &str, half: bool) -> BertConfig {
        let cfg: BertConfig = serde_json::from_value(serde_json::json!({
            "model_type": "bert", "vocab_size": 20, "hidden_size": 8, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 12,
        }))
        .unwrap();
        let (h, i) = (8usize, 16usize);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.word_embeddings.weight".into(), vec![20, h]),
            ("embeddings.position_embeddings.weight".into(), vec![12, h]),
            ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
            ("embeddings.LayerNorm.weight".into(), vec![h]),
            ("embeddings.LayerNorm.bias".into(), vec![h]),
        ];
        for l in 0..2 {
            let p = format!("encoder.layer.{l}");
            for (n, s) in [
                ("attention.self.query", vec![h, h]),
                ("attention.self.key", vec![h, h]),
                ("attention.self.value", vec![h, h]),
                ("attention.output.dense", vec![h, h]),
                ("intermediate.dense", vec![i, h]),
                ("output.dense", vec![h, i]),
            ] {
                shapes.push((format!("{p}.{n}.weight"), s.clone()));
                shapes.push((format!("{p}.{n}.bias"), vec![s[0]]));
            }
            for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
                shapes.push((format!("{p}.{n}.weight"), vec![h]));
                shapes.push((format!("{p}.{n}.bias"), vec![h]));
            }
        }
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.8
        };
        let data: Vec<(String, Vec<u8>, Vec<usize>)> = shapes
            .into_iter()
            .map(|(n, s)| {
                let count: usize = s.iter().product();
                let vals: Vec<f32> = (0..count).map(|_| next()).collect();
                let bytes = if half {
                    vals.iter()
                        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                        .collect()
                } else {
                    vals.iter().flat_map(|v| v.to_le_bytes()).collect()
                };
                (format!("{prefix}{n}"), bytes, s)
            })
            .collect();
        let dtype = if half {
            safetensors::Dtype::F16
        } else {
            safetensors::Dtype::F32
        };
        let views: Vec<(String, TensorView<'_>)> = data
            .iter()
            .map(|(n, b, s)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
        cfg
    }

    fn embed(bert: &Bert, rows: &[&[u32]], pooling: Pooling) -> Vec<Vec<f32>> {
        let len = rows.iter().map(|r| r.len()).max().unwrap();
        let b = rows.len();
        let mut ids = vec![0u32; b * len];
        let mut mask = vec![0f32; b * len];
        for (r, row) in rows.iter().enumerate() {
            for (j, &id) in row.iter().enumerate() {
                ids[r * len + j] = id;
                mask[r * len + j] = 1.0;
            }
        }
        let types = vec![0u32; b * len];
        let t = bert.forward(&ids, &types, &mask, b, len).unwrap();
        pool(&t, &mask, b, len, pooling, false)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    }

    fn load(dir: &std::path::Path, cfg: BertConfig) -> Bert {
        let w = Weights::open(&dir.join("model.safetensors")).unwrap();
        let r = w.reader().unwrap();
        let prefix = weight_prefix(r.names()).unwrap();
        Bert::load(cfg, &r, prefix).unwrap()
    }

    #[test]
    fn padding_in_a_batch_does_not_change_a_rows_embedding() {
        let dir = tempfile::tempdir().unwrap();
        let bert = load(dir.path(), tiny(dir.path(), "", false));
        let short: &[u32] = &[1, 5, 7, 2];
        let long: &[u32] = &[1, 9, 3, 4, 11, 6, 8, 2];
        for pooling in [Pooling::Mean, Pooling::Cls, Pooling::Max] {
            let alone = embed(&bert, &[short], pooling);
            let batched = embed(&bert, &[long, short], pooling);
            for (a, b) in alone[0].iter().zip(&batched[1]) {
                assert!((a - b).abs() < 1e-5, "{pooling:?}: {a} vs {b}");
            }
            // Different inputs give different vectors (the model is not degenerate).
            assert!(
                alone[0]
                    .iter()
                    .zip(&batched[0])
                    .any(|(a, b)| (a - b).abs() > 1e-3)
            );
        }
    }

    #[test]
    fn mean_pooling_averages_real_tokens_only() {
        let dir = tempfile::tempdir().unwrap();
        let bert = load(dir.path(), tiny(dir.path(), "", false));
        let ids = [1u32, 5, 7, 0, 0];
        let mask = [1f32, 1., 1., 0., 0.];
        let tokens = bert.forward(&ids, &[0; 5], &mask, 1, 5).unwrap();
        let per_token = tokens.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let pooled = pool(&tokens, &mask, 1, 5, Pooling::Mean, false)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for d in 0..8 {
            let want = (per_token[0][d] + per_token[1][d] + per_token[2][d]) / 3.0;
            assert!((pooled[0][d] - want).abs() < 1e-5);
        }
        let normed = pool(&tokens, &mask, 1, 5, Pooling::Mean, true)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let norm: f32 = normed[0].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn prefixed_and_half_precision_checkpoints_load_the_same_model() {
        // The same pseudo-random weights, written three ways.
        let plain = tempfile::tempdir().unwrap();
        let prefixed = tempfile::tempdir().unwrap();
        let half = tempfile::tempdir().unwrap();
        let want = embed(
            &load(plain.path(), tiny(plain.path(), "", false)),
            &[&[1, 2, 3]],
            Pooling::Mean,
        );
        let cfg = tiny(prefixed.path(), "bert.", false);
        let w = Weights::open(&prefixed.path().join("model.safetensors")).unwrap();
        let r = w.reader().unwrap();
        assert_eq!(weight_prefix(r.names()), Some("bert."));
        let got = embed(
            &Bert::load(cfg, &r, "bert.").unwrap(),
            &[&[1, 2, 3]],
            Pooling::Mean,
        );
        assert_eq!(got, want, "a 'bert.' prefix changes nothing");
        let got = embed(
            &load(half.path(), tiny(half.path(), "", true)),
            &[&[1, 2, 3]],
            Pooling::Mean,
        );
        for (a, b) in got[0].iter().zip(&want[0]) {
            assert!((a - b).abs() < 2e-2, "F16 weights: {a} vs {b}");
        }
        assert_ne!(got, want, "F16 weights are rounded, not read as F32");
    }

    #[test]
    fn wrong_shapes_and_unsupported_configs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = tiny(dir.path(), "", false);
        cfg.hidden_size = 16;
        cfg.num_attention_heads = 4;
        let w = Weights::open(&dir.path().join("model.safetensors")).unwrap();
        let err = Bert::load(cfg.clone(), &w.reader().unwrap(), "").unwrap_err();
        assert!(
            err.contains("embeddings.word_embeddings.weight") && err.contains("[20, 8]"),
            "{err}"
        );
        cfg.model_type = "gpt2".into();
        assert!(cfg.check().unwrap_err().contains("model_type 'gpt2'"));
        let bad = dir.path().join("bad.safetensors");
        std::fs::write(&bad, b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk").unwrap();
        let mapped = Weights::open(&bad).unwrap();
        assert!(
            mapped
                .reader()
                .unwrap_err()
                .contains("not a valid SafeTensors")
        );
    }
}
