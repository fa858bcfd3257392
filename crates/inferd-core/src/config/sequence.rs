//! Triton's `sequence_batching` message: the typed settings of a stateful model, and their reading
//! from `config.pbtxt` with the same diagnostics as the rest of the config.

use serde::{Deserialize, Serialize};

use super::fields::{At, Cx, Fields, plain_relative, require_message};
use super::model::ConfigDataType;
use super::pbtxt::{Scalar, Value};
use super::read::limits;
use crate::tensor::DataType;

/// Elements one sequence's state may hold (it is kept per live sequence).
pub const MAX_STATE_ELEMENTS: i64 = 1 << 24;

/// Triton's default `max_sequence_idle_microseconds` (one second).
pub const DEFAULT_SEQUENCE_IDLE_MICROSECONDS: u64 = 1_000_000;

/// Triton's `ModelSequenceBatching`.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SequenceBatching {
    /// How requests of different sequences are batched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct: Option<StrategyDirect>,
    /// The oldest-first strategy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest: Option<StrategyOldest>,
    /// A sequence with no request for this long is released (0: Triton's default of 1 s).
    pub max_sequence_idle_microseconds: u64,
    /// Tensors the server fills in for each request (start, end, ready, correlation id).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub control_input: Vec<ControlInput>,
    /// Implicit state the server keeps between the requests of a sequence.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub state: Vec<SequenceState>,
}

impl SequenceBatching {
    /// How long a sequence may be idle before it is released.
    pub fn idle(&self) -> std::time::Duration {
        let us = match self.max_sequence_idle_microseconds {
            0 => DEFAULT_SEQUENCE_IDLE_MICROSECONDS,
            us => us,
        };
        std::time::Duration::from_micros(us)
    }

    /// How long the batcher may hold a request for others to join it.
    pub fn max_queue_delay_microseconds(&self) -> u64 {
        match (&self.direct, &self.oldest) {
            (_, Some(o)) => o.max_queue_delay_microseconds,
            (Some(d), None) => d.max_queue_delay_microseconds,
            (None, None) => 0,
        }
    }

    /// The batching the version's batcher applies: requests of different sequences batch as a
    /// dynamic batcher would with the strategy's delay and preferred sizes.
    pub fn as_dynamic(&self) -> super::model::DynamicBatching {
        super::model::DynamicBatching {
            preferred_batch_size: self
                .oldest
                .as_ref()
                .map(|o| o.preferred_batch_size.clone())
                .unwrap_or_default(),
            max_queue_delay_microseconds: self.max_queue_delay_microseconds(),
            preserve_ordering: self.oldest.as_ref().is_some_and(|o| o.preserve_ordering),
            ..Default::default()
        }
    }

    /// Names of the inputs the server supplies (control tensors and state inputs).
    pub fn server_inputs(&self) -> impl Iterator<Item = &str> {
        self.control_input
            .iter()
            .map(|c| c.name.as_str())
            .chain(self.state.iter().map(|s| s.input_name.as_str()))
    }
}

/// Triton's `StrategyDirect`.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StrategyDirect {
    /// How long a batch may wait for more sequences' requests.
    pub max_queue_delay_microseconds: u64,
    /// Read for compatibility; inferd forms batches by delay alone.
    pub minimum_slot_utilization: f32,
}

/// Triton's `StrategyOldest`.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StrategyOldest {
    /// Sequences that may be live at once for this model (0: the server's limit).
    pub max_candidate_sequences: u32,
    /// Batch sizes the batcher prefers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preferred_batch_size: Vec<u32>,
    /// How long a batch may wait for more sequences' requests.
    pub max_queue_delay_microseconds: u64,
    /// Responses leave in request order.
    pub preserve_ordering: bool,
}

/// What a control tensor signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlKind {
    /// True on the first request of a sequence.
    #[serde(rename = "CONTROL_SEQUENCE_START")]
    Start,
    /// True when the slot holds a request (always, as inferd batches only real requests).
    #[serde(rename = "CONTROL_SEQUENCE_READY")]
    Ready,
    /// True on the last request of a sequence.
    #[serde(rename = "CONTROL_SEQUENCE_END")]
    End,
    /// The sequence's correlation id.
    #[serde(rename = "CONTROL_SEQUENCE_CORRID")]
    Corrid,
}

