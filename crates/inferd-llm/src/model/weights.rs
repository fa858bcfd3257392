//! The tensors of a llama-family GGUF, dequantized to f32 at load (row-major, one row per
//! output). By default a projection the file stores in 4-bit blocks (Q4_0, Q4_1) keeps them
//! ([`super::q4`]: 0.625 bytes per weight, the file's exact values) and every other one is
//! requantized to 8-bit blocks ([`super::q8`]), which decode reads 3.5 times faster than f32;
//! `f32` keeps them all exact (the reference tests compare in f32).

use inferd_gguf::GgufFile;

use super::{LlamaConfig, ModelError};

/// A matrix of `rows` x `cols`, row-major.
#[derive(Debug, Clone, Default)]
pub struct Matrix {
    /// Output size.
    pub rows: usize,
    /// Input size.
    pub cols: usize,
    /// The values (empty once quantized).
    pub data: Vec<f32>,
    /// The values in 8-bit blocks, when quantized.
    pub q8: Option<super::q8::Q8>,
    /// The file's own 4-bit blocks (Q4_0, Q4_1), when it stores the matrix so.
    pub q4: Option<super::q4::Q4>,
    /// Decode multiplies the 8-bit blocks with activations quantized to 8 bits too (integer
    /// dot products, [`super::q8dot`]); else with f32 activations.
    pub int8_act: bool,
    /// The 4-bit or 8-bit blocks repacked for batched decode, where the CPU has the kernel.
    pub x16: Option<super::x16::X16>,
}

impl Matrix {
    /// Adds the copy in groups of sixteen rows that batched decode multiplies
    /// ([`super::x16`]), where the CPU has its kernel and the activations stay f32 (else none).
    pub fn repack(&mut self) {
        self.x16 = None;
        if self.int8_act || !self.data.is_empty() || !super::x16::available() {
            return;
        }
        self.x16 = match (&self.q4, &self.q8) {
            (Some(q), _) => super::x16::X16::from_q4(q, self.rows, self.cols),
            (None, Some(q)) => super::x16::X16::from_q8(q, self.rows, self.cols),
            _ => None,
        };
    }

    /// This matrix in 8-bit blocks (unchanged when its rows are not whole blocks), or in the
    /// file's 4-bit blocks when it has them and `keep_4bit`.
    pub fn quantized(self, keep_4bit: bool) -> Matrix {
        if !self.cols.is_multiple_of(super::q8::BLOCK) || self.q8.is_some() {
            return self;
        }
        if keep_4bit && self.q4.is_some() {
            return Matrix {
                data: Vec::new(),
                ..self
            };
        }
        Matrix {
            q8: Some(super::q8::quantize(&self.data)),
            q4: None,
            data: Vec::new(),
            ..self
        }
    }
}

/// How weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32, exactly the file's values.
    F32,
    /// 8-bit blocks of 32 with an f32 scale (decode reads 1.125 bytes per weight), multiplied
    /// with f32 activations; 4-bit tensors are requantized too.
    Q8,
    /// 8-bit blocks, and decode quantizes activations to 8-bit blocks too for integer dot
    /// products (faster; logits and log-probabilities move further from the exact model's).
    Q8Int8,
    /// The file's 4-bit blocks where it has them (0.625 bytes per weight, exact), 8-bit
    /// blocks elsewhere, f32 activations.
    #[default]
    Q4,
    /// As [`Precision::Q4`], with activations in 8-bit blocks.
    Q4Int8,
}

impl Precision {
    /// Whether decode quantizes activations to 8 bits.
    pub fn int8_activations(self) -> bool {
        matches!(self, Precision::Q8Int8 | Precision::Q4Int8)
    }

    /// Whether the file's 4-bit blocks are kept.
    pub fn keeps_4bit(self) -> bool {
        matches!(self, Precision::Q4 | Precision::Q4Int8)
    }
}

/// One transformer block's weights.
#[derive(Debug, Clone)]
pub struct Layer {
    /// RMSNorm before attention.
    pub attn_norm: Vec<f32>,
    /// Query projection.
    pub wq: Matrix,
    /// Key projection.
    pub wk: Matrix,
    /// Value projection.
    pub wv: Matrix,
    /// Attention output projection.
    pub wo: Matrix,
    /// RMSNorm before the feed-forward.
    pub ffn_norm: Vec<f32>,
    /// SwiGLU gate.
    pub w_gate: Matrix,
    /// SwiGLU up.
    pub w_up: Matrix,
    /// SwiGLU down.
    pub w_down: Matrix,
}

impl Layer {
    /// The projections held at `p` (again at the same `p`, nothing changes).
    pub fn hold_at(&mut self, p: Precision) {
        let (keep, int8) = (p.keeps_4bit(), p.int8_activations());
        for m in [
            &mut self.wq,
            &mut self.wk,
            &mut self.wv,
            &mut self.wo,
            &mut self.w_gate,
            &mut self.w_up,
            &mut self.w_down,
        ] {
            if p == Precision::F32 {
                m.q4 = None;
                continue;
            }
            *m = std::mem::take(m).quantized(keep);
            m.int8_act = int8 && (m.q8.is_some() || m.q4.is_some());
            m.repack();
        }
        // The down projection's input (the SwiGLU product) spans the widest range: with it
        // quantized too, greedy SmolLM2 output parted from the exact model's within 5 tokens
        // on one reference prompt; with f32 activations here, on none (test_llm_reference.py).
        self.w_down.int8_act = false;
    }
}

