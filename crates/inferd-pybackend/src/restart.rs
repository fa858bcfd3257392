//! When a crashed worker is started again: after a backoff that doubles with each crash in
//! the window (100 ms, 200 ms, ... up to 10 s), and not at all once it has crashed
//! [`MAX_CRASHES`] times within [`WINDOW`]: then the model is failed (UNAVAILABLE with the last
//! exit status) until it is loaded again. Pure policy, driven by the instance slots.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Crashes within this window count towards giving up.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Crashes within [`WINDOW`] after which the model is failed.
pub const MAX_CRASHES: usize = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What to do after a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start a new worker after this long.
    RestartAfter(Duration),
    /// Stop restarting: the model is failed, for this reason.
    GiveUp(String),
}

/// The crash history of one model's workers.
#[derive(Debug, Default)]
pub struct RestartPolicy {
    crashes: VecDeque<Instant>,
}

impl RestartPolicy {
    /// Records a crash at `now` (`status`: how the worker ended) and decides what follows.
    pub fn crashed(&mut self, now: Instant, status: &str) -> Decision {
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > WINDOW)
        {
            self.crashes.pop_front();
        }
        self.crashes.push_back(now);
        let n = self.crashes.len();
        if n >= MAX_CRASHES {
            return Decision::GiveUp(format!(
                "its python worker exited {n} times within {} s (last: {status}); load the model again once it is fixed",
                WINDOW.as_secs()
            ));
        }
        let factor = 1u32 << (n - 1).min(16);
        Decision::RestartAfter((FIRST_BACKOFF * factor).min(MAX_BACKOFF))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_each_crash_in_the_window_then_gives_up() {
        let mut p = RestartPolicy::default();
        let t0 = Instant::now();
        let waits: Vec<Decision> = (0..4)
            .map(|i| p.crashed(t0 + Duration::from_secs(i), "exit status: 3"))
            .collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800]
                .map(|ms| Decision::RestartAfter(Duration::from_millis(ms)))
                .to_vec()
        );
        match p.crashed(t0 + Duration::from_secs(5), "signal: 9 (SIGKILL)") {
            Decision::GiveUp(why) => {
                assert!(why.contains("5 times") && why.contains("SIGKILL"), "{why}")
            }
            d => panic!("kept restarting: {d:?}"),
        }
    }

    #[test]
    fn crashes_older_than_the_window_are_forgotten() {
        let mut p = RestartPolicy::default();
        let t0 = Instant::now();
        for i in 0..4 {
            p.crashed(t0 + Duration::from_secs(i), "x");
        }
        let later = t0 + WINDOW + Duration::from_secs(10);
        assert_eq!(
            p.crashed(later, "x"),
            Decision::RestartAfter(Duration::from_millis(100))
        );
    }
}
