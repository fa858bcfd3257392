//! The engine on a thread of its own, behind [`TextGenerator`]: requests come in through a
//! bounded queue (full: 429), each step's tokens go out to their streams as whole characters,
//! stop strings are cut out (text that might be the start of one is held back until it is
//! not), and a stream whose receiver was dropped (a client that went away) is cancelled, its
//! KV blocks freed, before the next step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use inferd_core::generate::{
    ChatFeatures, ChatOptions, Finish as GenFinish, GenEvent, GenStream, GenerateError,
    GenerateRequest, GeneratorStats, Prompt, PromptLogprob, TextGenerator, TokenLogprob,
};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::engine::{Engine, EngineConfig, Event, Request};
use crate::grammar::Grammars;
use crate::model::Llama;
use crate::sampling::Params;
use crate::tokenizer::{Detokenizer, TextTokenizer};

struct Job {
    out: UnboundedSender<GenEvent>,
    detok: Detokenizer,
    /// Text decoded but not sent yet (it may begin a stop string).
    pending: String,
    stops: Vec<String>,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// Log-probabilities of tokens whose text has not been sent yet (when asked).
    logprobs: Vec<TokenLogprob>,
}

impl Job {
    fn send_text(&mut self, text: String) {
        if !text.is_empty() || !self.logprobs.is_empty() {
            let _ = self.out.send(GenEvent::Text {
                text,
                logprobs: std::mem::take(&mut self.logprobs),
            });
        }
    }

    /// Takes `piece`; true when a stop string ended the text.
    fn push(&mut self, piece: &str) -> bool {
        self.pending.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let text = self.pending[..at].to_string();
            self.pending.clear();
            self.send_text(text);
            return true;
        }
        // Hold back the longest tail that could still grow into a stop string.
        let hold = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&n| s.is_char_boundary(n) && self.pending.ends_with(&s[..n]))
                    .max()
            })
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let text: String = self.pending.drain(..cut).collect();
        self.send_text(text);
        false
    }

    fn done(&mut self, finish: GenFinish) {
        let rest = std::mem::take(&mut self.pending);
        self.send_text(rest);
        let _ = self.out.send(GenEvent::Done {
            finish,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        });
    }
}

struct Add {
    req: Request,
    job: Job,
}

/// Settings of a served LLM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The engine's memory and batching.
    pub engine: EngineConfig,
    /// Requests waiting to start, past which new ones are refused (429).
    pub max_waiting: usize,
    /// Whether chat output starts with `<think>...</think>`; `None`: when the vocabulary
    /// has those tokens.
    pub reasoning: Option<bool>,
}

/// A model served by its engine thread.
pub struct LlmService {
    tx: Mutex<Option<SyncSender<Add>>>,
    tok: Arc<TextTokenizer>,
    context: usize,
    cfg: ServiceConfig,
    next: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<Mutex<GeneratorStats>>,
    grammars: Grammars,
    features: ChatFeatures,
}

impl std::fmt::Debug for LlmService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmService")
            .field("context", &self.context)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn publish(engine: &Engine, stats: &Mutex<GeneratorStats>, prompt: u64, generated: u64) {
    let s = engine.scheduler();
    let (queries, hits) = s.blocks.prefix_counts();
    let mut g = stats.lock().unwrap_or_else(|p| p.into_inner());
    *g = GeneratorStats {
        running: s.num_running(),
        waiting: s.num_waiting(),
        kv_blocks_used: s.blocks.used(),
        kv_blocks_total: s.blocks.num_blocks(),
        kv_waste: s.blocks.waste(),
        prefix_queries: queries,
        prefix_hits: hits,
        preemptions: s.preemptions(),
        prompt_tokens: g.prompt_tokens + prompt,
        generation_tokens: g.generation_tokens + generated,
    };
}

