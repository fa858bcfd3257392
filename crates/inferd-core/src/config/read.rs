//! Maps a parsed `config.pbtxt` tree onto [`ModelConfig`], reporting every problem with the file,
//! line, field path and reason. Nothing is ignored silently:
//! - an unknown field (a typo) is an error, with its position;
//! - a Triton field whose semantics inferd does not implement (sequence batching, decoupled
//!   transactions, batch inputs/outputs, the response cache) is an error: serving the model
//!   without it would answer differently from what the config asks;
//! - a Triton field that only tunes performance or describes deployment is a warning;
//! - every number that sizes memory or time is bounded, so a huge value is an error, never an
//!   abort of the server.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::model::*;
use super::pbtxt::{self, Field, Message, Pos, Scalar, Value};
use crate::tensor::DataType;

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The config cannot be used.
    Error,
    /// The config loads, but something in it is not honoured.
    Warning,
}

/// A problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file.
    pub file: PathBuf,
    /// Where, when known.
    pub pos: Option<Pos>,
    /// Field path (`input[1].dims`), empty for the whole file.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = self.pos {
            write!(f, ":{p}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": field '{}'", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A config that parsed, with what the file left unset (auto-complete fills it) and its
/// warnings.
#[derive(Clone, Debug)]
pub struct ParsedConfig {
    /// The typed config.
    pub config: ModelConfig,
    /// Whether `max_batch_size` was written in the file.
    pub max_batch_size_set: bool,
    /// Warnings (unknown or unsupported fields).
    pub warnings: Vec<Diagnostic>,
}

/// Triton fields that only tune performance or describe deployment: loading without them
/// serves the same answers, so they are warnings.
const IGNORED_TOP_LEVEL: &[&str] = &[
    "model_operations",
    "model_repository_agents",
    "cc_model_filenames",
    "metric_tags",
    "model_metrics",
    "runtime",
];

/// Triton fields whose semantics inferd does not implement: a model asking for them is not
/// loaded, with what the field means.
const REFUSED_TOP_LEVEL: &[(&str, &str)] = &[
    (
        "sequence_batching",
        "stateful sequences (correlation ids, sequence start/end, implicit state)",
    ),
    (
        "batch_input",
        "inputs the batcher synthesises (element counts, accumulated sizes)",
    ),
    (
        "batch_output",
        "outputs split by the batcher as batch_input describes",
    ),
];

/// Upper bounds of config numbers that size memory or time.
pub mod limits {
    /// `max_batch_size` (and every preferred batch size).
    pub const MAX_BATCH_SIZE: i64 = 1 << 20;
    /// `priority_levels`: one queue each.
    pub const PRIORITY_LEVELS: i64 = 256;
    /// A queue policy's `max_queue_size`, in requests.
    pub const QUEUE_SIZE: i64 = 1 << 20;
    /// Microseconds of queue delay or timeout: one day.
    pub const MICROSECONDS: i64 = 86_400_000_000;
    /// `instance_group.count`.
    pub const INSTANCES: i64 = 1024;
    /// `model_warmup.count`.
    pub const WARMUP_COUNT: i64 = 1000;
}

/// Parses `config.pbtxt` text. `file` is used only in messages.
pub fn parse_config(text: &str, file: &Path) -> Result<ParsedConfig, Vec<Diagnostic>> {
    let mut cx = Cx {
        file: file.to_path_buf(),
        diags: Vec::new(),
    };
    let msg = match pbtxt::parse(text) {
        Ok(m) => m,
        Err(e) => {
            return Err(vec![Diagnostic {
                severity: Severity::Error,
                file: file.to_path_buf(),
                pos: Some(e.pos),
                field: String::new(),
                message: format!("syntax error: {}", e.message),
            }]);
        }
    };
    let mut r = Fields::new(&msg, "");
    let mut cfg = ModelConfig {
        name: r.string(&mut cx, "name").unwrap_or_default(),
        platform: r.string(&mut cx, "platform").unwrap_or_default(),
        backend: r.string(&mut cx, "backend").unwrap_or_default(),
        default_model_filename: r
            .string(&mut cx, "default_model_filename")
            .unwrap_or_default(),
        ..Default::default()
    };
    let mbs = r.int(&mut cx, "max_batch_size", 0, limits::MAX_BATCH_SIZE);
    let max_batch_size_set = mbs.is_some();
    cfg.max_batch_size = mbs.unwrap_or(0) as u32;
    if let Some(vp) = r.message(&mut cx, "version_policy") {
        cfg.version_policy = version_policy(&mut cx, vp);
    }
    cfg.input = r
        .messages("input")
        .into_iter()
        .map(|f| model_input(&mut cx, f))
        .collect();
    cfg.output = r
        .messages("output")
        .into_iter()
        .map(|f| model_output(&mut cx, f))
        .collect();
    cfg.instance_group = r
        .messages("instance_group")
        .into_iter()
        .map(|f| instance_group(&mut cx, f))
        .collect();
    if let Some(db) = r.message(&mut cx, "dynamic_batching") {
        cfg.dynamic_batching = Some(dynamic_batching(&mut cx, db));
    }
    cfg.model_warmup = r
        .messages("model_warmup")
        .into_iter()
        .map(|f| model_warmup(&mut cx, f))
        .collect();
    if let Some(es) = r.message(&mut cx, "ensemble_scheduling") {
        cfg.ensemble_scheduling = Some(ensemble(&mut cx, es));
    }
    for p in r.messages("parameters") {
        let (k, v) = map_entry(&mut cx, p, |cx, f| {
            let mut vr = require_message(cx, f)?;
            let s = vr.string(cx, "string_value").unwrap_or_default();
            vr.finish(cx);
            Some(ModelParameter { string_value: s })
        });
        if let (Some(k), Some(v)) = (k, v) {
            cfg.parameters.insert(k, v);
        }
    }
    if let Some(o) = r.message(&mut cx, "optimization") {
        cfg.optimization = Some(optimization(&mut cx, o));
    }
    for (name, what) in REFUSED_TOP_LEVEL {
        r.refuse(&mut cx, name, what);
    }
    if let Some(mut t) = r.message(&mut cx, "model_transaction_policy") {
        if let Some((true, pos)) = t.bool_at(&mut cx, "decoupled") {
            cx.error(
                pos,
                &t.path("decoupled"),
                "inferd does not implement decoupled models (any number of responses per \
                 request); serving this model would change its behaviour, so it is not loaded",
            );
        }
        t.finish(&mut cx);
    }
    if let Some(mut c) = r.message(&mut cx, "response_cache") {
        if let Some((true, pos)) = c.bool_at(&mut cx, "enable") {
            cx.error(
                pos,
                &c.path("enable"),
                "inferd does not implement the response cache yet; the model is not loaded \
                 (remove the field, or set enable: false)",
            );
        }
        c.finish(&mut cx);
    }
    r.unsupported(&mut cx, IGNORED_TOP_LEVEL);
    r.finish(&mut cx);

    let (errors, warnings): (Vec<_>, Vec<_>) = cx
        .diags
        .into_iter()
        .partition(|d| d.severity == Severity::Error);
    if errors.is_empty() {
        Ok(ParsedConfig {
            config: cfg,
            max_batch_size_set,
            warnings,
        })
    } else {
        Err(errors)
    }
}

struct Cx {
    file: PathBuf,
    diags: Vec<Diagnostic>,
}

impl Cx {
    fn push(&mut self, severity: Severity, pos: Pos, field: &str, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            severity,
            file: self.file.clone(),
            pos: Some(pos),
            field: field.to_string(),
            message: message.into(),
        });
    }
    fn error(&mut self, pos: Pos, field: &str, message: impl Into<String>) {
        self.push(Severity::Error, pos, field, message);
    }
    fn warn(&mut self, pos: Pos, field: &str, message: impl Into<String>) {
        self.push(Severity::Warning, pos, field, message);
    }
}

