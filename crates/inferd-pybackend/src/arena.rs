//! The server's shared file: each message's tensors in a region of their own, 64-byte
//! aligned. Regions are placed first-fit in the gaps that given-back regions leave, so the file
//! grows only to the most bytes live at once (plus fragmentation), even while long decoupled
//! streams hold regions and others come and go around them. It never shrinks: the worker maps
//! it, and a mapping past a truncated end would fault.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use inferd_core::backend::NamedTensor;
use serde_json::{Value, json};

use crate::protocol::align;

/// The largest region written with one `pwrite` from a copy (see [`Arena::put`]).
const ONE_WRITE_LIMIT: u64 = 1 << 20;

#[derive(Default)]
struct State {
    size: u64,
    /// Live extents by start offset: (end, region id).
    extents: BTreeMap<u64, (u64, u64)>,
    /// Region id -> start offset.
    regions: HashMap<u64, u64>,
    next: u64,
}

impl State {
    /// The first 64-byte aligned offset with `len` free bytes.
    fn place(&self, len: u64) -> u64 {
        let mut at = 0;
        for (&start, &(end, _)) in &self.extents {
            if start >= at + len {
                break;
            }
            at = align(at.max(end));
        }
        at
    }
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
                next: 1,
                ..State::default()
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
            // The layout inside a region depends only on its (aligned) start.
            let len = wire
                .iter()
                .flatten()
                .fold(0, |at, b| align(at) + b.len() as u64)
                .max(1);
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let start = s.place(len);
            let end = start + len;
            if end > s.size {
                self.file.set_len(end)?;
                s.size = end;
            }
            let region = s.next;
            s.next += 1;
            s.extents.insert(start, (end, region));
            s.regions.insert(region, start);
            (region, start)
        };
        // A small region is written with one `pwrite` (alignment gaps zeroed): one system call
        // per request rather than one per tensor. A large one is written tensor by tensor, with
        // no copy.
        let start = offset;
        let len = wire
            .iter()
            .flatten()
            .fold(0, |at, b| align(at) + b.len() as u64);
        let mut whole = (len <= ONE_WRITE_LIMIT).then(|| vec![0u8; len as usize]);
        let mut specs = Vec::with_capacity(groups.len());
        for (group, bytes) in groups.iter().zip(&wire) {
            let mut g = Vec::with_capacity(group.len());
            for (t, b) in group.iter().zip(bytes) {
                offset = align(offset);
                let written = match whole.as_mut() {
                    Some(buf) => {
                        let at = (offset - start) as usize;
                        buf[at..at + b.len()].copy_from_slice(b);
                        Ok(())
                    }
                    None => self.file.write_all_at(b, offset),
                };
                if let Err(e) = written {
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
        if let Some(buf) = whole
            && let Err(e) = self.file.write_all_at(&buf, start)
        {
            self.free(region);
            return Err(e);
        }
        Ok((specs, Some(region)))
    }

    /// Gives a region back (unknown ids are ignored: a worker cannot free twice).
    pub fn free(&self, region: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(start) = s.regions.remove(&region) {
            s.extents.remove(&start);
        }
    }

    /// Regions not yet given back.
    pub fn live(&self) -> usize {
        self.state.lock().map(|s| s.regions.len()).unwrap_or(0)
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.state.lock().map(|s| s.size).unwrap_or(0)
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
    fn a_given_back_region_is_reused_while_others_stay_live() {
        let arena = Arena::new(tempfile::tempfile().expect("file"));
        let a = [t("A", &[1.0])];
        let (_, r1) = arena.put(&[&a]).expect("put");
        let (_, r2) = arena.put(&[&a]).expect("put");
        arena.free(r1.expect("region"));
        let (s3, r3) = arena.put(&[&a]).expect("put");
        assert_eq!(
            s3[0][0]["offset"], 0,
            "r1's gap is reused though r2 is live"
        );
        arena.free(r2.expect("region"));
        arena.free(r2.expect("region"));
        assert_eq!(arena.live(), 1);
        arena.free(r3.expect("region"));
        let (s4, _) = arena.put(&[&a]).expect("put");
        assert_eq!(s4[0][0]["offset"], 0);
    }

    #[test]
    fn a_long_lived_region_does_not_make_the_file_grow_with_traffic_around_it() {
        // A decoupled stream holds its region while thousands of requests come and go.
        let arena = Arena::new(tempfile::tempfile().expect("file"));
        let big = [t("B", &[0.5; 1000])];
        let small = [t("A", &[1.0; 10])];
        let (_, held) = arena.put(&[&small]).expect("put");
        for _ in 0..5000 {
            let (_, r1) = arena.put(&[&big]).expect("put");
            let (_, r2) = arena.put(&[&small]).expect("put");
            arena.free(r1.expect("region"));
            arena.free(r2.expect("region"));
        }
        assert_eq!(arena.live(), 1);
        assert!(
            arena.size() < 8192,
            "the file grew to {} bytes",
            arena.size()
        );
        arena.free(held.expect("region"));
    }

    #[test]
    fn a_region_too_big_for_a_gap_goes_after_the_live_ones() {
        let arena = Arena::new(tempfile::tempfile().expect("file"));
        let small = [t("A", &[1.0])];
        let big = [t("B", &[0.5; 100])];
        let (_, r1) = arena.put(&[&small]).expect("put");
        let (_, _r2) = arena.put(&[&small]).expect("put");
        arena.free(r1.expect("region"));
        let (s, _) = arena.put(&[&big]).expect("put");
        assert_eq!(s[0][0]["offset"], 128, "the 64-byte gap at 0 is too small");
        let (s, _) = arena.put(&[&small]).expect("put");
        assert_eq!(s[0][0]["offset"], 0, "but a small region fits it");
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
