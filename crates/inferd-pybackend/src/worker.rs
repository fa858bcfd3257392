//! One worker process running one instance of a `model.py`, and the connection to it.
//!
//! A reader thread takes every message the worker writes: tensors it lists are copied out of
//! the worker's file at once (and the region given back), calls to other models (BLS) run on
//! threads of their own, and the rest go to whichever call is waiting on that message's `id`.
//! Calls from several threads may be in flight at once (a decoupled model's requests).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inferd_core::backend::{BackendError, ModelCaller, NamedTensor};
use inferd_core::request::{ParamValue, RequestMeta};
use serde_json::{Value, json};

use crate::arena::Arena;
use crate::protocol::frame;

mod execute;

/// The worker's script and the utilities module, as shipped.
const WORKER_PY: &str = include_str!("../python/inferd_python_worker.py");
const UTILS_PY: &str = include_str!("../python/triton_python_backend_utils.py");

/// How long control messages (initialize, auto-complete) may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(300);

/// Regions read from the worker's file that may wait for the next message before they are
/// given back.
pub(crate) const MAX_PENDING_FREES: usize = 32;

/// Calls to other models one worker may have running at once; past it they are refused
/// (UNAVAILABLE) rather than each holding a thread.
pub(crate) const MAX_BLS: usize = 64;

/// Triton's `TritonError` codes.
pub mod code {
    /// Internal.
    pub const INTERNAL: i64 = 1;
    /// Not found.
    pub const NOT_FOUND: i64 = 2;
    /// Invalid argument.
    pub const INVALID_ARG: i64 = 3;
    /// Unavailable.
    pub const UNAVAILABLE: i64 = 4;
    /// Unsupported.
    pub const UNSUPPORTED: i64 = 5;
    /// Cancelled.
    pub const CANCELLED: i64 = 7;
}

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
    /// How long one `execute` may take (for a decoupled model: the longest wait for its next
    /// response).
    pub execute_timeout: Duration,
    /// Calls into the server's models (BLS).
    pub caller: Option<Arc<dyn ModelCaller>>,
    /// The worker's limits (network, memory).
    pub limits: crate::sandbox::Limits,
    /// The model's folder (read-only to the worker).
    pub model_dir: PathBuf,
    /// Further folders the worker sees read-only: the repository (every other model's
    /// folder) and the cache of unpacked environments.
    pub read_only: Vec<PathBuf>,
    /// Where the model's own metrics go.
    pub metrics: Arc<inferd_core::custom_metrics::CustomMetrics>,
    /// inferd's own runner (its `TritonPythonModel` source) for a framework's model file;
    /// `None`: the model's `model.py`.
    pub builtin: Option<&'static str>,
}

/// How a call failed.
pub enum Failure {
    /// The request failed; the worker is fine.
    Request(BackendError),
    /// The worker died or hung (and was killed): start another.
    Worker(BackendError),
}

/// A message from the worker, with the tensors it listed (already copied out).
pub struct Incoming {
    /// The message.
    pub msg: Value,
    /// Its `tensors`, in order.
    pub tensors: Result<Vec<NamedTensor>, BackendError>,
}

/// What the reader thread and the callers share.
pub(crate) struct Shared {
    pub(crate) stdin: Mutex<ChildStdin>,
    pub(crate) calls: Mutex<HashMap<u64, Sender<Incoming>>>,
    pub(crate) dead: AtomicBool,
    pub(crate) to_worker: Arena,
    pub(crate) from_worker: File,
    pub(crate) bls_running: AtomicUsize,
    pub(crate) spec: WorkerSpec,
    /// Called once when the worker's output ends (it exited or was killed).
    pub(crate) on_exit: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// The worker's regions read and not yet given back: they ride on the next message to the
    /// worker (a message of their own only past [`MAX_PENDING_FREES`]), which spares a write
    /// here and a wake-up of the worker's reader (and its GIL) per request.
    pub(crate) pending_free: Mutex<Vec<u64>>,
    /// The reader's writer thread, for messages a caller must not block on (see
    /// [`Shared::send_later`]); `None` before the reader starts, after the worker is gone, or
    /// when no thread could be started.
    pub(crate) later: Mutex<Option<std::sync::mpsc::Sender<Value>>>,
}

