//! Sequence batching (Triton's `sequence_batching`) for stateful models: reading a request's
//! correlation id and start/end flags, filling in the control tensors and the implicit state the
//! model takes, and keeping the state it gives back for the sequence's next request.
//!
//! - [`table`]: the live sequences as a pure policy type (idle timeout, bound, busy).
//! - this file: the tensors, and the driver the engine calls around a request.
//!
//! Requests of different sequences batch together through the version's ordinary batcher (the
//! control and state tensors are per request); requests of one sequence run one at a time, in
//! the order they arrive.

pub mod table;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;

use crate::backend::{ModelSignature, NamedTensor};
use crate::config::ModelConfig;
use crate::config::sequence::{ControlKind, FalseTrue, SequenceBatching};
use crate::error::{Error, Result};
use crate::request::{ParamValue, PreparedRequest};
use crate::tensor::{DataType, Tensor, TensorData};
pub use table::{Refusal, SequenceId, SequenceTable};

/// A request's place in its sequence, from its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceParams {
    /// The correlation id.
    pub id: SequenceId,
    /// First request of the sequence.
    pub start: bool,
    /// Last request of the sequence.
    pub end: bool,
}

fn flag(params: &BTreeMap<String, ParamValue>, key: &str) -> Result<bool> {
    match params.get(key) {
        None => Ok(false),
        Some(ParamValue::Bool(b)) => Ok(*b),
        Some(ParamValue::Int(i @ (0 | 1))) => Ok(*i == 1),
        Some(other) => Err(Error::invalid(format!(
            "parameter '{key}' must be true or false, got {other:?}"
        ))),
    }
}

/// Reads `sequence_id`, `sequence_start` and `sequence_end` (Triton's parameter names); `None`
/// when the request names no sequence (no id, id 0, or an empty string).
pub fn params(params: &BTreeMap<String, ParamValue>) -> Result<Option<SequenceParams>> {
    let id = match params.get("sequence_id") {
        None | Some(ParamValue::Int(0)) => None,
        Some(ParamValue::Int(i)) if *i > 0 => Some(SequenceId::Int(*i as u64)),
        Some(ParamValue::String(s)) if s.is_empty() => None,
        Some(ParamValue::String(s)) => Some(SequenceId::Str(s.clone())),
        Some(other) => {
            return Err(Error::invalid(format!(
                "parameter 'sequence_id' must be a positive integer or a string, got {other:?}"
            )));
        }
    };
    let (start, end) = (
        flag(params, "sequence_start")?,
        flag(params, "sequence_end")?,
    );
    match id {
        Some(id) => Ok(Some(SequenceParams { id, start, end })),
        None if start || end => Err(Error::invalid(
            "parameters 'sequence_start'/'sequence_end' need a non-zero 'sequence_id'",
        )),
        None => Ok(None),
    }
}

/// The sequences of one model version and what its model takes besides the client's inputs.
pub struct Sequences {
    model: String,
    cfg: SequenceBatching,
    batching: bool,
    /// Rank of each control input as the model declares it (batch dimension included).
    control_rank: Vec<usize>,
    /// Each state's first value (no batch dimension).
    initial: Vec<Tensor>,
    table: Mutex<SequenceTable<Vec<Tensor>>>,
    turn: tokio::sync::Notify,
}

/// One request's claim on its sequence; [`Claim::finish`] stores the new state. Dropped
/// unfinished (the request failed or its caller went away), it gives the sequence back with
/// the state it had (or, for a start, releases it), so a cancelled request never leaves a
/// sequence busy.
pub struct Claim<'a> {
    seqs: &'a Sequences,
    params: SequenceParams,
    state: Option<Vec<Tensor>>,
}

