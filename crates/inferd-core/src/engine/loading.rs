//! Loading one version: its config, its backend, the safety scan, the backend's load,
//! auto-complete, warm-up. Failures say whose fault they are and name paths relative to the
//! repository.

use super::*;

/// Why a version did not load, and whose fault it is: the model's (bad files, config, an
/// operator the backend refuses: the client's to fix, 400 on the load API) or the server's
/// (I/O, resources, a backend panic: 500).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoadFailure {
    /// What went wrong, paths relative to the repository.
    pub reason: String,
    /// The server is at fault, not the model.
    pub server_fault: bool,
}

impl From<String> for LoadFailure {
    fn from(reason: String) -> Self {
        LoadFailure {
            reason,
            server_fault: false,
        }
    }
}

impl LoadFailure {
    pub(super) fn server(reason: String) -> Self {
        LoadFailure {
            reason,
            server_fault: true,
        }
    }
}

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// `message` with the repository's absolute path taken out, so clients see paths relative to
/// the repository and never the server's filesystem layout.
pub(crate) fn relative_to(repository: &Path, message: &str) -> String {
    let mut out = message.to_string();
    let mut prefixes = vec![repository.to_path_buf()];
    if let Ok(c) = repository.canonicalize() {
        prefixes.push(c);
    }
    if let Ok(cwd) = std::env::current_dir()
        && repository.is_relative()
    {
        prefixes.push(cwd.join(repository));
    }
    // Longest first: a relative path such as `../../srv/models` contains the absolute one
    // (`/srv/models`), and taking that out first would leave `../..` glued to the rest.
    let mut prefixes: Vec<String> = prefixes
        .iter()
        .map(|p| p.display().to_string())
        .filter(|p| !p.is_empty() && p != "/" && p != ".")
        .collect();
    prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in prefixes {
        out = out.replace(&format!("{}/", p.trim_end_matches('/')), "");
    }
    out
}

impl Engine {
    /// Checks one model folder without serving it: config syntax and fields, version folders,
    /// and a full load (and warm-up) of every version the policy selects. Blocking. Returns the
    /// problems found (empty when the model is fine) and the warnings.
    pub fn check_model_blocking(&self, name: &str) -> (Vec<String>, Vec<String>) {
        let mut problems = Vec::new();
        let Some(dir) = repository::scan_model(&self.inner.opts.repository, name) else {
            return (vec![format!("model folder '{name}' not found")], vec![]);
        };
        let parsed = match self.read_config(name, &dir) {
            Ok(p) => p,
            Err(e) => return (vec![e], vec![]),
        };
        let warnings = parsed.warnings.iter().map(|w| w.to_string()).collect();
        let targets = parsed
            .config
            .version_policy
            .select(&dir.versions.keys().copied().collect::<Vec<_>>());
        if targets.is_empty() {
            problems.push(format!(
                "{}: no numeric version folder matches the version policy (found: {:?})",
                dir.path.display(),
                dir.versions.keys().collect::<Vec<_>>()
            ));
        }
        for v in targets {
            let vdir = &dir.versions[&v].path;
            match self.load_version(name, v, vdir, parsed.clone()) {
                Ok(runner) => runner.shutdown_blocking(),
                Err(e) => problems.push(format!("version {v}: {e}")),
            }
        }
        (problems, warnings)
    }

    pub(super) fn read_config(
        &self,
        name: &str,
        dir: &ModelDir,
    ) -> std::result::Result<ParsedConfig, String> {
        let file = dir.path.join(repository::CONFIG_FILE);
        let mut parsed = match &dir.config {
            None => ParsedConfig {
                config: ModelConfig::default(),
                max_batch_size_set: false,
                warnings: vec![],
            },
            Some(Err(e)) => return Err(e.clone()),
            Some(Ok(text)) => parse_config(text, &file).map_err(|errs| {
                errs.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            })?,
        };
        for w in &parsed.warnings {
            tracing::warn!(model = %name, "{w}");
        }
        if parsed.config.name.is_empty() {
            parsed.config.name = name.to_string();
        } else if parsed.config.name != name {
            return Err(format!(
                "{}: field 'name': \"{}\" does not match the model folder name \"{name}\"",
                file.display(),
                parsed.config.name
            ));
        }
        Ok(parsed)
    }

