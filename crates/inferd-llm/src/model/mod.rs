//! The llama model family (Llama 2/3, SmolLM2, TinyLlama, Mistral-style grouped-query
//! attention) read from GGUF or from a Hugging Face folder:
//!
//! - [`attention`]: one token's attention through the block table, grouped by KV head;
//! - [`config`]: the architecture's numbers from the file's metadata;
//! - [`weights`]: the tensors, dequantized to f32 at load;
//! - [`hf_config`]: a Hugging Face `config.json` as the architecture's numbers;
//! - [`safetensors`]: a Hugging Face folder's SafeTensors weights, in the engine's layout;
//! - [`kv`]: the paged KV memory the block manager hands out;
//! - `matmul`: activation rows times weights in any of their forms, grouped by shared input;
//! - [`pair`]: batched decode's 4-bit and 8-bit products at AVX-512, two weight rows a pass;
//! - [`q4`]: the file's 4-bit blocks, kept for decode, and their dot products;
//! - [`q4fine`]: activations in two 8-bit levels, for nearly f32-accurate integer products;
//! - [`q8`]: weights in 8-bit blocks and their dot products;
//! - [`q8dot`]: integer dot products of 8-bit weights with 8-bit activations (decode);
//! - [`x16`]: 4-bit and 8-bit weights repacked sixteen rows to a block, for batched integer decode;
//! - [`rope`]: rotary frequencies with linear, YaRN and Llama 3.1 context extension;
//! - [`forward`]: one step over many sequences' chunks, reading K/V through block tables.

pub mod attention;
pub mod config;
pub mod embed;
pub mod forward;
pub mod hf_config;
pub mod kv;
pub(crate) mod matmul;
pub mod pair;
pub mod q4;
pub mod q4fine;
pub mod q8;
pub mod q8dot;
pub mod rope;
pub mod safetensors;
pub mod simd;
pub mod weights;
pub mod x16;
pub mod zeroed;

pub use config::LlamaConfig;
pub use forward::{Llama, SeqChunk};
pub use kv::{KvCache, KvDtype};
pub use weights::Precision;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read or parsed.
    #[error(transparent)]
    Gguf(#[from] inferd_gguf::GgufError),
    /// The file is not a model this engine runs, or lacks something it needs.
    #[error("{0}")]
    Unsupported(String),
}

/// Maps `file` read-only.
///
/// A mapping is sound only while nobody truncates or rewrites the file under it. A version
/// folder is immutable once loaded (a new version is a new folder; inferd never writes into a
/// served one), and the mapping lives only for the load, which copies what it reads.
#[allow(unsafe_code)]
pub(crate) fn map_file(file: &std::fs::File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: see above; the mapping is private, read-only and dropped when loading ends.
    unsafe { memmap2::Mmap::map(file) }
}
