//! A model version's request queue and dynamic batcher (Triton's `dynamic_batching`): bounded
//! queues per priority level, queue timeouts with REJECT or DELAY, batch formation by
//! [`BatchPolicy`], merging requests into one batch and splitting the outputs back, and in-order
//! responses under `preserve_ordering`. Executor threads block on it; async callers only take a
//! short lock to enqueue.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::backend::NamedTensor;
use crate::batching::{BatchPolicy, Decision, Pending};
use crate::config::{ModelConfig, TimeoutAction};
use crate::error::{Error, Result};
use crate::request::PreparedRequest;

/// Queue policy of one priority level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelPolicy {
    /// Most requests queued at this level.
    pub max_queue: usize,
    /// Queue timeout when the request names none.
    pub default_timeout: Option<Duration>,
    /// What a timed-out request gets.
    pub action: TimeoutAction,
}

/// Scheduling settings of one version, derived from its config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerSettings {
    /// Form batches from several requests (`dynamic_batching` present and `max_batch_size > 0`).
    pub batching: bool,
    /// Batch formation.
    pub policy: BatchPolicy,
    /// Per level, index 0 is level 1 (the highest priority).
    pub levels: Vec<LevelPolicy>,
    /// Answer in request order.
    pub preserve_ordering: bool,
    /// How long an idle executor polls the queue before it sleeps.
    pub idle_spin: Duration,
}

impl SchedulerSettings {
    /// Derives the settings from a config; `default_queue` bounds queues the config leaves
    /// unbounded.
    pub fn from_config(cfg: &ModelConfig, default_queue: usize) -> Self {
        let default_queue = default_queue.max(1);
        let from_sequences = cfg.sequence_batching.as_ref().map(|s| s.as_dynamic());
        let Some(db) = cfg
            .dynamic_batching
            .as_ref()
            .or(from_sequences.as_ref())
            .filter(|_| cfg.batches())
        else {
            return SchedulerSettings {
                batching: false,
                policy: BatchPolicy::new(1, &[], Duration::ZERO),
                levels: vec![LevelPolicy {
                    max_queue: default_queue,
                    default_timeout: None,
                    action: TimeoutAction::Reject,
                }],
                preserve_ordering: false,
                idle_spin: IDLE_SPIN,
            };
        };
        let level = |n: u32| {
            let q = db
                .priority_queue_policy
                .get(&n)
                .or(db.default_queue_policy.as_ref());
            LevelPolicy {
                max_queue: q
                    .map(|q| q.max_queue_size as usize)
                    .filter(|&m| m > 0)
                    .unwrap_or(default_queue),
                default_timeout: q
                    .map(|q| q.default_timeout_microseconds)
                    .filter(|&t| t > 0)
                    .map(Duration::from_micros),
                action: q.map(|q| q.timeout_action).unwrap_or_default(),
            }
        };
        let levels = if db.priority_levels == 0 {
            vec![level(0)]
        } else {
            (1..=db.priority_levels).map(level).collect()
        };
        let preferred: Vec<usize> = db
            .preferred_batch_size
            .iter()
            .map(|&p| p as usize)
            .collect();
        SchedulerSettings {
            batching: true,
            policy: BatchPolicy::new(
                cfg.max_batch_size as usize,
                &preferred,
                Duration::from_micros(db.max_queue_delay_microseconds),
            ),
            levels,
            preserve_ordering: db.preserve_ordering,
            idle_spin: IDLE_SPIN,
        }
    }
}

/// A queued request.
pub struct Job {
    seq: u64,
    /// The request.
    pub req: PreparedRequest,
    /// When it was queued.
    pub enqueued: Instant,
    deadline: Option<Instant>,
    reply: Reply,
}

impl Job {
    /// Whether the caller stopped waiting for the answer (a client that disconnected).
    pub fn caller_gone(&self) -> bool {
        self.reply.is_closed()
    }

    fn pending(&self) -> Pending {
        Pending {
            rows: self.req.batch,
            enqueued: self.enqueued,
            key: self.req.shape_key,
        }
    }
}

#[derive(Default)]
struct Queues {
    levels: Vec<VecDeque<Job>>,
    /// Requests whose timeout passed under a DELAY policy: served after everything else.
    delayed: VecDeque<Job>,
    next_seq: u64,
    with_deadline: usize,
    closed: bool,
    /// Executors asleep on the condvar: `submit` wakes one only when this is non-zero, which
    /// saves a futex syscall per request while executors are busy or polling.
    sleepers: usize,
}

