//! Model configuration: Triton's `config.pbtxt`.
//!
//! - [`pbtxt`]: protobuf text format parser (untyped tree with positions).
//! - [`model`]: the typed config and version policy.
//! - [`read`]: tree -> typed config, with file/line/field diagnostics (the field reader and
//!   diagnostics live in `fields.rs`).
//! - [`complete`]: auto-complete from the model file, and validation.

pub mod complete;
mod fields;
pub mod json;
pub mod model;
pub mod pbtxt;
pub mod read;
pub mod sequence;

pub use complete::{DEFAULT_MAX_BATCH_SIZE, complete_config, validate_config};
pub use model::*;
pub use read::{Diagnostic, ParsedConfig, Severity, parse_config};
pub use sequence::SequenceBatching;
