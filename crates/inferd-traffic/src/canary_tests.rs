//! The canary state machine: every phase x event, and the decisions' reasons.

use crate::canary::{Event, Phase, Rollout, Window};
use crate::spec::{Guardrails, Step};

fn steps() -> Vec<Step> {
    vec![
        Step {
            weight: 5,
            duration_secs: 60,
            min_requests: 100,
        },
        Step {
            weight: 20,
            duration_secs: 120,
            min_requests: 0,
        },
        Step {
            weight: 50,
            duration_secs: 240,
            min_requests: 0,
        },
    ]
}

fn rails() -> Guardrails {
    Guardrails {
        max_error_rate: Some(0.01),
        max_p99_ratio: Some(1.5),
        max_output_psi: Some(0.2),
        metrics: Vec::new(),
    }
}

fn rollout(threshold: u32) -> Rollout {
    Rollout::new(steps(), threshold, rails(), 0.0)
}

fn healthy(requests: u64) -> Window {
    Window {
        requests,
        errors: 0,
        p99_secs: Some(0.010),
        ..Window::default()
    }
}

fn primary() -> Window {
    Window {
        requests: 1000,
        errors: 0,
        p99_secs: Some(0.010),
        ..Window::default()
    }
}

fn analysis(now: f64, canary: Window) -> Event {
    Event::Analysis {
        now,
        canary,
        primary: primary(),
    }
}

fn failing() -> Window {
    Window {
        requests: 100,
        errors: 5,
        p99_secs: Some(0.010),
        ..Window::default()
    }
}

fn slow() -> Window {
    Window {
        requests: 100,
        errors: 0,
        p99_secs: Some(0.050),
        ..Window::default()
    }
}

/// A rollout in each phase, for the phase x event table.
fn in_phase(name: &str) -> Rollout {
    let mut r = rollout(1);
    match name {
        "progressing" => {}
        "paused" => r.apply(Event::Pause { now: 10.0 }).unwrap(),
        "promoted" => r.apply(Event::Promote).unwrap(),
        "rolled_back" => r
            .apply(Event::Abort {
                reason: "test".into(),
            })
            .unwrap(),
        other => panic!("{other}"),
    }
    assert_eq!(r.phase_name(), name);
    r
}

const PHASES: [&str; 4] = ["progressing", "paused", "promoted", "rolled_back"];

fn events() -> Vec<(&'static str, Event)> {
    vec![
        ("healthy analysis", analysis(30.0, healthy(50))),
        ("failing analysis", analysis(30.0, failing())),
        ("promote", Event::Promote),
        (
            "abort",
            Event::Abort {
                reason: "operator".into(),
            },
        ),
        ("pause", Event::Pause { now: 30.0 }),
        ("resume", Event::Resume { now: 30.0 }),
    ]
}

/// The expected phase after each (phase, event), or None for a refused action (409).
fn expected(phase: &str, event: &str) -> Option<&'static str> {
    match (phase, event) {
        ("progressing", "healthy analysis") => Some("progressing"),
        ("progressing", "failing analysis") => Some("rolled_back"),
        ("progressing" | "paused", "promote") => Some("promoted"),
        ("progressing" | "paused", "abort") => Some("rolled_back"),
        ("progressing", "pause") => Some("paused"),
        ("paused", "resume") => Some("progressing"),
        // Analyses of a held or finished rollout change nothing.
        ("paused", "healthy analysis" | "failing analysis") => Some("paused"),
        ("promoted", "healthy analysis" | "failing analysis") => Some("promoted"),
        ("rolled_back", "healthy analysis" | "failing analysis") => Some("rolled_back"),
        _ => None,
    }
}

#[test]
fn every_phase_and_event_has_the_expected_outcome() {
    for phase in PHASES {
        for (name, event) in events() {
            let mut r = in_phase(phase);
            let before = r.clone();
            let got = r.apply(event);
            match expected(phase, name) {
                Some(after) => {
                    assert!(got.is_ok(), "{phase} x {name}: refused: {got:?}");
                    assert_eq!(r.phase_name(), after, "{phase} x {name}");
                }
                None => {
                    let e = got.expect_err(&format!("{phase} x {name} should be refused"));
                    assert!(e.to_string().contains(phase), "{phase} x {name}: {e}");
                    assert_eq!(
                        r, before,
                        "{phase} x {name}: a refused action changed the rollout"
                    );
                }
            }
        }
    }
}

#[test]
fn weights_follow_the_phase() {
    assert_eq!(in_phase("progressing").canary_weight(), 5);
    assert_eq!(in_phase("paused").canary_weight(), 5);
    assert_eq!(in_phase("promoted").canary_weight(), 100);
    assert_eq!(in_phase("rolled_back").canary_weight(), 0);
}

