//! asyncio without the GIL on the engine's threads.
//!
//! A finished request must reach its asyncio future on the event loop's thread. Taking the GIL
//! on an engine thread to call `loop.call_soon_threadsafe` makes every completion wait for the
//! loop to let go of the GIL, which a busy loop does only every switch interval (5 ms): under
//! load that wait, not the model, set the pace. Instead the engine's thread queues the result
//! and writes one byte to a socket pair the loop watches (`loop.add_reader`); the loop's reader
//! callback, already holding the GIL, drains every result queued since and resolves the
//! futures. One wake-up serves all the completions of a batch.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use inferd_core::{InferResponse, Result};
use pyo3::prelude::*;

use crate::errors::{internal, to_py};

/// Results the engine's threads hand over, and the byte that wakes the loop.
pub struct Completions {
    queue: Mutex<Vec<(u64, Result<InferResponse>)>>,
    wake: UnixStream,
}

impl Completions {
    /// Queues request `id`'s result and wakes the loop if it has nothing queued yet.
    pub fn push(&self, id: u64, result: Result<InferResponse>) {
        let was_empty = match self.queue.lock() {
            Ok(mut q) => {
                let was_empty = q.is_empty();
                q.push((id, result));
                was_empty
            }
            Err(_) => return,
        };
        if was_empty {
            // A full socket buffer means a wake-up is already pending.
            let _ = (&self.wake).write(&[1]);
        }
    }
}

/// One event loop's channel: its pending futures and the socket its reader watches.
#[pyclass(frozen, module = "inferd")]
pub struct LoopChannel {
    shared: std::sync::Arc<Completions>,
    read: UnixStream,
    pending: Mutex<HashMap<u64, Py<PyAny>>>,
    next: AtomicU64,
}

impl LoopChannel {
    /// A channel registered with `event_loop` (`add_reader`).
    pub fn attach(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<LoopChannel>> {
        let (read, wake) =
            UnixStream::pair().map_err(|e| internal(format!("making a wake-up socket: {e}")))?;
        for s in [&read, &wake] {
            s.set_nonblocking(true)
                .map_err(|e| internal(format!("making a wake-up socket: {e}")))?;
        }
        let fd = read.as_raw_fd();
        let channel = Py::new(
            py,
            LoopChannel {
                shared: std::sync::Arc::new(Completions {
                    queue: Mutex::new(Vec::new()),
                    wake,
                }),
                read,
                pending: Mutex::new(HashMap::new()),
                next: AtomicU64::new(0),
            },
        )?;
        event_loop.call_method1("add_reader", (fd, channel.bind(py).getattr("_drain")?))?;
        Ok(channel)
    }

    /// Registers `future` and returns its id and where its result goes.
    pub fn expect(&self, future: Py<PyAny>) -> (u64, std::sync::Arc<Completions>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, future);
        }
        (id, self.shared.clone())
    }
}

#[pymethods]
impl LoopChannel {
    /// The loop's reader callback: resolves every future whose result has arrived.
    fn _drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut buf = [0u8; 512];
        loop {
            match (&self.read).read(&mut buf) {
                Ok(n) if n > 0 => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                _ => break,
            }
        }
        let done = match self.shared.queue.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return Err(internal("the completion queue's lock was poisoned")),
        };
        for (id, result) in done {
            let future = match self.pending.lock() {
                Ok(mut p) => p.remove(&id),
                Err(_) => None,
            };
            let Some(future) = future else { continue };
            let future = future.bind(py);
            // Cancelled by its caller: nobody wants the answer.
            if future.call_method0("done")?.is_truthy()? {
                continue;
            }
            match result
                .map_err(|e| to_py(py, e))
                .and_then(|r| crate::engine::outputs_dict(py, r))
            {
                Ok(d) => future.call_method1("set_result", (d,))?,
                Err(e) => future.call_method1("set_exception", (e.into_value(py),))?,
            };
        }
        Ok(())
    }
}
