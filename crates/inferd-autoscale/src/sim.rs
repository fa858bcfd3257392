//! The discrete-event simulation: a trace's requests arrive at a load balancer that sends each
//! to the ready replica with the fewest requests outstanding; each replica batches (up to
//! `max_batch`, waiting at most `batch_delay_secs`) and serves one batch at a time with the
//! profile's service times; a full replica refuses (a drop). While no replica is ready,
//! requests wait at the balancer in a bounded queue (Knative's activator, inferd's
//! `--cold-start-wait-secs`) and are dropped past its size or wait. Once a second the policy
//! observes and may ask for a new count: new replicas take the profile's cold start; removed
//! ones stop taking requests and finish what they hold (starting replicas are never removed).
//! The forecaster learns the trace's history first, then each minute of the replay.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use serde::Serialize;

use crate::forecast::HoltWinters;
use crate::policy::{Observation, Policy};
use crate::profile::ServiceProfile;
use crate::trace::Trace;

/// Simulation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Latency objective, seconds: slower answers count as violations.
    pub slo_secs: f64,
    /// Requests the balancer holds while no replica is ready.
    pub lb_queue: usize,
    /// Longest a request waits there, seconds.
    pub cold_start_wait_secs: f64,
    /// Seed for service-time noise and arrival instants.
    pub seed: u64,
    /// Keep a per-second series of replica counts (for short replays checked against a
    /// real scale-out).
    pub per_second: bool,
    /// Replicas ready when the replay begins (default: what the first minute needs at the
    /// policy's target utilisation).
    pub initial_replicas: Option<usize>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            slo_secs: 0.5,
            lb_queue: 1000,
            cold_start_wait_secs: 30.0,
            seed: 7,
            per_second: false,
            initial_replicas: None,
        }
    }
}

/// One minute of the replay, for plots.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Minute {
    /// Minutes since the replay began.
    pub minute: usize,
    /// Mean arrivals per second.
    pub load: f64,
    /// Replicas (ready or starting) at its end.
    pub replicas: usize,
    /// 99th-percentile latency of the requests answered in it, milliseconds (0: none).
    pub p99_ms: f64,
    /// Requests that violated the objective (late or dropped).
    pub violations: u64,
}

/// One second of the replay, kept when [`SimConfig::per_second`] asks for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Second {
    /// Seconds since the replay began (the policy's observation time).
    pub t: f64,
    /// Replicas ready when the policy observed.
    pub ready: usize,
    /// Replicas ready or starting after its decision.
    pub replicas: usize,
    /// Requests queued or running, balancer included.
    pub in_flight: f64,
}

/// What a replay gives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The policy.
    pub policy: String,
    /// The trace.
    pub trace: String,
    /// Requests replayed.
    pub requests: u64,
    /// Requests answered later than the objective, or dropped.
    pub slo_violations: u64,
    /// Of those, dropped (refused or timed out waiting for a replica).
    pub dropped: u64,
    /// Replica time paid for (ready, starting or draining), hours.
    pub replica_hours: f64,
    /// Replicas started.
    pub cold_starts: u64,
    /// Latency percentiles of answered requests, milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// Most replicas at once.
    pub peak_replicas: usize,
    /// Per-minute series.
    pub minutes: Vec<Minute>,
    /// Per-second series (empty unless asked for).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seconds: Vec<Second>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival,
    BatchDone(usize),
    BatchTimer(usize),
    Ready(usize),
    Second,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    Draining,
    Gone,
}

struct Replica {
    state: State,
    queue: VecDeque<f64>,
    running: Vec<f64>,
    busy_since: Option<f64>,
    busy_this_second: f64,
    timer: bool,
}

impl Replica {
    fn outstanding(&self) -> usize {
        self.queue.len() + self.running.len()
    }
}

fn key(t: f64) -> u64 {
    (t * 1e6).round() as u64
}

struct Sim<'a> {
    profile: &'a ServiceProfile,
    cfg: &'a SimConfig,
    rng: fastrand::Rng,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    replicas: Vec<Replica>,
    lb: VecDeque<f64>,
    latencies: Vec<f32>,
    minute_latencies: Vec<f32>,
    violations: u64,
    minute_violations: u64,
    dropped: u64,
    cold_starts: u64,
}

