//! The version lifecycle as pure functions: a model's table of versions and what each event
//! does to it. No I/O, no runners: the table is generic over what a loaded version holds (`R`,
//! a `VersionRunner` in the engine, a number in the tests), so every state x event is unit-tested
//! here, and the async engine only carries the effects out (start loads, stop runners).
//!
//! States: LOADING -> READY -> UNLOADING -> UNAVAILABLE ("unloaded"); LOADING -> UNAVAILABLE
//! (the reason). A READY version whose reload fails stays READY on its previous load. A reload
//! that fails anywhere retires nothing, so a broken change never takes serving versions away.

use std::collections::BTreeMap;

use super::VersionState;

/// One version of a model.
#[derive(Debug)]
pub(crate) struct VersionEntry<R> {
    pub(crate) state: VersionState,
    /// Why it is not ready, or why its reload failed.
    pub(crate) reason: String,
    /// The loaded copy serving it.
    pub(crate) runner: Option<R>,
    /// The version folder's files when last loaded (or tried).
    pub(crate) fingerprint: u64,
    /// The model's config when last loaded (or tried).
    pub(crate) config_fingerprint: u64,
}

/// A model: its versions, and what is wrong with it as a whole.
#[derive(Debug)]
pub(crate) struct ModelEntry<R> {
    pub(crate) versions: BTreeMap<u64, VersionEntry<R>>,
    /// A problem with the model as a whole (bad config, no versions).
    pub(crate) error: Option<String>,
    /// Should be loaded (counts for strict readiness).
    pub(crate) wanted: bool,
}

impl<R> Default for ModelEntry<R> {
    fn default() -> Self {
        ModelEntry {
            versions: BTreeMap::new(),
            error: None,
            wanted: false,
        }
    }
}

/// The files a target version has now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Files {
    /// The version folder's fingerprint.
    pub(crate) version: u64,
    /// The config's fingerprint.
    pub(crate) config: u64,
}

/// What settling a round of loads decided.
#[derive(Debug)]
pub(crate) struct Settled<R> {
    /// Copies replaced by a successful reload: finish what they hold, then stop.
    pub(crate) replaced: Vec<(u64, R)>,
    /// Versions no longer wanted: routing stopped, they finish and stop.
    pub(crate) retired: Vec<(u64, R)>,
}

impl<R> ModelEntry<R> {
    /// The versions of `targets` that must (re)load: new ones, ones without a loaded copy, and
    /// ones whose files or config changed. Those without a serving copy turn LOADING.
    pub(crate) fn plan_loads(&mut self, targets: &[(u64, Files)]) -> Vec<u64> {
        let mut out = Vec::new();
        for &(v, files) in targets {
            let needs = match self.versions.get(&v) {
                Some(e) => {
                    e.runner.is_none()
                        || e.fingerprint != files.version
                        || e.config_fingerprint != files.config
                }
                None => true,
            };
            if !needs {
                continue;
            }
            let e = self
                .versions
                .entry(v)
                .or_insert_with(|| VersionEntry::loading(files));
            if e.runner.is_none() {
                e.state = VersionState::Loading;
                e.reason.clear();
            }
            out.push(v);
        }
        out
    }

    /// Applies a round of load results and retires the versions outside `targets`, unless a
    /// load failed (then everything serving keeps serving).
    pub(crate) fn settle(
        &mut self,
        results: Vec<(u64, Files, Result<R, String>)>,
        targets: &[u64],
    ) -> Settled<R> {
        self.error = None;
        let mut replaced = Vec::new();
        let mut any_failed = false;
        for (v, files, result) in results {
            let e = self
                .versions
                .entry(v)
                .or_insert_with(|| VersionEntry::loading(files));
            // Remember the files either way, so an unchanged broken copy is not retried on
            // every poll.
            e.fingerprint = files.version;
            e.config_fingerprint = files.config;
            match result {
                Ok(runner) => {
                    if let Some(old) = e.runner.replace(runner) {
                        replaced.push((v, old));
                    }
                    e.state = VersionState::Ready;
                    e.reason.clear();
                }
                Err(reason) => {
                    any_failed = true;
                    if e.runner.is_some() {
                        e.reason =
                            format!("reload failed, still serving the previous load: {reason}");
                    } else {
                        e.state = VersionState::Unavailable;
                        e.reason = reason;
                    }
                }
            }
        }
        let retired = if any_failed {
            Vec::new()
        } else {
            self.versions
                .iter_mut()
                .filter(|(v, _)| !targets.contains(v))
                .filter_map(|(v, e)| e.retire().map(|r| (*v, r)))
                .collect()
        };
        Settled { replaced, retired }
    }

