//! The live sequences of one model version, as a pure policy type: which correlation ids are
//! live, whose request is running, each one's state between requests, the idle timeout and the
//! bound on live sequences. No I/O and no clock of its own (callers pass `now`), so every rule is
//! unit-tested directly; the engine's sequence driver holds it under a lock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// A correlation id: Triton's clients send an unsigned integer or a string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SequenceId {
    /// A numeric id (never 0: 0 means "no sequence").
    Int(u64),
    /// A string id (never empty).
    Str(String),
}

impl fmt::Display for SequenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SequenceId::Int(i) => write!(f, "{i}"),
            SequenceId::Str(s) => write!(f, "'{s}'"),
        }
    }
}

/// Why a sequence's request cannot run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not live and not a start: never started, or ended.
    NotStarted,
    /// Not live because it was idle longer than the timeout and was released.
    Released,
    /// A new sequence while as many as allowed are live.
    Full {
        /// The bound.
        limit: usize,
    },
    /// A request of the same sequence is running; wait for it.
    Busy,
}

/// Ids of released sequences remembered for a precise error (older ones are forgotten).
const REMEMBER_RELEASED: usize = 4096;

struct Entry<S> {
    last: Instant,
    /// `None` while a request of the sequence runs (it holds the state).
    state: Option<S>,
    running: bool,
}

/// The live sequences; `S` is the state kept between requests.
pub struct SequenceTable<S> {
    live: HashMap<SequenceId, Entry<S>>,
    limit: usize,
    idle: Duration,
    released: VecDeque<SequenceId>,
    released_set: HashSet<SequenceId>,
}

/// What `begin` hands the request: the sequence's state (`None`: it starts, use the initial).
#[derive(Debug, PartialEq)]
pub struct Begun<S> {
    /// The state left by the previous request; `None` on a start.
    pub state: Option<S>,
}

impl<S> SequenceTable<S> {
    /// A table of at most `limit` live sequences, each released after `idle` without requests.
    pub fn new(limit: usize, idle: Duration) -> Self {
        SequenceTable {
            live: HashMap::new(),
            limit: limit.max(1),
            idle,
            released: VecDeque::new(),
            released_set: HashSet::new(),
        }
    }

