//! The live side of the policies: turns what a set of running inferd replicas report (their
//! readiness and their metrics page) into the [`Observation`] a [`Policy`] takes, once a
//! second, so a scaling loop outside Kubernetes (processes behind a local load balancer,
//! podman, systemd) follows exactly the rules the simulator replays. Pure: the driver fetches
//! the pages and runs the scale command.
//!
//! Replicas are slots in a fixed order: with a count of N, slots `0..N` are meant to run (the
//! scale command starts them in order and stops them from the top), so readiness is counted
//! over those; requests held by any slot still answering (one draining after a scale-down)
//! count as in flight, as the simulator counts a draining replica's.

use crate::policy::{Observation, Policy};

/// One sample of a Prometheus text page.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name.
    pub name: String,
    /// Its labels, in page order.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the sample lines of a Prometheus (or OpenMetrics) text page; comments and lines
/// that are not samples are skipped. Our own few lines rather than a crate: the controller
/// reads four series from a page our own server writes, and no parser crate is in the build.
pub fn parse_page(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let close = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        };
        rest = &body[close + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// What one replica reports, read from its metrics page.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// Requests queued or running (`inferd_inflight_requests`).
    pub in_flight: f64,
    /// Requests answered so far, successfully or not (`inferd_request_success_total` plus
    /// `inferd_request_failure_total`).
    pub requests: f64,
    /// CPU seconds the process has used (`process_cpu_seconds_total`).
    pub cpu_seconds: f64,
    /// The replica's learned capacity, requests per second (0: not learned yet).
    pub capacity: f64,
    /// Its demand forecast, when it has enough history.
    pub forecast: Option<f64>,
}

impl Reading {
    /// Reads a metrics page, for `model` or (None) all models.
    pub fn from_page(text: &str, model: Option<&str>) -> Reading {
        let mut r = Reading::default();
        let mut forecast = 0.0;
        let mut forecast_ready = false;
        for s in parse_page(text) {
            let ours = model.is_none_or(|m| s.label("model") == Some(m));
            match s.name.as_str() {
                "process_cpu_seconds_total" => r.cpu_seconds = s.value,
                "inferd_inflight_requests" if ours => r.in_flight += s.value,
                "inferd_request_success_total" | "inferd_request_failure_total" if ours => {
                    r.requests += s.value;
                }
                "inferd_capacity_requests_per_second" if ours => r.capacity += s.value,
                "inferd_demand_forecast_requests_per_second" if ours => forecast += s.value,
                "inferd_demand_forecast_ready" if ours => forecast_ready |= s.value > 0.0,
                _ => {}
            }
        }
        r.forecast = forecast_ready.then_some(forecast);
        r
    }
}

/// One slot's state this second: `None` when it is not ready (not running, or starting).
pub type SlotReading = Option<Reading>;

/// What a tick gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// What the policy observed.
    pub observation: Observation,
    /// The count the policy asked for, when it decided this tick.
    pub decided: Option<usize>,
    /// The count in force after the tick.
    pub replicas: usize,
}

/// A policy fed from live replicas.
#[derive(Debug, Clone)]
pub struct Controller {
    policy: Policy,
    replicas: usize,
    capacity: Option<f64>,
    cpus_per_replica: f64,
    last: Vec<Option<(f64, Reading)>>,
}

impl Controller {
    /// `policy` starting at `replicas`; `capacity` overrides what replicas report;
    /// `cpus_per_replica` scales CPU seconds into the busy fraction `cpu-hpa` reads.
    pub fn new(
        policy: Policy,
        replicas: usize,
        capacity: Option<f64>,
        cpus_per_replica: f64,
    ) -> Controller {
        Controller {
            policy,
            replicas,
            capacity,
            cpus_per_replica: cpus_per_replica.max(f64::MIN_POSITIVE),
            last: Vec::new(),
        }
    }

