//! SentencePiece vocabularies as GGUF stores them (`tokenizer.ggml.model = "llama"`: Llama 2,
//! TinyLlama, Mistral, Gemma-style): pieces with scores, `▁` for a space, `<0xAB>` byte pieces
//! for characters the vocabulary lacks. The `tokenizers` crate runs them as BPE: the merges
//! SentencePiece would make are recovered from the scores (every piece that splits into two
//! pieces of the vocabulary is a merge, ranked by its score, as SentencePiece merges the
//! best-scoring pair first), with byte fallback, a `▁` prefix and spaces as `▁`.

use std::collections::HashMap;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::{NormalizerWrapper, Tokenizer};

use crate::model::ModelError;

/// GGUF's token type of an ordinary piece.
pub(crate) const NORMAL: u64 = 1;
/// GGUF's token type of a byte piece (`<0xAB>`).
pub(crate) const BYTE: u64 = 6;

/// The tokenizer for SentencePiece `tokens` with `scores` and GGUF token `types`.
pub fn tokenizer(
    tokens: &[String],
    scores: &[f32],
    types: &[u64],
    add_space_prefix: bool,
) -> Result<Tokenizer, ModelError> {
    let bad = |m: String| ModelError::Unsupported(format!("SentencePiece vocabulary: {m}"));
    if scores.len() != tokens.len() {
        return Err(bad(format!(
            "{} scores for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let ids: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    let kind = |i: usize| types.get(i).copied().unwrap_or(NORMAL);
    // (score, left id, right id, left, right) for every piece that two pieces make.
    let mut merges: Vec<(f32, u32, u32, &str, &str)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if kind(i) != NORMAL || piece.chars().count() < 2 {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(at);
            if let (Some(&a), Some(&b)) = (ids.get(l), ids.get(r))
                && kind(a as usize) == NORMAL
                && kind(b as usize) == NORMAL
            {
                merges.push((scores[i], a, b, l, r));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let unk = tokens
        .iter()
        .enumerate()
        .find(|&(i, _)| kind(i) == 2)
        .map(|(_, t)| t.clone());
    let mut builder = BPE::builder()
        .vocab_and_merges(
            vocab,
            merges
                .into_iter()
                .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
                .collect(),
        )
        .byte_fallback(tokens.iter().enumerate().any(|(i, _)| kind(i) == BYTE))
        .fuse_unk(true);
    if let Some(u) = unk {
        builder = builder.unk_token(u);
    }
    let bpe = builder.build().map_err(|e| bad(e.to_string()))?;
    let mut tok = Tokenizer::new(bpe);
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        normalizers.push(Prepend::new("▁".into()).into());
    }
    normalizers.push(
        Replace::new(" ", "▁")
            .map_err(|e| bad(e.to_string()))?
            .into(),
    );
    tok.with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| bad(e.to_string()))?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ")
            .map_err(|e| bad(e.to_string()))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tok)
}

/// The bytes a SentencePiece piece stands for: `<0xAB>` is byte 0xAB, `▁` a space.
pub fn piece_bytes(piece: &str, kind: u64) -> Vec<u8> {
    if kind == BYTE
        && let Some(hex) = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>'))
        && let Ok(b) = u8::from_str_radix(hex, 16)
    {
        return vec![b];
    }
    piece.replace('▁', " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_the_scores_and_unknown_characters_fall_back_to_bytes() {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(BYTE);
        }
        for p in ["▁", "a", "b", "c", "ab", "bc", "▁ab", "abc"] {
            tokens.push(p.into());
            types.push(NORMAL);
        }
        // "bc" outscores "ab", so "abc" splits a + bc first... unless "▁ab" wins: scores decide.
        let mut scores = vec![0.0; tokens.len()];
        let id = |t: &str, tokens: &[String]| tokens.iter().position(|x| x == t).unwrap();
        scores[id("ab", &tokens)] = -5.0;
        scores[id("bc", &tokens)] = -1.0;
        scores[id("▁ab", &tokens)] = -2.0;
        scores[id("abc", &tokens)] = -3.0;
        let tok = tokenizer(&tokens, &scores, &types, true).unwrap();
        let enc = tok.encode("abc", false).unwrap();
        // ▁ a b c: bc (-1) merges first, then nothing joins ▁ + a + bc except via "abc" (a+bc, -3).
        let pieces: Vec<&str> = enc
            .get_ids()
            .iter()
            .map(|&i| tokens[i as usize].as_str())
            .collect();
        assert_eq!(pieces, vec!["▁", "abc"]);
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "abc");
        // é is not in the vocabulary: its two UTF-8 bytes.
        let enc = tok.encode("é", false).unwrap();
        let pieces: Vec<&str> = enc
            .get_ids()
            .iter()
            .map(|&i| tokens[i as usize].as_str())
            .collect();
        assert_eq!(pieces, vec!["▁", "<0xC3>", "<0xA9>"]);
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "é");
        assert_eq!(piece_bytes("<0xC3>", BYTE), vec![0xC3]);
        assert_eq!(piece_bytes("▁ab", NORMAL), b" ab".to_vec());
    }
}