impl Shared {
    /// Whether exactly one call waits on the worker: the only case in which the reader and
    /// the caller poll for the answer before sleeping (with two, the instance's second executor
    /// thread has handed over its batch, the server is busy and the core is better left to the
    /// others).
    pub(crate) fn one_call_waits(&self) -> bool {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).len() == 1
    }

    /// Marks the worker dead and runs its exit hook (once, whoever comes first: the reader at
    /// the end of the worker's output, or a call that killed a hung worker).
    pub(crate) fn record_exit(&self) {
        let on_exit = {
            let mut f = self.on_exit.lock().unwrap_or_else(|p| p.into_inner());
            self.dead.store(true, Ordering::Release);
            f.take()
        };
        if let Some(f) = on_exit {
            f();
        }
    }

    pub(crate) fn send(&self, msg: &Value) -> bool {
        let mut w = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(&frame(msg)).is_ok()
    }

    /// Sends `msg` from the writer thread, so the caller never waits on the pipe: the worker
    /// reads its input only between calls, and while `execute` runs another executor thread
    /// may hold the pipe, blocked writing a large batch. A call that blocked there to send a
    /// cancel or a credit could never reach its own timeout and kill a hung worker.
    pub(crate) fn send_later(&self, msg: Value) {
        let tx = self.later.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match tx {
            Some(tx) => {
                let _ = tx.send(msg);
            }
            None => {
                self.send(&msg);
            }
        }
    }
}

/// A running worker.
pub struct Worker {
    child: Mutex<Child>,
    shared: Arc<Shared>,
    /// The shared files' names until the worker has opened them (then they are unlinked, so
    /// nothing is left behind however either process ends).
    paths: Mutex<Option<(tempfile::TempPath, tempfile::TempPath)>>,
    next_id: AtomicU64,
    /// When the worker started; [`Worker::last_answer_us`] counts from it.
    born: Instant,
    /// When the last `execute` was answered, in microseconds after `born`.
    last_answer_us: AtomicU64,
    /// The worker's private temporary folder (its TMPDIR), removed with it.
    _tmp: tempfile::TempDir,
}

fn shm_dir() -> PathBuf {
    let dev_shm = PathBuf::from("/dev/shm");
    if dev_shm.is_dir() {
        dev_shm
    } else {
        std::env::temp_dir()
    }
}

fn shm_file() -> Result<tempfile::NamedTempFile, BackendError> {
    // An unguessable name, created exclusively.
    tempfile::Builder::new()
        .prefix("inferd-py-")
        .tempfile_in(shm_dir())
        .map_err(|e| BackendError::Internal(format!("creating a shared-memory file: {e}")))
}

/// A call in flight: its messages arrive on `rx`; dropping it forgets the call and gives back
/// its inputs' region.
pub struct Call<'a> {
    worker: &'a Worker,
    /// The call's id.
    pub id: u64,
    rx: Receiver<Incoming>,
    region: Option<u64>,
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        let shared = &self.worker.shared;
        shared
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        if let Some(r) = self.region {
            shared.to_worker.free(r);
        }
    }
}

impl Call<'_> {
    /// The call's next message, waiting at most `timeout` (then the worker is killed).
    pub fn next(&self, timeout: Duration) -> Result<Incoming, Failure> {
        match self.rx.recv_timeout(timeout) {
            Ok(m) => {
                self.worker.opened();
                Ok(m)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.worker.gone();
                Err(Failure::Worker(BackendError::Execution(format!(
                    "{} exited ({status}); it restarts for the next request",
                    self.worker.who()
                ))))
            }
            Err(RecvTimeoutError::Timeout) => Err(self.expire(timeout)),
        }
    }

    /// The call ran past its `timeout`: kills the worker and says so. The exit is recorded
    /// before the error goes back (the model reads as restarting), as the reader records a
    /// crash: a client that waited for readiness after the error found the model still ready
    /// for the moment before the reader saw the pipe end, and reached the dead worker
    /// (test_a_hung_worker_that_forked_is_killed_with_its_children_and_restarts, under load).
    pub fn expire(&self, timeout: Duration) -> Failure {
        self.worker.kill();
        self.worker.shared.record_exit();
        Failure::Worker(BackendError::Execution(format!(
            "{} did not answer within {:.0} s (execute_timeout_secs); it was killed and restarts for the next request",
            self.worker.who(),
            timeout.as_secs_f64()
        )))
    }

    /// The next message if one comes within `wait`; `None` when none did (nothing is killed:
    /// the caller decides what a long wait means).
    pub fn next_within(&self, wait: Duration) -> Result<Option<Incoming>, Failure> {
        if let Some(m) = self.poll_alone() {
            self.worker.opened();
            return Ok(Some(m));
        }
        match self.rx.recv_timeout(wait) {
            Ok(m) => {
                self.worker.opened();
                Ok(Some(m))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => self.next(wait).map(Some),
        }
    }

    /// While this is the worker's only call, polls for its answer for a short while (as the
    /// reader thread polls the pipe, see [`crate::pipe`]) before the caller sleeps: waking a
    /// sleeping thread costs tens of microseconds on a virtual machine.
    fn poll_alone(&self) -> Option<Incoming> {
        if !self.worker.shared.one_call_waits() {
            return None;
        }
        let until = Instant::now() + crate::pipe::ANSWER_POLL;
        while Instant::now() < until {
            match self.rx.try_recv() {
                Ok(m) => return Some(m),
                Err(std::sync::mpsc::TryRecvError::Empty) => std::thread::yield_now(),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
            }
        }
        None
    }

    /// Asks the worker to mark requests `which` (indexes in the call) cancelled: their clients
    /// left while `execute` ran.
    pub fn cancel_requests(&self, which: &[usize]) {
        self.worker
            .shared
            .send_later(json!({"op": "cancel", "id": self.id, "requests": which}));
    }

    /// Asks the worker to mark the call's requests cancelled (the client left).
    pub fn cancel(&self) {
        self.worker
            .shared
            .send_later(json!({"op": "cancel", "id": self.id}));
    }
}

