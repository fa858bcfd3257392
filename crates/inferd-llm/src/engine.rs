//! The generation loop: each [`Engine::step`] asks the scheduler for a batch, makes the KV
//! copies it needs, runs the model once over every chunk, samples where a chunk reached its
//! sequence's end, and reports tokens and finished sequences. Synchronous; the server runs it
//! on a thread of its own.

use std::collections::HashMap;

use crate::blocks::{BlockManager, SeqId};
use crate::model::{KvCache, KvDtype, Llama, SeqChunk};
use crate::sampling::{Params, Sampler};
use crate::scheduler::{AddError, Config, NewSeq, Scheduler};

/// The engine's memory and batching limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Token slots per KV block (vLLM's default is 16).
    pub block_size: usize,
    /// KV blocks.
    pub num_blocks: usize,
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Tokens computed per step.
    pub max_num_batched_tokens: usize,
    /// How keys and values are stored.
    pub kv_dtype: KvDtype,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            num_blocks: 1024,
            max_num_seqs: 32,
            max_num_batched_tokens: 512,
            kv_dtype: KvDtype::F32,
        }
    }
}

/// A generation request.
#[derive(Clone)]
pub struct Request {
    /// Its id.
    pub id: SeqId,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// How to pick tokens.
    pub params: Params,
    /// Tokens that end the sequence (end-of-sequence ids).
    pub stop_tokens: Vec<u32>,
    /// Lower runs sooner.
    pub priority: i32,
    /// The most likely tokens to report at each position, when asked (OpenAI's `logprobs`).
    pub top_logprobs: Option<usize>,
    /// Structured output: the compiled grammar every token must keep to.
    pub grammar: Option<llguidance::Matcher>,
    /// Report each prompt token's log-probability with this many alternatives (OpenAI's
    /// `echo` with `logprobs`); the prompt is then computed whole, with no cached prefix.
    pub prompt_logprobs: Option<usize>,
}

/// A prompt token's log-probability given the tokens before it (none for the first).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptToken {
    /// The token.
    pub token: u32,
    /// Its log-probability; `None` at position 0.
    pub logprob: Option<f32>,
    /// The most likely tokens at its position.
    pub top: Vec<crate::sampling::Choice>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("prompt", &self.prompt.len())
            .field("max_new_tokens", &self.max_new_tokens)
            .field("params", &self.params)
            .field("grammar", &self.grammar.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a sequence ended: a stop token, or `max_new_tokens`.
pub use inferd_core::generate::Finish;

/// What a step produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new token of a sequence, with its log-probability.
    Token {
        /// The sequence.
        id: SeqId,
        /// The token.
        token: u32,
        /// Its log-probability.
        logprob: f32,
        /// The logits it was sampled from, when the engine keeps them (tests).
        logits: Option<Vec<f32>>,
        /// The most likely tokens at this position, when the request asked.
        top: Vec<crate::sampling::Choice>,
    },
    /// The sequence ended (its last token came in an earlier `Token` of this step).
    Finished {
        /// The sequence.
        id: SeqId,
        /// Why.
        finish: Finish,
    },
    /// Log-probabilities of prompt tokens, in order (when the request asked).
    PromptLogprobs {
        /// The sequence.
        id: SeqId,
        /// The tokens scored by this step.
        tokens: Vec<PromptToken>,
    },
    /// The sequence could not go on (its grammar failed) and was dropped.
    Failed {
        /// The sequence.
        id: SeqId,
        /// Why.
        reason: String,
    },
}

struct Live {
    sampler: Sampler,
    stop: Vec<u32>,
    top_logprobs: Option<usize>,
    grammar: Option<llguidance::Matcher>,
    prompt_len: usize,
    max_new: usize,
    prompt_logprobs: Option<usize>,
    /// Prompt positions already reported (a preempted sequence recomputes them).
    scored: usize,
    /// The logits after the previous chunk's last prompt token.
    prev_row: Option<Vec<f32>>,
}

