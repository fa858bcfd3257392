//! Models inferd cannot serve as their config asks are not served at all: each is UNAVAILABLE
//! with a reason naming the field (or the pickle), the others serve, and `repo check` says the
//! same with the field's position.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

/// `add_sub`'s files under `name`, with `extra` appended to its config (and its name changed).
fn add_sub_variant(repo: &Path, name: &str, extra: &str) {
    let dir = repo.join(name);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::copy(
        examples().join("add_sub/1/model.onnx"),
        dir.join("1/model.onnx"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(examples().join("add_sub/config.pbtxt"))
        .unwrap()
        .replace("\"add_sub\"", &format!("\"{name}\""));
    std::fs::write(dir.join("config.pbtxt"), format!("{cfg}\n{extra}\n")).unwrap();
}

/// A model folder for a backend this build lacks, holding a pickle.
fn pickled(repo: &Path, name: &str, config: &str, file: &str) {
    let dir = repo.join(name);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::write(dir.join("config.pbtxt"), config).unwrap();
    // A protocol-2 pickle of an empty dict: what torch.save / pickle.dump files start as.
    std::fs::write(dir.join("1").join(file), b"\x80\x02}q\x00.").unwrap();
}

fn repo() -> tempfile::TempDir {
    let dir = repo_copy(&["add_sub"]);
    let r = dir.path();
    add_sub_variant(
        r,
        "stateful",
        "sequence_batching { control_input [ { name: \"START\" control [ { kind: CONTROL_SEQUENCE_START } ] } ] }",
    );
    add_sub_variant(
        r,
        "decoupled",
        "model_transaction_policy { decoupled: true }",
    );
    add_sub_variant(r, "typo", "max_batch_sise: 8");
    add_sub_variant(
        r,
        "huge_levels",
        "dynamic_batching { priority_levels: 4000000000 }",
    );
    add_sub_variant(r, "tuned", "model_metrics { }");
    std::fs::create_dir_all(r.join("pipeline")).unwrap();
    std::fs::write(
        r.join("pipeline/config.pbtxt"),
        "name: \"pipeline\"\nplatform: \"ensemble\"\nensemble_scheduling { step [ { model_name: \"add_sub\" model_version: -1 } ] }\n",
    )
    .unwrap();
    std::fs::create_dir_all(r.join("pipeline/1")).unwrap();
    pickled(
        r,
        "torch",
        "name: \"torch\"\nplatform: \"pytorch_libtorch\"\n",
        "model.pt",
    );
    pickled(r, "sk", "name: \"sk\"\nbackend: \"python\"\n", "model.pkl");
    std::fs::create_dir_all(r.join("engine_plan/1")).unwrap();
    std::fs::write(
        r.join("engine_plan/config.pbtxt"),
        "name: \"engine_plan\"\nplatform: \"tensorrt_plan\"\nmax_batch_size: 0\n",
    )
    .unwrap();
    std::fs::write(r.join("engine_plan/1/model.plan"), b"not a plan").unwrap();
    dir
}

fn reasons(s: &Server) -> Value {
    let r = Server::agent()
        .post(format!("http://{}/v2/repository/index", s.http))
        .send_json(json!({}))
        .unwrap()
        .body_mut()
        .read_json::<Value>()
        .unwrap();
    let mut by_model = serde_json::Map::new();
    for e in r.as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let entry = by_model.entry(name).or_insert(json!(""));
        let mut text = entry.as_str().unwrap().to_string();
        text.push_str(e["reason"].as_str().unwrap_or(""));
        text.push_str(&format!(" [{}]", e["state"].as_str().unwrap_or("")));
        *entry = json!(text);
    }
    Value::Object(by_model)
}

#[test]
fn models_asking_for_what_inferd_lacks_are_unavailable_naming_it_and_the_rest_serve() {
    let dir = repo();
    let s = Server::start(dir.path(), &["--strict-readiness", "false"]);
    let why = reasons(&s);
    let has = |model: &str, parts: &[&str]| {
        let text = why[model].as_str().unwrap_or_default();
        assert!(
            parts.iter().all(|p| text.contains(p)),
            "{model}: {text:?} should mention {parts:?}"
        );
        assert!(!text.contains("READY"), "{model} must not serve: {text}");
    };
    has(
        "stateful",
        &[
            "sequence_batching.control_input[0].control[0]",
            "false and true values",
        ],
    );
    has(
        "decoupled",
        &[
            "model_transaction_policy.decoupled",
            "cannot serve a decoupled model",
        ],
    );
    has(
        "typo",
        &["config.pbtxt:", "max_batch_sise", "unknown field"],
    );
    has("huge_levels", &["priority_levels"]);
    has(
        "pipeline",
        &["ensemble_scheduling.step[0]", "output_map is empty"],
    );
    has("torch", &["model.pt", "pickle"]);
    has("sk", &["model.pkl", "pickle"]);
    has(
        "engine_plan",
        &["tensorrt_plan", "TensorRT", "export the model to ONNX"],
    );
    assert!(
        !why["torch"].as_str().unwrap().contains("no backend"),
        "{}",
        why["torch"]
    );
    // A field that only tunes performance loads, and everything valid serves.
    for model in ["add_sub", "tuned"] {
        let body = json!({"inputs": [
            {"name": "INPUT0", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]},
            {"name": "INPUT1", "shape": [1, 4], "datatype": "INT64", "data": [4, 3, 2, 1]},
        ]});
        let (st, out) = s.post(
            &format!("/v2/models/{model}/infer"),
            body.to_string().as_bytes(),
        );
        assert_eq!(st, 200, "{model}: {out}");
    }
    assert!(s.terminate().success());
}

#[test]
fn repo_check_names_each_refused_field_with_its_position() {
    let dir = repo();
    let out = std::process::Command::new(BIN)
        .args(["repo", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "stateful/config.pbtxt:",
        "field 'sequence_batching.control_input[0].control[0]'",
        "typo/config.pbtxt:",
        "field 'max_batch_sise': unknown field",
        "huge_levels/config.pbtxt:",
        "field 'dynamic_batching.priority_levels'",
        "ok: add_sub",
        "ok: tuned",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}
