//! Iteration-level continuous batching. Each step the scheduler picks which sequences run and
//! how many of their tokens: every running sequence first (a decode is one token; a prompt
//! still being prefilled takes a chunk of what the token budget leaves), then waiting
//! sequences in priority order while the budget, `max_num_seqs` and the KV blocks allow. A long
//! prompt is cut into chunks, so it cannot stall the decodes of the others. When blocks run
//! out, the lowest-priority, latest-arrived running sequence is preempted: its blocks are freed
//! and it waits to be recomputed from its tokens (prompt and generated so far). Pure: the
//! engine runs the model on the [`Batch`] and reports back.

use std::collections::HashMap;

use crate::blocks::{BlockError, BlockManager, Copy, SeqId};

/// Limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Tokens computed in one step, over all sequences.
    pub max_num_batched_tokens: usize,
    /// The model's context length: prompt plus new tokens.
    pub max_model_len: usize,
}

/// A request to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSeq {
    /// Its id (unique among live sequences).
    pub id: SeqId,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Lower runs sooner; equal priorities are first come, first served.
    pub priority: i32,
    /// Compute every prompt token (no prefix-cache reuse), for prompt log-probabilities.
    pub score_prompt: bool,
}

/// Why a sequence was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    /// An empty prompt.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// Prompt and new tokens exceed the context.
    #[error(
        "the prompt ({prompt} tokens) and max_tokens ({new}) exceed the model's context of {context} tokens"
    )]
    TooLong {
        /// Prompt tokens.
        prompt: usize,
        /// New tokens asked for.
        new: usize,
        /// The context length.
        context: usize,
    },
    /// The sequence could never fit the KV memory, even alone.
    #[error("the sequence needs {needed} KV blocks and the cache has {total}")]
    NeverFits {
        /// Blocks it would need at its longest.
        needed: usize,
        /// Blocks in the cache.
        total: usize,
    },
    /// The id is taken.
    #[error("sequence {0} already exists")]
    Duplicate(SeqId),
}

/// One sequence's share of a step: compute `tokens` at positions `start..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The sequence.
    pub seq: SeqId,
    /// The first position computed.
    pub start: usize,
    /// The token ids at `start..start + tokens.len()`.
    pub tokens: Vec<u32>,
    /// Whether this chunk reaches the sequence's last token, so the next token is sampled
    /// from its logits.
    pub sample: bool,
}

/// What one step computes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The chunks, one per sequence.
    pub chunks: Vec<Chunk>,
    /// KV copies to make before computing (copy-on-write).
    pub copies: Vec<Copy>,
    /// Sequences preempted in this step (their KV is gone; they will be recomputed).
    pub preempted: Vec<SeqId>,
}

impl Batch {
    /// Tokens computed in the step.
    pub fn num_tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.tokens.len()).sum()
    }
}

#[derive(Debug, Clone)]
struct Seq {
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose KV is computed (or being computed by the step in flight).
    computed: usize,
    max_new: usize,
    priority: i32,
    arrival: u64,
    running: bool,
    score_prompt: bool,
}

impl Seq {
    fn order(&self) -> (i32, u64) {
        (self.priority, self.arrival)
    }
}

/// The scheduler and the KV blocks it hands out.
#[derive(Debug, Clone)]
pub struct Scheduler {
    cfg: Config,
    /// The KV blocks (the engine reads block tables from it).
    pub blocks: BlockManager,
    seqs: HashMap<SeqId, Seq>,
    arrivals: u64,
    preemptions: u64,
}

impl Scheduler {
    /// A scheduler with `cfg` over `blocks`.
    pub fn new(cfg: Config, blocks: BlockManager) -> Scheduler {
        Scheduler {
            cfg,
            blocks,
            seqs: HashMap::new(),
            arrivals: 0,
            preemptions: 0,
        }
    }

    /// Queues a sequence, or says why it can never run.
    pub fn add(&mut self, s: NewSeq) -> Result<(), AddError> {
        if s.prompt.is_empty() {
            return Err(AddError::EmptyPrompt);
        }
        if self.seqs.contains_key(&s.id) {
            return Err(AddError::Duplicate(s.id));
        }
        let longest = s.prompt.len() + s.max_new_tokens;
        if longest > self.cfg.max_model_len {
            return Err(AddError::TooLong {
                prompt: s.prompt.len(),
                new: s.max_new_tokens,
                context: self.cfg.max_model_len,
            });
        }
        let needed = longest.div_ceil(self.blocks.block_size());
        if needed > self.blocks.num_blocks() {
            return Err(AddError::NeverFits {
                needed,
                total: self.blocks.num_blocks(),
            });
        }
        self.arrivals += 1;
        self.seqs.insert(
            s.id,
            Seq {
                prompt_len: s.prompt.len(),
                tokens: s.prompt,
                computed: 0,
                max_new: s.max_new_tokens,
                priority: s.priority,
                arrival: self.arrivals,
                running: false,
                score_prompt: s.score_prompt,
            },
        );
        Ok(())
    }

