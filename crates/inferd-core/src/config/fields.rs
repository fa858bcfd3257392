//! The machinery under [`super::read`]: diagnostics with file, line and field path, and a
//! reader over one message's fields that tracks which were consumed, so nothing in a config
//! goes unread.

use std::fmt;
use std::path::PathBuf;

use super::pbtxt::{Field, Message, Pos, Scalar, Value};
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

pub(super) struct Cx {
    pub(super) file: PathBuf,
    pub(super) diags: Vec<Diagnostic>,
}

impl Cx {
    pub(super) fn push(
        &mut self,
        severity: Severity,
        pos: Pos,
        field: &str,
        message: impl Into<String>,
    ) {
        self.diags.push(Diagnostic {
            severity,
            file: self.file.clone(),
            pos: Some(pos),
            field: field.to_string(),
            message: message.into(),
        });
    }
    pub(super) fn error(&mut self, pos: Pos, field: &str, message: impl Into<String>) {
        self.push(Severity::Error, pos, field, message);
    }
    pub(super) fn warn(&mut self, pos: Pos, field: &str, message: impl Into<String>) {
        self.push(Severity::Warning, pos, field, message);
    }
}

/// A field occurrence with its full path, for messages.
pub(super) struct At<'a> {
    pub(super) field: &'a Field,
    pub(super) path: String,
}

impl<'a> At<'a> {
    pub(super) fn sub(&self) -> Option<Fields<'a>> {
        match &self.field.value {
            Value::Message(m) => Some(Fields::new(m, &self.path)),
            Value::Scalar(_) => None,
        }
    }
}

/// The fields of one message, tracking which were consumed.
pub(super) struct Fields<'a> {
    msg: &'a Message,
    used: Vec<bool>,
    pub(super) prefix: String,
}

impl<'a> Fields<'a> {
    pub(super) fn new(msg: &'a Message, prefix: &str) -> Self {
        Fields {
            msg,
            used: vec![false; msg.fields.len()],
            prefix: prefix.to_string(),
        }
    }

    pub(super) fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Refuses field `name` when it is set: a Triton feature (`what`) inferd does not
    /// implement, so the model cannot be served as its config asks.
    pub(super) fn refuse(&mut self, cx: &mut Cx, name: &str, what: &str) {
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
    pub(super) fn unsupported(&mut self, cx: &mut Cx, names: &[&str]) {
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

    pub(super) fn take(&mut self, name: &str) -> Vec<&'a Field> {
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
    pub(super) fn scalar(&mut self, cx: &mut Cx, name: &str) -> Option<(&'a Scalar, Pos)> {
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

    pub(super) fn string(&mut self, cx: &mut Cx, name: &str) -> Option<String> {
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

    pub(super) fn int(&mut self, cx: &mut Cx, name: &str, min: i64, max: i64) -> Option<i64> {
        let (s, pos) = self.scalar(cx, name)?;
        let path = self.path(name);
        scalar_int(cx, s, pos, &path, min, max)
    }

    pub(super) fn ints(&mut self, cx: &mut Cx, name: &str, min: i64, max: i64) -> Vec<i64> {
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

    pub(super) fn bool(&mut self, cx: &mut Cx, name: &str) -> Option<bool> {
        self.bool_at(cx, name).map(|(b, _)| b)
    }

    /// A boolean field and where its value is.
    pub(super) fn bool_at(&mut self, cx: &mut Cx, name: &str) -> Option<(bool, Pos)> {
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

    pub(super) fn ident(&mut self, cx: &mut Cx, name: &str) -> Option<(String, Pos)> {
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

    pub(super) fn message(&mut self, cx: &mut Cx, name: &str) -> Option<Fields<'a>> {
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

    pub(super) fn messages(&mut self, name: &str) -> Vec<At<'a>> {
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

    pub(super) fn data_type(&mut self, cx: &mut Cx, name: &str) -> Option<DataType> {
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
    pub(super) fn finish(self, cx: &mut Cx) {
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

pub(super) fn scalar_int(
    cx: &mut Cx,
    s: &Scalar,
    pos: Pos,
    path: &str,
    min: i64,
    max: i64,
) -> Option<i64> {
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

pub(super) fn require_message<'a>(cx: &mut Cx, at: &At<'a>) -> Option<Fields<'a>> {
    let sub = at.sub();
    if sub.is_none() {
        cx.error(at.field.value_pos, &at.path, "expected a message in braces");
    }
    sub
}

/// Reads a map entry `{ key: "k" value: ... }`.
pub(super) fn map_entry<T>(
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

/// Whether a file name from a config is a plain relative path (no `..`, no root, no `.`): a
/// config never names a file outside the folder it describes.
pub(super) fn plain_relative(name: &str) -> bool {
    let p = std::path::Path::new(name);
    !name.is_empty()
        && !name.contains('\0')
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}
