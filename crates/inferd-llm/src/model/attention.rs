//! Attention of one token over its sequence's keys and values, read through the block table.
//!
//! The query heads that share a KV head (grouped-query attention) are attended together, so
//! each key and value is read once for all of them; with f32 keys and values the blocks are
//! walked as contiguous slices with the products inlined. The 8-bit store goes through
//! [`KvCache::key_dot`] and [`KvCache::add_value`] one position at a time. perf had put a fifth
//! of one-stream decode at 300 tokens of context in the per-position calls (an offset, a
//! dispatch and a call per key and per value).

use std::ops::Range;

use super::kv::KvCache;
use super::matmul::dot16;
use crate::blocks::BlockId;

/// `out` (one row of `head.len()` per query) += the attention of each query in `q` (rows of
/// `head.len()`, the query heads that share KV head `head`, a range of the slot) over positions
/// `0..len` of the sequence with block `table`. `scores` is scratch.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    kv: &KvCache,
    layer: usize,
    table: &[BlockId],
    len: usize,
    head: Range<usize>,
    q: &[f32],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = head.len();
    if hd == 0 || len == 0 {
        return;
    }
    let g = q.len() / hd;
    scores.clear();
    scores.resize(g * len, 0.0);
    match kv.f32_planes(layer) {
        Some((keys, values)) => {
            let slices = Slices {
                table,
                len,
                block: kv.block_size(),
                kv_dim: kv.kv_dim(),
                head: head.clone(),
            };
            #[cfg(target_arch = "x86_64")]
            if avx512::attend(&slices, keys, values, q, scale, scores, out) {
                return;
            }
            f32_scores(&slices, keys, q, scale, scores);
            softmax_rows(scores, len);
            f32_values(&slices, values, scores, out);
        }
        None => {
            for (h, qh) in q.chunks_exact(hd).enumerate() {
                for (j, s) in scores[h * len..(h + 1) * len].iter_mut().enumerate() {
                    *s = kv.key_dot(layer, table, j, head.clone(), qh) * scale;
                }
            }
            softmax_rows(scores, len);
            for (h, o) in out.chunks_exact_mut(hd).enumerate() {
                for (j, &w) in scores[h * len..(h + 1) * len].iter().enumerate() {
                    kv.add_value(layer, table, j, head.clone(), w, o);
                }
            }
        }
    }
}

/// Where positions `0..len` of a sequence lie in an f32 plane.
struct Slices<'a> {
    table: &'a [BlockId],
    len: usize,
    block: usize,
    kv_dim: usize,
    head: Range<usize>,
}

impl Slices<'_> {
    /// Each position with the offset of its head's values in the plane.
    fn positions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.table
            .iter()
            .enumerate()
            .take(self.len.div_ceil(self.block))
            .flat_map(move |(b, &id)| {
                let first = b * self.block;
                let base = id as usize * self.block * self.kv_dim + self.head.start;
                (0..self.block.min(self.len - first))
                    .map(move |s| (first + s, base + s * self.kv_dim))
            })
    }
}

super::simd::multiversion! {
/// Every query's scaled product with every key.
fn f32_scores(at: &Slices<'_>, keys: &[f32], q: &[f32], scale: f32, scores: &mut [f32]) {
    let hd = at.head.len();
    for (pos, o) in at.positions() {
        let k = &keys[o..o + hd];
        for (h, qh) in q.chunks_exact(hd).enumerate() {
            scores[h * at.len + pos] = dot16(qh, k) * scale;
        }
    }
}
}

super::simd::multiversion! {
/// Every query's weighted sum of the values.
fn f32_values(at: &Slices<'_>, values: &[f32], scores: &[f32], out: &mut [f32]) {
    let hd = at.head.len();
    for (pos, o) in at.positions() {
        let v = &values[o..o + hd];
        for (h, oh) in out.chunks_exact_mut(hd).enumerate() {
            let w = scores[h * at.len + pos];
            for (x, y) in oh.iter_mut().zip(v) {
                *x += w * y;
            }
        }
    }
}
}

/// Each row of `len` scores replaced by its softmax.
fn softmax_rows(scores: &mut [f32], len: usize) {
    for row in scores.chunks_exact_mut(len) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for s in row.iter_mut() {
            *s /= sum;
        }
    }
}

