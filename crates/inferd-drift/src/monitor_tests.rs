//! Tests of the monitor: the shift cases, the window, references.
use super::*;

fn normal(rng: &mut fastrand::Rng) -> f64 {
    let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Requests of one row with three features, the second shifted by `shift` after the
/// reference; the output is their sum.
fn run(seed: u64, shift: f64) -> Report {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut m = Monitor::new(DriftConfig::default());
    for i in 0..3000 {
        let after = i >= 1000;
        let x = [
            normal(&mut rng),
            normal(&mut rng) + if after { shift } else { 0.0 },
            normal(&mut rng),
        ];
        let y = vec![x.iter().sum::<f64>()];
        m.observe(
            i as f64,
            &[
                (TensorKind::Input, "x", Values::Float(x.to_vec()), 1),
                (TensorKind::Output, "y", Values::Float(y), 1),
            ],
        );
    }
    m.report()
}

#[test]
fn a_half_sigma_shift_in_one_feature_is_flagged_for_that_feature_only() {
    let r = run(7, 0.5);
    let x = r.tensors.iter().find(|t| t.name == "x").expect("x");
    let flagged: Vec<usize> = x
        .features
        .iter()
        .filter(|f| f.drifted)
        .map(|f| f.index)
        .collect();
    assert_eq!(
        flagged,
        vec![1],
        "{:?}",
        x.features.iter().map(|f| f.psi).collect::<Vec<_>>()
    );
    let f1 = &x.features[1];
    assert!(
        f1.ks.expect("ks") > 0.1 && f1.ks_p_value.expect("p") < 0.001,
        "{f1:?}"
    );
    assert!(r.drifted);
}

#[test]
fn without_a_shift_at_least_95_percent_of_trials_raise_no_flag() {
    let flagged = (0..40).filter(|s| run(100 + s, 0.0).drifted).count();
    assert!(
        flagged <= 2,
        "{flagged} of 40 trials flagged drift with no shift"
    );
}

#[test]
fn the_window_slides_and_memory_stays_bounded() {
    let cfg = DriftConfig {
        reference_requests: 10,
        window_secs: 60.0,
        buckets: 6,
        ..Default::default()
    };
    let mut m = Monitor::new(cfg);
    for i in 0..1_000_000u64 {
        let v = (i % 97) as f64;
        m.observe(
            i as f64 * 0.01,
            &[(TensorKind::Input, "x", Values::Float(vec![v]), 1)],
        );
    }
    let f = &m.tensors[0].features[0];
    assert!(f.window.len() <= 6, "{} buckets kept", f.window.len());
    assert!(m.requests.len() <= 6);
    let r = m.report();
    // 60 s at 100 requests/s: the window holds the last ~6000.
    assert!(
        (5000..=6000).contains(&r.current_requests),
        "{}",
        r.current_requests
    );
}

#[test]
fn outputs_get_an_argmax_and_strings_their_length_and_tokens() {
    let mut m = Monitor::new(DriftConfig {
        reference_requests: 2,
        min_current: 1,
        ..Default::default()
    });
    for i in 0..4 {
        m.observe(
            f64::from(i),
            &[
                (
                    TensorKind::Output,
                    "probs",
                    Values::Float(vec![0.1, 0.9, 0.2, 0.7]),
                    2,
                ),
                (
                    TensorKind::Input,
                    "text",
                    Values::Bytes(vec![b"hello world".to_vec()]),
                    1,
                ),
                (TensorKind::Output, "label", Values::Integer(vec![3]), 1),
            ],
        );
    }
    let r = m.report();
    let names = |n: &str| -> Vec<String> {
        r.tensors
            .iter()
            .find(|t| t.name == n)
            .expect(n)
            .features
            .iter()
            .map(|f| f.name.clone())
            .collect()
    };
    assert_eq!(names("probs"), vec!["0", "1", "argmax"]);
    assert_eq!(names("text"), vec!["0.length", "0.tokens"]);
    assert_eq!(names("label"), vec!["0"]);
    let label = &r
        .tensors
        .iter()
        .find(|t| t.name == "label")
        .expect("label")
        .features[0];
    assert_eq!(label.kind, "categorical");
    assert_eq!(label.psi.map(|p| p < 1e-9), Some(true));
}

#[test]
fn a_saved_reference_judges_new_traffic_as_the_original_did() {
    let mut rng = fastrand::Rng::with_seed(3);
    let mut a = Monitor::new(DriftConfig {
        reference_requests: 500,
        ..Default::default()
    });
    for i in 0..500 {
        a.observe(
            f64::from(i),
            &[(
                TensorKind::Input,
                "x",
                Values::Float(vec![normal(&mut rng)]),
                1,
            )],
        );
    }
    let saved = a.reference().expect("complete");
    let text = serde_json::to_string(&saved).expect("json");
    let back: Reference = serde_json::from_str(&text).expect("parse");
    assert_eq!(back, saved);
    let mut b = Monitor::from_reference(DriftConfig::default(), &back);
    for i in 0..500 {
        b.observe(
            f64::from(i),
            &[(
                TensorKind::Input,
                "x",
                Values::Float(vec![normal(&mut rng) + 1.0]),
                1,
            )],
        );
    }
    assert!(b.report().tensors[0].features[0].drifted);
}

#[test]
fn a_tensor_that_narrows_is_counted_where_it_has_positions() {
    let mut m = Monitor::new(DriftConfig {
        reference_requests: 1,
        ..Default::default()
    });
    m.observe(
        0.0,
        &[(
            TensorKind::Input,
            "x",
            Values::Float(vec![1.0, 2.0, 3.0]),
            1,
        )],
    );
    m.observe(
        1.0,
        &[(TensorKind::Input, "x", Values::Float(vec![1.0]), 1)],
    );
    assert_eq!(m.report().tensors[0].features.len(), 3);
}

#[test]
fn a_new_category_after_the_reference_is_drift() {
    let mut m = Monitor::new(DriftConfig {
        reference_requests: 200,
        min_current: 50,
        ..Default::default()
    });
    for i in 0..600u32 {
        let label = if i < 200 { i64::from(i % 2) } else { 5 };
        m.observe(
            f64::from(i),
            &[(TensorKind::Output, "label", Values::Integer(vec![label]), 1)],
        );
    }
    let r = m.report();
    assert!(
        r.tensors[0].features[0].drifted,
        "{:?}",
        r.tensors[0].features[0]
    );
    assert!(r.tensors[0].features[0].js.expect("js") > 0.5);
}

/// Output values of one version: `scale * N(0,1) + shift` (argmax over two outputs follows).
fn outputs(rng: &mut fastrand::Rng, shift: f64, scale: f64) -> Vec<f64> {
    let a = normal(rng) * scale + shift;
    vec![a, -a]
}

#[test]
fn a_canary_is_judged_against_the_primarys_window_not_a_world_that_moved() {
    let cfg = DriftConfig {
        reference_requests: 2000,
        window_secs: 1000.0,
        ..Default::default()
    };
    let mut rng = fastrand::Rng::with_seed(11);
    let mut primary = Monitor::new(cfg.clone());
    let feed = |m: &mut Monitor, t: f64, y: Vec<f64>| {
        m.observe(t, &[(TensorKind::Output, "y", Values::Float(y), 1)]);
    };
    for i in 0..2000 {
        let y = outputs(&mut rng, 0.0, 1.0);
        feed(&mut primary, i as f64 * 0.01, y);
    }
    let reference = primary.reference().unwrap();
    // Since the rollout began the world moved: every output is one sigma higher, for both.
    let mut same = Monitor::from_reference(cfg.clone(), &reference);
    let mut wrong = Monitor::from_reference(cfg.clone(), &reference);
    for i in 0..3000 {
        let t = 100.0 + i as f64 * 0.01;
        let y = outputs(&mut rng, 1.0, 1.0);
        feed(&mut primary, t, y);
        let y = outputs(&mut rng, 1.0, 1.0);
        feed(&mut same, t, y);
        // This canary answers differently on top: a wider spread.
        let y = outputs(&mut rng, 1.0, 2.0);
        feed(&mut wrong, t, y);
    }
    let against_reference = same.max_psi(TensorKind::Output).unwrap();
    let against_window = same
        .max_psi_against_window(&primary, TensorKind::Output)
        .unwrap();
    assert!(
        against_reference > 0.2,
        "the shift alone is drift against the reference: {against_reference}"
    );
    assert!(
        against_window < 0.1,
        "but not against the primary now: {against_window}"
    );
    let wrong_psi = wrong
        .max_psi_against_window(&primary, TensorKind::Output)
        .unwrap();
    assert!(
        wrong_psi > 0.2,
        "a canary that answers differently still is: {wrong_psi}"
    );
}

#[test]
fn windows_are_compared_only_with_enough_values_on_both_sides() {
    let cfg = DriftConfig {
        reference_requests: 200,
        ..Default::default()
    };
    let mut rng = fastrand::Rng::with_seed(12);
    let mut primary = Monitor::new(cfg.clone());
    for i in 0..200 {
        let y = outputs(&mut rng, 0.0, 1.0);
        primary.observe(i as f64, &[(TensorKind::Output, "y", Values::Float(y), 1)]);
    }
    let mut canary = Monitor::from_reference(cfg.clone(), &primary.reference().unwrap());
    for i in 0..500 {
        let y = outputs(&mut rng, 0.0, 1.0);
        canary.observe(
            300.0 + i as f64,
            &[(TensorKind::Output, "y", Values::Float(y), 1)],
        );
    }
    assert_eq!(
        canary.max_psi_against_window(&primary, TensorKind::Output),
        None,
        "the primary's window is empty"
    );
}
