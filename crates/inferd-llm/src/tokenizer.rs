//! Text to tokens and back, from the GGUF's own metadata: `tokenizer.ggml.tokens`, `merges`,
//! `token_type` and `pre` become a Hugging Face byte-level BPE tokenizer (run by the
//! `tokenizers` crate), and `tokenizer.chat_template` is rendered with `minijinja`, which has no
//! file or network access. Streaming detokenization holds back bytes that do not yet form a
//! whole UTF-8 character.

use inferd_gguf::GgufFile;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::model::ModelError;

/// The split pattern of Llama 3's tokenizer (`tokenizer.ggml.pre = "llama-bpe"`), as its
/// `tokenizer.json` states it.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A model's tokenizer and chat template.
pub struct TextTokenizer {
    pub(crate) tok: Tokenizer,
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// End-of-sequence id.
    pub eos: Option<u32>,
    /// End-of-turn id (`<|im_end|>`, `<|eot_id|>`), when the vocabulary has one apart from
    /// the end-of-sequence token.
    pub end_of_turn: Option<u32>,
    /// Further tokens that end a generation (a Hugging Face `generation_config.json` may list
    /// several end-of-sequence ids: Llama 3's `<|eom_id|>` and `<|eot_id|>`).
    pub(crate) more_stops: Vec<u32>,
    pub(crate) add_bos: bool,
    pub(crate) template: Option<String>,
    pub(crate) vocab: usize,
    /// Each token's bytes; special tokens as 0xff then their name (llguidance's convention).
    pub(crate) bytes: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.vocab)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

/// One chat message, as chat templates read it.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`.
    pub role: String,
    /// The text.
    pub content: String,
    /// An assistant message's calls (OpenAI's shape).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// The call a tool message answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The tool's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

pub(crate) const fn byte_level_printable(b: u32) -> bool {
    matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff)
}

/// GPT-2's byte-level alphabet read backwards: the byte each printable stand-in character
/// means. Bytes that are printable Latin-1 stand for themselves; the other 68 were given the
/// characters from U+0100 up, in byte order.
pub(crate) fn byte_level_bytes(token: &str, others: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        let code = c as u32;
        if code < 256 && byte_level_printable(code) {
            out.push(code as u8);
        } else if code >= 256 {
            if let Some(&b) = others.get((code - 256) as usize) {
                out.push(b);
            }
        } else {
            // Not part of the alphabet (a hand-made vocabulary): its UTF-8 bytes.
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        }
    }
    out
}

fn strings(f: &GgufFile, key: &str) -> Option<Vec<String>> {
    f.metadata.get(key)?.as_array().map(|a| {
        a.iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect()
    })
}

