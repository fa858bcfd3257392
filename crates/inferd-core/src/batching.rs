//! Batch formation for the dynamic batcher, as a pure policy: given the queued requests (oldest
//! first) and the time, decide to run a batch now or when to look again. No I/O, no clocks of its
//! own, so every rule is unit-tested directly. Follows Triton's `dynamic_batching` semantics:
//! - a batch never exceeds `max_batch_size`, and holds only requests of one shape;
//! - no `preferred_batch_size` means one preferred size, `max_batch_size`;
//! - while the oldest request is within `max_queue_delay`, the largest preferred size that the
//!   queue can form runs at once (when the queue holds more than the largest preferred size but
//!   none can be formed exactly, the requests below it run);
//! - a queue that reaches the largest preferred size, or holds more than one batch can take,
//!   runs at once;
//! - otherwise the batch waits until the oldest request has waited `max_queue_delay`, and then
//!   runs everything that fits.

use std::time::{Duration, Instant};

/// A queued request as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Rows the request carries (its batch dimension).
    pub rows: usize,
    /// When it was queued.
    pub enqueued: Instant,
    /// A hash of what requests must share to batch together (shapes past the batch dimension,
    /// inputs, outputs): different keys never batch; equal keys batch only when the caller's
    /// exact comparison agrees (see [`BatchPolicy::decide_with`]).
    pub key: u64,
}

/// What to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run the first `n` queued requests as one batch.
    Run(usize),
    /// Nothing to run before this instant (unless more requests arrive).
    WaitUntil(Instant),
    /// The queue is empty.
    Idle,
}

/// Batch formation settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    max_batch: usize,
    preferred: Vec<usize>,
    max_delay: Duration,
}

impl BatchPolicy {
    /// A policy; preferred sizes above `max_batch` are dropped, and none means `max_batch`.
    pub fn new(max_batch: usize, preferred: &[usize], max_delay: Duration) -> Self {
        let mut preferred: Vec<usize> = preferred
            .iter()
            .copied()
            .filter(|&p| p > 0 && p <= max_batch)
            .collect();
        preferred.sort_unstable();
        preferred.dedup();
        // As Triton normalizes a config without preferred sizes.
        if preferred.is_empty() {
            preferred.push(max_batch.max(1));
        }
        BatchPolicy {
            max_batch: max_batch.max(1),
            preferred,
            max_delay,
        }
    }

    /// Largest batch in rows.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Decides for a queue in service order (oldest first), batching requests of equal keys.
    pub fn decide(&self, queue: &[Pending], now: Instant) -> Decision {
        self.decide_with(queue, now, |_| true)
    }

