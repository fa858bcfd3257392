//! 4-bit and 8-bit weights repacked at load for batched decode: sixteen weight rows
//! interleaved per block, so one AVX-512 VNNI `vpdpbusd` multiplies four values of each of
//! sixteen rows by the same four activation values (broadcast), and each 32-bit lane sums one
//! weight row.
//!
//! Why: with eight streams the f32 kernel ([`super::pair`]) was 60% of a step (perf on
//! llm_generate) at one multiply-add per weight per row, after widening every weight to f32.
//! Here the weights stay bytes, and a block's scale and offset apply to sixteen rows' sums at
//! once (one conversion and two multiply-adds per block and activation row, where a layout of
//! one row per register needs them per row). The activations are the two 8-bit levels of
//! [`super::q4fine`] (logits within ~0.015 of f32's, greedy ids unchanged), the form
//! one-stream decode already used. Every decode product takes these kernels where the CPU has
//! VNNI, one stream too (they beat the one-row kernels: llm_generate, 1 stream x 400 tokens,
//! 3.12 -> 2.74 s). Where it is used it is the only copy: 4-bit projections are repacked
//! straight from the file's bytes and prefill's blocked products dequantize from it
//! ([`X16::dequantize_rows`]); a second copy in the file's layout cost 94 MB for SmolLM2, and
//! start time (bench/results/llm-2026-12-08-start.md). CPUs without VNNI keep the file's layout.
//!
//! The 8-bit form (the output projection, 16% of an eight-stream step after the 4-bit one
//! moved here) stores each value plus 128, since `vpdpbusd` takes unsigned bytes; the 128 times
//! each activation block's sum is taken off again (the sum made with the activations).
//!
//! Layout, per group of sixteen rows and block of 32 values, then the sixteen rows' scales (and
//! offsets) as f32. 4-bit: 256 bytes; byte `4 i + j` of the 64-byte chunk `c` (0..4) holds
//! value `4 c + j` of row `i` in its low half and value `4 (c + 4) + j` in its high half:
//! after masking, chunk `c`'s low halves feed the product with activation values
//! `4 c .. 4 c + 4`, its high halves the one with `4 c + 16 ..`. 8-bit: 512 bytes; byte
//! `4 i + j` of chunk `k` (0..8) holds value `4 k + j` of row `i`.

use super::q4::Q4;
use super::q4fine::FineRows;
use super::q8::{BLOCK, Q8};

/// Weight rows per group.
pub const ROWS: usize = 16;

/// A matrix in groups of sixteen interleaved rows.
#[derive(Debug, Clone, Default)]
pub struct X16 {
    /// 8-bit values (else 4-bit).
    eight: bool,
    /// Blocks per row.
    blocks: usize,
    /// Values: group after group, block after block.
    qs: Vec<u8>,
    /// Scales: group after group, block after block, sixteen rows each.
    d: Vec<f32>,
    /// Offsets, likewise (4-bit only).
    m: Vec<f32>,
}

/// Whether this CPU runs the kernel (AVX-512 with VNNI, not capped by `INFERD_LLM_SIMD`).
pub fn available() -> bool {
    super::simd::vnni()
}

impl X16 {
    /// `q` (`rows` of `cols`) repacked; `None` when the rows are not whole groups.
    pub fn from_q4(q: &Q4, rows: usize, cols: usize) -> Option<X16> {
        if q.d.len() != rows * (cols / BLOCK) {
            return None;
        }
        X16::from_4bit(rows, cols, |i| {
            (q.d[i], q.m[i], &q.qs[i * BLOCK / 2..(i + 1) * BLOCK / 2])
        })
    }

    /// The GGUF tensor bytes `raw` of type Q4_0 (`ty` 2) or Q4_1 (3), `rows` of `cols`,
    /// repacked straight from the file (no copy in the file's layout is made); `None` for
    /// other types, or rows that are not whole groups or blocks.
    pub fn from_gguf_q4(ty: u32, raw: &[u8], rows: usize, cols: usize) -> Option<X16> {
        let size = super::q4::gguf_block_size(ty)?;
        if raw.len() != rows * (cols / BLOCK) * size || !cols.is_multiple_of(BLOCK) {
            return None;
        }
        X16::from_4bit(rows, cols, |i| {
            super::q4::gguf_block(ty, &raw[i * size..(i + 1) * size])
        })
    }