/// A model with its KV memory and scheduler.
pub struct Engine {
    model: Llama,
    kv: KvCache,
    sched: Scheduler,
    live: HashMap<SeqId, Live>,
    /// Return each sampled token's logits in its event.
    pub keep_logits: bool,
}

impl Engine {
    /// An engine for `model` with `cfg`'s memory and limits.
    pub fn new(model: Llama, cfg: EngineConfig) -> Engine {
        let c = &model.cfg;
        let kv = KvCache::new(
            c.n_layers,
            cfg.num_blocks,
            cfg.block_size,
            c.kv_dim(),
            cfg.kv_dtype,
        );
        let sched = Scheduler::new(
            Config {
                max_num_seqs: cfg.max_num_seqs,
                max_num_batched_tokens: cfg.max_num_batched_tokens,
                max_model_len: c.context,
            },
            BlockManager::new(cfg.num_blocks, cfg.block_size),
        );
        Engine {
            model,
            kv,
            sched,
            live: HashMap::new(),
            keep_logits: false,
        }
    }

    /// The scheduler (block usage, queue lengths, preemptions).
    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    /// Queues a request, or says why it can never run.
    pub fn add(&mut self, r: Request) -> Result<(), AddError> {
        let prompt_len = r.prompt.len();
        self.sched.add(NewSeq {
            id: r.id,
            prompt: r.prompt,
            max_new_tokens: r.max_new_tokens,
            priority: r.priority,
            score_prompt: r.prompt_logprobs.is_some(),
        })?;
        self.live.insert(
            r.id,
            Live {
                sampler: Sampler::new(r.params),
                stop: r.stop_tokens,
                top_logprobs: r.top_logprobs,
                grammar: r.grammar,
                prompt_len,
                max_new: r.max_new_tokens,
                prompt_logprobs: r.prompt_logprobs,
                scored: 0,
                prev_row: None,
            },
        );
        Ok(())
    }

    /// Stops a sequence now and frees its blocks.
    pub fn cancel(&mut self, id: SeqId) {
        self.sched.finish(id);
        self.live.remove(&id);
    }

    /// Whether any sequence is running or waiting.
    pub fn has_work(&self) -> bool {
        self.sched.num_running() + self.sched.num_waiting() > 0
    }

    /// Runs one step.
    pub fn step(&mut self) -> Vec<Event> {
        self.step_counted().0
    }

