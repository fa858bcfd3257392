//! The paged KV memory: per layer, `num_blocks` blocks of `block_size` slots, each slot one
//! token's keys (or values) for every KV head. Block ids come from the block manager.
//!
//! Slots hold f32 (exact), or with [`KvDtype::Q8`] 8-bit integers in groups of 32 with one
//! f32 scale per group (Q8_0's layout): 1.125 bytes a value instead of 4, so the same memory
//! holds 3.5 times the tokens and attention reads a quarter of the bytes. Attention never sees
//! the storage: it asks for `q · k` and `out += w v` per head.

use std::ops::Range;

use super::zeroed::Zeroed;
use crate::blocks::BlockId;

/// Values per quantization group of the 8-bit store.
pub const Q8_GROUP: usize = 32;

/// How keys and values are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// 32-bit floats, exact.
    #[default]
    F32,
    /// 8-bit integers in groups of 32 with an f32 scale each.
    Q8,
}

impl KvDtype {
    /// Bytes one value takes, scales included.
    fn bytes_per_value(self) -> f64 {
        match self {
            KvDtype::F32 => 4.0,
            KvDtype::Q8 => 1.0 + 4.0 / Q8_GROUP as f64,
        }
    }
}

/// One layer's keys or values in 8-bit groups.
#[derive(Debug, Clone)]
struct Q8Plane {
    q: Zeroed<i8>,
    scale: Zeroed<f32>,
}

impl Q8Plane {
    fn new(n: usize) -> Q8Plane {
        Q8Plane {
            q: Zeroed::new(n),
            scale: Zeroed::new(n / Q8_GROUP),
        }
    }

    fn store(&mut self, o: usize, x: &[f32]) {
        for (g, xs) in x.chunks_exact(Q8_GROUP).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let at = o + g * Q8_GROUP;
            for (q, v) in self.q[at..at + Q8_GROUP].iter_mut().zip(xs) {
                *q = (v * inv).round() as i8;
            }
            self.scale[at / Q8_GROUP] = d;
        }
    }

    fn copy_within(&mut self, f: usize, t: usize, n: usize) {
        self.q.copy_within(f..f + n, t);
        self.scale
            .copy_within(f / Q8_GROUP..(f + n) / Q8_GROUP, t / Q8_GROUP);
    }
}

#[derive(Debug, Clone)]
enum Store {
    F32(Vec<(Zeroed<f32>, Zeroed<f32>)>),
    Q8(Vec<(Q8Plane, Q8Plane)>),
}

/// Keys and values of every layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    block_size: usize,
    kv_dim: usize,
    store: Store,
}

super::simd::multiversion! {
/// `Σ q[i] · x[i]` over one 32-value group of 8-bit integers.
fn dot_i8(q: &[f32], x: &[i8]) -> f32 {
    let mut acc = [0f32; 8];
    for (qs, xs) in q.chunks_exact(8).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += qs[i] * xs[i] as f32;
        }
    }
    acc.iter().sum()
}
}

super::simd::multiversion! {
/// `out[i] += w · x[i]` over one group of 8-bit integers.
fn axpy_i8(out: &mut [f32], w: f32, x: &[i8]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += w * *v as f32;
    }
}
}

impl KvCache {
    /// Memory for `num_blocks` blocks of `block_size` tokens, stored as `dtype`.
    ///
    /// # Panics
    /// With [`KvDtype::Q8`] when `kv_dim` is not a multiple of [`Q8_GROUP`]; callers check
    /// that with [`KvCache::supports`] first.
    pub fn new(
        n_layers: usize,
        num_blocks: usize,
        block_size: usize,
        kv_dim: usize,
        dtype: KvDtype,
    ) -> KvCache {
        let n = num_blocks * block_size * kv_dim;
        let store = match dtype {
            KvDtype::F32 => Store::F32(
                (0..n_layers)
                    .map(|_| (Zeroed::new(n), Zeroed::new(n)))
                    .collect(),
            ),
            KvDtype::Q8 => {
                assert!(Self::supports(dtype, kv_dim, kv_dim));
                Store::Q8(
                    (0..n_layers)
                        .map(|_| (Q8Plane::new(n), Q8Plane::new(n)))
                        .collect(),
                )
            }
        };
        KvCache {
            block_size,
            kv_dim,
            store,
        }
    }