#[test]
fn a_healthy_canary_walks_every_step_then_is_promoted() {
    let mut r = rollout(2);
    let mut now = 0.0;
    let mut weights = vec![r.canary_weight()];
    while r.phase_name() == "progressing" && now < 10_000.0 {
        now += 10.0;
        r.apply(analysis(now, healthy(40))).unwrap();
        if weights.last() != Some(&r.canary_weight()) {
            weights.push(r.canary_weight());
        }
    }
    assert_eq!(weights, vec![5, 20, 50, 100]);
    assert_eq!(r.phase_name(), "promoted");
    assert!(
        r.reason.contains("promoted after 3 healthy steps"),
        "{}",
        r.reason
    );
    // 60 s for step 1, then 120 s and 240 s: promoted at 420 s.
    assert_eq!(now, 420.0);
}

#[test]
fn a_step_waits_for_its_minimum_requests() {
    let mut r = rollout(1);
    for t in 1..=12 {
        r.apply(analysis(f64::from(t) * 10.0, healthy(5))).unwrap();
    }
    // 120 s in, but only 60 canary requests of the 100 step 1 asks for.
    assert_eq!(r.canary_weight(), 5);
    assert!(
        r.reason.contains("waiting for requests: 60 of 100"),
        "{}",
        r.reason
    );
    r.apply(analysis(130.0, healthy(40))).unwrap();
    assert_eq!(r.canary_weight(), 20);
}

#[test]
fn an_erroring_canary_is_rolled_back_with_the_reason() {
    let mut r = rollout(1);
    r.apply(analysis(10.0, failing())).unwrap();
    assert_eq!(r.phase, Phase::RolledBack);
    assert_eq!(r.canary_weight(), 0);
    assert!(
        r.reason.contains("error_rate 0.0500 > 0.01"),
        "{}",
        r.reason
    );
    let check = r
        .last_checks
        .iter()
        .find(|c| c.name == "error_rate")
        .unwrap();
    assert!(!check.passed);
    assert_eq!(check.value, Some(0.05));
}

#[test]
fn a_slow_canary_is_rolled_back_on_the_p99_ratio() {
    let mut r = rollout(1);
    r.apply(analysis(10.0, slow())).unwrap();
    assert_eq!(r.phase_name(), "rolled_back");
    assert!(r.reason.contains("p99_ratio 5.0000 > 1.5"), "{}", r.reason);
}

#[test]
fn rollback_waits_for_threshold_failures_counted_over_the_rollout() {
    let mut r = rollout(3);
    r.apply(analysis(10.0, failing())).unwrap();
    r.apply(analysis(20.0, healthy(50))).unwrap();
    r.apply(analysis(30.0, slow())).unwrap();
    assert_eq!(r.phase_name(), "progressing");
    assert_eq!(r.failures, 2);
    assert!(r.reason.contains("2 of 3 allowed"), "{}", r.reason);
    r.apply(analysis(40.0, failing())).unwrap();
    assert_eq!(r.phase_name(), "rolled_back");
}

#[test]
fn no_canary_traffic_is_not_a_failure_and_not_progress() {
    let mut r = rollout(1);
    for t in 1..=20 {
        r.apply(analysis(f64::from(t) * 10.0, Window::default()))
            .unwrap();
    }
    assert_eq!(r.phase_name(), "progressing");
    assert_eq!(r.canary_weight(), 5, "min_requests holds the step");
    assert!(r.last_checks.iter().all(|c| c.passed && c.value.is_none()));
}

#[test]
fn pause_keeps_the_time_already_spent_in_the_step() {
    let mut r = rollout(1);
    r.apply(analysis(40.0, healthy(100))).unwrap();
    r.apply(Event::Pause { now: 50.0 }).unwrap();
    // Long pause: analyses do nothing meanwhile.
    r.apply(analysis(500.0, failing())).unwrap();
    assert_eq!(r.phase_name(), "paused");
    r.apply(Event::Resume { now: 1000.0 }).unwrap();
    // 50 s were spent before the pause; 10 more finish the 60 s step.
    r.apply(analysis(1005.0, healthy(1))).unwrap();
    assert_eq!(r.canary_weight(), 5);
    r.apply(analysis(1010.0, healthy(1))).unwrap();
    assert_eq!(r.canary_weight(), 20);
}

#[test]
fn operator_abort_records_why() {
    let mut r = rollout(1);
    r.apply(Event::Abort {
        reason: "bad business numbers".into(),
    })
    .unwrap();
    assert_eq!(r.reason, "aborted by an operator: bad business numbers");
}

#[test]
fn the_state_serializes_as_the_api_shows_it() {
    let r = in_phase("rolled_back");
    let v = serde_json::to_value(&r.phase).unwrap();
    assert_eq!(v["state"], "rolled_back");
    let v = serde_json::to_value(&in_phase("paused").phase).unwrap();
    assert_eq!(v["state"], "paused");
    assert_eq!(v["step"], 0);
}