fn run(
    mut engine: Engine,
    rx: Receiver<Add>,
    tok: Arc<TextTokenizer>,
    max_waiting: usize,
    stats: Arc<Mutex<GeneratorStats>>,
) {
    let mut jobs: HashMap<u64, Job> = HashMap::new();
    loop {
        publish(&engine, &stats, 0, 0);
        // Idle: wait for work; busy: take what arrived between steps.
        let mut incoming = Vec::new();
        if !engine.has_work() {
            match rx.recv() {
                Ok(a) => incoming.push(a),
                Err(_) => return,
            }
        }
        // The scheduler's queue is bounded too: past `max_waiting`, requests stay in the
        // channel, which fills, and new ones get 429.
        while engine.scheduler().num_waiting() + incoming.len() < max_waiting {
            match rx.try_recv() {
                Ok(a) => incoming.push(a),
                Err(_) => break,
            }
        }
        for a in incoming {
            let id = a.req.id;
            let job = a.job;
            match engine.add(a.req) {
                Ok(()) => {
                    jobs.insert(id, job);
                }
                Err(e) => {
                    let _ = job.out.send(GenEvent::Failed(e.to_string()));
                }
            }
        }
        // Clients that went away: free their blocks now.
        let gone: Vec<u64> = jobs
            .iter()
            .filter(|(_, j)| j.out.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            engine.cancel(id);
            jobs.remove(&id);
        }
        if !engine.has_work() {
            continue;
        }
        let (events, computed) = engine.step_counted();
        let sampled = events
            .iter()
            .filter(|e| matches!(e, Event::Token { .. }))
            .count() as u64;
        publish(&engine, &stats, computed.saturating_sub(sampled), sampled);
        for e in events {
            match e {
                Event::Token {
                    id,
                    token,
                    logprob,
                    top,
                    ..
                } => {
                    let Some(job) = jobs.get_mut(&id) else {
                        continue;
                    };
                    job.completion_tokens += 1;
                    if !top.is_empty() {
                        let text = |t: u32| tok.decode(&[t], false);
                        job.logprobs.push(TokenLogprob {
                            token: text(token),
                            logprob,
                            top: top.iter().map(|c| (text(c.token), c.logprob)).collect(),
                        });
                    }
                    let piece = job.detok.push(&tok, token);
                    if job.push(&piece) {
                        job.done(GenFinish::Stop);
                        jobs.remove(&id);
                        engine.cancel(id);
                    }
                }
                Event::Finished { id, finish } => {
                    if let Some(mut job) = jobs.remove(&id) {
                        job.done(finish);
                    }
                }
                Event::PromptLogprobs { id, tokens } => {
                    if let Some(job) = jobs.get(&id) {
                        let text = |t: u32| tok.decode(&[t], false);
                        let lps = tokens
                            .iter()
                            .map(|p| PromptLogprob {
                                token: text(p.token),
                                logprob: p.logprob,
                                top: p.top.iter().map(|c| (text(c.token), c.logprob)).collect(),
                            })
                            .collect();
                        let _ = job.out.send(GenEvent::PromptLogprobs(lps));
                    }
                }
                Event::Failed { id, reason } => {
                    if let Some(job) = jobs.remove(&id) {
                        let _ = job.out.send(GenEvent::Failed(reason));
                    }
                }
            }
        }
    }
}

impl LlmService {
    /// Starts the engine thread for `model`.
    pub fn start(
        model: Llama,
        tok: TextTokenizer,
        cfg: ServiceConfig,
        name: &str,
    ) -> std::io::Result<LlmService> {
        let context = model.cfg.context;
        let tok = Arc::new(tok);
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.max_waiting.max(1));
        let engine = Engine::new(model, cfg.engine);
        let t = tok.clone();
        let stats = Arc::new(Mutex::new(GeneratorStats::default()));
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-llm"))
            .spawn(move || run(engine, rx, t, cfg.max_waiting.max(1), st))?;
        Ok(LlmService {
            tx: Mutex::new(Some(tx)),
            grammars: Grammars::new(tok.clone()),
            features: crate::chat::features(&tok, cfg.reasoning),
            tok,
            context,
            cfg,
            next: AtomicU64::new(1),
            thread: Mutex::new(Some(thread)),
            stats,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tok
    }

    fn prompt_ids(&self, p: &Prompt, chat: &ChatOptions) -> Result<Vec<u32>, GenerateError> {
        match p {
            Prompt::Tokens(ids) => {
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.tok.vocab()) {
                    return Err(GenerateError::Invalid(format!(
                        "token id {bad} is outside the vocabulary of {}",
                        self.tok.vocab()
                    )));
                }
                Ok(ids.clone())
            }
            Prompt::Text(t) => self.tok.encode(t).map_err(GenerateError::Invalid),
            Prompt::Chat(messages) => {
                let m = crate::chat::messages(messages, &chat.tools, self.tok.chat_template());
                let text = self
                    .tok
                    .chat_prompt_with(&m, true, &chat.tools, &chat.template_kwargs)
                    .map_err(GenerateError::Invalid)?;
                self.tok.encode(&text).map_err(GenerateError::Invalid)
            }
        }
    }