/// A field occurrence with its full path, for messages.
struct At<'a> {
    field: &'a Field,
    path: String,
}

impl<'a> At<'a> {
    fn sub(&self) -> Option<Fields<'a>> {
        match &self.field.value {
            Value::Message(m) => Some(Fields::new(m, &self.path)),
            Value::Scalar(_) => None,
        }
    }
}

/// The fields of one message, tracking which were consumed.
struct Fields<'a> {
    msg: &'a Message,
    used: Vec<bool>,
    prefix: String,
}

impl<'a> Fields<'a> {
    fn new(msg: &'a Message, prefix: &str) -> Self {
        Fields {
            msg,
            used: vec![false; msg.fields.len()],
            prefix: prefix.to_string(),
        }
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Refuses field `name` when it is set: a Triton feature (`what`) inferd does not
    /// implement, so the model cannot be served as its config asks.
    fn refuse(&mut self, cx: &mut Cx, name: &str, what: &str) {
        for f in self.take(name) {
            cx.error(
                f.pos,
                &self.path(name),
                format!(
                    "inferd does not implement {what}; serving this model without it would \
                     change its behaviour, so it is not loaded"
                ),
            );
        }
    }

    /// Warns about each of these fields that is set: recognised from Triton's schema, only
    /// tuning performance or deployment, not implemented by inferd.
    fn unsupported(&mut self, cx: &mut Cx, names: &[&str]) {
        for name in names {
            for f in self.take(name) {
                cx.warn(
                    f.pos,
                    &self.path(name),
                    "recognised Triton field that only tunes performance or deployment, not \
                     implemented by inferd; ignored",
                );
            }
        }
    }

    fn take(&mut self, name: &str) -> Vec<&'a Field> {
        let mut out = Vec::new();
        for (i, f) in self.msg.fields.iter().enumerate() {
            if f.name == name {
                self.used[i] = true;
                out.push(f);
            }
        }
        out
    }

