//! Helpers shared by the end-to-end tests: the real `inferd` binary on ephemeral ports.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses some; a failed setup step panics

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inferd_server::pb;
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_inferd");

pub fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/models")
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// A copy of the example repository in a temp folder.
pub fn repo_copy(models: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for m in models {
        copy_dir(&examples().join(m), &dir.path().join(m));
    }
    dir
}

pub struct Server {
    pub child: Child,
    pub http: String,
    pub grpc: String,
}

impl Server {
    pub fn start(repo: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(repo, extra, &[])
    }

    pub fn start_with_env(repo: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let (child, http, grpc) = launch(repo, extra, env);
        let s = Server { child, http, grpc };
        let deadline = Instant::now() + Duration::from_secs(60);
        while s.get("/v2/health/ready").0 != 200 {
            assert!(Instant::now() < deadline, "server not ready in time");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into()
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        match Self::agent()
            .get(format!("http://{}{path}", self.http))
            .call()
        {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let body = r.body_mut().read_to_string().unwrap_or_default();
                (status, serde_json::from_str(&body).unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    pub fn post(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let mut r = Self::agent()
            .post(format!("http://{}{path}", self.http))
            .header("content-type", "application/json")
            .send(body)
            .unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn grpc_client(
        &self,
    ) -> (
        tokio::runtime::Runtime,
        pb::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = format!("http://{}", self.grpc);
        let client = rt
            .block_on(pb::grpc_inference_service_client::GrpcInferenceServiceClient::connect(url))
            .unwrap();
        (rt, client)
    }

    /// Waits for the process to exit by itself (after a signal the test sent).
    pub fn wait_exit(mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "inferd did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "inferd did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts inferd on ephemeral ports; returns the child and its HTTP and gRPC addresses. Both
/// address lines are read before the pipe is dropped: the server stops if its stdout breaks
/// while it prints them.
pub fn launch(repo: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Child, String, String) {
    let mut child = Command::new(BIN)
        // No pause between SIGTERM and closing unless a test asks for one.
        .env("INFERD_DRAIN_DELAY_SECS", "0")
        // Never the default 8002: tests run servers side by side.
        .env("INFERD_METRICS_PORT", "0")
        .envs(env.iter().copied())
        .args(["serve", "--model-repository"])
        .arg(repo)
        .args([
            "--http-address",
            "127.0.0.1",
            "--grpc-address",
            "127.0.0.1",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start inferd");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut http, mut grpc) = (String::new(), String::new());
    while http.is_empty() || grpc.is_empty() {
        let line = lines
            .next()
            .expect("inferd exited before listening")
            .unwrap();
        if let Some(a) = line.strip_prefix("HTTP listening on ") {
            http = a.to_string();
        } else if let Some(a) = line.strip_prefix("gRPC listening on ") {
            grpc = a.to_string();
        }
    }
    (child, http, grpc)
}

/// Starts inferd without waiting for readiness; returns the child and its HTTP address.
pub fn spawn_unready(repo: &Path, extra: &[&str]) -> (Child, String) {
    let (child, http, _) = launch(repo, extra, &[]);
    (child, http)
}

pub fn mlp_request(batch: usize) -> Value {
    let data: Vec<f32> = (0..batch * 64).map(|i| (i % 7) as f32 * 0.1).collect();
    json!({"inputs": [{"name": "input", "shape": [batch, 64], "datatype": "FP32", "data": data}]})
}

/// simple_mlp version 1 under another name, with the given scheduling block in its config.
pub fn batched_mlp_repo(name: &str, scheduling: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join(name);
    std::fs::create_dir_all(m.join("1")).unwrap();
    std::fs::copy(
        examples().join("simple_mlp/1/model.onnx"),
        m.join("1/model.onnx"),
    )
    .unwrap();
    std::fs::write(
        m.join("config.pbtxt"),
        format!(
            "name: \"{name}\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: 64\n{scheduling}\n"
        ),
    )
    .unwrap();
    dir
}
