//! Scheduling against the real binary: batching (a bad request fails alone), full queues,
//! request timeouts and priorities, preferred batch sizes, cancelled clients, the server-wide
//! in-flight limit.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic

mod common;

use std::time::{Duration, Instant};

use common::*;

use inferd_server::pb;
use serde_json::{Value, json};

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
        "inferd_request_failure_total{model=\"held\",version=\"1\",reason=\"rejected\"} 1",
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
