//! End-to-end tests of the real `inferd` binary on ephemeral ports: HTTP and gRPC inference,
//! precise client errors, isolation of a broken model, `repo check`, and graceful shutdown.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic

mod common;

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
        ("/v2/models/nope/infer", mlp_request(1).to_string().into_bytes(), 404, "Request for unknown model: 'nope' is not found"),
        ("/v2/models/simple_mlp/versions/9/infer", mlp_request(1).to_string().into_bytes(), 404, "Request for unknown model: 'simple_mlp' version 9 is not found"),
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
fn unregistered_shm_regions_and_unsupported_encodings_are_named() {
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
            .contains("shared-memory region 'r0' is not registered"),
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
    // One signal is enough: a second would mean "exit now".
    let st = s.wait_exit(Duration::from_secs(20));
    assert!(st.success(), "exit status {st:?}");
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
