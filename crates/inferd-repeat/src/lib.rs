//! Triton's test backends, whose behaviour is all in the request and the config (no model
//! file): [`IdentityBackend`] (`backend: "identity"`, in [`identity`]) and the `repeat` backend
//! below.
//!
//! The `repeat` backend (Triton's test backend of that name, for the `repeat_int32` model its
//! example client `simple_grpc_custom_repeat.py` streams from): a decoupled model whose
//! behaviour is all in its inputs, so it needs no model file.
//!
//! Inputs `IN` (INT32, `[n]`), `DELAY` (UINT32, `[n]`, milliseconds) and `WAIT` (UINT32, `[1]`,
//! milliseconds). For each element `i` it waits `DELAY[i]`, then answers `OUT = [IN[i]]` and
//! `IDX = [i]`; after the last it waits `WAIT` before the request completes. An empty `IN`
//! gives no responses. Delays are bounded ([`MAX_DELAY_MS`]) so a request cannot hold its
//! thread for long.

pub mod identity;

pub use identity::IdentityBackend;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use inferd_core::backend::{
    Backend, BackendError, DecoupledModel, LoadRequest, LoadedModel, ModelInstance, ModelSignature,
    NamedTensor, TensorSpec,
};
use inferd_core::config::ModelConfig;
use inferd_core::tensor::{DataType, Tensor};

/// Longest delay one element or the final wait may ask for.
pub const MAX_DELAY_MS: u32 = 10_000;

/// The backend (`backend: "repeat"`).
pub struct RepeatBackend;

struct RepeatModel {
    sig: ModelSignature,
}

fn spec(name: &str, dtype: DataType, dim: i64) -> TensorSpec {
    TensorSpec {
        name: name.to_string(),
        dtype,
        shape: Some(vec![dim]),
    }
}

impl Backend for RepeatBackend {
    fn name(&self) -> &'static str {
        "repeat"
    }
    fn platform(&self) -> Option<&'static str> {
        None
    }
    fn accepts(&self, _platform: &str, backend: &str) -> bool {
        backend == "repeat"
    }
    fn default_model_filename(&self, _config: &ModelConfig, _dir: &Path) -> String {
        String::new()
    }
    fn needs_model_file(&self) -> bool {
        false
    }
    fn load(&self, req: &LoadRequest<'_>) -> Result<Arc<dyn LoadedModel>, BackendError> {
        if req.config.max_batch_size > 0 {
            return Err(BackendError::Load(
                "the repeat backend does not batch: set max_batch_size: 0".into(),
            ));
        }
        Ok(Arc::new(RepeatModel {
            sig: ModelSignature {
                inputs: vec![
                    spec("IN", DataType::I32, -1),
                    spec("DELAY", DataType::U32, -1),
                    spec("WAIT", DataType::U32, 1),
                ],
                outputs: vec![spec("OUT", DataType::I32, 1), spec("IDX", DataType::U32, 1)],
            },
        }))
    }
}

impl LoadedModel for RepeatModel {
    fn signature(&self) -> &ModelSignature {
        &self.sig
    }
    fn new_instance(&self) -> Result<Box<dyn ModelInstance>, BackendError> {
        Err(BackendError::Internal(
            "the repeat model is decoupled; it has no instances".into(),
        ))
    }
    fn decoupled(&self) -> Option<Arc<dyn DecoupledModel>> {
        Some(Arc::new(RepeatModel {
            sig: self.sig.clone(),
        }))
    }
}

/// The elements of a 32-bit integer input (INT32 or UINT32) as i64.
fn ints(inputs: &[NamedTensor], name: &str) -> Result<Vec<i64>, BackendError> {
    let t = inputs
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| BackendError::InvalidInput(format!("input '{name}' is missing")))?;
    let raw = t.tensor.raw().ok_or_else(|| {
        BackendError::InvalidInput(format!("input '{name}' is not a numeric tensor"))
    })?;
    let signed = t.tensor.dtype() == DataType::I32;
    Ok(raw
        .chunks_exact(4)
        .map(|c| {
            let b = [c[0], c[1], c[2], c[3]];
            if signed {
                i64::from(i32::from_le_bytes(b))
            } else {
                i64::from(u32::from_le_bytes(b))
            }
        })
        .collect())
}

fn delay(ms: i64, what: &str) -> Result<Duration, BackendError> {
    if ms > i64::from(MAX_DELAY_MS) {
        return Err(BackendError::InvalidInput(format!(
            "{what} is {ms} ms; the repeat backend waits at most {MAX_DELAY_MS} ms"
        )));
    }
    Ok(Duration::from_millis(ms.max(0) as u64))
}

