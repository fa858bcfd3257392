//! 4-bit weights kept as the file stores them (GGUF's Q4_1 and Q4_0: blocks of 32 values,
//! each `d · q + m` with `q` in 0..16). Decode is bound by reading weights (perf: the dot
//! product's samples sit on its loads), and these blocks are 20 bytes for 32 values where the
//! 8-bit requantization is 36, and exact: the values are the file's, not a requantization of
//! them (which moved them a little further from the file's model).
//!
//! Two products: with f32 activations ([`dot_rows_f32`], the default), each block is widened
//! to f32 once for all the step's rows, as the 8-bit kernel does; with 8-bit activations
//! ([`dot`]), per block `Σ (d·q + m)·(dx·x) = d·dx·Σ q·x + m·(dx·Σ x)`: the integer part is one
//! `vpmaddubsw` (q unsigned, x signed) and the offset part uses the activation block's sum,
//! computed once per activation row ([`super::q8dot::QRows`]).

use super::q8::BLOCK;
use super::simd::multiversion;

/// Bytes of packed values per block (two per byte).
const PACKED: usize = BLOCK / 2;

/// A row-major matrix in 4-bit blocks.
#[derive(Debug, Clone)]
pub struct Q4 {
    /// Scale of each block, row after row.
    pub d: Vec<f32>,
    /// Offset of each block (Q4_0's `-8·d`).
    pub m: Vec<f32>,
    /// Values, 16 bytes per block: byte `j` holds value `j` in its low half and `j + 16` in
    /// its high half (GGUF's layout).
    pub qs: Vec<u8>,
}

