//! A/B statistics on outcome feedback: per-arm summaries, confidence intervals, the
//! two-proportion z-test (conversions) and Welch's t-test (numeric outcomes), and the samples
//! still needed for a minimum detectable effect. Distributions come from `statrs`.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// The power the samples-needed estimate plans for (the usual 80%).
pub const POWER: f64 = 0.8;

/// Running mean and variance of one arm's numeric outcomes (Welford's update: one pass,
/// stable, a few numbers of state, so counts persist cheaply across restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Outcomes seen.
    pub n: u64,
    /// Their mean.
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
}

impl Moments {
    /// Adds one outcome.
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    /// Both sets of outcomes together (Chan et al.'s pairwise update: exact, so replicas'
    /// counts can be summed in any order).
    pub fn merged(&self, o: &Moments) -> Moments {
        let n = self.n + o.n;
        if n == 0 {
            return Moments::default();
        }
        let d = o.mean - self.mean;
        Moments {
            n,
            mean: self.mean + d * o.n as f64 / n as f64,
            m2: self.m2 + o.m2 + d * d * self.n as f64 * o.n as f64 / n as f64,
        }
    }

    /// The sample variance; `None` under two outcomes.
    pub fn variance(&self) -> Option<f64> {
        (self.n >= 2).then(|| self.m2 / (self.n - 1) as f64)
    }

    /// For 0/1 outcomes: the successes.
    pub fn successes(&self) -> u64 {
        (self.mean * self.n as f64).round() as u64
    }
}

/// A test of arm B against arm A.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// `two_proportion_z` or `welch_t`.
    pub test: &'static str,
    /// B's rate or mean minus A's.
    pub difference: f64,
    /// The confidence interval of the difference at 1 - alpha.
    pub ci: [f64; 2],
    /// The test statistic.
    pub statistic: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// `p_value < alpha`.
    pub significant: bool,
}

fn normal() -> Normal {
    // Mean 0, sd 1 are valid parameters; this cannot fail.
    Normal::standard()
}

fn z_quantile(p: f64) -> f64 {
    normal().inverse_cdf(p)
}

/// The Wilson score interval of a proportion at 1 - `alpha`; `None` without trials.
pub fn proportion_ci(successes: u64, trials: u64, alpha: f64) -> Option<[f64; 2]> {
    if trials == 0 {
        return None;
    }
    let n = trials as f64;
    let p = successes as f64 / n;
    let z = z_quantile(1.0 - alpha / 2.0);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / (1.0 + z * z / n);
    Some([centre - half, centre + half])
}

/// The t interval of a mean at 1 - `alpha`; `None` under two outcomes.
pub fn mean_ci(m: &Moments, alpha: f64) -> Option<[f64; 2]> {
    let var = m.variance()?;
    let t = StudentsT::new(0.0, 1.0, (m.n - 1) as f64).ok()?;
    let half = t.inverse_cdf(1.0 - alpha / 2.0) * (var / m.n as f64).sqrt();
    Some([m.mean - half, m.mean + half])
}

/// Two-proportion z-test of B's conversion rate against A's (pooled standard error for the
/// test, unpooled for the interval). `None` while either arm has no trials or every outcome
/// is the same.
pub fn two_proportion_z(a: (u64, u64), b: (u64, u64), alpha: f64) -> Option<Comparison> {
    let ((xa, na), (xb, nb)) = (a, b);
    if na == 0 || nb == 0 {
        return None;
    }
    let (pa, pb) = (xa as f64 / na as f64, xb as f64 / nb as f64);
    let pooled = (xa + xb) as f64 / (na + nb) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / na as f64 + 1.0 / nb as f64)).sqrt();
    if se == 0.0 {
        return None;
    }
    let z = (pb - pa) / se;
    let p_value = 2.0 * (1.0 - normal().cdf(z.abs()));
    let se_diff = (pa * (1.0 - pa) / na as f64 + pb * (1.0 - pb) / nb as f64).sqrt();
    let q = z_quantile(1.0 - alpha / 2.0);
    Some(Comparison {
        test: "two_proportion_z",
        difference: pb - pa,
        ci: [pb - pa - q * se_diff, pb - pa + q * se_diff],
        statistic: z,
        p_value,
        significant: p_value < alpha,
    })
}

/// Welch's t-test of B's mean against A's (no equal-variance assumption). `None` while either
/// arm has under two outcomes or both have no spread.
pub fn welch_t(a: &Moments, b: &Moments, alpha: f64) -> Option<Comparison> {
    let (va, vb) = (a.variance()? / a.n as f64, b.variance()? / b.n as f64);
    let se2 = va + vb;
    if se2 <= 0.0 {
        return None;
    }
    let df = se2 * se2 / (va * va / (a.n - 1) as f64 + vb * vb / (b.n - 1) as f64);
    let t_dist = StudentsT::new(0.0, 1.0, df).ok()?;
    let diff = b.mean - a.mean;
    let t = diff / se2.sqrt();
    let p_value = 2.0 * (1.0 - t_dist.cdf(t.abs()));
    let q = t_dist.inverse_cdf(1.0 - alpha / 2.0);
    Some(Comparison {
        test: "welch_t",
        difference: diff,
        ci: [diff - q * se2.sqrt(), diff + q * se2.sqrt()],
        statistic: t,
        p_value,
        significant: p_value < alpha,
    })
}

