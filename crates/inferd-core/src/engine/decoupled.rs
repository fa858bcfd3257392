//! Decoupled models (`model_transaction_policy { decoupled: true }`): a request answered with
//! zero, one or many responses. The engine validates the request like any other, then runs the
//! model's [`DecoupledModel`](crate::backend::DecoupledModel) on a blocking thread; responses
//! travel through a bounded channel (a slow client slows the model, never grows a queue), and
//! the channel closing is the final response. Front-ends stream them (gRPC `ModelStreamInfer`).

use super::*;

/// Responses a decoupled request may have in flight to a slow client.
const RESPONSES_IN_FLIGHT: usize = 16;

/// Decoupled requests the engine runs at once (each holds a blocking thread); past it a request
/// is answered 503 with retry advice.
pub const MAX_DECOUPLED: usize = 64;

impl Engine {
    /// Whether the version serving `model` is decoupled.
    pub fn is_decoupled(&self, model: &str, version: Option<u64>) -> bool {
        self.route(model, version)
            .is_ok_and(|g| g.runner().decoupled().is_some())
    }

    /// Starts a request to a decoupled model: its responses (or its error) arrive on the
    /// receiver, which closes after the last one.
    pub fn infer_decoupled(
        &self,
        model: &str,
        version: Option<u64>,
        req: InferRequest,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<InferResponse>>> {
        let slot = self
            .inner
            .decoupled_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Overloaded {
                message: format!(
                    "{MAX_DECOUPLED} decoupled requests are running, the most at once; retry shortly"
                ),
                retry_after_secs: 1,
            })?;
        let (guard, prepared, id) = self.admit(model, version, req)?;
        let runner = guard.runner().clone();
        let Some(dm) = runner.decoupled() else {
            return Err(Error::invalid(format!(
                "model '{model}' answers each request once; call it with infer, not as a decoupled model"
            )));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(RESPONSES_IN_FLIGHT);
        let model = model.to_string();
        tokio::task::spawn_blocking(move || {
            let _in_use = (guard, slot);
            let start = std::time::Instant::now();
            let mut send = |outputs: Vec<NamedTensor>| {
                let resp = InferResponse {
                    model_name: model.clone(),
                    model_version: runner.version(),
                    id: id.clone(),
                    outputs,
                };
                tx.blocking_send(Ok(resp)).is_ok()
            };
            // No compute share is held here: a decoupled model may spend most of its time
            // waiting between responses (repeat's delays, a stream's pacing).
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                dm.run_with(
                    &prepared.inputs,
                    &prepared.outputs,
                    &prepared.meta,
                    &mut send,
                )
            }));
            let r = match ran {
                Ok(r) => r.map_err(|e| e.into_request_error(&model)),
                Err(_) => Err(Error::Internal(format!(
                    "model '{model}' stopped while answering (a panic in its backend)"
                ))),
            };
            let outcome = r
                .as_ref()
                .map(|_| ())
                .map_err(crate::stats::FailureReason::of);
            runner.record_outcome(outcome, start.elapsed());
            if let Err(e) = r {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(rx)
    }
}

/// The refusal of a decoupled model on a path that answers once.
pub(super) fn answers_many(model: &str) -> Error {
    Error::invalid(format!(
        "model '{model}' is decoupled (any number of responses per request): call it over gRPC ModelStreamInfer"
    ))
}
