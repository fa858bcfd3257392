//! The paged KV memory: per layer, `num_blocks` blocks of `block_size` slots, each slot one
//! token's keys (or values) for every KV head. Block ids come from the block manager.

use crate::blocks::BlockId;

/// Keys and values of every layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    block_size: usize,
    kv_dim: usize,
    /// Per layer: keys, then values, each `num_blocks * block_size * kv_dim`.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
}

impl KvCache {
    /// Memory for `num_blocks` blocks of `block_size` tokens.
    pub fn new(n_layers: usize, num_blocks: usize, block_size: usize, kv_dim: usize) -> KvCache {
        let n = num_blocks * block_size * kv_dim;
        KvCache {
            block_size,
            kv_dim,
            layers: (0..n_layers)
                .map(|_| (vec![0.0; n], vec![0.0; n]))
                .collect(),
        }
    }

    /// Bytes held per block (keys and values, every layer).
    pub fn bytes_per_block(n_layers: usize, block_size: usize, kv_dim: usize) -> usize {
        2 * n_layers * block_size * kv_dim * std::mem::size_of::<f32>()
    }

    fn offset(&self, table: &[BlockId], pos: usize) -> usize {
        let block = table[pos / self.block_size] as usize;
        (block * self.block_size + pos % self.block_size) * self.kv_dim
    }

    /// Stores one token's keys and values at `pos` of the sequence with block `table`.
    pub fn write(&mut self, layer: usize, table: &[BlockId], pos: usize, k: &[f32], v: &[f32]) {
        let o = self.offset(table, pos);
        let (ks, vs) = &mut self.layers[layer];
        ks[o..o + self.kv_dim].copy_from_slice(k);
        vs[o..o + self.kv_dim].copy_from_slice(v);
    }

    /// The keys and values at `pos`.
    pub fn read(&self, layer: usize, table: &[BlockId], pos: usize) -> (&[f32], &[f32]) {
        let o = self.offset(table, pos);
        let (ks, vs) = &self.layers[layer];
        (&ks[o..o + self.kv_dim], &vs[o..o + self.kv_dim])
    }

    /// Copies block `from` into block `to` in every layer (copy-on-write).
    pub fn copy_block(&mut self, from: BlockId, to: BlockId) {
        let n = self.block_size * self.kv_dim;
        let (f, t) = (from as usize * n, to as usize * n);
        for (ks, vs) in &mut self.layers {
            ks.copy_within(f..f + n, t);
            vs.copy_within(f..f + n, t);
        }
    }
}
