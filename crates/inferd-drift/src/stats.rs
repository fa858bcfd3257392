//! Distances between a reference and a current distribution over the same bins.

/// Shares below this are raised to it before logarithms (an empty bin would make PSI infinite).
const FLOOR: f64 = 1e-4;

/// Population Stability Index: `sum (c - r) * ln(c / r)` over bins, shares floored.
/// 0.1 and 0.2 are the customary warning and drift levels.
pub fn psi(reference: &[f64], current: &[f64]) -> f64 {
    reference
        .iter()
        .zip(current)
        .map(|(&r, &c)| {
            let (r, c) = (r.max(FLOOR), c.max(FLOOR));
            (c - r) * (c / r).ln()
        })
        .sum()
}

/// The two-sample Kolmogorov-Smirnov statistic on binned data: the largest gap between the
/// two cumulative shares at the bin edges (exact at the edges; the bins are the reference's
/// quantiles, so it is close to the unbinned statistic).
pub fn ks(reference: &[f64], current: &[f64]) -> f64 {
    let (mut a, mut b, mut d) = (0.0f64, 0.0f64, 0.0f64);
    for (r, c) in reference.iter().zip(current) {
        a += r;
        b += c;
        d = d.max((a - b).abs());
    }
    d
}

/// The asymptotic p-value of a two-sample KS statistic `d` for sample sizes `n` and `m`
/// (Kolmogorov's distribution with Stephens' small-sample correction).
pub fn ks_p_value(d: f64, n: u64, m: u64) -> f64 {
    if n == 0 || m == 0 {
        return 1.0;
    }
    let ne = (n as f64 * m as f64) / (n as f64 + m as f64);
    let s = ne.sqrt();
    let lambda = (s + 0.12 + 0.11 / s) * d;
    if lambda < 1e-3 {
        return 1.0;
    }
    let mut sum = 0.0;
    for k in 1..=100 {
        let k = f64::from(k);
        let term = 2.0 * (-1f64).powf(k - 1.0) * (-2.0 * k * k * lambda * lambda).exp();
        sum += term;
        if term.abs() < 1e-12 {
            break;
        }
    }
    sum.clamp(0.0, 1.0)
}

/// The Jensen-Shannon divergence (natural log; 0 for equal distributions, at most ln 2).
pub fn jensen_shannon(reference: &[f64], current: &[f64]) -> f64 {
    let kl = |p: f64, q: f64| if p > 0.0 { p * (p / q).ln() } else { 0.0 };
    reference
        .iter()
        .zip(current)
        .map(|(&p, &q)| {
            let m = (p + q) / 2.0;
            if m == 0.0 {
                0.0
            } else {
                0.5 * kl(p, m) + 0.5 * kl(q, m)
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_distributions_are_zero_apart() {
        let p = [0.25, 0.25, 0.5];
        assert!(psi(&p, &p).abs() < 1e-12);
        assert!(ks(&p, &p).abs() < 1e-12);
        assert!(jensen_shannon(&p, &p).abs() < 1e-12);
    }

    #[test]
    fn distances_grow_with_the_shift() {
        let r = [0.5, 0.5];
        let small = [0.45, 0.55];
        let big = [0.2, 0.8];
        assert!(psi(&r, &small) < psi(&r, &big));
        assert!((ks(&r, &big) - 0.3).abs() < 1e-12);
        assert!(jensen_shannon(&r, &big) <= std::f64::consts::LN_2);
        assert!(jensen_shannon(&[1.0, 0.0], &[0.0, 1.0]) - std::f64::consts::LN_2 < 1e-12);
    }

    #[test]
    fn ks_p_value_is_small_for_a_real_gap_and_one_for_none() {
        assert!(ks_p_value(0.2, 1000, 1000) < 1e-6);
        assert!(ks_p_value(0.01, 1000, 1000) > 0.99);
        assert_eq!(ks_p_value(0.5, 0, 10), 1.0);
    }
}
