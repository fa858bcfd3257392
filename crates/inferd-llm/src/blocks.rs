//! The KV block manager. KV memory is cut into blocks of `block_size` token slots; a sequence
//! holds a block table (its blocks in order), so its memory grows a block at a time and waste is
//! under one block per sequence (vLLM's PagedAttention). Blocks are reference-counted: forked
//! sequences (`n > 1`) share their prompt's blocks, and a shared block is copied before it is
//! written (copy-on-write).
//!
//! The prefix cache: once a block is full its content is fixed, so it is keyed by a hash of its
//! tokens chained to the hash of the blocks before it (equal keys mean equal prefixes). A new
//! sequence whose prompt starts with cached blocks takes them instead of recomputing them. A
//! cached block nobody uses stays cached until its memory is needed, then goes least recently
//! used first.
//!
//! Pure and synchronous: it hands out block ids; the model owns the memory behind them.

use std::collections::{BTreeMap, HashMap};

/// A block's index in the KV memory.
pub type BlockId = u32;
/// A sequence's id.
pub type SeqId = u64;

/// Why a request for blocks failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Not enough free (or evictable) blocks; nothing changed.
    #[error("out of KV blocks: {needed} needed, {available} available")]
    OutOfBlocks {
        /// Blocks the call needed.
        needed: usize,
        /// Blocks that were free or evictable.
        available: usize,
    },
    /// The sequence has no block table.
    #[error("sequence {0} has no blocks")]
    UnknownSeq(SeqId),
    /// The sequence already has a block table.
    #[error("sequence {0} already has blocks")]
    DuplicateSeq(SeqId),
}

/// A KV copy the model must make before writing: block `from`'s slots into block `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copy {
    /// The shared block.
    pub from: BlockId,
    /// The sequence's own copy.
    pub to: BlockId,
}

#[derive(Debug, Clone, Default)]
struct Table {
    blocks: Vec<BlockId>,
    /// Token slots in use.
    len: usize,
    /// Chain hashes of the full blocks registered in the prefix cache, in order.
    hashes: Vec<u64>,
}

/// Blocks, block tables and the prefix cache.
#[derive(Debug, Clone)]
pub struct BlockManager {
    block_size: usize,
    refs: Vec<u32>,
    free: Vec<BlockId>,
    /// Cached full blocks by chain hash.
    by_hash: HashMap<u64, BlockId>,
    /// Each cached block's hash.
    hash_of: HashMap<BlockId, u64>,
    /// Cached blocks nobody references, by last use (oldest first).
    evictable: BTreeMap<u64, BlockId>,
    last_use: HashMap<BlockId, u64>,
    clock: u64,
    tables: HashMap<SeqId, Table>,
    hits: u64,
    lookups: u64,
}

/// The chain hash of a full block of `tokens` after a prefix whose hash is `parent` (FNV-1a
/// over the parent hash and the token ids: deterministic across runs and replicas, and cheap;
/// collisions are not a security boundary here since a replica only shares its own cache).
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    parent.to_le_bytes().into_iter().for_each(&mut eat);
    for t in tokens {
        t.to_le_bytes().into_iter().for_each(&mut eat);
    }
    h
}

impl BlockManager {
    /// `num_blocks` blocks of `block_size` token slots each.
    pub fn new(num_blocks: usize, block_size: usize) -> BlockManager {
        assert!(block_size > 0, "block_size must be positive");
        BlockManager {
            block_size,
            refs: vec![0; num_blocks],
            // Popped from the end: block 0 first.
            free: (0..num_blocks as BlockId).rev().collect(),
            by_hash: HashMap::new(),
            hash_of: HashMap::new(),
            evictable: BTreeMap::new(),
            last_use: HashMap::new(),
            clock: 0,
            tables: HashMap::new(),
            hits: 0,
            lookups: 0,
        }
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// All blocks.
    pub fn num_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that an allocation can take now (free, or cached and unused).
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// The fraction of blocks some sequence holds.
    pub fn usage(&self) -> f64 {
        let used = self.refs.iter().filter(|&&r| r > 0).count();
        used as f64 / self.refs.len().max(1) as f64
    }

    /// Token slots held but not filled, over slots held: the memory paging wastes.
    pub fn waste(&self) -> f64 {
        let held: usize =
            self.tables.values().map(|t| t.blocks.len()).sum::<usize>() * self.block_size;
        let filled: usize = self.tables.values().map(|t| t.len).sum();
        if held == 0 {
            0.0
        } else {
            (held - filled) as f64 / held as f64
        }
    }

    /// Prefix-cache (lookups, hits), in blocks, so far.
    pub fn prefix_counts(&self) -> (u64, u64) {
        (self.lookups, self.hits)
    }

    /// Blocks some sequence holds.
    pub fn used(&self) -> usize {
        self.refs.iter().filter(|&&r| r > 0).count()
    }

    /// Prefix-cache hits over lookups, in blocks.
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.lookups == 0 {
            0.0
        } else {
            self.hits as f64 / self.lookups as f64
        }
    }

