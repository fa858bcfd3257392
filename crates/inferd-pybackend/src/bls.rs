//! Calls a `model.py` makes to the server's other models (Triton's business-logic scripting):
//! `InferenceRequest(model_name, inputs, requested_output_names).exec()` in the worker arrives
//! as a `bls` message; it runs through the engine on a thread of its own (the reader thread
//! must go on reading), and its result goes back as `bls_result` messages, one per response
//! with `final` on the last.

use inferd_core::Error;
use inferd_core::backend::NamedTensor;
use serde_json::{Value, json};

use crate::reader::BlsLink;
use crate::worker::code;

/// The `TritonError` code a model sees for an engine error.
fn code_of(e: &Error) -> i64 {
    match e {
        Error::InvalidArgument(_) | Error::FailedPrecondition(_) => code::INVALID_ARG,
        Error::NotFound(_) => code::NOT_FOUND,
        Error::Unavailable(_) | Error::Overloaded { .. } | Error::DeadlineExceeded(_) => {
            code::UNAVAILABLE
        }
        Error::Cancelled(_) => code::CANCELLED,
        _ => code::INTERNAL,
    }
}

fn failed(id: u64, message: String, code: i64) -> Value {
    json!({"op": "bls_result", "bls": id, "final": true, "error": {"message": message, "code": code}})
}

/// Starts one call (from the reader thread).
pub(crate) fn start(
    link: BlsLink,
    msg: Value,
    tensors: Result<Vec<NamedTensor>, inferd_core::BackendError>,
) {
    let id = msg.get("bls").and_then(|b| b.as_u64()).unwrap_or(0);
    if !link.enter() {
        link.reply(
            failed(
                id,
                format!(
                    "model '{}' has too many calls to other models running; retry",
                    link.model()
                ),
                code::UNAVAILABLE,
            ),
            &[],
        );
        return;
    }
    let spawned = std::thread::Builder::new()
        .name(format!("inferd-bls-{}", link.model()))
        .spawn(move || {
            run(&link, id, &msg, tensors);
            link.leave();
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start a thread for a BLS call: {e}");
    }
}

fn run(
    link: &BlsLink,
    id: u64,
    msg: &Value,
    tensors: Result<Vec<NamedTensor>, inferd_core::BackendError>,
) {
    let Some(caller) = link.caller() else {
        link.reply(
            failed(
                id,
                "calls to other models (BLS) need the server's engine, which this process does not run".into(),
                code::UNSUPPORTED,
            ),
            &[],
        );
        return;
    };
    let inputs = match tensors {
        Ok(t) => t,
        Err(e) => return link.reply(failed(id, e.to_string(), code::INVALID_ARG), &[]),
    };
    let model = msg
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or_default();
    let version = msg
        .get("version")
        .and_then(|v| v.as_i64())
        .filter(|v| *v > 0)
        .map(|v| v as u64);
    let outputs: Option<Vec<String>> = msg.get("outputs").and_then(|o| o.as_array()).map(|o| {
        o.iter()
            .filter_map(|n| n.as_str().map(String::from))
            .collect()
    });
    let outputs = outputs.filter(|o| !o.is_empty());
    if msg.get("decoupled").and_then(|d| d.as_bool()) == Some(true) {
        let mut each = |outs: Vec<NamedTensor>| {
            link.reply(
                json!({"op": "bls_result", "bls": id, "final": false}),
                &outs,
            );
            true
        };
        match caller.infer_stream(model, version, inputs, outputs, &mut each) {
            Ok(()) => link.reply(
                json!({"op": "bls_result", "bls": id, "final": true, "empty": true}),
                &[],
            ),
            Err(e) => link.reply(failed(id, e.to_string(), code_of(&e)), &[]),
        }
    } else {
        match caller.infer(model, version, inputs, outputs) {
            Ok(outs) => link.reply(json!({"op": "bls_result", "bls": id, "final": true}), &outs),
            Err(e) => link.reply(failed(id, e.to_string(), code_of(&e)), &[]),
        }
    }
}
