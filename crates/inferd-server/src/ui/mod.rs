//! The operator's console at `/ui`: a page, our own small script and stylesheet, all compiled
//! into the binary (no CDN, no remote fonts, no node step), reading the JSON of [`api`] and
//! acting through the admin API (`/v2/routes/{route}/{action}`) with the token the operator
//! types in. Served on the admin listener when there is one, else on the HTTP port.
//!
//! - [`timeline`]: the live charts' series (pure);
//! - [`api`]: the read-only JSON views.
//!
//! Every response carries a strict Content-Security-Policy (scripts and styles from this
//! origin only, no inline code, no frames); the script writes every name with `textContent`,
//! so a hostile model or route name shows as text. While no one looks, the console costs one
//! snapshot of the engine's counters every [`timeline::STEP_SECS`] seconds, taken by the
//! signals task that reads them each second anyway.

pub mod api;
pub mod timeline;

use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use inferd_core::engine::VersionMetrics;

use crate::http::HttpState;
use crate::signals::Signals;
use timeline::Timeline;

/// The policy every console response carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");
const ICON: &str = include_str!("assets/icon.svg");

/// What the console keeps between requests.
pub struct Console {
    timeline: Mutex<Timeline>,
    ticks: std::sync::atomic::AtomicU64,
    /// The autoscaling signals (shared with the metrics page).
    pub signals: Arc<Signals>,
}

impl Console {
    /// A console showing `signals`.
    pub fn new(signals: Arc<Signals>) -> Console {
        Console {
            timeline: Mutex::new(Timeline::default()),
            ticks: Default::default(),
            signals,
        }
    }

    /// One second passed (the signals task calls this with its snapshot): every
    /// [`timeline::STEP_SECS`] seconds the charts get a point.
    pub fn tick(&self, versions: &[VersionMetrics]) {
        let n = self
            .ticks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !n.is_multiple_of(timeline::STEP_SECS) {
            return;
        }
        let now = crate::traffic::now();
        self.timeline().push(now, versions);
    }

    /// The series.
    pub fn timeline(&self) -> MutexGuard<'_, Timeline> {
        self.timeline.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

async fn icon() -> Response {
    asset(ICON, "image/svg+xml")
}

/// Adds the console's security headers to every response under `/ui`.
async fn secure(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// The console's routes: the page, its assets, its JSON, and the test request.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(style))
        .route("/ui/icon.svg", get(icon))
        .route("/ui/api/health", get(api::health))
        .route("/ui/api/overview", get(api::overview))
        .route("/ui/api/models/{model}", get(api::model))
        .route(
            "/ui/api/models/{model}/versions/{version}/infer",
            post(crate::http::infer_v),
        )
        .route("/ui/api/routes", get(api::routes))
        .route("/ui/api/autoscaling", get(api::autoscaling))
        .route("/ui/api/llm", get(api::llm))
        .layer(axum::middleware::from_fn(secure))
}
