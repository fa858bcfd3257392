//! The route table: resolution per kind, atomic changes, actions and their refusals, and the
//! snapshot a restart keeps.

use std::collections::BTreeMap;

use crate::canary::{Event, Window};
use crate::spec::{RouteSpec, RoutesFile, Target};
use crate::table::{ActionError, Table};
use crate::testutil::draws;

const ROUTES: &str = r#"
[routes.fraud]
kind = "canary"
primary = { model = "fraud", version = 3 }
canary = { model = "fraud", version = 4 }
steps = [ { weight = 10, duration_secs = 60 }, { weight = 50, duration_secs = 60 } ]
guardrails = { max_error_rate = 0.01 }

[routes.embed]
kind = "bluegreen"
blue = { model = "embed", version = 1 }
green = { model = "embed", version = 2 }
active = "blue"

[routes.scorer]
kind = "shadow"
primary = { model = "scorer", version = 1 }
shadow = { model = "scorer", version = 2 }
percent = 100
"#;

fn models(name: &str) -> bool {
    matches!(name, "fraud" | "embed" | "scorer" | "ranker")
}

fn table() -> Table {
    let file = RoutesFile::parse("routes.toml", ROUTES).unwrap();
    Table::from_specs(&file.routes, &models, 0.0).unwrap()
}

fn v(model: &str, version: u64) -> Target {
    Target {
        model: model.into(),
        version: Some(version),
    }
}

fn share(t: &Table, route: &str, target: &Target) -> f64 {
    let r = t.get(route).unwrap();
    let hits = draws(10_000, 3)
        .filter(|d| &r.resolve(route, None, *d, 0).target == target)
        .count();
    hits as f64 / 10_000.0
}

#[test]
fn a_canary_gets_its_step_weight_then_everything_once_promoted() {
    let t = table();
    assert!((share(&t, "fraud", &v("fraud", 4)) - 0.10).abs() < 0.015);
    let t = t.with_canary_event("fraud", Event::Promote).unwrap();
    assert_eq!(share(&t, "fraud", &v("fraud", 4)), 1.0);
    assert_eq!(t.get("fraud").unwrap().state(), "promoted");
}

#[test]
fn a_rolled_back_canary_gets_nothing() {
    let bad = Window {
        requests: 100,
        errors: 10,
        p99_secs: None,
        ..Window::default()
    };
    let t = table()
        .with_canary_event(
            "fraud",
            Event::Analysis {
                now: 10.0,
                canary: bad,
                primary: Window::default(),
            },
        )
        .unwrap();
    assert_eq!(t.get("fraud").unwrap().state(), "rolled_back");
    assert_eq!(share(&t, "fraud", &v("fraud", 4)), 0.0);
    let e = t.with_canary_event("fraud", Event::Promote).unwrap_err();
    assert!(matches!(e, ActionError::Conflict(_)), "{e}");
}

#[test]
fn blue_green_switches_only_to_a_ready_side_and_back() {
    let t = table();
    assert_eq!(share(&t, "embed", &v("embed", 1)), 1.0);
    let e = t.with_switch("embed", &|_| false).unwrap_err();
    assert!(e.to_string().contains("green is not ready"), "{e}");
    let t = t
        .with_switch("embed", &|target| target == &v("embed", 2))
        .unwrap();
    assert_eq!(share(&t, "embed", &v("embed", 2)), 1.0);
    let t = t.with_switch("embed", &|_| true).unwrap();
    assert_eq!(share(&t, "embed", &v("embed", 1)), 1.0);
}

#[test]
fn a_shadow_route_answers_from_the_primary_and_copies_to_the_shadow() {
    let t = table();
    let d = t.get("scorer").unwrap().resolve("scorer", None, 1, 2);
    assert_eq!(d.target, v("scorer", 1));
    assert_eq!(d.shadow, Some(v("scorer", 2)));
    assert_eq!(
        t.get("fraud").unwrap().resolve("fraud", None, 1, 2).shadow,
        None
    );
}

#[test]
fn actions_on_unknown_routes_and_wrong_kinds_are_refused() {
    let t = table();
    assert_eq!(
        t.with_canary_event("nope", Event::Promote).unwrap_err(),
        ActionError::NoRoute
    );
    assert_eq!(
        t.with_canary_event("embed", Event::Promote).unwrap_err(),
        ActionError::WrongKind { kind: "bluegreen" }
    );
    assert!(matches!(
        t.with_switch("fraud", &|_| true),
        Err(ActionError::WrongKind { kind: "canary" })
    ));
    assert!(t.without_route("nope").is_none());
    assert!(t.without_route("fraud").unwrap().get("fraud").is_none());
}