    /// The last scalar occurrence of a singular field.
    fn scalar(&mut self, cx: &mut Cx, name: &str) -> Option<(&'a Scalar, Pos)> {
        let fields = self.take(name);
        let path = self.path(name);
        if fields.len() > 1 {
            cx.warn(
                fields[1].pos,
                &path,
                "set more than once; the last value wins",
            );
        }
        let f = fields.last()?;
        match &f.value {
            Value::Scalar(s) => Some((s, f.value_pos)),
            Value::Message(_) => {
                cx.error(f.value_pos, &path, "expected a value, found a message");
                None
            }
        }
    }

    fn string(&mut self, cx: &mut Cx, name: &str) -> Option<String> {
        let (s, pos) = self.scalar(cx, name)?;
        match s {
            Scalar::Str(b) => match String::from_utf8(b.clone()) {
                Ok(s) => Some(s),
                Err(_) => {
                    cx.error(pos, &self.path(name), "string is not valid UTF-8");
                    None
                }
            },
            other => {
                cx.error(
                    pos,
                    &self.path(name),
                    format!("expected a quoted string, found {other}"),
                );
                None
            }
        }
    }

    fn int(&mut self, cx: &mut Cx, name: &str, min: i64, max: i64) -> Option<i64> {
        let (s, pos) = self.scalar(cx, name)?;
        let path = self.path(name);
        scalar_int(cx, s, pos, &path, min, max)
    }

    fn ints(&mut self, cx: &mut Cx, name: &str, min: i64, max: i64) -> Vec<i64> {
        let path = self.path(name);
        self.take(name)
            .into_iter()
            .filter_map(|f| match &f.value {
                Value::Scalar(s) => scalar_int(cx, s, f.value_pos, &path, min, max),
                Value::Message(_) => {
                    cx.error(f.value_pos, &path, "expected a number, found a message");
                    None
                }
            })
            .collect()
    }

    fn bool(&mut self, cx: &mut Cx, name: &str) -> Option<bool> {
        self.bool_at(cx, name).map(|(b, _)| b)
    }

    /// A boolean field and where its value is.
    fn bool_at(&mut self, cx: &mut Cx, name: &str) -> Option<(bool, Pos)> {
        let (s, pos) = self.scalar(cx, name)?;
        match s {
            Scalar::Ident(i) if i == "true" || i == "True" || i == "t" => Some((true, pos)),
            Scalar::Ident(i) if i == "false" || i == "False" || i == "f" => Some((false, pos)),
            Scalar::Number(n) if n == "1" => Some((true, pos)),
            Scalar::Number(n) if n == "0" => Some((false, pos)),
            other => {
                cx.error(
                    pos,
                    &self.path(name),
                    format!("expected true or false, found {other}"),
                );
                None
            }
        }
    }

    fn ident(&mut self, cx: &mut Cx, name: &str) -> Option<(String, Pos)> {
        let (s, pos) = self.scalar(cx, name)?;
        match s {
            Scalar::Ident(i) => Some((i.clone(), pos)),
            other => {
                cx.error(
                    pos,
                    &self.path(name),
                    format!("expected an enum name, found {other}"),
                );
                None
            }
        }
    }

    fn message(&mut self, cx: &mut Cx, name: &str) -> Option<Fields<'a>> {
        let fields = self.take(name);
        let path = self.path(name);
        if fields.len() > 1 {
            cx.warn(
                fields[1].pos,
                &path,
                "set more than once; the last value wins",
            );
        }
        let f = fields.last()?;
        match &f.value {
            Value::Message(m) => Some(Fields::new(m, &path)),
            Value::Scalar(s) => {
                cx.error(
                    f.value_pos,
                    &path,
                    format!("expected a message in braces, found {s}"),
                );
                None
            }
        }
    }

    fn messages(&mut self, name: &str) -> Vec<At<'a>> {
        let path = self.path(name);
        self.take(name)
            .into_iter()
            .enumerate()
            .map(|(i, field)| At {
                field,
                path: format!("{path}[{i}]"),
            })
            .collect()
    }

    fn data_type(&mut self, cx: &mut Cx, name: &str) -> Option<DataType> {
        let (id, pos) = self.ident(cx, name)?;
        match DataType::from_config_name(&id) {
            Some(d) => Some(d),
            None => {
                let known: Vec<&str> = DataType::ALL.iter().map(|d| d.config_name()).collect();
                cx.error(
                    pos,
                    &self.path(name),
                    format!(
                        "unknown data type '{id}' (expected one of {})",
                        known.join(", ")
                    ),
                );
                None
            }
        }
    }

    /// Refuses every field nobody consumed: not in Triton's schema (a typo?).
    fn finish(self, cx: &mut Cx) {
        for (i, f) in self.msg.fields.iter().enumerate() {
            if !self.used[i] {
                cx.error(
                    f.pos,
                    &self.path(&f.name),
                    "unknown field (not in Triton's model configuration schema; a typo?)",
                );
            }
        }
    }
}

