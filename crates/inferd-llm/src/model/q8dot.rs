//! Integer dot products for decode: 8-bit weight blocks against activations quantized to
//! 8-bit blocks of the same width (one f32 scale each), as llama.cpp's Q8_0 x Q8_0 products
//! do. Per block of 32 the AVX2 kernel multiplies bytes in pairs into 16 bits
//! (`vpmaddubsw`), sums pairs into 32 bits (`vpmaddwd`) and scales once: about half the
//! instructions of widening every weight to f32, which is what the decode profile spent its
//! time on (bench/results/llm-kernels-2026-12-06.md). The portable path computes the same
//! integers, so the results agree to the last bit of the f32 sums' order.

use super::q8::BLOCK;

/// Activation rows in 8-bit blocks.
#[derive(Debug, Clone, Default)]
pub struct QRows {
    /// The values, row after row.
    pub q: Vec<i8>,
    /// One scale per block, row after row.
    pub d: Vec<f32>,
    /// Each block's sum, scaled: `d · Σ q` (what a 4-bit block's offset multiplies).
    pub s: Vec<f32>,
}

impl QRows {
    /// `x` (rows of `cols`, a multiple of [`BLOCK`]) quantized.
    pub fn quantize(x: &[f32]) -> QRows {
        let mut r = QRows {
            q: Vec::with_capacity(x.len()),
            d: Vec::with_capacity(x.len() / BLOCK),
            s: Vec::with_capacity(x.len() / BLOCK),
        };
        super::q8::quantize_into(x, &mut r.q, &mut r.d);
        r.s.extend(
            r.q.chunks_exact(BLOCK)
                .zip(&r.d)
                .map(|(q, d)| q.iter().map(|&v| i32::from(v)).sum::<i32>() as f32 * d),
        );
        r
    }
}

/// `Σ_blocks (Σ w·x) · dw · dx` over one weight row and one activation row.
pub fn dot(wq: &[i8], wd: &[f32], xq: &[i8], xd: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::simd::vnni() {
        // SAFETY: vnni() is true only where the CPU has AVX-512 F, BW, VL, VNNI and FMA.
        #[allow(unsafe_code)]
        return unsafe { vnni::dot(wq, wd, xq, xd) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() >= super::simd::Level::Avx2 {
        // SAFETY: level() reports Avx2 or better only where the CPU has AVX2 and FMA.
        #[allow(unsafe_code)]
        return unsafe { avx2::dot(wq, wd, xq, xd) };
    }
    portable(wq, wd, xq, xd)
}

fn portable(wq: &[i8], wd: &[f32], xq: &[i8], xd: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for ((w, x), (dw, dx)) in wq
        .chunks_exact(BLOCK)
        .zip(xq.chunks_exact(BLOCK))
        .zip(wd.iter().zip(xd))
    {
        let mut lanes = [0i32; 8];
        for (i, (a, b)) in w.iter().zip(x).enumerate() {
            lanes[(i / 4) % 8] += i32::from(*a) * i32::from(*b);
        }
        let d = dw * dx;
        for (a, l) in acc.iter_mut().zip(lanes) {
            *a += l as f32 * d;
        }
    }
    acc.iter().sum()
}

/// [`dot`] on x86, written once and compiled per instruction set: `$features` enabled, and
/// `$sums` turning 32 unsigned weight magnitudes and 32 signed activation bytes into eight
/// 32-bit sums of four products.
#[cfg(target_arch = "x86_64")]
macro_rules! q8_q8_kernel {
    ($(#[$m:meta])* $name:ident, $features:literal, $sums:expr) => {
        $(#[$m])*
        #[target_feature(enable = $features)]
        pub unsafe fn $name(wq: &[i8], wd: &[f32], xq: &[i8], xd: &[f32]) -> f32 {
            let blocks = (wq.len() / BLOCK)
                .min(xq.len() / BLOCK)
                .min(wd.len())
                .min(xd.len());
            let mut acc = _mm256_setzero_ps();
            for b in 0..blocks {
                // SAFETY: block b lies inside both slices (b < blocks, each BLOCK = 32 bytes).
                let (w, x) = unsafe {
                    (
                        _mm256_loadu_si256(wq.as_ptr().add(b * BLOCK).cast()),
                        _mm256_loadu_si256(xq.as_ptr().add(b * BLOCK).cast()),
                    )
                };
                // |w| as unsigned bytes times x carrying w's sign.
                let s: __m256i = $sums(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
                let sums = _mm256_cvtepi32_ps(s);
                acc = _mm256_fmadd_ps(sums, _mm256_set1_ps(wd[b] * xd[b]), acc);
            }
            let hi = _mm256_extractf128_ps(acc, 1);
            let s = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::BLOCK;

    q8_q8_kernel!(
        /// The AVX2 kernel: pairs summed into 16 bits (127 · 127 · 2 fits), then into 32.
        /// Weights of -128 (which no quantizer here writes) would read as +128.
        ///
        /// # Safety
        /// The CPU must have AVX2 and FMA.
        dot,
        "avx2,fma",
        |w, x| _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
    );
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod vnni {
    use std::arch::x86_64::*;

    use super::BLOCK;

    q8_q8_kernel!(
        /// The AVX-512 VNNI kernel: four products into each 32-bit lane in one `vpdpbusd`.
        ///
        /// # Safety
        /// The CPU must have AVX-512 F, BW, VL and VNNI, and FMA.
        dot,
        "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni",
        |w, x| _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_integer_kernels_agree_with_each_other_and_with_f32() {
        let mut rng = fastrand::Rng::with_seed(11);
        let w: Vec<f32> = (0..576).map(|_| rng.f32() * 2.0 - 1.0).collect();
        let x: Vec<f32> = (0..576).map(|_| rng.f32() * 6.0 - 3.0).collect();
        let qw = super::super::q8::quantize(&w);
        let qx = QRows::quantize(&x);
        let fast = dot(&qw.q, &qw.d, &qx.q, &qx.d);
        let slow = portable(&qw.q, &qw.d, &qx.q, &qx.d);
        assert!(
            (fast - slow).abs() <= 1e-4 * slow.abs().max(1.0),
            "{fast} {slow}"
        );
        let exact: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
        let scale: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        assert!((fast - exact).abs() < 0.01 * scale, "{fast} vs {exact}");
    }

    #[test]
    fn extreme_values_do_not_saturate() {
        // Every product 127 * 127 (or its negative): the 16-bit pair sums sit at their limit.
        let wq = vec![127i8; 64];
        let xq: Vec<i8> = (0..64)
            .map(|i| if i % 3 == 0 { -127 } else { 127 })
            .collect();
        let want: i32 = wq
            .iter()
            .zip(&xq)
            .map(|(a, b)| i32::from(*a) * i32::from(*b))
            .sum();
        let got = dot(&wq, &[1.0, 1.0], &xq, &[1.0, 1.0]);
        assert_eq!(got, want as f32);
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: checked just above (`dot` runs VNNI where the CPU has it).
            let got = unsafe { avx2::dot(&wq, &[1.0, 1.0], &xq, &[1.0, 1.0]) };
            assert_eq!(got, want as f32);
        }
        let neg: Vec<i8> = wq.iter().map(|v| -v).collect();
        assert_eq!(dot(&neg, &[1.0, 1.0], &xq, &[1.0, 1.0]), -want as f32);
    }
}
