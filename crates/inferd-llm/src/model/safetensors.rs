//! A Hugging Face llama folder's weights: one `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists, memory-mapped and read once at load (F32, F16 or
//! BF16, widened to f32 and then held at the asked [`Precision`] layer by layer, so the whole
//! model never sits in f32 at once).
//!
//! Transformers rotates the two halves of each head (`rotate_half`); this engine rotates
//! adjacent pairs, as GGUF files store them. The query and key rows are reordered at load,
//! head by head, the way llama.cpp's converter does, so both give the same attention.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::weights::{Layer, Matrix, Precision, Weights};
use super::{LlamaConfig, ModelError};

/// The index of a sharded checkpoint.
pub const INDEX: &str = "model.safetensors.index.json";
/// The single file of an unsharded one.
pub const SINGLE: &str = "model.safetensors";

/// The weight files of the folder `dir`, in the order the index names them.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join(INDEX);
    if !index.exists() {
        return Ok(vec![dir.join(SINGLE)]);
    }
    let bad = |m: String| ModelError::Unsupported(format!("{}: {m}", index.display()));
    let text = std::fs::read_to_string(&index).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| bad("field 'weight_map' is missing".into()))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for f in map.values() {
        let name = f
            .as_str()
            .filter(|n| !n.contains('/') && !n.contains('\\') && !n.starts_with('.'))
            .ok_or_else(|| {
                bad(format!(
                    "field 'weight_map': {f} is not a file of the folder"
                ))
            })?;
        let p = dir.join(name);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    Ok(files)
}

/// The mapped files.
struct Shards {
    maps: Vec<(PathBuf, memmap2::Mmap)>,
}

impl Shards {
    fn open(files: Vec<PathBuf>) -> Result<Shards, ModelError> {
        let maps = files
            .into_iter()
            .map(|p| {
                let m = File::open(&p)
                    .and_then(|f| super::map_file(&f))
                    .map_err(|e| {
                        ModelError::Unsupported(format!("{}: cannot read: {e}", p.display()))
                    })?;
                Ok((p, m))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Shards { maps })
    }

    /// Every tensor by name, its header checked by the `safetensors` crate (bounds, overlaps,
    /// dtype sizes).
    fn tensors(&self) -> Result<HashMap<String, safetensors::tensor::TensorView<'_>>, ModelError> {
        let mut all = HashMap::new();
        for (p, m) in &self.maps {
            let st = SafeTensors::deserialize(m).map_err(|e| {
                ModelError::Unsupported(format!(
                    "{}: not a valid SafeTensors file: {e}",
                    p.display()
                ))
            })?;
            for (name, view) in st.tensors() {
                all.insert(name, view);
            }
        }
        Ok(all)
    }
}

type Views<'a> = HashMap<String, safetensors::tensor::TensorView<'a>>;

/// The values of `name`, checked to be `shape`, as f32.
fn values(t: &Views<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
    let bad = |m: String| ModelError::Unsupported(format!("tensor '{name}' {m}"));
    let v = t.get(name).ok_or_else(|| bad("is missing".into()))?;
    if v.shape() != shape {
        return Err(bad(format!(
            "has shape {:?}, expected {shape:?}",
            v.shape()
        )));
    }
    let b = v.data();
    Ok(match v.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(bad(format!(
                "is {other:?}; F32, F16 and BF16 weights are read (quantized checkpoints are not)"
            )));
        }
    })
}

fn matrix(t: &Views<'_>, name: &str, rows: usize, cols: usize) -> Result<Matrix, ModelError> {
    Ok(Matrix {
        rows,
        cols,
        data: values(t, name, &[rows, cols])?,
        ..Matrix::default()
    })
}

/// Rows of `heads` heads of `hd` values each, from transformers' order (each head's first
/// half of rotated values, then its second half) to adjacent pairs.
fn interleave_heads(m: &mut Matrix, heads: usize, hd: usize) {
    let cols = m.cols;
    let old = std::mem::take(&mut m.data);
    let mut new = vec![0f32; old.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let from = (h * hd + j * (hd / 2) + i) * cols;
                let to = (h * hd + 2 * i + j) * cols;
                new[to..to + cols].copy_from_slice(&old[from..from + cols]);
            }
        }
    }
    m.data = new;
}

