//! `ModelStreamInfer` for decoupled models: every response the model gives goes out as it comes,
//! marked `triton_final_response: false`; when the request asked for it
//! (`triton_enable_empty_final_response`), an empty response marked `true` ends the request, as
//! Triton's decoupled models answer. Errors travel in-band.

use inferd_core::Engine;
use inferd_core::request::ParamValue;

use super::codec::{apply_shm_outputs, decode_infer, encode_infer, shm_outputs};
use super::{in_band, parse_version, pb};

type Tx = tokio::sync::mpsc::Sender<Result<pb::ModelStreamInferResponse, tonic::Status>>;

/// Marks a stream response as the request's last (`true`) or not, as Triton's decoupled
/// responses are marked; the LLM's text stream is marked the same way.
pub(super) fn final_flag(r: &mut pb::ModelInferResponse, last: bool) {
    r.parameters.insert(
        "triton_final_response".into(),
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(last)),
        },
    );
}

/// Streams one decoupled request's responses into `tx`.
pub(super) async fn stream(
    engine: &Engine,
    shm: &crate::shm::SharedMemory,
    r: pb::ModelInferRequest,
    tx: Tx,
) {
    let (model, id) = (r.model_name.clone(), r.id.clone());
    let err = |m: String| in_band(&model, &id, m);
    let started = parse_version(&r.model_version).and_then(|v| {
        let places = shm_outputs(&r, shm)?;
        Ok((v, places, decode_infer(r, shm)?))
    });
    let (version, places, req) = match started {
        Ok(x) => x,
        Err(s) => {
            let _ = tx.send(Ok(err(s.message().to_string()))).await;
            return;
        }
    };
    let empty_final = matches!(
        req.parameters.get("triton_enable_empty_final_response"),
        Some(ParamValue::Bool(true))
    );
    let mut rx = match engine.infer_decoupled(&model, version, req) {
        Ok(rx) => rx,
        Err(e) => {
            let _ = tx.send(Ok(err(e.to_string()))).await;
            return;
        }
    };
    let mut model_version = String::new();
    while let Some(item) = rx.recv().await {
        let msg = match item {
            Ok(resp) => {
                let mut out = encode_infer(resp);
                model_version = out.model_version.clone();
                match apply_shm_outputs(&mut out, &places, shm) {
                    Ok(()) => {
                        final_flag(&mut out, false);
                        pb::ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(out),
                        }
                    }
                    Err(s) => err(s.message().to_string()),
                }
            }
            Err(e) => err(e.to_string()),
        };
        // The client left: dropping `rx` stops the model at its next response.
        if tx.send(Ok(msg)).await.is_err() {
            return;
        }
    }
    if empty_final {
        let mut last = pb::ModelInferResponse {
            model_name: model.clone(),
            model_version,
            id: id.clone(),
            ..Default::default()
        };
        final_flag(&mut last, true);
        let _ = tx
            .send(Ok(pb::ModelStreamInferResponse {
                error_message: String::new(),
                infer_response: Some(last),
            }))
            .await;
    }
}
