//! A model's own Python environment (Triton's `EXECUTION_ENV_PATH` parameter): a virtual
//! environment folder, or a conda-pack archive (`.tar.gz`, `.tgz`, `.tar`) unpacked once into a
//! cache folder named after the archive's sha256, so every instance, restart and later load
//! reuses it. `$$TRITON_MODEL_DIRECTORY` in the value is the model's folder, as in Triton;
//! a relative path is taken from the model's folder too.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use inferd_core::backend::BackendError;

/// The config parameter Triton uses.
pub const PARAMETER: &str = "EXECUTION_ENV_PATH";

/// The default cache folder for unpacked environments.
pub fn default_cache() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".cache/inferd/python-envs"),
        _ => std::env::temp_dir().join("inferd-python-envs"),
    }
}

fn load_err(msg: String) -> BackendError {
    BackendError::Load(format!("parameter {PARAMETER}: {msg}"))
}

/// Where `value` points, `$$TRITON_MODEL_DIRECTORY` replaced and relative paths resolved.
pub fn resolve(value: &str, model_dir: &Path) -> PathBuf {
    let replaced = value.replace("$$TRITON_MODEL_DIRECTORY", &model_dir.display().to_string());
    let p = PathBuf::from(replaced);
    if p.is_absolute() {
        p
    } else {
        model_dir.join(p)
    }
}

/// The interpreter inside an environment folder.
fn python_in(env: &Path) -> Option<PathBuf> {
    ["bin/python3", "bin/python"]
        .iter()
        .map(|b| env.join(b))
        .find(|p| p.exists())
}

/// The interpreter for `value` (the parameter's string), unpacking an archive into `cache`
/// the first time it is seen.
pub fn interpreter(value: &str, model_dir: &Path, cache: &Path) -> Result<PathBuf, BackendError> {
    let path = resolve(value, model_dir);
    if path.is_dir() {
        return python_in(&path).ok_or_else(|| {
            load_err(format!(
                "'{}' is a folder without bin/python3: name a virtual environment or a conda-pack archive",
                path.display()
            ))
        });
    }
    if !path.is_file() {
        return Err(load_err(format!("'{}' does not exist", path.display())));
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let gz = name.ends_with(".tar.gz") || name.ends_with(".tgz");
    if !gz && !name.ends_with(".tar") {
        return Err(load_err(format!(
            "'{}' is neither a folder nor a .tar.gz/.tgz/.tar archive",
            path.display()
        )));
    }
    let digest = inferd_core::artifact::sha256_file(&path)
        .map_err(|e| load_err(format!("reading '{}': {e}", path.display())))?;
    let target = cache.join(&digest);
    if let Some(python) = python_in(&target) {
        return Ok(python);
    }
    std::fs::create_dir_all(cache).map_err(|e| {
        load_err(format!(
            "creating the cache folder '{}': {e}",
            cache.display()
        ))
    })?;
    // Unpacked beside the target, then renamed: a crash mid-way leaves no half environment
    // under the name later loads trust.
    let partial = tempfile::Builder::new()
        .prefix(&format!("{digest}.partial-"))
        .tempdir_in(cache)
        .map_err(|e| load_err(format!("creating a folder in '{}': {e}", cache.display())))?;
    let file =
        File::open(&path).map_err(|e| load_err(format!("opening '{}': {e}", path.display())))?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    // tar's unpack skips entries that would land outside the folder (absolute, `..`).
    tar::Archive::new(reader)
        .unpack(partial.path())
        .map_err(|e| load_err(format!("unpacking '{}': {e}", path.display())))?;
    let python = python_in(partial.path()).ok_or_else(|| {
        load_err(format!(
            "'{}' holds no bin/python3: pack the environment with conda-pack (or tar a virtual environment)",
            path.display()
        ))
    })?;
    let unpack = partial.path().join("bin/conda-unpack");
    if unpack.exists() {
        // conda-pack's fix-up of the prefixes baked into the environment's files.
        let status = std::process::Command::new(&python)
            .arg(&unpack)
            .status()
            .map_err(|e| load_err(format!("running conda-unpack: {e}")))?;
        if !status.success() {
            return Err(load_err(format!("conda-unpack failed ({status})")));
        }
    }
    let kept = partial.keep();
    if let Err(e) = std::fs::rename(&kept, &target) {
        let _ = std::fs::remove_dir_all(&kept);
        // Another load unpacked the same archive first: use that one.
        if python_in(&target).is_none() {
            return Err(load_err(format!(
                "moving the environment into '{}': {e}",
                target.display()
            )));
        }
    }
    tracing::info!(archive = %path.display(), env = %target.display(), "unpacked a python environment");
    python_in(&target)
        .ok_or_else(|| load_err(format!("'{}' lost its bin/python3", target.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_directory_variable_and_relative_paths_resolve_under_the_model() {
        let dir = Path::new("/models/m");
        assert_eq!(
            resolve("$$TRITON_MODEL_DIRECTORY/env.tar.gz", dir),
            dir.join("env.tar.gz")
        );
        assert_eq!(resolve("env", dir), dir.join("env"));
        assert_eq!(resolve("/opt/env", dir), PathBuf::from("/opt/env"));
    }

    #[test]
    fn a_missing_path_or_a_file_that_is_no_archive_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = dir.path().join("cache");
        let err = interpreter("nope.tar.gz", dir.path(), &cache).expect_err("refused");
        assert!(err.to_string().contains("does not exist"), "{err}");
        std::fs::write(dir.path().join("env.zip"), b"x").expect("write");
        let err = interpreter("env.zip", dir.path(), &cache).expect_err("refused");
        assert!(err.to_string().contains("neither a folder nor"), "{err}");
    }

    #[test]
    fn an_archive_is_unpacked_once_and_reused() {
        let dir = tempfile::tempdir().expect("dir");
        let env = dir.path().join("src/bin");
        std::fs::create_dir_all(&env).expect("mkdir");
        std::fs::write(env.join("python3"), b"#!/bin/sh\n").expect("write");
        let archive = dir.path().join("env.tar.gz");
        {
            let f = File::create(&archive).expect("create");
            let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            let mut tar = tar::Builder::new(gz);
            tar.append_dir_all(".", dir.path().join("src"))
                .expect("append");
            tar.into_inner().expect("tar").finish().expect("gz");
        }
        let cache = dir.path().join("cache");
        let first = interpreter("env.tar.gz", dir.path(), &cache).expect("unpacked");
        assert!(
            first.starts_with(&cache) && first.ends_with("bin/python3"),
            "{first:?}"
        );
        std::fs::write(first.parent().expect("bin").join("marker"), b"").expect("mark");
        let second =
            interpreter("$$TRITON_MODEL_DIRECTORY/env.tar.gz", dir.path(), &cache).expect("again");
        assert_eq!(first, second);
        assert!(
            second.parent().expect("bin").join("marker").exists(),
            "not unpacked again"
        );
    }
}