    /// Forgets versions whose folders are gone and that hold nothing.
    pub(crate) fn forget_missing(&mut self, present: impl Fn(u64) -> bool) {
        self.versions
            .retain(|v, e| present(*v) || e.runner.is_some() || e.state == VersionState::Unloading);
    }

    /// The explicit unload: not wanted any more, every loaded version retired.
    pub(crate) fn unload(&mut self) -> Vec<(u64, R)> {
        self.wanted = false;
        self.error = None;
        self.versions
            .iter_mut()
            .filter_map(|(v, e)| e.retire().map(|r| (*v, r)))
            .collect()
    }

    /// A retired version stopped: if nothing loaded it again meanwhile, it is UNAVAILABLE,
    /// "unloaded".
    pub(crate) fn stopped(&mut self, version: u64) {
        if let Some(e) = self.versions.get_mut(&version)
            && e.state == VersionState::Unloading
            && e.runner.is_none()
        {
            e.state = VersionState::Unavailable;
            e.reason = "unloaded".into();
        }
    }
}

impl<R> VersionEntry<R> {
    /// A version about to load these files, with nothing loaded yet.
    fn loading(files: Files) -> Self {
        VersionEntry {
            state: VersionState::Loading,
            reason: String::new(),
            runner: None,
            fingerprint: files.version,
            config_fingerprint: files.config,
        }
    }

