//! Activations in two 8-bit levels, for integer products with the file's 4-bit weights that
//! keep nearly f32's accuracy. Per block of 32: `x ≈ dx · (q1 + q2 / 254)` with `dx = max|x| / 127`,
//! `q1 = round(x / dx)` and `q2` the rounded remainder in 1/254ths of `dx` (the remainder is at
//! most half a step, so `q2` fits in ±127). The error is at most `dx / 508`, about 1.6e-5 of
//! the block's largest value (an outlier channel makes that the error of the block's small
//! values too): through every projection, SmolLM2's logits stay within 0.013-0.016 of the exact
//! model's with greedy ids unchanged (test_llm_reference.py), where one level
//! (`activations: int8`, llama.cpp's form) moves them by up to 1.
//!
//! Why: with f32 activations each 4-bit weight is widened to f32 before its multiply-add, and
//! perf showed one-stream decode spending its time on those conversions (compute-bound, not on
//! the weight loads). Here a block costs two `vpmaddubsw` and two `vpmaddwd`:
//! `Σ w·x = d·dx/254 · (254 · Σ q·q1 + Σ q·q2) + m · Σ x`, with `Σ x` summed exactly in f32.

use super::q8::BLOCK;

/// Bytes of packed 4-bit values per block.
const PACKED: usize = BLOCK / 2;

/// The second level's steps per step of the first.
const FINE: i32 = 254;

/// Activation rows in two 8-bit levels.
#[derive(Debug, Clone, Default)]
pub struct FineRows {
    /// First level, row after row.
    pub q1: Vec<i8>,
    /// Second level (the remainder in `d / 254` steps).
    pub q2: Vec<i8>,
    /// One scale per block, of the second level's steps (`dx / 254`).
    pub d: Vec<f32>,
    /// Each block's exact sum (what a 4-bit block's offset multiplies).
    pub s: Vec<f32>,
    /// Each block's `254 · Σ q1 + Σ q2`: the sum in second-level steps ([`super::x16`]'s
    /// 8-bit kernel takes it off its unsigned products).
    pub steps: Vec<i32>,
}

impl FineRows {
    /// `x` (rows of a multiple of [`BLOCK`]) in two levels.
    pub fn quantize(x: &[f32]) -> FineRows {
        let mut r = FineRows::default();
        #[cfg(target_arch = "x86_64")]
        if super::simd::level() == super::simd::Level::Avx512 {
            // SAFETY: the level says the CPU has AVX-512 F and BW.
            #[allow(unsafe_code)]
            unsafe {
                avx512::quantize_into(x, &mut r)
            };
            return r;
        }
        quantize_into(x, &mut r);
        r
    }

    /// Room for `values` more values (whole blocks).
    fn reserve(&mut self, values: usize) {
        let blocks = values / BLOCK;
        self.q1.reserve(values);
        self.q2.reserve(values);
        self.d.reserve(blocks);
        self.s.reserve(blocks);
        self.steps.reserve(blocks);
    }

    /// Row `t` (of `per_row` blocks): both levels, scales and sums.
    pub fn row(&self, t: usize, per_row: usize) -> (&[i8], &[i8], &[f32], &[f32]) {
        let (b, v) = (
            t * per_row..(t + 1) * per_row,
            t * per_row * BLOCK..(t + 1) * per_row * BLOCK,
        );
        (
            &self.q1[v.clone()],
            &self.q2[v],
            &self.d[b.clone()],
            &self.s[b],
        )
    }
}

super::simd::multiversion! {
/// [`FineRows::quantize`]'s work, per instruction set (rounding is then one vector
/// instruction, not a call per value).
fn quantize_into(x: &[f32], r: &mut FineRows) {
    r.reserve(x.len());
    // Lane-wise maxima and sums (the AVX-512 build has its own kernel, [`avx512`]).
    for block in x.chunks_exact(BLOCK) {
        let (mut hi, mut sum) = ([0f32; 16], [0f32; 16]);
        for half in block.chunks_exact(16) {
            for i in 0..16 {
                hi[i] = if half[i].abs() > hi[i] { half[i].abs() } else { hi[i] };
                sum[i] += half[i];
            }
        }
        let max = hi.iter().fold(0f32, |m, &v| if v > m { v } else { m });
        let d = max / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        r.d.push(d / FINE as f32);
        r.s.push(sum.iter().sum());
        let (mut a, mut c) = ([0i8; BLOCK], [0i8; BLOCK]);
        for ((v, a), c) in block.iter().zip(&mut a).zip(&mut c) {
            let scaled = v * inv;
            let q1 = scaled.round().clamp(-127.0, 127.0);
            *a = q1 as i32 as i8;
            *c = ((scaled - q1) * FINE as f32).round().clamp(-127.0, 127.0) as i32 as i8;
        }
        let total = |v: &[i8; BLOCK]| v.iter().map(|&q| i32::from(q)).sum::<i32>();
        r.steps.push(FINE * total(&a) + total(&c));
        r.q1.extend_from_slice(&a);
        r.q2.extend_from_slice(&c);
    }
}
}

