//! LLM series, named after vLLM's so its dashboards and autoscaling rules map one to one
//! (`vllm:num_requests_running` is `inferd_llm_requests_running`, and so on), labelled `model`
//! and `version`: running and waiting sequences, KV-cache usage, prefix-cache queries and
//! hits, preemptions, prompt and generated tokens (read from each generating version at scrape
//! time); and per request, labelled `model`, time to first token, inter-token latency,
//! end-to-end latency and the prompt and generated token counts (observed by the text API).

use inferd_core::Engine;
use inferd_core::engine::VersionMetrics;
use inferd_core::generate::GeneratorStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::models::{Desc, counter, family, gauge};

type Labels = Vec<(&'static str, String)>;
type Hist = Family<Labels, Histogram, fn() -> Histogram>;

const LATENCY: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
];
const E2E: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0,
];
const TOKENS: [f64; 12] = [
    1.0, 4.0, 16.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

/// Per-request LLM histograms, observed by the text API.
#[derive(Debug, Clone)]
pub struct LlmRequests {
    ttft: Hist,
    itl: Hist,
    e2e: Hist,
    prompt: Hist,
    generated: Hist,
    /// Per model: (TTFT sum, count, inter-token sum, count) for the console, which cannot read
    /// prometheus-client's histograms back.
    means: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, [f64; 4]>>>,
}

impl Default for LlmRequests {
    fn default() -> Self {
        LlmRequests {
            ttft: Family::new_with_constructor(|| Histogram::new(LATENCY)),
            itl: Family::new_with_constructor(|| Histogram::new(LATENCY)),
            e2e: Family::new_with_constructor(|| Histogram::new(E2E)),
            prompt: Family::new_with_constructor(|| Histogram::new(TOKENS)),
            generated: Family::new_with_constructor(|| Histogram::new(TOKENS)),
            means: Default::default(),
        }
    }
}

/// One finished request's timings.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestTimes {
    /// Seconds between later pieces of text.
    pub gaps: (f64, u64),
    /// Seconds in all.
    pub e2e: f64,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub generated_tokens: usize,
}

impl LlmRequests {
    /// Records a request's time to its first text (also for requests cancelled later).
    pub fn first_token(&self, model: &str, secs: f64) {
        self.add_mean(model, 0, secs);
        self.ttft
            .get_or_create(&vec![("model", model.to_string())])
            .observe(secs);
    }

    /// Records a finished request of `model`.
    pub fn observe(&self, model: &str, t: RequestTimes) {
        let l = vec![("model", model.to_string())];
        if t.gaps.1 > 0 {
            self.add_mean(model, 2, t.gaps.0 / t.gaps.1 as f64);
            self.itl
                .get_or_create(&l)
                .observe(t.gaps.0 / t.gaps.1 as f64);
        }
        self.e2e.get_or_create(&l).observe(t.e2e);
        self.prompt
            .get_or_create(&l)
            .observe(t.prompt_tokens as f64);
        self.generated
            .get_or_create(&l)
            .observe(t.generated_tokens as f64);
    }

    fn add_mean(&self, model: &str, at: usize, secs: f64) {
        let mut m = self.means.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded like the histogram families: one entry per model the text API served.
        let e = m.entry(model.to_string()).or_default();
        e[at] += secs;
        e[at + 1] += 1.0;
    }

    /// Mean time to first token and mean inter-token latency of `model`'s requests since the
    /// start, in seconds (`None` before the first).
    pub fn means(&self, model: &str) -> (Option<f64>, Option<f64>) {
        let m = self.means.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = m.get(model) else {
            return (None, None);
        };
        let mean = |sum: f64, n: f64| (n > 0.0).then(|| sum / n);
        (mean(e[0], e[1]), mean(e[2], e[3]))
    }

    /// Registers the histograms.
    pub fn register(&self, r: &mut Registry) {
        let s = Unit::Seconds;
        r.register_with_unit(
            "inferd_llm_time_to_first_token",
            "Seconds from request to first text.",
            s.clone(),
            self.ttft.clone(),
        );
        r.register_with_unit(
            "inferd_llm_inter_token_latency",
            "Mean seconds between pieces of text, per request.",
            s.clone(),
            self.itl.clone(),
        );
        r.register_with_unit(
            "inferd_llm_e2e_request_latency",
            "Seconds from request to its last token.",
            s,
            self.e2e.clone(),
        );
        r.register(
            "inferd_llm_request_prompt_tokens",
            "Prompt tokens per request.",
            self.prompt.clone(),
        );
        r.register(
            "inferd_llm_request_generation_tokens",
            "Generated tokens per request.",
            self.generated.clone(),
        );
    }
}

