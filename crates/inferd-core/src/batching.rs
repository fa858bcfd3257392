//! Batch formation for the dynamic batcher, as a pure policy: given the queued requests (oldest
//! first) and the time, decide to run a batch now or when to look again. No I/O, no clocks of its
//! own, so every rule is unit-tested directly. Follows Triton's `dynamic_batching` semantics:
//! a batch never exceeds `max_batch_size`; a preferred batch size that can be formed runs at once;
//! otherwise the batch waits until the oldest request has waited `max_queue_delay`.
//!

use std::time::{Duration, Instant};

/// A queued request as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Rows the request carries (its batch dimension).
    pub rows: usize,
    /// When it was queued.
    pub enqueued: Instant,
    /// Requests batch together only when their keys (shapes past the batch dimension, inputs,
    /// outputs) are equal.
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
    /// A policy; preferred sizes above `max_batch` are dropped.
    pub fn new(max_batch: usize, preferred: &[usize], max_delay: Duration) -> Self {
        let mut preferred: Vec<usize> = preferred
            .iter()
            .copied()
            .filter(|&p| p > 0 && p <= max_batch)
            .collect();
        preferred.sort_unstable();
        preferred.dedup();
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

    /// Decides for a queue in service order (oldest first).
    pub fn decide(&self, queue: &[Pending], now: Instant) -> Decision {
        let Some(oldest) = queue.first() else {
            return Decision::Idle;
        };
        // The longest prefix that fits, and the row count after each request.
        let mut rows = 0usize;
        let mut fits = 0usize;
        let mut best_preferred: Option<usize> = None;
        for p in queue {
            if rows + p.rows > self.max_batch || p.key != oldest.key {
                break;
            }
            rows += p.rows;
            fits += 1;
            if self.preferred.contains(&rows) {
                best_preferred = Some(fits);
            }
        }
        if fits == 0 {
            // A single request larger than max_batch never reaches the queue (validation refuses
            // it); run it alone rather than stall.
            return Decision::Run(1);
        }
        let full = rows == self.max_batch || fits < queue.len();
        if full {
            return Decision::Run(fits);
        }
        if best_preferred == Some(fits) && self.preferred.last() == Some(&rows) {
            return Decision::Run(fits);
        }
        let due = oldest.enqueued + self.max_delay;
        if now >= due {
            return Decision::Run(best_preferred.unwrap_or(fits));
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
    fn largest_preferred_size_runs_at_once_and_on_timeout_the_best_preferred_prefix() {
        let t0 = Instant::now();
        let d = Duration::from_millis(1);
        let p = BatchPolicy::new(16, &[4, 8], d);
        assert_eq!(p.decide(&q(t0, &[4, 4]), t0), Decision::Run(2));
        assert_eq!(
            p.decide(&q(t0, &[2, 2, 1]), t0),
            Decision::WaitUntil(t0 + d)
        );
        assert_eq!(p.decide(&q(t0, &[2, 2, 1]), t0 + d), Decision::Run(2));
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
}
