//! End-to-end tests of the real `inferd` binary on ephemeral ports: HTTP and gRPC inference,
//! precise client errors, isolation of a broken model, `repo check`, and graceful shutdown.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

use inferd_server::pb;
use serde_json::{Value, json};

#[test]
fn http_json_inference_answers_from_the_newest_version() {
    let repo = repo_copy(&["simple_mlp", "add_sub"]);
    let s = Server::start(repo.path(), &[]);
    let (st, body) = s.post(
        "/v2/models/simple_mlp/infer",
        mlp_request(3).to_string().as_bytes(),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["model_version"], "2");
    assert_eq!(body["outputs"][0]["shape"], json!([3, 10]));
    assert_eq!(body["outputs"][0]["data"].as_array().unwrap().len(), 30);
    let (st, v1) = s.post(
        "/v2/models/simple_mlp/versions/1/infer",
        mlp_request(3).to_string().as_bytes(),
    );
    assert_eq!(st, 200);
    assert_eq!(v1["model_version"], "1");
    assert_ne!(v1["outputs"][0]["data"], body["outputs"][0]["data"]);

    let req = json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]},
        {"name": "INPUT1", "shape": [1, 4], "datatype": "INT64", "data": [5, 5, 5, 5]}]});
    let (st, body) = s.post("/v2/models/add_sub/infer", req.to_string().as_bytes());
    assert_eq!(st, 200, "{body}");
    let out: Vec<&Value> = body["outputs"].as_array().unwrap().iter().collect();
    let by_name = |n: &str| out.iter().find(|o| o["name"] == n).unwrap()["data"].clone();
    assert_eq!(by_name("OUTPUT0"), json!([6, 7, 8, 9]));
    assert_eq!(by_name("OUTPUT1"), json!([-4, -3, -2, -1]));

    // Auto-completed config and metadata.
    let (st, cfg) = s.get("/v2/models/add_sub/config");
    assert_eq!(st, 200);
    assert_eq!(cfg["input"][0]["data_type"], "TYPE_INT64");
    assert_eq!(cfg["input"][0]["dims"], json!([4]));
    let (_, meta) = s.get("/v2/models/simple_mlp");
    assert_eq!(meta["versions"], json!(["1", "2"]));
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 64]));

    let (st, stats) = s.get("/v2/models/simple_mlp/stats");
    assert_eq!(st, 200);
    let total: u64 = stats["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["inference_stats"]["success"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 2);
}

#[test]
fn client_mistakes_are_precise_4xx_and_change_nothing() {
    let repo = repo_copy(&["simple_mlp"]);
    let s = Server::start(repo.path(), &["--http-max-body-bytes", "100000"]);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/v2/models/simple_mlp/infer", b"{oops".to_vec(), 400, "malformed"),
        ("/v2/models/nope/infer", mlp_request(1).to_string().into_bytes(), 404, "unknown model 'nope'"),
        ("/v2/models/simple_mlp/versions/9/infer", mlp_request(1).to_string().into_bytes(), 404, "no version 9"),
        ("/v2/models/simple_mlp/versions/x/infer", mlp_request(1).to_string().into_bytes(), 400, "invalid model version"),
        ("/v2/models/simple_mlp/infer", mlp_request(65).to_string().into_bytes(), 400, "exceeds max_batch_size 64"),
        (
            "/v2/models/simple_mlp/infer",
            json!({"inputs": [{"name": "inputs", "shape": [1, 64], "datatype": "FP32", "data": vec![0.0; 64]}]}).to_string().into_bytes(),
            400,
            "unexpected input 'inputs'",
        ),
        (
            "/v2/models/simple_mlp/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "INT32", "data": vec![0; 64]}]}).to_string().into_bytes(),
            400,
            "datatype INT32 does not match",
        ),
        (
            "/v2/models/simple_mlp/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": vec![0.0; 63]}]}).to_string().into_bytes(),
            400,
            "shape [1, 63]",
        ),
                ("/v2/repository/models/..%2F..%2Fetc/load", b"{}".to_vec(), 400, "not allowed in model control mode"),
    ];
    for (path, body, status, needle) in cases {
        let (st, resp) = s.post(path, &body);
        assert_eq!(st, status, "{path}: {resp}");
        let msg = resp["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no error field in {resp}"));
        assert!(
            msg.contains(needle),
            "{path}: '{msg}' should mention '{needle}'"
        );
    }
    // Oversized body: the server answers 413 from Content-Length without reading the body, and
    // may close before the client finishes writing, so write what it takes and read the answer.
    {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(&s.http).unwrap();
        let _ = write!(
            tcp,
            "POST /v2/models/simple_mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200000\r\n\r\n"
        );
        let _ = tcp.write_all(&[b' '; 4096]);
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(
            answer.contains("exceeds the limit of 100000 bytes"),
            "{answer}"
        );
    }
    let (st, _) = s.post(
        "/v2/models/simple_mlp/infer",
        mlp_request(1).to_string().as_bytes(),
    );
    assert_eq!(st, 200, "a valid request still succeeds");
}