    /// [`BatchPolicy::decide`], where `same(i)` must also hold for request `i` to join the
    /// oldest's batch: the exact comparison behind equal keys (a hash can collide).
    pub fn decide_with(
        &self,
        queue: &[Pending],
        now: Instant,
        same: impl Fn(usize) -> bool,
    ) -> Decision {
        let Some(oldest) = queue.first() else {
            return Decision::Idle;
        };
        // Never empty (see `new`).
        let max_preferred = self.preferred.last().copied().unwrap_or(self.max_batch);
        // The longest prefix that fits, its row count, and the longest prefix ending on a
        // preferred size (or, when the queue goes past the largest preferred size without
        // forming one, the prefix just below it).
        let mut rows = 0usize;
        let mut fits = 0usize;
        let mut best: Option<usize> = None;
        for (i, p) in queue.iter().enumerate() {
            if p.key != oldest.key || (i > 0 && !same(i)) {
                break;
            }
            if fits > 0 && best.is_none() && rows + p.rows > max_preferred {
                best = Some(fits);
            }
            if rows + p.rows > self.max_batch {
                break;
            }
            rows += p.rows;
            fits += 1;
            if self.preferred.contains(&rows) {
                best = Some(fits);
            }
        }
        if fits == 0 {
            // A single request larger than max_batch never reaches the queue (validation refuses
            // it); run it alone rather than stall.
            return Decision::Run(1);
        }
        let due = oldest.enqueued + self.max_delay;
        let delay_passed = !self.max_delay.is_zero() && now >= due;
        if let Some(n) = best
            && !delay_passed
        {
            return Decision::Run(n);
        }
        if fits < queue.len() || rows >= max_preferred || delay_passed || self.max_delay.is_zero() {
            return Decision::Run(fits);
        }
        Decision::WaitUntil(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(t0: Instant, rows: &[usize]) -> Vec<Pending> {
        rows.iter()
            .map(|&r| Pending {
                rows: r,
                enqueued: t0,
                key: 0,
            })
            .collect()
    }

    #[test]
    fn empty_queue_is_idle() {
        let p = BatchPolicy::new(8, &[], Duration::from_millis(1));
        assert_eq!(p.decide(&[], Instant::now()), Decision::Idle);
    }

    #[test]
    fn zero_delay_runs_what_is_there() {
        let t0 = Instant::now();
        let p = BatchPolicy::new(8, &[], Duration::ZERO);
        assert_eq!(p.decide(&q(t0, &[1, 2]), t0), Decision::Run(2));
    }

    #[test]
    fn waits_for_the_oldest_request_delay_then_runs() {
        let t0 = Instant::now();
        let d = Duration::from_micros(500);
        let p = BatchPolicy::new(8, &[], d);
        assert_eq!(p.decide(&q(t0, &[1, 1]), t0), Decision::WaitUntil(t0 + d));
        assert_eq!(p.decide(&q(t0, &[1, 1]), t0 + d), Decision::Run(2));
    }

    #[test]
    fn full_batch_runs_at_once_and_never_exceeds_max() {
        let t0 = Instant::now();
        let p = BatchPolicy::new(8, &[], Duration::from_secs(1));
        assert_eq!(p.decide(&q(t0, &[4, 4, 1]), t0), Decision::Run(2));
        // 5 + 4 > 8: the second request waits for the next batch.
        assert_eq!(p.decide(&q(t0, &[5, 4]), t0), Decision::Run(1));
    }

    #[test]
    fn a_formed_preferred_size_runs_at_once_and_on_timeout_everything_that_fits() {
        let t0 = Instant::now();
        let d = Duration::from_millis(1);
        let p = BatchPolicy::new(16, &[4, 8], d);
        assert_eq!(p.decide(&q(t0, &[4, 4]), t0), Decision::Run(2));
        // 2 + 2 forms the preferred 4, and the 1 behind it forms none: the 4 runs now.
        assert_eq!(p.decide(&q(t0, &[2, 2, 1]), t0), Decision::Run(2));
        // Five single rows: the largest size they can form is 4.
        assert_eq!(p.decide(&q(t0, &[1; 5]), t0), Decision::Run(4));
        // Nothing preferred formed yet: wait, and after the delay run all that fits.
        assert_eq!(p.decide(&q(t0, &[2, 1]), t0), Decision::WaitUntil(t0 + d));
        assert_eq!(p.decide(&q(t0, &[2, 1]), t0 + d), Decision::Run(2));
        assert_eq!(p.decide(&q(t0, &[2, 2, 1]), t0 + d), Decision::Run(3));
    }

    #[test]
    fn a_queue_past_the_largest_preferred_size_runs_that_size_until_the_delay_passes() {
        let t0 = Instant::now();
        let d = Duration::from_millis(2);
        let p = BatchPolicy::new(64, &[16], d);
        assert_eq!(p.decide(&q(t0, &[1; 20]), t0), Decision::Run(16));
        // Once the oldest has waited out the delay, everything that fits runs.
        assert_eq!(p.decide(&q(t0, &[1; 20]), t0 + d), Decision::Run(20));
        // Past 16 without forming it: the requests below it run.
        assert_eq!(p.decide(&q(t0, &[10, 10]), t0), Decision::Run(1));
        // One request larger than the preferred size runs alone, at once.
        assert_eq!(p.decide(&q(t0, &[20]), t0), Decision::Run(1));
    }

    #[test]
    fn no_preferred_sizes_means_max_batch_size_is_the_preferred_size() {
        let t0 = Instant::now();
        let d = Duration::from_millis(1);
        let p = BatchPolicy::new(8, &[], d);
        assert_eq!(p.decide(&q(t0, &[3, 4]), t0), Decision::WaitUntil(t0 + d));
        assert_eq!(p.decide(&q(t0, &[4, 4]), t0), Decision::Run(2));
        assert_eq!(p.decide(&q(t0, &[1; 12]), t0), Decision::Run(8));
    }

    #[test]
    fn zero_delay_with_preferred_sizes_runs_the_largest_formed_or_all() {
        let t0 = Instant::now();
        let p = BatchPolicy::new(16, &[4, 8], Duration::ZERO);
        assert_eq!(p.decide(&q(t0, &[1; 6]), t0), Decision::Run(4));
        assert_eq!(p.decide(&q(t0, &[1; 3]), t0), Decision::Run(3));
    }

    #[test]
    fn requests_with_other_shapes_are_not_batched_together() {
        let t0 = Instant::now();
        let p = BatchPolicy::new(8, &[], Duration::from_secs(1));
        let mut queue = q(t0, &[1, 1, 1]);
        queue[1].key = 7;
        assert_eq!(p.decide(&queue, t0), Decision::Run(1));
    }

    #[test]
    fn preferred_sizes_above_max_are_ignored() {
        let p = BatchPolicy::new(4, &[8, 2, 2], Duration::ZERO);
        assert_eq!(p.preferred, vec![2]);
    }

    #[test]
    fn equal_keys_that_the_exact_comparison_tells_apart_do_not_batch() {
        let t0 = Instant::now();
        let p = BatchPolicy::new(8, &[], Duration::ZERO);
        let queue = q(t0, &[1, 1, 1]);
        assert_eq!(p.decide(&queue, t0), Decision::Run(3));
        assert_eq!(p.decide_with(&queue, t0, |i| i != 2), Decision::Run(2));
        assert_eq!(p.decide_with(&queue, t0, |_| false), Decision::Run(1));
    }
}
