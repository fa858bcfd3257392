//! A Hugging Face folder's tokenizer: `tokenizer.json` run by the `tokenizers` crate as it
//! stands, the special tokens and chat template from `tokenizer_config.json` (or the
//! `chat_template.jinja` file transformers 5 writes), and the tokens that end a generation from
//! `generation_config.json` and `config.json`.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::model::ModelError;
use crate::tokenizer::{TextTokenizer, byte_level_bytes, byte_level_printable};

fn read_json(path: &Path) -> Result<Option<Value>, ModelError> {
    if !path.exists() {
        return Ok(None);
    }
    let bad = |m: String| ModelError::Unsupported(format!("{}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| bad(format!("not JSON: {e}")))
}

/// Whether the decoder (alone or in a sequence) maps GPT-2's byte-level alphabet back.
fn byte_level_decoder(decoder: &Value) -> bool {
    decoder["type"] == "ByteLevel"
        || decoder["decoders"]
            .as_array()
            .is_some_and(|d| d.iter().any(byte_level_decoder))
}

/// Ids as a config states them: one number or a list.
fn ids(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|i| i as u32).into_iter().collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|i| i as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl TextTokenizer {
    /// Builds the tokenizer of the Hugging Face folder `dir`, or says why it cannot.
    pub fn from_hf_dir(dir: &Path) -> Result<TextTokenizer, ModelError> {
        let path = dir.join("tokenizer.json");
        let bad = |m: String| ModelError::Unsupported(format!("{}: {m}", path.display()));
        let raw = read_json(&path)?.ok_or_else(|| bad("missing".into()))?;
        let mut tok = Tokenizer::from_file(&path).map_err(|e| bad(e.to_string()))?;
        tok.with_padding(None);
        tok.with_truncation(None).map_err(|e| bad(e.to_string()))?;
        let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let generation = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        let model = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);

        let vocab = tok.get_vocab_size(true);
        let special: HashMap<u32, String> = tok
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(i, t)| (i, t.content))
            .collect();
        let byte_level = byte_level_decoder(&raw["decoder"]);
        let others: Vec<u8> = (0u8..=255)
            .filter(|&b| !byte_level_printable(u32::from(b)))
            .collect();
        let bytes: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| {
                if let Some(name) = special.get(&id) {
                    let mut b = vec![0xff];
                    b.extend_from_slice(name.as_bytes());
                    return b;
                }
                let piece = tok.id_to_token(id).unwrap_or_default();
                if byte_level {
                    byte_level_bytes(&piece, &others)
                } else {
                    // SentencePiece pieces: `▁` for a space, `<0xAB>` byte fallbacks.
                    let is_byte = piece.len() == 6 && piece.starts_with("<0x");
                    let kind = if is_byte {
                        crate::spm::BYTE
                    } else {
                        crate::spm::NORMAL
                    };
                    crate::spm::piece_bytes(&piece, kind)
                }
            })
            .collect();

        // A special token as tokenizer_config.json names it: text, or {"content": text}.
        let named = |v: &Value| {
            v.as_str()
                .or_else(|| v["content"].as_str())
                .and_then(|t| tok.token_to_id(t))
        };
        let bos =
            named(&config["bos_token"]).or_else(|| ids(&model["bos_token_id"]).first().copied());
        let mut stops: Vec<u32> = named(&config["eos_token"]).into_iter().collect();
        for id in ids(&generation["eos_token_id"])
            .into_iter()
            .chain(ids(&model["eos_token_id"]))
        {
            if !stops.contains(&id) {
                stops.push(id);
            }
        }
        let eos = stops.first().copied();
        let more_stops: Vec<u32> = stops.iter().skip(1).copied().collect();
        let end_of_turn = more_stops
            .first()
            .copied()
            .or_else(|| {
                ["<|im_end|>", "<|eot_id|>", "<end_of_turn>"]
                    .iter()
                    .find_map(|n| tok.token_to_id(n))
            })
            .filter(|&t| Some(t) != eos);
        // BOS first when the config says, or when the tokenizer's own post-processor adds it
        // (Llama 3's tokenizer.json does; its config says nothing).
        let add_bos = config["add_bos_token"].as_bool().unwrap_or_else(|| {
            let first = tok
                .encode("", true)
                .ok()
                .and_then(|e| e.get_ids().first().copied());
            bos.is_some() && first == bos
        });
        let template = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
            Ok(t) => Some(t),
            Err(_) => match &config["chat_template"] {
                Value::String(t) => Some(t.clone()),
                // Several named templates: the default one.
                Value::Array(a) => a
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_string),
                _ => None,
            },
        };
        Ok(TextTokenizer {
            tok,
            bos,
            eos,
            end_of_turn,
            more_stops,
            add_bos,
            template,
            vocab,
            bytes,
        })
    }
}
