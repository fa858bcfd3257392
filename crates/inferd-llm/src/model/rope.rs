//! Rotary position embedding frequencies, with the context-extension schemes GGUF files
//! carry: linear position interpolation (`rope.scaling.type = linear`), YaRN
//! (`rope.scaling.type = yarn`: interpolate the low frequencies, keep the high ones, blend
//! between, and scale attention by `0.1 ln(factor) + 1`), and Llama 3.1's per-frequency
//! factors (the `rope_freqs.weight` tensor the converter precomputes).

use inferd_gguf::GgufFile;

use super::ModelError;

/// How positions are stretched past the trained context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Frequencies as trained.
    None,
    /// Every frequency divided by `factor`.
    Linear {
        /// The stretch.
        factor: f32,
    },
    /// YaRN ("YaRN: Efficient Context Window Extension", Peng et al. 2023).
    Yarn {
        /// The stretch.
        factor: f32,
        /// The context the model was trained on.
        original_context: usize,
        /// Rotations per original context above which a frequency is kept (32).
        beta_fast: f32,
        /// Rotations below which it is fully interpolated (1).
        beta_slow: f32,
        /// The attention scale (`0.1 ln(factor) + 1` unless the file says).
        attn_factor: f32,
    },
}

impl RopeScaling {
    /// The scaling `f`'s `llama.rope.scaling.*` metadata describes.
    pub fn from_gguf(f: &GgufFile) -> Result<RopeScaling, ModelError> {
        let float = |key: &str| f.arch_value(key).and_then(|v| v.as_f64()).map(|v| v as f32);
        let kind = f
            .arch_value("rope.scaling.type")
            .and_then(|v| v.as_str())
            .unwrap_or("none");
        let factor = float("rope.scaling.factor")
            .or_else(|| float("rope.scale_linear"))
            .unwrap_or(1.0);
        if !(factor.is_finite() && factor > 0.0) {
            return Err(ModelError::Unsupported(format!(
                "rope.scaling.factor {factor} is not a positive number"
            )));
        }
        match kind {
            "none" | "" => Ok(RopeScaling::None),
            _ if factor == 1.0 => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear { factor }),
            "yarn" => {
                let original_context = f
                    .arch_value("rope.scaling.original_context_length")
                    .and_then(|v| v.as_u64())
                    .ok_or_else(|| {
                        ModelError::Unsupported(
                            "YaRN scaling needs rope.scaling.original_context_length".into(),
                        )
                    })? as usize;
                Ok(RopeScaling::Yarn {
                    factor,
                    original_context,
                    beta_fast: float("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
                    beta_slow: float("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
                    attn_factor: float("rope.scaling.attn_factor")
                        .filter(|&a| a > 0.0 && a != 1.0)
                        .unwrap_or(0.1 * factor.ln() + 1.0),
                })
            }
            other => Err(ModelError::Unsupported(format!(
                "RoPE scaling '{other}' is not supported (none, linear, yarn and Llama 3.1's \
                 rope_freqs are)"
            ))),
        }
    }
}

/// The rotation frequencies of a head's `dims / 2` pairs and the factor rotated values are
/// multiplied by (1 but for YaRN); `freq_factors` (Llama 3.1's `rope_freqs`) divide them.
pub fn frequencies(
    base: f32,
    dims: usize,
    scaling: &RopeScaling,
    freq_factors: Option<&[f32]>,
) -> (Vec<f32>, f32) {
    let half = dims / 2;
    let plain: Vec<f32> = (0..half)
        .map(|i| base.powf(-((2 * i) as f32) / dims as f32))
        .collect();
    let (mut freqs, mscale) = match *scaling {
        RopeScaling::None => (plain, 1.0),
        RopeScaling::Linear { factor } => (plain.iter().map(|f| f / factor).collect(), 1.0),
        RopeScaling::Yarn {
            factor,
            original_context,
            beta_fast,
            beta_slow,
            attn_factor,
        } => {
            // The pair index at which a frequency makes `rotations` turns over the original
            // context.
            let pair_of = |rotations: f32| {
                dims as f32
                    * (original_context as f32 / (rotations * 2.0 * std::f32::consts::PI)).ln()
                    / (2.0 * base.ln())
            };
            let low = pair_of(beta_fast).floor().max(0.0);
            let high = pair_of(beta_slow).ceil().min(dims as f32 - 1.0);
            let high = if high == low { high + 0.001 } else { high };
            let freqs = plain
                .iter()
                .enumerate()
                .map(|(i, &f)| {
                    // 0 below `low` (keep the frequency), 1 above `high` (interpolate).
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    f / factor * ramp + f * (1.0 - ramp)
                })
                .collect();
            (freqs, attn_factor)
        }
    };
    if let Some(ff) = freq_factors {
        for (f, k) in freqs.iter_mut().zip(ff) {
            *f /= k;
        }
    }
    (freqs, mscale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_frequencies_fall_geometrically_from_one() {
        let (f, m) = frequencies(10_000.0, 64, &RopeScaling::None, None);
        assert_eq!((f.len(), m), (32, 1.0));
        assert_eq!(f[0], 1.0);
        assert!((f[16] - 10_000f32.powf(-0.5)).abs() < 1e-9);
        let (lin, _) = frequencies(10_000.0, 64, &RopeScaling::Linear { factor: 4.0 }, None);
        assert!(lin.iter().zip(&f).all(|(a, b)| (a * 4.0 - b).abs() < 1e-9));
    }

    /// Reference: Hugging Face transformers 5.25's `ROPE_INIT_FUNCTIONS["yarn"]` for head_dim
    /// 64, theta 10000, factor 4, original_max_position_embeddings 2048 gives these ratios of
    /// scaled to plain frequency (rounded to 4 places) and attention factor 1.138629436.
    #[test]
    fn yarn_matches_transformers() {
        const RATIOS: [f32; 32] = [
            1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.9423, 0.8846, 0.8269, 0.7692, 0.7115,
            0.6538, 0.5962, 0.5385, 0.4808, 0.4231, 0.3654, 0.3077, 0.25, 0.25, 0.25, 0.25, 0.25,
            0.25, 0.25, 0.25, 0.25, 0.25, 0.25,
        ];
        let s = RopeScaling::Yarn {
            factor: 4.0,
            original_context: 2048,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attn_factor: 0.1 * 4f32.ln() + 1.0,
        };
        let (plain, _) = frequencies(10_000.0, 64, &RopeScaling::None, None);
        let (f, m) = frequencies(10_000.0, 64, &s, None);
        assert!((m - 1.138_629_4).abs() < 1e-6);
        for (i, want) in RATIOS.iter().enumerate() {
            assert!(
                (f[i] / plain[i] - want).abs() < 1e-4,
                "pair {i}: {} vs {want}",
                f[i] / plain[i]
            );
        }
    }

    #[test]
    fn llama31_factors_divide_the_frequencies() {
        let (plain, _) = frequencies(500_000.0, 8, &RopeScaling::None, None);
        let (f, _) = frequencies(
            500_000.0,
            8,
            &RopeScaling::None,
            Some(&[1.0, 2.0, 4.0, 8.0]),
        );
        assert_eq!(
            f,
            vec![plain[0], plain[1] / 2.0, plain[2] / 4.0, plain[3] / 8.0]
        );
    }
}
