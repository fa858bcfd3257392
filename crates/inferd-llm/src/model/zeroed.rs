//! Zeroed buffers whose pages the OS maps only when first written.
//!
//! The KV cache is sized for the whole memory budget but filled a block at a time. From the
//! allocator, each of SmolLM2's 60 planes (4.5 MB) had a header written into its first
//! transparent huge page at once, so a start zeroed 120 MB it did not use yet; memory first
//! touched after a few idle seconds costs about 2 ms a megabyte on this machine (perf on a
//! start: `clear_page_erms` under `KvCache::new`, bench/results/llm-2026-12-08-start.md). An
//! anonymous mapping is zero by definition and costs nothing until written.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// `len` zeroed values of `T` (any bit pattern of zeros a valid value).
pub struct Zeroed<T: bytemuck::Pod> {
    backing: Backing<T>,
    len: usize,
    _t: PhantomData<T>,
}

enum Backing<T> {
    /// An anonymous private mapping (at least `len` values long).
    Map(memmap2::MmapMut),
    /// The allocator's memory, where the mapping was refused (or `len` is 0).
    Vec(Vec<T>),
}

impl<T: bytemuck::Pod> Zeroed<T> {
    /// `len` zeros.
    pub fn new(len: usize) -> Zeroed<T> {
        let bytes = len * std::mem::size_of::<T>();
        let backing = match bytes {
            0 => Backing::Vec(Vec::new()),
            _ => memmap2::MmapMut::map_anon(bytes)
                .map(Backing::Map)
                .unwrap_or_else(|_| Backing::Vec(vec![T::zeroed(); len])),
        };
        Zeroed {
            backing,
            len,
            _t: PhantomData,
        }
    }
}

impl<T: bytemuck::Pod> Deref for Zeroed<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.backing {
            // A mapping starts on a page, so it is aligned for any `T`.
            Backing::Map(m) => bytemuck::cast_slice(&m[..self.len * std::mem::size_of::<T>()]),
            Backing::Vec(v) => v,
        }
    }
}

impl<T: bytemuck::Pod> DerefMut for Zeroed<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.backing {
            Backing::Map(m) => {
                bytemuck::cast_slice_mut(&mut m[..self.len * std::mem::size_of::<T>()])
            }
            Backing::Vec(v) => v,
        }
    }
}

impl<T: bytemuck::Pod> Clone for Zeroed<T> {
    fn clone(&self) -> Zeroed<T> {
        let mut c = Zeroed::new(self.len);
        c.copy_from_slice(self);
        c
    }
}

impl<T: bytemuck::Pod> std::fmt::Debug for Zeroed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Zeroed({} values)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_buffer_reads_zero_and_keeps_what_is_written() {
        let mut z = Zeroed::<f32>::new(3 << 20);
        assert_eq!(z.len(), 3 << 20);
        assert!(z.iter().step_by(4093).all(|&v| v == 0.0));
        z[12345] = 2.5;
        let c = z.clone();
        assert_eq!(c[12345], 2.5);
        assert_eq!(c[12346], 0.0);
        assert!(Zeroed::<i8>::new(0).is_empty());
    }
}
