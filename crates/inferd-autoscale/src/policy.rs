//! Scaling policies, each a synchronous rule fed one [`Observation`] per second and answering
//! with the replica count it wants when it decides (on its own period). The rules and their
//! defaults are the published ones:
//!
//! - `cpu-hpa`: Kubernetes' HPA on CPU: every 15 s, desired = ceil(usage / target) where usage
//!   sums ready pods' CPU (pods still starting count as idle, which damps a scale-up), no change
//!   within 10% of the target, at most double (or +4) per step, and a scale-down only to the
//!   highest recommendation of the last 300 s.
//! - `queue-hpa`: the same algorithm on requests queued or running per pod.
//! - `keda`: the same algorithm on a Prometheus rate of requests over the last minute against
//!   each replica's capacity, and KEDA's own 0 <-> 1 activation (polled every 30 s; back to
//!   zero after a 300 s cooldown with no requests) when `min_replicas` is 0.
//! - `kpa`: Knative's autoscaler: every 2 s, concurrency averaged over a 60 s stable window
//!   against a per-replica target at 70%; a 6 s panic window that, at twice the ready
//!   capacity, scales up at once and holds for 60 s without scaling down; at most halving per
//!   decision otherwise; scale to zero after 30 s without requests when `min_replicas` is 0.
//! - `forecast`: inferd's: every 15 s, enough replicas for the larger of the current demand and
//!   the largest demand forecast within the cold-start time, at the target utilisation of
//!   capacity but never fewer than square-root staffing asks (load + sqrt(load) replicas,
//!   which matters when there are few), with the HPA's scale-down stabilisation.
//!
//! Every policy adds `spare` replicas (an over-provisioning buffer) and stays within
//! `min_replicas..=max_replicas`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{Error, setting};

/// Square-root staffing's safety factor for the forecast policy (Halfin-Whitt: replicas =
/// load + beta * sqrt(load), here beta = 1).
const SQRT_STAFFING: f64 = 1.0;

/// The policies by name.
pub const NAMES: &[&str] = &["cpu-hpa", "queue-hpa", "keda", "kpa", "forecast"];

/// What a policy sees each second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Seconds since the replay began.
    pub now: f64,
    /// Replicas ready.
    pub ready: usize,
    /// Replicas starting.
    pub starting: usize,
    /// Mean busy fraction of the ready replicas over the last second (CPU utilisation).
    pub busy: f64,
    /// Requests queued or running, all replicas and the load balancer's queue together.
    pub in_flight: f64,
    /// Requests that arrived in the last second.
    pub arrivals: f64,
    /// Requests per second one replica sustains.
    pub capacity: f64,
    /// The largest demand forecast within the cold-start time, when there is enough history.
    pub forecast: Option<f64>,
}

/// Settings shared by the policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Fewest replicas (0 lets `kpa` and `keda` scale to zero).
    pub min_replicas: usize,
    /// Most replicas.
    pub max_replicas: usize,
    /// Extra replicas kept on top of what the policy asks (over-provisioning).
    pub spare: usize,
    /// Target utilisation: CPU for `cpu-hpa`, the fraction of capacity for `keda` and
    /// `forecast`, of the concurrency target for `kpa`.
    pub target_utilisation: f64,
    /// Requests queued or running per replica that `queue-hpa` aims at.
    pub queue_target: f64,
    /// Requests in flight per replica that `kpa` aims at (Knative's container concurrency
    /// target).
    pub kpa_concurrency: f64,
    /// How far back the HPA-style policies look for their highest recommendation before
    /// scaling down, seconds (Kubernetes' `behavior.scaleDown.stabilizationWindowSeconds`,
    /// 300 by default).
    pub scale_down_stabilisation_secs: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            min_replicas: 1,
            max_replicas: 50,
            spare: 0,
            target_utilisation: 0.7,
            queue_target: 4.0,
            kpa_concurrency: 4.0,
            scale_down_stabilisation_secs: 300.0,
        }
    }
}

impl Settings {
    /// Says which setting is impossible for `policy`.
    pub fn check(&self, policy: &str) -> Result<(), Error> {
        if self.max_replicas == 0 {
            return Err(setting("max_replicas", "must be at least 1"));
        }
        if self.min_replicas > self.max_replicas {
            return Err(setting(
                "min_replicas",
                format!(
                    "{} is more than max_replicas ({})",
                    self.min_replicas, self.max_replicas
                ),
            ));
        }
        if self.min_replicas == 0 && matches!(policy, "cpu-hpa" | "queue-hpa" | "forecast") {
            return Err(setting(
                "min_replicas",
                format!("{policy} cannot scale to zero (only kpa and keda can); use 1 or more"),
            ));
        }
        let fraction = self.target_utilisation;
        if !(fraction.is_finite() && fraction > 0.0 && fraction <= 1.0) {
            return Err(setting(
                "target_utilisation",
                "must be above 0 and at most 1",
            ));
        }
        if !(self.queue_target.is_finite() && self.queue_target > 0.0) {
            return Err(setting("queue_target", "must be above 0"));
        }
        if !(self.kpa_concurrency.is_finite() && self.kpa_concurrency > 0.0) {
            return Err(setting("kpa_concurrency", "must be above 0"));
        }
        let window = self.scale_down_stabilisation_secs;
        if !(window.is_finite() && (0.0..=3600.0).contains(&window)) {
            return Err(setting(
                "scale_down_stabilisation_secs",
                "must be between 0 and 3600 seconds",
            ));
        }
        Ok(())
    }
}

