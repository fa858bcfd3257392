//! Batched decode's products at AVX-512, for 4-bit and 8-bit weight blocks: two weight rows
//! against several f32 activation rows at once.
//!
//! [`super::q4::dot_rows_f32`] takes one weight row at a time: every multiply-add loads its
//! activation values, so at eight rows the kernel issued as many loads as multiply-adds, and
//! `perf` put it at ~56% of the cores' FMA peak (bench/results/llm-2026-12-07-tiles.md). Here
//! each activation vector loaded is used for two weight rows, a block is widened in 16-lane
//! registers (one `vpmovzxbd` for its 16 bytes, where the AVX2 kernel widens in four pieces),
//! and the 32 vector registers hold the 2 x 8 sums. The 8-bit kernel it replaces at AVX-512
//! ([`super::q8::dot_rows`], the output projection) was plain Rust, which the compiler may not
//! contract into multiply-adds: a multiply and an add per product.
//!
//! Every row sums in the same order whatever the tile and whichever of the pair it is: per
//! block, its low 16 values then its high 16 into one 16-lane sum, reduced at the end. So a
//! sequence's result does not depend on how many others share its step.

use super::q8::BLOCK;

/// Bytes of packed values per block (two per byte).
const PACKED: usize = BLOCK / 2;

/// One weight row in blocks of 32 values.
#[derive(Clone, Copy)]
pub enum Row<'a> {
    /// 4-bit: 16 bytes per block in GGUF's order (byte `j`: value `j` low, `j + 16` high),
    /// each value `q·d + m`.
    Q4 {
        /// Packed values.
        qs: &'a [u8],
        /// Block scales.
        d: &'a [f32],
        /// Block offsets.
        m: &'a [f32],
    },
    /// 8-bit: 32 values per block, each `q·d`.
    Q8 {
        /// Values.
        q: &'a [i8],
        /// Block scales.
        d: &'a [f32],
    },
}

impl Row<'_> {
    fn blocks(&self) -> usize {
        match self {
            Row::Q4 { qs, d, m } => (qs.len() / PACKED).min(d.len()).min(m.len()),
            Row::Q8 { q, d } => (q.len() / BLOCK).min(d.len()),
        }
    }

    /// The kernel this replaces, for CPUs without AVX-512.
    fn fallback(&self, x: &[f32], n: usize, cols: usize, out: &mut [f32]) {
        match *self {
            Row::Q4 { qs, d, m } => super::q4::dot_rows_f32(qs, d, m, x, n, cols, out),
            Row::Q8 { q, d } => super::q8::dot_rows(q, d, x, n, cols, out),
        }
    }
}

/// Whether this CPU runs the pair kernel (AVX-512 F and BW, not capped by `INFERD_LLM_SIMD`).
pub fn available() -> bool {
    super::simd::level() == super::simd::Level::Avx512
}