    /// Sequences running.
    pub fn num_running(&self) -> usize {
        self.seqs.values().filter(|s| s.running).count()
    }

    /// Sequences waiting (new or preempted).
    pub fn num_waiting(&self) -> usize {
        self.seqs.values().filter(|s| !s.running).count()
    }

    /// Preemptions so far.
    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// `seq`'s tokens: prompt, then generated.
    pub fn tokens(&self, seq: SeqId) -> Option<&[u32]> {
        self.seqs.get(&seq).map(|s| s.tokens.as_slice())
    }

    /// How many tokens `seq` has generated.
    pub fn generated(&self, seq: SeqId) -> Option<usize> {
        self.seqs.get(&seq).map(|s| s.tokens.len() - s.prompt_len)
    }

    /// Whether `seq` generated its `max_new_tokens`.
    pub fn at_limit(&self, seq: SeqId) -> bool {
        self.seqs
            .get(&seq)
            .is_some_and(|s| s.tokens.len() - s.prompt_len >= s.max_new)
    }

    fn by_order(&self, running: bool) -> Vec<SeqId> {
        let mut v: Vec<(i32, u64, SeqId)> = self
            .seqs
            .iter()
            .filter(|(_, s)| s.running == running)
            .map(|(&id, s)| (s.order().0, s.order().1, id))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, _, id)| id).collect()
    }

    fn preempt(&mut self, seq: SeqId) {
        self.blocks.free(seq);
        if let Some(s) = self.seqs.get_mut(&seq) {
            s.running = false;
            s.computed = 0;
        }
        self.preemptions += 1;
    }

    /// The next step's work.
    pub fn schedule(&mut self) -> Batch {
        let mut batch = Batch::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut running = self.by_order(true);
        let mut i = 0;
        while i < running.len() && budget > 0 {
            let id = running[i];
            let s = &self.seqs[&id];
            let n = (s.tokens.len() - s.computed).min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            match self.blocks.append(id, n) {
                Ok(copies) => {
                    batch.copies.extend(copies);
                    let s = self.seqs.get_mut(&id).expect("running");
                    batch.chunks.push(Chunk {
                        seq: id,
                        start: s.computed,
                        tokens: s.tokens[s.computed..s.computed + n].to_vec(),
                        sample: s.computed + n == s.tokens.len(),
                    });
                    s.computed += n;
                    budget -= n;
                    i += 1;
                }
                Err(BlockError::OutOfBlocks { .. }) => {
                    // The last in order gives way (possibly this one itself).
                    let victim = running.pop().expect("non-empty");
                    self.preempt(victim);
                    batch.preempted.push(victim);
                    batch.chunks.retain(|c| c.seq != victim);
                }
                Err(_) => i += 1,
            }
        }
        if !batch.preempted.is_empty() {
            // Nothing new starts in a step that had to preempt.
            return batch;
        }
        for (live, id) in (running.len()..).zip(self.by_order(false)) {
            if budget == 0 || live >= self.cfg.max_num_seqs {
                break;
            }
            let (tokens, scored) = (&self.seqs[&id].tokens, self.seqs[&id].score_prompt);
            if !self.blocks.can_allocate(tokens) {
                break; // first come, first served: nobody overtakes the head
            }
            // A scored prompt looks up no cached prefix: every position gets its logits.
            let lookup = if scored { &tokens[..0] } else { &tokens[..] };
            let reused = match self.blocks.allocate(id, lookup) {
                Ok(r) => r,
                Err(_) => break,
            };
            let n = (tokens.len() - reused).min(budget);
            if self.blocks.append(id, n).is_err() {
                self.blocks.free(id);
                break;
            }
            let s = self.seqs.get_mut(&id).expect("waiting");
            s.running = true;
            s.computed = reused + n;
            batch.chunks.push(Chunk {
                seq: id,
                start: reused,
                tokens: s.tokens[reused..reused + n].to_vec(),
                sample: reused + n == s.tokens.len(),
            });
            budget -= n;
        }
        batch
    }

    /// After the step ran: registers computed blocks in the prefix cache and appends the
    /// sampled tokens (`(seq, token)` for each chunk that had `sample`).
    pub fn complete(&mut self, batch: &Batch, sampled: &[(SeqId, u32)]) {
        for c in &batch.chunks {
            if let Some(s) = self.seqs.get(&c.seq) {
                let tokens = s.tokens.clone();
                self.blocks.commit(c.seq, &tokens);
            }
        }
        for &(id, t) in sampled {
            if let Some(s) = self.seqs.get_mut(&id) {
                s.tokens.push(t);
            }
        }
    }

    /// Removes a finished or cancelled sequence, freeing its blocks at once.
    pub fn finish(&mut self, seq: SeqId) {
        self.blocks.free(seq);
        self.seqs.remove(&seq);
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
