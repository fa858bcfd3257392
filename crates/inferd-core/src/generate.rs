//! Text generation: the seam between the server's text APIs (OpenAI completions and chat) and a
//! backend that generates (the LLM engine). A loaded version that generates returns a
//! [`TextGenerator`] from [`crate::backend::LoadedModel::generator`]; the server asks the engine
//! for it ([`crate::Engine::generator`]) and holds the version's in-flight guard for as long as
//! the stream runs, so a reload lets started streams finish on the version they began on.

use tokio::sync::mpsc::UnboundedReceiver;

/// How tokens are picked (OpenAI's and vLLM's parameters).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 is greedy.
    pub temperature: f32,
    /// Nucleus sampling (1: off).
    pub top_p: f32,
    /// Keep the k most likely (0: off).
    pub top_k: usize,
    /// Drop tokens under min_p times the top probability (0: off).
    pub min_p: f32,
    /// vLLM's repetition penalty (1: off).
    pub repetition_penalty: f32,
    /// OpenAI's presence penalty.
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty.
    pub frequency_penalty: f32,
    /// Seed for reproducible samples; a fresh one when absent.
    pub seed: Option<u64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`.
    pub role: String,
    /// Its text.
    pub content: String,
    /// The calls an assistant message made (OpenAI's `tool_calls` list, as sent).
    pub tool_calls: Option<serde_json::Value>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
    /// The tool's (or participant's) name.
    pub name: Option<String>,
}

/// What the generated text must match: a token mask at every step keeps it inside the
/// grammar (structured output), so the text always parses.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// JSON that validates against this JSON Schema.
    JsonSchema(serde_json::Value),
    /// Text the regular expression matches in full.
    Regex(String),
    /// One of these strings.
    Choice(Vec<String>),
    /// A Lark grammar (llguidance's dialect, which can embed `%json` schemas).
    Lark(String),
}

/// Chat-only settings: the tools the template describes to the model and extra template
/// variables (`chat_template_kwargs`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatOptions {
    /// OpenAI's `tools` list, as sent.
    pub tools: Vec<serde_json::Value>,
    /// Extra variables for the chat template.
    pub template_kwargs: serde_json::Map<String, serde_json::Value>,
}

/// How a model writes tool calls in its text, so the server can turn them into `tool_calls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes, Qwen 2.5/3,
    /// SmolLM3, and the block inferd adds to templates that know no tools).
    Hermes,
    /// A bare JSON object `{"name": ..., "parameters": {...}}` (Llama 3.1-3.3), optionally
    /// after `<|python_tag|>`.
    Llama3Json,
    /// `[TOOL_CALLS]` then a JSON list of `{"name", "arguments"}` (Mistral).
    Mistral,
}

/// What a model's chat output carries besides content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatFeatures {
    /// How it writes tool calls.
    pub tool_format: ToolFormat,
    /// Whether it thinks first in `<think>...</think>` (returned as `reasoning_content`).
    pub reasoning: bool,
}

impl Default for ChatFeatures {
    fn default() -> Self {
        ChatFeatures {
            tool_format: ToolFormat::Hermes,
            reasoning: false,
        }
    }
}

/// What to continue.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Plain text.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
    /// Messages, rendered by the model's chat template with the assistant's turn opened.
    Chat(Vec<ChatMessage>),
}

/// A generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// New tokens at most; `None`: up to the context.
    pub max_tokens: Option<usize>,
    /// Sampling.
    pub sampling: Sampling,
    /// Strings that end the text (left out of it).
    pub stop: Vec<String>,
    /// Keep going past the end-of-sequence token.
    pub ignore_eos: bool,
    /// Log-probabilities of the top `n` tokens at each position, when asked.
    pub logprobs: Option<usize>,
    /// Structured output: the grammar the text must match.
    pub constraint: Option<Constraint>,
    /// Return the prompt's text in [`GenStream::prompt_text`] (OpenAI's `echo`).
    pub echo: bool,
    /// Log-probabilities of every prompt token with the top `n` alternatives, as a
    /// [`GenEvent::PromptLogprobs`] before any text (`echo` with `logprobs`).
    pub prompt_logprobs: Option<usize>,
    /// Tools and template variables (chat prompts).
    pub chat: ChatOptions,
}

