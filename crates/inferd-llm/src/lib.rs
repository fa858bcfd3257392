//! inferd's LLM engine (issue 18), engine side only: no HTTP or gRPC.
//!
//! - [`blocks`]: the KV block manager: fixed-size blocks, per-sequence block tables,
//!   reference counts with copy-on-write, and the prefix cache (full blocks keyed by a hash
//!   chained to their prefix, kept after use and evicted least recently used). Pure.
//! - [`scheduler`]: iteration-level continuous batching with chunked prefill under a token
//!   budget, `max_num_seqs`, preemption by recompute, priorities, cancellation. Pure.
//! - [`sampling`]: greedy, temperature, top-k, top-p, min-p, penalties, seeds, logprobs.
//! - [`model`]: the llama family read from GGUF or a Hugging Face folder, and its forward
//!   pass over paged KV; [`source`]: which of the two a path is.
//! - [`engine`]: a synchronous generation loop that ties them together.
//! - [`service`]: the engine on its own thread behind inferd-core's `TextGenerator`.
//! - [`backend`]: the `llm` backend of the model repository.
//! - [`tokenizer`]: the GGUF's tokenizer and chat template, and streaming detokenization;
//!   [`tokenizer_hf`]: a Hugging Face folder's;
//!   [`spm`]: SentencePiece vocabularies on the `tokenizers` crate.

pub mod backend;
pub mod blocks;
pub mod chat;
pub mod engine;
pub mod grammar;
pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod service;
pub mod source;
pub mod spm;
pub mod tokenizer;
pub mod tokenizer_hf;