#[test]
fn unsupported_extensions_are_named_not_misreported() {
    let repo = repo_copy(&["simple_mlp"]);
    let s = Server::start(repo.path(), &[]);
    let shm = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
        "parameters": {"shared_memory_region": "r0", "shared_memory_byte_size": 256}}]});
    let (st, body) = s.post("/v2/models/simple_mlp/infer", shm.to_string().as_bytes());
    assert_eq!(st, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("shared-memory extension is not supported"),
        "{body}"
    );
    let mut r = Server::agent()
        .post(format!("http://{}/v2/models/simple_mlp/infer", s.http))
        .header("content-encoding", "gzip")
        .send(&[0x1f, 0x8b, 0, 0][..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    assert!(
        r.body_mut()
            .read_to_string()
            .unwrap()
            .contains("Content-Encoding")
    );
}

#[test]
fn explicit_reload_that_fails_is_reported_and_the_old_copy_serves_on() {
    let repo = repo_copy(&["add_sub"]);
    let s = Server::start(
        repo.path(),
        &[
            "--model-control-mode",
            "explicit",
            "--load-model",
            "add_sub",
        ],
    );
    assert_eq!(s.get("/v2/models/add_sub/ready").0, 200);
    std::fs::write(repo.path().join("add_sub/1/model.onnx"), b"now corrupt").unwrap();
    let (st, body) = s.post("/v2/repository/models/add_sub/load", b"{}");
    assert_eq!(st, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("failed to load model 'add_sub'") && msg.contains("version 1"),
        "{msg}"
    );
    assert_eq!(
        s.get("/v2/models/add_sub/ready").0,
        200,
        "the loaded copy keeps serving"
    );
    let (st, _) = s.post("/v2/repository/models/nope/load", b"{}");
    assert_eq!(st, 404);
}

#[test]
fn one_bad_request_in_a_batch_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &examples().join("string_identity"),
        &dir.path().join("string_identity"),
    );
    let cfg = dir.path().join("string_identity/config.pbtxt");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        // A lone request waits 10 s; two form the preferred size and run at once, so answers
        // well before 10 s prove the two shared a batch.
        "dynamic_batching { max_queue_delay_microseconds: 10000000 preferred_batch_size: [ 2 ] }\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let s = Server::start(dir.path(), &[]);
    let url = format!("http://{}/v2/models/string_identity/infer", s.http);
    let send = |payload: Vec<u8>| {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut body = br#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"BYTES","parameters":{"binary_data_size":"#.to_vec();
            body.extend_from_slice(format!("{}}}}}]}}", payload.len() + 4).as_bytes());
            let hlen = body.len();
            body.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            body.extend_from_slice(&payload);
            let r = Server::agent()
                .post(&url)
                .header("inference-header-content-length", hlen.to_string())
                .send(&body[..])
                .unwrap();
            r.status().as_u16()
        })
    };
    let t = Instant::now();
    let good = send(b"fine".to_vec());
    std::thread::sleep(Duration::from_millis(200));
    let bad = send(vec![0xff, 0xfe]);
    assert_eq!(bad.join().unwrap(), 400, "the non-UTF-8 request fails");
    assert_eq!(good.join().unwrap(), 200, "its batch mate succeeds");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "answered after {:?}: the two did not form a batch",
        t.elapsed()
    );
    let (_, stats) = s.get("/v2/models/string_identity/stats");
    assert_eq!(
        stats["model_stats"][0]["inference_stats"]["success"]["count"], 1,
        "{stats}"
    );
}