    /// `seq`'s block table.
    pub fn blocks(&self, seq: SeqId) -> Option<&[BlockId]> {
        self.tables.get(&seq).map(|t| t.blocks.as_slice())
    }

    /// Token slots `seq` has filled.
    pub fn len(&self, seq: SeqId) -> Option<usize> {
        self.tables.get(&seq).map(|t| t.len)
    }

    /// Whether `seq` has a block table.
    pub fn contains(&self, seq: SeqId) -> bool {
        self.tables.contains_key(&seq)
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    fn touch(&mut self, b: BlockId) {
        self.clock += 1;
        if let Some(old) = self.last_use.insert(b, self.clock) {
            self.evictable.remove(&old);
        }
    }

    fn take_block(&mut self) -> Option<BlockId> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (&stamp, &b) = self.evictable.iter().next()?;
                self.evictable.remove(&stamp);
                self.last_use.remove(&b);
                if let Some(h) = self.hash_of.remove(&b) {
                    self.by_hash.remove(&h);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    fn release(&mut self, b: BlockId) {
        let r = &mut self.refs[b as usize];
        debug_assert!(*r > 0, "block {b} released more often than taken");
        *r = r.saturating_sub(1);
        if *r > 0 {
            return;
        }
        if self.hash_of.contains_key(&b) {
            self.clock += 1;
            self.last_use.insert(b, self.clock);
            self.evictable.insert(self.clock, b);
        } else {
            self.free.push(b);
        }
    }

    /// The cached blocks a prompt of `tokens` starts with (at most all but its last token, so
    /// the model computes at least one position and has logits to sample from).
    fn cached_prefix(&self, tokens: &[u32]) -> Vec<(u64, BlockId)> {
        let usable = tokens.len().saturating_sub(1) / self.block_size;
        let mut parent = 0;
        let mut out = Vec::new();
        for chunk in tokens.chunks_exact(self.block_size).take(usable) {
            let h = chain_hash(parent, chunk);
            match self.by_hash.get(&h) {
                Some(&b) => out.push((h, b)),
                None => break,
            }
            parent = h;
        }
        out
    }

    /// Whether a prompt of `tokens` can get its blocks now.
    pub fn can_allocate(&self, tokens: &[u32]) -> bool {
        let cached = self.cached_prefix(tokens);
        // Cached blocks that are evictable now stop being available once taken.
        let reused_evictable = cached
            .iter()
            .filter(|(_, b)| self.refs[*b as usize] == 0)
            .count();
        let fresh = self.blocks_for(tokens.len()) - cached.len();
        fresh + reused_evictable <= self.available()
    }

    /// Gives `seq` blocks for its prompt `tokens`, reusing cached prefix blocks: the number of
    /// prompt tokens whose KV is already there (a multiple of the block size).
    pub fn allocate(&mut self, seq: SeqId, tokens: &[u32]) -> Result<usize, BlockError> {
        if self.tables.contains_key(&seq) {
            return Err(BlockError::DuplicateSeq(seq));
        }
        if !self.can_allocate(tokens) {
            return Err(BlockError::OutOfBlocks {
                needed: self.blocks_for(tokens.len()),
                available: self.available(),
            });
        }
        let cached = self.cached_prefix(tokens);
        self.lookups += (tokens.len().saturating_sub(1) / self.block_size) as u64;
        self.hits += cached.len() as u64;
        let mut t = Table::default();
        for &(h, b) in &cached {
            self.refs[b as usize] += 1;
            self.touch(b);
            t.blocks.push(b);
            t.hashes.push(h);
        }
        let need = self.blocks_for(tokens.len()) - cached.len();
        for _ in 0..need {
            let b = self.take_block().expect("checked by can_allocate");
            t.blocks.push(b);
        }
        let reused = cached.len() * self.block_size;
        t.len = reused;
        self.tables.insert(seq, t);
        Ok(reused)
    }

    /// Marks the next `n` token slots of `seq` filled, taking blocks as needed, and makes its
    /// last block its own if it is shared: the copies the model must make first.
    pub fn append(&mut self, seq: SeqId, n: usize) -> Result<Vec<Copy>, BlockError> {
        let t = self.tables.get(&seq).ok_or(BlockError::UnknownSeq(seq))?;
        let len = t.len + n;
        let need = self.blocks_for(len).saturating_sub(t.blocks.len());
        // The block the first new slot lands in, if the table already has it and it is shared.
        let first = t.len / self.block_size;
        let cow = n > 0
            && t.blocks
                .get(first)
                .is_some_and(|&b| self.refs[b as usize] > 1);
        if need + usize::from(cow) > self.free.len() + self.evictable.len() {
            return Err(BlockError::OutOfBlocks {
                needed: need + usize::from(cow),
                available: self.available(),
            });
        }
        let mut copies = Vec::new();
        if cow {
            let from = self.tables[&seq].blocks[first];
            let to = self.take_block().expect("counted above");
            self.refs[from as usize] -= 1;
            let t = self.tables.get_mut(&seq).expect("present");
            t.blocks[first] = to;
            t.hashes.truncate(first);
            copies.push(Copy { from, to });
        }
        for _ in 0..need {
            let b = self.take_block().expect("counted above");
            self.tables.get_mut(&seq).expect("present").blocks.push(b);
        }
        self.tables.get_mut(&seq).expect("present").len = len;
        Ok(copies)
    }

    /// Registers `seq`'s full blocks in the prefix cache; `tokens` are its tokens so far (at
    /// least the filled slots).
    pub fn commit(&mut self, seq: SeqId, tokens: &[u32]) {
        let Some(t) = self.tables.get(&seq) else {
            return;
        };
        let full = t.len.min(tokens.len()) / self.block_size;
        let mut parent = t.hashes.last().copied().unwrap_or(0);
        let start = t.hashes.len();
        let mut new = Vec::new();
        for i in start..full {
            let h = chain_hash(
                parent,
                &tokens[i * self.block_size..(i + 1) * self.block_size],
            );
            new.push((i, h));
            parent = h;
        }
        for (i, h) in new {
            let b = self.tables[&seq].blocks[i];
            // A block another sequence already cached under this hash stays the cached one.
            if !self.by_hash.contains_key(&h) && !self.hash_of.contains_key(&b) {
                self.by_hash.insert(h, b);
                self.hash_of.insert(b, h);
            }
            self.tables.get_mut(&seq).expect("present").hashes.push(h);
        }
    }

    /// Gives `child` the same blocks as `parent` (shared until written).
    pub fn fork(&mut self, parent: SeqId, child: SeqId) -> Result<(), BlockError> {
        if self.tables.contains_key(&child) {
            return Err(BlockError::DuplicateSeq(child));
        }
        let t = self
            .tables
            .get(&parent)
            .ok_or(BlockError::UnknownSeq(parent))?
            .clone();
        for &b in &t.blocks {
            self.refs[b as usize] += 1;
        }
        self.tables.insert(child, t);
        Ok(())
    }

    /// Frees `seq`'s blocks (cached ones stay cached until evicted).
    pub fn free(&mut self, seq: SeqId) {
        if let Some(t) = self.tables.remove(&seq) {
            for b in t.blocks.into_iter().rev() {
                self.release(b);
            }
        }
    }

    /// Checks the bookkeeping: every block is free, cached-unused, or referenced exactly as
    /// often as the tables hold it. For tests.
    pub fn check(&self) -> Result<(), String> {
        let mut held = vec![0u32; self.refs.len()];
        for t in self.tables.values() {
            for &b in &t.blocks {
                held[b as usize] += 1;
            }
        }
        for (b, (&r, &h)) in self.refs.iter().zip(&held).enumerate() {
            if r != h {
                return Err(format!("block {b}: {r} references, {h} in tables"));
            }
        }
        let mut seen = vec![false; self.refs.len()];
        for &b in self.free.iter().chain(self.evictable.values()) {
            if std::mem::replace(&mut seen[b as usize], true) {
                return Err(format!("block {b} listed twice as available"));
            }
            if self.refs[b as usize] != 0 {
                return Err(format!("block {b} available while referenced"));
            }
        }
        let unlisted = (0..self.refs.len())
            .filter(|&b| self.refs[b] == 0 && !seen[b])
            .count();
        if unlisted > 0 {
            return Err(format!("{unlisted} unreferenced blocks leaked"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "blocks_tests.rs"]
mod tests;
