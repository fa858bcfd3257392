//! Load with overrides (Triton's load API with `parameters.config` and `file:<version>/<name>`):
//! a model served from a config given in the request, and optionally from files given in it.
//!
//! Files are written only into a private staging folder the server owns (mode 0700, under the
//! system's temporary folder unless `--staging-dir` names one), never into the repository:
//! each name must be a version folder and a relative path of plain components, so nothing can
//! be written outside the staging folder (Triton's CVE-2023-31036 was a path traversal here).
//! Staged files are checked like every artifact before they load. A later load without
//! overrides, or an unload, returns the model to its repository folder.

use std::path::Component;

use super::*;

/// What a load request overrides.
#[derive(Clone, Debug, Default)]
pub struct LoadOverride {
    /// A model config as JSON (protobuf's JSON mapping of Triton's `ModelConfig`).
    pub config_json: Option<String>,
    /// Files as (`<version>/<path>`, contents).
    pub files: Vec<(String, Vec<u8>)>,
}

/// An override in force for one model.
#[derive(Clone, Debug)]
pub(super) struct Override {
    /// The config text (converted from JSON) that replaces the folder's.
    pub(super) config_text: String,
    /// A staging folder holding `<model>/<version>/...` in place of the repository's folder.
    pub(super) root: Option<PathBuf>,
}

/// The errno values that mean a staged name the file system cannot take (Linux).
mod libc_errno {
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const ENAMETOOLONG: i32 = 36;
}

/// Files one override may carry.
const MAX_FILES: usize = 256;

/// Checks a `file:` name: `<version>/<relative path>` of plain components.
fn staged_path(name: &str) -> Result<PathBuf> {
    // "failed to poll from model repository": the words Triton's clients match on.
    let bad = |why: &str| {
        Err(Error::invalid(format!(
            "failed to poll from model repository: load parameter 'file:{name}': {why}; expected 'file:<version>/<file name>'"
        )))
    };
    let path = Path::new(name);
    let comps: Vec<Component> = path.components().collect();
    if comps.len() < 2 {
        return bad("names no file inside a version folder");
    }
    if !comps.iter().all(|c| matches!(c, Component::Normal(_))) {
        return bad("is not a plain relative path ('..', '/', '.' are refused)");
    }
    let version = comps[0].as_os_str().to_str().unwrap_or("");
    let numeric = !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit());
    if !numeric || (version.starts_with('0') && version != "0") {
        return bad("does not start with a version folder (a number)");
    }
    if name.contains('\0') || comps.len() > 16 {
        return bad("is not a usable file name");
    }
    Ok(comps.iter().collect())
}