    /// 4-bit blocks given by `block(i)` (block `i` of the row-major matrix: scale, offset and
    /// GGUF's 16 bytes of values) repacked.
    fn from_4bit<'a>(
        rows: usize,
        cols: usize,
        block: impl Fn(usize) -> (f32, f32, &'a [u8]) + Sync,
    ) -> Option<X16> {
        let blocks = cols / BLOCK;
        if rows == 0 || !rows.is_multiple_of(ROWS) || blocks == 0 {
            return None;
        }
        let mut out = X16::repack(rows, blocks, ROWS * BLOCK / 2, false, |r, b, i, dst| {
            // GGUF's byte j already pairs values j and j + 16: chunk c takes bytes 4c..4c + 4.
            let v = block(r * blocks + b).2;
            for c in 0..4 {
                dst[c * 64 + 4 * i..][..4].copy_from_slice(&v[4 * c..4 * c + 4]);
            }
        });
        out.m = interleaved(rows, blocks, |i| block(i).1);
        out.d = interleaved(rows, blocks, |i| block(i).0);
        Some(out)
    }

    /// `q` (`rows` of `cols`, 8-bit) repacked; `None` when the rows are not whole groups.
    pub fn from_q8(q: &Q8, rows: usize, cols: usize) -> Option<X16> {
        let blocks = cols / BLOCK;
        if rows == 0 || !rows.is_multiple_of(ROWS) || blocks == 0 || q.d.len() != rows * blocks {
            return None;
        }
        let mut out = X16::repack(rows, blocks, ROWS * BLOCK, true, |r, b, i, dst| {
            place8(&q.q[(r * blocks + b) * BLOCK..][..BLOCK], i, dst);
        });
        out.d = interleaved(rows, blocks, |i| q.d[i]);
        Some(out)
    }

    /// `rows` of `cols` f32 values, `values(start, len, out)` appending values
    /// `start..start + len` of the row-major matrix, in 8-bit blocks (as [`super::q8::quantize`]
    /// makes them) and repacked a group at a time: neither the f32 matrix nor its 8-bit copy
    /// in rows is ever whole (load time: the tied output projection is 28 million values).
    /// `None` when the rows are not whole groups or blocks.
    pub fn from_f32_rows(
        rows: usize,
        cols: usize,
        values: impl Fn(usize, usize, &mut Vec<f32>) + Sync,
    ) -> Option<X16> {
        use rayon::prelude::*;
        let blocks = cols / BLOCK;
        if rows == 0 || !rows.is_multiple_of(ROWS) || blocks == 0 || !cols.is_multiple_of(BLOCK) {
            return None;
        }
        let size = ROWS * BLOCK;
        let mut qs = vec![0u8; rows / ROWS * blocks * size];
        let mut d = vec![0f32; rows * blocks];
        qs.par_chunks_mut(blocks * size)
            .zip(d.par_chunks_mut(ROWS * blocks))
            .enumerate()
            .for_each(|(g, (group, scales))| {
                let mut x = Vec::with_capacity(ROWS * cols);
                values(g * ROWS * cols, ROWS * cols, &mut x);
                let (mut q, mut s) = (
                    Vec::with_capacity(x.len()),
                    Vec::with_capacity(ROWS * blocks),
                );
                super::q8::quantize_into(&x, &mut q, &mut s);
                for (b, dst) in group.chunks_exact_mut(size).enumerate() {
                    for i in 0..ROWS {
                        place8(&q[(i * blocks + b) * BLOCK..][..BLOCK], i, dst);
                        scales[b * ROWS + i] = s[i * blocks + b];
                    }
                }
            });
        Some(X16 {
            eight: true,
            blocks,
            qs,
            d,
            m: Vec::new(),
        })
    }

