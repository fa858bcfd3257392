//! The reader thread of a worker's connection: every message the worker writes. Tensors it
//! lists are copied out of the worker's file at once (their region given back on the next
//! message to the worker), calls to other models (BLS) start on threads of their own, metric
//! updates are applied and answered in order, and the rest go to the call waiting on their `id`.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use inferd_core::backend::{BackendError, ModelCaller, NamedTensor};
use serde_json::{Value, json};

use crate::pipe::PipeReader;
use crate::protocol::read_outputs;
use crate::worker::{Incoming, MAX_BLS, MAX_PENDING_FREES, Shared, code};

/// The longest message a worker may send (tensors never travel in messages, so only a broken or
/// hostile worker comes near it); past it the worker is treated as gone.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

fn read_message<R: Read + AsRawFd>(
    r: &mut PipeReader<R>,
    poll: &dyn Fn() -> bool,
) -> Option<Value> {
    let mut len = [0u8; 4];
    if !r.read_full(&mut len, poll).ok()? {
        return None;
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_MESSAGE_BYTES {
        tracing::warn!(
            "a python worker sent a {n}-byte message (limit {MAX_MESSAGE_BYTES}): dropping it"
        );
        return None;
    }
    let mut body = vec![0u8; n];
    if !r.read_full(&mut body, poll).ok()? {
        return None;
    }
    serde_json::from_slice(&body).ok()
}

/// The reader thread: every message the worker writes. It never writes to the worker itself:
/// were the worker's input pipe full while the worker blocks writing to us, a reader that
/// writes would wait on a worker that waits on it. Its own messages (frees, metric replies) go
/// through a writer thread of their own.
pub(crate) fn read_loop(shared: Arc<Shared>, stdout: impl Read + AsRawFd) {
    let mut stdout = PipeReader::new(stdout);
    // A length the worker's file has had (it only grows).
    let known_len = AtomicU64::new(0);
    let waiting = || shared.one_call_waits();
    let (control, outgoing) = std::sync::mpsc::channel::<Value>();
    let weak = Arc::downgrade(&shared);
    let writer = std::thread::Builder::new()
        .name(format!("inferd-py-ctl-{}", shared.spec.model))
        .spawn(move || {
            // Ends when the reader drops `control` (the worker is gone).
            while let Ok(msg) = outgoing.recv() {
                match weak.upgrade() {
                    Some(s) => {
                        s.send(&msg);
                    }
                    None => return,
                }
            }
        });
    if writer.is_ok() {
        // Callers' cancels and credits go through the writer too (see `Shared::send_later`).
        *shared.later.lock().unwrap_or_else(|p| p.into_inner()) = Some(control.clone());
    }
    let send = |msg: Value| {
        if writer.is_ok() {
            let _ = control.send(msg);
        } else {
            // No thread to spare: write here, as before (rare, and only under thread exhaustion).
            shared.send(&msg);
        }
    };
    while let Some(msg) = read_message(&mut stdout, &waiting) {
        let op = msg.get("op").and_then(|o| o.as_str()).unwrap_or_default();
        let region = msg.get("region").and_then(|r| r.as_u64());
        if op == "free" {
            if let Some(r) = region {
                shared.to_worker.free(r);
            }
            continue;
        }
        let tensors = read_tensors(&shared.from_worker, &msg, &known_len);
        if let Some(r) = region {
            let flush = {
                let mut p = shared
                    .pending_free
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                p.push(r);
                (p.len() >= MAX_PENDING_FREES).then(|| std::mem::take(&mut *p))
            };
            if let Some(regions) = flush {
                send(json!({"op": "free", "regions": regions}));
            }
        }
        match msg.get("op").and_then(|o| o.as_str()) {
            Some("bls") => crate::bls::start(shared_bls(&shared), msg, tensors),
            Some("metric") => {
                send(crate::metrics::handle(&shared.spec.metrics, &msg));
            }
            _ => {
                let id = msg.get("id").and_then(|i| i.as_u64()).unwrap_or(0);
                let calls = shared.calls.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(tx) = calls.get(&id) {
                    let _ = tx.send(Incoming { msg, tensors });
                }
            }
        }
    }
    // The writer thread ends once both senders are gone.
    shared
        .later
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    drop(control);
    // The crash is recorded (the model reads as restarting, or failed) before any waiting call
    // hears of it: a client that retries on the error must not find the model still ready and
    // reach the dead worker again (test_python_backend.py counted one crash twice so, under
    // load).
    shared.record_exit();
    // Every waiting call sees the worker gone.
    shared
        .calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
}

fn read_tensors(
    file: &File,
    msg: &Value,
    known_len: &AtomicU64,
) -> Result<Vec<NamedTensor>, BackendError> {
    match msg.get("tensors").and_then(|t| t.as_array()) {
        Some(specs) => read_outputs(file, specs, known_len),
        None => Ok(Vec::new()),
    }
}

/// What a BLS call needs of the connection.
pub(crate) struct BlsLink {
    shared: Arc<Shared>,
}

fn shared_bls(shared: &Arc<Shared>) -> BlsLink {
    BlsLink {
        shared: shared.clone(),
    }
}

impl BlsLink {
    pub(crate) fn caller(&self) -> Option<&Arc<dyn ModelCaller>> {
        self.shared.spec.caller.as_ref()
    }
    pub(crate) fn model(&self) -> &str {
        &self.shared.spec.model
    }
    /// Takes one of the worker's BLS slots; false when all are taken.
    pub(crate) fn enter(&self) -> bool {
        let n = self.shared.bls_running.fetch_add(1, Ordering::AcqRel);
        if n >= MAX_BLS {
            self.shared.bls_running.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }
    pub(crate) fn leave(&self) {
        self.shared.bls_running.fetch_sub(1, Ordering::AcqRel);
    }
    /// Sends a result: `msg` with the outputs written to the server's file.
    pub(crate) fn reply(&self, mut msg: Value, outputs: &[NamedTensor]) {
        match self.shared.to_worker.put(&[outputs]) {
            Ok((mut specs, region)) => {
                msg["tensors"] = Value::Array(specs.pop().unwrap_or_default());
                if let Some(r) = region {
                    msg["region"] = json!(r);
                }
            }
            Err(e) => {
                msg["error"] = json!({"message": format!("writing the result to the shared file: {e}"), "code": code::INTERNAL});
            }
        }
        self.shared.send(&msg);
    }
}