#[test]
fn a_refused_change_leaves_the_table_as_it_was() {
    let t = table();
    let before = t.clone();
    let bad = RouteSpec::from_json(
        "scorer",
        br#"{"kind": "split", "targets": [{"model": "ghost", "weight": 1}]}"#,
    )
    .unwrap();
    assert!(t.with_route("scorer", bad, &models, 5.0).is_err());
    assert_eq!(t, before);
    // "fraud" is a route named after its model: targeting the model is allowed.
    let onto_model = RouteSpec::from_json(
        "r2",
        br#"{"kind": "split", "targets": [{"model": "fraud", "weight": 1}]}"#,
    )
    .unwrap();
    let t2 = t.with_route("r2", onto_model, &models, 5.0).unwrap();
    // "r2" is only a route: targeting it is not.
    let onto_route = RouteSpec::from_json(
        "r3",
        br#"{"kind": "split", "targets": [{"model": "r2", "weight": 1}]}"#,
    )
    .unwrap();
    let e = t2
        .with_route("r3", onto_route, &|n| models(n) || n == "r2_never", 5.0)
        .unwrap_err();
    assert!(e.to_string().contains("'r2' is a route"), "{e}");
}

#[test]
fn the_snapshot_keeps_canary_progress_and_the_active_side() {
    let t = table()
        .with_canary_event("fraud", Event::Pause { now: 30.0 })
        .unwrap()
        .with_switch("embed", &|_| true)
        .unwrap();
    let json = serde_json::to_string(&t).unwrap();
    let back: Table = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
    assert_eq!(back.get("fraud").unwrap().state(), "paused");
    assert_eq!(share(&back, "embed", &v("embed", 2)), 1.0);
}

#[test]
fn a_file_with_a_bad_route_is_refused_whole() {
    let mut specs = RoutesFile::parse("routes.toml", ROUTES).unwrap().routes;
    specs.insert(
        "broken".into(),
        RouteSpec::from_json(
            "broken",
            br#"{"kind": "split", "targets": [{"model": "ghost", "weight": 1}]}"#,
        )
        .unwrap(),
    );
    let e = Table::from_specs(&specs, &models, 0.0)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "route 'broken', field 'targets[0]': no model named 'ghost' in the repository"
    );
    let empty: BTreeMap<String, RouteSpec> = BTreeMap::new();
    assert_eq!(
        Table::from_specs(&empty, &models, 0.0)
            .unwrap()
            .iter()
            .count(),
        0
    );
}

#[test]
fn a_restart_keeps_saved_state_unless_the_file_changed_the_route() {
    let mut saved = table()
        .with_canary_event("fraud", Event::Promote)
        .unwrap()
        .with_switch("embed", &|_| true)
        .unwrap();
    let api_made: RouteSpec =
        serde_json::from_str(r#"{"kind":"split","targets":[{"model":"ranker","weight":1}]}"#)
            .unwrap();
    saved = saved
        .with_route("ranker_api", api_made, &models, 0.0)
        .unwrap();
    // The file now changes the blue-green route's environments; the rest is as before.
    let edited = ROUTES.replace("version = 2 }\nactive", "version = 3 }\nactive");
    let file = Table::from_specs(
        &RoutesFile::parse("routes.toml", &edited).unwrap().routes,
        &models,
        0.0,
    )
    .unwrap();
    let t = Table::restored(saved, file);
    assert_eq!(
        t.get("fraud").unwrap().state(),
        "promoted",
        "unchanged route keeps its state"
    );
    let embed = t.get("embed").unwrap();
    assert_eq!(
        embed.weights()[0].1,
        100,
        "changed route starts over on blue"
    );
    assert!(t.get("ranker_api").is_some(), "API-made route is kept");
}

const AB: &str = r#"
[routes.rank]
kind = "ab"
targets = [ { model = "ranker", version = 1, weight = 50 }, { model = "ranker", version = 2, weight = 30 }, { model = "ranker", version = 3, weight = 20 } ]
experiment = { metric = "conversion" }
guardrails = { max_output_psi = 0.2, interval_secs = 5 }
"#;

#[test]
fn a_halted_ab_arm_gives_its_share_to_the_control_and_the_route_says_why() {
    let file = RoutesFile::parse("routes.toml", AB).unwrap();
    let t = Table::from_specs(&file.routes, &models, 0.0).unwrap();
    let arm = Target {
        model: "ranker".into(),
        version: Some(2),
    };
    let halted = t
        .with_ab_halt("rank", &arm, "halted: output_psi 0.5 > 0.2")
        .unwrap();
    let r = halted.get("rank").unwrap();
    assert_eq!(r.state(), "halted");
    let w: Vec<u64> = r.weights().iter().map(|(_, w)| *w).collect();
    assert_eq!(w, vec![80, 0, 20]);
    assert_eq!(r.halted["ranker/2"], "halted: output_psi 0.5 > 0.2");
    // A second halt of the same arm keeps the first reason; the old table is untouched.
    let again = halted.with_ab_halt("rank", &arm, "other").unwrap();
    assert_eq!(
        again.get("rank").unwrap().halted["ranker/2"],
        "halted: output_psi 0.5 > 0.2"
    );
    assert_eq!(t.get("rank").unwrap().state(), "steady");
    assert!(matches!(
        t.with_ab_halt("fraud", &arm, "x"),
        Err(ActionError::NoRoute) | Err(ActionError::WrongKind { .. })
    ));
}

#[test]
fn an_ab_guardrail_without_a_limit_is_refused_by_name() {
    let bad = AB.replace("max_output_psi = 0.2, ", "");
    let file = RoutesFile::parse("routes.toml", &bad).unwrap();
    let e = Table::from_specs(&file.routes, &models, 0.0).unwrap_err();
    assert!(e.to_string().contains("guardrails.max_output_psi"), "{e}");
}
