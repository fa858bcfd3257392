//! What each route's targets did: per (route, target) windows the canary analysis drains every
//! interval (requests, server-side errors, a bounded latency sample for the p99), and the
//! per-route series of the metrics page (`inferd_route_requests_total`,
//! `inferd_route_request_duration_seconds`), labelled `route`, `target` and, for requests,
//! `outcome`, so Argo Rollouts, Flagger and dashboards can read them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use inferd_traffic::canary::Window;
use inferd_traffic::stats::Moments;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Latencies kept per window: enough for a stable p99, bounded whatever the rate.
const SAMPLE_CAP: usize = 20_000;

/// Latency buckets (seconds) of the per-route histogram.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
struct Acc {
    requests: u64,
    errors: u64,
    latencies: Vec<f64>,
    metrics: BTreeMap<String, Moments>,
}

/// Per-route observations.
#[derive(Debug)]
pub struct Observed {
    windows: Mutex<HashMap<(String, String), Acc>>,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for Observed {
    fn default() -> Self {
        Observed {
            windows: Mutex::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
        }
    }
}

impl Observed {
    /// Records one request of `route` sent to `target` (the route's own name for it, e.g.
    /// `fraud/4`): its latency and whether it failed on the server's side.
    pub fn record(&self, route: &str, target: &str, secs: f64, failed: bool) {
        let outcome = if failed { "failure" } else { "success" };
        self.requests
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("target", target.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("target", target.to_string()),
            ])
            .observe(secs);
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let acc = w
            .entry((route.to_string(), target.to_string()))
            .or_default();
        acc.requests += 1;
        acc.errors += u64::from(failed);
        if acc.latencies.len() < SAMPLE_CAP {
            acc.latencies.push(secs);
        } else {
            // Reservoir sampling keeps the sample uniform over the whole window.
            let i = fastrand::usize(..acc.requests as usize);
            if i < SAMPLE_CAP {
                acc.latencies[i] = secs;
            }
        }
    }

    /// Outcome feedback `value` for `metric` on `route`'s `target`, for the canary's
    /// business-metric checks.
    pub fn feedback(&self, route: &str, target: &str, metric: &str, value: f64) {
        self.windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route.to_string(), target.to_string()))
            .or_default()
            .metrics
            .entry(metric.to_string())
            .or_default()
            .push(value);
    }

    /// The window of `route`'s `target` since the last call, which starts a new one.
    pub fn take(&self, route: &str, target: &str) -> Window {
        let acc = self
            .windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(route.to_string(), target.to_string()))
            .unwrap_or_default();
        Window {
            requests: acc.requests,
            errors: acc.errors,
            p99_secs: p99(acc.latencies),
            metrics: acc.metrics,
            output_psi: None,
        }
    }

    /// Forgets `route`'s windows (it was replaced or deleted).
    pub fn forget(&self, route: &str) {
        self.windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(r, _), _| r != route);
    }

    /// Registers the per-route series in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "inferd_route_requests",
            "Requests sent through a traffic route, by route, target and outcome.",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "inferd_route_request_duration",
            "Latency of requests sent through a traffic route, by route and target.",
            Unit::Seconds,
            self.latency.clone(),
        );
    }
}

/// The 99th percentile (nearest rank) of `v`.
fn p99(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64) * 0.99).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_errors_and_p99_then_starts_over() {
        let o = Observed::default();
        for i in 1..=100 {
            o.record("r", "m/2", i as f64 / 1000.0, i % 10 == 0);
        }
        o.record("other", "m/2", 5.0, true);
        let w = o.take("r", "m/2");
        assert_eq!(w.requests, 100);
        assert_eq!(w.errors, 10);
        assert_eq!(w.p99_secs, Some(0.099));
        assert_eq!(o.take("r", "m/2"), Window::default());
        assert_eq!(o.take("other", "m/2").requests, 1);
    }

    #[test]
    fn latency_sample_stays_bounded() {
        let o = Observed::default();
        for _ in 0..(SAMPLE_CAP + 500) {
            o.record("r", "t", 0.001, false);
        }
        let len = o.windows.lock().unwrap()[&("r".into(), "t".into())]
            .latencies
            .len();
        assert_eq!(len, SAMPLE_CAP);
        assert_eq!(o.take("r", "t").requests, (SAMPLE_CAP + 500) as u64);
    }

    #[test]
    fn series_are_registered_with_their_labels() {
        let o = Observed::default();
        o.record("fraud", "fraud/4", 0.002, true);
        let mut reg = Registry::default();
        o.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains(
                "inferd_route_requests_total{route=\"fraud\",target=\"fraud/4\",outcome=\"failure\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("inferd_route_request_duration_seconds_count"),
            "{text}"
        );
    }
}
