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
    /// Replaces the 4-bit or 8-bit blocks with the copy in groups of sixteen rows that decode
    /// multiplies ([`super::x16`]), where the CPU has its kernel and the activations stay f32
    /// (else nothing changes). Prefill dequantizes from that copy too, so the file's layout is
    /// not kept beside it: it doubled the projections' memory, and every megabyte written at
    /// start costs start time (bench/results/llm-2026-12-08-start.md).
    pub fn repack(&mut self) {
        if self.int8_act || !self.data.is_empty() || !super::x16::available() {
            return;
        }
        let x16 = match (&self.q4, &self.q8) {
            (Some(q), _) => super::x16::X16::from_q4(q, self.rows, self.cols),
            (None, Some(q)) => super::x16::X16::from_q8(q, self.rows, self.cols),
            // Nothing to repack from: already repacked, or f32.
            _ => return,
        };
        if x16.is_some() {
            self.x16 = x16;
            self.q4 = None;
            self.q8 = None;
        }
    }

    /// Whether the repacked copy is all this matrix holds.
    pub fn repacked_only(&self) -> bool {
        self.x16.is_some() && self.q4.is_none() && self.q8.is_none() && self.data.is_empty()
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
            if m.repacked_only() {
                // Held already (repacked as it was read).
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
    pub embed: super::embed::Embeddings,
    /// The blocks.
    pub layers: Vec<Layer>,
    /// Final RMSNorm.
    pub norm: Vec<f32>,
    /// The output projection; `None` only before [`Weights::at`], when the file ties it to
    /// the embeddings.
    pub output: Option<Matrix>,
    /// Llama 3.1's RoPE frequency divisors (`rope_freqs.weight`), one per rotated pair.
    pub rope_freqs: Option<Vec<f32>>,
}

impl Weights {
    /// The weights held at `p`: every projection in 4-bit or 8-bit blocks unless `p` is
    /// [`Precision::F32`]; a tied output projection gets its own copy (f32, or 8-bit blocks).
    pub fn at(mut self, p: Precision) -> Weights {
        use rayon::prelude::*;
        // Load-time work, on rayon's shared pool: the layers quantize side by side.
        self.layers.par_iter_mut().for_each(|l| l.hold_at(p));
        let (rows, cols) = (self.embed.rows, self.embed.cols);
        let tied = || Matrix {
            rows,
            cols,
            data: self.embed.to_f32(),
            ..Matrix::default()
        };
        if p == Precision::F32 {
            let mut o = self.output.take().unwrap_or_else(tied);
            o.q4 = None;
            self.output = Some(o);
            return self;
        }
        let keep = p.keeps_4bit();
        let int8 = p.int8_activations();
        let repacked = || {
            (!int8 && super::x16::available())
                .then(|| {
                    super::x16::X16::from_f32_rows(rows, cols, |s, l, out| {
                        self.embed.values(s, l, out)
                    })
                })
                .flatten()
        };
        let mut o = match self.output.take() {
            Some(o) => o.quantized(keep),
            // The embeddings in 8-bit blocks, a piece at a time (no f32 table: start time),
            // repacked as they are made where decode multiplies the repacked form.
            None => match repacked() {
                Some(x16) => Matrix {
                    rows,
                    cols,
                    x16: Some(x16),
                    ..Matrix::default()
                },
                None if cols.is_multiple_of(super::q8::BLOCK) => Matrix {
                    rows,
                    cols,
                    q8: Some(self.embed.to_q8()),
                    ..Matrix::default()
                },
                None => tied(),
            },
        };
        o.int8_act = int8 && (o.q8.is_some() || o.q4.is_some());
        o.repack();
        self.output = Some(o);
        self
    }
}

/// A GGUF file's tensors, memory-mapped for the load. Read into buffers, every tensor was
/// copied into fresh memory first and dropped: on this machine memory first touched after a
/// few idle seconds costs about 2 ms a megabyte (bench/results/llm-2026-12-08-start.md), and
/// the page cache already holds the file.
pub(crate) struct Tensors<'a> {
    f: &'a GgufFile,
    map: memmap2::Mmap,
}

