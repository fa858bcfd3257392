//! # inferd-core
//!
//! The inferd engine, embeddable in any Rust program: tensors, Triton-compatible model
//! configuration, the model repository and its lifecycle, the backend seam, and per-version
//! executors. It knows nothing of HTTP or gRPC; front-ends live in `inferd-server`.
//!
//! - [`tensor`]: KServe v2 datatypes and tensors.
//! - [`artifact`]: artifact safety checks (pickle refusal, header checks) for scan and load.
//! - [`config`]: `config.pbtxt` parsing, auto-complete, validation.
//! - [`describe`]: model metadata and statistics in KServe's and Triton's JSON shapes.
//! - [`backend`]: the trait a model format implements.
//! - [`batching`]: batch formation policy (pure) for the dynamic batcher.
//! - [`repository`]: scanning the repository folder.
//! - [`request`]: requests, responses, and their validation against a config.
//! - [`scheduler`]: a version's priority queues, dynamic batcher, batch merge/split, CPU budget.
//! - [`runner`]: one version's executor threads over its scheduler.
//! - [`custom_metrics`]: metrics that models define themselves.
//! - [`executor`]: one instance's thread: batches run and answered.
//! - [`stats`]: per-version statistics.
//! - [`warmup`]: warm-up before a version turns ready.
//! - [`engine`]: lifecycle, live reload, routing; the embedding API.
//! - [`error`]: the engine's error type.

pub mod artifact;
pub mod assembly;
pub mod backend;
pub mod batching;
pub mod cache;
pub mod config;
pub mod custom_metrics;
pub mod describe;
pub mod drift;
pub mod engine;
pub mod ensemble;
pub mod error;
pub mod executor;
pub mod generate;
pub mod repository;
pub mod request;
pub mod runner;
pub mod scheduler;
pub mod sequence;
pub mod stats;
pub mod tensor;
pub mod warmup;

pub use backend::{
    Backend, BackendError, LoadedModel, ModelInstance, ModelSignature, NamedTensor, TensorSpec,
};
pub use engine::{
    ControlMode, Engine, EngineOptions, IndexEntry, LoadOverride, ModelInfo, VersionState,
};
pub use error::{Error, Result};
pub use request::{InferRequest, InferResponse, ParamValue};
pub use tensor::{DataType, Tensor, TensorData};
