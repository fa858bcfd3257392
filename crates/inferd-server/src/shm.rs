//! System shared memory (Triton's `systemsharedmemory` extension): a co-located client
//! registers a region of a POSIX shared-memory segment (`/dev/shm/<key>`) and names it in a
//! request instead of sending tensor bytes through the socket; outputs can be written into a
//! region the same way.
//!
//! Every access is checked against the registered range: an input or output names a region, an
//! offset inside it and a byte size, and nothing outside `[offset, offset + byte_size)` of the
//! registration is ever read or written. Keys name only files directly in `/dev/shm` (no `/`
//! past the leading one, no `..`, no symbolic links), and the segment must be a regular file at
//! least as large as the registration. Bytes move with positioned reads and writes on the open
//! segment, not through a memory mapping: a client that shrinks its segment meanwhile gets an
//! error, never a crash of the server (a mapping would fault on the missing pages), and the
//! segment is never grown. One read is bounded by the server's body limit, as a request through
//! the socket would be.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Regions one server keeps registered at once.
pub const MAX_REGIONS: usize = 4096;

/// Where POSIX shared-memory segments live.
const SHM_DIR: &str = "/dev/shm";

/// What went wrong with a region (all are the client's doing: 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ShmError(pub String);

fn err<T>(m: impl Into<String>) -> Result<T, ShmError> {
    Err(ShmError(m.into()))
}

/// A registered region, as the status APIs report it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RegionStatus {
    /// The client's name for it.
    pub name: String,
    /// The segment's key (`/name`).
    pub key: String,
    /// Where the region starts in the segment.
    pub offset: u64,
    /// Its size.
    pub byte_size: u64,
}

struct Region {
    status: RegionStatus,
    file: File,
}

/// The registered regions.
pub struct SharedMemory {
    regions: Mutex<BTreeMap<String, Arc<Region>>>,
    /// Bytes one input may read (the body limit).
    max_read: u64,
}

impl Default for SharedMemory {
    fn default() -> Self {
        SharedMemory::new(64 << 20)
    }
}

fn segment_path(key: &str) -> Result<PathBuf, ShmError> {
    let Some(rest) = key.strip_prefix('/') else {
        return err(format!(
            "shared-memory key '{key}' must start with '/' (a POSIX shared-memory name)"
        ));
    };
    if rest.is_empty()
        || rest.contains('/')
        || rest == "."
        || rest == ".."
        || rest.contains('\0')
        || rest.len() > 255
    {
        return err(format!(
            "shared-memory key '{key}' must be '/' and a file name in {SHM_DIR} (no other '/', not '.' or '..')"
        ));
    }
    Ok(PathBuf::from(SHM_DIR).join(rest))
}

impl Region {
    /// Where `size` bytes at `offset` into the region start in the segment, checked against
    /// the registration.
    fn range(&self, offset: u64, size: u64, what: &str) -> Result<u64, ShmError> {
        let end = offset.checked_add(size);
        if end.is_none_or(|e| e > self.status.byte_size) {
            return err(format!(
                "{what}: {size} bytes at offset {offset} do not fit shared-memory region '{}' of {} bytes",
                self.status.name, self.status.byte_size
            ));
        }
        Ok(self.status.offset + offset)
    }

    /// The segment could not be read or written where the registration says.
    fn gone(&self, why: impl std::fmt::Display) -> ShmError {
        let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        ShmError(format!(
            "shared-memory region '{}': segment '{}' cannot be accessed ({why}); it holds {len} bytes, the registration ends at {}",
            self.status.name,
            self.status.key,
            self.status.offset + self.status.byte_size
        ))
    }
}

impl SharedMemory {
    /// No regions; one input read from shared memory may be at most `max_read` bytes.
    pub fn new(max_read: usize) -> Self {
        SharedMemory {
            regions: Mutex::new(BTreeMap::new()),
            max_read: max_read as u64,
        }
    }

