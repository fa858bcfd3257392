//! The admin API's HTTP handlers: `GET /v2/routes`, `GET|PUT|DELETE /v2/routes/{route}` and
//! `POST /v2/routes/{route}/{action}` (`promote`, `abort`, `pause`, `resume`, `switch`).
//! Every mutating call needs an admin token when one is configured (401 without, 403 when
//! wrong); its `reason` (query parameter, or `"reason"` in an action's JSON body) goes to the
//! audit log.

use std::collections::HashSet;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use inferd_traffic::spec::{RouteSpec, Target};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ChangeError;
use super::auth::Denied;
use super::view::{route_json, routes_json};
use crate::error::ApiError;
use crate::http::{HttpState, read_body};

type ApiResult<T> = Result<T, ApiError>;

/// The optional `?reason=` of a mutating call.
#[derive(Debug, Default, Deserialize)]
pub struct Reason {
    /// Why, for the audit log.
    #[serde(default)]
    pub reason: String,
}

fn denied(d: Denied) -> ApiError {
    let status = match d {
        Denied::Missing => StatusCode::UNAUTHORIZED,
        Denied::Wrong => StatusCode::FORBIDDEN,
    };
    ApiError::new(status, d.message())
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// The admin caller's name, or the refusal (401 / 403).
pub fn admin(s: &HttpState, headers: &HeaderMap) -> ApiResult<String> {
    s.traffic.auth.admin(authorization(headers)).map_err(denied)
}

/// The feedback caller's name, or the refusal (401 / 403).
pub fn feedback_caller(s: &HttpState, headers: &HeaderMap) -> ApiResult<String> {
    s.traffic
        .auth
        .feedback(authorization(headers))
        .map_err(denied)
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        let status = match &e {
            ChangeError::Invalid(_) | ChangeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ChangeError::NotFound(_) => StatusCode::NOT_FOUND,
            ChangeError::Conflict(_) => StatusCode::CONFLICT,
            ChangeError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

fn shown(s: &HttpState, route: &str) -> ApiResult<Json<Value>> {
    route_json(route, &s.traffic.snapshot())
        .map(Json)
        .ok_or_else(|| ChangeError::NotFound(route.to_string()).into())
}

/// `GET /v2/routes`.
pub async fn list_routes(State(s): State<HttpState>) -> Json<Value> {
    Json(routes_json(&s.traffic.snapshot()))
}

/// `GET /v2/routes/{route}`.
pub async fn get_route(
    State(s): State<HttpState>,
    Path(route): Path<String>,
) -> ApiResult<Json<Value>> {
    shown(&s, &route)
}

/// `PUT /v2/routes/{route}`: the route's table as a JSON object (the routes file's schema).
pub async fn put_route(
    State(s): State<HttpState>,
    Path(route): Path<String>,
    Query(q): Query<Reason>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let who = admin(&s, &headers)?;
    let body = read_body(body, &s, &headers).await?;
    let spec = RouteSpec::from_json(&route, &body).map_err(ChangeError::from)?;
    let models: HashSet<String> = s
        .engine
        .index(false)
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    s.traffic
        .put(&who, &route, spec, &|m| models.contains(m), &q.reason)
        .await?;
    shown(&s, &route)
}

/// `DELETE /v2/routes/{route}`.
pub async fn delete_route(
    State(s): State<HttpState>,
    Path(route): Path<String>,
    Query(q): Query<Reason>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let who = admin(&s, &headers)?;
    s.traffic.delete(&who, &route, &q.reason).await?;
    Ok(Json(json!({ "deleted": route })))
}

/// `POST /v2/routes/{route}/{action}`; the body, optional, may carry `{"reason": "..."}`.
pub async fn route_action(
    State(s): State<HttpState>,
    Path((route, action)): Path<(String, String)>,
    Query(q): Query<Reason>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let who = admin(&s, &headers)?;
    let body = read_body(body, &s, &headers).await?;
    let mut why = q.reason;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("action body is not JSON: {e}")))?;
        match v.get("reason") {
            None => {}
            Some(Value::String(r)) => why = r.clone(),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "'reason' must be a string, got {other}"
                )));
            }
        }
    }
    if s.traffic.snapshot().get(&route).is_none() {
        return Err(ChangeError::NotFound(route).into());
    }
    match action.as_str() {
        "promote" | "abort" | "pause" | "resume" => {
            s.traffic.canary_action(&who, &route, &action, &why).await?;
        }
        "switch" => {
            let engine = s.engine.clone();
            let ready =
                move |t: &Target| engine.is_model_ready(&t.model, t.version).unwrap_or(false);
            s.traffic.switch(&who, &route, &ready, &why).await?;
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown route action '{other}'; one of promote, abort, pause, resume, switch"
                ),
            ));
        }
    }
    shown(&s, &route)
}

/// `GET /v2/routes/{route}/report`: an A/B test's statistics, a canary's analyses, a shadow's
/// comparison.
pub async fn route_report(
    State(s): State<HttpState>,
    Path((route, what)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    if what != "report" {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no '{what}' under route '{route}'; GET .../report"),
        ));
    }
    report_json(&s, &route)
        .await
        .map(Json)
        .ok_or_else(|| ChangeError::NotFound(route).into())
}

/// A route as `GET /v2/routes/{route}` shows it, with its A/B experiment's or shadow's report.
pub async fn report_json(s: &HttpState, route: &str) -> Option<Value> {
    let table = s.traffic.snapshot();
    let r = table.get(route)?;
    let mut out = route_json(route, &table)?;
    match &r.spec {
        RouteSpec::Ab { experiment, .. } => {
            let arms: Vec<String> = r.weights().iter().map(|(t, _)| t.to_string()).collect();
            out["experiment"] = s.traffic.outcomes(route).await.report(&arms, experiment);
        }
        RouteSpec::Shadow { .. } => {
            out["shadow"] = s.traffic.shadow_report(route);
        }
        _ => {}
    }
    Some(out)
}

/// `POST /v2/feedback`: an outcome for an A/B test, by request id or by route and key.
pub async fn feedback(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    feedback_caller(&s, &headers)?;
    let body = read_body(body, &s, &headers).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("feedback body is not JSON: {e}")))?;
    Ok(Json(s.traffic.feedback(&v)?))
}