impl TextTokenizer {
    /// Builds the tokenizer the GGUF describes, or says why it cannot.
    pub fn from_gguf(f: &GgufFile) -> Result<TextTokenizer, ModelError> {
        let bad = |m: String| ModelError::Unsupported(m);
        let kind = f
            .metadata
            .get("tokenizer.ggml.model")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let tokens = strings(f, "tokenizer.ggml.tokens")
            .ok_or_else(|| bad("tokenizer.ggml.tokens is missing".into()))?;
        let types: Vec<u64> = f
            .metadata
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_default();
        let special: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(t, 3 | 4))
            .filter_map(|(i, _)| tokens.get(i))
            .map(|t| AddedToken::from(t.clone(), true))
            .collect();
        let mut tok = match kind {
            "gpt2" => Self::byte_level(f, &tokens)?,
            "llama" => {
                let scores: Vec<f32> = f
                    .metadata
                    .get("tokenizer.ggml.scores")
                    .and_then(|v| v.as_array())
                    .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect())
                    .ok_or_else(|| bad("tokenizer.ggml.scores is missing".into()))?;
                let prefix = f
                    .metadata
                    .get("tokenizer.ggml.add_space_prefix")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(true);
                crate::spm::tokenizer(&tokens, &scores, &types, prefix)?
            }
            other => {
                return Err(bad(format!(
                    "tokenizer '{other}' is not supported (byte-level BPE 'gpt2' and SentencePiece 'llama' are)"
                )));
            }
        };
        tok.add_special_tokens(special)
            .map_err(|e| bad(format!("tokenizer special tokens: {e}")))?;
        let id = |k: &str| f.metadata.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let is_special = |i: usize| matches!(types.get(i), Some(2..=4));
        let others: Vec<u8> = (0u8..=255)
            .filter(|&b| !byte_level_printable(u32::from(b)))
            .collect();
        let bytes: Vec<Vec<u8>> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if is_special(i) {
                    let mut b = vec![0xff];
                    b.extend_from_slice(t.as_bytes());
                    b
                } else if kind == "llama" {
                    crate::spm::piece_bytes(t, types.get(i).copied().unwrap_or(1))
                } else {
                    byte_level_bytes(t, &others)
                }
            })
            .collect();
        let eos = id("tokenizer.ggml.eos_token_id");
        let end_of_turn = id("tokenizer.ggml.eot_token_id")
            .or_else(|| {
                ["<|im_end|>", "<|eot_id|>", "<end_of_turn>"]
                    .iter()
                    .find_map(|n| tokens.iter().position(|t| t == n).map(|p| p as u32))
            })
            .filter(|&t| Some(t) != eos);
        Ok(TextTokenizer {
            tok,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos,
            end_of_turn,
            more_stops: Vec::new(),
            bytes,
            // SentencePiece vocabularies begin with BOS unless the file says not.
            add_bos: f
                .metadata
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(kind == "llama"),
            template: f
                .metadata
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            vocab: tokens.len(),
        })
    }

    /// The byte-level BPE tokenizer (`gpt2`) of `f`'s merges and pre-tokenizer.
    fn byte_level(f: &GgufFile, tokens: &[String]) -> Result<Tokenizer, ModelError> {
        let bad = |m: String| ModelError::Unsupported(m);
        let pre = f
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let merges: Vec<(String, String)> = strings(f, "tokenizer.ggml.merges")
            .ok_or_else(|| bad("tokenizer.ggml.merges is missing".into()))?
            .into_iter()
            .filter_map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect();
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| bad(format!("tokenizer: {e}")))?;
        let mut tok = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        // The pre-tokenizer each `pre` name stands for in llama.cpp's converter.
        let pre_tok: PreTokenizerWrapper = match pre {
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            "gpt2" | "default" => byte_level.into(),
            // Llama 3 (and Smaug, which copies its tokenizer): words with at most one
            // leading non-letter, numbers in groups of up to three digits, punctuation runs,
            // then bytes mapped without the GPT-2 regex.
            "llama-bpe" | "llama3" | "smaug-bpe" => {
                let split = Split::new(
                    SplitPattern::Regex(LLAMA3_SPLIT.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| bad(format!("tokenizer pre-tokenizer '{pre}': {e}")))?;
                Sequence::new(vec![
                    split.into(),
                    ByteLevel::new(false, true, false).into(),
                ])
                .into()
            }
            other => {
                return Err(bad(format!(
                    "tokenizer pre-tokenizer '{other}' is not supported yet"
                )));
            }
        };
        tok.with_pre_tokenizer(Some(pre_tok));
        tok.with_decoder(Some(ByteLevel::default()));
        Ok(tok)
    }

    /// The tokens that end a generation: end-of-sequence, and any others the model lists.
    pub fn stop_tokens(&self) -> Vec<u32> {
        self.eos
            .into_iter()
            .chain(self.more_stops.iter().copied())
            .collect()
    }

    /// The bytes token `id` stands for (special tokens: 0xff then their name).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.bytes.get(id as usize).cloned().unwrap_or_default()
    }

    /// Whether the vocabulary has `text` as one special token.
    pub fn special_token(&self, text: &str) -> Option<u32> {
        self.bytes
            .iter()
            .position(|b| b.len() > 1 && b[0] == 0xff && &b[1..] == text.as_bytes())
            .map(|p| p as u32)
    }

    /// The chat template's text, when the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.template.as_deref()
    }

    /// Token ids of `text`, with no beginning-of-sequence token.
    pub fn encode_plain(&self, text: &str) -> Vec<u32> {
        self.tok
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    /// Token ids of `text` (special tokens written in it, such as chat markup, are recognised),
    /// with the beginning-of-sequence token first when the model wants one.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let enc = self
            .tok
            .encode(text, false)
            .map_err(|e| format!("cannot tokenize: {e}"))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos
            && let Some(b) = self.bos
        {
            ids.push(b);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The text of `ids` (special tokens left out when `skip_special`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        self.tok.decode(ids, skip_special).unwrap_or_default()
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Whether the model has a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// The prompt the chat template makes of `messages`, ending with the assistant's turn
    /// opened when `add_generation_prompt`.
    pub fn chat_prompt(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        self.chat_prompt_with(messages, add_generation_prompt, &[], &Default::default())
    }

    /// [`TextTokenizer::chat_prompt`] with OpenAI `tools` (given to the template as `tools`)
    /// and extra template variables (`chat_template_kwargs`; they cannot replace `messages`,
    /// `tools` or the special tokens).
    pub fn chat_prompt_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        tools: &[serde_json::Value],
        kwargs: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, String> {
        let template = self
            .template
            .as_deref()
            .ok_or("this model has no chat template; use /v1/completions")?;
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| format!("the model's chat template does not parse: {e}"))?;
        let text = |id: Option<u32>| id.map(|i| self.decode(&[i], false)).unwrap_or_default();
        let ours = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => text(self.bos),
            eos_token => text(self.eos),
            tools => (!tools.is_empty()).then_some(tools),
        };
        let ctx = minijinja::context! { ..ours, ..minijinja::Value::from_serialize(kwargs) };
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(|e| format!("the chat template failed: {e}"))
    }
}

/// Turns a stream of token ids into text pieces, never splitting a UTF-8 character: a piece
/// is released only once its bytes decode whole.
#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
    ids: Vec<u32>,
    sent: usize,
}

impl Detokenizer {
    /// Adds `id`; the new text it completes (possibly empty).
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> String {
        self.ids.push(id);
        let text = tok.decode(&self.ids, true);
        if text.ends_with('\u{fffd}') || text.len() < self.sent {
            return String::new();
        }
        let piece = text[self.sent..].to_string();
        self.sent = text.len();
        piece
    }

    /// All text so far.
    pub fn text(&self, tok: &TextTokenizer) -> String {
        tok.decode(&self.ids, true)
    }
}
