//! `ModelStreamInfer` for models that generate, as Triton's decoupled LLM models answer it: the
//! request's BYTES `text_input` is the prompt and its parameters (`max_tokens`, `temperature`,
//! `top_p`, `top_k`, `seed`, `ignore_eos`) the settings; each piece of text comes back as its
//! own response with a BYTES `text_output`, and a last response with no outputs carries the
//! parameter `triton_final_response: true` (the pieces carry it `false`: the framing of decoupled
//! models' responses, `decoupled::final_flag`). Errors travel in-band.

use bytes::Bytes;
use inferd_core::InferResponse;
use inferd_core::backend::NamedTensor;
use inferd_core::generate::{GenEvent, GenerateRequest, Prompt, Sampling, TextGenerator};
use inferd_core::request::{InferRequest, ParamValue};
use inferd_core::runner::InflightGuard;
use inferd_core::tensor::{DataType, Tensor, TensorData};

use super::codec::encode_infer;
use super::{in_band, pb};

fn param_f(r: &InferRequest, k: &str) -> Option<f64> {
    match r.parameters.get(k)? {
        ParamValue::Double(d) => Some(*d),
        ParamValue::Int(i) => Some(*i as f64),
        _ => None,
    }
}

fn param_u(r: &InferRequest, k: &str) -> Option<u64> {
    match r.parameters.get(k)? {
        ParamValue::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

/// The generation a stream request asks for, or why it cannot be one.
pub fn request(r: &InferRequest) -> Result<GenerateRequest, String> {
    let input = r
        .inputs
        .iter()
        .find(|i| i.name == "text_input")
        .ok_or("a generating model takes a BYTES input 'text_input'")?;
    let text = input
        .tensor
        .bytes_elements()
        .and_then(|b| b.first())
        .ok_or("'text_input' must hold one BYTES element")?;
    let prompt = std::str::from_utf8(text).map_err(|_| "'text_input' is not UTF-8")?;
    Ok(GenerateRequest {
        prompt: Prompt::Text(prompt.to_string()),
        max_tokens: Some(param_u(r, "max_tokens").unwrap_or(128) as usize),
        sampling: Sampling {
            temperature: param_f(r, "temperature").unwrap_or(1.0) as f32,
            top_p: param_f(r, "top_p").unwrap_or(1.0) as f32,
            top_k: param_u(r, "top_k").unwrap_or(0) as usize,
            seed: param_u(r, "seed"),
            ..Sampling::default()
        },
        stop: Vec::new(),
        ignore_eos: matches!(r.parameters.get("ignore_eos"), Some(ParamValue::Bool(true))),
        logprobs: None,
        constraint: None,
        echo: false,
        prompt_logprobs: None,
        chat: Default::default(),
    })
}

/// A piece of text, or (`None`) the final response with no outputs.
fn response(
    model: &str,
    version: u64,
    id: &str,
    text: Option<String>,
) -> pb::ModelStreamInferResponse {
    let last = text.is_none();
    let outputs = text
        .and_then(|t| {
            Tensor::new(
                DataType::Bytes,
                vec![1],
                TensorData::Bytes(vec![Bytes::from(t)]),
            )
            .ok()
        })
        .map(|tensor| {
            vec![NamedTensor {
                name: "text_output".into(),
                tensor,
            }]
        })
        .unwrap_or_default();
    let mut out = encode_infer(InferResponse {
        model_name: model.to_string(),
        model_version: version,
        id: id.to_string(),
        outputs,
    });
    super::decoupled::final_flag(&mut out, last);
    pb::ModelStreamInferResponse {
        error_message: String::new(),
        infer_response: Some(out),
    }
}

/// Streams one generation's pieces into `tx`, then the final response. Holds `guard` (the
/// version in use) until the end; stops early when the client's stream goes away.
pub async fn stream(
    guard: InflightGuard,
    g: std::sync::Arc<dyn TextGenerator>,
    model: String,
    req: InferRequest,
    tx: tokio::sync::mpsc::Sender<Result<pb::ModelStreamInferResponse, tonic::Status>>,
) {
    let version = guard.runner().version();
    let id = req.id.clone();
    let started = request(&req).and_then(|r| g.start(r).map_err(|e| e.to_string()));
    let mut s = match started {
        Ok(s) => s,
        Err(m) => {
            let _ = tx.send(Ok(in_band(&model, &id, m))).await;
            return;
        }
    };
    while let Some(e) = s.events.recv().await {
        let (msg, end) = match e {
            GenEvent::Text { text, .. } if text.is_empty() => continue,
            GenEvent::PromptLogprobs(_) => continue,
            GenEvent::Text { text, .. } => (response(&model, version, &id, Some(text)), false),
            GenEvent::Done { .. } => (response(&model, version, &id, None), true),
            GenEvent::Failed(m) => (in_band(&model, &id, m), true),
        };
        if tx.send(Ok(msg)).await.is_err() || end {
            break;
        }
    }
    drop(guard);
}