impl Claim<'_> {
    /// The sequence's place.
    pub fn params(&self) -> &SequenceParams {
        &self.params
    }

    /// Adds the control and state tensors to the request (see [`Sequences::add_inputs`]).
    pub fn add_inputs(&self, req: &mut PreparedRequest) -> Result<()> {
        self.seqs.add_inputs(self, req)
    }

    /// The request ran: takes the state outputs out of `outputs` and keeps them for the
    /// sequence's next request (an end releases the sequence).
    pub fn finish(mut self, outputs: &mut Vec<NamedTensor>) -> Result<()> {
        let seqs = self.seqs;
        let mut next = Vec::with_capacity(seqs.cfg.state.len());
        for s in &seqs.cfg.state {
            let Some(pos) = outputs.iter().position(|o| o.name == s.output_name) else {
                return Err(Error::Internal(format!(
                    "model '{}' gave no state output '{}'",
                    seqs.model, s.output_name
                )));
            };
            let t = outputs.remove(pos).tensor;
            let t = if seqs.batching && t.shape().first() == Some(&1) {
                let shape = t.shape()[1..].to_vec();
                crate::request::with_shape(t, shape)?
            } else {
                t
            };
            next.push(t);
        }
        self.state = None;
        seqs.give_back(&self.params.id, next, self.params.end);
        Ok(())
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        // A failed start leaves no sequence behind (there is no state to go on from); a
        // later request that fails keeps the state the sequence had.
        if let Some(state) = self.state.take() {
            self.seqs
                .give_back(&self.params.id, state, self.params.start);
        }
    }
}

fn scalar(dtype: DataType, v: u64, f: f32, b: bool) -> Bytes {
    match dtype {
        DataType::Bool => Bytes::from(vec![u8::from(b)]),
        DataType::I32 | DataType::U32 => Bytes::copy_from_slice(&(v as u32).to_le_bytes()),
        DataType::F32 => Bytes::copy_from_slice(&f.to_le_bytes()),
        _ => Bytes::copy_from_slice(&v.to_le_bytes()),
    }
}

fn zeros(dtype: DataType, shape: Vec<usize>) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data = match dtype.size() {
        Some(size) => TensorData::Raw(Bytes::from(vec![0u8; n * size])),
        None => TensorData::Bytes(vec![Bytes::new(); n]),
    };
    Tensor::new(dtype, shape, data).map_err(|e| Error::Internal(e.to_string()))
}