impl Sim<'_> {
    fn push(&mut self, t: f64, e: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((key(t), self.seq, e)));
    }

    fn drop_request(&mut self) {
        self.dropped += 1;
        self.violations += 1;
        self.minute_violations += 1;
    }

    fn start_replica(&mut self, now: f64) {
        self.cold_starts += 1;
        self.replicas.push(Replica {
            state: State::Starting,
            queue: VecDeque::new(),
            running: Vec::new(),
            busy_since: None,
            busy_this_second: 0.0,
            timer: false,
        });
        let i = self.replicas.len() - 1;
        self.push(now + self.profile.cold_start_secs(), Ev::Ready(i));
    }

    fn route(&mut self, now: f64, arrived: f64) {
        let best = self
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state == State::Ready)
            .min_by_key(|(_, r)| r.outstanding())
            .map(|(i, _)| i);
        match best {
            Some(i) if self.replicas[i].outstanding() < self.profile.max_queue => {
                self.replicas[i].queue.push_back(arrived);
                self.dispatch(now, i);
            }
            Some(_) => self.drop_request(),
            None if self.lb.len() < self.cfg.lb_queue => self.lb.push_back(arrived),
            None => self.drop_request(),
        }
    }

    fn dispatch(&mut self, now: f64, i: usize) {
        let p = self.profile;
        let r = &mut self.replicas[i];
        if !r.running.is_empty() || r.queue.is_empty() {
            return;
        }
        let oldest = r.queue[0];
        if r.queue.len() < p.max_batch && now - oldest < p.batch_delay_secs {
            if !r.timer {
                r.timer = true;
                self.push(oldest + p.batch_delay_secs, Ev::BatchTimer(i));
            }
            return;
        }
        let n = r.queue.len().min(p.max_batch);
        r.running.extend(r.queue.drain(..n));
        r.busy_since = Some(now);
        let secs = p.sample_batch_secs(n, &mut self.rng);
        self.push(now + secs, Ev::BatchDone(i));
    }

    fn batch_done(&mut self, now: f64, i: usize, second_start: f64) {
        let slo = self.cfg.slo_secs;
        let r = &mut self.replicas[i];
        if let Some(since) = r.busy_since.take() {
            r.busy_this_second += now - since.max(second_start);
        }
        for arrived in std::mem::take(&mut r.running) {
            let lat = now - arrived + self.profile.overhead_secs;
            self.latencies.push(lat as f32);
            self.minute_latencies.push(lat as f32);
            if lat > slo {
                self.violations += 1;
                self.minute_violations += 1;
            }
        }
        if self.replicas[i].state == State::Draining && self.replicas[i].outstanding() == 0 {
            self.replicas[i].state = State::Gone;
        }
        self.dispatch(now, i);
    }

    fn scale_to(&mut self, now: f64, desired: usize) {
        let active = |s: State| matches!(s, State::Ready | State::Starting);
        let current = self.replicas.iter().filter(|r| active(r.state)).count();
        if desired > current {
            for _ in current..desired {
                self.start_replica(now);
            }
        } else if desired < current {
            // Remove ready replicas only, the least loaded first, and none while the ready
            // ones are not more than wanted (starting replicas keep the cold start paid for;
            // extras go once they are ready).
            let mut ready: Vec<usize> = (0..self.replicas.len())
                .filter(|&i| self.replicas[i].state == State::Ready)
                .collect();
            ready.sort_by_key(|&i| self.replicas[i].outstanding());
            let remove = (current - desired).min(ready.len().saturating_sub(desired));
            for &i in ready.iter().take(remove) {
                let r = &mut self.replicas[i];
                r.state = if r.outstanding() == 0 {
                    State::Gone
                } else {
                    State::Draining
                };
            }
        }
    }
}