/// [`quantize_into`] in AVX-512 registers, a block in two: the compiler left that loop's
/// maxima, sums and float-to-byte casts a value at a time (perf: 6% of an eight-stream step,
/// on the thread that waits for none). The same values: rounding half away from zero as
/// `f32::round` does; only the block sum is added in another order.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BLOCK, FINE, FineRows};

    /// `round(x)`, halves away from zero.
    #[target_feature(enable = "avx512f,avx512bw")]
    fn round(x: __m512) -> __m512 {
        let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
        let half = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(
            _mm512_abs_ps(_mm512_sub_ps(x, t)),
            _mm512_set1_ps(0.5),
        );
        let sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN));
        let one = _mm512_castsi512_ps(_mm512_or_si512(
            sign,
            _mm512_castps_si512(_mm512_set1_ps(1.0)),
        ));
        _mm512_mask_add_ps(t, half, t, one)
    }

    /// Clamped to ±127, as bytes, and their sum.
    #[target_feature(enable = "avx512f,avx512bw")]
    fn bytes(v: __m512) -> (__m128i, __m512i) {
        let c = _mm512_min_ps(
            _mm512_max_ps(v, _mm512_set1_ps(-127.0)),
            _mm512_set1_ps(127.0),
        );
        let i = _mm512_cvttps_epi32(c);
        (_mm512_cvtepi32_epi8(i), i)
    }

    /// # Safety
    /// AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_into(x: &[f32], r: &mut FineRows) {
        r.reserve(x.len());
        for block in x.chunks_exact(BLOCK) {
            // SAFETY: a block holds 32 values.
            let (a, b) = unsafe {
                (
                    _mm512_loadu_ps(block.as_ptr()),
                    _mm512_loadu_ps(block.as_ptr().add(16)),
                )
            };
            let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
            let d = max / 127.0;
            let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            r.d.push(d / FINE as f32);
            r.s.push(_mm512_reduce_add_ps(_mm512_add_ps(a, b)));
            let (mut q1, mut q2) = ([0i8; BLOCK], [0i8; BLOCK]);
            let mut steps = 0;
            for (h, v) in [a, b].into_iter().enumerate() {
                let scaled = _mm512_mul_ps(v, inv);
                let first = round(scaled);
                let (b1, i1) = bytes(first);
                let rest = _mm512_mul_ps(_mm512_sub_ps(scaled, first), _mm512_set1_ps(FINE as f32));
                let (b2, i2) = bytes(round(rest));
                // SAFETY: each half of q1 and q2 holds 16 bytes.
                unsafe {
                    _mm_storeu_si128(q1.as_mut_ptr().add(16 * h).cast(), b1);
                    _mm_storeu_si128(q2.as_mut_ptr().add(16 * h).cast(), b2);
                }
                steps += FINE * _mm512_reduce_add_epi32(i1) + _mm512_reduce_add_epi32(i2);
            }
            r.steps.push(steps);
            r.q1.extend_from_slice(&q1);
            r.q2.extend_from_slice(&q2);
        }
    }
}

