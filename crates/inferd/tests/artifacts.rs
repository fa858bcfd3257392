//! Hostile model files against the real binary: refused by the server before anything runs,
//! and reported by `inferd scan` (pickles, escaping links, pinned digests).

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

use serde_json::Value;

const MARKER: &str = "/tmp/inferd_hostile_marker";

/// The committed hostile corpus plus a symlink escape and one good model, in a temp repository.
fn hostile_repo() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    copy_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/hostile/repo"),
        &repo,
    );
    copy_dir(&examples().join("add_sub"), &repo.join("add_sub"));
    std::fs::write(dir.path().join("secret.onnx"), b"outside the repository").unwrap();
    std::fs::create_dir_all(repo.join("symlink_escape/1")).unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("secret.onnx"),
        repo.join("symlink_escape/1/model.onnx"),
    )
    .unwrap();
    (dir, repo)
}

#[test]
fn hostile_artifacts_are_refused_by_the_server_and_nothing_runs() {
    let _ = std::fs::remove_file(MARKER);
    let (_dir, repo) = hostile_repo();
    let s = Server::start(&repo, &["--strict-readiness", "false"]);
    let (_, index) = s.post("/v2/repository/index", b"{}");
    let rows = index.as_array().unwrap();
    let reason = |n: &str| {
        let r = rows
            .iter()
            .find(|r| r["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing from {index}"));
        assert_eq!(r["state"], "UNAVAILABLE", "{r}");
        r["reason"].as_str().unwrap().to_string()
    };
    let pickle = reason("pickle_payload");
    assert!(
        pickle.contains("[pickle]") && pickle.contains("system") && pickle.contains("SafeTensors"),
        "{pickle}"
    );
    assert!(reason("torch_zip").contains("archive/data.pkl"));
    assert!(reason("onnx_external").contains("escapes the model folder"));
    assert!(reason("bad_safetensors").contains("[safetensors-header]"));
    assert!(reason("symlink_escape").contains("[symlink-escape]"));
    assert_eq!(
        s.get("/v2/models/add_sub/ready").0,
        200,
        "the good model serves"
    );
    assert!(!Path::new(MARKER).exists(), "the pickle payload ran");
}

#[test]
fn scan_reports_every_hostile_artifact_with_exit_code_1() {
    let (_dir, repo) = hostile_repo();
    let out = Command::new(BIN)
        .args(["scan", "--format", "json"])
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<(String, String)> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (model, kind) in [
        ("pickle_payload", "pickle"),
        ("torch_zip", "pickle"),
        ("onnx_external", "onnx-external-data"),
        ("bad_safetensors", "safetensors-header"),
        ("symlink_escape", "symlink-escape"),
    ] {
        assert!(
            kinds.iter().any(|(p, k)| p.contains(model) && k == kind),
            "{model}/{kind} not in {kinds:?}"
        );
    }
    assert!(
        !kinds.iter().any(|(p, _)| p.contains("add_sub")),
        "false positive: {kinds:?}"
    );

    let clean = Command::new(BIN)
        .arg("scan")
        .arg(examples())
        .output()
        .unwrap();
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
    assert!(String::from_utf8_lossy(&clean.stdout).contains("no findings"));
    let missing = Command::new(BIN)
        .args(["scan", "/nonexistent/inferd"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn scan_checks_pinned_digests() {
    let repo = repo_copy(&["add_sub"]);
    let cfg = repo.path().join("add_sub/config.pbtxt");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "parameters {{ key: \"sha256:1/model.onnx\" value: {{ string_value: \"{}\" }} }}\n",
        "ab".repeat(32)
    ));
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(BIN)
        .arg("scan")
        .arg(repo.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[sha256-mismatch]"));
}