impl Worker {
    /// Starts a worker (it imports nothing of the model until asked).
    pub fn start(spec: &WorkerSpec) -> Result<Arc<Worker>, BackendError> {
        let (to_worker, from_worker) = (shm_file()?, shm_file()?);
        let tmp = tempfile::Builder::new()
            .prefix("inferd-py-tmp-")
            .tempdir()
            .map_err(|e| {
                BackendError::Internal(format!("creating the worker's temp folder: {e}"))
            })?;
        let mut cmd = Command::new(&spec.python);
        let read_only: Vec<&std::path::Path> = std::iter::once(spec.model_dir.as_path())
            .chain(spec.read_only.iter().map(PathBuf::as_path))
            .collect();
        crate::sandbox::apply(&mut cmd, &spec.limits, &read_only);
        // A process group of its own: a terminal's Ctrl-C or a group-wide signal meant for the
        // server does not reach the worker (the server stops it; if the server dies, the
        // worker's stdin closes and it exits).
        cmd.process_group(0);
        let mut child = cmd
            .arg("-c")
            .arg(WORKER_PY)
            .arg(&spec.model_py)
            .arg(to_worker.path())
            .arg(from_worker.path())
            .env("INFERD_PB_UTILS", UTILS_PY)
            .env("TMPDIR", tmp.path())
            .env("INFERD_PB_BUILTIN", spec.builtin.unwrap_or_default())
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
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            crate::sandbox::kill_group(&mut child);
            return Err(BackendError::Internal(
                "the worker's pipes are missing".into(),
            ));
        };
        let (to_file, to_path) = to_worker.into_parts();
        let (from_file, from_path) = from_worker.into_parts();
        let shared = Arc::new(Shared {
            stdin: Mutex::new(stdin),
            calls: Mutex::new(HashMap::new()),
            dead: AtomicBool::new(false),
            to_worker: Arena::new(to_file),
            from_worker: from_file,
            bls_running: AtomicUsize::new(0),
            spec: spec.clone(),
            on_exit: Mutex::new(None),
            pending_free: Mutex::new(Vec::new()),
            later: Mutex::new(None),
        });
        let name = format!("inferd-py-{}", spec.model);
        let reader = shared.clone();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || crate::reader::read_loop(reader, stdout))
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
        Ok(Arc::new(Worker {
            child: Mutex::new(child),
            shared,
            paths: Mutex::new(Some((to_path, from_path))),
            next_id: AtomicU64::new(1),
            born: Instant::now(),
            last_answer_us: AtomicU64::new(0),
            _tmp: tmp,
        }))
    }

    /// Notes that an `execute` was answered now.
    fn answered(&self) {
        let us = self.born.elapsed().as_micros() as u64;
        self.last_answer_us.fetch_max(us, Ordering::AcqRel);
    }

    /// The later of `t` and the last `execute`'s answer: when a call handed over at `t` can
    /// have started (the worker runs one at a time).
    fn answered_since(&self, t: Instant) -> Instant {
        let last = self.born + Duration::from_micros(self.last_answer_us.load(Ordering::Acquire));
        last.max(t)
    }

    fn who(&self) -> String {
        format!(
            "the python worker of model '{}' (version {})",
            self.shared.spec.model, self.shared.spec.version
        )
    }

    /// The worker answered, so it has opened the shared files: unlink them.
    fn opened(&self) {
        if let Some((a, b)) = self.paths.lock().ok().and_then(|mut p| p.take()) {
            let _ = a.close();
            let _ = b.close();
        }
    }

    /// Calls `f` once the worker has exited (at once if it already has).
    pub fn on_exit(&self, f: Box<dyn FnOnce() + Send>) {
        let mut slot = self
            .shared
            .on_exit
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.is_dead() {
            drop(slot);
            f();
        } else {
            *slot = Some(f);
        }
    }

    /// How the worker ended (its exit status; killed if it has not exited within a second).
    pub fn exit_status(&self) -> String {
        self.gone()
    }

    /// Whether the worker has died.
    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire)
    }

    fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        crate::sandbox::kill_group(&mut child);
        let _ = child.wait();
    }

    /// Why the worker is gone: its exit status once it has exited (killed after a second).
    fn gone(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    crate::sandbox::kill_group(&mut child);
                    return match child.wait() {
                        Ok(s) => format!("{s}, killed"),
                        Err(e) => format!("unknown status: {e}"),
                    };
                }
            }
        }
    }

    /// Sends `msg` (given an `id`) with `groups` of input tensors in the server's file, each
    /// group's descriptions set on `msg[key][i]["inputs"]`.
    pub fn call(&self, mut msg: Value, groups: &[&[NamedTensor]]) -> Result<Call<'_>, Failure> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (specs, region) = self.shared.to_worker.put(groups).map_err(|e| {
            Failure::Request(BackendError::Internal(format!(
                "writing inputs to the shared file: {e}"
            )))
        })?;
        if let Some(requests) = msg.get_mut("requests").and_then(|r| r.as_array_mut()) {
            for (r, s) in requests.iter_mut().zip(specs) {
                r["inputs"] = Value::Array(s);
            }
        }
        msg["id"] = json!(id);
        let frees = std::mem::take(
            &mut *self
                .shared
                .pending_free
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if !frees.is_empty() {
            msg["free"] = json!(frees);
        }
        let (tx, rx) = channel();
        self.shared
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let call = Call {
            worker: self,
            id,
            rx,
            region,
        };
        if self.is_dead() || !self.shared.send(&msg) {
            let status = self.gone();
            return Err(Failure::Worker(BackendError::Execution(format!(
                "{} exited ({status}); it restarts for the next request",
                self.who()
            ))));
        }
        Ok(call)
    }

    fn control(&self, msg: Value, what: &str) -> Result<Value, BackendError> {
        let as_load = |f: Failure| match f {
            Failure::Request(e) | Failure::Worker(e) => BackendError::Load(e.to_string()),
        };
        let call = self.call(msg, &[]).map_err(as_load)?;
        let reply = call.next(CONTROL_TIMEOUT).map_err(as_load)?.msg;
        if let Some(err) = reply.get("error") {
            return Err(BackendError::Load(format!(
                "{}: {what} raised {}: {}",
                self.shared.spec.model_py.display(),
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
    pub fn auto_complete(&self, config: Value) -> Result<Value, BackendError> {
        let reply = self.control(
            json!({"op": "auto_complete", "config": config}),
            "auto_complete_config",
        )?;
        Ok(reply.get("config").cloned().unwrap_or(Value::Null))
    }

    /// Imports `model.py` and runs `initialize(args)`; logs the protections the worker got.
    pub fn initialize(&self, args: &Value) -> Result<(), BackendError> {
        let reply = self.control(
            json!({"op": "init", "args": args}),
            "loading model.py / initialize",
        )?;
        if let Some(sb) = reply.get("sandbox") {
            self.log_protections(sb);
        }
        Ok(())
    }

    fn log_protections(&self, sb: &Value) {
        let field = |k: &str| {
            sb.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .to_string()
        };
        let memory = match sb.get("memory_limit_mb").and_then(|v| v.as_u64()) {
            Some(mb) => format!("{mb} MiB"),
            None => "none".into(),
        };
        let spec = &self.shared.spec;
        let (network, model_dir, repository) =
            (field("network"), field("model_dir"), field("repository"));
        let weaker = (!spec.limits.allow_network && network != "isolated")
            || model_dir != "read-only"
            || repository != "read-only";
        if weaker {
            tracing::warn!(model = %spec.model, version = spec.version, %network, %model_dir, %repository, memory_limit = %memory,
                "python worker runs with weaker protections than asked (the kernel refused a namespace)");
        } else {
            tracing::info!(model = %spec.model, version = spec.version, %network, %model_dir, %repository, memory_limit = %memory,
                "python worker protections");
        }
    }

    /// Runs `finalize()` (bounded) and stops the worker.
    pub fn finalize(&self) {
        if !self.is_dead()
            && let Ok(call) = self.call(json!({"op": "finalize"}), &[])
        {
            let _ = call.next(Duration::from_secs(5));
        }
        let _ = self.gone();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if child.try_wait().ok().flatten().is_none() {
            crate::sandbox::kill_group(&mut child);
            let _ = child.wait();
        }
    }
}