impl Queues {
    fn len(&self) -> usize {
        self.levels.iter().map(VecDeque::len).sum::<usize>() + self.delayed.len()
    }

    fn in_order(&self) -> impl Iterator<Item = &Job> {
        self.levels.iter().flatten().chain(self.delayed.iter())
    }

    fn pop_front(&mut self) -> Option<Job> {
        for q in self.levels.iter_mut() {
            if let Some(j) = q.pop_front() {
                return Some(j);
            }
        }
        self.delayed.pop_front()
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.with_deadline == 0 {
            return None;
        }
        self.levels
            .iter()
            .flatten()
            .filter_map(|j| j.deadline)
            .min()
    }
}

#[derive(Default)]
struct Reorder {
    next: u64,
    done: BTreeMap<u64, (Option<Reply>, Result<Vec<NamedTensor>>)>,
}

/// Where a request's result goes.
type Reply = oneshot::Sender<Result<Vec<NamedTensor>>>;

/// The queue and batcher of one version.
pub struct Scheduler {
    model: String,
    settings: SchedulerSettings,
    queues: Mutex<Queues>,
    wake: Condvar,
    reorder: Mutex<Reorder>,
    /// Requests queued, readable without the lock (for the idle spin).
    queued: AtomicUsize,
}

/// How long an idle executor polls the queue before it sleeps, by default (the `inferd`
/// binary's `--executor-spin-us` default too).
pub const IDLE_SPIN: Duration = Duration::from_micros(100);