/// Samples per arm for a two-sided test at `alpha` with 80% power to detect a conversion
/// rate moving from `base` by `effect` (absolute).
pub fn samples_for_proportion(base: f64, effect: f64, alpha: f64) -> Option<u64> {
    let p2 = base + effect;
    if effect == 0.0 || !(0.0..=1.0).contains(&base) || !(0.0..=1.0).contains(&p2) {
        return None;
    }
    let mid = (base + p2) / 2.0;
    let za = z_quantile(1.0 - alpha / 2.0);
    let zb = z_quantile(POWER);
    let num =
        za * (2.0 * mid * (1.0 - mid)).sqrt() + zb * (base * (1.0 - base) + p2 * (1.0 - p2)).sqrt();
    Some((num * num / (effect * effect)).ceil() as u64)
}

/// Samples per arm to detect a mean moving by `effect` when outcomes have standard
/// deviation `sd` (two-sided, `alpha`, 80% power).
pub fn samples_for_mean(sd: f64, effect: f64, alpha: f64) -> Option<u64> {
    if effect == 0.0 || sd.is_nan() || sd < 0.0 {
        return None;
    }
    let z = z_quantile(1.0 - alpha / 2.0) + z_quantile(POWER);
    Some((2.0 * z * z * sd * sd / (effect * effect)).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::draws;

    // Reference values computed with scipy.stats (ttest_ind(equal_var=False), norm) on the
    // same inputs.

    #[test]
    fn two_proportion_z_matches_the_reference() {
        let c = two_proportion_z((200, 1000), (250, 1000), 0.05).unwrap();
        assert!((c.statistic - 2.677_397_763).abs() < 1e-6, "{c:?}");
        assert!((c.p_value - 0.007_419_649).abs() < 1e-6, "{c:?}");
        assert!(c.significant);
        assert!((c.difference - 0.05).abs() < 1e-12);
        assert!(c.ci[0] > 0.0 && c.ci[1] < 0.1, "{c:?}");
    }

    #[test]
    fn welch_t_matches_the_reference() {
        let mut a = Moments::default();
        let mut b = Moments::default();
        [1.0, 2.0, 3.0, 4.0, 5.0].iter().for_each(|x| a.push(*x));
        [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
            .iter()
            .for_each(|x| b.push(*x));
        let c = welch_t(&a, &b, 0.05).unwrap();
        assert!((c.statistic - 2.376_354_103).abs() < 1e-6, "{c:?}");
        assert!((c.p_value - 0.049_284_338).abs() < 1e-5, "{c:?}");
        assert!((c.ci[0] - 0.016_531_304).abs() < 1e-4 && (c.ci[1] - 7.983_468_696).abs() < 1e-4);
    }

    #[test]
    fn intervals_and_sample_sizes_match_the_reference() {
        let ci = proportion_ci(200, 1000, 0.05).unwrap();
        assert!((ci[0] - 0.176_377_090).abs() < 1e-6 && (ci[1] - 0.225_918_965).abs() < 1e-6);
        assert_eq!(samples_for_proportion(0.10, 0.02, 0.05), Some(3841));
        assert_eq!(samples_for_mean(2.0, 0.5, 0.05), Some(252));
        assert_eq!(samples_for_proportion(0.5, 0.0, 0.05), None);
    }

    #[test]
    fn nothing_to_test_is_none_not_a_number() {
        assert!(two_proportion_z((0, 0), (1, 10), 0.05).is_none());
        assert!(two_proportion_z((0, 10), (0, 10), 0.05).is_none());
        let one = Moments {
            n: 1,
            mean: 3.0,
            m2: 0.0,
        };
        assert!(welch_t(&one, &one, 0.05).is_none());
        assert!(mean_ci(&one, 0.05).is_none());
    }

    /// Bernoulli draws with rate `p` from the deterministic generator.
    fn conversions(p: f64, n: usize, seed: u64) -> (u64, u64) {
        let x = draws(n, seed)
            .filter(|r| (*r as f64 / u64::MAX as f64) < p)
            .count();
        (x as u64, n as u64)
    }

    #[test]
    fn with_no_effect_significance_comes_at_about_alpha() {
        let trials = 400;
        let hits = (0..trials)
            .filter(|t| {
                let a = conversions(0.1, 2000, 2 * t + 1);
                let b = conversions(0.1, 2000, 2 * t + 2);
                two_proportion_z(a, b, 0.05).is_some_and(|c| c.significant)
            })
            .count();
        let rate = hits as f64 / f64::from(trials as u32);
        assert!(rate <= 0.08, "false positives {rate}");
    }

    #[test]
    fn a_known_effect_is_detected() {
        let trials = 50;
        let hits = (0..trials)
            .filter(|t| {
                let a = conversions(0.10, 8000, 1000 + 2 * t);
                let b = conversions(0.13, 8000, 1001 + 2 * t);
                two_proportion_z(a, b, 0.05).is_some_and(|c| c.significant && c.difference > 0.0)
            })
            .count();
        assert!(hits >= 45, "detected in {hits} of {trials}");
    }

    #[test]
    fn moments_match_a_two_pass_computation() {
        let xs: Vec<f64> = draws(1000, 7).map(|r| (r % 1000) as f64 / 10.0).collect();
        let mut m = Moments::default();
        xs.iter().for_each(|x| m.push(*x));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
        assert!((m.mean - mean).abs() < 1e-9 && (m.variance().unwrap() - var).abs() < 1e-6);
    }
}