    /// Rows `rows` (of `cols` each) as f32, into `out`: the values the file's layout gives
    /// ([`Q4::dequantize_rows`], [`super::q8::dequantize_rows`]), for prefill's blocked
    /// products.
    pub fn dequantize_rows(&self, rows: std::ops::Range<usize>, cols: usize, out: &mut [f32]) {
        let blocks = self.blocks;
        let size = if self.eight {
            ROWS * BLOCK
        } else {
            ROWS * BLOCK / 2
        };
        for (k, r) in rows.enumerate() {
            let (g, i) = (r / ROWS, r % ROWS);
            for b in 0..blocks {
                let at = g * blocks + b;
                let src = &self.qs[at * size..(at + 1) * size];
                let d = self.d[at * ROWS + i];
                let o = &mut out[k * cols + b * BLOCK..k * cols + (b + 1) * BLOCK];
                if self.eight {
                    for kk in 0..8 {
                        for j in 0..4 {
                            let v = (src[kk * 64 + 4 * i + j] ^ 0x80) as i8;
                            o[4 * kk + j] = f32::from(v) * d;
                        }
                    }
                } else {
                    let m = self.m[at * ROWS + i];
                    for c in 0..4 {
                        for j in 0..4 {
                            let byte = src[c * 64 + 4 * i + j];
                            o[4 * c + j] = f32::from(byte & 0x0f) * d + m;
                            o[4 * c + j + BLOCK / 2] = f32::from(byte >> 4) * d + m;
                        }
                    }
                }
            }
        }
    }

    /// The values laid out by `place(row, block, row in group, group block's bytes)`, `size`
    /// bytes per group and block; groups in parallel (load time, rayon's shared pool: the
    /// output projection alone is 28 million values).
    fn repack(
        rows: usize,
        blocks: usize,
        size: usize,
        eight: bool,
        place: impl Fn(usize, usize, usize, &mut [u8]) + Sync,
    ) -> X16 {
        use rayon::prelude::*;
        let mut qs = vec![0u8; rows / ROWS * blocks * size];
        qs.par_chunks_mut(blocks * size)
            .enumerate()
            .for_each(|(g, group)| {
                for (b, dst) in group.chunks_exact_mut(size).enumerate() {
                    for i in 0..ROWS {
                        place(g * ROWS + i, b, i, dst);
                    }
                }
            });
        X16 {
            eight,
            blocks,
            qs,
            d: Vec::new(),
            m: Vec::new(),
        }
    }