impl DecoupledModel for RepeatModel {
    fn run(
        &self,
        inputs: &[NamedTensor],
        outputs: &[String],
        send: &mut dyn FnMut(Vec<NamedTensor>) -> bool,
    ) -> Result<(), BackendError> {
        let values = ints(inputs, "IN")?;
        let delays = ints(inputs, "DELAY")?;
        let wait = ints(inputs, "WAIT")?;
        if delays.len() != values.len() {
            return Err(BackendError::InvalidInput(format!(
                "DELAY has {} elements but IN has {}; give one delay per element",
                delays.len(),
                values.len()
            )));
        }
        let wait = delay(wait.first().copied().unwrap_or(0), "WAIT")?;
        let delays: Vec<Duration> = delays
            .iter()
            .enumerate()
            .map(|(i, &d)| delay(d, &format!("DELAY[{i}]")))
            .collect::<Result<_, _>>()?;
        for (i, (&v, d)) in values.iter().zip(delays).enumerate() {
            std::thread::sleep(d);
            let mut out = Vec::new();
            for name in outputs {
                let tensor = match name.as_str() {
                    "OUT" => Tensor::new(
                        DataType::I32,
                        vec![1],
                        inferd_core::tensor::TensorData::Raw(
                            (v as i32).to_le_bytes().to_vec().into(),
                        ),
                    ),
                    "IDX" => Tensor::new(
                        DataType::U32,
                        vec![1],
                        inferd_core::tensor::TensorData::Raw(
                            (i as u32).to_le_bytes().to_vec().into(),
                        ),
                    ),
                    other => {
                        return Err(BackendError::InvalidInput(format!(
                            "the repeat model has no output '{other}'"
                        )));
                    }
                }
                .map_err(|e| BackendError::Execution(e.to_string()))?;
                out.push(NamedTensor {
                    name: name.clone(),
                    tensor,
                });
            }
            if !send(out) {
                return Ok(());
            }
        }
        std::thread::sleep(wait);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, dtype: DataType, vals: &[u32]) -> NamedTensor {
        let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        NamedTensor {
            name: name.into(),
            tensor: Tensor::new(
                dtype,
                vec![vals.len()],
                inferd_core::tensor::TensorData::Raw(raw.into()),
            )
            .unwrap(),
        }
    }

    fn model() -> RepeatModel {
        RepeatModel {
            sig: ModelSignature::default(),
        }
    }

    #[test]
    fn one_response_per_element_in_order_and_none_for_empty() {
        let inputs = [
            t("IN", DataType::I32, &[100, 101, 102]),
            t("DELAY", DataType::U32, &[0, 0, 0]),
            t("WAIT", DataType::U32, &[0]),
        ];
        let mut got = Vec::new();
        model()
            .run(&inputs, &["OUT".into(), "IDX".into()], &mut |o| {
                got.push((ints(&o, "OUT").unwrap()[0], ints(&o, "IDX").unwrap()[0]));
                true
            })
            .unwrap();
        assert_eq!(got, [(100, 0), (101, 1), (102, 2)]);
        let empty = [
            t("IN", DataType::I32, &[]),
            t("DELAY", DataType::U32, &[]),
            t("WAIT", DataType::U32, &[0]),
        ];
        let mut n = 0;
        model()
            .run(&empty, &["OUT".into()], &mut |_| {
                n += 1;
                true
            })
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn a_client_that_leaves_stops_the_responses() {
        let inputs = [
            t("IN", DataType::I32, &[1, 2, 3]),
            t("DELAY", DataType::U32, &[0, 0, 0]),
            t("WAIT", DataType::U32, &[0]),
        ];
        let mut n = 0;
        model()
            .run(&inputs, &["OUT".into()], &mut |_| {
                n += 1;
                false
            })
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn mismatched_or_huge_delays_are_refused() {
        let inputs = [
            t("IN", DataType::I32, &[1, 2]),
            t("DELAY", DataType::U32, &[0]),
            t("WAIT", DataType::U32, &[0]),
        ];
        let e = model()
            .run(&inputs, &["OUT".into()], &mut |_| true)
            .unwrap_err();
        assert!(e.to_string().contains("one delay per element"), "{e}");
        let inputs = [
            t("IN", DataType::I32, &[1]),
            t("DELAY", DataType::U32, &[60_000]),
            t("WAIT", DataType::U32, &[0]),
        ];
        let e = model()
            .run(&inputs, &["OUT".into()], &mut |_| true)
            .unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
    }
}