/// Weight rows `a` and, when given, `b` against the `n` activation rows of `cols` in `x`:
/// `a`'s results to `out_a[0..n]`, `b`'s to `out_b[0..n]`. Falls back to
/// [`super::q4::dot_rows_f32`] where [`available`] is false.
pub fn dot_pair(
    a: Row<'_>,
    b: Option<Row<'_>>,
    x: &[f32],
    n: usize,
    cols: usize,
    out_a: &mut [f32],
    out_b: &mut [f32],
) {
    let blocks = a
        .blocks()
        .min(b.map_or(usize::MAX, |b| b.blocks()))
        .min(cols / BLOCK);
    #[cfg(target_arch = "x86_64")]
    if available() && x.len() >= n * cols && out_a.len() >= n && (b.is_none() || out_b.len() >= n) {
        // SAFETY: available() checked the features; x holds n rows of cols, every row `blocks`
        // blocks, and the outputs n values each.
        #[allow(unsafe_code)]
        unsafe {
            avx512::dot_pair(a, b, x.as_ptr(), n, cols, blocks, out_a, out_b)
        };
        return;
    }
    a.fallback(x, n, cols, out_a);
    if let Some(b) = b {
        b.fallback(x, n, cols, out_b);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BLOCK, PACKED, Row};

    /// Block `blk` of `r` widened to f32: values 0..16 and 16..32.
    ///
    /// # Safety
    /// AVX-512 F; `blk` inside the row.
    #[target_feature(enable = "avx512f,avx512bw,fma")]
    #[inline]
    unsafe fn widen(r: &Row<'_>, blk: usize) -> (__m512, __m512) {
        match *r {
            Row::Q4 { qs, d, m } => {
                // SAFETY: the caller keeps blk inside qs (16 bytes a block).
                let packed = unsafe { _mm_loadu_si128(qs.as_ptr().add(blk * PACKED).cast()) };
                let bytes = _mm512_cvtepu8_epi32(packed);
                let lo = _mm512_and_si512(bytes, _mm512_set1_epi32(0x0f));
                let hi = _mm512_srli_epi32::<4>(bytes);
                let (d, m) = (_mm512_set1_ps(d[blk]), _mm512_set1_ps(m[blk]));
                (
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), d, m),
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), d, m),
                )
            }
            Row::Q8 { q, d } => {
                // SAFETY: the caller keeps blk inside q (32 bytes a block).
                let (lo, hi) = unsafe {
                    let p = q.as_ptr().add(blk * BLOCK);
                    (_mm_loadu_si128(p.cast()), _mm_loadu_si128(p.add(16).cast()))
                };
                let d = _mm512_set1_ps(d[blk]);
                (
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)), d),
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)), d),
                )
            }
        }
    }

    /// See [`super::dot_pair`].
    ///
    /// # Safety
    /// AVX-512 F and BW; `x` holds `n` rows of `cols`; `blocks` blocks lie in every weight row
    /// and every activation row; the outputs hold `n` values (`out_b` when `b` is given).
    #[target_feature(enable = "avx512f,avx512bw,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn dot_pair(
        a: Row<'_>,
        b: Option<Row<'_>>,
        x: *const f32,
        n: usize,
        cols: usize,
        blocks: usize,
        out_a: &mut [f32],
        out_b: &mut [f32],
    ) {
        let mut t = 0;
        while t < n {
            // SAFETY: rows t.. lie inside x.
            let xt = unsafe { x.add(t * cols) };
            let from = t.min(out_b.len());
            let (oa, ob) = (&mut out_a[t..], &mut out_b[from..]);
            // SAFETY: as the caller promised, for the R rows from t.
            t += unsafe {
                match (n - t, b) {
                    (8.., Some(b)) => pair::<8>(&a, &b, xt, cols, blocks, oa, ob),
                    (4..=7, Some(b)) => pair::<4>(&a, &b, xt, cols, blocks, oa, ob),
                    (2 | 3, Some(b)) => pair::<2>(&a, &b, xt, cols, blocks, oa, ob),
                    (_, Some(b)) => pair::<1>(&a, &b, xt, cols, blocks, oa, ob),
                    (8.., None) => single::<8>(&a, xt, cols, blocks, oa),
                    (4..=7, None) => single::<4>(&a, xt, cols, blocks, oa),
                    (2 | 3, None) => single::<2>(&a, xt, cols, blocks, oa),
                    (_, None) => single::<1>(&a, xt, cols, blocks, oa),
                }
            };
        }
    }

    /// `R` activation rows against weight rows `a` and `b`. Returns `R`.
    ///
    /// # Safety
    /// As [`dot_pair`], for `R` rows from `x`.
    #[target_feature(enable = "avx512f,avx512bw,fma")]
    unsafe fn pair<const R: usize>(
        a: &Row<'_>,
        b: &Row<'_>,
        x: *const f32,
        cols: usize,
        blocks: usize,
        out_a: &mut [f32],
        out_b: &mut [f32],
    ) -> usize {
        let mut sa = [_mm512_setzero_ps(); R];
        let mut sb = [_mm512_setzero_ps(); R];
        for blk in 0..blocks {
            // SAFETY: blk < blocks, inside both rows.
            let (alo, ahi) = unsafe { widen(a, blk) };
            let (blo, bhi) = unsafe { widen(b, blk) };
            for t in 0..R {
                // SAFETY: row t < R and block blk lie inside x.
                let xr = unsafe { x.add(t * cols + blk * BLOCK) };
                let (xlo, xhi) = unsafe { (_mm512_loadu_ps(xr), _mm512_loadu_ps(xr.add(16))) };
                sa[t] = _mm512_fmadd_ps(ahi, xhi, _mm512_fmadd_ps(alo, xlo, sa[t]));
                sb[t] = _mm512_fmadd_ps(bhi, xhi, _mm512_fmadd_ps(blo, xlo, sb[t]));
            }
        }
        for t in 0..R {
            out_a[t] = _mm512_reduce_add_ps(sa[t]);
            out_b[t] = _mm512_reduce_add_ps(sb[t]);
        }
        R
    }

    /// `R` activation rows against weight row `a` alone (an odd last row), in the same order.
    ///
    /// # Safety
    /// As [`dot_pair`], for `R` rows from `x`.
    #[target_feature(enable = "avx512f,avx512bw,fma")]
    unsafe fn single<const R: usize>(
        a: &Row<'_>,
        x: *const f32,
        cols: usize,
        blocks: usize,
        out: &mut [f32],
    ) -> usize {
        let mut sa = [_mm512_setzero_ps(); R];
        for blk in 0..blocks {
            // SAFETY: blk < blocks, inside the row.
            let (alo, ahi) = unsafe { widen(a, blk) };
            for (t, s) in sa.iter_mut().enumerate() {
                // SAFETY: row t < R and block blk lie inside x.
                let xr = unsafe { x.add(t * cols + blk * BLOCK) };
                let (xlo, xhi) = unsafe { (_mm512_loadu_ps(xr), _mm512_loadu_ps(xr.add(16))) };
                *s = _mm512_fmadd_ps(ahi, xhi, _mm512_fmadd_ps(alo, xlo, *s));
            }
        }
        for (o, s) in out.iter_mut().zip(sa) {
            *o = _mm512_reduce_add_ps(s);
        }
        R
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(seed: u64, rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let blocks = rows * cols / BLOCK;
        let qs = (0..blocks * PACKED).map(|_| rng.u8(..)).collect();
        let d = (0..blocks).map(|_| rng.f32() * 0.1).collect();
        let m = (0..blocks).map(|_| rng.f32() * -0.5).collect();
        (qs, d, m)
    }

    fn row<'a>(c: &'a (Vec<u8>, Vec<f32>, Vec<f32>), r: usize, per_row: usize) -> Row<'a> {
        Row::Q4 {
            qs: &c.0[r * per_row * PACKED..(r + 1) * per_row * PACKED],
            d: &c.1[r * per_row..(r + 1) * per_row],
            m: &c.2[r * per_row..(r + 1) * per_row],
        }
    }

    #[test]
    fn four_bit_pairs_give_each_row_what_it_gives_alone_and_match_f32() {
        let cols = 256;
        let per_row = cols / BLOCK;
        let w = case(3, 2, cols);
        let (a, b) = (row(&w, 0, per_row), row(&w, 1, per_row));
        let mut rng = fastrand::Rng::with_seed(9);
        let x: Vec<f32> = (0..13 * cols).map(|_| rng.f32() * 2.0 - 1.0).collect();
        // Alone: one activation row at a time, one weight row at a time.
        let alone = |r: Row<'_>, t: usize| {
            let mut o = [0f32];
            dot_pair(
                r,
                None,
                &x[t * cols..(t + 1) * cols],
                1,
                cols,
                &mut o,
                &mut [],
            );
            o[0]
        };
        let mut dense = vec![0f32; 2 * cols];
        let q4 = super::super::q4::Q4 {
            d: w.1.clone(),
            m: w.2.clone(),
            qs: w.0.clone(),
        };
        q4.dequantize_rows(0..2, cols, &mut dense);
        for n in 1..=13 {
            let (mut oa, mut ob) = (vec![0f32; n], vec![0f32; n]);
            dot_pair(a, Some(b), &x, n, cols, &mut oa, &mut ob);
            let mut oc = vec![0f32; n];
            dot_pair(b, None, &x, n, cols, &mut oc, &mut []);
            for t in 0..n {
                assert_eq!(
                    oc[t].to_bits(),
                    ob[t].to_bits(),
                    "b alone, {n} rows, row {t}"
                );
                // The AVX2 fallback's one-row case sums in another order (production sends
                // one row to the two-level kernel instead), so bits are compared at AVX-512.
                if available() {
                    assert_eq!(
                        oa[t].to_bits(),
                        alone(a, t).to_bits(),
                        "row a, {n} rows, row {t}"
                    );
                    assert_eq!(
                        ob[t].to_bits(),
                        alone(b, t).to_bits(),
                        "row b, {n} rows, row {t}"
                    );
                }
                let xr = &x[t * cols..(t + 1) * cols];
                let exact: f32 = dense[..cols].iter().zip(xr).map(|(w, x)| w * x).sum();
                assert!(
                    (oa[t] - exact).abs() < 1e-3 * (1.0 + exact.abs()),
                    "{} vs {exact}",
                    oa[t]
                );
            }
        }
    }

    #[test]
    fn eight_bit_pairs_give_each_row_what_it_gives_alone_and_match_the_old_kernel() {
        let cols = 192;
        let per_row = cols / BLOCK;
        let mut rng = fastrand::Rng::with_seed(5);
        let q: Vec<i8> = (0..2 * cols).map(|_| rng.i8(-127..=127)).collect();
        let d: Vec<f32> = (0..2 * per_row).map(|_| rng.f32() * 0.02).collect();
        let row = |r: usize| Row::Q8 {
            q: &q[r * cols..(r + 1) * cols],
            d: &d[r * per_row..(r + 1) * per_row],
        };
        let x: Vec<f32> = (0..11 * cols).map(|_| rng.f32() * 2.0 - 1.0).collect();
        for n in 1..=11 {
            let (mut oa, mut ob) = (vec![0f32; n], vec![0f32; n]);
            dot_pair(row(0), Some(row(1)), &x, n, cols, &mut oa, &mut ob);
            for (r, got) in [(0, &oa), (1, &ob)] {
                let mut alone = vec![0f32; n];
                dot_pair(row(r), None, &x, n, cols, &mut alone, &mut []);
                let mut old = vec![0f32; n];
                super::super::q8::dot_rows(
                    &q[r * cols..(r + 1) * cols],
                    &d[r * per_row..(r + 1) * per_row],
                    &x,
                    n,
                    cols,
                    &mut old,
                );
                for t in 0..n {
                    assert_eq!(
                        got[t].to_bits(),
                        alone[t].to_bits(),
                        "row {r}, {n} rows, row {t}"
                    );
                    assert!(
                        (got[t] - old[t]).abs() < 1e-4,
                        "row {r}: {} vs {}",
                        got[t],
                        old[t]
                    );
                }
            }
        }
    }
}
