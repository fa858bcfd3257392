//! The route schema as the issue fixes it, and validation's refusals.

use crate::TrafficError;
use crate::spec::{Color, RouteSpec, RoutesFile, Target};
use crate::validate::{Names, validate};

/// The schema's example, verbatim.
const EXAMPLE: &str = r#"
[routes.ranker]                       # fixed split, sticky by user
kind = "split"
targets = [ { model = "ranker", version = 1, weight = 90 }, { model = "ranker", version = 2, weight = 10 } ]
sticky_header = "x-user-id"

[routes.ranker_ab]                    # A/B test: a split with an experiment
kind = "ab"
targets = [ { model = "ranker", version = 1, weight = 50 }, { model = "ranker", version = 2, weight = 50 } ]
sticky_header = "x-user-id"
experiment = { metric = "conversion", alpha = 0.05, min_detectable_effect = 0.02 }   # or metric = "mean"

[routes.scorer]                       # shadow
kind = "shadow"
primary = { model = "scorer", version = 1 }
shadow = { model = "scorer", version = 2 }
percent = 100

[routes.fraud]                        # canary
kind = "canary"
primary = { model = "fraud", version = 3 }
canary = { model = "fraud", version = 4 }
steps = [ { weight = 5, duration_secs = 60, min_requests = 100 }, { weight = 20, duration_secs = 120 }, { weight = 50, duration_secs = 240 } ]
interval_secs = 10
threshold = 2                         # failed analyses before rollback
guardrails = { max_error_rate = 0.01, max_p99_ratio = 1.5 }   # canary's own error rate; canary p99 / primary p99

[routes.embed]                        # blue-green
kind = "bluegreen"
blue = { model = "embed", version = 1 }
green = { model = "embed", version = 2 }
active = "blue"
"#;

struct Repo;

impl Names for Repo {
    fn is_model(&self, name: &str) -> bool {
        matches!(name, "ranker" | "scorer" | "fraud" | "embed")
    }
    fn is_route(&self, name: &str) -> bool {
        matches!(name, "ranker_ab" | "other_route")
    }
}

fn invalid(name: &str, toml_body: &str) -> (String, String) {
    let text = format!("[routes.\"{name}\"]\n{toml_body}");
    let file = RoutesFile::parse("routes.toml", &text).expect("parses");
    match validate(name, &file.routes[name], &Repo) {
        Err(TrafficError::Invalid { field, reason, .. }) => (field, reason),
        other => panic!("{name} should be refused, got {other:?}"),
    }
}