impl<'a> Tensors<'a> {
    /// Maps the file `f` was read from.
    pub(crate) fn open(f: &'a GgufFile) -> Result<Tensors<'a>, ModelError> {
        let map = std::fs::File::open(f.path())
            .and_then(|file| super::map_file(&file))
            .map_err(|e| ModelError::Unsupported(format!("{}: {e}", f.path().display())))?;
        Ok(Tensors { f, map })
    }

    /// The tensor `name`, checked to be `rows` x `cols`, and its bytes.
    pub(crate) fn matrix_bytes(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<(&'a inferd_gguf::TensorInfo, &[u8]), ModelError> {
        let t = self
            .f
            .tensor(name)
            .ok_or_else(|| ModelError::Unsupported(format!("tensor '{name}' is missing")))?;
        // GGUF lists dimensions innermost first: [cols, rows].
        if t.dims != [cols as u64, rows as u64] {
            return Err(ModelError::Unsupported(format!(
                "tensor '{name}' has dims {:?}, expected [{cols}, {rows}]",
                t.dims
            )));
        }
        Ok((t, self.f.tensor_data(t, &self.map)?))
    }

    /// The tensor `name`'s elements as f32.
    pub(crate) fn dequantize(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let t = self
            .f
            .tensor(name)
            .ok_or_else(|| ModelError::Unsupported(format!("tensor '{name}' is missing")))?;
        let raw = self.f.tensor_data(t, &self.map)?;
        inferd_gguf::dequantize(t.ggml_type, raw).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "tensor '{name}': dequantizing {} is not supported",
                t.ggml_type.name()
            ))
        })
    }
}

/// The matrix `name`; with `keep_4bit`, a 4-bit one only in its blocks (no f32 copy to make
/// and drop: load time), and `repack` (f32 activations on a CPU with the repacked kernels)
/// only in the repacked copy, made straight from the file's bytes.
fn matrix(
    f: &Tensors<'_>,
    name: &str,
    rows: usize,
    cols: usize,
    keep_4bit: bool,
    repack: bool,
) -> Result<Matrix, ModelError> {
    let (t, raw) = f.matrix_bytes(name, rows, cols)?;
    if let Some(x16) = (keep_4bit && repack)
        .then(|| super::x16::X16::from_gguf_q4(t.ggml_type.0, raw, rows, cols))
        .flatten()
    {
        return Ok(Matrix {
            rows,
            cols,
            x16: Some(x16),
            ..Matrix::default()
        });
    }
    // Q4_0 and Q4_1 rows of whole blocks are kept as stored too.
    let q4 = match t.ggml_type.0 {
        2 | 3 if cols.is_multiple_of(super::q8::BLOCK) => {
            super::q4::Q4::from_gguf(t.ggml_type.0, raw)
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

fn vector(f: &Tensors<'_>, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
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
    /// Reads and dequantizes every tensor `cfg` needs for precision `p` (then held at it by
    /// [`Weights::at`]): where `p` keeps 4-bit blocks, projections stored so stay only in
    /// them, or only in the repacked copy where decode multiplies that.
    pub fn load(f: &GgufFile, cfg: &LlamaConfig, p: Precision) -> Result<Weights, ModelError> {
        let (d, kv, ff) = (cfg.d_model, cfg.kv_dim(), cfg.d_ff);
        let keep_4bit = p.keeps_4bit();
        let repack = keep_4bit && !p.int8_activations() && super::x16::available();
        let f = &Tensors::open(f)?;
        let matrix = |name: &str, rows, cols| matrix(f, name, rows, cols, keep_4bit, repack);
        use rayon::prelude::*;
        // Layers are read and dequantized side by side (load time, rayon's shared pool).
        let layers = (0..cfg.n_layers)
            .into_par_iter()
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}.weight");
                Ok(Layer {
                    attn_norm: vector(f, &n("attn_norm"), d)?,
                    wq: matrix(&n("attn_q"), d, d)?,
                    wk: matrix(&n("attn_k"), kv, d)?,
                    wv: matrix(&n("attn_v"), kv, d)?,
                    wo: matrix(&n("attn_output"), d, d)?,
                    ffn_norm: vector(f, &n("ffn_norm"), d)?,
                    w_gate: matrix(&n("ffn_gate"), ff, d)?,
                    w_up: matrix(&n("ffn_up"), ff, d)?,
                    w_down: matrix(&n("ffn_down"), d, ff)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Weights {
            embed: super::embed::Embeddings::from_gguf(f, "token_embd.weight", cfg.vocab, d)?,
            layers,
            norm: vector(f, "output_norm.weight", d)?,
            output: match f.f.tensor("output.weight") {
                Some(_) => Some(matrix("output.weight", cfg.vocab, d)?),
                None => None,
            },
            rope_freqs: match f.f.tensor("rope_freqs.weight") {
                Some(_) => Some(vector(f, "rope_freqs.weight", cfg.rope_dims / 2)?),
                None => None,
            },
        })
    }
}