/// The values a boolean control takes, as its false and true.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FalseTrue {
    /// `int32_false_true`.
    #[serde(rename = "int32_false_true")]
    Int32([i32; 2]),
    /// `fp32_false_true`.
    #[serde(rename = "fp32_false_true")]
    Fp32([f32; 2]),
    /// `bool_false_true`.
    #[serde(rename = "bool_false_true")]
    Bool([bool; 2]),
}

/// Triton's `Control`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Control {
    /// What it signals.
    pub kind: ControlKind,
    /// Its false and true values (start, ready, end).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub false_true: Option<FalseTrue>,
    /// Datatype of the correlation id tensor (CORRID).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_type: Option<ConfigDataType>,
}

impl Control {
    /// The datatype of this control's tensor.
    pub fn dtype(&self) -> DataType {
        match (&self.false_true, &self.data_type) {
            (Some(FalseTrue::Int32(_)), _) => DataType::I32,
            (Some(FalseTrue::Fp32(_)), _) => DataType::F32,
            (Some(FalseTrue::Bool(_)), _) => DataType::Bool,
            (None, Some(d)) => d.0,
            (None, None) => DataType::U64,
        }
    }
}

/// Triton's `ControlInput`: one input tensor and what it signals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlInput {
    /// The model input's name.
    pub name: String,
    /// What it signals (Triton allows one control per input).
    pub control: Vec<Control>,
}

/// Triton's `State`: a model input fed from the model output of the previous request.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SequenceState {
    /// The model input that receives the state.
    pub input_name: String,
    /// The model output that gives the next state.
    pub output_name: String,
    /// Datatype of the state.
    pub data_type: ConfigDataType,
    /// Shape of the state (without a batch dimension).
    pub dims: Vec<i64>,
    /// The state of a sequence's first request (zeros when absent).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub initial_state: Vec<InitialState>,
}

/// Triton's `InitialState`.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct InitialState {
    /// Datatype.
    pub data_type: ConfigDataType,
    /// Shape.
    pub dims: Vec<i64>,
    /// All zeros.
    pub zero_data: bool,
    /// Raw little-endian contents, a file in the model's folder.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub data_file: String,
    /// Name, for messages.
    pub name: String,
}

fn repeated<T>(
    cx: &mut Cx,
    r: &mut Fields,
    name: &str,
    parse: impl Fn(&Scalar) -> Option<T>,
) -> Vec<T> {
    let path = r.path(name);
    r.take(name)
        .into_iter()
        .filter_map(|f| match &f.value {
            Value::Scalar(s) => {
                let v = parse(s);
                if v.is_none() {
                    cx.error(f.value_pos, &path, format!("'{s}' is not a valid value"));
                }
                v
            }
            Value::Message(_) => {
                cx.error(f.value_pos, &path, "expected a value, found a message");
                None
            }
        })
        .collect()
}

fn pair<T: Copy>(cx: &mut Cx, r: &Fields, name: &str, v: Vec<T>) -> Option<[T; 2]> {
    match v.as_slice() {
        [] => None,
        [f, t] => Some([*f, *t]),
        _ => {
            cx.error(
                Default::default(),
                &r.path(name),
                format!("needs exactly two values (false, true), found {}", v.len()),
            );
            None
        }
    }
}