/// Reads every generating version's live numbers at scrape time.
#[derive(Debug)]
pub struct LlmCollector {
    engine: Engine,
}

impl LlmCollector {
    /// A collector over `engine`.
    pub fn new(engine: Engine) -> Self {
        LlmCollector { engine }
    }
}

fn g(v: &VersionMetrics) -> Option<&GeneratorStats> {
    v.generator.as_ref()
}

impl Collector for LlmCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let vs = self.engine.metrics_snapshot();
        let desc = |name, help, kind| Desc {
            name,
            help,
            unit: None,
            kind,
        };
        family(
            &mut e,
            desc(
                "inferd_llm_requests_running",
                "Sequences running (vllm:num_requests_running).",
                MetricType::Gauge,
            ),
            &vs,
            |v| g(v).map(|s| s.running as i64),
            gauge,
        )?;
        family(
            &mut e,
            desc(
                "inferd_llm_requests_waiting",
                "Sequences waiting, new or preempted (vllm:num_requests_waiting).",
                MetricType::Gauge,
            ),
            &vs,
            |v| g(v).map(|s| s.waiting as i64),
            gauge,
        )?;
        family(
            &mut e,
            desc(
                "inferd_llm_kv_cache_blocks_used",
                "KV blocks held by sequences.",
                MetricType::Gauge,
            ),
            &vs,
            |v| g(v).map(|s| s.kv_blocks_used as i64),
            gauge,
        )?;
        family(
            &mut e,
            desc(
                "inferd_llm_kv_cache_blocks",
                "KV blocks in all.",
                MetricType::Gauge,
            ),
            &vs,
            |v| g(v).map(|s| s.kv_blocks_total as i64),
            gauge,
        )?;
        family(
            &mut e,
            desc(
                "inferd_llm_kv_cache_usage_ratio",
                "Fraction of KV blocks in use (vllm:kv_cache_usage_perc).",
                MetricType::Gauge,
            ),
            &vs,
            |v| g(v).map(|s| s.kv_blocks_used as f64 / s.kv_blocks_total.max(1) as f64),
            |m: &mut MetricEncoder, x: f64| m.encode_gauge(&x),
        )?;
        family(
            &mut e,
            desc(
                "inferd_llm_kv_cache_waste_ratio",
                "KV token slots held by sequences but not filled, over slots held.",
                MetricType::Gauge,
            ),
            &vs,
            |v| g(v).map(|s| s.kv_waste),
            |m: &mut MetricEncoder, x: f64| m.encode_gauge(&x),
        )?;
        family(
            &mut e,
            desc(
                "inferd_llm_prefix_cache_queries",
                "Prefix-cache lookups, in blocks (vllm:prefix_cache_queries).",
                MetricType::Counter,
            ),
            &vs,
            |v| g(v).map(|s| s.prefix_queries),
            counter,
        )?;
        family(
            &mut e,
            desc(
                "inferd_llm_prefix_cache_hits",
                "Prefix-cache hits, in blocks (vllm:prefix_cache_hits).",
                MetricType::Counter,
            ),
            &vs,
            |v| g(v).map(|s| s.prefix_hits),
            counter,
        )?;
        family(
            &mut e,
            desc(
                "inferd_llm_preemptions",
                "Sequences preempted for KV memory (vllm:num_preemptions).",
                MetricType::Counter,
            ),
            &vs,
            |v| g(v).map(|s| s.preemptions),
            counter,
        )?;
        family(
            &mut e,
            desc(
                "inferd_llm_prompt_tokens",
                "Prompt tokens computed (vllm:prompt_tokens).",
                MetricType::Counter,
            ),
            &vs,
            |v| g(v).map(|s| s.prompt_tokens),
            counter,
        )?;
        family(
            &mut e,
            desc(
                "inferd_llm_generation_tokens",
                "Tokens generated (vllm:generation_tokens).",
                MetricType::Counter,
            ),
            &vs,
            |v| g(v).map(|s| s.generation_tokens),
            counter,
        )?;
        Ok(())
    }
}
