//! Admission and routing: an inference request goes to the version it names, or the newest
//! ready one, through that version's scheduler.

use super::*;

impl Engine {
    /// Runs inference on a model (newest ready version unless `version` is given).
    pub async fn infer(
        &self,
        model: &str,
        version: Option<u64>,
        req: InferRequest,
    ) -> Result<InferResponse> {
        self.wait_for_cold_start(model, version).await;
        let seq = crate::sequence::params(&req.parameters)?;
        let params = req.parameters.clone();
        let (guard, mut prepared, id) = self.admit(model, version, req)?;
        let runner = guard.runner();
        if runner.decoupled().is_some() {
            return Err(super::decoupled::answers_many(model));
        }
        let spin = self.result_spin(runner);
        if let Some(plan) = runner.ensemble() {
            let start = std::time::Instant::now();
            let r = match self.ensemble_blocked(runner.config(), plan) {
                Some(why) => Err(Error::Unavailable(format!("model '{model}': {why}"))),
                None => self.run_ensemble(plan, prepared, &params, &id).await,
            };
            let outcome = r
                .as_ref()
                .map(|_| ())
                .map_err(crate::stats::FailureReason::of);
            runner.record_outcome(outcome, start.elapsed());
            return Ok(respond(model, runner, id, r?));
        }
        let outputs = match runner.sequences() {
            None => runner.infer(prepared, spin).await?,
            Some(seqs) => {
                let claim = seqs.begin(&sequence_of(model, seq)?).await?;
                claim.add_inputs(&mut prepared)?;
                let mut outputs = runner.infer(prepared, spin).await?;
                claim.finish(&mut outputs)?;
                outputs
            }
        };
        Ok(respond(model, runner, id, outputs))
    }

    /// Whether `model` may still turn ready without anyone acting: the startup loads are
    /// running, or one of its versions is loading.
    fn may_turn_ready(&self, model: &str) -> bool {
        if !self.inner.started.load(Ordering::Acquire) {
            return true;
        }
        self.inner.models.read().is_ok_and(|m| {
            m.get(model).is_some_and(|e| {
                e.versions
                    .values()
                    .any(|v| v.state == VersionState::Loading)
            })
        })
    }

    /// Waits, up to `cold_start_wait`, while `model` (its `version`) is not ready but may turn
    /// ready (a replica just started, a version still loading); at most `cold_start_queue`
    /// requests wait at once. Returns when it is ready, cannot become ready, or time is up;
    /// routing then answers as usual.
    pub async fn wait_for_cold_start(&self, model: &str, version: Option<u64>) {
        let wait = self.inner.opts.cold_start_wait;
        if wait.is_zero() || self.route(model, version).is_ok() || !self.may_turn_ready(model) {
            return;
        }
        let waiting = &self.inner.cold_waiting;
        if waiting.fetch_add(1, Ordering::AcqRel) >= self.inner.opts.cold_start_queue {
            waiting.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let settled = self.inner.settled.notified();
            tokio::pin!(settled);
            // Registered before checking, so a load that settles in between is not missed.
            settled.as_mut().enable();
            if self.route(model, version).is_ok() || !self.may_turn_ready(model) {
                break;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                break;
            }
        }
        waiting.fetch_sub(1, Ordering::AcqRel);
    }

    /// [`Engine::infer`] for callers on a plain thread (an application embedding the engine
    /// without async code): the same validation, queue and batching, but the caller polls
    /// for its result (for the model's batching delay plus `executor_spin`) before sleeping,
    /// so a short request pays no thread wake-up on the way back. Must not be called from
    /// async code.
    pub fn infer_blocking(
        &self,
        model: &str,
        version: Option<u64>,
        req: InferRequest,
    ) -> Result<InferResponse> {
        let seq = crate::sequence::params(&req.parameters)?;
        let params = req.parameters.clone();
        let (guard, mut prepared, id) = self.admit(model, version, req)?;
        let runner = guard.runner();
        if runner.decoupled().is_some() {
            return Err(super::decoupled::answers_many(model));
        }
        let spin = self.result_spin(runner);
        if let Some(plan) = runner.ensemble() {
            let start = std::time::Instant::now();
            let r = match self.ensemble_blocked(runner.config(), plan) {
                Some(why) => Err(Error::Unavailable(format!("model '{model}': {why}"))),
                None => self.run_ensemble_blocking(plan, prepared, &params, &id),
            };
            let outcome = r
                .as_ref()
                .map(|_| ())
                .map_err(crate::stats::FailureReason::of);
            runner.record_outcome(outcome, start.elapsed());
            return Ok(respond(model, runner, id, r?));
        }
        let outputs = match runner.sequences() {
            None => runner.infer_blocking(prepared, spin)?,
            Some(seqs) => {
                let claim = seqs.begin_now(&sequence_of(model, seq)?)?;
                claim.add_inputs(&mut prepared)?;
                let mut outputs = runner.infer_blocking(prepared, spin)?;
                claim.finish(&mut outputs)?;
                outputs
            }
        };
        Ok(respond(model, runner, id, outputs))
    }

