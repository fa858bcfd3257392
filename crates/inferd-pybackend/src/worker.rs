//! One worker process running one instance of a `model.py`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use inferd_core::backend::{BackendError, NamedTensor};
use serde_json::{Value, json};

use crate::protocol::{frame, read_output, write_inputs};

/// How long control messages (initialize, auto-complete) may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(300);

/// The worker's script and the utilities module, as shipped.
const WORKER_PY: &str = include_str!("../python/inferd_python_worker.py");
const UTILS_PY: &str = include_str!("../python/triton_python_backend_utils.py");

/// Triton's `TritonError` codes that are not the model's own fault.
const NOT_FOUND: i64 = 2;
const INVALID_ARG: i64 = 3;
const UNAVAILABLE: i64 = 4;
const UNSUPPORTED: i64 = 5;
const CANCELLED: i64 = 7;

/// What a worker needs to start.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    /// The interpreter.
    pub python: PathBuf,
    /// The model's `model.py`.
    pub model_py: PathBuf,
    /// Model name (logs, messages).
    pub model: String,
    /// Version (logs, messages).
    pub version: u64,
    /// How long one `execute` may take.
    pub execute_timeout: Duration,
}

/// How an execution failed.
pub enum Failure {
    /// The request failed; the worker is fine.
    Request(BackendError),
    /// The worker died or hung (and was killed): start another.
    Worker(BackendError),
}

/// A running worker.
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<Option<Value>>,
    shm: std::fs::File,
    /// The shared file's name until the worker has opened it (then it is unlinked, so nothing
    /// is left behind however either process ends).
    shm_path: Option<tempfile::TempPath>,
    spec: WorkerSpec,
}

fn shm_dir() -> PathBuf {
    let dev_shm = PathBuf::from("/dev/shm");
    if dev_shm.is_dir() {
        dev_shm
    } else {
        std::env::temp_dir()
    }
}

fn read_message(r: &mut impl Read) -> Option<Value> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

