//! Per-version statistics in the shape of Triton's statistics extension: request counts and
//! cumulative nanoseconds per phase, and per executed batch size.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and the total time it took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatDuration {
    /// Occurrences.
    pub count: u64,
    /// Total nanoseconds.
    pub ns: u64,
}

impl StatDuration {
    fn add(&mut self, d: Duration) {
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
        let b = self.batches.entry(t.batch as u64).or_default();
        b.compute_input.add(t.input);
        b.compute_infer.add(t.infer);
        b.compute_output.add(t.output);
    }

    /// Records a finished request.
    pub fn record_request(&mut self, ok: bool, total: Duration, queue: Option<Duration>) {
        if ok {
            self.infer.success.add(total)
        } else {
            self.infer.fail.add(total)
        }
        if let Some(q) = queue {
            self.infer.queue.add(q);
        }
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
        s.record_request(
            true,
            Duration::from_nanos(200),
            Some(Duration::from_nanos(3)),
        );
        s.record_request(false, Duration::from_nanos(50), None);
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
    }
}