fn f16(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Bytes of one GGUF block of type Q4_0 (`ty` 2) or Q4_1 (3); `None` for other types.
pub fn gguf_block_size(ty: u32) -> Option<usize> {
    match ty {
        2 => Some(2 + PACKED),
        3 => Some(4 + PACKED),
        _ => None,
    }
}

/// One GGUF block `b` of type `ty` (2 or 3, [`gguf_block_size`] bytes): its scale, its offset
/// (Q4_0's `-8·d`) and its 16 bytes of values.
pub fn gguf_block(ty: u32, b: &[u8]) -> (f32, f32, &[u8]) {
    let d = f16(b, 0);
    if ty == 2 {
        (d, -8.0 * d, &b[2..2 + PACKED])
    } else {
        (d, f16(b, 2), &b[4..4 + PACKED])
    }
}

impl Q4 {
    /// The blocks of a GGUF tensor of type Q4_0 (`ty` 2) or Q4_1 (3); `None` for other types
    /// or a length that is not whole blocks.
    pub fn from_gguf(ty: u32, raw: &[u8]) -> Option<Q4> {
        let size = gguf_block_size(ty)?;
        if !raw.len().is_multiple_of(size) {
            return None;
        }
        let n = raw.len() / size;
        let mut q = Q4 {
            d: Vec::with_capacity(n),
            m: Vec::with_capacity(n),
            qs: Vec::with_capacity(n * PACKED),
        };
        for b in raw.chunks_exact(size) {
            let (d, m, qs) = gguf_block(ty, b);
            q.d.push(d);
            q.m.push(m);
            q.qs.extend_from_slice(qs);
        }
        Some(q)
    }

    /// Rows `rows` (of `cols` each) as f32, into `out`.
    pub fn dequantize_rows(&self, rows: std::ops::Range<usize>, cols: usize, out: &mut [f32]) {
        let per_row = cols / BLOCK;
        for (k, r) in rows.enumerate() {
            for b in 0..per_row {
                let i = r * per_row + b;
                let (d, m) = (self.d[i], self.m[i]);
                let o = &mut out[k * cols + b * BLOCK..k * cols + (b + 1) * BLOCK];
                for (j, &byte) in self.qs[i * PACKED..(i + 1) * PACKED].iter().enumerate() {
                    o[j] = f32::from(byte & 0x0f) * d + m;
                    o[j + PACKED] = f32::from(byte >> 4) * d + m;
                }
            }
        }
    }

    /// Row `r` (of `per_row` blocks): its values, scales and offsets.
    pub fn row(&self, r: usize, per_row: usize) -> (&[u8], &[f32], &[f32]) {
        let b = r * per_row..(r + 1) * per_row;
        (
            &self.qs[b.start * PACKED..b.end * PACKED],
            &self.d[b.clone()],
            &self.m[b],
        )
    }
}

/// One 4-bit row (`qs`, scales `d`, offsets `m`) against `n` f32 activation rows of `cols`
/// each in `x`: each block is widened once for all `n`. Results go to `out[0..n]`.
#[allow(clippy::too_many_arguments)]
pub fn dot_rows_f32(
    qs: &[u8],
    d: &[f32],
    m: &[f32],
    x: &[f32],
    n: usize,
    cols: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() >= super::simd::Level::Avx2 && x.len() >= n * cols {
        // SAFETY: level() reports Avx2 or better only where the CPU has AVX2 and FMA.
        #[allow(unsafe_code)]
        return unsafe { avx2::dot_rows_f32(qs, d, m, x, n, cols, out) };
    }
    rows_f32_portable(qs, d, m, x, n, cols, out)
}

multiversion! {
/// The portable [`dot_rows_f32`]: the compiler widens the nibbles (it does not vectorise the
/// split well, hence the hand-written AVX2 kernel).
fn rows_f32_portable(
    qs: &[u8],
    d: &[f32],
    m: &[f32],
    x: &[f32],
    n: usize,
    cols: usize,
    out: &mut [f32],
) {
    let widen = |b: usize, wf: &mut [f32; BLOCK]| {
        let (lo, hi) = wf.split_at_mut(PACKED);
        for ((l, h), v) in lo.iter_mut().zip(hi).zip(&qs[b * PACKED..(b + 1) * PACKED]) {
            *l = f32::from(v & 0x0f) * d[b] + m[b];
            *h = f32::from(v >> 4) * d[b] + m[b];
        }
    };
    let blocks = (qs.len() / PACKED).min(d.len()).min(m.len());
    super::q8::widened_rows(blocks, widen, x, n, cols, out);
}
}

/// One 4-bit row (`qs`, `d`, `m`) against one activation row in 8-bit blocks (`xq`, scales
/// `xd`, and `xs`: each block's `dx · Σ x`).
pub fn dot(qs: &[u8], d: &[f32], m: &[f32], xq: &[i8], xd: &[f32], xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::simd::vnni() {
        // SAFETY: vnni() is true only where the CPU has AVX-512 F, BW, VL, VNNI and FMA.
        #[allow(unsafe_code)]
        return unsafe { vnni::dot(qs, d, m, xq, xd, xs) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() >= super::simd::Level::Avx2 {
        // SAFETY: level() reports Avx2 or better only where the CPU has AVX2 and FMA.
        #[allow(unsafe_code)]
        return unsafe { avx2::dot(qs, d, m, xq, xd, xs) };
    }
    portable(qs, d, m, xq, xd, xs)
}

fn portable(qs: &[u8], d: &[f32], m: &[f32], xq: &[i8], xd: &[f32], xs: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, (q, x)) in qs
        .chunks_exact(PACKED)
        .zip(xq.chunks_exact(BLOCK))
        .enumerate()
    {
        let mut dotq = 0i32;
        for (j, &byte) in q.iter().enumerate() {
            dotq += i32::from(byte & 0x0f) * i32::from(x[j]);
            dotq += i32::from(byte >> 4) * i32::from(x[j + PACKED]);
        }
        sum += dotq as f32 * d[b] * xd[b] + m[b] * xs[b];
    }
    sum
}

/// [`dot`] for `n` activation rows of `cols` at once (`xq` row after row, `xd` and `xs` with
/// `cols / 32` blocks a row): each weight block is unpacked once for all rows, and each row's
/// result is bit for bit what [`dot`] gives it alone. Results go to `out[0..n]`.
#[allow(clippy::too_many_arguments)]
pub fn dot_rows(
    qs: &[u8],
    d: &[f32],
    m: &[f32],
    (xq, xd, xs): (&[i8], &[f32], &[f32]),
    n: usize,
    cols: usize,
    out: &mut [f32],
) {
    let per_row = cols / BLOCK;
    let fits = xq.len() >= n * cols && xd.len() >= n * per_row && xs.len() >= n * per_row;
    #[cfg(target_arch = "x86_64")]
    if fits && out.len() >= n && super::simd::vnni() {
        // SAFETY: vnni() is true only where the CPU has AVX-512 F, BW, VL, VNNI and FMA; the
        // rows fit (checked above).
        #[allow(unsafe_code)]
        return unsafe { vnni::dot_rows(qs, d, m, xq, xd, xs, n, cols, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if fits && out.len() >= n && super::simd::level() >= super::simd::Level::Avx2 {
        // SAFETY: level() reports Avx2 or better only where the CPU has AVX2 and FMA; the rows
        // fit (checked above).
        #[allow(unsafe_code)]
        return unsafe { avx2::dot_rows(qs, d, m, xq, xd, xs, n, cols, out) };
    }
    let _ = fits;
    for (t, o) in out.iter_mut().take(n).enumerate() {
        let b = t * per_row..(t + 1) * per_row;
        *o = dot(
            qs,
            d,
            m,
            &xq[t * cols..(t + 1) * cols],
            &xd[b.clone()],
            &xs[b],
        );
    }
}

/// [`dot`] on x86, written once and compiled per instruction set: `$features` enabled, and
/// `$sums` turning a block's 32 weight nibbles and 32 activation bytes into eight 32-bit sums of
/// four products.
#[cfg(target_arch = "x86_64")]
macro_rules! q4_q8_kernel {
    ($(#[$m:meta])* $name:ident, $features:literal, $sums:expr) => {
        $(#[$m])*
        #[target_feature(enable = $features)]
        pub unsafe fn $name(
            qs: &[u8],
            d: &[f32],
            m: &[f32],
            xq: &[i8],
            xd: &[f32],
            xs: &[f32],
        ) -> f32 {
            let blocks = (qs.len() / PACKED)
                .min(xq.len() / BLOCK)
                .min(d.len())
                .min(m.len())
                .min(xd.len())
                .min(xs.len());
            let low = _mm256_set1_epi8(0x0f);
            let mut acc = _mm256_setzero_ps();
            let mut offset = 0f32;
            for b in 0..blocks {
                // SAFETY: block b lies inside both slices (b < blocks).
                let (packed, x) = unsafe {
                    (
                        _mm_loadu_si128(qs.as_ptr().add(b * PACKED).cast()),
                        _mm256_loadu_si256(xq.as_ptr().add(b * BLOCK).cast()),
                    )
                };
                // Low halves are values 0..16, high halves 16..32.
                let q =
                    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low);
                let s: __m256i = $sums(q, x);
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d[b] * xd[b]), acc);
                offset += m[b] * xs[b];
            }
            let hi = _mm256_extractf128_ps(acc, 1);
            let s = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s) + offset
        }
    };
}

/// [`dot_rows`] on x86, per instruction set as [`q4_q8_kernel`]: rows in tiles of 8, 4, 2 and
/// 1 whose sums stay in registers, each weight block unpacked once per tile; per row, the same
/// operations in the same order as the one-row kernel.
#[cfg(target_arch = "x86_64")]
macro_rules! q4_q8_rows_kernel {
    ($(#[$m:meta])* $name:ident, $features:literal, $sums:expr) => {
        $(#[$m])*
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $name(
            qs: &[u8],
            d: &[f32],
            m: &[f32],
            xq: &[i8],
            xd: &[f32],
            xs: &[f32],
            n: usize,
            cols: usize,
            out: &mut [f32],
        ) {
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn tile<const R: usize>(
                qs: &[u8],
                d: &[f32],
                m: &[f32],
                xq: *const i8,
                xd: &[f32],
                xs: &[f32],
                cols: usize,
                blocks: usize,
                out: &mut [f32],
            ) -> usize {
                let per_row = cols / BLOCK;
                let low = _mm256_set1_epi8(0x0f);
                let mut acc = [_mm256_setzero_ps(); R];
                let mut offset = [0f32; R];
                for b in 0..blocks {
                    // SAFETY: b < blocks, inside qs.
                    let packed = unsafe { _mm_loadu_si128(qs.as_ptr().add(b * PACKED).cast()) };
                    let q =
                        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low);
                    for r in 0..R {
                        // SAFETY: row r < R of the tile lies inside xq (the caller checked n
                        // rows of cols), and block b inside the row.
                        let x = unsafe { _mm256_loadu_si256(xq.add(r * cols + b * BLOCK).cast()) };
                        let s: __m256i = $sums(q, x);
                        let scale = _mm256_set1_ps(d[b] * xd[r * per_row + b]);
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[r]);
                        offset[r] += m[b] * xs[r * per_row + b];
                    }
                }
                for r in 0..R {
                    let hi = _mm256_extractf128_ps(acc[r], 1);
                    let s = _mm_add_ps(_mm256_castps256_ps128(acc[r]), hi);
                    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                    out[r] = _mm_cvtss_f32(s) + offset[r];
                }
                R
            }
            let per_row = cols / BLOCK;
            let blocks = (qs.len() / PACKED).min(d.len()).min(m.len()).min(per_row);
            let mut t = 0;
            while t < n {
                // SAFETY: rows t.. lie inside xq, xd and xs (the caller checked n rows).
                let (x, xd, xs, o) = unsafe {
                    (xq.as_ptr().add(t * cols), &xd[t * per_row..], &xs[t * per_row..], &mut out[t..])
                };
                t += match n - t {
                    8.. => unsafe { tile::<8>(qs, d, m, x, xd, xs, cols, blocks, o) },
                    4..=7 => unsafe { tile::<4>(qs, d, m, x, xd, xs, cols, blocks, o) },
                    2 | 3 => unsafe { tile::<2>(qs, d, m, x, xd, xs, cols, blocks, o) },
                    _ => unsafe { tile::<1>(qs, d, m, x, xd, xs, cols, blocks, o) },
                };
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, PACKED};

    /// Block `b` of `qs` as four vectors of eight values (0..16 each), in order.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn nibbles(qs: &[u8], b: usize) -> [__m256; 4] {
        // SAFETY: the caller keeps b inside qs.
        let packed = unsafe { _mm_loadu_si128(qs.as_ptr().add(b * PACKED).cast()) };
        let low = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(packed, low);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
        [
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
        ]
    }

    #[target_feature(enable = "avx2,fma")]
    fn sum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// The AVX2 kernel of [`super::dot_rows_f32`]: each block widened to f32 weights once
    /// (`q·d + m`), then multiplied into every activation row.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA, and `x` must hold `n` rows of `cols`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows_f32(
        qs: &[u8],
        d: &[f32],
        m: &[f32],
        x: &[f32],
        n: usize,
        cols: usize,
        out: &mut [f32],
    ) {
        let blocks = (qs.len() / PACKED)
            .min(d.len())
            .min(m.len())
            .min(cols / BLOCK);
        let xp = x.as_ptr();
        if n == 1 {
            // Four independent sums, so the multiply-adds do not wait on each other.
            let mut acc = [_mm256_setzero_ps(); 4];
            for b in 0..blocks {
                // SAFETY: b < blocks, inside qs.
                let q = unsafe { nibbles(qs, b) };
                let (dv, mv) = (_mm256_set1_ps(d[b]), _mm256_set1_ps(m[b]));
                for i in 0..4 {
                    // SAFETY: b * BLOCK + 32 <= cols <= x.len().
                    let xv = unsafe { _mm256_loadu_ps(xp.add(b * BLOCK + 8 * i)) };
                    acc[i] = _mm256_fmadd_ps(_mm256_fmadd_ps(q[i], dv, mv), xv, acc[i]);
                }
            }
            let a = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            out[0] = sum(a);
            return;
        }
        // Rows in tiles of 8, 4, 2, 1, whose sums stay in registers across the blocks (a
        // vector of n sums lived in memory: perf put a fifth of this kernel on that store).
        let mut t = 0;
        while t < n {
            let o = &mut out[t..];
            // SAFETY: rows t.. lie inside x (x holds n rows of cols).
            let x = unsafe { xp.add(t * cols) };
            t += match n - t {
                8.. => unsafe { rows_tile::<8>(qs, d, m, x, cols, blocks, o) },
                4..=7 => unsafe { rows_tile::<4>(qs, d, m, x, cols, blocks, o) },
                2 | 3 => unsafe { rows_tile::<2>(qs, d, m, x, cols, blocks, o) },
                _ => unsafe { rows_tile::<1>(qs, d, m, x, cols, blocks, o) },
            };
        }
    }

    /// `R` activation rows from `x` against one weight row, the sums in `R` registers; the
    /// same order of operations per row as one row alone. Returns `R`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `x` must hold `R` rows of `cols`, and `blocks` blocks
    /// must lie in `qs`, `d`, `m` and each row.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_tile<const R: usize>(
        qs: &[u8],
        d: &[f32],
        m: &[f32],
        x: *const f32,
        cols: usize,
        blocks: usize,
        out: &mut [f32],
    ) -> usize {
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..blocks {
            // SAFETY: b < blocks, inside qs.
            let q = unsafe { nibbles(qs, b) };
            let (dv, mv) = (_mm256_set1_ps(d[b]), _mm256_set1_ps(m[b]));
            let w = [
                _mm256_fmadd_ps(q[0], dv, mv),
                _mm256_fmadd_ps(q[1], dv, mv),
                _mm256_fmadd_ps(q[2], dv, mv),
                _mm256_fmadd_ps(q[3], dv, mv),
            ];
            for (t, a) in acc.iter_mut().enumerate() {
                // SAFETY: row t < R lies inside x, and block b inside the row.
                let r = unsafe { x.add(t * cols + b * BLOCK) };
                for (i, w) in w.iter().enumerate() {
                    // SAFETY: as above.
                    *a = _mm256_fmadd_ps(*w, unsafe { _mm256_loadu_ps(r.add(8 * i)) }, *a);
                }
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = sum(a);
        }
        R
    }

    q4_q8_kernel!(
        /// The AVX2 kernel of [`super::dot`]: byte pairs into 16 bits, pairs into 32.
        ///
        /// # Safety
        /// The CPU must have AVX2 and FMA.
        dot,
        "avx2,fma",
        |q, x| _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1))
    );

    q4_q8_rows_kernel!(
        /// The AVX2 kernel of [`super::dot_rows`].
        ///
        /// # Safety
        /// The CPU must have AVX2 and FMA; `xq` must hold `n` rows of `cols`, `xd` and `xs`
        /// `n` rows of `cols / 32`.
        dot_rows,
        "avx2,fma",
        |q, x| _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1))
    );
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod vnni {
    use std::arch::x86_64::*;

    use super::{BLOCK, PACKED};

    q4_q8_kernel!(
        /// The AVX-512 VNNI kernel of [`super::dot`]: four byte products into each 32-bit lane
        /// in one `vpdpbusd`.
        ///
        /// # Safety
        /// The CPU must have AVX-512 F, BW, VL and VNNI, and FMA.
        dot,
        "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni",
        |q, x| _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, x)
    );

    q4_q8_rows_kernel!(
        /// The AVX-512 VNNI kernel of [`super::dot_rows`].
        ///
        /// # Safety
        /// The CPU must have AVX-512 F, BW, VL and VNNI, and FMA; `xq` must hold `n` rows of
        /// `cols`, `xd` and `xs` `n` rows of `cols / 32`.
        dot_rows,
        "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni",
        |q, x| _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, x)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::q8dot::QRows;

    /// A Q4_1 tensor of `rows` x `cols` with values from `rng`, as GGUF writes it.
    fn q4_1(rng: &mut fastrand::Rng, blocks: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        for _ in 0..blocks {
            let d = half::f16::from_f32(rng.f32() * 0.1 + 0.01);
            let m = half::f16::from_f32(rng.f32() * -0.5);
            raw.extend_from_slice(&d.to_le_bytes());
            raw.extend_from_slice(&m.to_le_bytes());
            raw.extend((0..PACKED).map(|_| rng.u8(..)));
        }
        raw
    }

    #[test]
    fn blocks_read_as_stored_dequantize_as_gguf_does() {
        let mut rng = fastrand::Rng::with_seed(2);
        for ty in [2u32, 3] {
            let mut raw = q4_1(&mut rng, 6);
            if ty == 2 {
                // Q4_0: no offset half.
                raw = raw
                    .chunks_exact(4 + PACKED)
                    .flat_map(|b| b[..2].iter().chain(&b[4..]).copied().collect::<Vec<_>>())
                    .collect();
            }
            let q = Q4::from_gguf(ty, &raw).expect("whole blocks");
            let want = inferd_gguf::dequantize(inferd_gguf::GgmlType(ty), &raw).expect("known");
            let mut got = vec![0f32; 6 * BLOCK];
            q.dequantize_rows(0..2, 3 * BLOCK, &mut got);
            assert_eq!(got, want, "type {ty}");
        }
        assert!(Q4::from_gguf(8, &[0; 34]).is_none());
        assert!(Q4::from_gguf(3, &[0; 19]).is_none());
    }

    #[test]
    fn the_4_bit_kernels_agree_with_each_other_and_with_f32() {
        let mut rng = fastrand::Rng::with_seed(4);
        let raw = q4_1(&mut rng, 48);
        let q = Q4::from_gguf(3, &raw).expect("whole blocks");
        let mut w = vec![0f32; 48 * BLOCK];
        q.dequantize_rows(0..1, 48 * BLOCK, &mut w);
        let x: Vec<f32> = (0..48 * BLOCK).map(|_| rng.f32() * 6.0 - 3.0).collect();
        let qx = QRows::quantize(&x);
        let (qs, d, m) = q.row(0, 48);
        let fast = dot(qs, d, m, &qx.q, &qx.d, &qx.s);
        let slow = portable(qs, d, m, &qx.q, &qx.d, &qx.s);
        assert!(
            (fast - slow).abs() <= 1e-3 * slow.abs().max(1.0),
            "{fast} {slow}"
        );
        // `fast` is the best kernel this CPU runs (VNNI where it has it); AVX2 too.
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: checked just above.
            let v = unsafe { avx2::dot(qs, d, m, &qx.q, &qx.d, &qx.s) };
            assert!(
                (v - slow).abs() <= 1e-3 * slow.abs().max(1.0),
                "avx2 {v} {slow}"
            );
        }
        let exact: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
        let scale: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        assert!((fast - exact).abs() < 0.01 * scale, "{fast} vs {exact}");
        // f32 activations: the file's values exactly, for one row and for two at once.
        let mut one = [0f32; 1];
        dot_rows_f32(qs, d, m, &x, 1, 48 * BLOCK, &mut one);
        assert!(
            (one[0] - exact).abs() < 1e-4 * scale,
            "{} vs {exact}",
            one[0]
        );
        let xx: Vec<f32> = x.iter().rev().chain(&x).copied().collect();
        let mut two = [0f32; 2];
        dot_rows_f32(qs, d, m, &xx, 2, 48 * BLOCK, &mut two);
        let rev: f32 = w.iter().zip(x.iter().rev()).map(|(a, b)| a * b).sum();
        assert!((two[0] - rev).abs() < 1e-4 * scale, "{} vs {rev}", two[0]);
        assert!((two[1] - one[0]).abs() < 1e-5 * scale, "{two:?} {one:?}");
        let mut slow = [0f32; 2];
        rows_f32_portable(qs, d, m, &xx, 2, 48 * BLOCK, &mut slow);
        for (a, b) in two.iter().zip(slow) {
            assert!((a - b).abs() < 1e-5 * scale, "{two:?} vs portable {slow:?}");
        }
    }

    /// One 4-bit weight row of five blocks and 19 activation rows for it: enough for tiles of
    /// 8, 4, 2 and 1 and their mixes.
    fn tile_case(seed: u64) -> (Q4, Vec<f32>, usize) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let cols = 5 * BLOCK;
        let q = Q4::from_gguf(3, &q4_1(&mut rng, 5)).expect("whole blocks");
        let x = (0..19 * cols).map(|_| rng.f32() * 4.0 - 2.0).collect();
        (q, x, cols)
    }

    #[test]
    fn every_row_tile_gives_each_row_what_it_gives_alone() {
        let (q, x, cols) = tile_case(9);
        let (qs, d, m) = q.row(0, 5);
        let alone: Vec<f32> = x
            .chunks_exact(cols)
            .map(|row| {
                let mut o = [0f32; 2];
                // Two rows (the row twice) take the multi-row kernel, as the tiles do.
                let twice: Vec<f32> = row.iter().chain(row).copied().collect();
                dot_rows_f32(qs, d, m, &twice, 2, cols, &mut o);
                assert_eq!(o[0], o[1]);
                o[0]
            })
            .collect();
        for n in 1..=19 {
            let mut out = vec![0f32; n];
            dot_rows_f32(qs, d, m, &x[..n * cols], n, cols, &mut out);
            if n > 1 {
                assert_eq!(out, alone[..n], "{n} rows");
            }
            let mut slow = vec![0f32; n];
            rows_f32_portable(qs, d, m, &x[..n * cols], n, cols, &mut slow);
            for (a, b) in out.iter().zip(&slow) {
                assert!(
                    (a - b).abs() < 1e-4 * b.abs().max(1.0),
                    "{n} rows: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn integer_row_tiles_give_each_row_what_the_one_row_kernel_gives() {
        let (q, x, cols) = tile_case(12);
        let (qs, d, m) = q.row(0, 5);
        let xq = QRows::quantize(&x);
        let alone: Vec<f32> = (0..19)
            .map(|t| {
                let b = t * 5..(t + 1) * 5;
                dot(
                    qs,
                    d,
                    m,
                    &xq.q[t * cols..(t + 1) * cols],
                    &xq.d[b.clone()],
                    &xq.s[b],
                )
            })
            .collect();
        for n in 1..=19 {
            let mut out = vec![0f32; n];
            dot_rows(qs, d, m, (&xq.q, &xq.d, &xq.s), n, cols, &mut out);
            assert_eq!(out, alone[..n], "{n} rows");
        }
    }
}
