//! # inferd-python
//!
//! inferd's engine as a Python module (`inferd._inferd`, wrapped by the `inferd` package): a
//! FastAPI or Flask service loads a model repository in-process and runs inference on NumPy
//! arrays with the server's formats, safety checks and dynamic batching. The GIL is released
//! while the engine works, so requests from many threads or asyncio tasks meet in the same
//! batches.
//!
//! - [`options`]: `Engine(repository, **options)`, named as `inferd serve`'s flags.
//! - [`aio`]: asyncio futures completed without the GIL on the engine's threads.
//! - [`convert`]: NumPy arrays to tensors and back.
//! - [`errors`]: engine errors as Python exceptions.
//! - [`generate`]: LLM text generation as a Python iterator.
//!
//! Built with maturin (`crates/inferd-python/pyproject.toml`), not by the workspace's default
//! build.

mod aio;
mod convert;
mod engine;
mod errors;
mod generate;
mod options;

use pyo3::prelude::*;

/// The native module.
#[pymodule]
fn _inferd(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<generate::Generation>()?;
    m.add_class::<aio::LoopChannel>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
