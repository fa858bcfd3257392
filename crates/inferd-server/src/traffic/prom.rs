//! Canary analyses on Prometheus's numbers (a canary route's `prometheus` URL): the error rate
//! and p99 of each side over the last interval, summed over every replica Prometheus scrapes,
//! from this server's own per-route series. So replicas decide on one set of figures, whichever
//! of them holds the decider lease. Prometheus must scrape at least twice per interval for
//! `increase` and `rate` to see it.

use std::sync::OnceLock;
use std::time::Duration;

use inferd_traffic::canary::Window;
use inferd_traffic::spec::Target;
use serde_json::Value;

/// Deadline for one query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

fn client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            // reqwest's rustls needs a process-wide provider for https:// Prometheus: ring, as
            // the server's own TLS uses (deprecated only for lacking post-quantum key exchange).
            #[allow(deprecated)]
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .timeout(QUERY_TIMEOUT)
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A PromQL string literal: backslashes and double quotes escaped.
fn literal(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The three queries for one side: requests, failures, p99 (seconds).
pub fn queries(route: &str, target: &str, interval_secs: u64) -> [String; 3] {
    let sel = format!("route={},target={}", literal(route), literal(target));
    [
        format!("sum(increase(inferd_route_requests_total{{{sel}}}[{interval_secs}s]))"),
        format!(
            "sum(increase(inferd_route_requests_total{{{sel},outcome=\"failure\"}}[{interval_secs}s]))"
        ),
        format!(
            "histogram_quantile(0.99, sum by (le) (rate(inferd_route_request_duration_seconds_bucket{{{sel}}}[{interval_secs}s])))"
        ),
    ]
}

/// The value of an instant query's answer: `None` for an empty result or NaN.
pub fn scalar(answer: &Value) -> Result<Option<f64>, String> {
    if answer["status"] != "success" {
        return Err(format!(
            "query failed: {}",
            answer["error"].as_str().unwrap_or("no error message")
        ));
    }
    let Some(first) = answer["data"]["result"].as_array().and_then(|r| r.first()) else {
        return Ok(None);
    };
    let text = first["value"][1]
        .as_str()
        .ok_or_else(|| format!("unexpected answer: {first}"))?;
    let v: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number"))?;
    Ok(v.is_finite().then_some(v))
}

async fn query(base: &str, q: &str) -> Result<Option<f64>, String> {
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let full = reqwest::Url::parse_with_params(&url, &[("query", q)])
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = client()?
        .get(full)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("{url}: reading the answer: {e}"))?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| format!("{url}: HTTP {status}, not a Prometheus answer"))?;
    scalar(&v).map_err(|e| format!("{url} ({q}): {e}"))
}

async fn side(base: &str, route: &str, t: &Target, interval: u64) -> Result<Window, String> {
    let [requests, failures, p99] = queries(route, &t.to_string(), interval);
    let requests = query(base, &requests).await?.unwrap_or(0.0).round() as u64;
    let errors = query(base, &failures).await?.unwrap_or(0.0).round() as u64;
    Ok(Window {
        requests,
        errors: errors.min(requests),
        p99_secs: if requests > 0 {
            query(base, &p99).await?
        } else {
            None
        },
        ..Window::default()
    })
}

/// The primary's and the canary's windows over the last `interval` seconds.
pub async fn windows(
    base: &str,
    route: &str,
    primary: &Target,
    canary: &Target,
    interval: u64,
) -> Result<(Window, Window), String> {
    Ok((
        side(base, route, primary, interval).await?,
        side(base, route, canary, interval).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queries_select_the_route_and_target_escaped() {
        let [r, f, p] = queries("fraud", "fraud/4", 10);
        assert_eq!(
            r,
            "sum(increase(inferd_route_requests_total{route=\"fraud\",target=\"fraud/4\"}[10s]))"
        );
        assert!(
            f.contains("outcome=\"failure\"") && f.contains("[10s]"),
            "{f}"
        );
        assert!(p.starts_with("histogram_quantile(0.99, sum by (le) (rate(inferd_route_request_duration_seconds_bucket{"));
        assert_eq!(literal("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn answers_parse_to_a_number_or_nothing() {
        let ok = |v: &str| json!({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1.0, v]}]}});
        assert_eq!(scalar(&ok("12.5")).unwrap(), Some(12.5));
        assert_eq!(scalar(&ok("NaN")).unwrap(), None);
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(scalar(&empty).unwrap(), None);
        let bad = json!({"status": "error", "error": "parse error"});
        assert!(scalar(&bad).unwrap_err().contains("parse error"));
    }
}