    /// Stops routing to this version: its runner, if any, is handed back to be stopped, and it
    /// is UNLOADING until then.
    pub(crate) fn retire(&mut self) -> Option<R> {
        let r = self.runner.take()?;
        self.state = VersionState::Unloading;
        self.reason.clear();
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VersionState::*;

    const A: Files = Files {
        version: 1,
        config: 10,
    };
    const B: Files = Files {
        version: 2,
        config: 10,
    };

    fn model(rows: &[(u64, VersionState, Option<u32>, Files)]) -> ModelEntry<u32> {
        let mut m = ModelEntry::default();
        for &(v, state, runner, files) in rows {
            m.versions.insert(
                v,
                VersionEntry {
                    state,
                    reason: String::new(),
                    runner,
                    fingerprint: files.version,
                    config_fingerprint: files.config,
                },
            );
        }
        m
    }

    fn states(m: &ModelEntry<u32>) -> Vec<(u64, VersionState, Option<u32>)> {
        m.versions
            .iter()
            .map(|(v, e)| (*v, e.state, e.runner))
            .collect()
    }

    #[test]
    fn a_new_version_loads_and_an_unchanged_ready_one_does_not() {
        let mut m = model(&[(1, Ready, Some(7), A)]);
        assert_eq!(m.plan_loads(&[(1, A), (2, A)]), vec![2]);
        assert_eq!(states(&m), vec![(1, Ready, Some(7)), (2, Loading, None)]);
    }

    #[test]
    fn changed_files_or_config_reload_while_the_old_copy_keeps_serving() {
        let mut m = model(&[(1, Ready, Some(7), A)]);
        assert_eq!(m.plan_loads(&[(1, B)]), vec![1]);
        assert_eq!(states(&m), vec![(1, Ready, Some(7))], "still serving");
        let mut m = model(&[(1, Ready, Some(7), A)]);
        let cfg = Files {
            version: 1,
            config: 11,
        };
        assert_eq!(m.plan_loads(&[(1, cfg)]), vec![1]);
    }

    #[test]
    fn unavailable_and_unloading_versions_load_again_from_loading() {
        for state in [Unavailable, Unloading] {
            let mut m = model(&[(1, state, None, A)]);
            assert_eq!(m.plan_loads(&[(1, A)]), vec![1], "{state:?}");
            assert_eq!(states(&m), vec![(1, Loading, None)], "{state:?}");
        }
    }

    #[test]
    fn a_successful_load_is_ready_and_hands_back_the_copy_it_replaced() {
        let mut m = model(&[(1, Ready, Some(7), A)]);
        let s = m.settle(vec![(1, B, Ok(8))], &[1]);
        assert_eq!(states(&m), vec![(1, Ready, Some(8))]);
        assert_eq!(s.replaced, vec![(1, 7)]);
        assert!(s.retired.is_empty());
        assert_eq!(m.versions[&1].fingerprint, 2);
    }

    #[test]
    fn a_failed_first_load_is_unavailable_with_the_reason() {
        let mut m = model(&[(1, Loading, None, A)]);
        let s = m.settle(vec![(1, A, Err("bad operator".into()))], &[1]);
        assert_eq!(states(&m), vec![(1, Unavailable, None)]);
        assert_eq!(m.versions[&1].reason, "bad operator");
        assert!(s.replaced.is_empty() && s.retired.is_empty());
    }

    #[test]
    fn a_failed_reload_keeps_serving_the_previous_copy_and_remembers_the_files() {
        let mut m = model(&[(1, Ready, Some(7), A)]);
        m.settle(vec![(1, B, Err("bad operator".into()))], &[1]);
        assert_eq!(states(&m), vec![(1, Ready, Some(7))]);
        assert!(
            m.versions[&1]
                .reason
                .contains("still serving the previous load")
        );
        assert_eq!(
            m.versions[&1].fingerprint, 2,
            "not retried until the files change"
        );
        assert_eq!(m.plan_loads(&[(1, B)]), Vec::<u64>::new());
    }

    #[test]
    fn versions_outside_the_targets_retire_only_when_every_load_succeeded() {
        let mut m = model(&[(1, Ready, Some(7), A), (2, Loading, None, A)]);
        let s = m.settle(vec![(2, A, Ok(9))], &[2]);
        assert_eq!(s.retired, vec![(1, 7)]);
        assert_eq!(states(&m), vec![(1, Unloading, None), (2, Ready, Some(9))]);

        let mut m = model(&[(1, Ready, Some(7), A), (2, Loading, None, A)]);
        let s = m.settle(vec![(2, A, Err("broken".into()))], &[2]);
        assert!(
            s.retired.is_empty(),
            "a broken new version takes nothing away"
        );
        assert_eq!(
            states(&m),
            vec![(1, Ready, Some(7)), (2, Unavailable, None)]
        );
    }

    #[test]
    fn settling_clears_a_model_wide_error() {
        let mut m = model(&[]);
        m.error = Some("bad config".into());
        m.settle(vec![(1, A, Ok(1))], &[1]);
        assert_eq!(m.error, None);
    }

    #[test]
    fn unload_retires_every_loaded_version_and_unwants_the_model() {
        let mut m = model(&[
            (1, Ready, Some(7), A),
            (2, Unavailable, None, A),
            (3, Ready, Some(8), A),
        ]);
        m.wanted = true;
        m.error = Some("x".into());
        assert_eq!(m.unload(), vec![(1, 7), (3, 8)]);
        assert!(!m.wanted && m.error.is_none());
        assert_eq!(
            states(&m),
            vec![
                (1, Unloading, None),
                (2, Unavailable, None),
                (3, Unloading, None)
            ]
        );
    }

    #[test]
    fn a_stopped_version_is_unavailable_unless_it_was_loaded_again() {
        let mut m = model(&[(1, Unloading, None, A), (2, Unloading, None, A)]);
        // Version 2 was loaded again while the old copy was stopping.
        m.plan_loads(&[(2, A)]);
        m.settle(vec![(2, A, Ok(5))], &[1, 2]);
        m.stopped(1);
        m.stopped(2);
        assert_eq!(
            states(&m),
            vec![(1, Unavailable, None), (2, Ready, Some(5))]
        );
        assert_eq!(m.versions[&1].reason, "unloaded");
        m.stopped(9); // unknown: nothing happens
    }

    #[test]
    fn gone_folders_are_forgotten_unless_they_still_hold_something() {
        let mut m = model(&[
            (1, Unavailable, None, A),
            (2, Ready, Some(7), A),
            (3, Unloading, None, A),
            (4, Unavailable, None, A),
        ]);
        m.forget_missing(|v| v == 4);
        assert_eq!(
            states(&m),
            vec![
                (2, Ready, Some(7)),
                (3, Unloading, None),
                (4, Unavailable, None)
            ]
        );
    }

    #[test]
    fn retiring_a_version_without_a_copy_changes_nothing() {
        let mut e = VersionEntry::<u32> {
            state: Unavailable,
            reason: "why".into(),
            runner: None,
            fingerprint: 0,
            config_fingerprint: 0,
        };
        assert_eq!(e.retire(), None);
        assert_eq!((e.state, e.reason.as_str()), (Unavailable, "why"));
    }
}
