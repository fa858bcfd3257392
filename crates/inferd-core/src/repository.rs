//! The on-disk model repository (Triton's layout): `<repo>/<model>/config.pbtxt` and numeric
//! version folders `<repo>/<model>/<N>/...`. Scanning is synchronous and cheap; it records a
//! fingerprint (names, sizes, modification times) per version folder and per config file, so the
//! poller can tell new, changed, removed and still-being-written content apart.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::error::{Error, Result};

/// Name of the config file in a model folder.
pub const CONFIG_FILE: &str = "config.pbtxt";

/// Checks a model name from a client before it touches the file system: a single plain path
/// component, no traversal, no separators, no hidden names.
pub fn validate_model_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::invalid(format!(
            "invalid model name '{}': {why}",
            name.escape_debug()
        )))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 255 {
        return bad("it is longer than 255 bytes");
    }
    if name == "." || name == ".." || name.contains("..") {
        return bad("it must not contain '..'");
    }
    if name.contains('/') || name.contains('\\') {
        return bad("it must not contain path separators");
    }
    if name.starts_with('.') {
        return bad("it must not start with '.'");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("it must not contain control characters");
    }
    if Path::new(name).is_absolute() {
        return bad("it must not be an absolute path");
    }
    Ok(())
}

/// One version folder as scanned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionDir {
    /// The folder.
    pub path: PathBuf,
    /// Hash of file names, sizes and modification times below it.
    pub fingerprint: u64,
}

/// One model folder as scanned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDir {
    /// The folder.
    pub path: PathBuf,
    /// Contents of `config.pbtxt`, if present (`Err` when unreadable).
    pub config: Option<std::result::Result<String, String>>,
    /// Numeric version folders.
    pub versions: BTreeMap<u64, VersionDir>,
}

impl ModelDir {
    /// Fingerprint of the whole model: config text and every version's fingerprint.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.config.hash(&mut h);
        for (v, d) in &self.versions {
            v.hash(&mut h);
            d.fingerprint.hash(&mut h);
        }
        h.finish()
    }

    /// Fingerprint of the config text alone.
    pub fn config_fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.config.hash(&mut h);
        h.finish()
    }
}

/// Lists model folder names in a repository (hidden entries and plain files skipped).
pub fn list_models(repo: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(repo).map_err(|e| {
        Error::Unavailable(format!(
            "cannot read model repository '{}': {e}",
            repo.display()
        ))
    })?;
    let mut names = Vec::new();
    for entry in rd.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        if entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Scans one model folder; `None` when it does not exist.
pub fn scan_model(repo: &Path, name: &str) -> Option<ModelDir> {
    let path = repo.join(name);
    if !path.is_dir() {
        return None;
    }
    let cfg_path = path.join(CONFIG_FILE);
    let config = if cfg_path.exists() {
        Some(
            std::fs::read_to_string(&cfg_path)
                .map_err(|e| format!("cannot read {}: {e}", cfg_path.display())),
        )
    } else {
        None
    };
    let mut versions = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(&path) {
        for entry in rd.flatten() {
            let Ok(fname) = entry.file_name().into_string() else {
                continue;
            };
            // Numeric folders only; leading zeros are not versions (Triton ignores them too).
            let Ok(v) = fname.parse::<u64>() else {
                continue;
            };
            if fname.starts_with('0') && fname != "0" {
                continue;
            }
            let vpath = entry.path();
            if !vpath.is_dir() {
                continue;
            }
            let fingerprint = dir_fingerprint(&vpath);
            versions.insert(
                v,
                VersionDir {
                    path: vpath,
                    fingerprint,
                },
            );
        }
    }
    Some(ModelDir {
        path,
        config,
        versions,
    })
}

/// Hash of names, sizes and modification times of all files under `dir` (depth-limited).
pub fn dir_fingerprint(dir: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    fingerprint_into(dir, dir, 0, &mut h);
    h.finish()
}

fn fingerprint_into(root: &Path, dir: &Path, depth: usize, h: &mut DefaultHasher) {
    if depth > 8 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        p.strip_prefix(root).unwrap_or(&p).hash(h);
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            fingerprint_into(root, &p, depth + 1, h);
        } else {
            meta.len().hash(h);
            if let Ok(m) = meta.modified() {
                m.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
                    .hash(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_with_path_tricks_are_refused() {
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "a\\b",
            "/etc/passwd",
            ".hidden",
            "a..b",
            "x\0y",
            "x\ny",
        ] {
            assert!(
                validate_model_name(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        for good in ["simple_mlp", "model-1", "m.v2", "日本"] {
            validate_model_name(good).unwrap();
        }
    }

    #[test]
    fn scan_finds_numeric_versions_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        std::fs::create_dir_all(m.join("1")).unwrap();
        std::fs::create_dir_all(m.join("10")).unwrap();
        std::fs::create_dir_all(m.join("latest")).unwrap();
        std::fs::create_dir_all(m.join("007")).unwrap();
        std::fs::write(m.join("1/model.onnx"), b"abc").unwrap();
        std::fs::write(m.join(CONFIG_FILE), "name: \"m\"").unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        assert_eq!(list_models(dir.path()).unwrap(), vec!["m"]);
        let s = scan_model(dir.path(), "m").unwrap();
        assert_eq!(s.versions.keys().copied().collect::<Vec<_>>(), vec![1, 10]);
        assert_eq!(s.config, Some(Ok("name: \"m\"".to_string())));
        assert!(scan_model(dir.path(), "nope").is_none());
    }

    #[test]
    fn fingerprint_changes_when_a_file_grows() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"abc").unwrap();
        let a = dir_fingerprint(dir.path());
        assert_eq!(a, dir_fingerprint(dir.path()));
        std::fs::write(dir.path().join("model.onnx"), b"abcdef").unwrap();
        assert_ne!(a, dir_fingerprint(dir.path()));
    }
}
