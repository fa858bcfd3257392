//! Order of a stateful sequence's requests on one `ModelStreamInfer` stream. Requests of a
//! stream run concurrently (so they batch), but the requests of one sequence must reach the
//! engine in the order the client sent them: each waits for the previous request of its
//! sequence on this stream to finish.

use std::collections::HashMap;

use tokio::sync::oneshot;

use super::pb;
use pb::infer_parameter::ParameterChoice as C;

/// Sequences remembered per stream before finished ones are pruned.
const PRUNE_AT: usize = 1024;

/// The last request of each sequence seen on a stream.
#[derive(Default)]
pub(super) struct SequenceOrder {
    last: HashMap<(String, String), oneshot::Receiver<()>>,
}

/// A request's place in the order: wait for `after`, hold `done` until finished.
pub(super) struct Turn {
    after: Option<oneshot::Receiver<()>>,
    _done: Option<oneshot::Sender<()>>,
}

impl Turn {
    /// Waits for the previous request of the same sequence (if any) to finish.
    pub(super) async fn wait(&mut self) {
        if let Some(rx) = self.after.take() {
            // The sender is dropped, never used: either way the previous request is over.
            let _ = rx.await;
        }
    }
}

fn sequence_key(r: &pb::ModelInferRequest) -> Option<String> {
    match r.parameters.get("sequence_id")?.parameter_choice.as_ref()? {
        C::Int64Param(0) | C::Uint64Param(0) => None,
        C::Int64Param(i) => Some(i.to_string()),
        C::Uint64Param(u) => Some(u.to_string()),
        C::StringParam(s) if !s.is_empty() => Some(format!("s:{s}")),
        _ => None,
    }
}

impl SequenceOrder {
    /// Takes the next place for `r` (called in arrival order, before the request is spawned).
    pub(super) fn turn(&mut self, r: &pb::ModelInferRequest) -> Turn {
        let Some(seq) = sequence_key(r) else {
            return Turn {
                after: None,
                _done: None,
            };
        };
        if self.last.len() >= PRUNE_AT {
            self.last
                .retain(|_, rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        }
        let (tx, rx) = oneshot::channel();
        let after = self.last.insert((r.model_name.clone(), seq), rx);
        Turn {
            after,
            _done: Some(tx),
        }
    }
}
