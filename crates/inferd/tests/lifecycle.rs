//! Version lifecycle against the real binary: an unloaded version that never goes idle is
//! stopped after `--model-unload-timeout-secs`, failing what it still holds.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn unloading_a_version_that_never_goes_idle_cancels_what_is_queued_after_the_timeout() {
    // The batcher holds a lone request for 60 s: without the timeout, the unload would wait
    // that long.
    let repo = batched_mlp_repo(
        "slow",
        "dynamic_batching { max_queue_delay_microseconds: 60000000 preferred_batch_size: [ 64 ] }",
    );
    let s = Server::start(
        repo.path(),
        &[
            "--model-control-mode",
            "explicit",
            "--load-model",
            "slow",
            "--model-unload-timeout-secs",
            "1",
        ],
    );
    let url = format!("http://{}/v2/models/slow/infer", s.http);
    let queued = std::thread::spawn(move || {
        let t = Instant::now();
        let mut r = Server::agent()
            .post(&url)
            .send(mlp_request(1).to_string().as_bytes())
            .unwrap();
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().unwrap();
        (status, body, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let (st, body) = s.post("/v2/repository/models/slow/unload", b"{}");
    assert_eq!(st, 200, "{body}");
    let (status, body, took) = queued.join().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("was unloaded before this request ran"),
        "{body}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the queued request waited {took:?}: the unload did not time out"
    );
    assert!(
        took >= Duration::from_millis(900),
        "cancelled before the 1 s timeout: {took:?}"
    );
}

#[test]
fn a_signal_during_startup_loading_exits_promptly() {
    // 24 models, each warmed up with 1,000 batches: loading takes seconds on this machine.
    let dir = tempfile::tempdir().unwrap();
    for i in 0..24 {
        let m = dir.path().join(format!("m{i}"));
        std::fs::create_dir_all(m.join("1")).unwrap();
        std::fs::copy(
            examples().join("simple_mlp/2/model.onnx"),
            m.join("1/model.onnx"),
        )
        .unwrap();
        std::fs::write(
            m.join("config.pbtxt"),
            format!(
                "name: \"m{i}\"\nbackend: \"onnxruntime\"\nmax_batch_size: 64\n\
                 model_warmup [ {{ name: \"w\" batch_size: 64 count: 1000 inputs {{ key: \"input\" \
                 value: {{ data_type: TYPE_FP32 dims: [ 64 ] random_data: true }} }} }} ]\n"
            ),
        )
        .unwrap();
    }
    let (mut child, http) = spawn_unready(dir.path(), &[]);
    let ready = || {
        Server::agent()
            .get(format!("http://{http}/v2/health/ready"))
            .call()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(ready(), 503, "still loading when the signal comes");
    let t = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "still running {:?} after SIGTERM during startup",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