fn scalar_int(cx: &mut Cx, s: &Scalar, pos: Pos, path: &str, min: i64, max: i64) -> Option<i64> {
    let Scalar::Number(text) = s else {
        cx.error(pos, path, format!("expected an integer, found {s}"));
        return None;
    };
    let parsed = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        i64::from_str_radix(hex, 16).ok()
    } else {
        text.trim_start_matches('+').parse::<i64>().ok()
    };
    match parsed {
        Some(v) if v >= min && v <= max => Some(v),
        Some(v) => {
            cx.error(
                pos,
                path,
                format!("{v} is out of range (allowed {min}..={max})"),
            );
            None
        }
        None => {
            cx.error(pos, path, format!("'{text}' is not an integer"));
            None
        }
    }
}

fn version_policy(cx: &mut Cx, mut r: Fields) -> VersionPolicy {
    let mut policy = VersionPolicy::default();
    let mut chosen = 0;
    if let Some(mut l) = r.message(cx, "latest") {
        let n = l.int(cx, "num_versions", 1, u32::MAX as i64).unwrap_or(1);
        l.finish(cx);
        policy = VersionPolicy::Latest {
            num_versions: n as u32,
        };
        chosen += 1;
    }
    if let Some(a) = r.message(cx, "all") {
        a.finish(cx);
        policy = VersionPolicy::All {};
        chosen += 1;
    }
    if let Some(mut s) = r.message(cx, "specific") {
        let versions: Vec<u64> = s
            .ints(cx, "versions", 1, i64::MAX)
            .into_iter()
            .map(|v| v as u64)
            .collect();
        if versions.is_empty() {
            cx.error(
                Pos::default(),
                &s.path("versions"),
                "specific version policy lists no versions",
            );
        }
        s.finish(cx);
        policy = VersionPolicy::Specific { versions };
        chosen += 1;
    }
    if chosen > 1 {
        cx.error(
            Pos::default(),
            &r.prefix,
            "set only one of latest, all, specific",
        );
    }
    r.finish(cx);
    policy
}

fn reshape(cx: &mut Cx, r: &mut Fields) -> Option<Reshape> {
    let mut m = r.message(cx, "reshape")?;
    let shape = m.ints(cx, "shape", -1, i64::MAX);
    m.finish(cx);
    Some(Reshape { shape })
}

fn require_message<'a>(cx: &mut Cx, at: &At<'a>) -> Option<Fields<'a>> {
    let sub = at.sub();
    if sub.is_none() {
        cx.error(at.field.value_pos, &at.path, "expected a message in braces");
    }
    sub
}

fn model_input(cx: &mut Cx, at: At) -> ModelInput {
    let Some(mut r) = require_message(cx, &at) else {
        return ModelInput::default();
    };
    let mut i = ModelInput {
        name: r.string(cx, "name").unwrap_or_default(),
        data_type: ConfigDataType(r.data_type(cx, "data_type").unwrap_or(DataType::F32)),
        dims: r.ints(cx, "dims", -1, i64::MAX),
        optional: r.bool(cx, "optional").unwrap_or(false),
        ..Default::default()
    };
    i.reshape = reshape(cx, &mut r);
    r.unsupported(
        cx,
        &[
            "format",
            "is_shape_tensor",
            "allow_ragged_batch",
            "is_non_linear_format_io",
        ],
    );
    if i.name.is_empty() {
        cx.error(at.field.pos, &at.path, "input has no name");
    }
    r.finish(cx);
    i
}

fn model_output(cx: &mut Cx, at: At) -> ModelOutput {
    let Some(mut r) = require_message(cx, &at) else {
        return ModelOutput::default();
    };
    let mut o = ModelOutput {
        name: r.string(cx, "name").unwrap_or_default(),
        data_type: ConfigDataType(r.data_type(cx, "data_type").unwrap_or(DataType::F32)),
        dims: r.ints(cx, "dims", -1, i64::MAX),
        label_filename: r.string(cx, "label_filename").unwrap_or_default(),
        ..Default::default()
    };
    o.reshape = reshape(cx, &mut r);
    r.unsupported(cx, &["is_shape_tensor", "is_non_linear_format_io"]);
    if o.name.is_empty() {
        cx.error(at.field.pos, &at.path, "output has no name");
    }
    r.finish(cx);
    o
}