    pub(super) fn pick_backend(
        &self,
        cfg: &ModelConfig,
        version_dir: &Path,
    ) -> std::result::Result<Arc<dyn Backend>, String> {
        if !cfg.platform.is_empty() || !cfg.backend.is_empty() {
            return self
                .inner
                .backends
                .iter()
                .find(|b| b.accepts(&cfg.platform, &cfg.backend))
                .cloned()
                .ok_or_else(|| {
                    if cfg.platform == "tensorrt_plan" || cfg.backend == "tensorrt" {
                        return "TensorRT plans (platform 'tensorrt_plan') run only through NVIDIA's TensorRT runtime on an NVIDIA GPU, which this build does not include; export the model to ONNX and serve the .onnx instead".to_string();
                    }
                    format!(
                        "no backend for platform '{}' / backend '{}' in this build (available: {})",
                        cfg.platform,
                        cfg.backend,
                        self.inner
                            .backends
                            .iter()
                            .map(|b| b.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                });
        }
        self.inner
            .backends
            .iter()
            // A backend that needs no file (repeat) is only ever named, never guessed.
            .filter(|b| b.needs_model_file())
            .find(|b| version_dir.join(b.default_model_filename(cfg, version_dir)).exists())
            .cloned()
            .ok_or_else(|| {
                format!(
                    "config sets neither platform nor backend, and '{}' holds no file a backend recognises ({})",
                    version_dir.display(),
                    self.inner.backends.iter().filter(|b| b.needs_model_file()).map(|b| b.default_model_filename(cfg, version_dir)).collect::<Vec<_>>().join(", ")
                )
            })
    }

    /// Loads one version: backend load, auto-complete, validation, instances, warm-up.
    pub(super) fn load_version(
        &self,
        name: &str,
        version: u64,
        dir: &Path,
        parsed: ParsedConfig,
    ) -> std::result::Result<Arc<VersionRunner>, LoadFailure> {
        let start = std::time::Instant::now();
        let loaded = self.load_version_inner(name, version, dir, parsed);
        // The load's temporaries (file bytes, parsed graphs) were freed on this thread.
        if let Some(reclaim) = self.inner.opts.reclaim_memory {
            reclaim();
        }
        loaded
            .inspect(|r| r.set_load_duration(start.elapsed()))
            .map_err(|f| LoadFailure {
                reason: relative_to(&self.inner.opts.repository, &f.reason),
                ..f
            })
    }

    pub(super) fn load_version_inner(
        &self,
        name: &str,
        version: u64,
        dir: &Path,
        parsed: ParsedConfig,
    ) -> std::result::Result<Arc<VersionRunner>, LoadFailure> {
        tracing::info!(model = %name, version, "loading");
        let mut cfg = parsed.config;
        if cfg.ensemble_scheduling.is_some() || cfg.platform == "ensemble" {
            return self.load_ensemble(name, version, cfg);
        }
        let phase_start = std::time::Instant::now();
        // The backend and its file name are known from the config and the folder's names (no
        // content read), so the checks can keep the model file's bytes for the loader.
        let picked = self.pick_backend(&cfg, dir);
        let model_file = picked.as_ref().ok().map(|backend| {
            dir.join(if cfg.default_model_filename.is_empty() {
                backend.default_model_filename(&cfg, dir)
            } else {
                cfg.default_model_filename.clone()
            })
        });
        // Safety before anything is interpreted, and before a backend is required, so a pickle
        // is refused as a pickle even for a backend this build lacks: escaping links or
        // external data, malformed headers, pinned digests. A pickle whose digest the config
        // pins is the operator's to vouch for (a TorchScript archive, a pickle beside a
        // model.py: both run in isolated workers); foreign imports in an archive are not.
        let root = self.artifact_root(dir);
        let (mut findings, model_bytes) =
            crate::artifact::scan_tree_keeping(dir, &root, model_file.as_deref());
        if let Some(model_dir) = dir.parent() {
            findings.extend(crate::artifact::check_pins_known(
                model_dir,
                cfg.parameters.iter().map(|(k, v)| (k, &v.string_value)),
                Some(dir),
                model_file.as_deref().zip(model_bytes.as_deref()),
            ));
        }
        if let Some(model_dir) = dir.parent() {
            findings = crate::artifact::waive_pinned(
                findings,
                model_dir,
                cfg.parameters.iter().map(|(k, v)| (k, &v.string_value)),
            );
        }
        if !findings.is_empty() {
            let shown: Vec<String> = findings.iter().take(5).map(|f| f.to_string()).collect();
            return Err(format!(
                "refused before loading ({} finding{}): {}",
                findings.len(),
                if findings.len() == 1 { "" } else { "s" },
                shown.join("; ")
            )
            .into());
        }
        let checks = phase_start.elapsed();
        let phase_start = std::time::Instant::now();
        let backend = picked?;
        if cfg.wants_gpu()
            && let Some(why) = backend.gpu_unsupported()
        {
            return Err(format!(
                "instance_group asks for KIND_GPU, but {why} in this build; use KIND_CPU or KIND_AUTO"
            )
            .into());
        }
        let model_file = model_file.unwrap_or_default();
        if backend.needs_model_file() && !model_file.exists() {
            return Err(format!("model file '{}' not found", model_file.display()).into());
        }
        let loaded = backend
            .load(&LoadRequest {
                model: name,
                version,
                version_dir: dir,
                model_file: model_file.clone(),
                config: &cfg,
                model_bytes,
                caller: self.caller(),
                metrics: self.inner.custom_metrics.clone(),
            })
            .map_err(|e| {
                let reason = format!("{}: {e}", model_file.display());
                match e {
                    crate::BackendError::Internal(_) => LoadFailure::server(reason),
                    _ => LoadFailure::from(reason),
                }
            })?;
        if cfg.platform.is_empty() && cfg.backend.is_empty() {
            cfg.backend = backend.name().to_string();
        }
        if cfg.platform.is_empty()
            && let Some(p) = backend.platform()
        {
            cfg.platform = p.to_string();
        }
        match (cfg.is_decoupled(), loaded.decoupled().is_some()) {
            (true, false) => {
                return Err(format!(
                    "field 'model_transaction_policy.decoupled': backend '{}' answers each request once; it cannot serve a decoupled model",
                    backend.name()
                )
                .into());
            }
            (false, true) => {
                return Err(format!(
                    "backend '{}' answers with any number of responses per request: set model_transaction_policy {{ decoupled: true }}",
                    backend.name()
                )
                .into());
            }
            _ => {}
        }
        complete_config(&mut cfg, parsed.max_batch_size_set, loaded.signature()).map_err(|e| {
            format!(
                "config does not match the model file {}: {e}",
                model_file.display()
            )
        })?;
        validate_config(&cfg).map_err(|e| format!("invalid config: {e}"))?;
        let load = phase_start.elapsed();
        let phase_start = std::time::Instant::now();
        warmup::run(name, &cfg, loaded.as_ref(), dir)?;
        let warm = phase_start.elapsed();
        if cfg.response_cache.as_ref().is_some_and(|c| c.enable) && self.inner.cache.is_none() {
            tracing::warn!(
                model = %name,
                version,
                "response_cache is enabled but the server has no cache \
                 (--cache-config local,size=BYTES): requests are not cached"
            );
        }
        let drift = crate::drift::DriftSampler::from_config(
            &cfg,
            self.inner.opts.drift_sample_rate,
            dir.parent(),
        )?
        .map(Arc::new);
        let runner_opts = RunnerOptions {
            default_queue: self.inner.opts.queue_capacity,
            budget: self.inner.budget.clone(),
            idle_spin: self.inner.opts.executor_spin,
            cache: self.inner.cache.clone(),
            drift,
        };
        let sequences = crate::sequence::Sequences::new(
            name,
            &cfg,
            loaded.signature(),
            dir,
            self.inner.opts.max_sequences,
        )
        .map_err(|e| e.to_string())?;
        let runner = VersionRunner::start(
            name,
            version,
            Arc::new(cfg),
            loaded,
            &runner_opts,
            crate::runner::VersionExtras {
                sequences,
                ensemble: None,
            },
        )
        .map_err(|e| LoadFailure::server(e.to_string()))?;
        // Object storage: the time its files took to fetch since the model last loaded.
        let fetch = self.take_fetch(name);
        tracing::info!(
            model = %name,
            version,
            fetch_ms = fetch.map_or(0.0, |f| f.as_secs_f64() * 1e3),
            checks_ms = checks.as_secs_f64() * 1e3,
            load_ms = load.as_secs_f64() * 1e3,
            warmup_ms = warm.as_secs_f64() * 1e3,
            "start phases"
        );
        let mut phases = Vec::with_capacity(4);
        if let Some(fetch) = fetch {
            phases.push(("fetch", fetch));
        }
        phases.extend([("checks", checks), ("load", load), ("warmup", warm)]);
        runner.set_start_phases(phases);
        Ok(runner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_visible_reasons_name_paths_relative_to_the_repository() {
        let repo = Path::new("/srv/models");
        assert_eq!(
            relative_to(repo, "/srv/models/mlp/1/model.onnx: bad operator"),
            "mlp/1/model.onnx: bad operator"
        );
        assert_eq!(
            relative_to(
                Path::new("/srv/models/"),
                "config file /srv/models/a/config.pbtxt"
            ),
            "config file a/config.pbtxt"
        );
        assert_eq!(relative_to(repo, "/etc/other: x"), "/etc/other: x");
    }

    #[test]
    fn a_relative_repository_that_climbs_to_its_absolute_path_is_taken_out_whole() {
        // Regression: `../../tmp/x/models` contains `/tmp/x/models`; taking the absolute form
        // out first left `../..llm/1/model.gguf`.
        let abs = std::env::temp_dir().join(format!("inferd-rel-{}", std::process::id()));
        std::fs::create_dir_all(&abs).expect("temp dir");
        let abs = abs.canonicalize().expect("canonical");
        let cwd = std::env::current_dir().expect("cwd");
        let up = "../".repeat(cwd.components().count() - 1);
        let rel = PathBuf::from(format!(
            "{up}{}",
            abs.display().to_string().trim_start_matches('/')
        ));
        let message = format!("{}/llm/1/model.gguf: missing", rel.display());
        assert_eq!(relative_to(&rel, &message), "llm/1/model.gguf: missing");
        std::fs::remove_dir_all(&abs).ok();
    }
}