/// One 4-bit row (`qs`, scales `d`, offsets `m`) against one activation row in two levels.
pub fn dot(qs: &[u8], d: &[f32], m: &[f32], x: (&[i8], &[i8], &[f32], &[f32])) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::simd::vnni() {
        // SAFETY: vnni() is true only where the CPU has AVX-512 F, BW, VL, VNNI and FMA.
        #[allow(unsafe_code)]
        return unsafe { vnni::dot(qs, d, m, x) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() >= super::simd::Level::Avx2 {
        // SAFETY: level() reports Avx2 or better only where the CPU has AVX2 and FMA.
        #[allow(unsafe_code)]
        return unsafe { avx2::dot(qs, d, m, x) };
    }
    portable(qs, d, m, x)
}

fn portable(
    qs: &[u8],
    d: &[f32],
    m: &[f32],
    (q1, q2, xd, xs): (&[i8], &[i8], &[f32], &[f32]),
) -> f32 {
    let mut sum = 0f32;
    for (b, ((q, a), c)) in qs
        .chunks_exact(PACKED)
        .zip(q1.chunks_exact(BLOCK))
        .zip(q2.chunks_exact(BLOCK))
        .enumerate()
    {
        let (mut s1, mut s2) = (0i32, 0i32);
        for (j, &byte) in q.iter().enumerate() {
            let (lo, hi) = (i32::from(byte & 0x0f), i32::from(byte >> 4));
            s1 += lo * i32::from(a[j]) + hi * i32::from(a[j + PACKED]);
            s2 += lo * i32::from(c[j]) + hi * i32::from(c[j + PACKED]);
        }
        sum += (s1 * FINE + s2) as f32 * (d[b] * xd[b]) + m[b] * xs[b];
    }
    sum
}

/// The x86 kernel of [`dot`], written once and compiled per instruction set: `$features`
/// enabled, and `$sums` turning a block's 32 weight nibbles `q` and the two levels' 32 bytes
/// `a` and `c` into eight 32-bit lanes of `254 · Σ q·a + Σ q·c`, four products each.
#[cfg(target_arch = "x86_64")]
macro_rules! two_level_kernel {
    ($(#[$m:meta])* $name:ident, $features:literal, $sums:expr) => {
        $(#[$m])*
        #[target_feature(enable = $features)]
        pub unsafe fn $name(
            qs: &[u8],
            d: &[f32],
            m: &[f32],
            (q1, q2, xd, xs): (&[i8], &[i8], &[f32], &[f32]),
        ) -> f32 {
            let blocks = (qs.len() / PACKED)
                .min(q1.len() / BLOCK)
                .min(q2.len() / BLOCK)
                .min(d.len())
                .min(m.len())
                .min(xd.len())
                .min(xs.len());
            let low = _mm256_set1_epi8(0x0f);
            // Block b's products added into `acc`.
            let step = |b: usize, acc: __m256| {
                // SAFETY: block b lies inside every slice (b < blocks).
                let (packed, a, c) = unsafe {
                    (
                        _mm_loadu_si128(qs.as_ptr().add(b * PACKED).cast()),
                        _mm256_loadu_si256(q1.as_ptr().add(b * BLOCK).cast()),
                        _mm256_loadu_si256(q2.as_ptr().add(b * BLOCK).cast()),
                    )
                };
                // Low halves are values 0..16, high halves 16..32.
                let q =
                    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low);
                let s: __m256i = $sums(q, a, c);
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d[b] * xd[b]), acc)
            };
            // Two sums, even and odd blocks, so consecutive blocks do not wait on each other.
            // Named, not an array indexed by `b & 1`: that kept them in memory, and perf put a
            // third of the kernel on the store each block made.
            let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut b = 0;
            while b + 1 < blocks {
                even = step(b, even);
                odd = step(b + 1, odd);
                b += 2;
            }
            if b < blocks {
                even = step(b, even);
            }
            // The offsets' part, eight blocks a vector, added into the same final sum. (It was
            // a call to the dispatched f32 dot product per weight row, whose sixteen lanes then
            // summed one after another: 11% of one-stream decode for ~20 blocks a row.)
            let mut off = _mm256_setzero_ps();
            let mut k = 0;
            while k + 8 <= blocks {
                // SAFETY: k + 8 <= blocks <= m.len(), xs.len().
                let (mv, sv) = unsafe {
                    (
                        _mm256_loadu_ps(m.as_ptr().add(k)),
                        _mm256_loadu_ps(xs.as_ptr().add(k)),
                    )
                };
                off = _mm256_fmadd_ps(mv, sv, off);
                k += 8;
            }
            let tail: f32 = m[k..blocks].iter().zip(&xs[k..blocks]).map(|(a, b)| a * b).sum();
            let acc = _mm256_add_ps(_mm256_add_ps(even, odd), off);
            let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1))) + tail
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, FINE, PACKED};

    two_level_kernel!(
        /// AVX2: byte pairs into 16 bits (`vpmaddubsw`; 2 · 15 · 127 fits), pairs into 32
        /// (`vpmaddwd`, which takes the first level's 254 on the way).
        ///
        /// # Safety
        /// The CPU must have AVX2 and FMA.
        dot,
        "avx2,fma",
        |q, a, c| _mm256_add_epi32(
            _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), _mm256_set1_epi16(FINE as i16)),
            _mm256_madd_epi16(_mm256_maddubs_epi16(q, c), _mm256_set1_epi16(1)),
        )
    );
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod vnni {
    use std::arch::x86_64::*;

    use super::{BLOCK, PACKED};

    two_level_kernel!(
        /// AVX-512 VNNI: four byte products into each 32-bit lane in one `vpdpbusd`; the
        /// first level's sums (at most 4 · 15 · 127) times 254, as 256 − 2, are where the
        /// second level's start.
        ///
        /// # Safety
        /// The CPU must have AVX-512 F, BW, VL and VNNI, and FMA.
        dot,
        "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni",
        |q, a, c| {
            let s1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, a);
            let s1 = _mm256_sub_epi32(_mm256_slli_epi32(s1, 8), _mm256_slli_epi32(s1, 1));
            _mm256_dpbusd_epi32(s1, q, c)
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_avx512_quantizer_gives_the_portable_ones_levels() {
        let mut rng = fastrand::Rng::with_seed(4);
        let mut x: Vec<f32> = (0..40 * BLOCK).map(|_| (rng.f32() - 0.5) * 6.0).collect();
        // Exact halves after scaling, a zero block, and one big value among small ones.
        x[..BLOCK]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i as f32 - 15.5) * 127.0 / 16.0);
        x[BLOCK..2 * BLOCK].fill(0.0);
        x[2 * BLOCK] = 1e4;
        let fast = FineRows::quantize(&x);
        let mut plain = FineRows::default();
        quantize_into(&x, &mut plain);
        assert_eq!(fast.q1, plain.q1);
        assert_eq!(fast.q2, plain.q2);
        assert_eq!(fast.d, plain.d);
        assert_eq!(fast.steps, plain.steps);
        for (a, b) in fast.s.iter().zip(&plain.s) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
    use crate::model::q4::Q4;

    #[test]
    fn two_levels_hold_activations_to_a_508th_of_a_step() {
        let mut rng = fastrand::Rng::with_seed(9);
        let x: Vec<f32> = (0..4 * BLOCK).map(|_| (rng.f32() - 0.5) * 40.0).collect();
        let f = FineRows::quantize(&x);
        for (i, &v) in x.iter().enumerate() {
            let d = f.d[i / BLOCK];
            let back = d * (f32::from(f.q1[i]) * FINE as f32 + f32::from(f.q2[i]));
            assert!((back - v).abs() <= d * 0.51, "{v} came back as {back}");
        }
        let zero = FineRows::quantize(&[0.0; BLOCK]);
        assert_eq!((zero.d[0], zero.s[0]), (0.0, 0.0));
        assert!(zero.q1.iter().chain(&zero.q2).all(|&q| q == 0));
    }

    #[test]
    fn the_two_level_kernels_agree_and_match_f32() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut raw = Vec::new();
        for _ in 0..48 {
            raw.extend_from_slice(&half::f16::from_f32(rng.f32() * 0.1 + 0.01).to_le_bytes());
            raw.extend_from_slice(&half::f16::from_f32(rng.f32() * -0.5).to_le_bytes());
            raw.extend((0..PACKED).map(|_| rng.u8(..)));
        }
        let q = Q4::from_gguf(3, &raw).expect("whole blocks");
        let mut w = vec![0f32; 48 * BLOCK];
        q.dequantize_rows(0..1, 48 * BLOCK, &mut w);
        let x: Vec<f32> = (0..48 * BLOCK).map(|_| rng.f32() * 6.0 - 3.0).collect();
        let f = FineRows::quantize(&x);
        let (qs, d, m) = q.row(0, 48);
        let fast = dot(qs, d, m, f.row(0, 48));
        let slow = portable(qs, d, m, f.row(0, 48));
        // Every kernel this CPU can run gives the same integer sums.
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: checked just above.
                let v = unsafe { avx2::dot(qs, d, m, f.row(0, 48)) };
                assert!(
                    (v - slow).abs() <= 1e-5 * slow.abs().max(1.0),
                    "avx2 {v} {slow}"
                );
            }
            if crate::model::simd::vnni() {
                // SAFETY: vnni() checked the features.
                let v = unsafe { vnni::dot(qs, d, m, f.row(0, 48)) };
                assert!(
                    (v - slow).abs() <= 1e-5 * slow.abs().max(1.0),
                    "vnni {v} {slow}"
                );
            }
        }
        let exact: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
        let scale: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        assert!((fast - slow).abs() <= 1e-5 * scale, "{fast} {slow}");
        assert!((fast - exact).abs() < 1e-4 * scale, "{fast} vs {exact}");
    }
}