fn instance_group(cx: &mut Cx, at: At) -> InstanceGroup {
    let Some(mut r) = require_message(cx, &at) else {
        return InstanceGroup::default();
    };
    let mut g = InstanceGroup {
        name: r.string(cx, "name").unwrap_or_default(),
        count: r.int(cx, "count", 1, limits::INSTANCES).unwrap_or(1) as u32,
        gpus: r.ints(cx, "gpus", 0, i64::MAX),
        ..Default::default()
    };
    if let Some((kind, pos)) = r.ident(cx, "kind") {
        g.kind = match kind.as_str() {
            "KIND_AUTO" => InstanceKind::Auto,
            "KIND_CPU" => InstanceKind::Cpu,
            "KIND_GPU" => InstanceKind::Gpu,
            "KIND_MODEL" => InstanceKind::Model,
            other => {
                cx.error(pos, &r.path("kind"), format!("unknown kind '{other}' (expected KIND_AUTO, KIND_CPU, KIND_GPU or KIND_MODEL)"));
                InstanceKind::Auto
            }
        };
    }
    r.unsupported(
        cx,
        &[
            "profile",
            "passive",
            "host_policy",
            "rate_limiter",
            "secondary_devices",
        ],
    );
    r.finish(cx);
    g
}

fn optimization(cx: &mut Cx, mut r: Fields) -> Optimization {
    let mut o = Optimization::default();
    if let Some(mut ea) = r.message(cx, "execution_accelerators") {
        let mut list = |cx: &mut Cx, name: &str| -> Vec<Accelerator> {
            ea.messages(name)
                .into_iter()
                .filter_map(|at| {
                    let mut a = require_message(cx, &at)?;
                    let name = a.string(cx, "name").unwrap_or_default();
                    if name.is_empty() {
                        cx.error(at.field.pos, &at.path, "accelerator has no name");
                    }
                    let mut parameters = BTreeMap::new();
                    for p in a.messages("parameters") {
                        let (k, v) = map_entry(cx, p, |cx, f| match &f.field.value {
                            Value::Scalar(Scalar::Str(b)) => {
                                Some(String::from_utf8_lossy(b).into_owned())
                            }
                            _ => {
                                cx.error(f.field.value_pos, &f.path, "expected a string value");
                                None
                            }
                        });
                        if let (Some(k), Some(v)) = (k, v) {
                            parameters.insert(k, v);
                        }
                    }
                    a.finish(cx);
                    Some(Accelerator { name, parameters })
                })
                .collect()
        };
        let gpu = list(cx, "gpu_execution_accelerator");
        let cpu = list(cx, "cpu_execution_accelerator");
        ea.finish(cx);
        o.execution_accelerators = Some(ExecutionAccelerators {
            gpu_execution_accelerator: gpu,
            cpu_execution_accelerator: cpu,
        });
    }
    r.unsupported(
        cx,
        &[
            "graph",
            "priority",
            "cuda",
            "input_pinned_memory",
            "output_pinned_memory",
            "gather_kernel_buffer_threshold",
            "eager_batching",
        ],
    );
    r.finish(cx);
    o
}

fn queue_policy(cx: &mut Cx, mut r: Fields) -> QueuePolicy {
    let mut q = QueuePolicy {
        default_timeout_microseconds: r
            .int(cx, "default_timeout_microseconds", 0, limits::MICROSECONDS)
            .unwrap_or(0) as u64,
        allow_timeout_override: r.bool(cx, "allow_timeout_override").unwrap_or(false),
        max_queue_size: r
            .int(cx, "max_queue_size", 0, limits::QUEUE_SIZE)
            .unwrap_or(0) as u32,
        ..Default::default()
    };
    if let Some((a, pos)) = r.ident(cx, "timeout_action") {
        q.timeout_action = match a.as_str() {
            "REJECT" => TimeoutAction::Reject,
            "DELAY" => TimeoutAction::Delay,
            other => {
                cx.error(
                    pos,
                    &r.path("timeout_action"),
                    format!("unknown timeout_action '{other}' (expected REJECT or DELAY)"),
                );
                TimeoutAction::Reject
            }
        };
    }
    r.finish(cx);
    q
}