    /// Stops the engine thread (after the streams in it end or are dropped).
    pub fn stop(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for LlmService {
    /// The last holder (the version's runner) went away: the thread ends once the streams it
    /// runs are done or dropped.
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl TextGenerator for LlmService {
    fn context_length(&self) -> usize {
        self.context
    }

    fn stats(&self) -> GeneratorStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn chat_features(&self) -> ChatFeatures {
        self.features
    }

    fn start(&self, req: GenerateRequest) -> Result<GenStream, GenerateError> {
        let prompt = self.prompt_ids(&req.prompt, &req.chat)?;
        let grammar = req
            .constraint
            .as_ref()
            .map(|c| self.grammars.compile(c))
            .transpose()
            .map_err(GenerateError::Invalid)?;
        if prompt.is_empty() {
            return Err(GenerateError::Invalid("the prompt is empty".into()));
        }
        let room = self.context.saturating_sub(prompt.len());
        let max_tokens = req.max_tokens.unwrap_or(room);
        if prompt.len() + max_tokens > self.context || room == 0 {
            return Err(GenerateError::ContextLength {
                prompt: prompt.len(),
                max_tokens,
                context: self.context,
            });
        }
        let e = &self.cfg.engine;
        let blocks = (prompt.len() + max_tokens).div_ceil(e.block_size);
        if blocks > e.num_blocks {
            return Err(GenerateError::Invalid(format!(
                "the prompt ({} tokens) and max_tokens ({max_tokens}) need {} KV blocks; the cache holds {}",
                prompt.len(),
                blocks,
                e.num_blocks
            )));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let s = &req.sampling;
        let seed = s.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(id, |d| d.as_nanos() as u64 ^ id.rotate_left(32))
        });
        let (out, events) = unbounded_channel();
        let prompt_text = req.echo.then(|| match &req.prompt {
            Prompt::Text(t) => t.clone(),
            _ => self.tok.decode(&prompt, true),
        });
        let add = Add {
            req: Request {
                id,
                prompt: prompt.clone(),
                max_new_tokens: max_tokens,
                params: Params {
                    temperature: s.temperature,
                    top_k: s.top_k,
                    top_p: s.top_p,
                    min_p: s.min_p,
                    repetition_penalty: s.repetition_penalty,
                    presence_penalty: s.presence_penalty,
                    frequency_penalty: s.frequency_penalty,
                    seed,
                },
                stop_tokens: if req.ignore_eos {
                    Vec::new()
                } else {
                    self.tok.stop_tokens()
                },
                priority: 0,
                top_logprobs: req.logprobs.map(|n| n.max(1)),
                grammar,
                prompt_logprobs: req.prompt_logprobs,
            },
            job: Job {
                out,
                detok: Detokenizer::default(),
                pending: String::new(),
                stops: req.stop.into_iter().filter(|s| !s.is_empty()).collect(),
                prompt_tokens: prompt.len(),
                completion_tokens: 0,
                logprobs: Vec::new(),
            },
        };
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = tx.as_ref() else {
            return Err(GenerateError::Unavailable("the model is unloading".into()));
        };
        match tx.try_send(add) {
            Ok(()) => Ok(GenStream {
                prompt_tokens: prompt.len(),
                prompt_text,
                events,
            }),
            Err(TrySendError::Full(_)) => Err(GenerateError::Overloaded(format!(
                "{} requests are already waiting for this model; retry shortly",
                self.cfg.max_waiting
            ))),
            Err(TrySendError::Disconnected(_)) => Err(GenerateError::Unavailable(
                "the model's engine has stopped".into(),
            )),
        }
    }
}