#[test]
fn broken_model_is_unavailable_with_reason_and_others_serve() {
    let repo = repo_copy(&["add_sub"]);
    std::fs::create_dir_all(repo.path().join("broken/1")).unwrap();
    std::fs::write(
        repo.path().join("broken/1/model.onnx"),
        b"\x0a\xff\xffnot an onnx file",
    )
    .unwrap();
    std::fs::create_dir_all(repo.path().join("badcfg/1")).unwrap();
    std::fs::write(
        repo.path().join("badcfg/config.pbtxt"),
        "name: \"badcfg\"\nmax_batch_size: \"eight\"\n",
    )
    .unwrap();
    let s = Server::start(repo.path(), &["--strict-readiness", "false"]);
    let (st, index) = s.post("/v2/repository/index", b"{}");
    assert_eq!(st, 200);
    let rows = index.as_array().unwrap();
    let row = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap().clone();
    assert_eq!(row("broken")["state"], "UNAVAILABLE");
    assert!(
        row("broken")["reason"]
            .as_str()
            .unwrap()
            .contains("model.onnx"),
        "{}",
        row("broken")
    );
    assert_eq!(row("badcfg")["state"], "UNAVAILABLE");
    let reason = row("badcfg")["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("config.pbtxt:2:") && reason.contains("max_batch_size"),
        "{reason}"
    );
    assert_eq!(row("add_sub")["state"], "READY");
    assert_eq!(s.get("/v2/models/broken/ready").0, 503);
    assert_eq!(s.get("/v2/models/add_sub/ready").0, 200);
}

