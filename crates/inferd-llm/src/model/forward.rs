//! One forward step over several sequences at once. The chunks' tokens are stacked into one
//! matrix, so each weight row is read once per step for every sequence (a batched decode is a
//! matrix-matrix product, not one matrix-vector product per sequence); attention then reads
//! each sequence's keys and values through its block table.
//!
//! RoPE rotates adjacent pairs, as GGUF stores llama's query and key weights (llama.cpp's
//! `NORM` rope type).

use inferd_gguf::GgufFile;

use super::kv::KvCache;
use super::weights::{Matrix, Weights};
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

super::simd::multiversion! {
/// `a · b`, with sixteen accumulators so the compiler vectorises it.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}
}

/// From this many input rows on (prefill) the blocked kernel wins; below it (batched decode)
/// its packing costs more than it saves: measured with bench/llm.py, 8 decoding streams ran at
/// 14 tokens/s through it against 45 on the dot loop.
const GEMM_ROWS: usize = 64;

/// `x · mᵀ` on matrixmultiply's kernels, the weight's rows split over `pool` in slabs.
fn gemm(pool: &rayon::ThreadPool, x: &[f32], n: usize, m: &Matrix) -> Vec<f32> {
    use ndarray::{ArrayView2, ArrayViewMut2};
    use rayon::prelude::*;
    const SLAB: usize = 256;
    let xs = ArrayView2::from_shape((n, m.cols), x).expect("x is n rows of m.cols");
    // Each task fills its own slab of output columns, stored [slab][n][width] so the slabs are
    // disjoint slices; then they are interleaved into rows.
    let mut slabs = vec![0f32; n * m.rows];
    pool.install(|| {
        slabs
            .par_chunks_mut(n * SLAB)
            .enumerate()
            .for_each(|(b, out)| {
                let first = b * SLAB;
                let width = SLAB.min(m.rows - first);
                let mut buf = Vec::new();
                let rows: &[f32] = match (&m.q8, &m.q4) {
                    (Some(q), _) => {
                        buf.resize(width * m.cols, 0.0);
                        super::q8::dequantize_rows(q, first..first + width, m.cols, &mut buf);
                        &buf
                    }
                    (None, Some(q)) if m.data.is_empty() => {
                        buf.resize(width * m.cols, 0.0);
                        q.dequantize_rows(first..first + width, m.cols, &mut buf);
                        &buf
                    }
                    _ => &m.data[first * m.cols..(first + width) * m.cols],
                };
                let w = ArrayView2::from_shape((width, m.cols), rows).expect("whole rows");
                let mut o = ArrayViewMut2::from_shape((n, width), out).expect("n x width");
                ndarray::linalg::general_mat_mul(1.0, &xs, &w.t(), 0.0, &mut o);
            });
    });
    let mut out = vec![0f32; n * m.rows];
    for (b, slab) in slabs.chunks(n * SLAB).enumerate() {
        let width = slab.len() / n;
        for t in 0..n {
            out[t * m.rows + b * SLAB..t * m.rows + b * SLAB + width]
                .copy_from_slice(&slab[t * width..(t + 1) * width]);
        }
    }
    out
}

/// Weight rows per parallel task: small enough to share two cores evenly, large enough that
/// scheduling costs nothing next to the arithmetic.
const ROWS_PER_TASK: usize = 64;