    /// Registers `byte_size` bytes at `offset` of segment `key` as region `name`.
    pub fn register(
        &self,
        name: &str,
        key: &str,
        offset: u64,
        byte_size: u64,
    ) -> Result<(), ShmError> {
        if name.is_empty() {
            return err("a shared-memory region needs a name");
        }
        if byte_size == 0 {
            return err(format!("shared-memory region '{name}': byte_size is 0"));
        }
        let path = segment_path(key)?;
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        if regions.contains_key(name) {
            return err(format!(
                "shared-memory region '{name}' is already registered; unregister it first"
            ));
        }
        if regions.len() >= MAX_REGIONS {
            return err(format!(
                "{MAX_REGIONS} shared-memory regions are registered, the most this server keeps; unregister some"
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| {
                ShmError(format!(
                    "shared-memory region '{name}': cannot open segment '{key}' for reading and writing: {e}"
                ))
            })?;
        let meta = file
            .metadata()
            .map_err(|e| ShmError(format!("shared-memory region '{name}': {e}")))?;
        if !meta.is_file() {
            return err(format!(
                "shared-memory region '{name}': '{key}' is not a shared-memory segment"
            ));
        }
        if offset.checked_add(byte_size).is_none_or(|e| e > meta.len()) {
            return err(format!(
                "shared-memory region '{name}': offset {offset} + byte_size {byte_size} lies past the end of segment '{key}' ({} bytes)",
                meta.len()
            ));
        }
        regions.insert(
            name.to_string(),
            Arc::new(Region {
                status: RegionStatus {
                    name: name.to_string(),
                    key: key.to_string(),
                    offset,
                    byte_size,
                },
                file,
            }),
        );
        Ok(())
    }

    /// Unregisters region `name`, or every region when `None`. Unknown names are not an error
    /// (as in Triton).
    pub fn unregister(&self, name: Option<&str>) {
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        match name {
            Some(n) => {
                regions.remove(n);
            }
            None => regions.clear(),
        }
    }

    /// The status of region `name` (an error when unknown), or of all.
    pub fn status(&self, name: Option<&str>) -> Result<Vec<RegionStatus>, ShmError> {
        let regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        match name {
            Some(n) => match regions.get(n) {
                Some(r) => Ok(vec![r.status.clone()]),
                None => err(format!("Unable to find system shared memory region: '{n}'")),
            },
            None => Ok(regions.values().map(|r| r.status.clone()).collect()),
        }
    }

    fn get(&self, name: &str, what: &str) -> Result<Arc<Region>, ShmError> {
        let regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        regions.get(name).cloned().ok_or_else(|| {
            ShmError(format!(
                "{what}: shared-memory region '{name}' is not registered"
            ))
        })
    }

    /// Copies `size` bytes at `offset` of region `name` (for `what`, in messages).
    pub fn read(
        &self,
        name: &str,
        offset: u64,
        size: u64,
        what: &str,
    ) -> Result<Vec<u8>, ShmError> {
        let region = self.get(name, what)?;
        let at = region.range(offset, size, what)?;
        if size > self.max_read {
            return err(format!(
                "{what}: {size} bytes from shared memory exceed the {} bytes one input may have",
                self.max_read
            ));
        }
        let mut out = Vec::new();
        out.try_reserve_exact(size as usize)
            .map_err(|_| ShmError(format!("{what}: cannot allocate {size} bytes")))?;
        out.resize(size as usize, 0);
        region
            .file
            .read_exact_at(&mut out, at)
            .map_err(|e| region.gone(e))?;
        Ok(out)
    }

    /// Writes `data` at `offset` of region `name`, which must have room for it (the segment is
    /// never grown).
    pub fn write(&self, name: &str, offset: u64, data: &[u8], what: &str) -> Result<(), ShmError> {
        let region = self.get(name, what)?;
        let at = region.range(offset, data.len() as u64, what)?;
        let len = region.file.metadata().map(|m| m.len()).unwrap_or(0);
        if at + data.len() as u64 > len {
            return Err(region.gone("the segment is shorter than the registration"));
        }
        region
            .file
            .write_all_at(data, at)
            .map_err(|e| region.gone(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(name: &str, len: usize) -> String {
        let key = format!("/inferd-test-{}-{name}", std::process::id());
        std::fs::write(format!("{SHM_DIR}{key}"), vec![7u8; len]).unwrap();
        key
    }

    #[test]
    fn one_read_is_bounded_by_the_body_limit() {
        let shm = SharedMemory::new(16);
        let key = segment("bounded", 64);
        shm.register("r", &key, 0, 64).unwrap();
        let e = shm.read("r", 0, 32, "input 'x'").unwrap_err();
        assert!(e.0.contains("exceed the 16 bytes"), "{e}");
        std::fs::remove_file(format!("{SHM_DIR}{key}")).unwrap();
    }

    #[test]
    fn keys_outside_dev_shm_are_refused() {
        for key in ["noslash", "/", "/../etc/passwd", "/a/b", "/..", "/."] {
            let e = segment_path(key).unwrap_err();
            assert!(e.0.contains(key), "{key}: {e}");
        }
        assert_eq!(segment_path("/x").unwrap(), PathBuf::from("/dev/shm/x"));
    }

    #[test]
    fn reads_and_writes_stay_inside_the_registered_range() {
        let shm = SharedMemory::default();
        let key = segment("range", 64);
        shm.register("r", &key, 16, 32).unwrap();
        shm.write("r", 0, &[1, 2, 3, 4], "output 'y'").unwrap();
        assert_eq!(shm.read("r", 0, 4, "input 'x'").unwrap(), [1, 2, 3, 4]);
        let raw = std::fs::read(format!("{SHM_DIR}{key}")).unwrap();
        assert_eq!(&raw[16..20], &[1, 2, 3, 4]);
        assert_eq!(raw[15], 7);
        let e = shm.read("r", 30, 4, "input 'x'").unwrap_err();
        assert!(
            e.0.contains("do not fit") && e.0.contains("input 'x'"),
            "{e}"
        );
        let e = shm.write("r", u64::MAX, &[1], "output 'y'").unwrap_err();
        assert!(e.0.contains("do not fit"), "{e}");
        std::fs::remove_file(format!("{SHM_DIR}{key}")).unwrap();
    }

    #[test]
    fn registrations_that_lie_about_the_segment_are_refused() {
        let shm = SharedMemory::default();
        let key = segment("lies", 64);
        let e = shm.register("big", &key, 0, 65).unwrap_err();
        assert!(e.0.contains("past the end"), "{e}");
        let e = shm.register("far", &key, 64, 1).unwrap_err();
        assert!(e.0.contains("past the end"), "{e}");
        let e = shm
            .register("none", "/inferd-no-such-segment", 0, 1)
            .unwrap_err();
        assert!(e.0.contains("cannot open"), "{e}");
        shm.register("ok", &key, 0, 64).unwrap();
        let e = shm.register("ok", &key, 0, 64).unwrap_err();
        assert!(e.0.contains("already registered"), "{e}");
        assert_eq!(shm.status(None).unwrap().len(), 1);
        shm.unregister(Some("ok"));
        assert!(shm.status(Some("ok")).is_err());
        std::fs::remove_file(format!("{SHM_DIR}{key}")).unwrap();
    }

    #[test]
    fn a_segment_shrunk_after_registration_is_an_error_not_a_crash() {
        let shm = SharedMemory::default();
        let key = segment("shrink", 4096);
        shm.register("r", &key, 0, 4096).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("{SHM_DIR}{key}"))
            .unwrap();
        f.set_len(10).unwrap();
        let e = shm.read("r", 0, 4096, "input 'x'").unwrap_err();
        assert!(
            e.0.contains("cannot be accessed") && e.0.contains("holds 10 bytes"),
            "{e}"
        );
        let e = shm.write("r", 100, &[1], "output 'y'").unwrap_err();
        assert!(e.0.contains("holds 10 bytes"), "{e}");
        assert_eq!(
            std::fs::metadata(format!("{SHM_DIR}{key}")).unwrap().len(),
            10
        );
        std::fs::remove_file(format!("{SHM_DIR}{key}")).unwrap();
    }
}