    /// Runs one step: its events and the tokens it computed.
    pub fn step_counted(&mut self) -> (Vec<Event>, u64) {
        let batch = self.sched.schedule();
        let computed = batch.num_tokens() as u64;
        for c in &batch.copies {
            self.kv.copy_block(c.from, c.to);
        }
        let tables: Vec<Vec<u32>> = batch
            .chunks
            .iter()
            .map(|c| self.sched.blocks.blocks(c.seq).unwrap_or_default().to_vec())
            .collect();
        let chunks: Vec<SeqChunk<'_>> = batch
            .chunks
            .iter()
            .zip(&tables)
            .map(|(c, t)| SeqChunk {
                table: t,
                start: c.start,
                tokens: &c.tokens,
                logits: c.sample,
                all_logits: self
                    .live
                    .get(&c.seq)
                    .is_some_and(|l| l.prompt_logprobs.is_some() && c.start < l.prompt_len),
            })
            .collect();
        let logits = self.model.forward(&mut self.kv, &chunks);
        let mut events = Vec::new();
        let mut sampled = Vec::new();
        let mut failed = Vec::new();
        let mut empty = Vec::new();
        for (c, l) in batch.chunks.iter().zip(logits) {
            let (Some(mut l), Some(live)) = (l, self.live.get_mut(&c.seq)) else {
                continue;
            };
            if let Some(k) = live.prompt_logprobs
                && c.start < live.prompt_len
            {
                let tokens = score_prompt(live, c.start, &c.tokens, &l, k);
                if !tokens.is_empty() {
                    events.push(Event::PromptLogprobs { id: c.seq, tokens });
                }
                if !c.sample {
                    continue;
                }
                let vocab = l.len() / c.tokens.len();
                l.drain(..l.len() - vocab);
            }
            if live.max_new == 0 {
                // Only the prompt was wanted (scoring).
                empty.push(c.seq);
                continue;
            }
            let kept = self.keep_logits.then(|| l.clone());
            // Alternatives from the model's own distribution, before any penalty.
            let top = live
                .top_logprobs
                .map(|n| crate::sampling::top_logprobs(&l, n))
                .unwrap_or_default();
            if let Some(g) = live.grammar.as_mut()
                && let Err(reason) = crate::grammar::mask(g, &mut l)
            {
                failed.push((c.seq, reason));
                continue;
            }
            let history = self.sched.tokens(c.seq).unwrap_or_default();
            let choice = live.sampler.sample(&mut l, history);
            // The grammar is done when it accepts nothing more: the sequence ends there.
            let mut grammar_done = false;
            if let Some(g) = live.grammar.as_mut() {
                if let Err(e) = g.consume_token(choice.token) {
                    failed.push((c.seq, format!("the output grammar failed: {e}")));
                    continue;
                }
                grammar_done = g.is_stopped();
            }
            if grammar_done {
                live.stop.push(choice.token);
            }
            sampled.push((c.seq, choice.token));
            events.push(Event::Token {
                id: c.seq,
                token: choice.token,
                logprob: choice.logprob,
                logits: kept,
                top,
            });
        }
        self.sched.complete(&batch, &sampled);
        for (id, reason) in failed {
            self.cancel(id);
            events.push(Event::Failed { id, reason });
        }
        for id in empty {
            self.cancel(id);
            events.push(Event::Finished {
                id,
                finish: Finish::Length,
            });
        }
        for (id, token) in sampled {
            let stop = self.live.get(&id).is_some_and(|l| l.stop.contains(&token));
            let finish = if stop {
                Some(Finish::Stop)
            } else if self.sched.at_limit(id) {
                Some(Finish::Length)
            } else {
                None
            };
            if let Some(finish) = finish {
                self.cancel(id);
                events.push(Event::Finished { id, finish });
            }
        }
        (events, computed)
    }

    /// Runs until every queued sequence has finished: each sequence's tokens and finish.
    pub fn run(&mut self) -> HashMap<SeqId, (Vec<u32>, Finish)> {
        let mut out: HashMap<SeqId, (Vec<u32>, Finish)> = HashMap::new();
        while self.has_work() {
            for e in self.step() {
                match e {
                    Event::Token { id, token, .. } => out
                        .entry(id)
                        .or_insert((Vec::new(), Finish::Length))
                        .0
                        .push(token),
                    Event::Finished { id, finish } => {
                        out.entry(id).or_insert((Vec::new(), finish)).1 = finish
                    }
                    Event::Failed { id, .. } => {
                        out.remove(&id);
                    }
                    Event::PromptLogprobs { .. } => {}
                }
            }
        }
        out
    }
}

/// The log-probabilities of a prompt chunk's tokens (starting at `start`, with one logits row
/// per token in `rows`): each token scored by the row before it, the chunk's first by the
/// previous chunk's last row; positions already reported are skipped.
fn score_prompt(
    live: &mut Live,
    start: usize,
    tokens: &[u32],
    rows: &[f32],
    k: usize,
) -> Vec<PromptToken> {
    let vocab = rows.len() / tokens.len().max(1);
    let mut out = Vec::new();
    for (j, &t) in tokens.iter().enumerate() {
        let pos = start + j;
        if pos >= live.prompt_len {
            break;
        }
        let before = if j == 0 {
            live.prev_row.take()
        } else {
            Some(rows[(j - 1) * vocab..j * vocab].to_vec())
        };
        if pos < live.scored {
            continue;
        }
        out.push(match before {
            Some(d) if pos > 0 => PromptToken {
                token: t,
                logprob: crate::sampling::log_softmax(&d).get(t as usize).copied(),
                top: crate::sampling::top_logprobs(&d, k),
            },
            _ => PromptToken {
                token: t,
                logprob: None,
                top: Vec::new(),
            },
        });
        live.scored = pos + 1;
    }
    live.prev_row = Some(rows[rows.len() - vocab..].to_vec());
    out
}