fn dynamic_batching(cx: &mut Cx, mut r: Fields) -> DynamicBatching {
    let mut d = DynamicBatching {
        preferred_batch_size: r
            .ints(cx, "preferred_batch_size", 1, limits::MAX_BATCH_SIZE)
            .into_iter()
            .map(|v| v as u32)
            .collect(),
        max_queue_delay_microseconds: r
            .int(cx, "max_queue_delay_microseconds", 0, limits::MICROSECONDS)
            .unwrap_or(0) as u64,
        preserve_ordering: r.bool(cx, "preserve_ordering").unwrap_or(false),
        priority_levels: r
            .int(cx, "priority_levels", 0, limits::PRIORITY_LEVELS)
            .unwrap_or(0) as u32,
        default_priority_level: r
            .int(cx, "default_priority_level", 0, limits::PRIORITY_LEVELS)
            .unwrap_or(0) as u32,
        ..Default::default()
    };
    if let Some(q) = r.message(cx, "default_queue_policy") {
        d.default_queue_policy = Some(queue_policy(cx, q));
    }
    for e in r.messages("priority_queue_policy") {
        let (k, v) = map_entry(cx, e, |cx, f| {
            let m = require_message(cx, f)?;
            Some(queue_policy(cx, m))
        });
        if let (Some(k), Some(v)) = (k, v) {
            match k.parse::<u32>() {
                Ok(level) => {
                    d.priority_queue_policy.insert(level, v);
                }
                Err(_) => cx.error(
                    Pos::default(),
                    "dynamic_batching.priority_queue_policy",
                    format!("key '{k}' is not a priority level"),
                ),
            }
        }
    }
    r.finish(cx);
    d
}

fn model_warmup(cx: &mut Cx, at: At) -> ModelWarmup {
    let Some(mut r) = require_message(cx, &at) else {
        return ModelWarmup::default();
    };
    let mut w = ModelWarmup {
        name: r.string(cx, "name").unwrap_or_default(),
        batch_size: r
            .int(cx, "batch_size", 0, limits::MAX_BATCH_SIZE)
            .unwrap_or(1) as u32,
        count: r.int(cx, "count", 0, limits::WARMUP_COUNT).unwrap_or(1) as u32,
        ..Default::default()
    };
    for e in r.messages("inputs") {
        let (k, v) = map_entry(cx, e, |cx, f| {
            let mut m = require_message(cx, f)?;
            let wi = WarmupInput {
                data_type: ConfigDataType(m.data_type(cx, "data_type").unwrap_or(DataType::F32)),
                dims: m.ints(cx, "dims", -1, i64::MAX),
                zero_data: m.bool(cx, "zero_data").unwrap_or(false),
                random_data: m.bool(cx, "random_data").unwrap_or(false),
                input_data_file: m.string(cx, "input_data_file").unwrap_or_default(),
            };
            m.finish(cx);
            Some(wi)
        });
        if let (Some(k), Some(v)) = (k, v) {
            w.inputs.insert(k, v);
        }
    }
    r.finish(cx);
    w
}

fn ensemble(cx: &mut Cx, mut r: Fields) -> EnsembleScheduling {
    let mut e = EnsembleScheduling::default();
    for at in r.messages("step") {
        let Some(mut s) = require_message(cx, &at) else {
            continue;
        };
        let mut step = EnsembleStep {
            model_name: s.string(cx, "model_name").unwrap_or_default(),
            model_version: s.int(cx, "model_version", -1, i64::MAX).unwrap_or(-1),
            ..Default::default()
        };
        for (field, map) in [
            ("input_map", &mut step.input_map),
            ("output_map", &mut step.output_map),
        ] {
            for m in s.messages(field) {
                let (k, v) = map_entry(cx, m, |cx, f| {
                    let path = f.path.clone();
                    match &f.field.value {
                        Value::Scalar(Scalar::Str(b)) => {
                            Some(String::from_utf8_lossy(b).into_owned())
                        }
                        _ => {
                            cx.error(f.field.value_pos, &path, "expected a quoted string");
                            None
                        }
                    }
                });
                if let (Some(k), Some(v)) = (k, v) {
                    map.insert(k, v);
                }
            }
        }
        s.finish(cx);
        e.step.push(step);
    }
    r.finish(cx);
    e
}

