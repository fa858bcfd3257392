//! Per-version statistics in the shape of Triton's statistics extension (request counts and
//! cumulative nanoseconds per phase, and per executed batch size), plus what a metrics page
//! needs on top: failures by reason and latency histograms with fixed buckets.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// Upper bounds, in seconds, of the latency histograms' buckets (a last, unbounded one follows):
/// from 100 us (a small model answered in-process) to 10 s (an LLM request).
pub const LATENCY_BUCKETS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A latency histogram over [`LATENCY_BUCKETS_S`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is above every bound.
    pub counts: [u64; LATENCY_BUCKETS_S.len() + 1],
    /// Sum of the observations, in nanoseconds.
    pub sum_ns: u64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    /// Adds one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS_S
            .iter()
            .position(|&le| s <= le)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.counts[i] += 1;
        self.sum_ns = self
            .sum_ns
            .saturating_add(d.as_nanos().min(u64::MAX as u128) as u64);
        self.count += 1;
    }

    /// `(upper bound, observations in that bucket alone)`, the unbounded bucket last with
    /// bound `+Inf`; exposition encoders accumulate them.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        LATENCY_BUCKETS_S
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts)
            .collect()
    }
}

/// Why a request failed, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The request was wrong (bad input, unknown output, a model that cannot run it).
    Client,
    /// Refused at a limit or while unavailable (queue full, shutting down, unloading).
    Rejected,
    /// It waited in the queue past its timeout.
    Timeout,
    /// The server or the backend failed.
    Backend,
}

impl FailureReason {
    /// The reason an engine error stands for.
    pub fn of(e: &Error) -> Self {
        match e {
            Error::InvalidArgument(_)
            | Error::FailedPrecondition(_)
            | Error::NotFound(_)
            | Error::Cancelled(_) => FailureReason::Client,
            Error::Overloaded { .. } | Error::Unavailable(_) => FailureReason::Rejected,
            Error::DeadlineExceeded(_) => FailureReason::Timeout,
            Error::Internal(_) => FailureReason::Backend,
        }
    }

    /// The label value (`client_error`, `rejected`, `timeout`, `backend_error`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Client => "client_error",
            FailureReason::Rejected => "rejected",
            FailureReason::Timeout => "timeout",
            FailureReason::Backend => "backend_error",
        }
    }

    /// Every reason, in label order.
    pub const ALL: [FailureReason; 4] = [
        FailureReason::Client,
        FailureReason::Rejected,
        FailureReason::Timeout,
        FailureReason::Backend,
    ];
}

/// Failed requests by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    /// [`FailureReason::Client`].
    pub client: u64,
    /// [`FailureReason::Rejected`].
    pub rejected: u64,
    /// [`FailureReason::Timeout`].
    pub timeout: u64,
    /// [`FailureReason::Backend`].
    pub backend: u64,
}

impl Failures {
    /// The count for `reason`.
    pub fn get(&self, reason: FailureReason) -> u64 {
        match reason {
            FailureReason::Client => self.client,
            FailureReason::Rejected => self.rejected,
            FailureReason::Timeout => self.timeout,
            FailureReason::Backend => self.backend,
        }
    }

    fn add(&mut self, reason: FailureReason) {
        match reason {
            FailureReason::Client => self.client += 1,
            FailureReason::Rejected => self.rejected += 1,
            FailureReason::Timeout => self.timeout += 1,
            FailureReason::Backend => self.backend += 1,
        }
    }
}

/// A count and the total time it took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatDuration {
    /// Occurrences.
    pub count: u64,
    /// Total nanoseconds.
    pub ns: u64,
}

impl StatDuration {
    pub(crate) fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns += d.as_nanos().min(u64::MAX as u128) as u64;
    }
}

/// Request-level statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InferStats {
    /// Successful requests, end-to-end time in the engine.
    pub success: StatDuration,
    /// Failed requests.
    pub fail: StatDuration,
    /// Time waiting in the queue.
    pub queue: StatDuration,
    /// Preparing inputs.
    pub compute_input: StatDuration,
    /// Running the model.
    pub compute_infer: StatDuration,
    /// Preparing outputs.
    pub compute_output: StatDuration,
    /// Requests answered from the response cache (lookup time).
    pub cache_hit: StatDuration,
    /// Requests the cache did not have (lookup plus insertion time).
    pub cache_miss: StatDuration,
}

/// Statistics for one executed batch size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Preparing inputs.
    pub compute_input: StatDuration,
    /// Running the model.
    pub compute_infer: StatDuration,
    /// Preparing outputs.
    pub compute_output: StatDuration,
}