impl Sequences {
    /// The sequences of a version whose config has `sequence_batching`; `dir` is the model's
    /// folder (for `initial_state.data_file`); `limit`: live sequences allowed unless the config's
    /// `oldest.max_candidate_sequences` sets it.
    pub fn new(
        model: &str,
        config: &ModelConfig,
        signature: &ModelSignature,
        dir: &Path,
        limit: usize,
    ) -> Result<Option<Self>> {
        let Some(cfg) = config.sequence_batching.clone() else {
            return Ok(None);
        };
        let batching = config.batches();
        let rank_of = |name: &str| {
            signature
                .inputs
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.shape.as_ref())
                .map(|s| s.len())
        };
        for name in cfg.server_inputs() {
            if !signature.inputs.is_empty() && !signature.inputs.iter().any(|s| s.name == name) {
                return Err(Error::invalid(format!(
                    "field 'sequence_batching': input '{name}' is not in the model; its inputs are: {}",
                    signature
                        .inputs
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let control_rank = cfg
            .control_input
            .iter()
            .map(|c| rank_of(&c.name).unwrap_or(1 + usize::from(batching)))
            .collect();
        let mut initial = Vec::new();
        for s in &cfg.state {
            let t = match s.initial_state.first() {
                Some(init) if !init.data_file.is_empty() => {
                    let path = dir.join("initial_state").join(&init.data_file);
                    let raw = std::fs::read(&path).map_err(|e| {
                        Error::invalid(format!(
                            "field 'sequence_batching.state': initial state '{}' cannot be read from {}: {e}",
                            init.name,
                            path.display()
                        ))
                    })?;
                    let shape = init.dims.iter().map(|&d| d as usize).collect();
                    Tensor::new(s.data_type.0, shape, TensorData::Raw(raw.into())).map_err(|e| {
                        Error::invalid(format!(
                            "field 'sequence_batching.state': initial state '{}' from {}: {e}",
                            init.name,
                            path.display()
                        ))
                    })?
                }
                Some(init) => zeros(
                    s.data_type.0,
                    init.dims.iter().map(|&d| d as usize).collect(),
                )?,
                None => zeros(s.data_type.0, s.dims.iter().map(|&d| d as usize).collect())?,
            };
            initial.push(t);
        }
        let limit = cfg
            .oldest
            .as_ref()
            .map(|o| o.max_candidate_sequences as usize)
            .filter(|&n| n > 0)
            .unwrap_or(limit);
        let table = SequenceTable::new(limit, cfg.idle());
        Ok(Some(Sequences {
            model: model.to_string(),
            cfg,
            batching,
            control_rank,
            initial,
            table: Mutex::new(table),
            turn: tokio::sync::Notify::new(),
        }))
    }

    /// Sequences live now (after releasing idle ones).
    pub fn live(&self) -> usize {
        self.table.lock().map_or(0, |mut t| {
            t.expire(Instant::now());
            t.live()
        })
    }

    fn give_back(&self, id: &SequenceId, state: Vec<Tensor>, end: bool) {
        if let Ok(mut t) = self.table.lock() {
            t.finish(id, Some(state), end, Instant::now());
        }
        self.turn.notify_waiters();
    }

    fn try_begin(&self, p: &SequenceParams) -> std::result::Result<Claim<'_>, Refusal> {
        let mut t = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let begun = t.begin(&p.id, p.start, Instant::now())?;
        Ok(Claim {
            seqs: self,
            params: p.clone(),
            state: Some(begun.state.unwrap_or_else(|| self.initial.clone())),
        })
    }

    fn refused(&self, p: &SequenceParams, r: Refusal) -> Error {
        let (model, id) = (&self.model, &p.id);
        match r {
            Refusal::NotStarted => Error::invalid(format!(
                "sequence {id} of model '{model}' is not live: the first request of a sequence must set sequence_start, and a sequence ends with sequence_end"
            )),
            Refusal::Released => Error::invalid(format!(
                "sequence {id} of model '{model}' was released after {} ms without a request (max_sequence_idle_microseconds); start it again with sequence_start",
                self.cfg.idle().as_millis()
            )),
            Refusal::Full { limit } => Error::Unavailable(format!(
                "model '{model}' already has {limit} live sequences, as many as it allows; end one (sequence_end) or retry when one is released"
            )),
            Refusal::Busy => Error::Unavailable(format!(
                "a request of sequence {id} of model '{model}' is still running; send a sequence's requests one after another"
            )),
        }
    }

    /// Claims the sequence for a request, waiting while an earlier request of it runs.
    pub async fn begin(&self, p: &SequenceParams) -> Result<Claim<'_>> {
        loop {
            let turn = self.turn.notified();
            tokio::pin!(turn);
            turn.as_mut().enable();
            match self.try_begin(p) {
                Ok(c) => return Ok(c),
                Err(Refusal::Busy) => turn.await,
                Err(r) => return Err(self.refused(p, r)),
            }
        }
    }

    /// [`Sequences::begin`] for a caller on a plain thread: a sequence that is busy is refused.
    pub fn begin_now(&self, p: &SequenceParams) -> Result<Claim<'_>> {
        self.try_begin(p).map_err(|r| self.refused(p, r))
    }

    /// Adds the control tensors and the state to a request of the claimed sequence, and asks for
    /// the state outputs.
    fn add_inputs(&self, claim: &Claim, req: &mut PreparedRequest) -> Result<()> {
        if self.batching && req.batch != 1 {
            return Err(Error::invalid(format!(
                "a request of a sequence carries one item (batch size 1); this one has {}",
                req.batch
            )));
        }
        let p = &claim.params;
        for (c, &rank) in self.cfg.control_input.iter().zip(&self.control_rank) {
            let Some(control) = c.control.first() else {
                continue;
            };
            let dtype = control.dtype();
            let shape = vec![1; rank];
            let on = match control.kind {
                ControlKind::Start => p.start,
                ControlKind::End => p.end,
                ControlKind::Ready => true,
                ControlKind::Corrid => false,
            };
            let data = match (control.kind, &p.id) {
                (ControlKind::Corrid, SequenceId::Str(s)) if dtype == DataType::Bytes => {
                    TensorData::Bytes(vec![Bytes::from(s.clone())])
                }
                (ControlKind::Corrid, SequenceId::Int(i)) if dtype == DataType::Bytes => {
                    TensorData::Bytes(vec![Bytes::from(i.to_string())])
                }
                (ControlKind::Corrid, SequenceId::Int(i)) => {
                    let fits = match dtype {
                        DataType::U32 => u32::try_from(*i).is_ok(),
                        DataType::I32 => i32::try_from(*i).is_ok(),
                        DataType::I64 => i64::try_from(*i).is_ok(),
                        _ => true,
                    };
                    if !fits {
                        return Err(Error::invalid(format!(
                            "sequence {} does not fit model '{}''s {} correlation id",
                            p.id,
                            self.model,
                            dtype.config_name()
                        )));
                    }
                    TensorData::Raw(scalar(dtype, *i, *i as f32, *i != 0))
                }
                (ControlKind::Corrid, SequenceId::Str(_)) => {
                    return Err(Error::invalid(format!(
                        "model '{}' takes numeric correlation ids ({}); sequence {} is a string",
                        self.model,
                        dtype.config_name(),
                        p.id
                    )));
                }
                (_, _) => TensorData::Raw(match control.false_true {
                    Some(FalseTrue::Int32(v)) => scalar(dtype, v[usize::from(on)] as u64, 0.0, on),
                    Some(FalseTrue::Fp32(v)) => scalar(dtype, 0, v[usize::from(on)], on),
                    Some(FalseTrue::Bool(v)) => scalar(dtype, 0, 0.0, v[usize::from(on)]),
                    None => scalar(dtype, u64::from(on), f32::from(u8::from(on)), on),
                }),
            };
            let tensor =
                Tensor::new(dtype, shape, data).map_err(|e| Error::Internal(e.to_string()))?;
            req.inputs.push(NamedTensor {
                name: c.name.clone(),
                tensor,
            });
        }
        for (s, t) in self.cfg.state.iter().zip(claim.state.iter().flatten()) {
            let mut tensor = t.clone();
            if self.batching {
                let mut shape = vec![1];
                shape.extend_from_slice(tensor.shape());
                tensor = crate::request::with_shape(tensor, shape)?;
            }
            req.inputs.push(NamedTensor {
                name: s.input_name.clone(),
                tensor,
            });
            if !req.outputs.contains(&s.output_name) {
                req.outputs.push(s.output_name.clone());
            }
        }
        // Batch only with requests given the same tensors (the state's shape may vary).
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        req.shape_key.hash(&mut h);
        for nt in &req.inputs {
            nt.name.hash(&mut h);
            let skip = usize::from(self.batching).min(nt.tensor.shape().len());
            nt.tensor.shape()[skip..].hash(&mut h);
        }
        req.outputs.hash(&mut h);
        req.shape_key = h.finish();
        Ok(())
    }

    /// Whether `name` is an output that only carries state.
    pub fn is_state_output(&self, name: &str) -> bool {
        self.cfg.state.iter().any(|s| s.output_name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, ParamValue)]) -> BTreeMap<String, ParamValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn params_read_integer_and_string_ids_and_flags() {
        let got = params(&p(&[
            ("sequence_id", ParamValue::Int(7)),
            ("sequence_start", ParamValue::Bool(true)),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(got.id, SequenceId::Int(7));
        assert!(got.start && !got.end);
        let got = params(&p(&[
            ("sequence_id", ParamValue::String("abc".into())),
            ("sequence_end", ParamValue::Bool(true)),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(got.id, SequenceId::Str("abc".into()));
        assert!(got.end && !got.start);
        assert_eq!(
            params(&p(&[("sequence_id", ParamValue::Int(0))])).unwrap(),
            None
        );
    }

    #[test]
    fn params_refuse_flags_without_an_id_and_odd_values() {
        let e = params(&p(&[("sequence_start", ParamValue::Bool(true))])).unwrap_err();
        assert!(e.to_string().contains("sequence_id"), "{e}");
        let e = params(&p(&[("sequence_id", ParamValue::Double(1.5))])).unwrap_err();
        assert!(
            e.to_string().contains("positive integer or a string"),
            "{e}"
        );
        let e = params(&p(&[
            ("sequence_id", ParamValue::Int(1)),
            ("sequence_end", ParamValue::String("yes".into())),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("sequence_end"), "{e}");
    }
}