/// Kubernetes' HPA decision: tolerance, scale-up limit, scale-down stabilisation.
#[derive(Debug, Clone, Default)]
struct Hpa {
    recommendations: VecDeque<(f64, usize)>,
}

impl Hpa {
    const TOLERANCE: f64 = 0.1;

    /// `current` replicas, `wanted` the raw ceil(metric / target), `tolerate` whether a change
    /// within 10% is ignored and the scale-up limited as the HPA's default policy does,
    /// `window` the scale-down stabilisation in seconds.
    fn decide(
        &mut self,
        now: f64,
        current: usize,
        wanted: f64,
        tolerate: bool,
        window: f64,
    ) -> usize {
        let current_f = current.max(1) as f64;
        let rec = if tolerate && (wanted / current_f - 1.0).abs() <= Self::TOLERANCE {
            current
        } else {
            wanted.ceil().max(0.0) as usize
        };
        // Default scale-up policy: the larger of +100% and +4 pods per period.
        let rec = if tolerate {
            rec.min((2 * current).max(current + 4))
        } else {
            rec
        };
        self.recommendations.push_back((now, rec));
        while self
            .recommendations
            .front()
            .is_some_and(|&(t, _)| t < now - window)
        {
            self.recommendations.pop_front();
        }
        if rec >= current {
            rec
        } else {
            // Scale down only to the highest recommendation in the window.
            let highest = self
                .recommendations
                .iter()
                .map(|&(_, r)| r)
                .max()
                .unwrap_or(rec);
            highest.min(current)
        }
    }
}

/// A rolling window of per-second samples.
#[derive(Debug, Clone, Default)]
struct Window {
    samples: VecDeque<(f64, f64)>,
}

impl Window {
    fn push(&mut self, now: f64, v: f64, keep: f64) {
        self.samples.push_back((now, v));
        while self.samples.front().is_some_and(|&(t, _)| t <= now - keep) {
            self.samples.pop_front();
        }
    }