/// Why a generation ended (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context.
    Length,
}

impl Finish {
    /// OpenAI's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// One token's log-probability and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens at that position: text and log-probability.
    pub top: Vec<(String, f32)>,
}

/// A prompt token's log-probability given the tokens before it (none for the first).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability; `None` for the first token.
    pub logprob: Option<f32>,
    /// The most likely tokens at that position: text and log-probability.
    pub top: Vec<(String, f32)>,
}

/// What a generation stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    /// More text (whole characters; never part of a stop string).
    Text {
        /// The text.
        text: String,
        /// Log-probabilities of the tokens that made it, when asked.
        logprobs: Vec<TokenLogprob>,
    },
    /// The end.
    Done {
        /// Why.
        finish: Finish,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens.
        completion_tokens: usize,
    },
    /// Prompt tokens' log-probabilities, in order (when asked; before any `Text`).
    PromptLogprobs(Vec<PromptLogprob>),
    /// The generation failed after it started.
    Failed(String),
}

/// Why a generation could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    /// The request is malformed for this model (400).
    #[error("{0}")]
    Invalid(String),
    /// The prompt does not fit the context (400, OpenAI's `context_length_exceeded`).
    #[error(
        "this model's context is {context} tokens; the prompt has {prompt} and max_tokens asks for {max_tokens}"
    )]
    ContextLength {
        /// Prompt tokens.
        prompt: usize,
        /// New tokens asked for.
        max_tokens: usize,
        /// The context.
        context: usize,
    },
    /// Too many requests waiting (429).
    #[error("{0}")]
    Overloaded(String),
    /// The generator is gone (503).
    #[error("{0}")]
    Unavailable(String),
}

/// A started generation: events until `Done` or `Failed`. Dropping the receiver cancels it and
/// frees its memory at the generator's next step. The channel is unbounded, but one request
/// can put at most `max_tokens` events in it.
#[derive(Debug)]
pub struct GenStream {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// The prompt's text, when the request asked for `echo`.
    pub prompt_text: Option<String>,
    /// The events.
    pub events: UnboundedReceiver<GenEvent>,
}

/// A generator's live numbers (vLLM's set, for dashboards and autoscalers).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GeneratorStats {
    /// Sequences running.
    pub running: usize,
    /// Sequences waiting (new or preempted).
    pub waiting: usize,
    /// KV blocks held by sequences.
    pub kv_blocks_used: usize,
    /// KV blocks in all.
    pub kv_blocks_total: usize,
    /// Token slots held by running sequences but not filled, over slots held: the memory
    /// paging wastes (at most one partly filled block per sequence).
    pub kv_waste: f64,
    /// Prefix-cache lookups and hits, in blocks, since load.
    pub prefix_queries: u64,
    /// See `prefix_queries`.
    pub prefix_hits: u64,
    /// Preemptions since load.
    pub preemptions: u64,
    /// Prompt tokens computed since load (prefix-cache hits not counted).
    pub prompt_tokens: u64,
    /// Tokens generated since load.
    pub generation_tokens: u64,
}

/// A loaded model that generates text.
pub trait TextGenerator: Send + Sync {
    /// The model's context length in tokens.
    fn context_length(&self) -> usize;
    /// Its live numbers.
    fn stats(&self) -> GeneratorStats;
    /// Starts a generation.
    fn start(&self, req: GenerateRequest) -> Result<GenStream, GenerateError>;
    /// How its chat output writes tool calls and thinking.
    fn chat_features(&self) -> ChatFeatures {
        ChatFeatures::default()
    }
}
