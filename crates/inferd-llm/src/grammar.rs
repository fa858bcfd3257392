//! Structured output: a [`Constraint`] (JSON Schema, any JSON object, a regex, a list of
//! choices, a Lark grammar) compiled by llguidance into a matcher that gives, at every step,
//! the set of tokens that keep the text inside the grammar. The engine masks every other
//! token's logit before sampling, so the output parses by construction (no retry loop), and a
//! grammar that does not compile is refused before anything runs (fail closed).
//!
//! llguidance sees the vocabulary as bytes through a token trie built here from our own
//! tokenizer, so no second tokenizer library is linked in.

use std::sync::{Arc, OnceLock};

use inferd_core::generate::Constraint;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

use crate::tokenizer::TextTokenizer;

/// The vocabulary as llguidance wants it: each token's bytes (special tokens marked) and a
/// tokenizer for the strings a grammar forces.
struct VocabEnv {
    trie: TokTrie,
    tok: Arc<TextTokenizer>,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        match std::str::from_utf8(s) {
            Ok(text) => self.tok.encode_plain(text),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// Compiles constraints for one model; the token trie and llguidance's token slices are built
/// on first use and shared by every request after.
pub struct Grammars {
    tok: Arc<TextTokenizer>,
    factory: OnceLock<Result<ParserFactory, String>>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").finish_non_exhaustive()
    }
}

/// JSON output without free whitespace: a small model given the choice can fill its whole
/// budget with newlines inside an object, and compact output is what clients expect.
fn compact(mut schema: Value) -> Value {
    if let Value::Object(o) = &mut schema
        && !o.contains_key("x-guidance")
    {
        o.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// The grammar llguidance compiles for `c`.
fn top_level(c: &Constraint) -> TopLevelGrammar {
    match c {
        Constraint::JsonObject => {
            TopLevelGrammar::from_json_schema(compact(json!({"type": "object"})))
        }
        Constraint::JsonSchema(s) => TopLevelGrammar::from_json_schema(compact(s.clone())),
        Constraint::Regex(r) => TopLevelGrammar::from_regex(r),
        Constraint::Choice(options) => {
            // Each option as a Lark string literal (JSON's quoting is a subset Lark reads).
            let alts: Vec<String> = options
                .iter()
                .map(|o| serde_json::to_string(o).unwrap_or_default())
                .collect();
            TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
        }
        Constraint::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
    }
}

impl Grammars {
    /// Constraint compilation for the model `tok` tokenizes.
    pub fn new(tok: Arc<TextTokenizer>) -> Grammars {
        Grammars {
            tok,
            factory: OnceLock::new(),
        }
    }

    fn factory(&self) -> Result<&ParserFactory, String> {
        self.factory
            .get_or_init(|| {
                let words: Vec<Vec<u8>> = (0..self.tok.vocab() as u32)
                    .map(|i| self.tok.token_bytes(i))
                    .collect();
                let eos = self.tok.eos.unwrap_or(0);
                let info = TokRxInfo {
                    tok_end_of_turn: self.tok.end_of_turn,
                    ..TokRxInfo::new(words.len() as u32, eos)
                };
                let env: TokEnv = Arc::new(VocabEnv {
                    trie: TokTrie::from(&info, &words),
                    tok: self.tok.clone(),
                });
                let mut f = ParserFactory::new_simple(&env)
                    .map_err(|e| format!("structured output is unavailable for this model: {e}"))?;
                f.quiet();
                Ok(f)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A fresh matcher for `c`, or why `c` cannot be honoured (the request gets a 400).
    pub fn compile(&self, c: &Constraint) -> Result<Matcher, String> {
        if let Constraint::Choice(o) = c
            && (o.is_empty() || o.iter().any(String::is_empty))
        {
            return Err("the choices must be a non-empty list of non-empty strings".into());
        }
        let factory = self.factory()?;
        let parser = factory
            .create_parser(top_level(c))
            .map_err(|e| format!("the output constraint does not compile: {e}"))?;
        let m = Matcher::new(Ok(parser));
        match m.get_error() {
            Some(e) => Err(format!("the output constraint does not compile: {e}")),
            None => Ok(m),
        }
    }
}

/// Sets every logit the matcher does not allow to minus infinity, or says why the matcher
/// failed (the sequence must end).
pub fn mask(m: &mut Matcher, logits: &mut [f32]) -> Result<(), String> {
    let allowed = m.compute_mask_or_eos().map_err(|e| e.to_string())?;
    let known = allowed.len();
    for (i, l) in logits.iter_mut().enumerate() {
        // Padding rows past the vocabulary are never allowed.
        if i >= known || !allowed.is_allowed(i as u32) {
            *l = f32::NEG_INFINITY;
        }
    }
    Ok(())
}
