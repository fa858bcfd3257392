//! `GET /metrics`: Prometheus text exposition of what autoscalers and operators need from the
//! scheduler (queue depth, requests in flight, request and execution counts, executed batch
//! sizes as a histogram).

use std::fmt::Write;

use inferd_core::Engine;
use inferd_core::stats::VersionStats;

/// A counter's name, help text and how to read it from a version's statistics.
type Counter = (&'static str, &'static str, fn(&VersionStats) -> u64);

/// Upper bounds of the batch-size histogram buckets.
const BATCH_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(model: &str, version: u64) -> String {
    format!("model=\"{}\",version=\"{version}\"", escape(model))
}

/// Renders the metrics page.
pub fn render(engine: &Engine) -> String {
    let mut out = String::new();
    let stats: Vec<(String, u64, VersionStats)> = engine.statistics(None, None).unwrap_or_default();
    let gauges = engine.load_gauges();
    let _ = writeln!(
        out,
        "# HELP inferd_ready Whether the server is ready (1) or not (0)."
    );
    let _ = writeln!(out, "# TYPE inferd_ready gauge");
    let _ = writeln!(out, "inferd_ready {}", u8::from(engine.is_ready()));
    let _ = writeln!(
        out,
        "# HELP inferd_queue_depth Requests waiting in a model version's queue."
    );
    let _ = writeln!(out, "# TYPE inferd_queue_depth gauge");
    for (m, v, depth, _) in &gauges {
        let _ = writeln!(out, "inferd_queue_depth{{{}}} {depth}", labels(m, *v));
    }
    let _ = writeln!(
        out,
        "# HELP inferd_inflight_requests Requests holding a model version (queued or running)."
    );
    let _ = writeln!(out, "# TYPE inferd_inflight_requests gauge");
    for (m, v, _, inflight) in &gauges {
        let _ = writeln!(
            out,
            "inferd_inflight_requests{{{}}} {inflight}",
            labels(m, *v)
        );
    }
    let counters: [Counter; 5] = [
        (
            "inferd_request_success_total",
            "Requests answered successfully.",
            |s| s.infer.success.count,
        ),
        (
            "inferd_request_failure_total",
            "Requests that failed or were refused.",
            |s| s.infer.fail.count,
        ),
        (
            "inferd_inference_total",
            "Rows inferred (a batch of 8 rows counts 8).",
            |s| s.inference_count,
        ),
        (
            "inferd_execution_total",
            "Model executions (a batch counts once).",
            |s| s.execution_count,
        ),
        (
            "inferd_queue_duration_us_total",
            "Microseconds requests spent queued, summed.",
            |s| s.infer.queue.ns / 1000,
        ),
    ];
    for (name, help, f) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (m, v, s) in &stats {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(m, *v), f(s));
        }
    }
    let _ = writeln!(out, "# HELP inferd_batch_size Rows per model execution.");
    let _ = writeln!(out, "# TYPE inferd_batch_size histogram");
    for (m, v, s) in &stats {
        let l = labels(m, *v);
        let mut count = 0u64;
        let mut sum = 0u64;
        let mut cumulative = [0u64; BATCH_BUCKETS.len()];
        for (&size, b) in &s.batches {
            let n = b.compute_infer.count;
            count += n;
            sum += size * n;
            for (i, &le) in BATCH_BUCKETS.iter().enumerate() {
                if size <= le {
                    cumulative[i] += n;
                }
            }
        }
        for (i, le) in BATCH_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "inferd_batch_size_bucket{{{l},le=\"{le}\"}} {}",
                cumulative[i]
            );
        }
        let _ = writeln!(out, "inferd_batch_size_bucket{{{l},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "inferd_batch_size_sum{{{l}}} {sum}");
        let _ = writeln!(out, "inferd_batch_size_count{{{l}}} {count}");
    }
    out
}
