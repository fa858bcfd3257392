//! The response cache: Triton's `response_cache { enable: true }` on a model, with the server's
//! `--cache-config local,size=BYTES`. Identical requests to one model version (the same
//! inputs, byte for byte, with the same names, types and shapes, asking for the same outputs)
//! are answered from memory, least recently used evicted first within a byte budget shared by
//! every model.
//!
//! The key is a SHA-256 over everything that decides the answer, each part length-prefixed so
//! no two requests share a byte stream; a collision would need a SHA-256 collision.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::backend::NamedTensor;
use crate::request::PreparedRequest;
use crate::tensor::TensorData;

/// A request's cache key.
pub type Key = [u8; 32];

/// Bytes an entry costs beyond its tensors' data (names, shapes, bookkeeping).
const ENTRY_OVERHEAD: usize = 128;

/// A byte-budgeted LRU of responses, shared by the models that enable it.
#[derive(Debug)]
pub struct ResponseCache {
    budget: usize,
    lru: Mutex<Lru>,
}

#[derive(Debug, Default)]
struct Lru {
    entries: HashMap<Key, Entry>,
    /// Use order: tick of last use -> key.
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    outputs: Vec<NamedTensor>,
    bytes: usize,
    tick: u64,
}

/// What the cache holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheUsage {
    /// Responses held.
    pub entries: usize,
    /// Bytes they take (by the cache's own accounting).
    pub bytes: usize,
    /// The budget.
    pub budget: usize,
}

fn feed(h: &mut Sha256, part: &[u8]) {
    h.update((part.len() as u64).to_le_bytes());
    h.update(part);
}

/// The key of `req` to `model` version `version`.
pub fn key(model: &str, version: u64, req: &PreparedRequest) -> Key {
    let mut h = Sha256::new();
    feed(&mut h, model.as_bytes());
    h.update(version.to_le_bytes());
    h.update((req.inputs.len() as u64).to_le_bytes());
    for input in &req.inputs {
        let t = &input.tensor;
        feed(&mut h, input.name.as_bytes());
        feed(&mut h, t.dtype().as_str().as_bytes());
        h.update((t.shape().len() as u64).to_le_bytes());
        for &d in t.shape() {
            h.update((d as u64).to_le_bytes());
        }
        match t.data() {
            TensorData::Raw(b) => {
                h.update([0]);
                feed(&mut h, b);
            }
            TensorData::Bytes(items) => {
                h.update([1]);
                h.update((items.len() as u64).to_le_bytes());
                for b in items {
                    feed(&mut h, b);
                }
            }
        }
    }
    h.update((req.outputs.len() as u64).to_le_bytes());
    for o in &req.outputs {
        feed(&mut h, o.as_bytes());
    }
    h.finalize().into()
}

fn cost(outputs: &[NamedTensor]) -> usize {
    outputs
        .iter()
        .map(|o| {
            let data = match o.tensor.data() {
                TensorData::Raw(b) => b.len(),
                TensorData::Bytes(items) => items.iter().map(|b| b.len() + 8).sum(),
            };
            data + o.name.len() + 8 * o.tensor.shape().len()
        })
        .sum::<usize>()
        + ENTRY_OVERHEAD
}

impl ResponseCache {
    /// A cache of at most `budget` bytes.
    pub fn new(budget: usize) -> ResponseCache {
        ResponseCache {
            budget,
            lru: Mutex::new(Lru::default()),
        }
    }

    /// The response stored under `key`, now the most recently used.
    pub fn get(&self, key: &Key) -> Option<Vec<NamedTensor>> {
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        lru.tick += 1;
        let tick = lru.tick;
        let entry = lru.entries.get_mut(key)?;
        let old = std::mem::replace(&mut entry.tick, tick);
        let outputs = entry.outputs.clone();
        lru.order.remove(&old);
        lru.order.insert(tick, *key);
        Some(outputs)
    }

    /// Stores `outputs` under `key`, evicting the least recently used until it fits; a response
    /// larger than the whole budget is not stored.
    pub fn put(&self, key: Key, outputs: &[NamedTensor]) {
        let bytes = cost(outputs);
        if bytes > self.budget {
            return;
        }
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = lru.entries.remove(&key) {
            lru.order.remove(&old.tick);
            lru.bytes -= old.bytes;
        }
        while lru.bytes + bytes > self.budget {
            let Some((_, victim)) = lru.order.pop_first() else {
                break;
            };
            if let Some(e) = lru.entries.remove(&victim) {
                lru.bytes -= e.bytes;
            }
        }
        lru.tick += 1;
        let tick = lru.tick;
        lru.order.insert(tick, key);
        lru.bytes += bytes;
        lru.entries.insert(
            key,
            Entry {
                outputs: outputs.to_vec(),
                bytes,
                tick,
            },
        );
    }