#[test]
fn the_schema_example_parses_and_validates() {
    let file = RoutesFile::parse("routes.toml", EXAMPLE).unwrap();
    let kinds: Vec<_> = file
        .routes
        .iter()
        .map(|(n, r)| (n.as_str(), r.kind()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("embed", "bluegreen"),
            ("fraud", "canary"),
            ("ranker", "split"),
            ("ranker_ab", "ab"),
            ("scorer", "shadow")
        ]
    );
    for (name, spec) in &file.routes {
        struct Others<'a>(&'a str);
        impl Names for Others<'_> {
            fn is_model(&self, n: &str) -> bool {
                Repo.is_model(n)
            }
            fn is_route(&self, n: &str) -> bool {
                n != self.0
                    && matches!(n, "ranker" | "ranker_ab" | "scorer" | "fraud" | "embed")
                    && !Repo.is_model(n)
            }
        }
        validate(name, spec, &Others(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    match &file.routes["fraud"] {
        RouteSpec::Canary {
            steps,
            threshold,
            guardrails,
            ..
        } => {
            assert_eq!(steps.len(), 3);
            assert_eq!(steps[1].min_requests, 0);
            assert_eq!(*threshold, 2);
            assert_eq!(guardrails.max_p99_ratio, Some(1.5));
        }
        other => panic!("{other:?}"),
    }
    match &file.routes["embed"] {
        RouteSpec::Bluegreen { active, blue, .. } => {
            assert_eq!(*active, Color::Blue);
            assert_eq!(
                blue,
                &Target {
                    model: "embed".into(),
                    version: Some(1)
                }
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_json_body_of_put_uses_the_same_schema() {
    let file = RoutesFile::parse("routes.toml", EXAMPLE).unwrap();
    for (name, spec) in &file.routes {
        let json = serde_json::to_vec(spec).unwrap();
        assert_eq!(&RouteSpec::from_json(name, &json).unwrap(), spec, "{name}");
    }
    let body = br#"{"kind": "split", "targets": [{"model": "ranker", "weight": 1}]}"#;
    match RouteSpec::from_json("r", body).unwrap() {
        RouteSpec::Split {
            sticky_header,
            targets,
            ..
        } => {
            assert_eq!(sticky_header, "x-user-id");
            assert_eq!(targets[0].version, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_fields_and_kinds_are_refused_with_the_place() {
    let e = RoutesFile::parse(
        "routes.toml",
        "[routes.a]\nkind = \"split\"\ntargets = []\nweights = 3\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("routes file routes.toml:") && e.contains("weights"),
        "{e}"
    );
    let e = RoutesFile::parse("routes.toml", "[routes.a]\nkind = \"mirror\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("mirror"), "{e}");
    let e = RouteSpec::from_json(
        "r",
        br#"{"kind": "shadow", "primary": {"model": "scorer"}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("route 'r':") && e.contains("shadow"), "{e}");
    let dup =
        "[routes.a]\nkind = \"split\"\ntargets = []\n[routes.a]\nkind = \"split\"\ntargets = []\n";
    let e = RoutesFile::parse("routes.toml", dup)
        .unwrap_err()
        .to_string();
    assert!(e.contains("duplicate") || e.contains("redefin"), "{e}");
}

#[test]
fn validation_names_the_field_and_the_reason() {
    let cases = [
        (
            "t1",
            "kind = \"split\"\ntargets = [ { model = \"nope\", weight = 1 } ]",
            "targets[0]",
            "no model named 'nope'",
        ),
        (
            "t2",
            "kind = \"split\"\ntargets = [ { model = \"other_route\", weight = 1 } ]",
            "targets[0]",
            "is a route",
        ),
        (
            "t3",
            "kind = \"split\"\ntargets = [ { model = \"ranker\", weight = -1 } ]",
            "targets[0].weight",
            "not in 0..=",
        ),
        (
            "t4",
            "kind = \"split\"\ntargets = [ { model = \"ranker\", version = 1, weight = 0 }, { model = \"ranker\", version = 2, weight = 0 } ]",
            "targets",
            "sum to zero",
        ),
        (
            "t5",
            "kind = \"split\"\ntargets = []",
            "targets",
            "at least 1",
        ),
        (
            "t6",
            "kind = \"split\"\ntargets = [ { model = \"ranker\", version = 1, weight = 1 }, { model = \"ranker\", version = 1, weight = 2 } ]",
            "targets[1]",
            "named twice",
        ),
        (
            "ranker",
            "kind = \"split\"\ntargets = [ { model = \"scorer\", weight = 1 } ]",
            "targets[0]",
            "hide a model",
        ),
        (
            "t8",
            "kind = \"shadow\"\nprimary = { model = \"scorer\" }\nshadow = { model = \"scorer\", version = 2 }\npercent = 101",
            "percent",
            "not in 0..=100",
        ),
        (
            "t9",
            "kind = \"canary\"\nprimary = { model = \"fraud\", version = 1 }\ncanary = { model = \"fraud\", version = 2 }\nsteps = []",
            "steps",
            "at least one step",
        ),
        (
            "t10",
            "kind = \"canary\"\nprimary = { model = \"fraud\", version = 1 }\ncanary = { model = \"fraud\", version = 1 }\nsteps = [ { weight = 5, duration_secs = 1 } ]",
            "canary",
            "primary itself",
        ),
        (
            "t11",
            "kind = \"canary\"\nprimary = { model = \"fraud\", version = 1 }\ncanary = { model = \"fraud\", version = 2 }\nsteps = [ { weight = 500, duration_secs = 1 } ]",
            "steps[0].weight",
            "not in 0..=100",
        ),
        (
            "t12",
            "kind = \"canary\"\nprimary = { model = \"fraud\", version = 1 }\ncanary = { model = \"fraud\", version = 2 }\nsteps = [ { weight = 5, duration_secs = 1 } ]\nthreshold = 0",
            "threshold",
            "at least 1",
        ),
        (
            "t13",
            "kind = \"canary\"\nprimary = { model = \"fraud\", version = 1 }\ncanary = { model = \"fraud\", version = 2 }\nsteps = [ { weight = 5, duration_secs = 1 } ]\nguardrails = { max_error_rate = 2.0 }",
            "guardrails.max_error_rate",
            "0..=1",
        ),
        (
            "t14",
            "kind = \"ab\"\ntargets = [ { model = \"ranker\", version = 1, weight = 1 }, { model = \"ranker\", version = 2, weight = 1 } ]\nexperiment = { metric = \"clicks\" }",
            "experiment.metric",
            "not a metric kind",
        ),
        (
            "t15",
            "kind = \"ab\"\ntargets = [ { model = \"ranker\", weight = 1 } ]\nexperiment = { metric = \"mean\" }",
            "targets",
            "at least 2",
        ),
        (
            "t16",
            "kind = \"bluegreen\"\nblue = { model = \"embed\", version = 1 }\ngreen = { model = \"embed\", version = 1 }\nactive = \"green\"",
            "green",
            "same target",
        ),
        (
            "t17",
            "kind = \"canary\"\nprimary = { model = \"fraud\", version = 1 }\ncanary = { model = \"fraud\", version = 2 }\nsteps = [ { weight = 5, duration_secs = 1 } ]\nguardrails = { metrics = [ { metric = \"conversion\" } ] }",
            "guardrails.metrics[0].min_ratio",
            "min_ratio, max_ratio or both",
        ),
        (
            "t18",
            "kind = \"canary\"\nprimary = { model = \"fraud\", version = 1 }\ncanary = { model = \"fraud\", version = 2 }\nsteps = [ { weight = 5, duration_secs = 1 } ]\nguardrails = { metrics = [ { metric = \"refunds\", max_ratio = -1.0 } ] }",
            "guardrails.metrics[0].max_ratio",
            "above 0",
        ),
        (
            "t19",
            "kind = \"canary\"\nprimary = { model = \"fraud\", version = 1 }\ncanary = { model = \"fraud\", version = 2 }\nsteps = [ { weight = 5, duration_secs = 1 } ]\nprometheus = \"prom:9090\"",
            "prometheus",
            "not an http://",
        ),
        (
            "bad name!",
            "kind = \"split\"\ntargets = [ { model = \"ranker\", weight = 1 } ]",
            "name",
            "letters, digits",
        ),
    ];
    for (name, body, want_field, want_reason) in cases {
        let (field, reason) = invalid(name, body);
        assert_eq!(field, want_field, "{name}: {reason}");
        assert!(reason.contains(want_reason), "{name}: {reason}");
    }
}

#[test]
fn the_error_text_names_route_field_and_reason() {
    let e = TrafficError::Invalid {
        route: "r".into(),
        field: "targets[0]".into(),
        reason: "no model named 'x'".into(),
    };
    assert_eq!(
        e.to_string(),
        "route 'r', field 'targets[0]': no model named 'x'"
    );
}