    /// Whether `dtype` can hold a model with heads of `head_dim` values (8-bit groups must not
    /// straddle heads).
    pub fn supports(dtype: KvDtype, kv_dim: usize, head_dim: usize) -> bool {
        match dtype {
            KvDtype::F32 => true,
            KvDtype::Q8 => head_dim.is_multiple_of(Q8_GROUP) && kv_dim.is_multiple_of(Q8_GROUP),
        }
    }

    /// Bytes held per block (keys and values, every layer).
    pub fn bytes_per_block(
        n_layers: usize,
        block_size: usize,
        kv_dim: usize,
        dtype: KvDtype,
    ) -> usize {
        (2.0 * (n_layers * block_size * kv_dim) as f64 * dtype.bytes_per_value()).ceil() as usize
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Values per slot (every KV head's).
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Layer `layer`'s keys and values when they are stored as f32 (slot after slot, block
    /// after block), for attention to read in whole slices.
    pub(crate) fn f32_planes(&self, layer: usize) -> Option<(&[f32], &[f32])> {
        match &self.store {
            Store::F32(layers) => layers.get(layer).map(|(k, v)| (&k[..], &v[..])),
            Store::Q8(_) => None,
        }
    }

    fn offset(&self, table: &[BlockId], pos: usize) -> usize {
        let block = table[pos / self.block_size] as usize;
        (block * self.block_size + pos % self.block_size) * self.kv_dim
    }

    /// Stores one token's keys and values at `pos` of the sequence with block `table`.
    pub fn write(&mut self, layer: usize, table: &[BlockId], pos: usize, k: &[f32], v: &[f32]) {
        let o = self.offset(table, pos);
        let d = self.kv_dim;
        match &mut self.store {
            Store::F32(layers) => {
                let (ks, vs) = &mut layers[layer];
                ks[o..o + d].copy_from_slice(k);
                vs[o..o + d].copy_from_slice(v);
            }
            Store::Q8(layers) => {
                let (ks, vs) = &mut layers[layer];
                ks.store(o, k);
                vs.store(o, v);
            }
        }
    }

    /// `q · k[head]` for the key at `pos`, where `head` is a range of the slot (one KV head).
    pub fn key_dot(
        &self,
        layer: usize,
        table: &[BlockId],
        pos: usize,
        head: Range<usize>,
        q: &[f32],
    ) -> f32 {
        let o = self.offset(table, pos);
        let at = o + head.start..o + head.end;
        match &self.store {
            Store::F32(layers) => super::matmul::dot(q, &layers[layer].0[at]),
            Store::Q8(layers) => {
                let p = &layers[layer].0;
                q.chunks_exact(Q8_GROUP)
                    .zip(p.q[at.clone()].chunks_exact(Q8_GROUP))
                    .enumerate()
                    .map(|(g, (qs, xs))| dot_i8(qs, xs) * p.scale[at.start / Q8_GROUP + g])
                    .sum()
            }
        }
    }

    /// `out += w · v[head]` for the value at `pos`.
    pub fn add_value(
        &self,
        layer: usize,
        table: &[BlockId],
        pos: usize,
        head: Range<usize>,
        w: f32,
        out: &mut [f32],
    ) {
        let o = self.offset(table, pos);
        let at = o + head.start..o + head.end;
        match &self.store {
            Store::F32(layers) => {
                for (o, v) in out.iter_mut().zip(&layers[layer].1[at]) {
                    *o += w * v;
                }
            }
            Store::Q8(layers) => {
                let p = &layers[layer].1;
                for (g, (os, xs)) in out
                    .chunks_exact_mut(Q8_GROUP)
                    .zip(p.q[at.clone()].chunks_exact(Q8_GROUP))
                    .enumerate()
                {
                    axpy_i8(os, w * p.scale[at.start / Q8_GROUP + g], xs);
                }
            }
        }
    }

    /// Copies block `from` into block `to` in every layer (copy-on-write).
    pub fn copy_block(&mut self, from: BlockId, to: BlockId) {
        let n = self.block_size * self.kv_dim;
        let (f, t) = (from as usize * n, to as usize * n);
        match &mut self.store {
            Store::F32(layers) => {
                for (ks, vs) in layers {
                    ks.copy_within(f..f + n, t);
                    vs.copy_within(f..f + n, t);
                }
            }
            Store::Q8(layers) => {
                for (ks, vs) in layers {
                    ks.copy_within(f, t, n);
                    vs.copy_within(f, t, n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2000) as f32 / 250.0 - 4.0)
            .collect()
    }

    #[test]
    fn q8_dot_and_value_sum_stay_within_half_a_step_of_f32() {
        let (kv_dim, hd) = (128, 64);
        let mut exact = KvCache::new(2, 4, 16, kv_dim, KvDtype::F32);
        let mut q8 = KvCache::new(2, 4, 16, kv_dim, KvDtype::Q8);
        let table = [3, 1];
        for pos in 0..20 {
            let (k, v) = (sample(kv_dim, pos), sample(kv_dim, pos + 100));
            exact.write(1, &table, pos as usize, &k, &v);
            q8.write(1, &table, pos as usize, &k, &v);
        }
        let q = sample(hd, 7);
        for pos in 0..20 {
            let head = hd..2 * hd;
            let (a, b) = (
                exact.key_dot(1, &table, pos, head.clone(), &q),
                q8.key_dot(1, &table, pos, head.clone(), &q),
            );
            // Each value is off by at most half a step (amax / 254); |q| sums bound the error.
            let bound: f32 = q.iter().map(|x| x.abs()).sum::<f32>() * 4.0 / 254.0;
            assert!((a - b).abs() <= bound, "pos {pos}: {a} vs {b}");
            let (mut oa, mut ob) = (vec![0f32; hd], vec![0f32; hd]);
            exact.add_value(1, &table, pos, head.clone(), 0.5, &mut oa);
            q8.add_value(1, &table, pos, head, 0.5, &mut ob);
            for (x, y) in oa.iter().zip(&ob) {
                assert!((x - y).abs() <= 0.5 * 4.0 / 254.0 + 1e-6, "{x} vs {y}");
            }
        }
    }

    #[test]
    fn copy_on_write_copies_q8_values_and_scales() {
        let mut kv = KvCache::new(1, 3, 4, 64, KvDtype::Q8);
        let k = sample(64, 1);
        kv.write(0, &[0], 2, &k, &k);
        kv.copy_block(0, 2);
        let q = sample(64, 9);
        let (a, b) = (
            kv.key_dot(0, &[0], 2, 0..64, &q),
            kv.key_dot(0, &[2], 2, 0..64, &q),
        );
        assert_eq!(a, b);
        assert_ne!(a, 0.0);
    }

    #[test]
    fn q8_blocks_take_under_a_third_of_f32_ones() {
        let f = KvCache::bytes_per_block(30, 16, 192, KvDtype::F32);
        let q = KvCache::bytes_per_block(30, 16, 192, KvDtype::Q8);
        assert_eq!(f, 2 * 30 * 16 * 192 * 4);
        assert_eq!(q, 2 * 30 * 16 * (192 + 192 / 32 * 4));
        assert!(q * 3 < f);
    }

    #[test]
    fn q8_needs_heads_in_whole_groups() {
        assert!(KvCache::supports(KvDtype::Q8, 192, 64));
        assert!(!KvCache::supports(KvDtype::Q8, 120, 40));
        assert!(KvCache::supports(KvDtype::F32, 120, 40));
    }
}