impl Engine {
    /// The folder that stages overrides, created private on first use and checked on every
    /// use: a real folder (not a link), owned by this process's user, closed to others, so no
    /// one else can plant links in it.
    fn staging_root(&self) -> Result<PathBuf> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let root = match &self.inner.opts.staging_dir {
            Some(d) => d.clone(),
            None => {
                // Unguessable, so nobody can create it first in a shared temporary folder.
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u32(std::process::id());
                std::env::temp_dir().join(format!("inferd-staging-{:016x}", h.finish()))
            }
        };
        let fail =
            |why: String| Error::Internal(format!("staging folder {}: {why}", root.display()));
        match std::fs::symlink_metadata(&root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = std::fs::DirBuilder::new();
                b.recursive(true).mode(0o700);
                b.create(&root)
                    .map_err(|e| fail(format!("cannot create it: {e}")))?;
            }
            Err(e) => return Err(fail(e.to_string())),
            Ok(m) => {
                let me = std::fs::symlink_metadata("/proc/self")
                    .map(|s| s.uid())
                    .ok();
                if !m.is_dir() || m.file_type().is_symlink() {
                    return Err(fail("is not a folder (a link?)".into()));
                }
                if me.is_some_and(|uid| uid != m.uid()) {
                    return Err(fail("belongs to another user".into()));
                }
                if m.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
                        .map_err(|e| fail(format!("cannot close it to others: {e}")))?;
                }
            }
        }
        Ok(root)
    }

    /// Whether `dir` lies in the staging folder (its files are checked against it, not the
    /// repository).
    pub(super) fn artifact_root(&self, dir: &Path) -> PathBuf {
        let staged = self.inner.overrides.lock().ok().and_then(|o| {
            o.values()
                .filter_map(|ov| ov.root.clone())
                .find(|r| dir.starts_with(r))
        });
        staged.unwrap_or_else(|| self.inner.opts.repository.clone())
    }

    /// Where model `name` is read from now: the repository (or a staging folder) and the config
    /// text that replaces its folder's, if any.
    pub(super) fn source_of(&self, name: &str) -> (PathBuf, Option<String>) {
        let o = self
            .inner
            .overrides
            .lock()
            .ok()
            .and_then(|o| o.get(name).cloned());
        match o {
            Some(o) => (
                o.root.unwrap_or_else(|| self.inner.opts.repository.clone()),
                Some(o.config_text),
            ),
            None => (self.inner.opts.repository.clone(), None),
        }
    }

    fn write_staged(&self, name: &str, files: &[(String, Vec<u8>)]) -> Result<PathBuf> {
        if files.len() > MAX_FILES {
            return Err(Error::invalid(format!(
                "a load may carry at most {MAX_FILES} files, this one has {}",
                files.len()
            )));
        }
        let paths: Vec<PathBuf> = files
            .iter()
            .map(|(n, _)| staged_path(n))
            .collect::<Result<_>>()?;
        let root = self.staging_root()?;
        // A fresh folder per load, never one left from before (create_dir fails if it exists).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let this = loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let candidate = root.join(format!("{name}.{n}"));
            match std::fs::create_dir(&candidate) {
                Ok(()) => break candidate,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::Internal(format!(
                        "cannot create a staging folder in {}: {e}",
                        root.display()
                    )));
                }
            }
        };
        let model_dir = this.join(name);
        // The names were checked; what the file system still refuses (a name too long, a file
        // where a folder is named) is the request's doing.
        let io = |e: std::io::Error| {
            let client = matches!(
                e.raw_os_error(),
                Some(libc_errno::ENAMETOOLONG | libc_errno::ENOTDIR | libc_errno::EISDIR)
            );
            if client {
                Error::invalid(format!(
                    "failed to poll from model repository: cannot stage the files as named: {e}"
                ))
            } else {
                Error::Internal(format!("cannot stage files: {e}"))
            }
        };
        let written = Self::write_all(&model_dir, &paths, files, io);
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&this);
            return Err(e);
        }
        Ok(this)
    }

    fn write_all(
        model_dir: &Path,
        paths: &[PathBuf],
        files: &[(String, Vec<u8>)],
        io: impl Fn(std::io::Error) -> Error,
    ) -> Result<()> {
        for (rel, (_, data)) in paths.iter().zip(files) {
            let dest = model_dir.join(rel);
            // Plain relative components under a folder we just created: `dest` stays inside.
            debug_assert!(dest.starts_with(model_dir));
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(&io)?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&dest)
                .and_then(|mut f| std::io::Write::write_all(&mut f, data))
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Error::invalid(format!(
                            "load parameter 'file:{}' is given twice",
                            rel.display()
                        ))
                    } else {
                        io(e)
                    }
                })?;
        }
        Ok(())
    }

    /// Explicit-mode load with overrides: the config (and files) in `o` replace the model's
    /// folder until a load without overrides or an unload. A load that fails leaves the
    /// versions that were serving, and the override they were loaded with, in place.
    pub async fn load_with(&self, name: &str, o: LoadOverride) -> Result<()> {
        self.require_explicit("load")?;
        repository::validate_model_name(name)?;
        // One override change at a time: two loads of one model must not swap each other's
        // staging folders.
        let _one_at_a_time = self.inner.override_lock.lock().await;
        let Some(json) = o.config_json else {
            if !o.files.is_empty() {
                return Err(Error::invalid(
                    "file overrides need a config override too (parameters.config), as in Triton",
                ));
            }
            self.set_override(name, None);
            return self.load(name).await;
        };
        let mut text = crate::config::json::json_to_pbtxt(&json).map_err(|e| {
            tracing::warn!(model = %name, "Invalid config override: {e}");
            Error::invalid(format!(
                "failed to load '{name}': Invalid config override (load parameter 'config'): {e}"
            ))
        })?;
        let named = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .is_some_and(|v| v.get("name").is_some());
        if !named {
            text.push_str(&format!("name: \"{name}\" "));
        }
        let engine = self.clone();
        let (n, files) = (name.to_string(), o.files);
        let root = if files.is_empty() {
            None
        } else {
            Some(
                tokio::task::spawn_blocking(move || engine.write_staged(&n, &files))
                    .await
                    .map_err(|e| Error::Internal(format!("staging stopped: {e}")))??,
            )
        };
        let was_known = self.knows(name).unwrap_or(false);
        let previous = self.set_override(
            name,
            Some(Override {
                config_text: text,
                root: root.clone(),
            }),
        );
        let r = self.load(name).await.map_err(|e| {
            // The override's text stands in for the folder's config.pbtxt: say so.
            let text = e.to_string().replace(
                &format!("{name}/{}", repository::CONFIG_FILE),
                "the config override (load parameter 'config')",
            );
            match e {
                Error::InvalidArgument(_) => Error::InvalidArgument(text),
                Error::NotFound(_) => Error::NotFound(text),
                other => other,
            }
        });
        let stale = if r.is_ok() {
            previous.and_then(|p| p.root)
        } else {
            // Back to what served before (nothing changes for the serving versions, and the
            // model's error clears); the new staging folder goes.
            self.set_override(name, previous);
            if was_known {
                let _ = self.reconcile(name, true).await;
            }
            root
        };
        if let Some(dir) = stale {
            let _ = std::fs::remove_dir_all(dir);
        }
        r
    }

    /// Sets (or, with `None`, clears) a model's override; returns the one it replaces.
    pub(super) fn set_override(&self, name: &str, o: Option<Override>) -> Option<Override> {
        let mut all = self.inner.overrides.lock().ok()?;
        match o {
            Some(o) => all.insert(name.to_string(), o),
            None => all.remove(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_names_are_version_folders_and_plain_paths() {
        assert_eq!(
            staged_path("1/model.onnx").unwrap(),
            PathBuf::from("1/model.onnx")
        );
        assert_eq!(
            staged_path("3/sub/weights.bin").unwrap(),
            PathBuf::from("3/sub/weights.bin")
        );
        for bad in [
            "model.onnx",
            "../1/model.onnx",
            "1/../../etc/passwd",
            "/1/model.onnx",
            "01/model.onnx",
            "x/model.onnx",
            "1",
        ] {
            let e = staged_path(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("file:{bad}")), "{bad}: {e}");
        }
    }
}