fn with_metric(requests: u64, metric: &str, outcomes: &[f64]) -> Window {
    let mut m = crate::stats::Moments::default();
    for x in outcomes {
        m.push(*x);
    }
    let mut w = healthy(requests);
    w.metrics.insert(metric.to_string(), m);
    w
}

#[test]
fn a_business_metric_below_its_floor_rolls_back_and_too_few_outcomes_do_not_count() {
    let mut rails = rails();
    rails.metrics.push(crate::spec::MetricGuard {
        metric: "conversion".into(),
        min_ratio: Some(0.9),
        max_ratio: None,
        min_samples: 30,
    });
    let mut r = Rollout::new(steps(), 1, rails, 0.0);
    // Primary converts 20%, canary 10%: ratio 0.5, under the 0.9 floor.
    let primary: Vec<f64> = (0..100).map(|i| f64::from(u8::from(i % 5 == 0))).collect();
    let canary: Vec<f64> = (0..100).map(|i| f64::from(u8::from(i % 10 == 0))).collect();
    // Under min_samples on one side: no verdict yet, so the analysis passes.
    r.apply(Event::Analysis {
        now: 1.0,
        canary: with_metric(100, "conversion", &canary[..10]),
        primary: with_metric(1000, "conversion", &primary),
    })
    .unwrap();
    assert!(
        matches!(r.phase, Phase::Progressing { .. }),
        "{:?}",
        r.phase
    );
    r.apply(Event::Analysis {
        now: 2.0,
        canary: with_metric(100, "conversion", &canary),
        primary: with_metric(1000, "conversion", &primary),
    })
    .unwrap();
    assert_eq!(r.phase, Phase::RolledBack);
    assert!(
        r.reason.contains("conversion_ratio 0.5000 < 0.9"),
        "{}",
        r.reason
    );
    let check = r
        .last_checks
        .iter()
        .find(|c| c.name == "conversion_ratio")
        .unwrap();
    assert!(check.floor && !check.passed);
}

#[test]
fn a_canary_whose_outputs_drifted_from_the_primarys_is_rolled_back_naming_output_psi() {
    let mut r = rollout(1);
    // Not enough to judge yet: passes.
    r.apply(analysis(10.0, healthy(100))).expect("analysis");
    assert!(
        matches!(r.phase, Phase::Progressing { .. }),
        "{:?}",
        r.phase
    );
    let drifted = Window {
        output_psi: Some(0.9),
        ..healthy(100)
    };
    r.apply(analysis(20.0, drifted)).expect("analysis");
    assert!(matches!(r.phase, Phase::RolledBack), "{:?}", r.phase);
    assert!(r.reason.contains("output_psi"), "{}", r.reason);
    let close = Window {
        output_psi: Some(0.05),
        ..healthy(100)
    };
    let mut ok = rollout(1);
    ok.apply(analysis(10.0, close)).expect("analysis");
    assert!(
        ok.last_checks.iter().all(|c| c.passed),
        "{:?}",
        ok.last_checks
    );
}

#[test]
fn every_analysis_is_kept_in_the_timeline_with_its_step_numbers_and_decision() {
    let mut r = rollout(2);
    r.apply(analysis(70.0, healthy(150))).unwrap();
    r.apply(analysis(80.0, failing())).unwrap();
    r.apply(analysis(90.0, failing())).unwrap();
    // Analyses of a finished rollout are not analyses.
    r.apply(analysis(100.0, healthy(10))).unwrap();
    let h: Vec<_> = r.history.iter().collect();
    assert_eq!(h.len(), 3);
    assert_eq!((h[0].step, h[0].weight, h[0].requests), (1, 5, 150));
    assert!(h[0].passed && h[0].decision.contains("step 1 healthy"));
    assert_eq!((h[1].step, h[1].weight, h[1].passed), (2, 20, false));
    assert!(
        h[1].decision.contains("analysis failed (1 of 2"),
        "{}",
        h[1].decision
    );
    let err = h[1].checks.iter().find(|c| c.name == "error_rate").unwrap();
    assert_eq!(err.value, Some(0.05));
    assert_eq!(h[2].phase, "rolled_back");
    assert_eq!(h[2].decision, r.reason);
}

#[test]
fn the_timeline_keeps_only_the_last_analyses() {
    let mut r = rollout(1);
    for i in 0..(crate::canary::HISTORY + 10) {
        r.apply(analysis(i as f64, healthy(1))).unwrap();
    }
    assert_eq!(r.history.len(), crate::canary::HISTORY);
    assert_eq!(
        r.history.back().unwrap().at,
        (crate::canary::HISTORY + 9) as f64
    );
}
