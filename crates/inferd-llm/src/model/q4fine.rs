//! Activations in two 8-bit levels, for integer products with the file's 4-bit weights that
//! keep f32's accuracy. Per block of 32: `x ≈ dx · (q1 + q2 / 254)` with `dx = max|x| / 127`,
//! `q1 = round(x / dx)` and `q2` the rounded remainder in 1/254ths of `dx` (the remainder is at
//! most half a step, so `q2` fits in ±127). The error is at most `dx / 508`, about 1.6e-5 of
//! the block's largest value: greedy SmolLM2 logits stay within 1e-3 of the exact model's
//! (test_llm_reference.py), where one level (`activations: int8`) moves them by up to 1.
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
}

impl FineRows {
    /// `x` (rows of a multiple of [`BLOCK`]) in two levels.
    pub fn quantize(x: &[f32]) -> FineRows {
        let mut r = FineRows::default();
        quantize_into(x, &mut r);
        r
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
    let blocks = x.len() / BLOCK;
    r.q1.reserve(x.len());
    r.q2.reserve(x.len());
    r.d.reserve(blocks);
    r.s.reserve(blocks);
    for block in x.chunks_exact(BLOCK) {
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = max / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        r.d.push(d / FINE as f32);
        r.s.push(block.iter().sum());
        let (mut a, mut c) = ([0i8; BLOCK], [0i8; BLOCK]);
        for ((v, a), c) in block.iter().zip(&mut a).zip(&mut c) {
            let scaled = v * inv;
            let q1 = scaled.round().clamp(-127.0, 127.0);
            *a = q1 as i8;
            *c = ((scaled - q1) * FINE as f32).round().clamp(-127.0, 127.0) as i8;
        }
        r.q1.extend_from_slice(&a);
        r.q2.extend_from_slice(&c);
    }
}
}

/// One 4-bit row (`qs`, scales `d`, offsets `m`) against one activation row in two levels.
pub fn dot(qs: &[u8], d: &[f32], m: &[f32], x: (&[i8], &[i8], &[f32], &[f32])) -> f32 {
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

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, FINE, PACKED};

    /// The AVX2 kernel of [`super::dot`].
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(
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
        let ones = _mm256_set1_epi16(1);
        let fine = _mm256_set1_epi16(FINE as i16);
        // Two sums, even and odd blocks, so consecutive blocks do not wait on each other.
        let mut acc = [_mm256_setzero_ps(); 2];
        for b in 0..blocks {
            // SAFETY: block b lies inside every slice (b < blocks).
            let (packed, a, c) = unsafe {
                (
                    _mm_loadu_si128(qs.as_ptr().add(b * PACKED).cast()),
                    _mm256_loadu_si256(q1.as_ptr().add(b * BLOCK).cast()),
                    _mm256_loadu_si256(q2.as_ptr().add(b * BLOCK).cast()),
                )
            };
            // Low halves are values 0..16, high halves 16..32.
            let q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low);
            // Pairs of products fit 16 bits: 2 · 15 · 127.
            let s = _mm256_add_epi32(
                _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), fine),
                _mm256_madd_epi16(_mm256_maddubs_epi16(q, c), ones),
            );
            let scale = _mm256_set1_ps(d[b] * xd[b]);
            acc[b & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[b & 1]);
        }
        // The offsets' part, vectorised apart from the blocks' chain.
        let offset = crate::model::forward::dot(&m[..blocks], &xs[..blocks]);
        let acc = _mm256_add_ps(acc[0], acc[1]);
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1))) + offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let exact: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
        let scale: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        assert!((fast - slow).abs() <= 1e-5 * scale, "{fast} {slow}");
        assert!((fast - exact).abs() < 1e-4 * scale, "{fast} vs {exact}");
    }
}