/// All weights.
#[derive(Debug, Clone)]
pub struct Weights {
    /// Token embeddings, `vocab` x `d_model`.
    pub embed: Matrix,
    /// The blocks.
    pub layers: Vec<Layer>,
    /// Final RMSNorm.
    pub norm: Vec<f32>,
    /// The output projection (the embeddings when tied).
    pub output: Option<Matrix>,
    /// Llama 3.1's RoPE frequency divisors (`rope_freqs.weight`), one per rotated pair.
    pub rope_freqs: Option<Vec<f32>>,
}

impl Weights {
    /// The weights held at `p`: every projection in 4-bit or 8-bit blocks unless `p` is
    /// [`Precision::F32`] (the embeddings stay f32 for lookups; a tied output projection gets
    /// its own quantized copy).
    pub fn at(mut self, p: Precision) -> Weights {
        // Lookups read f32 rows.
        self.embed.q4 = None;
        use rayon::prelude::*;
        // Load-time work, on rayon's shared pool: the layers quantize side by side.
        self.layers.par_iter_mut().for_each(|l| l.hold_at(p));
        if p == Precision::F32 {
            if let Some(o) = &mut self.output {
                o.q4 = None;
            }
            return self;
        }
        let keep = p.keeps_4bit();
        let int8 = p.int8_activations();
        self.output = Some(
            self.output
                .take()
                .unwrap_or_else(|| self.embed.clone())
                .quantized(keep),
        );
        if let Some(o) = &mut self.output {
            o.int8_act = int8 && (o.q8.is_some() || o.q4.is_some());
            o.repack();
        }
        self
    }
}

/// The matrix `name`; with `keep_4bit`, a 4-bit one only in its blocks (no f32 copy to make
/// and drop: load time).
fn matrix(
    f: &GgufFile,
    name: &str,
    rows: usize,
    cols: usize,
    keep_4bit: bool,
) -> Result<Matrix, ModelError> {
    let t = f
        .tensor(name)
        .ok_or_else(|| ModelError::Unsupported(format!("tensor '{name}' is missing")))?;
    // GGUF lists dimensions innermost first: [cols, rows].
    if t.dims != [cols as u64, rows as u64] {
        return Err(ModelError::Unsupported(format!(
            "tensor '{name}' has dims {:?}, expected [{cols}, {rows}]",
            t.dims
        )));
    }
    // Q4_0 and Q4_1 rows of whole blocks are kept as stored too.
    let q4 = match t.ggml_type.0 {
        2 | 3 if cols.is_multiple_of(super::q8::BLOCK) => {
            super::q4::Q4::from_gguf(t.ggml_type.0, &f.read_raw(t)?)
        }
        _ => None,
    };
    let data = match &q4 {
        Some(_) if keep_4bit => Vec::new(),
        _ => f.dequantize(name)?,
    };
    Ok(Matrix {
        rows,
        cols,
        data,
        q8: None,
        q4,
        int8_act: false,
        x16: None,
    })
}

fn vector(f: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let v = f.dequantize(name)?;
    if v.len() != len {
        return Err(ModelError::Unsupported(format!(
            "tensor '{name}' has {} values, expected {len}",
            v.len()
        )));
    }
    Ok(v)
}

impl Weights {
    /// Reads and dequantizes every tensor `cfg` needs; with `keep_4bit`, projections stored in
    /// 4-bit blocks stay only in them (for a [`Precision`] that keeps them).
    pub fn load(f: &GgufFile, cfg: &LlamaConfig, keep_4bit: bool) -> Result<Weights, ModelError> {
        let (d, kv, ff) = (cfg.d_model, cfg.kv_dim(), cfg.d_ff);
        use rayon::prelude::*;
        // Layers are read and dequantized side by side (load time, rayon's shared pool).
        let layers = (0..cfg.n_layers)
            .into_par_iter()
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}.weight");
                Ok(Layer {
                    attn_norm: vector(f, &n("attn_norm"), d)?,
                    wq: matrix(f, &n("attn_q"), d, d, keep_4bit)?,
                    wk: matrix(f, &n("attn_k"), kv, d, keep_4bit)?,
                    wv: matrix(f, &n("attn_v"), kv, d, keep_4bit)?,
                    wo: matrix(f, &n("attn_output"), d, d, keep_4bit)?,
                    ffn_norm: vector(f, &n("ffn_norm"), d)?,
                    w_gate: matrix(f, &n("ffn_gate"), ff, d, keep_4bit)?,
                    w_up: matrix(f, &n("ffn_up"), ff, d, keep_4bit)?,
                    w_down: matrix(f, &n("ffn_down"), d, ff, keep_4bit)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Weights {
            // Looked up as f32 rows.
            embed: matrix(f, "token_embd.weight", cfg.vocab, d, false)?,
            layers,
            norm: vector(f, "output_norm.weight", d)?,
            output: match f.tensor("output.weight") {
                Some(_) => Some(matrix(f, "output.weight", cfg.vocab, d, keep_4bit)?),
                None => None,
            },
            rope_freqs: match f.tensor("rope_freqs.weight") {
                Some(_) => Some(vector(f, "rope_freqs.weight", cfg.rope_dims / 2)?),
                None => None,
            },
        })
    }
}