#[test]
fn strict_readiness_stays_unready_while_a_model_is_broken() {
    let repo = repo_copy(&["add_sub"]);
    std::fs::create_dir_all(repo.path().join("broken/1")).unwrap();
    std::fs::write(repo.path().join("broken/1/model.onnx"), b"junk").unwrap();
    let (mut child, http) = spawn_unready(repo.path(), &[]);
    let agent = Server::agent();
    // Give startup loading time to finish, then check readiness stays false.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = agent
            .get(format!("http://{http}/v2/models/add_sub/ready"))
            .call();
        if r.map(|r| r.status().as_u16() == 200).unwrap_or(false) {
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = agent
        .get(format!("http://{http}/v2/health/ready"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn grpc_inference_with_raw_contents() {
    let repo = repo_copy(&["simple_mlp", "string_identity"]);
    let s = Server::start(repo.path(), &[]);
    let (rt, mut c) = s.grpc_client();
    let raw: Vec<u8> = (0..2 * 64)
        .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
        .collect();
    let req = pb::ModelInferRequest {
        model_name: "simple_mlp".into(),
        model_version: "1".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![2, 64],
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    };
    let resp = rt
        .block_on(c.model_infer(req.clone()))
        .unwrap()
        .into_inner();
    assert_eq!(resp.model_version, "1");
    assert_eq!(resp.outputs[0].shape, vec![2, 10]);
    assert_eq!(resp.raw_output_contents[0].len(), 2 * 10 * 4);

    let mut bad = req.clone();
    bad.raw_input_contents = vec![vec![0u8; 12].into()];
    let err = rt.block_on(c.model_infer(bad)).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("input 'input'"), "{}", err.message());

    let mut unknown = req.clone();
    unknown.model_name = "nope".into();
    assert_eq!(
        rt.block_on(c.model_infer(unknown)).unwrap_err().code(),
        tonic::Code::NotFound
    );

    // BYTES via typed contents.
    let req = pb::ModelInferRequest {
        model_name: "string_identity".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "INPUT0".into(),
            datatype: "BYTES".into(),
            shape: vec![2, 1],
            contents: Some(pb::InferTensorContents {
                bytes_contents: vec!["a".into(), "ünï".as_bytes().to_vec().into()],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let resp = rt.block_on(c.model_infer(req)).unwrap().into_inner();
    let raw = &resp.raw_output_contents[0];
    assert_eq!(&raw[..5], &[1, 0, 0, 0, b'a']);

    let cfg = rt
        .block_on(c.model_config(pb::ModelConfigRequest {
            name: "simple_mlp".into(),
            version: String::new(),
        }))
        .unwrap()
        .into_inner();
    assert_eq!(cfg.config.unwrap().max_batch_size, 64);
}

#[test]
fn sigterm_turns_unready_keeps_accepting_for_the_drain_delay_and_finishes_requests_in_flight() {
    // Requests wait up to 1.5 s in the batcher, so they are in flight when the signal lands.
    let repo = batched_mlp_repo(
        "slow",
        "dynamic_batching { max_queue_delay_microseconds: 1500000 preferred_batch_size: [ 64 ] }",
    );
    let s = Server::start(repo.path(), &["--drain-delay-secs", "1"]);
    let url = format!("http://{}/v2/models/slow/infer", s.http);
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                Server::agent()
                    .post(&url)
                    .send(mlp_request(1).to_string().as_bytes())
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        in_flight.iter().all(|t| !t.is_finished()),
        "the requests finished before the signal: nothing in flight to drain"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(200));
    // Within the drain delay: not ready, yet still answering.
    assert_eq!(s.get("/v2/health/ready").0, 503);
    assert_eq!(s.get("/v2/health/live").0, 200);
    for t in in_flight {
        assert_eq!(
            t.join().unwrap().unwrap(),
            200,
            "a request in flight was dropped"
        );
    }
    let st = s.terminate();
    assert!(st.success(), "exit status {st:?}");
}

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

#[test]
fn repo_check_reports_problems_with_nonzero_exit() {
    let out = Command::new(BIN)
        .args(["repo", "check"])
        .arg(examples())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let repo = repo_copy(&["add_sub"]);
    std::fs::create_dir_all(repo.path().join("bad/1")).unwrap();
    std::fs::write(
        repo.path().join("bad/config.pbtxt"),
        "name: \"bad\"\ninput [ { name: \"x\" data_type: TYPE_FLOAT dims: [1] } ]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["repo", "check"])
        .arg(repo.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("ok: add_sub"), "{text}");
    assert!(
        text.contains("config.pbtxt:2:")
            && text.contains("input[0].data_type")
            && text.contains("TYPE_FLOAT"),
        "{text}"
    );
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn poll_mode_follows_added_removed_and_broken_models() {
    let repo = repo_copy(&["add_sub"]);
    let s = Server::start(
        repo.path(),
        &[
            "--model-control-mode",
            "poll",
            "--repository-poll-secs",
            "0.2",
        ],
    );
    // A model folder appears: it is loaded.
    copy_dir(
        &examples().join("string_identity"),
        &repo.path().join("string_identity"),
    );
    wait_for("string_identity to load", || {
        s.get("/v2/models/string_identity/ready").0 == 200
    });

    // Its config breaks: the loaded version keeps serving, unchanged.
    let cfg_path = repo.path().join("add_sub/config.pbtxt");
    let good = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, "name: \"add_sub\"\nmax_batch_size: [\n").unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        s.get("/v2/models/add_sub/ready").0,
        200,
        "a broken config must not take down the serving version"
    );

    // A new version whose file is corrupt: it shows UNAVAILABLE with a reason; version 1 serves on.
    std::fs::write(&cfg_path, &good).unwrap();
    std::fs::create_dir_all(repo.path().join("add_sub/2")).unwrap();
    std::fs::write(repo.path().join("add_sub/2/model.onnx"), b"corrupt").unwrap();
    wait_for("version 2 to fail", || {
        let (_, idx) = s.post("/v2/repository/index", b"{}");
        idx.as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "add_sub" && r["version"] == "2" && r["state"] == "UNAVAILABLE")
    });
    let (_, meta) = s.get("/v2/models/add_sub");
    assert_eq!(meta["versions"], json!(["1"]));

    // The folder goes away: the model is unloaded.
    std::fs::remove_dir_all(repo.path().join("string_identity")).unwrap();
    wait_for("string_identity to unload", || {
        s.get("/v2/models/string_identity/ready").0 != 200
    });
    assert_eq!(s.get("/v2/models/add_sub/ready").0, 200);
}

fn mlp_request_with(batch: usize, params: Value) -> Vec<u8> {
    let mut r = mlp_request(batch);
    r["parameters"] = params;
    r.to_string().into_bytes()
}

#[test]
fn full_queue_answers_503_with_retry_after_at_once() {
    // A long batching delay holds the first requests in the queue; the queue holds two.
    let repo = batched_mlp_repo(
        "held",
        "dynamic_batching { max_queue_delay_microseconds: 1500000 preferred_batch_size: [ 64 ] default_queue_policy { max_queue_size: 2 } }",
    );
    let s = Server::start(repo.path(), &[]);
    let url = format!("http://{}/v2/models/held/infer", s.http);
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                Server::agent()
                    .post(&url)
                    .send(mlp_request(1).to_string().as_bytes())
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    let t0 = Instant::now();
    let r = Server::agent()
        .post(&url)
        .send(mlp_request(1).to_string().as_bytes())
        .unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "a full queue must answer at once"
    );
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers().get("retry-after").unwrap(), "1");
    let mut r = r;
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("model 'held'") && msg.contains("2 requests"),
        "{msg}"
    );
    for h in held {
        assert_eq!(
            h.join().unwrap().unwrap(),
            200,
            "held requests run after the delay"
        );
    }
    // The two held requests ran as one batch of 2.
    let (_, stats) = s.get("/v2/models/held/stats");
    assert_eq!(
        stats["model_stats"][0]["batch_stats"][0]["batch_size"], 2,
        "{stats}"
    );
    // The metrics page tells the same story.
    let mut r = Server::agent()
        .get(format!("http://{}/metrics", s.http))
        .call()
        .unwrap();
    let page = r.body_mut().read_to_string().unwrap();
    for line in [
        "inferd_batch_size_bucket{model=\"held\",version=\"1\",le=\"1\"} 0",
        "inferd_batch_size_bucket{model=\"held\",version=\"1\",le=\"2\"} 1",
        "inferd_batch_size_count{model=\"held\",version=\"1\"} 1",
        "inferd_queue_depth{model=\"held\",version=\"1\"} 0",
        "inferd_request_failure_total{model=\"held\",version=\"1\"} 1",
        "inferd_request_success_total{model=\"held\",version=\"1\"} 2",
    ] {
        assert!(
            page.lines().any(|l| l == line),
            "missing '{line}' in:\n{page}"
        );
    }
}

#[test]
fn request_timeout_and_priority_parameters() {
    let repo = batched_mlp_repo(
        "timed",
        "dynamic_batching { max_queue_delay_microseconds: 500000 preferred_batch_size: [ 64 ] priority_levels: 2 default_priority_level: 2 default_queue_policy { allow_timeout_override: true } }",
    );
    let s = Server::start(repo.path(), &[]);
    let (st, body) = s.post(
        "/v2/models/timed/infer",
        &mlp_request_with(1, json!({"timeout": 1000})),
    );
    assert_eq!(st, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("timed out"),
        "{body}"
    );
    for (params, needle) in [
        (json!({"timeout": "soon"}), "parameter 'timeout'"),
        (json!({"timeout": -5}), "parameter 'timeout'"),
        (json!({"priority": 3}), "priority levels 1..=2"),
        (json!({"priority": 1.5}), "parameter 'priority'"),
    ] {
        let (st, body) = s.post(
            "/v2/models/timed/infer",
            &mlp_request_with(1, params.clone()),
        );
        assert_eq!(st, 400, "{params}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{params}: {body}"
        );
    }
    let (st, body) = s.post(
        "/v2/models/timed/infer",
        &mlp_request_with(2, json!({"priority": 1})),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["outputs"][0]["shape"], json!([2, 10]));
}

#[test]
fn a_formed_preferred_batch_runs_without_waiting_out_the_delay() {
    // Triton's rule: a preferred size the queue can form runs at once, even when it is not the
    // largest preferred size; with none formed, the batch waits out the delay.
    let repo = batched_mlp_repo(
        "pref",
        "dynamic_batching { max_queue_delay_microseconds: 3000000 preferred_batch_size: [ 2, 4 ] }",
    );
    let s = Server::start(repo.path(), &[]);
    let body = mlp_request(1).to_string();
    let timed = || {
        let t = Instant::now();
        let (st, _) = s.post("/v2/models/pref/infer", body.as_bytes());
        (st, t.elapsed())
    };
    let ((st1, t1), (st2, t2)) = std::thread::scope(|sc| {
        let first = sc.spawn(timed);
        std::thread::sleep(Duration::from_millis(300));
        let second = sc.spawn(timed);
        (first.join().unwrap(), second.join().unwrap())
    });
    assert_eq!((st1, st2), (200, 200));
    // The second request formed the preferred 2: both answered long before the 3 s delay.
    assert!(t1 < Duration::from_millis(2000), "first waited {t1:?}");
    assert!(t2 < Duration::from_millis(1700), "second waited {t2:?}");
    // A lone request forms no preferred size: it waits out the delay.
    let (st3, t3) = timed();
    assert_eq!(st3, 200);
    assert!(
        t3 >= Duration::from_millis(2900),
        "lone request waited only {t3:?}"
    );
    let (_, stats) = s.get("/v2/models/pref/stats");
    let sizes: Vec<u64> = stats["model_stats"][0]["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["batch_size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![1, 2], "{stats}");
}

#[test]
fn disconnected_client_request_never_reaches_the_model() {
    let repo = batched_mlp_repo(
        "slowbatch",
        "dynamic_batching { max_queue_delay_microseconds: 1000000 preferred_batch_size: [ 64 ] }",
    );
    let s = Server::start(repo.path(), &[]);
    let body = mlp_request(1).to_string();
    {
        use std::io::Write;
        let mut tcp = std::net::TcpStream::connect(&s.http).unwrap();
        write!(
            tcp,
            "POST /v2/models/slowbatch/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // The request now waits in the queue for its batch; the client hangs up.
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (_, stats) = s.get("/v2/models/slowbatch/stats");
    assert_eq!(stats["model_stats"][0]["execution_count"], 0, "{stats}");
    // The server is unaffected.
    let (st, _) = s.post(
        "/v2/models/slowbatch/infer",
        &mlp_request_with(64, json!({})),
    );
    assert_eq!(st, 200);
}

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

#[test]
fn explicit_startup_model_that_is_missing_keeps_strict_readiness_false() {
    let repo = repo_copy(&["add_sub"]);
    let (mut child, http) = spawn_unready(
        repo.path(),
        &[
            "--model-control-mode",
            "explicit",
            "--load-model",
            "add_sub",
            "--load-model",
            "missing",
        ],
    );
    let agent = Server::agent();
    wait_for(
        "the missing model to be reported and add_sub to load",
        || {
            let loaded = agent
                .get(format!("http://{http}/v2/models/add_sub/ready"))
                .call()
                .is_ok_and(|r| r.status().as_u16() == 200);
            let Ok(mut r) = agent
                .post(format!("http://{http}/v2/repository/index"))
                .send(&b"{}"[..])
            else {
                return false;
            };
            let index: Value =
                serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default())
                    .unwrap_or(Value::Null);
            loaded
                && index.as_array().is_some_and(|rows| {
                    rows.iter()
                        .any(|r| r["name"] == "missing" && r["state"] == "UNAVAILABLE")
                })
        },
    );
    let ready = agent
        .get(format!("http://{http}/v2/health/ready"))
        .call()
        .unwrap()
        .status()
        .as_u16();
    let add_sub = agent
        .get(format!("http://{http}/v2/models/add_sub/ready"))
        .call()
        .unwrap()
        .status()
        .as_u16();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ready, 503);
    assert_eq!(add_sub, 200);
}

#[test]
fn server_wide_inflight_limit_refuses_http_grpc_and_stream_requests_alike() {
    let repo = batched_mlp_repo(
        "slow",
        "dynamic_batching { max_queue_delay_microseconds: 1000000 preferred_batch_size: [ 64 ] }",
    );
    let s = Server::start(repo.path(), &["--max-inflight-requests", "1"]);
    let url = format!("http://{}/v2/models/slow/infer", s.http);
    let held = {
        let url = url.clone();
        std::thread::spawn(move || {
            Server::agent()
                .post(&url)
                .send(mlp_request(1).to_string().as_bytes())
                .map(|r| r.status().as_u16())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let (st, body) = s.post(
        "/v2/models/slow/infer",
        mlp_request(1).to_string().as_bytes(),
    );
    assert_eq!(st, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--max-inflight-requests"),
        "{body}"
    );
    let (rt, mut c) = s.grpc_client();
    let req = pb::ModelInferRequest {
        model_name: "slow".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 64],
            ..Default::default()
        }],
        raw_input_contents: vec![vec![0u8; 256].into()],
        ..Default::default()
    };
    assert_eq!(
        rt.block_on(c.model_infer(req.clone())).unwrap_err().code(),
        tonic::Code::ResourceExhausted
    );
    // A ModelStreamInfer request counts like any other: refused in-band, the stream stays up.
    let answers: Vec<pb::ModelStreamInferResponse> = rt.block_on(async {
        let mut stream = c
            .model_stream_infer(tokio_stream::iter(vec![pb::ModelInferRequest {
                id: "s1".into(),
                ..req
            }]))
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            got.push(m);
        }
        got
    });
    assert_eq!(answers.len(), 1);
    assert!(
        answers[0].error_message.contains("--max-inflight-requests"),
        "{:?}",
        answers[0].error_message
    );
    assert_eq!(answers[0].infer_response.as_ref().unwrap().id, "s1");
    assert_eq!(held.join().unwrap().unwrap(), 200);
    assert_eq!(s.get("/v2/health/ready").0, 200, "health is never limited");
}
