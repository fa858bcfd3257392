//! The server's shared file: each message's tensors in a region of their own, 64-byte
//! aligned; the space is reused once every region has been given back (a bump allocator that
//! resets when empty: messages are short-lived, so it rarely grows past the largest burst).

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use inferd_core::backend::NamedTensor;
use serde_json::{Value, json};

use crate::protocol::align;

struct State {
    top: u64,
    size: u64,
    live: HashSet<u64>,
    next: u64,
}

/// A file the server writes tensors into for the worker to read.
pub struct Arena {
    file: File,
    state: Mutex<State>,
}

impl Arena {
    /// An arena over `file` (empty).
    pub fn new(file: File) -> Arena {
        Arena {
            file,
            state: Mutex::new(State {
                top: 0,
                size: 0,
                live: HashSet::new(),
                next: 1,
            }),
        }
    }

    /// Writes groups of tensors into one region: their descriptions, group by group, and the
    /// region's id (`None` when there is nothing to write).
    pub fn put(
        &self,
        groups: &[&[NamedTensor]],
    ) -> std::io::Result<(Vec<Vec<Value>>, Option<u64>)> {
        let wire: Vec<Vec<_>> = groups
            .iter()
            .map(|g| g.iter().map(|t| t.tensor.to_wire_bytes()).collect())
            .collect();
        if wire.iter().all(|g| g.is_empty()) {
            return Ok((vec![Vec::new(); groups.len()], None));
        }
        let (region, mut offset) = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let start = s.top;
            let end = wire
                .iter()
                .flatten()
                .fold(start, |at, b| align(at) + b.len() as u64);
            if end > s.size {
                self.file.set_len(end)?;
                s.size = end;
            }
            s.top = end;
            let region = s.next;
            s.next += 1;
            s.live.insert(region);
            (region, start)
        };
        let mut specs = Vec::with_capacity(groups.len());
        for (group, bytes) in groups.iter().zip(&wire) {
            let mut g = Vec::with_capacity(group.len());
            for (t, b) in group.iter().zip(bytes) {
                offset = align(offset);
                if let Err(e) = self.file.write_all_at(b, offset) {
                    self.free(region);
                    return Err(e);
                }
                g.push(json!({
                    "name": t.name,
                    "datatype": t.tensor.dtype().as_str(),
                    "shape": t.tensor.shape(),
                    "offset": offset,
                    "nbytes": b.len(),
                }));
                offset += b.len() as u64;
            }
            specs.push(g);
        }
        Ok((specs, Some(region)))
    }

    /// Gives a region back (unknown ids are ignored: a worker cannot free twice).
    pub fn free(&self, region: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.live.remove(&region);
        if s.live.is_empty() {
            s.top = 0;
        }
    }

    /// Regions not yet given back.
    pub fn live(&self) -> usize {
        self.state.lock().map(|s| s.live.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::read_output;
    use inferd_core::tensor::{DataType, Tensor, TensorData};

    fn t(name: &str, v: &[f32]) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            tensor: Tensor::from_f32(vec![v.len()], v).expect("tensor"),
        }
    }

    #[test]
    fn regions_are_aligned_disjoint_and_read_back_as_written() {
        let arena = Arena::new(tempfile::tempfile().expect("file"));
        let a = [t("A", &[1.0, 2.0, 3.0])];
        let b = [
            t("B", &[4.0]),
            NamedTensor {
                name: "S".into(),
                tensor: Tensor::new(
                    DataType::Bytes,
                    vec![2],
                    TensorData::Bytes(vec!["x".into(), "yz".into()]),
                )
                .expect("tensor"),
            },
        ];
        let (s1, r1) = arena.put(&[&a]).expect("put");
        let (s2, r2) = arena.put(&[&b]).expect("put");
        assert_ne!(r1, r2);
        assert_eq!(s1[0][0]["offset"], 0);
        assert_eq!(s2[0][0]["offset"], 64);
        assert_eq!(s2[0][1]["offset"], 128);
        assert_eq!(
            read_output(&arena.file, &s1[0][0]).expect("A").tensor,
            a[0].tensor
        );
        assert_eq!(
            read_output(&arena.file, &s2[0][1]).expect("S").tensor,
            b[1].tensor
        );
    }

    #[test]
    fn space_is_reused_only_once_every_region_is_back() {
        let arena = Arena::new(tempfile::tempfile().expect("file"));
        let a = [t("A", &[1.0])];
        let (_, r1) = arena.put(&[&a]).expect("put");
        let (_, r2) = arena.put(&[&a]).expect("put");
        arena.free(r1.expect("region"));
        let (s3, r3) = arena.put(&[&a]).expect("put");
        assert_eq!(s3[0][0]["offset"], 128, "r2 is still live: no reuse");
        arena.free(r2.expect("region"));
        arena.free(r2.expect("region"));
        assert_eq!(arena.live(), 1);
        arena.free(r3.expect("region"));
        let (s4, _) = arena.put(&[&a]).expect("put");
        assert_eq!(s4[0][0]["offset"], 0);
    }

    #[test]
    fn nothing_to_write_takes_no_region() {
        let arena = Arena::new(tempfile::tempfile().expect("file"));
        let (specs, region) = arena.put(&[&[], &[]]).expect("put");
        assert_eq!(specs.len(), 2);
        assert!(region.is_none());
        assert_eq!(arena.live(), 0);
    }
}
