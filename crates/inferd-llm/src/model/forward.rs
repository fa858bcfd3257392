//! One forward step over several sequences at once. The chunks' tokens are stacked into one
//! matrix, so each weight row is read once per step for every sequence (a batched decode is a
//! matrix-matrix product, not one matrix-vector product per sequence); attention then reads
//! each sequence's keys and values through its block table.
//!
//! RoPE rotates adjacent pairs, as GGUF stores llama's query and key weights (llama.cpp's
//! `NORM` rope type).

use inferd_gguf::GgufFile;

use super::kv::KvCache;
use super::matmul::{matmul, matmul_group};
use super::weights::Weights;
use super::{LlamaConfig, ModelError};
use crate::blocks::BlockId;

/// One sequence's part of a step.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    /// Its block table (covering every position up to the chunk's end).
    pub table: &'a [BlockId],
    /// The position of the first token.
    pub start: usize,
    /// The tokens.
    pub tokens: &'a [u32],
    /// Whether to return the logits after the chunk's last token.
    pub logits: bool,
    /// Return the logits after every token of the chunk instead (row after row), for prompt
    /// log-probabilities.
    pub all_logits: bool,
}

/// A loaded llama-family model.
#[derive(Debug, Clone)]
pub struct Llama {
    /// Its shape.
    pub cfg: LlamaConfig,
    w: Weights,
    inv_freq: Vec<f32>,
    /// What rotated values are multiplied by (YaRN's attention scaling; else 1).
    rope_mscale: f32,
    /// The model's own threads (one per core), not a process-wide pool shared with others.
    pool: std::sync::Arc<rayon::ThreadPool>,
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let d = weight.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(d) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(weight).map(|(v, w)| v * scale * w));
    }
    out
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl Llama {
    /// Loads the model in `f`, its weights held at `precision`.
    pub fn load(f: &GgufFile, precision: super::Precision) -> Result<Llama, ModelError> {
        let cfg = LlamaConfig::from_gguf(f)?;
        let w = Weights::load(f, &cfg, precision)?.at(precision);
        Ok(Llama::new(cfg, w))
    }

    /// Loads the Hugging Face llama folder `dir` (`config.json` and SafeTensors weights), its
    /// weights held at `precision` (no 4-bit blocks there: [`super::Precision::Q4`] holds
    /// them in 8-bit blocks).
    pub fn load_hf(
        dir: &std::path::Path,
        precision: super::Precision,
    ) -> Result<Llama, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ModelError::Unsupported(format!("{}: cannot read: {e}", path.display()))
        })?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Unsupported(format!("{}: not JSON: {e}", path.display())))?;
        let (cfg, divisors) = super::hf_config::from_hf(&config)?;
        let tied = config["tie_word_embeddings"].as_bool().unwrap_or(false);
        let w = super::safetensors::load(dir, &cfg, precision, divisors, tied)?;
        Ok(Llama::new(cfg, w))
    }

    /// A model from its parts (a tied output projection not yet made by [`Weights::at`] is
    /// the embeddings in f32).
    pub fn new(cfg: LlamaConfig, mut w: Weights) -> Llama {
        if w.output.is_none() {
            w.output = Some(super::weights::Matrix {
                rows: w.embed.rows,
                cols: w.embed.cols,
                data: w.embed.to_f32(),
                ..Default::default()
            });
        }
        let (inv_freq, rope_mscale) = super::rope::frequencies(
            cfg.rope_base,
            cfg.rope_dims,
            &cfg.rope_scaling,
            w.rope_freqs.as_deref(),
        );
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("llm-compute-{i}"))
            .build()
            .map(std::sync::Arc::new)
            .unwrap_or_else(|_| {
                std::sync::Arc::new(
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .build()
                        .expect("a one-thread pool"),
                )
            });
        Llama {
            cfg,
            w,
            inv_freq,
            rope_mscale,
            pool,
        }
    }

    fn rope(&self, v: &mut [f32], pos: usize) {
        let hd = self.cfg.head_dim();
        for head in v.chunks_exact_mut(hd) {
            for (i, f) in self.inv_freq.iter().enumerate() {
                let (s, c) = (pos as f32 * f).sin_cos();
                let (s, c) = (s * self.rope_mscale, c * self.rope_mscale);
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * c - b * s;
                head[2 * i + 1] = a * s + b * c;
            }
        }
    }

    /// Runs `chunks` through the model, writing their keys and values into `kv`: for each
    /// chunk, the logits after its last token when it asked for them.
    pub fn forward(&self, kv: &mut KvCache, chunks: &[SeqChunk<'_>]) -> Vec<Option<Vec<f32>>> {
        // The whole step runs on one of the pool's threads: each of the ~200 parallel products
        // of a decode step is then forked from inside the pool (the other thread steals it
        // while still spinning) instead of being injected from outside and waking a sleeping
        // thread each time, which perf showed costing as much as the arithmetic.
        self.pool.install(|| self.step(kv, chunks))
    }

    fn step(&self, kv: &mut KvCache, chunks: &[SeqChunk<'_>]) -> Vec<Option<Vec<f32>>> {
        let c = &self.cfg;
        let (d, kvd, hd) = (c.d_model, c.kv_dim(), c.head_dim());
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        // Where each stacked row comes from: (chunk, position).
        let rows: Vec<(usize, usize)> = chunks
            .iter()
            .enumerate()
            .flat_map(|(i, ch)| (0..ch.tokens.len()).map(move |j| (i, ch.start + j)))
            .collect();
        let n = rows.len();
        let mut x = Vec::with_capacity(n * d);
        for ch in chunks {
            for &t in ch.tokens {
                let t = (t as usize).min(c.vocab - 1);
                self.w.embed.push_row(t, &mut x);
            }
        }
        for (l, layer) in self.w.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, c.eps);
            let [mut q, mut k, v] =
                matmul_group(&self.pool, &h, n, [&layer.wq, &layer.wk, &layer.wv]);
            for (r, &(ci, pos)) in rows.iter().enumerate() {
                self.rope(&mut q[r * d..(r + 1) * d], pos);
                self.rope(&mut k[r * kvd..(r + 1) * kvd], pos);
                kv.write(
                    l,
                    chunks[ci].table,
                    pos,
                    &k[r * kvd..(r + 1) * kvd],
                    &v[r * kvd..(r + 1) * kvd],
                );
            }
            // Each row's attention is split by KV head: one task per row and KV head (the
            // query heads that share it, attended together), so one stream's row keeps every
            // core busy too.
            let mut attn = vec![0f32; n * d];
            let kv_ref = &*kv;
            let q_ref = &q;
            let rows_ref = &rows;
            let span = group * hd;
            self.pool.install(|| {
                use rayon::prelude::*;
                attn.par_chunks_mut(span).enumerate().for_each(|(i, out)| {
                    let (r, kh) = (i / c.n_kv_heads, i % c.n_kv_heads);
                    let (ci, pos) = rows_ref[r];
                    let q_at = r * d + kh * span;
                    super::attention::attend(
                        kv_ref,
                        l,
                        chunks[ci].table,
                        pos + 1,
                        kh * hd..(kh + 1) * hd,
                        &q_ref[q_at..q_at + span],
                        scale,
                        &mut Vec::new(),
                        out,
                    );
                });
            });
            let o = matmul(&self.pool, &attn, n, &layer.wo);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let h = rms_norm(&x, &layer.ffn_norm, c.eps);
            let [g, u] = matmul_group(&self.pool, &h, n, [&layer.w_gate, &layer.w_up]);
            let a: Vec<f32> = g.iter().zip(&u).map(|(g, u)| silu(*g) * u).collect();
            let down = matmul(&self.pool, &a, n, &layer.w_down);
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
        // Logits only where asked: the last row of each such chunk, or all its rows. The last
        // rows of every chunk go through the output projection together, so a decode step
        // reads its weights once for all sequences instead of once per sequence (at 8
        // streams it was 19% of the step, perf on llm_generate).
        let Some(head) = self.w.output.as_ref() else {
            unreachable!("Weights::at sets the output projection");
        };
        let mut end = 0;
        let mut last_rows = Vec::new();
        let mut ends = Vec::with_capacity(chunks.len());
        for ch in chunks {
            end += ch.tokens.len();
            ends.push(end);
            if ch.logits && !ch.all_logits && !ch.tokens.is_empty() {
                last_rows.extend_from_slice(&x[(end - 1) * d..end * d]);
            }
        }
        let lasts = last_rows.len() / d;
        let last_logits = match lasts {
            0 => Vec::new(),
            _ => {
                let normed = rms_norm(&last_rows, &self.w.norm, c.eps);
                matmul(&self.pool, &normed, lasts, head)
            }
        };
        let mut next = last_logits.chunks_exact(head.rows);
        let mut out = Vec::with_capacity(chunks.len());
        for (ch, &end) in chunks.iter().zip(&ends) {
            if ch.tokens.is_empty() {
                out.push(None);
            } else if ch.all_logits {
                let len = ch.tokens.len();
                let rows = rms_norm(&x[(end - len) * d..end * d], &self.w.norm, c.eps);
                out.push(Some(matmul(&self.pool, &rows, len, head)));
            } else if ch.logits {
                out.push(next.next().map(<[f32]>::to_vec));
            } else {
                out.push(None);
            }
        }
        out
    }
}