fn percentile(sorted: &[f32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    f64::from(sorted[i])
}

/// Replays `trace` (its replayed part) against `policy` with replicas that behave like
/// `profile`.
pub fn simulate(
    trace: &Trace,
    mut policy: Policy,
    profile: &ServiceProfile,
    cfg: &SimConfig,
) -> Outcome {
    let replay = &trace.counts[trace.history..];
    let capacity = profile.capacity();
    let cold = profile.cold_start_secs();
    // The forecaster's history: the trace's leading part, a minute at a time.
    let mut hw = HoltWinters::daily();
    for minute in trace.counts[..trace.history].chunks(60) {
        hw.observe(minute.iter().map(|&c| f64::from(c)).sum::<f64>() / minute.len() as f64);
    }
    let mut sim = Sim {
        profile,
        cfg,
        rng: fastrand::Rng::with_seed(cfg.seed),
        heap: BinaryHeap::new(),
        seq: 0,
        replicas: Vec::new(),
        lb: VecDeque::new(),
        latencies: Vec::with_capacity(trace.requests() as usize),
        minute_latencies: Vec::new(),
        violations: 0,
        minute_violations: 0,
        dropped: 0,
        cold_starts: 0,
    };
    // Every policy starts warm with what the first minute needs at its target utilisation.
    let s = policy.settings().clone();
    let first: f64 = replay.iter().take(60).map(|&c| f64::from(c)).sum::<f64>()
        / replay.len().clamp(1, 60) as f64;
    let initial = cfg
        .initial_replicas
        .unwrap_or((first / (capacity * s.target_utilisation)).ceil() as usize + s.spare)
        .clamp(s.min_replicas, s.max_replicas);
    for _ in 0..initial {
        sim.replicas.push(Replica {
            state: State::Ready,
            queue: VecDeque::new(),
            running: Vec::new(),
            busy_since: None,
            busy_this_second: 0.0,
            timer: false,
        });
    }
    let end = replay.len() as f64;
    // Arrivals: each second's count placed uniformly at random within it (a Poisson process
    // given its count; spacing them evenly would smooth the queueing away), one second at a
    // time, handed out in order.
    // A trace that gave its exact instants (and has no history part) is replayed at them.
    let mut second = 0usize;
    let mut pending: Vec<f64> = if trace.history == 0 && !trace.instants.is_empty() {
        second = replay.len();
        trace.instants.iter().rev().copied().collect()
    } else {
        Vec::new()
    };
    let next_arrival =
        |second: &mut usize, pending: &mut Vec<f64>, rng: &mut fastrand::Rng| -> Option<f64> {
            while pending.is_empty() {
                let c = *replay.get(*second)?;
                let at = *second as f64;
                pending.extend((0..c).map(|_| at + rng.f64()));
                // Latest first, so the next arrival pops off the end.
                pending.sort_unstable_by(|x, y| y.total_cmp(x));
                *second += 1;
            }
            pending.pop()
        };
    if let Some(t) = next_arrival(&mut second, &mut pending, &mut sim.rng) {
        sim.push(t, Ev::Arrival);
    }
    sim.push(1.0, Ev::Second);
    let mut second_start = 0.0;
    let mut arrivals_this_second = 0u64;
    let mut minute_arrivals = 0u64;
    let mut replica_secs = 0.0;
    let mut peak = initial;
    let mut minutes = Vec::with_capacity(replay.len() / 60 + 1);
    let mut seconds = Vec::new();
    while let Some(Reverse((at, _, ev))) = sim.heap.pop() {
        let now = at as f64 / 1e6;
        match ev {
            Ev::Arrival => {
                arrivals_this_second += 1;
                minute_arrivals += 1;
                sim.route(now, now);
                if let Some(t) = next_arrival(&mut second, &mut pending, &mut sim.rng) {
                    sim.push(t, Ev::Arrival);
                }
            }
            Ev::BatchDone(i) => sim.batch_done(now, i, second_start),
            Ev::BatchTimer(i) => {
                sim.replicas[i].timer = false;
                sim.dispatch(now, i);
            }
            Ev::Ready(i) => {
                if sim.replicas[i].state == State::Starting {
                    sim.replicas[i].state = State::Ready;
                }
                // The balancer's held requests go out now.
                let held: Vec<f64> = sim.lb.drain(..).collect();
                for arrived in held {
                    sim.route(now, arrived);
                }
            }
            Ev::Second => {
                // Requests that waited too long for a replica.
                while sim
                    .lb
                    .front()
                    .is_some_and(|&a| now - a > cfg.cold_start_wait_secs)
                {
                    sim.lb.pop_front();
                    sim.drop_request();
                }
                let mut ready = 0;
                let mut busy = 0.0;
                let mut in_flight = sim.lb.len();
                let mut paid = 0;
                for r in &mut sim.replicas {
                    if let Some(since) = r.busy_since {
                        r.busy_this_second += now - since.max(second_start);
                        r.busy_since = Some(now);
                    }
                    if r.state == State::Ready {
                        ready += 1;
                        busy += r.busy_this_second.min(1.0);
                    }
                    if r.state != State::Gone {
                        paid += 1;
                    }
                    in_flight += r.outstanding();
                    r.busy_this_second = 0.0;
                }
                replica_secs += paid as f64;
                let starting = sim
                    .replicas
                    .iter()
                    .filter(|r| r.state == State::Starting)
                    .count();
                let t = now.round() as usize;
                if t.is_multiple_of(60) {
                    hw.observe(minute_arrivals as f64 / 60.0);
                    let mut lat = std::mem::take(&mut sim.minute_latencies);
                    lat.sort_unstable_by(f32::total_cmp);
                    minutes.push(Minute {
                        minute: t / 60 - 1,
                        load: minute_arrivals as f64 / 60.0,
                        replicas: ready + starting,
                        p99_ms: percentile(&lat, 0.99) * 1e3,
                        violations: std::mem::take(&mut sim.minute_violations),
                    });
                    minute_arrivals = 0;
                }
                let o = Observation {
                    now,
                    ready,
                    starting,
                    busy: if ready > 0 { busy / ready as f64 } else { 0.0 },
                    in_flight: in_flight as f64,
                    arrivals: arrivals_this_second as f64,
                    capacity,
                    forecast: hw.peak_within(cold),
                };
                arrivals_this_second = 0;
                second_start = now;
                if let Some(desired) = policy.observe(&o) {
                    sim.scale_to(now, desired);
                }
                let active = sim
                    .replicas
                    .iter()
                    .filter(|r| matches!(r.state, State::Ready | State::Starting))
                    .count();
                peak = peak.max(active);
                if cfg.per_second {
                    seconds.push(Second {
                        t: now,
                        ready,
                        replicas: active,
                        in_flight: in_flight as f64,
                    });
                }
                if now < end {
                    sim.push(now + 1.0, Ev::Second);
                } else {
                    // The replay is over: what is still held at the balancer is dropped.
                    while sim.lb.pop_front().is_some() {
                        sim.drop_request();
                    }
                }
            }
        }
    }
    let mut lat = std::mem::take(&mut sim.latencies);
    lat.sort_unstable_by(f32::total_cmp);
    Outcome {
        policy: policy.name().into(),
        trace: trace.name.clone(),
        requests: trace.requests(),
        slo_violations: sim.violations,
        dropped: sim.dropped,
        replica_hours: replica_secs / 3600.0,
        cold_starts: sim.cold_starts,
        p50_ms: percentile(&lat, 0.5) * 1e3,
        p99_ms: percentile(&lat, 0.99) * 1e3,
        peak_replicas: peak,
        minutes,
        seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Settings;

    fn flat(rate: u32, secs: usize) -> Trace {
        Trace {
            name: "flat".into(),
            counts: vec![rate; secs],
            history: 0,
            instants: Vec::new(),
        }
    }

    #[test]
    fn a_steady_load_within_capacity_meets_the_objective() {
        let p = ServiceProfile::default();
        let out = simulate(
            &flat(10, 600),
            Policy::new("queue-hpa", Settings::default()).unwrap(),
            &p,
            &SimConfig::default(),
        );
        assert_eq!(out.requests, 6000);
        assert_eq!(out.dropped, 0);
        assert!(out.slo_violations < 60, "{out:?}");
        // A lone request takes ~100 ms; some wait for a batch in progress.
        assert!((90.0..250.0).contains(&out.p50_ms), "{}", out.p50_ms);
        assert_eq!(out.minutes.len(), 10);
    }

    #[test]
    fn every_request_is_accounted_for() {
        let p = ServiceProfile::default();
        let mut counts = vec![10u32; 300];
        counts.extend(vec![200u32; 120]);
        counts.extend(vec![10u32; 300]);
        let trace = Trace {
            name: "burst".into(),
            counts,
            history: 0,
            instants: Vec::new(),
        };
        for name in crate::policy::NAMES {
            let out = simulate(
                &trace,
                Policy::new(name, Settings::default()).unwrap(),
                &p,
                &SimConfig::default(),
            );
            let answered = out
                .minutes
                .iter()
                .map(|m| m.load * 60.0)
                .sum::<f64>()
                .round() as u64;
            assert_eq!(answered, out.requests, "{name}");
            assert!(out.slo_violations >= out.dropped);
            assert!(out.cold_starts > 0, "{name} scaled for the burst");
        }
    }

    #[test]
    fn an_overload_with_one_replica_violates_and_more_replicas_fix_it() {
        let p = ServiceProfile::default();
        let fixed = |n| Settings {
            min_replicas: n,
            max_replicas: n,
            ..Settings::default()
        };
        let trace = flat(60, 300);
        let one = simulate(
            &trace,
            Policy::new("cpu-hpa", fixed(1)).unwrap(),
            &p,
            &SimConfig::default(),
        );
        let four = simulate(
            &trace,
            Policy::new("cpu-hpa", fixed(4)).unwrap(),
            &p,
            &SimConfig::default(),
        );
        assert!(
            one.slo_violations > trace.requests() / 2,
            "{}",
            one.slo_violations
        );
        assert!(
            four.slo_violations < trace.requests() / 100,
            "{}",
            four.slo_violations
        );
        assert!((four.replica_hours - 4.0 * 300.0 / 3600.0).abs() < 0.01);
    }
}