    /// What it holds.
    pub fn usage(&self) -> CacheUsage {
        let lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        CacheUsage {
            entries: lru.entries.len(),
            bytes: lru.bytes,
            budget: self.budget,
        }
    }
}

/// Parses `--cache-config`: Triton's `local,size=BYTES` (the only cache kind inferd has).
pub fn parse_config(text: &str) -> Result<usize, String> {
    let (kind, rest) = text.split_once(',').unwrap_or((text, ""));
    if kind.trim() != "local" {
        return Err(format!(
            "'{kind}' is not a cache inferd has (use local,size=BYTES)"
        ));
    }
    let mut size = None;
    for setting in rest.split(',').filter(|s| !s.trim().is_empty()) {
        match setting.split_once('=') {
            Some(("size", v)) => {
                size = Some(
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("size '{v}' is not a number of bytes"))?,
                );
            }
            _ => {
                return Err(format!(
                    "'{setting}' is not a setting of the local cache (size=BYTES)"
                ));
            }
        }
    }
    match size {
        Some(0) => Err("size must be above 0 bytes".into()),
        Some(n) => Ok(n),
        None => Err("the local cache needs size=BYTES".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{DataType, Tensor};

    fn tensor(name: &str, values: &[f32]) -> NamedTensor {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        NamedTensor {
            name: name.into(),
            tensor: Tensor::new(
                DataType::F32,
                vec![1, values.len()],
                TensorData::Raw(bytes.into()),
            )
            .unwrap(),
        }
    }

    fn request(values: &[f32], outputs: &[&str]) -> PreparedRequest {
        PreparedRequest {
            meta: Default::default(),
            inputs: vec![tensor("x", values)],
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            batch: 1,
            priority: 0,
            timeout: None,
            shape_key: 0,
        }
    }

    #[test]
    fn keys_differ_by_any_byte_version_or_output_and_agree_otherwise() {
        let k = key("m", 1, &request(&[1.0, 2.0], &["y"]));
        assert_eq!(k, key("m", 1, &request(&[1.0, 2.0], &["y"])));
        assert_ne!(k, key("m", 1, &request(&[1.0, 2.5], &["y"])));
        assert_ne!(k, key("m", 2, &request(&[1.0, 2.0], &["y"])));
        assert_ne!(k, key("n", 1, &request(&[1.0, 2.0], &["y"])));
        assert_ne!(k, key("m", 1, &request(&[1.0, 2.0], &["y", "z"])));
        // Length prefixes: moving a byte between name and data changes the key.
        let mut a = request(&[1.0], &["y"]);
        a.inputs[0].name = "xy".into();
        let mut b = request(&[1.0], &["y"]);
        b.inputs[0].name = "x".into();
        assert_ne!(key("m", 1, &a), key("m", 1, &b));
    }

    #[test]
    fn the_least_recently_used_goes_first_and_the_budget_holds() {
        let out = vec![tensor("y", &[0.0; 64])];
        let one = cost(&out);
        let cache = ResponseCache::new(3 * one);
        let k = |i: u8| [i; 32];
        for i in 0..3 {
            cache.put(k(i), &out);
        }
        assert!(cache.get(&k(0)).is_some()); // 0 is now the most recent: 1 goes next
        cache.put(k(3), &out);
        assert!(cache.get(&k(1)).is_none());
        assert!(cache.get(&k(0)).is_some() && cache.get(&k(2)).is_some());
        let u = cache.usage();
        assert_eq!((u.entries, u.bytes), (3, 3 * one));
        assert!(u.bytes <= u.budget);
        // A response larger than the budget is not stored and evicts nothing.
        cache.put(k(9), &[tensor("big", &[0.0; 1024])]);
        assert!(cache.get(&k(9)).is_none());
        assert_eq!(cache.usage().entries, 3);
        // Storing a key again replaces it without double counting.
        cache.put(k(0), &out);
        assert_eq!(cache.usage().bytes, 3 * one);
    }

    #[test]
    fn the_cache_config_is_tritons_local_size() {
        assert_eq!(parse_config("local,size=1048576"), Ok(1_048_576));
        assert!(
            parse_config("redis,host=x")
                .unwrap_err()
                .contains("'redis'")
        );
        assert!(parse_config("local").unwrap_err().contains("size=BYTES"));
        assert!(
            parse_config("local,size=lots")
                .unwrap_err()
                .contains("'lots'")
        );
        assert!(parse_config("local,size=0").is_err());
        assert!(parse_config("local,ttl=3").unwrap_err().contains("'ttl=3'"));
    }
}
