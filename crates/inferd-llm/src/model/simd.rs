//! The instruction set the decode kernels run with, chosen once at run time: AVX-512 (with
//! BW and VL) and FMA where the CPU has them, else AVX2 and FMA, else the portable build
//! (SSE2 on x86-64, whatever the target has elsewhere). The kernels are plain Rust; the
//! [`multiversion!`] macro compiles one copy of a kernel per level with that level's
//! features enabled, so the compiler vectorises each for its registers, and calls the copy
//! the CPU supports. The dispatch this macro writes is the only `unsafe` in the crate: calling
//! a `#[target_feature]` function is unsafe unless the features were checked, and they were.
//!
//! `INFERD_LLM_SIMD=portable|avx2|avx512` caps the level (tests and A/B benchmarks).

use std::sync::OnceLock;

/// A kernel build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Whatever the compilation target guarantees.
    Portable,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512 F, BW, VL and FMA.
    Avx512,
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("fma") {
            return Level::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Level::Avx2;
        }
    }
    Level::Portable
}

/// The level the kernels run at: the CPU's best, capped by `INFERD_LLM_SIMD`.
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = detect();
        let cap = match std::env::var("INFERD_LLM_SIMD").as_deref() {
            Ok("portable") => Level::Portable,
            Ok("avx2") => Level::Avx2,
            _ => Level::Avx512,
        };
        best.min(cap)
    })
}

/// Whether the integer kernels may use AVX-512 VNNI's `vpdpbusd`, which sums four byte
/// products into each 32-bit lane in one instruction where AVX2 needs `vpmaddubsw` and then
/// `vpmaddwd`: the CPU has it (the 256-bit form needs VL, which [`Level::Avx512`] implies) and
/// the level is not capped below AVX-512.
pub fn vnni() -> bool {
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            level() == Level::Avx512 && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Defines a function whose body is compiled once per [`Level`] and dispatched at run time.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(unsafe_code)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match $crate::model::simd::level() {
                    // SAFETY: `level()` returns Avx512 only where the CPU reported those features.
                    $crate::model::simd::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: likewise for AVX2 and FMA.
                    $crate::model::simd::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::model::simd::Level::Portable => {}
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use multiversion;

/// `exp(x)` for `x <= 0` (0 below -87), branch-free so it vectorises: `2^k · e^r` with
/// `k = round(x / ln 2)` and Cephes' degree-6 polynomial for `e^r` on `|r| <= ln 2 / 2`
/// (relative error ~2e-7).
#[inline(always)]
pub(crate) fn exp_to_zero(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so `k · ln 2` is subtracted without rounding error.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding then subtracting 1.5 · 2^23 rounds to the nearest integer in vector lanes.
    const ROUND: f32 = 12_582_912.0;
    let under = x < -87.0;
    let x = x.max(-87.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((k as i32 + 127) as u32) << 23);
    if under { 0.0 } else { e * scale }
}