    /// Rows `first..first + out.len() / n` (whole groups) against the `n` activation rows of
    /// `x`: `out` row-major by weight row, `n` results each. `false` (and nothing written)
    /// where the CPU lacks the kernel.
    pub fn dot_rows(&self, first: usize, x: &FineRows, n: usize, out: &mut [f32]) -> bool {
        let rows = out.len() / n.max(1);
        if !available()
            || n == 0
            || !first.is_multiple_of(ROWS)
            || !rows.is_multiple_of(ROWS)
            || x.d.len() < n * self.blocks
            || x.steps.len() < n * self.blocks
            || (first + rows) * self.blocks > self.d.len()
        {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            for g in 0..rows / ROWS {
                let o = &mut out[g * ROWS * n..(g + 1) * ROWS * n];
                // SAFETY: available() checked AVX-512 F, BW, VL and VNNI; the group lies inside
                // the matrix and x holds n rows of `blocks` blocks (checked above).
                #[allow(unsafe_code)]
                unsafe {
                    if self.eight {
                        vnni::group::<true>(self, first / ROWS + g, x, n, o)
                    } else {
                        vnni::group::<false>(self, first / ROWS + g, x, n, o)
                    }
                };
            }
            true
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

/// Per-block values `v(i)` of `rows` rows (block `i` of the row-major matrix, `blocks` a
/// row) as the groups store them: group after group, block after block, sixteen rows each.
fn interleaved(rows: usize, blocks: usize, v: impl Fn(usize) -> f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * blocks);
    for g in 0..rows / ROWS {
        for b in 0..blocks {
            out.extend((0..ROWS).map(|i| v((g * ROWS + i) * blocks + b)));
        }
    }
    out
}

/// One 8-bit block `v` of the group's row `i` into the group block's bytes `dst`: byte
/// `4 i + j` of chunk `k` holds value `4 k + j`, plus 128 as an unsigned byte.
fn place8(v: &[i8], i: usize, dst: &mut [u8]) {
    for k in 0..8 {
        for j in 0..4 {
            dst[k * 64 + 4 * i + j] = (v[4 * k + j] as u8) ^ 0x80;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod vnni {
    use std::arch::x86_64::*;

    use super::{BLOCK, FineRows, ROWS, X16};

    /// Group `g` against every activation row, in tiles of 8, 4, 2 and 1 rows; `EIGHT`: the
    /// matrix is 8-bit (its +128 adds 128 times each activation block's `steps`).
    ///
    /// # Safety
    /// AVX-512 F, BW, VL and VNNI; group `g` inside `w`; `x` holds `n` rows of `w.blocks`
    /// blocks; `out` holds `16 n`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
    pub(super) unsafe fn group<const EIGHT: bool>(
        w: &X16,
        g: usize,
        x: &FineRows,
        n: usize,
        out: &mut [f32],
    ) {
        let mut t = 0;
        while t < n {
            // SAFETY: rows t.. lie inside x.
            t += unsafe {
                match n - t {
                    8.. => tile::<8, EIGHT>(w, g, x, t, n, out),
                    4..=7 => tile::<4, EIGHT>(w, g, x, t, n, out),
                    2 | 3 => tile::<2, EIGHT>(w, g, x, t, n, out),
                    _ => tile::<1, EIGHT>(w, g, x, t, n, out),
                }
            };
        }
    }

    /// Activation rows `t0..t0 + R` against group `g`. Returns `R`.
    ///
    /// # Safety
    /// As [`group`], with rows `t0..t0 + R` inside `x`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
    unsafe fn tile<const R: usize, const EIGHT: bool>(
        w: &X16,
        g: usize,
        x: &FineRows,
        t0: usize,
        n: usize,
        out: &mut [f32],
    ) -> usize {
        let blocks = w.blocks;
        let cols = blocks * BLOCK;
        let low = _mm512_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..blocks {
            let at = g * blocks + b;
            // SAFETY: block `at` lies inside the matrix (the caller's promise).
            let (wv, d, m) = unsafe {
                let mut wv = [_mm512_setzero_si512(); 8];
                if EIGHT {
                    let p = w.qs.as_ptr().add(at * ROWS * BLOCK);
                    for (k, v) in wv.iter_mut().enumerate() {
                        *v = _mm512_loadu_si512(p.add(64 * k).cast());
                    }
                } else {
                    let p = w.qs.as_ptr().add(at * ROWS * BLOCK / 2);
                    for c in 0..4 {
                        let v = _mm512_loadu_si512(p.add(64 * c).cast());
                        wv[c] = _mm512_and_si512(v, low);
                        wv[c + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                    }
                }
                let d = _mm512_loadu_ps(w.d.as_ptr().add(at * ROWS));
                let m = if EIGHT {
                    _mm512_setzero_ps()
                } else {
                    _mm512_loadu_ps(w.m.as_ptr().add(at * ROWS))
                };
                (wv, d, m)
            };
            for (t, a) in acc.iter_mut().enumerate() {
                let row = t0 + t;
                let v = row * cols + b * BLOCK;
                let (mut s1, mut s2) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                // SAFETY: values v..v + 32 of both levels lie inside x.
                unsafe {
                    let (p1, p2) = (x.q1.as_ptr().add(v), x.q2.as_ptr().add(v));
                    for (k, wk) in wv.iter().enumerate() {
                        let a1 = std::ptr::read_unaligned(p1.add(4 * k).cast::<i32>());
                        let a2 = std::ptr::read_unaligned(p2.add(4 * k).cast::<i32>());
                        s1 = _mm512_dpbusd_epi32(s1, *wk, _mm512_set1_epi32(a1));
                        s2 = _mm512_dpbusd_epi32(s2, *wk, _mm512_set1_epi32(a2));
                    }
                }
                // 254 · s1 + s2: the two levels as one integer (at most 15.5 million; 8-bit:
                // 130 million with the +128, less its offset).
                let mut s = _mm512_add_epi32(
                    _mm512_sub_epi32(_mm512_slli_epi32::<8>(s1), _mm512_slli_epi32::<1>(s1)),
                    s2,
                );
                let blk = row * blocks + b;
                if EIGHT {
                    s = _mm512_sub_epi32(s, _mm512_set1_epi32(128 * x.steps[blk]));
                }
                let xd = _mm512_set1_ps(x.d[blk]);
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, xd), *a);
                if !EIGHT {
                    *a = _mm512_fmadd_ps(m, _mm512_set1_ps(x.s[blk]), *a);
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            let mut lanes = [0f32; ROWS];
            // SAFETY: lanes holds 16 values.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *a) };
            for (i, v) in lanes.iter().enumerate() {
                out[i * n + t0 + t] = *v;
            }
        }
        R
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q4(rng: &mut fastrand::Rng, rows: usize, cols: usize) -> Q4 {
        let blocks = rows * cols / BLOCK;
        let d: Vec<f32> = (0..blocks)
            .map(|_| half::f16::from_f32(rng.f32() * 0.05).to_f32())
            .collect();
        Q4 {
            m: (0..blocks)
                .map(|_| half::f16::from_f32(-rng.f32() * 0.4).to_f32())
                .collect(),
            d,
            qs: (0..blocks * BLOCK / 2).map(|_| rng.u8(..)).collect(),
        }
    }

    #[test]
    fn interleaved_rows_give_the_one_row_fine_kernels_results() {
        let mut rng = fastrand::Rng::with_seed(21);
        let (rows, cols) = (48, 160);
        let w = q4(&mut rng, rows, cols);
        let packed = X16::from_q4(&w, rows, cols).expect("whole groups, f16 scales");
        let per_row = cols / BLOCK;
        let mut dense = vec![0f32; rows * cols];
        w.dequantize_rows(0..rows, cols, &mut dense);
        for n in [1, 2, 3, 5, 8, 11] {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.f32() * 4.0 - 2.0).collect();
            let fine = FineRows::quantize(&x);
            // Rows 16.. (a group not the first), every activation row.
            let mut out = vec![0f32; (rows - ROWS) * n];
            if !packed.dot_rows(ROWS, &fine, n, &mut out) {
                assert!(!available());
                return;
            }
            for r in ROWS..rows {
                let (qs, d, m) = w.row(r, per_row);
                for t in 0..n {
                    let got = out[(r - ROWS) * n + t];
                    let one = super::super::q4fine::dot(qs, d, m, fine.row(t, per_row));
                    let xr = &x[t * cols..(t + 1) * cols];
                    let exact: f32 = dense[r * cols..(r + 1) * cols]
                        .iter()
                        .zip(xr)
                        .map(|(a, b)| a * b)
                        .sum();
                    assert!(
                        (got - one).abs() < 1e-4,
                        "row {r}, {n} rows, row {t}: {got} vs {one}"
                    );
                    assert!(
                        (got - exact).abs() < 1e-3,
                        "row {r}: {got} vs exact {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn interleaved_8_bit_rows_give_the_f32_products_within_the_two_levels_error() {
        let mut rng = fastrand::Rng::with_seed(8);
        let (rows, cols) = (32, 96);
        let dense: Vec<f32> = (0..rows * cols).map(|_| rng.f32() * 2.0 - 1.0).collect();
        let q = super::super::q8::quantize(&dense);
        let packed = X16::from_q8(&q, rows, cols).expect("whole groups");
        let per_row = cols / BLOCK;
        for n in [2, 3, 8, 9] {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.f32() * 4.0 - 2.0).collect();
            let fine = FineRows::quantize(&x);
            let mut out = vec![0f32; rows * n];
            if !packed.dot_rows(0, &fine, n, &mut out) {
                assert!(!available());
                return;
            }
            for r in 0..rows {
                for t in 0..n {
                    // The 8-bit weights exactly, against f32 activations.
                    let want: f32 = (0..cols)
                        .map(|c| {
                            f32::from(q.q[r * cols + c])
                                * q.d[r * per_row + c / BLOCK]
                                * x[t * cols + c]
                        })
                        .sum();
                    let got = out[r * n + t];
                    assert!(
                        (got - want).abs() < 1e-3,
                        "row {r}, {n} rows, row {t}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_matrix_of_partial_groups_is_not_repacked() {
        let mut rng = fastrand::Rng::with_seed(2);
        assert!(X16::from_q4(&q4(&mut rng, 24, 64), 24, 64).is_none());
        let q = super::super::q8::quantize(&vec![0.5f32; 24 * 64]);
        assert!(X16::from_q8(&q, 24, 64).is_none());
    }

    fn same(a: &X16, b: &X16) {
        assert_eq!((a.eight, a.blocks), (b.eight, b.blocks));
        assert_eq!(a.qs, b.qs);
        assert_eq!(a.d, b.d);
        assert_eq!(a.m, b.m);
    }

    /// GGUF bytes of type `ty` (2: Q4_0, 3: Q4_1) for `blocks` random blocks.
    fn gguf_q4(rng: &mut fastrand::Rng, ty: u32, blocks: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        for _ in 0..blocks {
            raw.extend(half::f16::from_f32(rng.f32() * 0.05).to_le_bytes());
            if ty == 3 {
                raw.extend(half::f16::from_f32(-rng.f32() * 0.4).to_le_bytes());
            }
            raw.extend((0..BLOCK / 2).map(|_| rng.u8(..)));
        }
        raw
    }

    #[test]
    fn repacking_the_file_bytes_equals_repacking_the_blocks_read_from_them() {
        let mut rng = fastrand::Rng::with_seed(5);
        let (rows, cols) = (48, 96);
        for ty in [2, 3] {
            let raw = gguf_q4(&mut rng, ty, rows * cols / BLOCK);
            let q = Q4::from_gguf(ty, &raw).expect("whole blocks");
            let direct = X16::from_gguf_q4(ty, &raw, rows, cols).expect("whole groups");
            same(
                &direct,
                &X16::from_q4(&q, rows, cols).expect("whole groups"),
            );
            assert!(X16::from_gguf_q4(8, &raw, rows, cols).is_none());
            assert!(X16::from_gguf_q4(ty, &raw[1..], rows, cols).is_none());
        }
    }

    #[test]
    fn dequantized_rows_equal_the_file_layouts_values() {
        let mut rng = fastrand::Rng::with_seed(6);
        let (rows, cols) = (48, 96);
        let w = q4(&mut rng, rows, cols);
        let packed = X16::from_q4(&w, rows, cols).expect("whole groups");
        let (mut want, mut got) = (vec![0f32; 7 * cols], vec![0f32; 7 * cols]);
        // Rows across a group boundary.
        w.dequantize_rows(13..20, cols, &mut want);
        packed.dequantize_rows(13..20, cols, &mut got);
        assert_eq!(want, got);
        let dense: Vec<f32> = (0..rows * cols).map(|_| rng.f32() * 2.0 - 1.0).collect();
        let q = super::super::q8::quantize(&dense);
        let packed = X16::from_q8(&q, rows, cols).expect("whole groups");
        super::super::q8::dequantize_rows(&q, 13..20, cols, &mut want);
        packed.dequantize_rows(13..20, cols, &mut got);
        assert_eq!(want, got);
    }

    #[test]
    fn repacking_f32_rows_a_group_at_a_time_equals_repacking_their_8_bit_blocks() {
        let mut rng = fastrand::Rng::with_seed(7);
        let (rows, cols) = (64, 96);
        let dense: Vec<f32> = (0..rows * cols).map(|_| rng.f32() * 2.0 - 1.0).collect();
        let q = super::super::q8::quantize(&dense);
        let whole = X16::from_q8(&q, rows, cols).expect("whole groups");
        let grouped = X16::from_f32_rows(rows, cols, |s, l, out| {
            out.extend_from_slice(&dense[s..s + l])
        })
        .expect("whole groups");
        same(&grouped, &whole);
        assert!(X16::from_f32_rows(24, cols, |_, _, _| {}).is_none());
    }
}
