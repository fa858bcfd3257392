//! Keeps one async worker polling for a short window after HTTP traffic, instead of parking.
//!
//! On virtual machines a parked thread takes tens of microseconds to wake (measured here: a
//! blocking socket server answers a keep-alive request in ~120 us at p50, the same server
//! spinning in ~36 us), which is more than a small model's whole request. While the window is
//! open, a task yields in a loop: the runtime then polls its I/O driver without blocking, so a
//! request that arrives (or a result that comes back from an executor thread) is picked up at
//! once. The window closes `window` after the last request began or ended, so an idle server
//! costs nothing; and it stays shut while more than one request is in flight, since a loaded
//! server's workers are awake anyway and a spinning one would only take CPU from them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The spin window and its state.
#[derive(Debug)]
pub struct Spinner {
    window: Duration,
    epoch: Instant,
    last_ns: AtomicU64,
    inflight: AtomicU64,
    spinning: AtomicBool,
    wake: Notify,
}

impl Spinner {
    /// A spinner with this window; zero disables it.
    pub fn new(window: Duration) -> Arc<Spinner> {
        Arc::new(Spinner {
            window,
            epoch: Instant::now(),
            last_ns: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            spinning: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Marks activity: (re)opens the window.
    pub fn touch(&self) {
        if self.window.is_zero() {
            return;
        }
        self.last_ns.store(self.now_ns(), Ordering::Relaxed);
        if !self.spinning.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Marks a request in flight until the guard drops (and touches at both ends).
    pub fn guard(self: &Arc<Self>) -> SpinGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        SpinGuard(self.clone())
    }

    /// Runs the spinner until the runtime shuts down.
    pub async fn run(self: Arc<Self>) {
        if self.window.is_zero() {
            return;
        }
        let window = self.window.as_nanos() as u64;
        loop {
            self.wake.notified().await;
            self.spinning.store(true, Ordering::Relaxed);
            while self.inflight.load(Ordering::Relaxed) <= 1
                && self
                    .now_ns()
                    .saturating_sub(self.last_ns.load(Ordering::Relaxed))
                    < window
            {
                // Offer the core to other threads (a client on the same machine) before
                // polling again; with none runnable this returns at once.
                std::thread::yield_now();
                tokio::task::yield_now().await;
            }
            self.spinning.store(false, Ordering::Relaxed);
        }
    }
}

/// A request in flight; see [`Spinner::guard`].
#[derive(Debug)]
pub struct SpinGuard(Arc<Spinner>);

impl Drop for SpinGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spins_only_inside_the_window_after_activity() {
        let s = Spinner::new(Duration::from_millis(30));
        let task = tokio::spawn(s.clone().run());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!s.spinning.load(Ordering::Relaxed), "idle: no spinning");
        s.touch();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            s.spinning.load(Ordering::Relaxed),
            "just after activity: spinning"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !s.spinning.load(Ordering::Relaxed),
            "window over: parked again"
        );
        task.abort();
    }
}