fn control(cx: &mut Cx, at: At) -> Option<Control> {
    let mut r = require_message(cx, &at)?;
    let kind = match r.ident(cx, "kind") {
        Some((k, pos)) => match k.as_str() {
            "CONTROL_SEQUENCE_START" => ControlKind::Start,
            "CONTROL_SEQUENCE_READY" => ControlKind::Ready,
            "CONTROL_SEQUENCE_END" => ControlKind::End,
            "CONTROL_SEQUENCE_CORRID" => ControlKind::Corrid,
            other => {
                cx.error(pos, &r.path("kind"), format!("unknown control kind '{other}' (expected CONTROL_SEQUENCE_START, _READY, _END or _CORRID)"));
                return None;
            }
        },
        // Triton's default kind is CONTROL_SEQUENCE_START (the enum's zero).
        None => ControlKind::Start,
    };
    let ints = repeated(cx, &mut r, "int32_false_true", |s| match s {
        Scalar::Number(n) => n.parse::<i32>().ok(),
        _ => None,
    });
    let floats = repeated(cx, &mut r, "fp32_false_true", |s| match s {
        Scalar::Number(n) => n.parse::<f32>().ok(),
        _ => None,
    });
    let bools = repeated(cx, &mut r, "bool_false_true", |s| match s {
        Scalar::Ident(i) if i == "true" => Some(true),
        Scalar::Ident(i) if i == "false" => Some(false),
        _ => None,
    });
    let choices = [
        pair(cx, &r, "int32_false_true", ints).map(FalseTrue::Int32),
        pair(cx, &r, "fp32_false_true", floats).map(FalseTrue::Fp32),
        pair(cx, &r, "bool_false_true", bools).map(FalseTrue::Bool),
    ];
    let mut set = choices.into_iter().flatten();
    let false_true = set.next();
    if set.next().is_some() {
        cx.error(
            at.field.pos,
            &at.path,
            "set only one of int32_false_true, fp32_false_true, bool_false_true",
        );
    }
    let data_type = r.data_type(cx, "data_type").map(ConfigDataType);
    r.finish(cx);
    match (kind, &false_true, data_type) {
        (ControlKind::Corrid, None, Some(d)) => {
            let ok = [
                DataType::U64,
                DataType::I64,
                DataType::U32,
                DataType::I32,
                DataType::Bytes,
            ];
            if !ok.contains(&d.0) {
                cx.error(at.field.pos, &at.path, format!("a CONTROL_SEQUENCE_CORRID tensor must be TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 or TYPE_STRING, not {}", d.0.config_name()));
            }
        }
        (ControlKind::Corrid, _, _) => cx.error(
            at.field.pos,
            &at.path,
            "a CONTROL_SEQUENCE_CORRID control needs data_type and no false/true values",
        ),
        (_, None, _) => cx.error(
            at.field.pos,
            &at.path,
            "a start, ready or end control needs its false and true values (int32_false_true, fp32_false_true or bool_false_true)",
        ),
        _ => {}
    }
    Some(Control {
        kind,
        false_true,
        data_type,
    })
}

fn state(cx: &mut Cx, at: At) -> Option<SequenceState> {
    let mut r = require_message(cx, &at)?;
    let mut s = SequenceState {
        input_name: r.string(cx, "input_name").unwrap_or_default(),
        output_name: r.string(cx, "output_name").unwrap_or_default(),
        data_type: ConfigDataType(r.data_type(cx, "data_type").unwrap_or(DataType::F32)),
        dims: r.ints(cx, "dims", -1, i64::MAX),
        initial_state: Vec::new(),
    };
    for at in r.messages("initial_state") {
        let Some(mut i) = require_message(cx, &at) else {
            continue;
        };
        let init = InitialState {
            data_type: ConfigDataType(i.data_type(cx, "data_type").unwrap_or(s.data_type.0)),
            dims: i.ints(cx, "dims", 0, i64::MAX),
            zero_data: i.bool(cx, "zero_data").unwrap_or(false),
            data_file: i.string(cx, "data_file").unwrap_or_default(),
            name: i.string(cx, "name").unwrap_or_default(),
        };
        i.finish(cx);
        if !init.data_file.is_empty() && !plain_relative(&init.data_file) {
            cx.error(
                at.field.pos,
                &at.path,
                format!(
                    "data_file '{}' must be a file name inside the version's initial_state folder (no '..', no absolute path)",
                    init.data_file
                ),
            );
        }
        if init
            .dims
            .iter()
            .try_fold(1i64, |a, &d| a.checked_mul(d))
            .is_none_or(|n| n > MAX_STATE_ELEMENTS)
        {
            cx.error(
                at.field.pos,
                &at.path,
                format!("initial_state dims hold more than {MAX_STATE_ELEMENTS} elements"),
            );
        }
        if init.zero_data != init.data_file.is_empty() {
            cx.error(
                at.field.pos,
                &at.path,
                "set exactly one of zero_data: true and data_file",
            );
        }
        if init.data_type != s.data_type {
            cx.error(at.field.pos, &at.path, "data_type differs from the state's");
        }
        s.initial_state.push(init);
    }
    if s.initial_state.len() > 1 {
        cx.error(at.field.pos, &at.path, "at most one initial_state");
    }
    r.unsupported(
        cx,
        &["use_same_buffer_for_input_output", "use_growable_memory"],
    );
    r.finish(cx);
    if s.input_name.is_empty() || s.output_name.is_empty() {
        cx.error(
            at.field.pos,
            &at.path,
            "state needs input_name and output_name",
        );
    }
    let fixed = s.dims.iter().filter(|&&d| d >= 0);
    if fixed
        .copied()
        .try_fold(1i64, |a, d| a.checked_mul(d))
        .is_none_or(|n| n > MAX_STATE_ELEMENTS)
    {
        cx.error(
            at.field.pos,
            &at.path,
            format!("state dims hold more than {MAX_STATE_ELEMENTS} elements"),
        );
    }
    if s.initial_state.is_empty() && s.dims.iter().any(|&d| d < 0) {
        cx.error(
            at.field.pos,
            &at.path,
            "a state with variable dims needs an initial_state that fixes them",
        );
    }
    Some(s)
}

