//! Text to tokens and back, from the GGUF's own metadata: `tokenizer.ggml.tokens`, `merges`,
//! `token_type` and `pre` become a Hugging Face byte-level BPE tokenizer (run by the
//! `tokenizers` crate), and `tokenizer.chat_template` is rendered with `minijinja`, which has no
//! file or network access. Streaming detokenization holds back bytes that do not yet form a
//! whole UTF-8 character.

use inferd_gguf::GgufFile;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::model::ModelError;

/// A model's tokenizer and chat template.
pub struct TextTokenizer {
    tok: Tokenizer,
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// End-of-sequence id.
    pub eos: Option<u32>,
    add_bos: bool,
    template: Option<String>,
    vocab: usize,
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

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`.
    pub role: String,
    /// The text.
    pub content: String,
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
        if kind != "gpt2" {
            return Err(bad(format!(
                "tokenizer '{kind}' is not supported yet (byte-level BPE, 'gpt2', is)"
            )));
        }
        let pre = f
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let tokens = strings(f, "tokenizer.ggml.tokens")
            .ok_or_else(|| bad("tokenizer.ggml.tokens is missing".into()))?;
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
            other => {
                return Err(bad(format!(
                    "tokenizer pre-tokenizer '{other}' is not supported yet"
                )));
            }
        };
        tok.with_pre_tokenizer(Some(pre_tok));
        tok.with_decoder(Some(ByteLevel::default()));
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
        tok.add_special_tokens(special)
            .map_err(|e| bad(format!("tokenizer special tokens: {e}")))?;
        let id = |k: &str| f.metadata.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        Ok(TextTokenizer {
            tok,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            add_bos: f
                .metadata
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.as_u64())
                .is_some_and(|v| v != 0),
            template: f
                .metadata
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            vocab: tokens.len(),
        })
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
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => text(self.bos),
                    eos_token => text(self.eos),
                })
            })
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