impl Scheduler {
    /// An empty scheduler.
    pub fn new(model: &str, settings: SchedulerSettings) -> Self {
        let levels = (0..settings.levels.len())
            .map(|_| VecDeque::new())
            .collect();
        Scheduler {
            model: model.to_string(),
            settings,
            queues: Mutex::new(Queues {
                levels,
                ..Default::default()
            }),
            wake: Condvar::new(),
            reorder: Mutex::new(Reorder::default()),
            queued: AtomicUsize::new(0),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &SchedulerSettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests waiting.
    pub fn depth(&self) -> usize {
        self.lock().len()
    }

    /// Queues a request; answers at once when its level's queue is full or the version stopped.
    pub fn submit(
        &self,
        req: PreparedRequest,
    ) -> Result<oneshot::Receiver<Result<Vec<NamedTensor>>>> {
        let now = Instant::now();
        let level = (req.priority as usize)
            .saturating_sub(1)
            .min(self.settings.levels.len() - 1);
        let policy = &self.settings.levels[level];
        let deadline = req.timeout.or(policy.default_timeout).map(|d| now + d);
        // Under preserve_ordering every request shares one FIFO, so a low-priority or delayed
        // request cannot hold back the responses queued after it forever.
        let slot = if self.settings.preserve_ordering {
            0
        } else {
            level
        };
        let (reply, rx) = oneshot::channel();
        let mut q = self.lock();
        if q.closed {
            return Err(Error::Unavailable(format!(
                "model '{}' is unloading",
                self.model
            )));
        }
        if q.levels[slot].len() + q.delayed.len() >= policy.max_queue {
            self.prune_cancelled(&mut q, slot);
        }
        if q.levels[slot].len() + q.delayed.len() >= policy.max_queue {
            let which = if self.settings.levels.len() > 1 {
                format!(" at priority {}", level + 1)
            } else {
                String::new()
            };
            return Err(Error::Overloaded {
                message: format!(
                    "model '{}' queue{which} is full ({} requests, the max_queue_size); retry later",
                    self.model, policy.max_queue
                ),
                retry_after_secs: 1,
            });
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        if deadline.is_some() {
            q.with_deadline += 1;
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        q.levels[slot].push_back(Job {
            seq,
            req,
            enqueued: now,
            deadline,
            reply,
        });
        let sleeping = q.sleepers > 0;
        drop(q);
        if sleeping {
            self.wake.notify_one();
        }
        Ok(rx)
    }

    /// Drops queued requests whose callers went away (they would only be skipped later), so
    /// they do not hold queue slots.
    fn prune_cancelled(&self, q: &mut Queues, slot: usize) {
        let jobs = std::mem::take(&mut q.levels[slot]);
        for j in jobs {
            if j.reply.is_closed() {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                if j.deadline.is_some() {
                    q.with_deadline -= 1;
                }
                self.finish(
                    j.seq,
                    None,
                    Err(Error::Cancelled("client went away".into())),
                );
            } else {
                q.levels[slot].push_back(j);
            }
        }
    }

    /// Stops taking requests; executors finish what is queued, then `next_batch` returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Closes the queue and fails every request still waiting in it with `error`; returns how
    /// many. Requests an executor already took run to the end.
    pub fn cancel_queued(&self, error: &Error) -> usize {
        let mut q = self.lock();
        q.closed = true;
        let mut jobs = Vec::new();
        while let Some(j) = q.pop_front() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            if j.deadline.is_some() {
                q.with_deadline -= 1;
            }
            jobs.push(j);
        }
        drop(q);
        self.wake.notify_all();
        let n = jobs.len();
        for j in jobs {
            self.finish(j.seq, Some(j.reply), Err(error.clone()));
        }
        n
    }

    /// Blocks until a batch is due; `None` once closed and drained.
    pub fn next_batch(&self) -> Option<Vec<Job>> {
        let mut q = self.lock();
        loop {
            let now = Instant::now();
            self.expire(&mut q, now);
            if q.len() == 0 {
                if q.closed {
                    return None;
                }
                // Spin briefly before sleeping: waking a sleeping thread costs tens of
                // microseconds on virtual machines, more than a small model's execution.
                drop(q);
                self.poll_arrivals(0, Instant::now() + self.settings.idle_spin);
                q = self.lock();
                if q.len() == 0 && !q.closed {
                    q = self.wait(q, None);
                }
                continue;
            }
            let decision = if !self.settings.batching {
                Decision::Run(1)
            } else {
                let jobs: Vec<&Job> = q
                    .in_order()
                    .take(self.settings.policy.max_batch() + 1)
                    .collect();
                let view: Vec<Pending> = jobs.iter().map(|j| j.pending()).collect();
                let same = |i: usize| jobs[i].req.same_batch_as(&jobs[0].req);
                let policy = &self.settings.policy;
                match policy.decide_with(&view, now, same) {
                    // Closing: nothing more will arrive, so decide as if the delay had passed.
                    Decision::WaitUntil(due) if q.closed => policy.decide_with(&view, due, same),
                    d => d,
                }
            };
            match decision {
                Decision::Run(n) => {
                    let mut jobs = Vec::with_capacity(n);
                    for _ in 0..n {
                        let Some(j) = q.pop_front() else { break };
                        self.queued.fetch_sub(1, Ordering::AcqRel);
                        if j.deadline.is_some() {
                            q.with_deadline -= 1;
                        }
                        jobs.push(j);
                    }
                    drop(q);
                    // A caller that went away while queued costs no compute.
                    let (live, gone): (Vec<Job>, Vec<Job>) =
                        jobs.into_iter().partition(|j| !j.reply.is_closed());
                    for j in gone {
                        self.finish(
                            j.seq,
                            None,
                            Err(Error::Cancelled("client went away".into())),
                        );
                    }
                    if live.is_empty() {
                        q = self.lock();
                        continue;
                    }
                    return Some(live);
                }
                Decision::WaitUntil(t) => {
                    let until = q.next_deadline().map_or(t, |d| d.min(t));
                    if until.saturating_duration_since(now) <= self.settings.idle_spin {
                        // A short batching delay is polled out rather than slept: a timed
                        // sleep overshoots by tens of microseconds on a VM, longer than a
                        // delay of 100 us itself. A new arrival ends the poll early.
                        let seen = self.queued.load(Ordering::Acquire);
                        drop(q);
                        self.poll_arrivals(seen, until);
                        q = self.lock();
                    } else {
                        q = self.wait(q, Some(until));
                    }
                }
                Decision::Idle => {
                    let until = q.next_deadline();
                    q = self.wait(q, until);
                }
            }
        }
    }

    /// Busy-polls (queue lock released) until the queued count moves off `seen` or `until`.
    fn poll_arrivals(&self, seen: usize, until: Instant) {
        while Instant::now() < until {
            for _ in 0..64 {
                if self.queued.load(Ordering::Acquire) != seen {
                    return;
                }
                std::hint::spin_loop();
            }
            // Offer the core to any other runnable thread (the network thread, a client on
            // the same machine): on a small machine this poll otherwise takes the core they
            // need to send the very requests it waits for. With nothing else to run, the
            // call returns at once and the poll goes on.
            std::thread::yield_now();
        }
    }

    fn wait<'a>(
        &self,
        mut q: MutexGuard<'a, Queues>,
        until: Option<Instant>,
    ) -> MutexGuard<'a, Queues> {
        // Counted under the lock, so a `submit` that queues after this check sees the sleeper.
        q.sleepers += 1;
        let mut q = match until {
            None => self.wake.wait(q).unwrap_or_else(|p| p.into_inner()),
            Some(t) => {
                let d = t
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_micros(1));
                self.wake
                    .wait_timeout(q, d)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        q.sleepers -= 1;
        q
    }

    /// Answers REJECT requests whose queue timeout passed; moves DELAY ones behind the rest.
    fn expire(&self, q: &mut Queues, now: Instant) {
        if q.with_deadline == 0 {
            return;
        }
        for level in 0..q.levels.len() {
            if !q.levels[level]
                .iter()
                .any(|j| j.deadline.is_some_and(|d| d <= now))
            {
                continue;
            }
            let jobs = std::mem::take(&mut q.levels[level]);
            for mut j in jobs {
                match j.deadline {
                    Some(d) if d <= now => {
                        q.with_deadline -= 1;
                        j.deadline = None;
                        match self.settings.levels[level].action {
                            TimeoutAction::Reject => {
                                self.queued.fetch_sub(1, Ordering::AcqRel);
                                let waited = now.duration_since(j.enqueued);
                                self.finish(
                                    j.seq,
                                    Some(j.reply),
                                    Err(Error::DeadlineExceeded(format!(
                                        "request to model '{}' timed out after {} us in the queue",
                                        self.model,
                                        waited.as_micros()
                                    ))),
                                );
                            }
                            // Kept in place under preserve_ordering (see `submit`).
                            TimeoutAction::Delay if self.settings.preserve_ordering => {
                                q.levels[level].push_back(j)
                            }
                            TimeoutAction::Delay => q.delayed.push_back(j),
                        }
                    }
                    _ => q.levels[level].push_back(j),
                }
            }
        }
    }

    /// Delivers a result, in request order when `preserve_ordering` is set.
    pub fn finish(&self, seq: u64, reply: Option<Reply>, result: Result<Vec<NamedTensor>>) {
        if !self.settings.preserve_ordering {
            if let Some(r) = reply {
                let _ = r.send(result);
            }
            return;
        }
        let mut ro = self.reorder.lock().unwrap_or_else(|p| p.into_inner());
        ro.done.insert(seq, (reply, result));
        loop {
            let next = ro.next;
            let Some((reply, result)) = ro.done.remove(&next) else {
                break;
            };
            if let Some(r) = reply {
                let _ = r.send(result);
            }
            ro.next += 1;
        }
    }

    /// Delivers a job's result.
    pub fn complete(&self, job: Job, result: Result<Vec<NamedTensor>>) {
        self.finish(job.seq, Some(job.reply), result);
    }
}

/// A server-wide cap on executions running at once, so many models and instances share the cores
/// instead of oversubscribing them.
#[derive(Debug)]
pub struct ComputeBudget {
    shares: Mutex<Shares>,
    cv: Condvar,
    total: usize,
}

#[derive(Debug)]
struct Shares {
    free: usize,
    /// Executors blocked waiting for a share; a release wakes one only when non-zero (a
    /// futex syscall per execution saved while the budget is not contended).
    waiting: usize,
}

/// A held share of the budget.
pub struct BudgetPermit<'a> {
    budget: &'a ComputeBudget,
}

impl ComputeBudget {
    /// A budget of `n` concurrent executions (at least one).
    pub fn new(n: usize) -> Self {
        ComputeBudget {
            shares: Mutex::new(Shares {
                free: n.max(1),
                waiting: 0,
            }),
            cv: Condvar::new(),
            total: n.max(1),
        }
    }

    /// Its size.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Blocks until a share is free.
    pub fn acquire(&self) -> BudgetPermit<'_> {
        let mut s = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        while s.free == 0 {
            s.waiting += 1;
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
            s.waiting -= 1;
        }
        s.free -= 1;
        BudgetPermit { budget: self }
    }
}

impl Drop for BudgetPermit<'_> {
    fn drop(&mut self) {
        let mut s = self.budget.shares.lock().unwrap_or_else(|p| p.into_inner());
        s.free += 1;
        let waiting = s.waiting > 0;
        drop(s);
        if waiting {
            self.budget.cv.notify_one();
        }
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