/// `x` (`n` rows of `m.cols`) times `m` transposed: `n` rows of `m.rows`. Each weight row is
/// read once for all `n` input rows; rows are split over `pool`'s threads.
fn matmul(pool: &rayon::ThreadPool, x: &[f32], n: usize, m: &Matrix) -> Vec<f32> {
    use rayon::prelude::*;
    if n >= GEMM_ROWS {
        return gemm(pool, x, n, m);
    }
    // Computed row-major by weight row (each task writes its own contiguous slice), then
    // transposed to one row per token.
    let mut by_row = vec![0f32; n * m.rows];
    if let Some(q4) = m.q4.as_ref().filter(|_| m.data.is_empty()) {
        q4_rows(pool, x, n, m, q4, &mut by_row);
        return transposed(by_row, n, m.rows);
    }
    match &m.q8 {
        None => pool.install(|| {
            by_row
                .par_chunks_mut(n * ROWS_PER_TASK)
                .zip(m.data.par_chunks(m.cols * ROWS_PER_TASK))
                .for_each(|(out, rows)| {
                    for (r, row) in rows.chunks_exact(m.cols).enumerate() {
                        for t in 0..n {
                            out[r * n + t] = dot(row, &x[t * m.cols..(t + 1) * m.cols]);
                        }
                    }
                });
        }),
        Some(q) => {
            let per_row = m.cols / super::q8::BLOCK;
            // With int8 activations, each input row is quantized once for every weight row.
            let xq = m.int8_act.then(|| super::q8dot::QRows::quantize(x));
            let xq = xq.as_ref();
            pool.install(|| {
                by_row
                    .par_chunks_mut(n * ROWS_PER_TASK)
                    .enumerate()
                    .for_each(|(b, out)| {
                        let first = b * ROWS_PER_TASK;
                        for (k, o) in out.chunks_exact_mut(n).enumerate() {
                            let r = first + k;
                            let (wq, wd) = (
                                &q.q[r * m.cols..(r + 1) * m.cols],
                                &q.d[r * per_row..(r + 1) * per_row],
                            );
                            match xq {
                                Some(xq) => {
                                    for (t, o) in o.iter_mut().enumerate() {
                                        *o = super::q8dot::dot(
                                            wq,
                                            wd,
                                            &xq.q[t * m.cols..(t + 1) * m.cols],
                                            &xq.d[t * per_row..(t + 1) * per_row],
                                        );
                                    }
                                }
                                None if n == 1 => o[0] = super::q8::dot_f32(wq, wd, x),
                                None => super::q8::dot_rows(wq, wd, x, n, m.cols, o),
                            }
                        }
                    });
            });
        }
    }
    transposed(by_row, n, m.rows)
}

/// [`matmul`]'s products for a matrix held in the file's 4-bit blocks, into `by_row` (`n`
/// results per weight row).
fn q4_rows(
    pool: &rayon::ThreadPool,
    x: &[f32],
    n: usize,
    m: &Matrix,
    q4: &super::q4::Q4,
    by_row: &mut [f32],
) {
    use rayon::prelude::*;
    let per_row = m.cols / super::q8::BLOCK;
    let xq = m.int8_act.then(|| super::q8dot::QRows::quantize(x));
    let xq = xq.as_ref();
    // One row (one-stream decode) is compute-bound on widening weights to f32: integer
    // products on two-level activations instead. From two rows on, widening each block once for
    // all rows is cheaper (bench/llm.py: 8 streams ran at 104 tokens/s on two levels, 170
    // widened).
    let fine = (!m.int8_act && n == 1).then(|| super::q4fine::FineRows::quantize(x));
    let fine = fine.as_ref();
    pool.install(|| {
        by_row
            .par_chunks_mut(n * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(b, out)| {
                let first = b * ROWS_PER_TASK;
                for (k, o) in out.chunks_exact_mut(n).enumerate() {
                    let (qs, d, mm) = q4.row(first + k, per_row);
                    if let Some(f) = fine {
                        for (t, o) in o.iter_mut().enumerate() {
                            *o = super::q4fine::dot(qs, d, mm, f.row(t, per_row));
                        }
                        continue;
                    }
                    let Some(xq) = xq else {
                        super::q4::dot_rows_f32(qs, d, mm, x, n, m.cols, o);
                        continue;
                    };
                    for (t, o) in o.iter_mut().enumerate() {
                        let a = t * per_row..(t + 1) * per_row;
                        *o = super::q4::dot(
                            qs,
                            d,
                            mm,
                            &xq.q[t * m.cols..(t + 1) * m.cols],
                            &xq.d[a.clone()],
                            &xq.s[a],
                        );
                    }
                }
            });
    });
}