    /// Routes a request to a version (held by the guard) and validates it against its config.
    /// The text generator of `model` (its `version`, or the latest ready one) with the
    /// version's in-flight guard: hold the guard while the generation runs, so a reload lets it
    /// finish on this version. A model that does not generate is refused.
    pub fn generator(
        &self,
        model: &str,
        version: Option<u64>,
    ) -> Result<(InflightGuard, Arc<dyn crate::generate::TextGenerator>)> {
        if self.inner.refusing.load(Ordering::Acquire) {
            return Err(Error::Unavailable(
                "the server is shutting down and takes no new requests; retry on another replica"
                    .into(),
            ));
        }
        let guard = self.route(model, version)?;
        let g = guard.runner().generator().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "model '{model}' does not generate text; its inputs and outputs are tensors (use /v2/models/{model}/infer)"
            ))
        })?;
        Ok((guard, g))
    }

    pub(super) fn admit(
        &self,
        model: &str,
        version: Option<u64>,
        req: InferRequest,
    ) -> Result<(InflightGuard, PreparedRequest, String)> {
        if self.inner.refusing.load(Ordering::Acquire) {
            return Err(Error::Unavailable(
                "the server is shutting down and takes no new requests; retry on another replica"
                    .into(),
            ));
        }
        let start = std::time::Instant::now();
        let guard = self.route(model, version)?;
        let id = req.id.clone();
        let runner = guard.runner();
        let prepared = prepare(model, runner.config(), req).and_then(|p| {
            check_model_shapes(model, runner.config().batches(), runner.signature(), &p)?;
            Ok(p)
        });
        match prepared {
            Ok(p) => Ok((guard, p, id)),
            Err(e) => {
                // Routed to a version but refused by validation: that version counts it.
                runner.record_outcome(Err(crate::stats::FailureReason::of(&e)), start.elapsed());
                Err(e)
            }
        }
    }

    /// How long a caller polls for its result before sleeping: as long as the batcher may hold
    /// the request, plus the executor's own spin (0 when spinning is off).
    pub(super) fn result_spin(&self, runner: &VersionRunner) -> Duration {
        let spin = self.inner.opts.executor_spin;
        if spin.is_zero() {
            return spin;
        }
        let delay = runner
            .config()
            .dynamic_batching
            .as_ref()
            .map_or(0, |d| d.max_queue_delay_microseconds);
        spin + Duration::from_micros(delay)
    }

    /// Picks the version to serve a request and marks it in use.
    pub fn route(&self, model: &str, version: Option<u64>) -> Result<InflightGuard> {
        let models = self.inner.models.read().map_err(lock_err)?;
        let Some(entry) = models.get(model) else {
            return Err(Error::NotFound(unknown_model(model)));
        };
        let pick = match version {
            Some(v) => match entry.versions.get(&v) {
                None => {
                    return Err(Error::NotFound(unknown_version(model, v)));
                }
                Some(e) => match (&e.state, &e.runner) {
                    (VersionState::Ready, Some(r)) => r,
                    _ => {
                        let msg = format!(
                            "Request for unknown model: '{model}' version {v} is not at ready \
                             state; model '{model}' is not ready ({}{})",
                            e.state.as_str(),
                            if e.reason.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", e.reason)
                            }
                        );
                        // Loading is transient (503); unloaded or failed is the client's to fix.
                        return Err(if e.state == VersionState::Loading {
                            Error::Unavailable(msg)
                        } else {
                            Error::NotFound(msg)
                        });
                    }
                },
            },
            None => match entry
                .versions
                .values()
                .rev()
                .find_map(|e| match (&e.state, &e.runner) {
                    (VersionState::Ready, Some(r)) => Some(r),
                    _ => None,
                }) {
                Some(r) => r,
                None => {
                    let loading = entry
                        .versions
                        .values()
                        .any(|e| e.state == VersionState::Loading);
                    let why = entry.error.clone().unwrap_or_else(|| {
                        let states: Vec<String> = entry
                            .versions
                            .iter()
                            .map(|(v, e)| {
                                let reason = if e.reason.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {}", e.reason)
                                };
                                format!("version {v} {}{reason}", e.state.as_str())
                            })
                            .collect();
                        if states.is_empty() {
                            "no version is loaded".to_string()
                        } else {
                            states.join("; ")
                        }
                    });
                    let msg = format!(
                        "Request for unknown model: '{model}' has no available versions; \
                         model '{model}' is not ready: {why}"
                    );
                    return Err(if loading {
                        Error::Unavailable(msg)
                    } else {
                        Error::NotFound(msg)
                    });
                }
            },
        };
        Ok(pick.begin())
    }
}

/// The text Triton's clients match on for a model the server does not know (its own
/// wording, kept so their checks pass).
pub(crate) fn unknown_model(model: &str) -> String {
    format!("Request for unknown model: '{model}' is not found")
}

/// The same for a version the model does not have.
pub(crate) fn unknown_version(model: &str, version: u64) -> String {
    format!("Request for unknown model: '{model}' version {version} is not found")
}

fn respond(
    model: &str,
    runner: &VersionRunner,
    id: String,
    outputs: Vec<NamedTensor>,
) -> InferResponse {
    InferResponse {
        model_name: model.to_string(),
        model_version: runner.version(),
        id,
        outputs,
    }
}

/// The sequence a request to a stateful model belongs to; one that names none is refused.
fn sequence_of(
    model: &str,
    seq: Option<crate::sequence::SequenceParams>,
) -> Result<crate::sequence::SequenceParams> {
    seq.ok_or_else(|| {
        Error::invalid(format!(
            "inference request to model '{model}' must specify a non-zero or non-empty correlation ID (parameter 'sequence_id'): it is a stateful model (sequence_batching)"
        ))
    })
}
