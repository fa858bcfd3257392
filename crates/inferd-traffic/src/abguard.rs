//! An A/B test's drift guardrail, pure: given each treatment arm's output PSI against the
//! control's outputs (over the same window), which arms to halt and why. A halted arm's share goes to the
//! control (see [`crate::table::Route::weights`]); an arm without enough samples for a PSI is
//! left running (no data is not a failure, as for a canary's checks).

use crate::spec::Target;

/// The arms (after the control) whose PSI is above `limit`, each with the reason to record.
pub fn judge(
    control: &Target,
    limit: f64,
    arms: &[(Target, Option<f64>)],
) -> Vec<(Target, String)> {
    arms.iter()
        .filter_map(|(t, psi)| {
            let psi = (*psi)?;
            (psi > limit).then(|| {
                (
                    t.clone(),
                    format!("halted: output_psi {psi:.4} > {limit} against {control}'s outputs"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: u64) -> Target {
        Target {
            model: "m".into(),
            version: Some(v),
        }
    }

    #[test]
    fn only_arms_past_the_limit_are_halted_and_the_reason_names_the_numbers() {
        let halts = judge(
            &t(1),
            0.2,
            &[(t(2), Some(0.35)), (t(3), Some(0.05)), (t(4), None)],
        );
        assert_eq!(halts.len(), 1);
        assert_eq!(halts[0].0, t(2));
        assert!(
            halts[0].1.contains("output_psi 0.3500 > 0.2 against m/1"),
            "{}",
            halts[0].1
        );
    }

    #[test]
    fn an_arm_at_the_limit_keeps_running() {
        assert!(judge(&t(1), 0.2, &[(t(2), Some(0.2))]).is_empty());
    }
}