/// Results computed one weight row at a time (`n` per row) as one row per token.
fn transposed(by_row: Vec<f32>, n: usize, rows: usize) -> Vec<f32> {
    if n == 1 {
        return by_row;
    }
    let mut out = vec![0f32; n * rows];
    for r in 0..rows {
        for t in 0..n {
            out[t * rows + r] = by_row[r * n + t];
        }
    }
    out
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
        let w = Weights::load(f, &cfg, precision.keeps_4bit())?.at(precision);
        Ok(Llama::new(cfg, w))
    }

    /// A model from its parts.
    pub fn new(cfg: LlamaConfig, w: Weights) -> Llama {
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
                x.extend_from_slice(&self.w.embed.data[t * d..(t + 1) * d]);
            }
        }
        for (l, layer) in self.w.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, c.eps);
            let mut q = matmul(&self.pool, &h, n, &layer.wq);
            let mut k = matmul(&self.pool, &h, n, &layer.wk);
            let v = matmul(&self.pool, &h, n, &layer.wv);
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
            // Each row's attention is its own task (rows of a prefill, sequences of a batch).
            let mut attn = vec![0f32; n * d];
            let kv_ref = &*kv;
            let q_ref = &q;
            let rows_ref = &rows;
            self.pool.install(|| {
                use rayon::prelude::*;
                attn.par_chunks_mut(d).enumerate().for_each(|(r, out_row)| {
                    let (ci, pos) = rows_ref[r];
                    let table = chunks[ci].table;
                    let mut scores = Vec::with_capacity(pos + 1);
                    for head in 0..c.n_heads {
                        let kh = head / group;
                        let qh = &q_ref[r * d + head * hd..r * d + (head + 1) * hd];
                        scores.clear();
                        let span = kh * hd..(kh + 1) * hd;
                        scores.extend(
                            (0..=pos)
                                .map(|j| kv_ref.key_dot(l, table, j, span.clone(), qh) * scale),
                        );
                        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0.0;
                        for s in scores.iter_mut() {
                            *s = (*s - max).exp();
                            sum += *s;
                        }
                        let out = &mut out_row[head * hd..(head + 1) * hd];
                        for (j, s) in scores.iter().enumerate() {
                            kv_ref.add_value(l, table, j, span.clone(), s / sum, out);
                        }
                    }
                });
            });
            let o = matmul(&self.pool, &attn, n, &layer.wo);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let h = rms_norm(&x, &layer.ffn_norm, c.eps);
            let g = matmul(&self.pool, &h, n, &layer.w_gate);
            let u = matmul(&self.pool, &h, n, &layer.w_up);
            let a: Vec<f32> = g.iter().zip(&u).map(|(g, u)| silu(*g) * u).collect();
            let down = matmul(&self.pool, &a, n, &layer.w_down);
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
        // Logits only where asked: the last row of each such chunk, or all its rows.
        let mut out = Vec::with_capacity(chunks.len());
        let mut end = 0;
        let head = self.w.output.as_ref().unwrap_or(&self.w.embed);
        for ch in chunks {
            end += ch.tokens.len();
            if ch.all_logits && !ch.tokens.is_empty() {
                let len = ch.tokens.len();
                let rows = rms_norm(&x[(end - len) * d..end * d], &self.w.norm, c.eps);
                out.push(Some(matmul(&self.pool, &rows, len, head)));
                continue;
            }
            if !ch.logits || ch.tokens.is_empty() {
                out.push(None);
                continue;
            }
            let last = rms_norm(&x[(end - 1) * d..end * d], &self.w.norm, c.eps);
            out.push(Some(matmul(&self.pool, &last, 1, head)));
        }
        out
    }
}