    /// The count in force.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Takes the slots' readings at `now` (seconds since the loop began) and lets the policy
    /// decide; a counter that went backwards (a replica restarted) counts from zero.
    pub fn tick(&mut self, now: f64, slots: &[SlotReading]) -> Tick {
        self.last.resize(slots.len(), None);
        let mut ready = 0;
        let mut busy = 0.0;
        let mut in_flight = 0.0;
        let mut arrivals = 0.0;
        let mut capacity: f64 = 0.0;
        let mut forecast: Option<f64> = None;
        for (i, slot) in slots.iter().enumerate() {
            let Some(r) = slot else {
                self.last[i] = None;
                continue;
            };
            in_flight += r.in_flight;
            capacity = capacity.max(r.capacity);
            if let Some(f) = r.forecast {
                forecast = Some(forecast.map_or(f, |g: f64| g.max(f)));
            }
            if let Some((then, prev)) = self.last[i] {
                let dt = (now - then).max(1e-3);
                let since = |new: f64, old: f64| if new >= old { new - old } else { new };
                // Arrivals are counted per second, as the simulator counts them.
                arrivals += since(r.requests, prev.requests) / dt;
                if i < self.replicas {
                    busy += (since(r.cpu_seconds, prev.cpu_seconds) / dt / self.cpus_per_replica)
                        .min(1.0);
                }
            }
            if i < self.replicas {
                ready += 1;
            }
            self.last[i] = Some((now, *r));
        }
        let observation = Observation {
            now,
            ready,
            starting: self.replicas.saturating_sub(ready),
            busy: if ready > 0 { busy / ready as f64 } else { 0.0 },
            in_flight,
            arrivals,
            capacity: self.capacity.unwrap_or(capacity),
            forecast,
        };
        let decided = self.policy.observe(&observation);
        if let Some(n) = decided {
            self.replicas = n;
        }
        Tick {
            observation,
            decided,
            replicas: self.replicas,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Settings;

    const PAGE: &str = r#"# HELP inferd_inflight_requests Requests holding a model version.
# TYPE inferd_inflight_requests gauge
inferd_inflight_requests{model="a",version="1"} 3
inferd_inflight_requests{model="b",version="1"} 5
inferd_request_success_total{model="a",version="1"} 100
inferd_request_failure_total{model="a",version="1",reason="x \"y\", z"} 2
inferd_capacity_requests_per_second{model="a"} 40.5
inferd_demand_forecast_requests_per_second{model="a",horizon_seconds="30"} 12
inferd_demand_forecast_ready{model="a"} 0
process_cpu_seconds_total 7.25
# EOF
"#;

    #[test]
    fn a_page_is_read_for_one_model_with_escaped_labels() {
        let s = parse_page(PAGE);
        assert_eq!(s.len(), 8);
        assert_eq!(s[3].label("reason"), Some("x \"y\", z"));
        let r = Reading::from_page(PAGE, Some("a"));
        assert_eq!(r.in_flight, 3.0);
        assert_eq!(r.requests, 102.0);
        assert_eq!(r.cpu_seconds, 7.25);
        assert_eq!(r.capacity, 40.5);
        assert_eq!(r.forecast, None, "a forecast not ready is not used");
        let all = Reading::from_page(
            &PAGE.replace("ready{model=\"a\"} 0", "ready{model=\"a\"} 1"),
            None,
        );
        assert_eq!(all.in_flight, 8.0);
        assert_eq!(all.forecast, Some(12.0));
    }

    fn reading(in_flight: f64, requests: f64, cpu: f64) -> SlotReading {
        Some(Reading {
            in_flight,
            requests,
            cpu_seconds: cpu,
            capacity: 10.0,
            forecast: None,
        })
    }

    #[test]
    fn rates_come_from_counter_deltas_and_only_running_slots_count_as_ready() {
        let p = Policy::new("queue-hpa", Settings::default()).unwrap();
        let mut c = Controller::new(p, 2, None, 1.0);
        // 8 in flight against 4 per replica: the first decision keeps 2.
        let first = c.tick(
            1.0,
            &[reading(8.0, 10.0, 1.0), reading(0.0, 0.0, 0.0), None],
        );
        assert_eq!(first.decided, Some(2));
        // Slot 2 still answers (draining) but is beyond the count: in flight, not ready.
        let t = c.tick(
            2.0,
            &[reading(4.0, 30.0, 1.5), None, reading(1.0, 5.0, 9.0)],
        );
        let o = t.observation;
        assert_eq!((o.ready, o.starting), (1, 1));
        assert_eq!(o.in_flight, 5.0);
        assert_eq!(o.arrivals, 20.0, "slot 2 has no earlier reading yet");
        assert!((o.busy - 0.5).abs() < 1e-9, "{}", o.busy);
        assert_eq!(o.capacity, 10.0);
        // A restarted replica's counters start again from zero.
        let t = c.tick(3.0, &[reading(0.0, 4.0, 0.1), None, None]);
        assert_eq!(t.observation.arrivals, 4.0);
    }

    #[test]
    fn the_policy_decides_on_its_own_period_and_its_count_is_kept() {
        let p = Policy::new("queue-hpa", Settings::default()).unwrap();
        let mut c = Controller::new(p, 1, Some(10.0), 1.0);
        let first = c.tick(1.0, &[reading(40.0, 0.0, 0.0), None, None]);
        // 40 in flight against 4 per replica: 10 wanted, limited to +4 on the first step.
        assert_eq!(first.decided, Some(5));
        assert_eq!(c.replicas(), 5);
        let next = c.tick(2.0, &[reading(40.0, 0.0, 0.0), None, None]);
        assert_eq!(next.decided, None, "queue-hpa decides every 15 s");
        assert_eq!(next.replicas, 5);
        assert_eq!(next.observation.starting, 4);
    }
}
