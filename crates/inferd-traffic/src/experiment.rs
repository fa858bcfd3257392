//! An A/B test's outcomes and its report: exposures per arm (requests the arm answered),
//! feedback per arm and metric, and for each metric the per-arm summary with its confidence
//! interval, each arm tested against the first (two-proportion z-test for conversions, Welch's
//! t-test for numeric outcomes) and the samples still needed for the minimum detectable
//! effect. Plain data, so the counts persist across restarts as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::spec::Experiment;
use crate::stats::{
    Moments, mean_ci, proportion_ci, samples_for_mean, samples_for_proportion, two_proportion_z,
    welch_t,
};

/// One arm's outcomes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    /// Requests this arm answered.
    pub exposures: u64,
    /// Feedback values by metric name.
    pub metrics: BTreeMap<String, Moments>,
    /// Metrics that received a value other than 0 or 1 (so they are numeric, not conversions).
    #[serde(default)]
    pub numeric: Vec<String>,
}

/// An experiment's outcomes, by arm (`MODEL/VERSION` as the route names its targets).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcomes {
    /// The arms.
    pub arms: BTreeMap<String, Arm>,
}

impl Outcomes {
    /// One more request answered by `arm`.
    pub fn expose(&mut self, arm: &str) {
        self.arms.entry(arm.to_string()).or_default().exposures += 1;
    }

    /// Feedback `value` for `metric` on `arm`.
    pub fn feedback(&mut self, arm: &str, metric: &str, value: f64) {
        let a = self.arms.entry(arm.to_string()).or_default();
        a.metrics.entry(metric.to_string()).or_default().push(value);
        if value != 0.0 && value != 1.0 && !a.numeric.iter().any(|m| m == metric) {
            a.numeric.push(metric.to_string());
        }
    }

    /// These outcomes and `other`'s together (another replica's, say).
    pub fn merged(&self, other: &Outcomes) -> Outcomes {
        let mut out = self.clone();
        for (name, b) in &other.arms {
            let a = out.arms.entry(name.clone()).or_default();
            a.exposures += b.exposures;
            for (metric, m) in &b.metrics {
                let mine = a.metrics.entry(metric.clone()).or_default();
                *mine = mine.merged(m);
            }
            for m in &b.numeric {
                if !a.numeric.contains(m) {
                    a.numeric.push(m.clone());
                }
            }
        }
        out
    }

    fn arm_of(&self, name: &str) -> Arm {
        self.arms.get(name).cloned().unwrap_or_default()
    }

    fn is_conversion(&self, metric: &str) -> bool {
        metric != "mean"
            && !self
                .arms
                .values()
                .any(|a| a.numeric.iter().any(|m| m == metric))
    }

    /// The report over `arms` (the route's targets, in order; the first is the control).
    pub fn report(&self, arms: &[String], exp: &Experiment) -> Value {
        let arm = |name: &String| self.arm_of(name);
        let mut names: Vec<String> = self
            .arms
            .values()
            .flat_map(|a| a.metrics.keys().cloned())
            .collect();
        names.push(exp.metric.clone());
        names.sort();
        names.dedup();
        let metrics: Vec<Value> = names
            .iter()
            .map(|m| self.metric_report(m, arms, exp))
            .collect();
        json!({
            "alpha": exp.alpha,
            "min_detectable_effect": exp.min_detectable_effect,
            "exposures": arms.iter().map(|a| json!({"target": a, "exposures": arm(a).exposures})).collect::<Vec<_>>(),
            "metrics": metrics,
        })
    }

