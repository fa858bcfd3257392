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
    /// The folder that stages overrides, created private on first use.
    fn staging_root(&self) -> Result<PathBuf> {
        let root = self.inner.opts.staging_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("inferd-staging-{}", std::process::id()))
        });
        use std::os::unix::fs::DirBuilderExt;
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        b.create(&root).map_err(|e| {
            Error::Internal(format!(
                "cannot create the staging folder {}: {e}",
                root.display()
            ))
        })?;
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
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let this = root.join(format!("{name}.{n}"));
        let model_dir = this.join(name);
        let io = |e: std::io::Error| Error::Internal(format!("cannot stage files: {e}"));
        for (rel, (_, data)) in paths.iter().zip(files) {
            let dest = model_dir.join(rel);
            // Plain relative components under a folder we just created: `dest` stays inside.
            debug_assert!(dest.starts_with(&model_dir));
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
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
        Ok(this)
    }

    /// Explicit-mode load with overrides: the config (and files) in `o` replace the model's
    /// folder until a load without overrides or an unload. A load that fails leaves the
    /// versions that were serving, and the override they were loaded with, in place.
    pub async fn load_with(&self, name: &str, o: LoadOverride) -> Result<()> {
        self.require_explicit("load")?;
        repository::validate_model_name(name)?;
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
        if !text.contains("name:") {
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
                _ => Error::Internal(text),
            }
        });
        let stale = if r.is_ok() {
            previous.and_then(|p| p.root)
        } else {
            // Back to what served before (nothing changes for the serving versions, and the
            // model's error clears); the new staging folder goes.
            self.set_override(name, previous);
            let _ = self.reconcile(name, true).await;
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
