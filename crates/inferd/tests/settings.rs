//! `inferd serve` settings from flags, environment and a config file: precedence, and
//! mistakes that name the file, the setting and the reason.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic

mod common;

use std::process::Command;

use common::*;

#[test]
fn config_file_settings_apply_below_flags_and_environment() {
    let repo = repo_copy(&["add_sub", "string_identity"]);
    let conf = repo.path().join("inferd.toml");
    // The addresses cannot be bound here: the test's --http-address/--grpc-address flags must
    // win over them, or the server never starts.
    std::fs::write(
        &conf,
        "# inferd serve settings\n\
         http-address = \"203.0.113.1\"\n\
         grpc-address = \"203.0.113.1\"\n\
         model-control-mode = \"explicit\"\n\
         load-model = [\"add_sub\"]\n\
         max-queue-size = 16\n",
    )
    .unwrap();
    let conf = conf.to_str().unwrap();
    let s = Server::start(repo.path(), &["--config", conf]);
    assert_eq!(s.get("/v2/models/add_sub/ready").0, 200);
    assert_ne!(s.get("/v2/models/string_identity/ready").0, 200);
    s.terminate();
    // An environment variable beats the file.
    let s = Server::start_with_env(
        repo.path(),
        &["--config", conf],
        &[("INFERD_LOAD_MODEL", "string_identity")],
    );
    assert_eq!(s.get("/v2/models/string_identity/ready").0, 200);
    assert_ne!(s.get("/v2/models/add_sub/ready").0, 200);
    s.terminate();
}

#[test]
fn config_file_mistakes_name_the_file_setting_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("inferd.toml");
    let shown = conf.display().to_string();
    for (text, expected) in [
        (
            "htp-port = 8000\n",
            vec!["unknown setting 'htp-port'", "http-port"],
        ),
        (
            "http-port = 70000\n",
            vec!["'http-port' = \"70000\"", "70000 is not in 0..=65535"],
        ),
        (
            "model-control-mode = \"sometimes\"\n",
            vec!["'model-control-mode'", "expected none, poll or explicit"],
        ),
        (
            "strict-readiness = \"yes\"\n",
            vec!["'strict-readiness'", "possible values: true, false"],
        ),
        (
            "http-port = [1, 2]\n",
            vec![
                "'http-port'",
                "single string, number or boolean, got an array",
            ],
        ),
        (
            "http-port = 8000\nnot toml\n",
            vec!["not valid TOML", "line 2"],
        ),
        (
            "max-queue-size = 0\n",
            vec!["'max-queue-size' in config file", "must be positive"],
        ),
        (
            "load-model = [\"add_sub\"]\n",
            vec![
                "'load-model' in config file",
                "only valid with model-control-mode explicit",
            ],
        ),
    ] {
        std::fs::write(&conf, text).unwrap();
        let out = Command::new(BIN)
            .args(["serve", "--http-port", "0", "--grpc-port", "0", "--config"])
            .arg(&conf)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(&shown), "{text}: no file name in {err}");
        for e in expected {
            assert!(err.contains(e), "{text}: no {e:?} in {err}");
        }
    }
}