    fn metric_report(&self, metric: &str, arms: &[String], exp: &Experiment) -> Value {
        let arm = |name: &String| self.arm_of(name);
        let zero = Moments::default();
        let m = |a: &String| *arm(a).metrics.get(metric).unwrap_or(&zero);
        let conversion = self.is_conversion(metric);
        let per_arm: Vec<Value> = arms
            .iter()
            .map(|a| {
                let mo = m(a);
                if conversion {
                    let trials = arm(a).exposures.max(mo.n);
                    let succ = mo.successes();
                    json!({
                        "target": a, "trials": trials, "conversions": succ,
                        "rate": (trials > 0).then(|| succ as f64 / trials as f64),
                        "ci": proportion_ci(succ, trials, exp.alpha),
                    })
                } else {
                    json!({
                        "target": a, "n": mo.n, "mean": (mo.n > 0).then_some(mo.mean),
                        "ci": mean_ci(&mo, exp.alpha),
                    })
                }
            })
            .collect();
        let control = arms.first();
        let comparisons: Vec<Value> = arms
            .iter()
            .skip(1)
            .map(|b| {
                let Some(a) = control else { return Value::Null };
                let (ma, mb) = (m(a), m(b));
                let cmp = if conversion {
                    let ta = arm(a).exposures.max(ma.n);
                    let tb = arm(b).exposures.max(mb.n);
                    two_proportion_z((ma.successes(), ta), (mb.successes(), tb), exp.alpha)
                } else {
                    welch_t(&ma, &mb, exp.alpha)
                };
                let needed = exp.min_detectable_effect.and_then(|e| {
                    if conversion {
                        let ta = arm(a).exposures.max(ma.n);
                        let base = if ta > 0 {
                            ma.successes() as f64 / ta as f64
                        } else {
                            0.0
                        };
                        samples_for_proportion(base, e, exp.alpha)
                    } else {
                        samples_for_mean(ma.variance()?.sqrt(), e, exp.alpha)
                    }
                });
                let have = if conversion {
                    arm(a).exposures.max(ma.n).min(arm(b).exposures.max(mb.n))
                } else {
                    ma.n.min(mb.n)
                };
                json!({
                    "control": a, "treatment": b,
                    "test": if conversion { "two_proportion_z" } else { "welch_t" },
                    "result": cmp,
                    "samples_needed_per_arm": needed,
                    "samples_remaining_per_arm": needed.map(|n| n.saturating_sub(have)),
                })
            })
            .collect();
        json!({
            "metric": metric,
            "kind": if conversion { "conversion" } else { "mean" },
            "arms": per_arm,
            "comparisons": comparisons,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp() -> Experiment {
        Experiment {
            metric: "conversion".into(),
            alpha: 0.05,
            min_detectable_effect: Some(0.05),
        }
    }

    fn arms() -> Vec<String> {
        vec!["m/1".into(), "m/2".into()]
    }

    #[test]
    fn a_known_conversion_lift_is_significant() {
        let mut o = Outcomes::default();
        for i in 0..4000 {
            o.expose("m/1");
            o.expose("m/2");
            // 10% against 15%.
            if i % 10 == 0 {
                o.feedback("m/1", "conversion", 1.0);
            }
            if i % 20 < 3 {
                o.feedback("m/2", "conversion", 1.0);
            }
        }
        let r = o.report(&arms(), &exp());
        let m = &r["metrics"][0];
        assert_eq!(m["kind"], "conversion");
        assert_eq!(m["arms"][0]["conversions"], 400);
        assert_eq!(m["arms"][1]["trials"], 4000);
        let c = &m["comparisons"][0];
        assert_eq!(c["test"], "two_proportion_z");
        assert_eq!(c["result"]["significant"], true);
        assert!((c["result"]["difference"].as_f64().unwrap() - 0.05).abs() < 1e-9);
        assert!(c["samples_needed_per_arm"].as_u64().unwrap() > 100);
    }

    #[test]
    fn numeric_feedback_is_tested_with_welch() {
        let mut o = Outcomes::default();
        for i in 0..200 {
            o.feedback("m/1", "revenue", 10.0 + (i % 5) as f64);
            o.feedback("m/2", "revenue", 12.0 + (i % 5) as f64);
        }
        let r = o.report(&arms(), &exp());
        let m = r["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["metric"] == "revenue")
            .unwrap()
            .clone();
        assert_eq!(m["kind"], "mean");
        assert_eq!(m["comparisons"][0]["test"], "welch_t");
        assert_eq!(m["comparisons"][0]["result"]["significant"], true);
        assert!((m["arms"][1]["mean"].as_f64().unwrap() - 14.0).abs() < 1e-9);
    }

    /// The false-positive rate over `trials` A/A experiments of `n` users per arm, both arms
    /// converting at 10% (conversion) or drawn from one normal (mean).
    fn false_positive_rate(numeric: bool, trials: u64, n: u64) -> f64 {
        let mut rng = fastrand::Rng::with_seed(20261205);
        let mut significant = 0;
        for _ in 0..trials {
            let mut o = Outcomes::default();
            for _ in 0..n {
                for arm in ["m/1", "m/2"] {
                    o.expose(arm);
                    if numeric {
                        // Sum of 12 uniforms minus 6: a standard normal, near enough.
                        let z: f64 = (0..12).map(|_| rng.f64()).sum::<f64>() - 6.0;
                        o.feedback(arm, "revenue", 10.0 + 3.0 * z);
                    } else if rng.f64() < 0.10 {
                        o.feedback(arm, "conversion", 1.0);
                    }
                }
            }
            let r = o.report(&arms(), &exp());
            let metric = if numeric { "revenue" } else { "conversion" };
            let m = r["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["metric"] == metric)
                .unwrap()
                .clone();
            if m["comparisons"][0]["result"]["significant"] == true {
                significant += 1;
            }
        }
        significant as f64 / trials as f64
    }

    #[test]
    fn with_no_effect_significance_comes_in_about_alpha_of_trials() {
        // 1000 A/A trials at alpha 0.05: the binomial sd is 0.7 points, so 2.5..8% is > 3 sd.
        for numeric in [false, true] {
            let rate = false_positive_rate(numeric, 1000, 500);
            assert!((0.025..=0.08).contains(&rate), "numeric={numeric}: {rate}");
        }
    }

    #[test]
    fn merging_two_replicas_outcomes_equals_counting_them_in_one() {
        let (mut a, mut b, mut both) = (
            Outcomes::default(),
            Outcomes::default(),
            Outcomes::default(),
        );
        for i in 0..300u32 {
            let v = f64::from(i % 17) * 1.5 - 3.0;
            let (one, arm) = if i % 3 == 0 {
                (&mut a, "m/1")
            } else {
                (&mut b, "m/2")
            };
            for o in [one, &mut both] {
                o.expose(arm);
                o.feedback(arm, "revenue", v);
                o.feedback("m/1", "revenue", v * 2.0);
            }
        }
        let merged = a.merged(&b);
        for (name, want) in &both.arms {
            let got = &merged.arms[name];
            assert_eq!(got.exposures, want.exposures);
            let (g, w) = (got.metrics["revenue"], want.metrics["revenue"]);
            assert_eq!(g.n, w.n);
            assert!(
                (g.mean - w.mean).abs() < 1e-9 && (g.m2 - w.m2).abs() < 1e-6,
                "{g:?} {w:?}"
            );
        }
    }

    #[test]
    fn outcomes_round_trip_through_json() {
        let mut o = Outcomes::default();
        o.expose("m/1");
        o.feedback("m/1", "conversion", 1.0);
        let back: Outcomes = serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
        assert_eq!(back, o);
    }
}
