//! The JSON the console's pages read (`/ui/api/...`): read-only views assembled from the
//! engine, the timeline, the traffic table and the signals. Served next to the console (on the
//! admin listener when there is one), so the console never needs a second origin.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use inferd_core::describe::statistics_json;
use inferd_core::engine::{IndexEntry, VersionMetrics};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::http::HttpState;
use crate::traffic::admin::report_json;
use crate::traffic::view::routes_json;

type ApiResult<T> = Result<T, ApiError>;

fn version_json(e: &IndexEntry, m: Option<&VersionMetrics>) -> Value {
    let mut v = json!({
        "version": e.version.map(|v| v.to_string()),
        "state": e.state.map_or("UNAVAILABLE", |s| s.as_str()),
        "reason": e.reason,
    });
    if let Some(m) = m {
        v["queue"] = json!(m.queue_depth);
        v["inflight"] = json!(m.inflight);
        v["instances"] = json!(m.instances);
        v["load_secs"] = json!(m.load_duration.map(|d| d.as_secs_f64()));
        v["phases"] = Value::Array(
            m.start_phases
                .iter()
                .map(|(name, d)| json!({ "name": name, "secs": d.as_secs_f64() }))
                .collect(),
        );
    }
    v
}

/// Every model's versions: states, reasons, load phases, queues.
fn models_json(index: &[IndexEntry], metrics: &[VersionMetrics]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in index {
        let m = metrics
            .iter()
            .find(|m| m.model == e.name && Some(m.version) == e.version);
        out.entry(e.name.clone())
            .or_default()
            .push(version_json(e, m));
    }
    out
}

/// `GET /ui/api/health`: `{"live", "ready"}` (the header's badge on every page).
pub async fn health(State(s): State<HttpState>) -> Json<Value> {
    Json(json!({ "live": s.engine.is_live(), "ready": s.engine.is_ready() }))
}

/// `GET /ui/api/overview`: server health, every model with its versions and its latest
/// numbers, the routes, and the server's series of the last 15 minutes.
pub async fn overview(State(s): State<HttpState>) -> ApiResult<Json<Value>> {
    let index = s.engine.index(false).await?;
    let metrics = s.engine.metrics_snapshot();
    let timeline = s.console.timeline();
    let latest = timeline.latest();
    let models: Vec<Value> = models_json(&index, &metrics)
        .into_iter()
        .map(|(name, versions)| {
            json!({
                "name": name,
                "versions": versions,
                "now": latest.get(&name),
            })
        })
        .collect();
    let routes: Vec<Value> = routes_json(&s.traffic.snapshot())
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| json!({ "name": r["name"], "kind": r["kind"], "state": r["state"] }))
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(json!({
        "server": {
            "version": env!("CARGO_PKG_VERSION"),
            "live": s.engine.is_live(),
            "ready": s.engine.is_ready(),
            "inflight": s.engine.inflight(),
        },
        "step_secs": super::timeline::STEP_SECS,
        "series": timeline.server(),
        "models": models,
        "routes": routes,
        "token_required": !s.traffic.auth.admin_open(),
    })))
}

/// `GET /ui/api/models/{model}`: versions, the latest ready version's config, statistics, the
/// batch sizes executed, drift per version, and the model's series.
pub async fn model(
    State(s): State<HttpState>,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    let index: Vec<IndexEntry> = s
        .engine
        .index(false)
        .await?
        .into_iter()
        .filter(|e| e.name == model)
        .collect();
    if index.is_empty() {
        return Err(ApiError::from(inferd_core::Error::NotFound(format!(
            "unknown model: '{model}'"
        ))));
    }
    let metrics = s.engine.metrics_snapshot();
    let versions = models_json(&index, &metrics)
        .remove(&model)
        .unwrap_or_default();
    let config = s
        .engine
        .model_info(&model, None)
        .ok()
        .and_then(|i| serde_json::to_value(&*i.config).ok());
    let rows = s.engine.statistics(Some(&model), None).unwrap_or_default();
    let batches: Vec<Value> = rows
        .iter()
        .map(|(_, v, st)| {
            json!({
                "version": v.to_string(),
                "sizes": st.batches.iter().map(|(size, b)| json!({
                    "size": size,
                    "count": b.compute_infer.count,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let drift: Vec<Value> = index
        .iter()
        .filter_map(|e| e.version)
        .map(|v| match s.engine.drift_report(&model, Some(v)) {
            Ok((_, rate, report)) => json!({
                "version": v.to_string(),
                "sample_rate": rate,
                "report": report,
            }),
            Err(e) => json!({ "version": v.to_string(), "error": e.to_string() }),
        })
        .collect();
    Ok(Json(json!({
        "name": model,
        "versions": versions,
        "config": config,
        "statistics": statistics_json(&rows),
        "batches": batches,
        "drift": drift,
        "series": s.console.timeline().model(&model),
        "step_secs": super::timeline::STEP_SECS,
    })))
}

/// `GET /ui/api/routes`: every route with its canary timeline, A/B report or shadow report.
pub async fn routes(State(s): State<HttpState>) -> Json<Value> {
    let names: Vec<String> = s
        .traffic
        .snapshot()
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        if let Some(r) = report_json(&s, &n).await {
            out.push(r);
        }
    }
    Json(json!({
        "routes": out,
        "token_required": !s.traffic.auth.admin_open(),
    }))
}

/// `GET /ui/api/autoscaling`: per model demand, capacity, utilisation and forecast.
pub async fn autoscaling(State(s): State<HttpState>) -> Json<Value> {
    let rows: Vec<Value> = s
        .console
        .signals
        .snapshot()
        .into_iter()
        .map(|g| {
            json!({
                "model": g.model,
                "demand": g.demand,
                "capacity": g.capacity,
                "utilisation": g.capacity.filter(|c| *c > 0.0).map(|c| g.demand / c),
                "forecast": g.forecast,
                "forecast_ready": g.forecast_ready,
                "horizon_secs": g.horizon_secs,
            })
        })
        .collect();
    Json(json!({ "models": rows }))
}

/// `GET /ui/api/llm`: every generating version's sequences, KV cache, prefix cache and
/// latencies.
pub async fn llm(State(s): State<HttpState>) -> Json<Value> {
    let rows: Vec<Value> = s
        .engine
        .metrics_snapshot()
        .into_iter()
        .filter_map(|v| {
            let g = v.generator?;
            let (ttft, itl) = s.metrics.llm.means(&v.model);
            Some(json!({
                "model": v.model,
                "version": v.version.to_string(),
                "running": g.running,
                "waiting": g.waiting,
                "kv_blocks_used": g.kv_blocks_used,
                "kv_blocks_total": g.kv_blocks_total,
                "kv_usage": (g.kv_blocks_total > 0)
                    .then(|| g.kv_blocks_used as f64 / g.kv_blocks_total as f64),
                "prefix_hit_rate": (g.prefix_queries > 0)
                    .then(|| g.prefix_hits as f64 / g.prefix_queries as f64),
                "preemptions": g.preemptions,
                "prompt_tokens": g.prompt_tokens,
                "generation_tokens": g.generation_tokens,
                "ttft_mean_secs": ttft,
                "itl_mean_secs": itl,
            }))
        })
        .collect();
    Json(json!({ "models": rows }))
}