impl Worker {
    /// Starts a worker (it imports nothing of the model until asked).
    pub fn start(spec: &WorkerSpec) -> Result<Worker, BackendError> {
        // An unguessable name, created exclusively; removed when the worker goes.
        let shm = tempfile::Builder::new()
            .prefix("inferd-py-")
            .tempfile_in(shm_dir())
            .map_err(|e| BackendError::Internal(format!("creating the shared-memory file: {e}")))?;
        let mut child = Command::new(&spec.python)
            .arg("-c")
            .arg(WORKER_PY)
            .arg(&spec.model_py)
            .arg(shm.path())
            .env("INFERD_PB_UTILS", UTILS_PY)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                BackendError::Load(format!(
                    "cannot start the python worker with '{}': {e} (name the interpreter with --python-executable)",
                    spec.python.display()
                ))
            })?;
        let (Some(stdin), Some(mut stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err(BackendError::Internal(
                "the worker's pipes are missing".into(),
            ));
        };
        let (tx, replies) = channel();
        let name = format!("inferd-py-{}", spec.model);
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                loop {
                    let msg = read_message(&mut stdout);
                    let end = msg.is_none();
                    if tx.send(msg).is_err() || end {
                        break;
                    }
                }
            })
            .map_err(|e| BackendError::Internal(format!("starting a reader thread: {e}")))?;
        let (model, version) = (spec.model.clone(), spec.version);
        std::thread::Builder::new()
            .name(format!("{name}-log"))
            .spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    tracing::info!(target: "inferd::python", model = %model, version, "{line}");
                }
            })
            .map_err(|e| BackendError::Internal(format!("starting a log thread: {e}")))?;
        let (shm, shm_path) = shm.into_parts();
        Ok(Worker {
            child,
            stdin,
            replies,
            shm,
            shm_path: Some(shm_path),
            spec: spec.clone(),
        })
    }

    /// Why the worker is gone: its exit status once it has exited (killed after a second).
    fn gone(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    return match self.child.wait() {
                        Ok(s) => format!("{s}, killed"),
                        Err(e) => format!("unknown status: {e}"),
                    };
                }
            }
        }
    }

    fn request(&mut self, msg: &Value, timeout: Duration) -> Result<Value, Failure> {
        let who = format!(
            "the python worker of model '{}' (version {})",
            self.spec.model, self.spec.version
        );
        if self.stdin.write_all(&frame(msg)).is_err() {
            let status = self.gone();
            return Err(Failure::Worker(BackendError::Execution(format!(
                "{who} exited ({status})"
            ))));
        }
        match self.replies.recv_timeout(timeout) {
            Ok(Some(v)) => {
                // The worker opens the shared file before it reads its first message.
                if let Some(path) = self.shm_path.take() {
                    let _ = path.close();
                }
                Ok(v)
            }
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                let status = self.gone();
                Err(Failure::Worker(BackendError::Execution(format!(
                    "{who} exited ({status}); it restarts for the next request"
                ))))
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(Failure::Worker(BackendError::Execution(format!(
                    "{who} did not answer within {:.0} s (execute_timeout_secs); it was killed and restarts for the next request",
                    timeout.as_secs_f64()
                ))))
            }
        }
    }

    fn control(&mut self, msg: &Value, what: &str) -> Result<Value, BackendError> {
        let reply = self.request(msg, CONTROL_TIMEOUT).map_err(|f| match f {
            Failure::Request(e) | Failure::Worker(e) => BackendError::Load(e.to_string()),
        })?;
        if let Some(err) = reply.get("error") {
            return Err(BackendError::Load(format!(
                "{}: {what} raised {}: {}",
                self.spec.model_py.display(),
                err.get("type")
                    .and_then(|v| v.as_str())
                    .unwrap_or("an error"),
                err.get("message")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
            )));
        }
        Ok(reply)
    }

    /// Runs the model class's `auto_complete_config` on `config`.
    pub fn auto_complete(&mut self, config: Value) -> Result<Value, BackendError> {
        let reply = self.control(
            &json!({"op": "auto_complete", "config": config}),
            "auto_complete_config",
        )?;
        Ok(reply.get("config").cloned().unwrap_or(Value::Null))
    }

    /// Imports `model.py` and runs `initialize(args)`.
    pub fn initialize(&mut self, args: &Value) -> Result<(), BackendError> {
        self.control(
            &json!({"op": "init", "args": args}),
            "loading model.py / initialize",
        )
        .map(|_| ())
    }

    /// Runs a batch's requests in one `execute(requests)`: one result per request.
    pub fn execute(
        &mut self,
        requests: &[&[NamedTensor]],
        outputs: &[String],
    ) -> Result<Vec<Result<Vec<NamedTensor>, BackendError>>, Failure> {
        let mut offset = 0u64;
        let mut described = Vec::with_capacity(requests.len());
        for inputs in requests {
            let (specs, end) = write_inputs(&self.shm, inputs, offset).map_err(|e| {
                Failure::Request(BackendError::Internal(format!(
                    "writing inputs to the shared file: {e}"
                )))
            })?;
            offset = end;
            described.push(json!({
                "inputs": specs, "outputs": outputs, "request_id": "", "correlation_id": 0,
                "parameters": "{}",
            }));
        }
        let msg = json!({"op": "execute", "requests": described, "out_offset": offset});
        let reply = self.request(&msg, self.spec.execute_timeout)?;
        if let Some(err) = reply.get("error") {
            return Err(Failure::Request(self.model_error(err, true)));
        }
        let responses = reply
            .get("responses")
            .and_then(|r| r.as_array())
            .cloned()
            .unwrap_or_default();
        if responses.len() != requests.len() {
            return Err(Failure::Request(BackendError::Execution(format!(
                "model '{}': the worker answered {} of {} requests",
                self.spec.model,
                responses.len(),
                requests.len()
            ))));
        }
        Ok(responses
            .iter()
            .map(|r| self.response(r, outputs))
            .collect())
    }

    /// One request's answer: its outputs in the order asked, or its error.
    fn response(
        &self,
        response: &Value,
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, BackendError> {
        if let Some(err) = response.get("error") {
            return Err(self.model_error(err, false));
        }
        let mut got = Vec::new();
        for spec in response
            .get("outputs")
            .and_then(|o| o.as_array())
            .into_iter()
            .flatten()
        {
            got.push(read_output(&self.shm, spec)?);
        }
        outputs
            .iter()
            .map(|name| {
                got.iter()
                    .position(|t| &t.name == name)
                    .map(|i| got.swap_remove(i))
                    .ok_or_else(|| {
                        BackendError::Execution(format!(
                            "model '{}': execute returned no output '{name}'",
                            self.spec.model
                        ))
                    })
            })
            .collect()
    }

    /// The error a model reported: its `TritonError` code picks the status (`whole`: `execute`
    /// itself raised, failing every request of the call).
    fn model_error(&self, err: &Value, whole: bool) -> BackendError {
        let message = err
            .get("message")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let kind = err
            .get("type")
            .and_then(|v| v.as_str())
            .unwrap_or("an error");
        let text = if whole {
            format!(
                "model '{}': execute raised {kind}: {message}",
                self.spec.model
            )
        } else {
            format!("model '{}': {message}", self.spec.model)
        };
        match err.get("code").and_then(|v| v.as_i64()) {
            Some(NOT_FOUND) => BackendError::NotFound(text),
            Some(INVALID_ARG) | Some(UNSUPPORTED) => BackendError::InvalidInput(text),
            Some(UNAVAILABLE) | Some(CANCELLED) => BackendError::Unavailable(text),
            _ => BackendError::Execution(text),
        }
    }

    /// Runs `finalize()` (bounded) and stops the worker.
    pub fn finalize(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.request(&json!({"op": "finalize"}), Duration::from_secs(5));
        }
        let _ = self.gone();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
