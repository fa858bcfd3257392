//! The Prometheus metrics page, on its own listener (`--metrics-port`, 8002 as Triton) and,
//! identical, at `/metrics` on the HTTP port. Built on `prometheus-client`: one registry, a
//! sub-registry per subsystem, each a collector that reads the live state at scrape time (so
//! the engine keeps its own statistics and never depends on a metrics crate).
//!
//! - [`models`]: per model version, labelled `model` and `version`: requests by outcome and
//!   failure `reason`, latency histograms (request, queue, compute), queue depth and in-flight
//!   gauges, executed batch sizes, state, load duration;
//! - [`process`]: the `process_*` series Prometheus clients conventionally export (CPU,
//!   resident memory, open files, start time), read from `/proc`;
//! - [`gpu`]: per-GPU utilisation and memory through NVML, absent without a GPU;
//! - [`signals`]: autoscaling signals per model (demand, capacity, utilisation, forecast) and
//!   start phases;
//! - [`llm`]: generating models' sequences, KV cache, prefix cache, and per-request latency
//!   and token counts, after vLLM's set;
//! - per traffic route and target: requests by outcome and latency (see
//!   [`crate::traffic::observe`]);
//! - [`custom`]: metrics the models define themselves (python models' `MetricFamily`);
//! - this file: server uptime, build info, readiness, and the listener.

pub mod custom;
pub mod drift;
pub mod gpu;
pub mod llm;
pub mod models;
pub mod process;
pub mod signals;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::get;
use inferd_core::Engine;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// The metrics of one server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Per-request LLM histograms (the text API observes them).
    pub llm: llm::LlmRequests,
}

impl Metrics {
    /// Metrics over `engine`, with the server's own series and `traffic`'s per-route ones.
    pub fn new(
        engine: Engine,
        traffic: &crate::traffic::Traffic,
        signals: std::sync::Arc<crate::signals::Signals>,
    ) -> Self {
        let mut registry = Registry::default();
        traffic.observed.register(&mut registry);
        registry.register_collector(Box::new(ServerCollector {
            engine: engine.clone(),
            started: Instant::now(),
        }));
        registry.register_collector(Box::new(llm::LlmCollector::new(engine.clone())));
        let llm = llm::LlmRequests::default();
        llm.register(&mut registry);
        registry.register_collector(Box::new(models::ModelCollector::new(engine.clone())));
        registry.register_collector(Box::new(custom::CustomCollector::new(engine.clone())));
        registry.register_collector(Box::new(drift::DriftCollector::new(engine.clone())));
        registry.register_collector(Box::new(process::ProcessCollector));
        registry.register_collector(Box::new(gpu::GpuCollector::new()));
        registry.register_collector(Box::new(signals::SignalCollector::new(signals, engine)));
        Metrics { registry, llm }
    }

    /// The page, in Prometheus's text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!("cannot render the metrics page: {e}");
        }
        out
    }

    /// `GET /metrics` as an HTTP answer.
    pub fn response(&self) -> Response {
        let mut r = Response::new(Body::from(self.render()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
        );
        r
    }
}

/// The metrics listener's router: `/metrics` only.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move { m.response() }
        }),
    )
}

/// Uptime, build information and readiness.
#[derive(Debug)]
struct ServerCollector {
    engine: Engine,
    started: Instant,
}

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let uptime = ConstGauge::new(self.started.elapsed().as_secs_f64());
        uptime.encode(encoder.encode_descriptor(
            "inferd_uptime",
            "Time since the server started.",
            Some(&Unit::Seconds),
            uptime.metric_type(),
        )?)?;
        let ready = ConstGauge::new(i64::from(self.engine.is_ready()));
        ready.encode(encoder.encode_descriptor(
            "inferd_ready",
            "Whether the server is ready (1) or not (0).",
            None,
            ready.metric_type(),
        )?)?;
        let info = ConstGauge::new(1i64);
        let mut family = encoder.encode_descriptor(
            "inferd_build_info",
            "The running build: version label, value 1.",
            None,
            info.metric_type(),
        )?;
        let labels = [("version", env!("CARGO_PKG_VERSION"))];
        info.encode(family.encode_family(&labels)?)?;
        Ok(())
    }
}
