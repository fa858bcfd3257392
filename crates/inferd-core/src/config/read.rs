//! Maps a parsed `config.pbtxt` tree onto [`ModelConfig`], reporting every problem with the file,
//! line, field path and reason. Nothing is ignored silently:
//! - an unknown field (a typo) is an error, with its position;
//! - a Triton field whose semantics inferd does not implement (batch inputs/outputs) is an error: serving the model
//!   without it would answer differently from what the config asks;
//! - a Triton field that only tunes performance or describes deployment is a warning;
//! - every number that sizes memory or time is bounded, so a huge value is an error, never an
//!   abort of the server.

use std::collections::BTreeMap;
use std::path::Path;

use super::fields::{At, Cx, Fields, map_entry, require_message};
pub use super::fields::{Diagnostic, Severity};
use super::model::*;
use super::pbtxt::{self, Pos, Scalar, Value};
use crate::tensor::DataType;

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
    if !cfg.default_model_filename.is_empty()
        && !super::fields::plain_relative(&cfg.default_model_filename)
    {
        cx.error(
            Pos::default(),
            "default_model_filename",
            format!(
                "'{}' must name a file inside the version folder (no '..', no absolute path)",
                cfg.default_model_filename
            ),
        );
    }
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
    if let Some(sb) = r.message(&mut cx, "sequence_batching") {
        cfg.sequence_batching = Some(super::sequence::read(&mut cx, sb));
    }
    if let Some(o) = r.message(&mut cx, "optimization") {
        cfg.optimization = Some(optimization(&mut cx, o));
    }
    for (name, what) in REFUSED_TOP_LEVEL {
        r.refuse(&mut cx, name, what);
    }
    if let Some(mut t) = r.message(&mut cx, "model_transaction_policy") {
        if let Some(decoupled) = t.bool(&mut cx, "decoupled") {
            cfg.model_transaction_policy =
                Some(crate::config::model::ModelTransactionPolicy { decoupled });
        }
        t.finish(&mut cx);
    }
    if let Some(mut c) = r.message(&mut cx, "response_cache") {
        if let Some((enable, _)) = c.bool_at(&mut cx, "enable") {
            cfg.response_cache = Some(crate::config::model::ResponseCacheConfig { enable });
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

#[cfg(test)]
#[path = "read_tests.rs"]
mod tests;