/// Statistics of one model version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionStats {
    /// Milliseconds since the epoch of the last inference; 0 if none.
    pub last_inference_ms: u64,
    /// Inferences performed (rows: a batch of 8 counts 8).
    pub inference_count: u64,
    /// Model executions (a batch counts once).
    pub execution_count: u64,
    /// Request-level statistics.
    pub infer: InferStats,
    /// Per executed batch size.
    pub batches: BTreeMap<u64, BatchStats>,
    /// Failed requests by reason.
    pub failures: Failures,
    /// End-to-end time of every request in the engine, success or failure.
    pub request_duration: Histogram,
    /// Time requests waited in the queue.
    pub queue_duration: Histogram,
    /// Time of each model execution (a batch counts once).
    pub compute_duration: Histogram,
}

/// Timings of one execution.
#[derive(Clone, Copy, Debug)]
pub struct ExecutionTimes {
    /// Rows executed.
    pub batch: usize,
    /// Requests in the execution.
    pub requests: usize,
    /// Preparing inputs.
    pub input: Duration,
    /// Running the model.
    pub infer: Duration,
    /// Preparing outputs.
    pub output: Duration,
}

impl VersionStats {
    /// Records one execution.
    pub fn record_execution(&mut self, t: ExecutionTimes) {
        self.last_inference_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.inference_count += t.batch as u64;
        self.execution_count += 1;
        for _ in 0..t.requests {
            self.infer.compute_input.add(t.input);
            self.infer.compute_infer.add(t.infer);
            self.infer.compute_output.add(t.output);
        }
        self.compute_duration.observe(t.infer);
        let b = self.batches.entry(t.batch as u64).or_default();
        b.compute_input.add(t.input);
        b.compute_infer.add(t.infer);
        b.compute_output.add(t.output);
    }

    /// Records how a request ended and how long it took in the engine.
    pub fn record_outcome(&mut self, outcome: Result<(), FailureReason>, total: Duration) {
        match outcome {
            Ok(()) => self.infer.success.add(total),
            Err(reason) => {
                self.infer.fail.add(total);
                self.failures.add(reason);
            }
        }
        self.request_duration.observe(total);
    }

    /// Records how long a request waited in the queue before it ran.
    pub fn record_queue(&mut self, waited: Duration) {
        self.infer.queue.add(waited);
        self.queue_duration.observe(waited);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_counts_rows_and_batches() {
        let mut s = VersionStats::default();
        let t = ExecutionTimes {
            batch: 8,
            requests: 1,
            input: Duration::from_nanos(10),
            infer: Duration::from_nanos(100),
            output: Duration::from_nanos(5),
        };
        s.record_execution(t);
        s.record_execution(t);
        s.record_queue(Duration::from_nanos(3));
        s.record_outcome(Ok(()), Duration::from_nanos(200));
        s.record_outcome(Err(FailureReason::Timeout), Duration::from_nanos(50));
        assert_eq!(s.inference_count, 16);
        assert_eq!(s.execution_count, 2);
        assert_eq!(
            s.batches[&8].compute_infer,
            StatDuration { count: 2, ns: 200 }
        );
        assert_eq!(s.infer.success, StatDuration { count: 1, ns: 200 });
        assert_eq!(s.infer.fail.count, 1);
        assert_eq!(s.infer.queue, StatDuration { count: 1, ns: 3 });
        assert!(s.last_inference_ms > 0);
        assert_eq!(s.failures.get(FailureReason::Timeout), 1);
        assert_eq!(s.failures.get(FailureReason::Client), 0);
        assert_eq!(s.request_duration.count, 2);
        assert_eq!(s.compute_duration.count, 2, "once per execution");
        assert_eq!(s.queue_duration.count, 1);
    }

    #[test]
    fn histogram_buckets_are_upper_bounds_and_hold_their_own_observations() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(100)); // on the first bound: in it
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(60));
        let b = h.buckets();
        assert_eq!(b[0], (0.0001, 1));
        assert_eq!(b[1], (0.00025, 1));
        assert_eq!(b[LATENCY_BUCKETS_S.len() - 1], (10.0, 0));
        assert_eq!(b.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), h.count);
        assert_eq!(h.sum_ns, 100_000 + 101_000 + 60_000_000_000);
    }

    #[test]
    fn engine_errors_map_to_failure_reasons() {
        let m = || "m".to_string();
        assert_eq!(
            FailureReason::of(&Error::InvalidArgument(m())),
            FailureReason::Client
        );
        assert_eq!(
            FailureReason::of(&Error::Overloaded {
                message: m(),
                retry_after_secs: 1
            }),
            FailureReason::Rejected
        );
        assert_eq!(
            FailureReason::of(&Error::Unavailable(m())),
            FailureReason::Rejected
        );
        assert_eq!(
            FailureReason::of(&Error::DeadlineExceeded(m())),
            FailureReason::Timeout
        );
        assert_eq!(
            FailureReason::of(&Error::Internal(m())),
            FailureReason::Backend
        );
    }
}