/// Reads the weights of the folder `dir` for `cfg`, each layer held at `p` as soon as it is
/// read; `divisors` are Llama 3's RoPE frequency divisors, when its config has them; `tied`,
/// whether the config ties the output projection to the embeddings (`tie_word_embeddings`;
/// otherwise `lm_head.weight` must be there, as transformers would require).
pub fn load(
    dir: &Path,
    cfg: &LlamaConfig,
    p: Precision,
    divisors: Option<Vec<f32>>,
    tied: bool,
) -> Result<Weights, ModelError> {
    let shards = Shards::open(weight_files(dir)?)?;
    let t = shards.tensors()?;
    if let Some(b) = t.keys().find(|k| k.ends_with(".bias")) {
        return Err(ModelError::Unsupported(format!(
            "tensor '{b}': projections with biases are not supported"
        )));
    }
    let (d, kv, ff, hd) = (cfg.d_model, cfg.kv_dim(), cfg.d_ff, cfg.head_dim());
    use rayon::prelude::*;
    // Layers are read side by side (load time, rayon's shared pool).
    let layers = (0..cfg.n_layers)
        .into_par_iter()
        .map(|i| {
            let n = |s: &str| format!("model.layers.{i}.{s}.weight");
            let mut wq = matrix(&t, &n("self_attn.q_proj"), d, d)?;
            let mut wk = matrix(&t, &n("self_attn.k_proj"), kv, d)?;
            interleave_heads(&mut wq, cfg.n_heads, hd);
            interleave_heads(&mut wk, cfg.n_kv_heads, hd);
            let mut l = Layer {
                attn_norm: values(&t, &n("input_layernorm"), &[d])?,
                wq,
                wk,
                wv: matrix(&t, &n("self_attn.v_proj"), kv, d)?,
                wo: matrix(&t, &n("self_attn.o_proj"), d, d)?,
                ffn_norm: values(&t, &n("post_attention_layernorm"), &[d])?,
                w_gate: matrix(&t, &n("mlp.gate_proj"), ff, d)?,
                w_up: matrix(&t, &n("mlp.up_proj"), ff, d)?,
                w_down: matrix(&t, &n("mlp.down_proj"), d, ff)?,
            };
            l.hold_at(p);
            Ok(l)
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    let w = Weights {
        embed: {
            let m = matrix(&t, "model.embed_tokens.weight", cfg.vocab, d)?;
            super::embed::Embeddings::from_f32(m.rows, m.cols, m.data)
        },
        layers,
        norm: values(&t, "model.norm.weight", &[d])?,
        // Absent when the embeddings are tied (save_pretrained leaves the copy out).
        output: match (t.contains_key("lm_head.weight"), tied) {
            (true, _) => Some(matrix(&t, "lm_head.weight", cfg.vocab, d)?),
            (false, true) => None,
            (false, false) => {
                return Err(ModelError::Unsupported(
                    "tensor 'lm_head.weight' is missing and config.json does not set \
                     tie_word_embeddings"
                        .into(),
                ));
            }
        },
        rope_freqs: divisors,
    };
    Ok(w.at(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_go_from_halves_to_adjacent_pairs() {
        // Two heads of four values, one column: head rows [a0 a1 b0 b1] -> [a0 b0 a1 b1].
        let mut m = Matrix {
            rows: 8,
            cols: 1,
            data: vec![0., 1., 10., 11., 20., 21., 30., 31.],
            ..Matrix::default()
        };
        interleave_heads(&mut m, 2, 4);
        assert_eq!(m.data, vec![0., 10., 1., 11., 20., 30., 21., 31.]);
    }

    #[test]
    fn an_index_naming_a_file_outside_the_folder_is_refused() {
        let dir = std::env::temp_dir().join(format!("inferd-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(INDEX),
            r#"{"weight_map": {"a": "model-1.safetensors", "b": "../x.safetensors"}}"#,
        )
        .unwrap();
        let e = weight_files(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).ok();
        assert!(e.contains("../x.safetensors"), "{e}");
    }
}