    /// Mean over the samples of the last `secs`.
    fn mean(&self, now: f64, secs: f64) -> f64 {
        let (sum, n) = self
            .samples
            .iter()
            .filter(|&&(t, _)| t > now - secs)
            .fold((0.0, 0usize), |(s, n), &(_, v)| (s + v, n + 1));
        if n == 0 { 0.0 } else { sum / n as f64 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    CpuHpa,
    QueueHpa,
    Keda,
    Kpa,
    Forecast,
}

/// A policy with its state.
#[derive(Debug, Clone)]
pub struct Policy {
    kind: Kind,
    settings: Settings,
    hpa: Hpa,
    busy: Window,
    in_flight: Window,
    arrivals: Window,
    next_decision: f64,
    /// KPA: panicking until this time.
    panic_until: f64,
    /// Last second with any request (for scale to zero).
    last_request: f64,
    /// KEDA: next activation poll.
    next_poll: f64,
}

impl Policy {
    /// The policy `name` (one of [`NAMES`]) with `settings`.
    pub fn new(name: &str, settings: Settings) -> Result<Policy, Error> {
        let kind = match name {
            "cpu-hpa" => Kind::CpuHpa,
            "queue-hpa" => Kind::QueueHpa,
            "keda" => Kind::Keda,
            "kpa" => Kind::Kpa,
            "forecast" => Kind::Forecast,
            other => {
                return Err(setting(
                    "policy",
                    format!("'{other}' is not a policy ({})", NAMES.join(", ")),
                ));
            }
        };
        settings.check(name)?;
        Ok(Policy {
            kind,
            settings,
            hpa: Hpa::default(),
            busy: Window::default(),
            in_flight: Window::default(),
            arrivals: Window::default(),
            next_decision: 0.0,
            panic_until: f64::NEG_INFINITY,
            last_request: 0.0,
            next_poll: 0.0,
        })
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::CpuHpa => "cpu-hpa",
            Kind::QueueHpa => "queue-hpa",
            Kind::Keda => "keda",
            Kind::Kpa => "kpa",
            Kind::Forecast => "forecast",
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn period(&self) -> f64 {
        match self.kind {
            Kind::Kpa => 2.0,
            _ => 15.0,
        }
    }

    fn clamp(&self, n: usize) -> usize {
        let s = &self.settings;
        (n + s.spare).clamp(s.min_replicas, s.max_replicas)
    }

    /// Takes this second's observation; the replica count wanted when the policy decides now.
    pub fn observe(&mut self, o: &Observation) -> Option<usize> {
        let now = o.now;
        self.busy.push(now, o.busy, 300.0);
        self.in_flight.push(now, o.in_flight, 300.0);
        self.arrivals.push(now, o.arrivals, 300.0);
        let window = self.settings.scale_down_stabilisation_secs;
        if o.arrivals > 0.0 || o.in_flight > 0.0 {
            self.last_request = now;
        }
        if now < self.next_decision {
            return None;
        }
        self.next_decision = now + self.period();
        let current = o.ready + o.starting;
        let s = self.settings.clone();
        let idle_for = now - self.last_request;
        let wanted = match self.kind {
            Kind::CpuHpa => {
                // Usage of ready pods; starting pods count as idle (damps a scale-up).
                let usage = self.busy.mean(now, 15.0) * o.ready as f64;
                self.hpa
                    .decide(now, current, usage / s.target_utilisation, true, window)
            }
            Kind::QueueHpa => {
                let q = self.in_flight.mean(now, 15.0);
                self.hpa
                    .decide(now, current, q / s.queue_target, true, window)
            }
            Kind::Keda => {
                let rate = self.arrivals.mean(now, 60.0);
                let want = self.hpa.decide(
                    now,
                    current,
                    rate / (o.capacity * s.target_utilisation),
                    true,
                    window,
                );
                if s.min_replicas == 0 {
                    // Activation 0 <-> 1, polled every 30 s; cooldown 300 s to zero.
                    if now >= self.next_poll {
                        self.next_poll = now + 30.0;
                        if current == 0 && rate > 0.0 {
                            return Some(self.clamp(want.max(1)));
                        }
                    }
                    if idle_for >= 300.0 {
                        return Some(0);
                    }
                    if current == 0 {
                        return Some(0);
                    }
                }
                want.max(1)
            }
            Kind::Kpa => {
                let per = s.kpa_concurrency * s.target_utilisation;
                let stable = (self.in_flight.mean(now, 60.0) / per).ceil() as usize;
                let panic = (self.in_flight.mean(now, 6.0) / per).ceil() as usize;
                if o.ready > 0 && panic as f64 >= 2.0 * o.ready as f64
                    || (o.ready == 0 && panic > 0)
                {
                    self.panic_until = now + 60.0;
                }
                if s.min_replicas == 0 && idle_for >= 30.0 {
                    return Some(0);
                }
                if now < self.panic_until {
                    panic.max(stable).max(current)
                } else {
                    // Knative's max-scale-down-rate: at most halve per decision.
                    stable
                        .max(usize::from(o.in_flight > 0.0 || o.arrivals > 0.0))
                        .max(current.div_ceil(2))
                }
            }
            Kind::Forecast => {
                let demand = self.arrivals.mean(now, 60.0);
                let need = o.forecast.map_or(demand, |f| f.max(demand));
                // Offered load in replicas; at the target utilisation, but never fewer than
                // square-root staffing asks (R + sqrt(R)): with few replicas the arrivals'
                // relative spread is large and a fixed utilisation leaves too little room
                // (one replica at 65% misses a 500 ms objective overnight); from a few
                // replicas up the utilisation target is the larger and rules.
                let r = need / o.capacity;
                let wanted = (r / s.target_utilisation).max(r + SQRT_STAFFING * r.sqrt());
                self.hpa.decide(now, current, wanted, false, window)
            }
        };
        Some(self.clamp(wanted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(now: f64, ready: usize) -> Observation {
        Observation {
            now,
            ready,
            starting: 0,
            busy: 0.0,
            in_flight: 0.0,
            arrivals: 0.0,
            capacity: 25.0,
            forecast: None,
        }
    }

    /// Feeds `o` (with `now` stepped each second) for `secs`; the last decision.
    fn run(p: &mut Policy, secs: usize, o: impl Fn(f64) -> Observation) -> Option<usize> {
        let mut last = None;
        for t in 0..secs {
            if let Some(d) = p.observe(&o(t as f64)) {
                last = Some(d);
            }
        }
        last
    }

    #[test]
    fn cpu_hpa_follows_kubernetes_arithmetic() {
        let mut p = Policy::new("cpu-hpa", Settings::default()).unwrap();
        // 4 pods at 100% against a 70% target: ceil(4 / 0.7) = 6.
        let d = run(&mut p, 1, |t| Observation {
            busy: 1.0,
            ..obs(t, 4)
        });
        assert_eq!(d, Some(6));
        // Within 10% of the target: no change.
        let mut p = Policy::new("cpu-hpa", Settings::default()).unwrap();
        assert_eq!(
            run(&mut p, 1, |t| Observation {
                busy: 0.75,
                ..obs(t, 4)
            }),
            Some(4)
        );
        // At most double (or +4) per step: 2 pods at 100% want ceil(2/0.07)... capped at 6.
        let s = Settings {
            target_utilisation: 0.1,
            ..Settings::default()
        };
        let mut p = Policy::new("cpu-hpa", s).unwrap();
        assert_eq!(
            run(&mut p, 1, |t| Observation {
                busy: 1.0,
                ..obs(t, 2)
            }),
            Some(6)
        );
    }

    #[test]
    fn hpa_scales_down_only_after_the_stabilisation_window() {
        let mut p = Policy::new("cpu-hpa", Settings::default()).unwrap();
        // Busy for a minute at 10 pods, then idle.
        let d = run(&mut p, 400, |t| Observation {
            busy: if t < 60.0 { 0.7 } else { 0.0 },
            ..obs(t, 10)
        });
        assert_eq!(d, Some(1), "down after 300 s");
        let mut p = Policy::new("cpu-hpa", Settings::default()).unwrap();
        let d = run(&mut p, 200, |t| Observation {
            busy: if t < 60.0 { 0.7 } else { 0.0 },
            ..obs(t, 10)
        });
        assert_eq!(d, Some(10), "still within the window");
    }

    #[test]
    fn kpa_panics_on_a_burst_and_scales_to_zero_when_idle() {
        let s = Settings {
            min_replicas: 0,
            ..Settings::default()
        };
        let mut p = Policy::new("kpa", s.clone()).unwrap();
        // 2 ready; in-flight jumps to 40 (per replica target 4 x 0.7 = 2.8 -> 15 wanted).
        let d = run(&mut p, 67, |t| Observation {
            in_flight: if t >= 60.0 { 40.0 } else { 2.0 },
            ..obs(t, 2)
        });
        assert_eq!(d, Some(15), "panic mode reacts within the 6 s window");
        let mut p = Policy::new("kpa", s).unwrap();
        let d = run(&mut p, 100, |t| Observation {
            in_flight: if t < 10.0 { 2.0 } else { 0.0 },
            ..obs(t, 1)
        });
        assert_eq!(d, Some(0), "idle past the 30 s grace period");
    }

    #[test]
    fn the_forecast_policy_provisions_for_the_coming_peak() {
        let mut p = Policy::new("forecast", Settings::default()).unwrap();
        let d = run(&mut p, 1, |t| Observation {
            arrivals: 10.0,
            forecast: Some(175.0),
            ..obs(t, 1)
        });
        // 175 / (25 x 0.7) = 10 replicas, before the demand arrives.
        assert_eq!(d, Some(10));
        let s = Settings {
            spare: 2,
            ..Settings::default()
        };
        let mut p = Policy::new("forecast", s).unwrap();
        let d = run(&mut p, 1, |t| Observation {
            arrivals: 10.0,
            forecast: None,
            ..obs(t, 1)
        });
        assert_eq!(
            d,
            Some(4),
            "no forecast yet: the current demand (0.4 replicas of load, for which square-root \
             staffing asks 0.4 + 0.63, so 2) plus 2 spare"
        );
    }

    #[test]
    fn impossible_settings_are_named() {
        for (policy, s, field) in [
            (
                "cpu-hpa",
                Settings {
                    min_replicas: 5,
                    max_replicas: 2,
                    ..Settings::default()
                },
                "min_replicas",
            ),
            (
                "cpu-hpa",
                Settings {
                    min_replicas: 0,
                    ..Settings::default()
                },
                "min_replicas",
            ),
            (
                "forecast",
                Settings {
                    target_utilisation: 0.0,
                    ..Settings::default()
                },
                "target_utilisation",
            ),
            (
                "queue-hpa",
                Settings {
                    queue_target: 0.0,
                    ..Settings::default()
                },
                "queue_target",
            ),
            (
                "kpa",
                Settings {
                    max_replicas: 0,
                    ..Settings::default()
                },
                "max_replicas",
            ),
        ] {
            let e = Policy::new(policy, s).unwrap_err().to_string();
            assert!(e.starts_with(field), "{policy}: {e}");
        }
        assert!(Policy::new("magic", Settings::default()).is_err());
        assert!(
            Policy::new(
                "kpa",
                Settings {
                    min_replicas: 0,
                    ..Settings::default()
                }
            )
            .is_ok()
        );
    }
}