/// Reads a map entry `{ key: "k" value: ... }`.
fn map_entry<T>(
    cx: &mut Cx,
    at: At,
    value: impl FnOnce(&mut Cx, &At) -> Option<T>,
) -> (Option<String>, Option<T>) {
    let Some(mut r) = require_message(cx, &at) else {
        return (None, None);
    };
    let key = match r.scalar(cx, "key") {
        Some((Scalar::Str(b), _)) => Some(String::from_utf8_lossy(b).into_owned()),
        Some((Scalar::Number(n), _)) => Some(n.clone()),
        Some((other, pos)) => {
            cx.error(
                pos,
                &r.path("key"),
                format!("expected a key, found {other}"),
            );
            None
        }
        None => {
            cx.error(at.field.pos, &at.path, "map entry has no key");
            None
        }
    };
    let vals = r.take("value");
    let v = match vals.last() {
        Some(f) => {
            let vat = At {
                field: f,
                path: r.path("value"),
            };
            value(cx, &vat)
        }
        None => {
            cx.error(at.field.pos, &at.path, "map entry has no value");
            None
        }
    };
    r.finish(cx);
    (key, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ParsedConfig, Vec<Diagnostic>> {
        parse_config(text, Path::new("m/config.pbtxt"))
    }

    #[test]
    fn reads_all_fields_the_foundation_needs() {
        let p = parse(
            r#"
            name: "mlp"
            platform: "onnxruntime_onnx"
            max_batch_size: 64
            version_policy: { specific { versions: [1, 3] } }
            input [ { name: "x" data_type: TYPE_FP32 dims: [ 64 ] optional: true reshape: { shape: [ 8, 8 ] } } ]
            output [ { name: "y" data_type: TYPE_STRING dims: [ -1 ] } ]
            instance_group [ { count: 2 kind: KIND_CPU } ]
            dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100
              default_queue_policy { timeout_action: DELAY max_queue_size: 10 }
              priority_queue_policy { key: 1 value: { max_queue_size: 3 } } }
            model_warmup [ { name: "w" batch_size: 2 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [64] zero_data: true } } } ]
            parameters { key: "k" value: { string_value: "v" } }
            "#,
        )
        .unwrap();
        let c = &p.config;
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(p.max_batch_size_set);
        assert_eq!(c.name, "mlp");
        assert_eq!(c.max_batch_size, 64);
        assert_eq!(
            c.version_policy,
            VersionPolicy::Specific {
                versions: vec![1, 3]
            }
        );
        assert_eq!(c.input[0].dims, vec![64]);
        assert!(c.input[0].optional);
        assert_eq!(c.input[0].reshape, Some(Reshape { shape: vec![8, 8] }));
        assert_eq!(c.output[0].data_type.0, DataType::Bytes);
        assert_eq!(c.instance_count(), 2);
        let db = c.dynamic_batching.as_ref().unwrap();
        assert_eq!(db.preferred_batch_size, vec![4, 8]);
        assert_eq!(
            db.default_queue_policy.as_ref().unwrap().timeout_action,
            TimeoutAction::Delay
        );
        assert_eq!(db.priority_queue_policy[&1].max_queue_size, 3);
        assert_eq!(c.model_warmup[0].inputs["x"].dims, vec![64]);
        assert_eq!(c.parameters["k"].string_value, "v");
    }

    #[test]
    fn gpu_groups_place_count_instances_on_each_listed_gpu() {
        use crate::config::{InstanceKind, Placement};
        let p = parse(
            r#"
            name: "m"
            instance_group [
              { count: 2 kind: KIND_GPU gpus: [ 0, 3 ] },
              { kind: KIND_GPU },
              { count: 1 kind: KIND_CPU }
            ]
            "#,
        )
        .unwrap();
        let at = |group, kind, gpu| Placement { group, kind, gpu };
        let gpu = InstanceKind::Gpu;
        assert_eq!(
            p.config.placements(),
            vec![
                at(0, gpu, Some(0)),
                at(0, gpu, Some(0)),
                at(0, gpu, Some(3)),
                at(0, gpu, Some(3)),
                at(1, gpu, None),
                at(2, InstanceKind::Cpu, None),
            ]
        );
        assert_eq!(p.config.instance_count(), 6);
        let none = parse("name: \"m\"").unwrap();
        assert_eq!(
            none.config.placements(),
            vec![at(0, InstanceKind::Auto, None)]
        );
    }

    #[test]
    fn execution_accelerators_are_read_and_other_optimization_fields_warn() {
        let p = parse(
            r#"
            name: "m"
            instance_group [ { kind: KIND_GPU gpus: [ 1 ] } ]
            optimization { execution_accelerators {
              gpu_execution_accelerator : [ { name : "tensorrt"
                parameters { key: "precision_mode" value: "FP16" } } ]
              cpu_execution_accelerator : [ { name : "openvino" } ] }
              graph { level: 1 } }
            "#,
        )
        .unwrap();
        let c = &p.config;
        assert!(c.wants_gpu());
        assert_eq!(c.gpu_accelerators()[0].name, "tensorrt");
        assert_eq!(c.gpu_accelerators()[0].parameters["precision_mode"], "FP16");
        assert_eq!(c.cpu_accelerators()[0].name, "openvino");
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert_eq!(p.warnings[0].field, "optimization.graph");
        let err = parse("name: \"m\"\noptimization { execution_accelerators { gpu_execution_accelerator [ { parameters { key: \"a\" value: 3 } } ] } }").unwrap_err();
        let text: Vec<String> = err.iter().map(|d| d.to_string()).collect();
        assert!(
            text.iter().any(|t| t.contains("accelerator has no name")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("expected a string value")),
            "{text:?}"
        );
    }

    #[test]
    fn unknown_fields_are_errors_with_their_position() {
        let errs = parse(
            "name: \"m\"\nfoo: 1\ninput [ { name: \"x\" data_type: TYPE_FP32 dims: [1] bar: 2 } ]",
        )
        .unwrap_err();
        let e: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
        assert!(
            e.iter()
                .any(|s| s.contains("m/config.pbtxt:2:1: field 'foo': unknown field")),
            "{e:?}"
        );
        assert!(e.iter().any(|s| s.contains("'input[0].bar'")), "{e:?}");
    }

    #[test]
    fn fields_whose_semantics_inferd_lacks_are_refused_by_name() {
        for (text, field) in [
            ("sequence_batching { }", "sequence_batching"),
            (
                "batch_input [ { kind: BATCH_ELEMENT_COUNT } ]",
                "batch_input",
            ),
            ("batch_output [ { target_name: \"y\" } ]", "batch_output"),
            (
                "model_transaction_policy { decoupled: true }",
                "model_transaction_policy.decoupled",
            ),
            ("response_cache { enable: true }", "response_cache.enable"),
        ] {
            let errs = parse(&format!("name: \"m\"\n{text}")).unwrap_err();
            let e: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
            assert!(
                e.iter().any(|s| s.starts_with("m/config.pbtxt:2:")
                    && s.contains(&format!("field '{field}'"))
                    && s.contains("does not implement")),
                "{text}: {e:?}"
            );
        }
        // Switched off, they mean nothing and load.
        let p = parse("name: \"m\"\nmodel_transaction_policy { decoupled: false }\nresponse_cache { enable: false }").unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn fields_that_only_tune_performance_warn_by_name() {
        let p = parse("name: \"m\"\nmodel_metrics { }\noptimization { cuda { graphs: true } }")
            .unwrap();
        let w: Vec<String> = p.warnings.iter().map(|d| d.to_string()).collect();
        assert!(w.iter().any(|s| s.contains("'model_metrics'")), "{w:?}");
        assert!(w.iter().any(|s| s.contains("'optimization.cuda'")), "{w:?}");
    }

    #[test]
    fn numbers_that_size_memory_or_time_are_bounded() {
        for text in [
            "max_batch_size: 4294967295",
            "dynamic_batching { priority_levels: 4294967295 }",
            "dynamic_batching { default_queue_policy { max_queue_size: 4294967295 } }",
            "dynamic_batching { max_queue_delay_microseconds: 9223372036854775807 }",
            "instance_group [ { count: 100000 } ]",
            "model_warmup [ { name: \"w\" batch_size: 1 count: 4294967295 } ]",
        ] {
            let errs = parse(&format!("name: \"m\"\n{text}")).unwrap_err();
            assert!(
                errs.iter().any(|d| d.message.contains("out of range")
                    || d.message.contains("must be")
                    || d.message.contains("at most")),
                "{text}: {errs:?}"
            );
        }
    }

    #[test]
    fn errors_name_file_line_field_and_reason() {
        let errs = parse("name: \"m\"\ninput [ { name: \"x\" data_type: TYPE_FLOAT dims: [ 1 ] } ]\nmax_batch_size: -3").unwrap_err();
        let s: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
        assert!(
            s.iter().any(|e| e.starts_with("m/config.pbtxt:2:")
                && e.contains("input[0].data_type")
                && e.contains("TYPE_FLOAT")),
            "{s:?}"
        );
        assert!(
            s.iter()
                .any(|e| e.contains("max_batch_size") && e.contains("out of range")),
            "{s:?}"
        );
    }

    #[test]
    fn syntax_error_is_reported_with_position() {
        let errs = parse("name: \"m\"\ninput [ { name: \"x\" ").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().contains("syntax error"), "{}", errs[0]);
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let p = parse("").unwrap();
        assert!(!p.max_batch_size_set);
        assert_eq!(
            p.config.version_policy,
            VersionPolicy::Latest { num_versions: 1 }
        );
    }

    #[test]
    fn ensemble_steps_read_maps() {
        let p = parse(r#"name: "e" platform: "ensemble" ensemble_scheduling { step [ { model_name: "a" model_version: -1 input_map { key: "IN" value: "x" } output_map { key: "OUT" value: "y" } } ] }"#).unwrap();
        let s = &p.config.ensemble_scheduling.unwrap().step[0];
        assert_eq!(s.model_name, "a");
        assert_eq!(s.input_map["IN"], "x");
        assert_eq!(s.output_map["OUT"], "y");
    }
}