super::simd::multiversion! {
/// [`softmax_rows`] with the exponentials in vector lanes ([`super::simd::exp_to_zero`]), for
/// the AVX-512 kernels. The 8-bit KV store keeps libm's: its requantized keys and values turn
/// any change in the last bit into a different rounding a layer later, and one reference
/// prompt's greedy output then parted from transformers' (test_llm_reference.py).
fn softmax_rows_lanes(scores: &mut [f32], len: usize) {
    for row in scores.chunks_exact_mut(len) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut acc = [0f32; 16];
        let mut chunks = row.chunks_exact_mut(16);
        for c in &mut chunks {
            for i in 0..16 {
                c[i] = super::simd::exp_to_zero(c[i] - max);
                acc[i] += c[i];
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for s in chunks.into_remainder() {
            *s = super::simd::exp_to_zero(*s - max);
            sum += *s;
        }
        let inv = 1.0 / sum;
        for s in row.iter_mut() {
            *s *= inv;
        }
    }
}
}

/// The f32 kernels at AVX-512 for heads of 64 or 128 values: each score one vector product
/// reduced in a tree (`dot16`'s sixteen sums were added one after another: perf put the
/// scores at 9% of an eight-stream step), and each head's output kept in registers across the
/// positions (it was loaded and stored for every position).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Slices;

    /// Runs the attention if this CPU and head size suit these kernels; else `false`.
    pub(super) fn attend(
        at: &Slices<'_>,
        keys: &[f32],
        values: &[f32],
        q: &[f32],
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) -> bool {
        if super::super::simd::level() != super::super::simd::Level::Avx512 {
            return false;
        }
        // SAFETY: the level says the CPU has AVX-512 F and FMA.
        unsafe {
            match at.head.len() {
                64 => both::<4>(at, keys, values, q, scale, scores, out),
                128 => both::<8>(at, keys, values, q, scale, scores, out),
                _ => return false,
            }
        }
        true
    }

    /// Scores, softmax and values for heads of `16 N` values.
    ///
    /// # Safety
    /// AVX-512 F and FMA.
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn both<const N: usize>(
        at: &Slices<'_>,
        keys: &[f32],
        values: &[f32],
        q: &[f32],
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let hd = 16 * N;
        for (h, qh) in q.chunks_exact(hd).enumerate() {
            let qv: [__m512; N] =
                // SAFETY: qh holds 16 N values.
                std::array::from_fn(|c| unsafe { _mm512_loadu_ps(qh.as_ptr().add(16 * c)) });
            let row = &mut scores[h * at.len..(h + 1) * at.len];
            for (pos, o) in at.positions() {
                let k = &keys[o..o + hd];
                // SAFETY: k holds 16 N values.
                let mut acc = unsafe { _mm512_mul_ps(qv[0], _mm512_loadu_ps(k.as_ptr())) };
                for (c, qc) in qv.iter().enumerate().skip(1) {
                    // SAFETY: as above.
                    acc = _mm512_fmadd_ps(
                        *qc,
                        unsafe { _mm512_loadu_ps(k.as_ptr().add(16 * c)) },
                        acc,
                    );
                }
                row[pos] = _mm512_reduce_add_ps(acc) * scale;
            }
        }
        super::softmax_rows_lanes(scores, at.len);
        for (h, oh) in out.chunks_exact_mut(hd).enumerate() {
            // SAFETY: oh holds 16 N values.
            let mut acc: [__m512; N] =
                std::array::from_fn(|c| unsafe { _mm512_loadu_ps(oh.as_ptr().add(16 * c)) });
            let row = &scores[h * at.len..(h + 1) * at.len];
            for (pos, o) in at.positions() {
                let v = &values[o..o + hd];
                let w = _mm512_set1_ps(row[pos]);
                for (c, a) in acc.iter_mut().enumerate() {
                    // SAFETY: v holds 16 N values.
                    *a = _mm512_fmadd_ps(w, unsafe { _mm512_loadu_ps(v.as_ptr().add(16 * c)) }, *a);
                }
            }
            for (c, a) in acc.iter().enumerate() {
                // SAFETY: oh holds 16 N values.
                unsafe { _mm512_storeu_ps(oh.as_mut_ptr().add(16 * c), *a) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kv::KvDtype;

    fn sample(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 500.0 - 2.0)
            .collect()
    }

    /// Attention computed the plain way: one query head, one position at a time.
    fn reference(
        kv: &KvCache,
        table: &[BlockId],
        len: usize,
        head: Range<usize>,
        q: &[f32],
    ) -> Vec<f32> {
        let scale = 0.125;
        let s: Vec<f32> = (0..len)
            .map(|j| kv.key_dot(0, table, j, head.clone(), q) * scale)
            .collect();
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = s.iter().map(|x| (x - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        let mut out = vec![0f32; head.len()];
        for (j, w) in e.iter().enumerate() {
            kv.add_value(0, table, j, head.clone(), w / sum, &mut out);
        }
        out
    }

    #[test]
    fn grouped_block_slice_attention_equals_one_head_one_position_at_a_time() {
        for hd in [64, 128, 48] {
            check_heads_of(hd);
        }
    }

    /// Heads of `hd` values: 64 and 128 take the AVX-512 kernels where the CPU has them,
    /// others the portable ones.
    fn check_heads_of(hd: usize) {
        let (kv_dim, block) = (2 * hd, 16);
        for dtype in [KvDtype::F32, KvDtype::Q8] {
            let mut kv = KvCache::new(1, 6, block, kv_dim, dtype);
            // Blocks out of order, the last one partly filled.
            let table = [4, 0, 2];
            let len = 2 * block + 5;
            for pos in 0..len {
                let (k, v) = (
                    sample(kv_dim, pos as u32),
                    sample(kv_dim, 1000 + pos as u32),
                );
                kv.write(0, &table, pos, &k, &v);
            }
            // Three query heads share the second KV head.
            let q = sample(3 * hd, 7);
            let head = hd..2 * hd;
            let run = |len: usize, q: &[f32]| {
                let (mut out, mut scores) = (vec![0f32; q.len()], Vec::new());
                attend(
                    &kv,
                    0,
                    &table,
                    len,
                    head.clone(),
                    q,
                    0.125,
                    &mut scores,
                    &mut out,
                );
                out
            };
            let out = run(len, &q);
            for h in 0..3 {
                let want = reference(&kv, &table, len, head.clone(), &q[h * hd..(h + 1) * hd]);
                for (a, b) in out[h * hd..(h + 1) * hd].iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "{dtype:?} head {h}: {a} vs {b}");
                }
            }
            // Shorter than one block, and nothing at all.
            let one = run(3, &q[..hd]);
            let want = reference(&kv, &table, 3, head.clone(), &q[..hd]);
            assert!(one.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
            let none = run(0, &q[..hd]);
            assert!(none.iter().all(|&x| x == 0.0));
        }
    }
}
