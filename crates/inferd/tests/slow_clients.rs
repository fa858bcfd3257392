//! Clients that stall or idle, against the real binary: they hold connections (capped by
//! `--max-connections`), never inference slots, and are closed after `--http-read-timeout-secs`
//! or `--http-idle-timeout-secs`, while normal requests are answered as usual.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// A request that sends its head and half its body, then stalls.
fn stall_mid_body(addr: &str, body: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "POST /v2/models/simple_mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..body.len() / 2]
    )
    .unwrap();
    c
}

/// Everything the server sends until it closes the connection (or `limit` passes).
fn read_until_closed(c: &mut TcpStream, limit: Duration) -> (String, bool) {
    c.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into_owned(), true);
            }
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

/// Median wall time of `n` inference requests, each of which must answer 200.
fn median_latency(s: &Server, body: &str, n: usize) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let (st, out) = s.post("/v2/models/simple_mlp/infer", body.as_bytes());
            assert_eq!(st, 200, "{out}");
            t.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

#[test]
fn two_thousand_stalled_bodies_neither_take_slots_nor_delay_a_request_and_get_408_after_the_timeout()
 {
    let repo = repo_copy(&["simple_mlp"]);
    // 16 slots for 2,000 stalled clients: a slot taken before the body would refuse the
    // normal requests with 503.
    let s = Server::start(
        repo.path(),
        &[
            "--http-read-timeout-secs",
            "8",
            "--max-inflight-requests",
            "16",
        ],
    );
    let body = mlp_request(1).to_string();
    let usual = median_latency(&s, &body, 20);
    let opened = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..2000).map(|_| stall_mid_body(&s.http, &body)).collect();
    // Every stalled head has reached the server before the normal requests go.
    std::thread::sleep(Duration::from_millis(500));
    let during = median_latency(&s, &body, 20);
    assert!(
        opened.elapsed() < Duration::from_secs(8),
        "the normal requests ran after the stalled ones timed out: nothing was tested"
    );
    // Timing on a shared 2-core machine is noisy: a stalled client costing a normal request
    // its slot or a queue would be 503 or seconds, not a few milliseconds.
    assert!(
        during <= usual * 3 + Duration::from_millis(10),
        "a request among 2,000 stalled ones took {during:?} (median), {usual:?} without them"
    );
    let mut answered = 0;
    for c in &mut stalled {
        let (text, closed) = read_until_closed(c, Duration::from_secs(15));
        assert!(closed, "a stalled connection stayed open: {text:?}");
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "expected 408 then close, got {text:?}"
        );
        assert!(text.contains("--http-read-timeout-secs"), "{text}");
        answered += 1;
    }
    assert_eq!(answered, 2000);
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(7500),
        "closed before the 8 s timeout: {waited:?}"
    );
    assert_eq!(
        s.post("/v2/models/simple_mlp/infer", body.as_bytes()).0,
        200
    );
}

#[test]
fn a_request_head_that_stalls_is_dropped_after_the_read_timeout() {
    let repo = repo_copy(&["simple_mlp"]);
    let s = Server::start(repo.path(), &["--http-read-timeout-secs", "1"]);
    let mut c = TcpStream::connect(&s.http).unwrap();
    let t = Instant::now();
    c.write_all(b"POST /v2/models/simple_mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
        .unwrap();
    let (text, closed) = read_until_closed(&mut c, Duration::from_secs(10));
    assert!(closed && text.is_empty(), "got {text:?}");
    let after = t.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(5)).contains(&after),
        "closed after {after:?}"
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
    let repo = repo_copy(&["simple_mlp"]);
    let s = Server::start(repo.path(), &["--http-idle-timeout-secs", "1"]);
    let mut c = TcpStream::connect(&s.http).unwrap();
    // A request every 400 ms keeps the connection: 5 requests span twice the idle timeout.
    for _ in 0..5 {
        c.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf).unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    let t = Instant::now();
    let (text, closed) = read_until_closed(&mut c, Duration::from_secs(10));
    assert!(closed && text.is_empty(), "got {text:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn connections_past_max_connections_are_closed_at_once_and_slots_come_back() {
    let repo = repo_copy(&["simple_mlp"]);
    let s = Server::start(
        repo.path(),
        &["--max-connections", "20", "--http-read-timeout-secs", "60"],
    );
    // Twenty keep-alive connections, each proven accepted by an answer. One refused here (the
    // readiness probe's connection may not have been reaped yet) is simply opened again.
    let mut held: Vec<TcpStream> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.len() < 20 {
        assert!(Instant::now() < deadline, "could not open 20 connections");
        let mut c = TcpStream::connect(&s.http).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let answered = c
            .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .and_then(|_| c.read(&mut buf))
            .is_ok_and(|n| buf[..n].starts_with(b"HTTP/1.1 200"));
        if answered {
            held.push(c);
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut extra = TcpStream::connect(&s.http).unwrap();
    let _ = extra.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n");
    let t = Instant::now();
    let (text, closed) = read_until_closed(&mut extra, Duration::from_secs(10));
    assert!(closed && text.is_empty(), "got {text:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.get("/v2/health/live").0 != 200 {
        assert!(Instant::now() < deadline, "slots did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn invalid_timeouts_and_limits_are_refused_naming_the_flag() {
    for (flag, value) in [
        ("--http-read-timeout-secs", "0"),
        ("--http-idle-timeout-secs", "-1"),
        ("--max-connections", "0"),
        ("--drain-delay-secs", "nan"),
        ("--grpc-max-concurrent-streams", "0"),
        ("--grpc-keepalive-time-secs", "0.5"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--http-port", "0", "--grpc-port", "0"])
            .arg(format!("{flag}={value}"))
            .arg("--model-repository")
            .arg(examples())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}