/// Reads `sequence_batching { ... }`.
pub(super) fn read(cx: &mut Cx, mut r: Fields) -> SequenceBatching {
    let mut sb = SequenceBatching {
        max_sequence_idle_microseconds: r
            .int(
                cx,
                "max_sequence_idle_microseconds",
                0,
                limits::MICROSECONDS,
            )
            .unwrap_or(0) as u64,
        ..Default::default()
    };
    if let Some(mut d) = r.message(cx, "direct") {
        let delay = d.int(cx, "max_queue_delay_microseconds", 0, limits::MICROSECONDS);
        let util = d.take("minimum_slot_utilization");
        d.finish(cx);
        sb.direct = Some(StrategyDirect {
            max_queue_delay_microseconds: delay.unwrap_or(0) as u64,
            minimum_slot_utilization: util
                .last()
                .and_then(|f| match &f.value {
                    Value::Scalar(Scalar::Number(n)) => n.parse().ok(),
                    _ => None,
                })
                .unwrap_or(0.0),
        });
    }
    if let Some(mut o) = r.message(cx, "oldest") {
        sb.oldest = Some(StrategyOldest {
            max_candidate_sequences: o
                .int(cx, "max_candidate_sequences", 0, limits::QUEUE_SIZE)
                .unwrap_or(0) as u32,
            preferred_batch_size: o
                .ints(cx, "preferred_batch_size", 1, limits::MAX_BATCH_SIZE)
                .into_iter()
                .map(|v| v as u32)
                .collect(),
            max_queue_delay_microseconds: o
                .int(cx, "max_queue_delay_microseconds", 0, limits::MICROSECONDS)
                .unwrap_or(0) as u64,
            preserve_ordering: o.bool(cx, "preserve_ordering").unwrap_or(false),
        });
        o.finish(cx);
    }
    if sb.direct.is_some() && sb.oldest.is_some() {
        cx.error(
            Default::default(),
            &r.prefix,
            "set only one of direct and oldest",
        );
    }
    for at in r.messages("control_input") {
        let Some(mut c) = require_message(cx, &at) else {
            continue;
        };
        let name = c.string(cx, "name").unwrap_or_default();
        let controls: Vec<Control> = c
            .messages("control")
            .into_iter()
            .filter_map(|a| control(cx, a))
            .collect();
        c.finish(cx);
        if name.is_empty() {
            cx.error(at.field.pos, &at.path, "control input has no name");
        }
        if controls.len() != 1 {
            cx.error(
                at.field.pos,
                &at.path,
                format!(
                    "a control input carries exactly one control, found {}",
                    controls.len()
                ),
            );
        }
        sb.control_input.push(ControlInput {
            name,
            control: controls,
        });
    }
    sb.state = r
        .messages("state")
        .into_iter()
        .filter_map(|a| state(cx, a))
        .collect();
    r.unsupported(cx, &["iterative_sequence"]);
    let mut names = std::collections::BTreeSet::new();
    for n in sb.server_inputs() {
        if !names.insert(n.to_string()) {
            cx.error(
                Default::default(),
                &r.prefix,
                format!("input '{n}' is named by more than one control or state"),
            );
        }
    }
    r.finish(cx);
    sb
}
