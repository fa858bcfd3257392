//! `GET /v2/models/{m}[/versions/{v}]/drift`: a version's drift report (inferd-drift's
//! [`Report`](inferd_drift::Report) as JSON: per tensor its kind and features, each with PSI,
//! KS, the verdict and both distributions).

use axum::Json;
use axum::extract::{Path, State};
use serde_json::Value;

use super::{ApiResult, HttpState, parse_version};

fn report(s: &HttpState, model: &str, version: Option<u64>) -> ApiResult<Json<Value>> {
    let (v, rate, report) = s.engine.drift_report(model, version)?;
    let mut body = serde_json::to_value(&report)
        .map_err(|e| crate::error::ApiError::from(inferd_core::Error::Internal(e.to_string())))?;
    if let Some(o) = body.as_object_mut() {
        o.insert("model".into(), Value::from(model));
        o.insert("version".into(), Value::from(v.to_string()));
        o.insert("sample_rate".into(), Value::from(rate));
    }
    Ok(Json(body))
}

/// The latest ready version's report.
pub(super) async fn model_drift(
    State(s): State<HttpState>,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    report(&s, &model, None)
}

/// One version's report.
pub(super) async fn version_drift(
    State(s): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    report(&s, &model, parse_version(&version)?)
}

/// The latest ready version's reference (`inferd drift baseline`).
pub(super) async fn model_reference(
    State(s): State<HttpState>,
    Path(model): Path<String>,
) -> ApiResult<Json<inferd_drift::Reference>> {
    Ok(Json(s.engine.drift_reference(&model, None)?))
}

/// One version's reference.
pub(super) async fn version_reference(
    State(s): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Json<inferd_drift::Reference>> {
    Ok(Json(
        s.engine.drift_reference(&model, parse_version(&version)?)?,
    ))
}
