//! Greedy generation from a GGUF model or a Hugging Face llama folder, for the reference tests (tests/python/test_llm_reference.py):
//! reads `{"prompts": [[ids...]], "max_new_tokens": N, "fillers": K, "num_blocks": B,
//! "weights": "f32"|"q8"|"auto", "activations": "f32"|"int8", "kv_cache_dtype": "f32"|"q8"}` on stdin,
//! runs every prompt (plus K filler prompts in the same batches, to show batching changes
//! nothing), and prints `{"outputs": [[ids...]], "first_logits": [[...]]}`. In tokenizer mode
//! (`texts`, `chats`) it prints the ids, their decoding, the chat prompts and the stop tokens.

use std::io::Read;

use inferd_llm::engine::{Engine, EngineConfig, Event, Request};
use inferd_llm::sampling::Params;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: llm_generate MODEL.gguf|HF_FOLDER < request.json")?;
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let req: serde_json::Value = serde_json::from_str(&input)?;
    let prompts: Vec<Vec<u32>> = serde_json::from_value(req["prompts"].clone()).unwrap_or_default();
    let max_new = req["max_new_tokens"].as_u64().unwrap_or(16) as usize;
    let fillers = req["fillers"].as_u64().unwrap_or(0) as usize;
    let source = inferd_llm::source::Source::open(std::path::Path::new(&path))?;
    // Tokenizer mode: {"texts": [...], "chats": [[{"role", "content"}...]]} -> ids and prompts.
    if req.get("texts").is_some() || req.get("chats").is_some() {
        let tok = source.tokenizer()?;
        let texts: Vec<String> = serde_json::from_value(req["texts"].clone()).unwrap_or_default();
        let encoded = texts
            .iter()
            .map(|t| tok.encode(t))
            .collect::<Result<Vec<_>, _>>()?;
        let decoded: Vec<String> = encoded.iter().map(|ids| tok.decode(ids, false)).collect();
        let chats: Vec<Vec<inferd_llm::tokenizer::Message>> = req["chats"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        c.as_array()
                            .map(|m| {
                                m.iter()
                                    .map(|x| inferd_llm::tokenizer::Message {
                                        role: x["role"].as_str().unwrap_or_default().into(),
                                        content: x["content"].as_str().unwrap_or_default().into(),
                                        ..Default::default()
                                    })
                                    .collect()
                            })
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let prompts = chats
            .iter()
            .map(|m| tok.chat_prompt(m, true))
            .collect::<Result<Vec<_>, _>>()?;
        let streamed: Vec<Vec<String>> = encoded
            .iter()
            .map(|ids| {
                let mut d = inferd_llm::tokenizer::Detokenizer::default();
                ids.iter().map(|&i| d.push(&tok, i)).collect()
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"encoded": encoded, "decoded": decoded, "chat_prompts": prompts, "streamed": streamed,
                "stop_tokens": tok.stop_tokens()})
        );
        return Ok(());
    }
    let precision = match (req["weights"].as_str(), req["activations"].as_str()) {
        (Some("q8"), Some("int8")) => inferd_llm::model::Precision::Q8Int8,
        (Some("q8"), _) => inferd_llm::model::Precision::Q8,
        (Some("auto"), Some("int8")) => inferd_llm::model::Precision::Q4Int8,
        (Some("auto"), _) => inferd_llm::model::Precision::Q4,
        _ => inferd_llm::model::Precision::F32,
    };
    let model = source.model(precision)?;
    let mut engine = Engine::new(
        model,
        EngineConfig {
            num_blocks: req["num_blocks"].as_u64().unwrap_or(512) as usize,
            kv_dtype: match req["kv_cache_dtype"].as_str() {
                Some("q8") => inferd_llm::model::KvDtype::Q8,
                _ => inferd_llm::model::KvDtype::F32,
            },
            ..EngineConfig::default()
        },
    );
    engine.keep_logits = true;
    let greedy = Params {
        temperature: 0.0,
        ..Params::default()
    };
    let mut id = 0;
    for p in &prompts {
        // Fillers around each prompt: different lengths, so chunks and positions differ.
        let greedy_request = |id, prompt| Request {
            id,
            prompt,
            max_new_tokens: max_new,
            params: greedy.clone(),
            stop_tokens: Vec::new(),
            priority: 0,
            top_logprobs: None,
            grammar: None,
            prompt_logprobs: None,
        };
        for f in 0..fillers {
            id += 1;
            let filler: Vec<u32> = (0..(5 + 3 * f) as u32)
                .map(|i| 100 + i * 13 + f as u32)
                .collect();
            engine.add(greedy_request(1_000_000 + id, filler))?;
        }
        id += 1;
        engine.add(greedy_request(id, p.clone()))?;
    }
    let mut outputs: std::collections::HashMap<u64, Vec<u32>> = Default::default();
    let mut first: std::collections::HashMap<u64, Vec<f32>> = Default::default();
    while engine.has_work() {
        for e in engine.step() {
            if let Event::Token {
                id, token, logits, ..
            } = e
            {
                outputs.entry(id).or_default().push(token);
                if let Some(l) = logits {
                    first.entry(id).or_insert(l);
                }
            }
        }
    }
    let ids: Vec<u64> = {
        let mut v: Vec<u64> = outputs.keys().copied().filter(|&i| i < 1_000_000).collect();
        v.sort_unstable();
        v
    };
    let out = serde_json::json!({
        "outputs": ids.iter().map(|i| &outputs[i]).collect::<Vec<_>>(),
        "first_logits": ids.iter().map(|i| &first[i]).collect::<Vec<_>>(),
        "preemptions": engine.scheduler().preemptions(),
    });
    println!("{out}");
    Ok(())
}