    /// Sequences live now.
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// The bound on live sequences.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The idle timeout.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Releases every sequence idle past the timeout (not one whose request is running).
    pub fn expire(&mut self, now: Instant) -> usize {
        let idle = self.idle;
        let gone: Vec<SequenceId> = self
            .live
            .iter()
            .filter(|(_, e)| !e.running && now.saturating_duration_since(e.last) > idle)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.live.remove(id);
            self.remember_released(id.clone());
        }
        gone.len()
    }

    fn remember_released(&mut self, id: SequenceId) {
        if self.released_set.insert(id.clone()) {
            self.released.push_back(id);
        }
        while self.released.len() > REMEMBER_RELEASED {
            if let Some(old) = self.released.pop_front() {
                self.released_set.remove(&old);
            }
        }
    }

    /// A request of sequence `id` wants to run: takes the sequence's state and marks it running.
    /// A start (re)starts the sequence with no state (a start for a live sequence begins it
    /// anew, as in Triton).
    pub fn begin(
        &mut self,
        id: &SequenceId,
        start: bool,
        now: Instant,
    ) -> Result<Begun<S>, Refusal> {
        self.expire(now);
        if let Some(e) = self.live.get_mut(id) {
            if e.running {
                return Err(Refusal::Busy);
            }
            e.running = true;
            e.last = now;
            let state = e.state.take();
            return Ok(Begun {
                state: if start { None } else { state },
            });
        }
        if !start {
            return Err(if self.released_set.contains(id) {
                Refusal::Released
            } else {
                Refusal::NotStarted
            });
        }
        if self.live.len() >= self.limit {
            return Err(Refusal::Full { limit: self.limit });
        }
        self.released_set.remove(id);
        self.live.insert(
            id.clone(),
            Entry {
                last: now,
                state: None,
                running: true,
            },
        );
        Ok(Begun { state: None })
    }

    /// The request of `id` finished: `state` is what the next request gets (`None`: keep none);
    /// an `end` releases the sequence.
    pub fn finish(&mut self, id: &SequenceId, state: Option<S>, end: bool, now: Instant) {
        if end {
            self.live.remove(id);
            return;
        }
        if let Some(e) = self.live.get_mut(id) {
            e.running = false;
            e.last = now;
            e.state = state;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn id(n: u64) -> SequenceId {
        SequenceId::Int(n)
    }

    #[test]
    fn state_passes_from_one_request_to_the_next() {
        let now = t0();
        let mut t = SequenceTable::new(4, Duration::from_secs(1));
        assert_eq!(t.begin(&id(1), true, now).unwrap().state, None);
        t.finish(&id(1), Some(10), false, now);
        assert_eq!(t.begin(&id(1), false, now).unwrap().state, Some(10));
        t.finish(&id(1), Some(11), true, now);
        assert_eq!(t.live(), 0);
        assert_eq!(t.begin(&id(1), false, now), Err(Refusal::NotStarted));
    }

    #[test]
    fn interleaved_sequences_keep_their_state_apart() {
        let now = t0();
        let mut t = SequenceTable::new(4, Duration::from_secs(1));
        t.begin(&id(1), true, now).unwrap();
        t.begin(&SequenceId::Str("a".into()), true, now).unwrap();
        t.finish(&id(1), Some(1), false, now);
        t.finish(&SequenceId::Str("a".into()), Some(100), false, now);
        assert_eq!(t.begin(&id(1), false, now).unwrap().state, Some(1));
        assert_eq!(
            t.begin(&SequenceId::Str("a".into()), false, now)
                .unwrap()
                .state,
            Some(100)
        );
    }

    #[test]
    fn a_running_sequence_is_busy_until_it_finishes() {
        let now = t0();
        let mut t: SequenceTable<u32> = SequenceTable::new(4, Duration::from_secs(1));
        t.begin(&id(1), true, now).unwrap();
        assert_eq!(t.begin(&id(1), false, now), Err(Refusal::Busy));
        t.finish(&id(1), None, false, now);
        assert!(t.begin(&id(1), false, now).is_ok());
    }

    #[test]
    fn idle_sequences_are_released_and_named_as_such() {
        let now = t0();
        let mut t = SequenceTable::new(4, Duration::from_millis(100));
        t.begin(&id(7), true, now).unwrap();
        t.finish(&id(7), Some(1), false, now);
        let later = now + Duration::from_millis(150);
        assert_eq!(t.begin(&id(7), false, later), Err(Refusal::Released));
        assert_eq!(t.live(), 0);
        // A new start of that id works again and is no longer "released".
        assert!(t.begin(&id(7), true, later).is_ok());
        t.finish(&id(7), None, true, later);
        assert_eq!(t.begin(&id(7), false, later), Err(Refusal::NotStarted));
    }

    #[test]
    fn a_running_request_is_never_expired() {
        let now = t0();
        let mut t: SequenceTable<u32> = SequenceTable::new(4, Duration::from_millis(100));
        t.begin(&id(1), true, now).unwrap();
        assert_eq!(t.expire(now + Duration::from_secs(5)), 0);
        assert_eq!(t.live(), 1);
    }

    #[test]
    fn more_live_sequences_than_allowed_are_refused_until_one_ends() {
        let now = t0();
        let mut t: SequenceTable<u32> = SequenceTable::new(2, Duration::from_secs(1));
        t.begin(&id(1), true, now).unwrap();
        t.begin(&id(2), true, now).unwrap();
        assert_eq!(t.begin(&id(3), true, now), Err(Refusal::Full { limit: 2 }));
        t.finish(&id(1), None, true, now);
        assert!(t.begin(&id(3), true, now).is_ok());
    }

    #[test]
    fn a_start_for_a_live_sequence_begins_it_anew() {
        let now = t0();
        let mut t = SequenceTable::new(2, Duration::from_secs(1));
        t.begin(&id(1), true, now).unwrap();
        t.finish(&id(1), Some(5), false, now);
        assert_eq!(t.begin(&id(1), true, now).unwrap().state, None);
    }
}
