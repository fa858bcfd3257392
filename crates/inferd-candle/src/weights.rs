//! SafeTensors weights, memory-mapped.
//!
//! The file is mapped, its header parsed by the `safetensors` crate (bounds, overlap and
//! dtype/shape checks included), and tensors are read straight out of the mapping: there is no
//! deserialization step. candle's CPU tensors own their storage, so each tensor a model uses is
//! copied once out of the mapping into its candle tensor (converted to F32 when stored as F16 or
//! BF16); tensors the model does not use are never touched.

use std::fs::File;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

/// A memory-mapped `.safetensors` file; [`Weights::reader`] parses and checks its header.
#[derive(Debug)]
pub struct Weights {
    mmap: Mmap,
}

/// Maps `file` read-only.
///
/// The one `unsafe` operation in this crate: a mapping is only sound while nobody truncates or
/// rewrites the file underneath it. Model repositories treat a version folder as immutable once
/// it is loaded (a new version is a new folder; inferd's own reload never writes into a served
/// folder), and the mapping is read once, at load, to fill the model's tensors.
#[allow(unsafe_code)]
fn map(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: see the function documentation; the map is private and read-only.
    unsafe { Mmap::map(file) }
}

impl Weights {
    /// Maps the file.
    pub fn open(path: &Path) -> Result<Weights, String> {
        let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        let mmap = map(&file).map_err(|e| format!("cannot map: {e}"))?;
        Ok(Weights { mmap })
    }

    /// Parses the header once for a series of reads.
    pub fn reader(&self) -> Result<Reader<'_>, String> {
        let st = SafeTensors::deserialize(&self.mmap)
            .map_err(|e| format!("not a valid SafeTensors file: {e}"))?;
        Ok(Reader { st })
    }
}

/// Reads tensors out of a mapped file.
#[derive(Debug)]
pub struct Reader<'a> {
    st: SafeTensors<'a>,
}

impl Reader<'_> {
    /// Every tensor name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.st.names().into_iter()
    }

    /// Reads one tensor as F32, checking its shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, String> {
        let view = self
            .st
            .tensor(name)
            .map_err(|_| format!("tensor '{name}' is missing"))?;
        if view.shape() != shape {
            return Err(format!(
                "tensor '{name}' has shape {:?}, expected {shape:?}",
                view.shape()
            ));
        }
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(format!(
                    "tensor '{name}' is stored as {other:?}; F32, F16 and BF16 are supported"
                ));
            }
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, shape, &Device::Cpu)
            .map_err(|e| format!("tensor '{name}': {e}"))?;
        if dtype == DType::F32 {
            Ok(t)
        } else {
            t.to_dtype(DType::F32)
                .map_err(|e| format!("tensor '{name}': {e}"))
        }
    }
}
