//! Bringing a model in line with its folder: which versions load, which retire, and the poll
//! loop that follows the repository.

use super::*;

impl Engine {
    /// Brings a model in line with the repository: loads new and changed versions (all versions
    /// when the config changed), switches routing, then retires versions no longer wanted.
    /// Returns the versions that failed to load, with why.
    pub(super) async fn reconcile(
        &self,
        name: &str,
        wanted: bool,
    ) -> Result<Vec<(u64, LoadFailure)>> {
        let lock = self.model_lock(name)?;
        let _g = lock.lock().await;
        let repo = self.inner.opts.repository.clone();
        let n = name.to_string();
        let scanned = blocking(move || repository::scan_model(&repo, &n)).await?;
        let Some(dir) = scanned else {
            // Folder gone: unload everything, forget the model.
            let retired = {
                let mut models = self.inner.models.write().map_err(lock_err)?;
                let Some(mut entry) = models.remove(name) else {
                    return Err(Error::NotFound(format!(
                        "model '{name}' is not in the repository"
                    )));
                };
                entry
                    .versions
                    .iter_mut()
                    .filter_map(|(v, e)| e.runner.take().map(|r| (*v, r)))
                    .collect()
            };
            self.retire(name, retired, false);
            return Ok(Vec::new());
        };
        let cfg_fp = dir.config_fingerprint();
        let parsed = match self.read_config(name, &dir) {
            Ok(p) => p,
            Err(msg) => {
                tracing::error!(model = %name, "{msg}");
                let mut models = self.inner.models.write().map_err(lock_err)?;
                let entry = models.entry(name.to_string()).or_default();
                entry.wanted |= wanted;
                entry.error = Some(relative_to(&self.inner.opts.repository, &msg));
                return Ok(Vec::new());
            }
        };
        let targets = parsed
            .config
            .version_policy
            .select(&dir.versions.keys().copied().collect::<Vec<_>>());
        if targets.is_empty() {
            let msg = format!(
                "no version folder under '{}' matches the version policy (found: {:?})",
                dir.path.display(),
                dir.versions.keys().collect::<Vec<_>>()
            );
            let mut models = self.inner.models.write().map_err(lock_err)?;
            let entry = models.entry(name.to_string()).or_default();
            entry.wanted |= wanted;
            entry.error = Some(relative_to(&self.inner.opts.repository, &msg));
            return Ok(Vec::new());
        }
        // Decide what to load; mark new versions LOADING.
        let to_load: Vec<u64> = {
            let mut models = self.inner.models.write().map_err(lock_err)?;
            let entry = models.entry(name.to_string()).or_default();
            entry.wanted |= wanted;
            let mut out = Vec::new();
            for v in &targets {
                let fp = dir.versions[v].fingerprint;
                let needs = match entry.versions.get(v) {
                    Some(e) => {
                        e.runner.is_none() || e.fingerprint != fp || e.config_fingerprint != cfg_fp
                    }
                    None => true,
                };
                if needs {
                    let e = entry.versions.entry(*v).or_insert(VersionEntry {
                        state: VersionState::Loading,
                        reason: String::new(),
                        runner: None,
                        fingerprint: fp,
                        config_fingerprint: cfg_fp,
                    });
                    if e.runner.is_none() {
                        e.state = VersionState::Loading;
                        e.reason.clear();
                    }
                    out.push(*v);
                }
            }
            out
        };
        // Load off the runtime, in parallel across versions.
        let mut handles = Vec::new();
        for v in to_load {
            let this = self.clone();
            let vdir = dir.versions[&v].clone();
            let cfg = parsed.clone();
            let n = name.to_string();
            handles.push((
                v,
                vdir.fingerprint,
                blocking(move || this.load_version(&n, v, &vdir.path, cfg)),
            ));
        }
        let mut results = Vec::new();
        for (v, fp, h) in handles {
            let r = match h.await {
                Ok(r) => r,
                Err(e) => Err(LoadFailure::server(e.to_string())),
            };
            results.push((v, fp, r));
        }
        // Switch routing under one lock.
        let mut replaced = Vec::new();
        let mut retired = Vec::new();
        let mut failed = Vec::new();
        {
            let mut models = self.inner.models.write().map_err(lock_err)?;
            let entry = models.entry(name.to_string()).or_default();
            entry.error = None;
            let mut any_failed = false;
            for (v, fp, r) in results {
                let e = entry.versions.entry(v).or_insert(VersionEntry {
                    state: VersionState::Loading,
                    reason: String::new(),
                    runner: None,
                    fingerprint: fp,
                    config_fingerprint: cfg_fp,
                });
                match r {
                    Ok(runner) => {
                        tracing::info!(model = %name, version = v, "ready");
                        if let Some(old) = e.runner.replace(runner) {
                            replaced.push((v, old));
                        }
                        e.state = VersionState::Ready;
                        e.reason.clear();
                        e.fingerprint = fp;
                        e.config_fingerprint = cfg_fp;
                    }
                    Err(failure) => {
                        let msg = failure.reason.clone();
                        any_failed = true;
                        failed.push((v, failure));
                        tracing::error!(model = %name, version = v, "load failed: {msg}");
                        if e.runner.is_some() {
                            // Keep serving the loaded copy; remember the files so an unchanged
                            // broken copy is not retried on every poll.
                            e.reason =
                                format!("reload failed, still serving the previous load: {msg}");
                        } else {
                            e.state = VersionState::Unavailable;
                            e.reason = msg;
                        }
                        e.fingerprint = fp;
                        e.config_fingerprint = cfg_fp;
                    }
                }
            }
            if !any_failed {
                for (v, e) in entry.versions.iter_mut() {
                    if !targets.contains(v)
                        && let Some(r) = e.runner.take()
                    {
                        e.state = VersionState::Unloading;
                        e.reason.clear();
                        retired.push((*v, r));
                    }
                }
            }
            // Forget versions whose folders are gone and that hold nothing.
            entry.versions.retain(|v, e| {
                dir.versions.contains_key(v)
                    || e.runner.is_some()
                    || e.state == VersionState::Unloading
            });
        }
        self.retire(name, replaced, false);
        self.retire(name, retired, true);
        Ok(failed)
    }

    pub(super) async fn poll_loop(&self, baseline: HashMap<String, Option<u64>>) {
        // A change is acted on once two consecutive scans agree, so a version folder that is
        // still being copied is not loaded half-written.
        let mut previous = baseline.clone();
        let mut applied = baseline;
        loop {
            tokio::time::sleep(self.inner.opts.poll_interval).await;
            if self.inner.stopping.load(Ordering::Acquire) {
                return;
            }
            let Ok(current) = self.snapshot().await else {
                continue;
            };
            let mut names: Vec<String> = current.keys().chain(applied.keys()).cloned().collect();
            names.sort();
            names.dedup();
            for name in names {
                let now = current.get(&name).copied().flatten();
                let before = previous.get(&name).copied().flatten();
                let done = applied.get(&name).copied().flatten();
                if now != before || now == done {
                    continue;
                }
                tracing::info!(model = %name, "repository change detected");
                if let Err(e) = self.reconcile(&name, true).await {
                    tracing::warn!(model = %name, "reload: {e}");
                }
                applied.insert(name, now);
            }
            applied.retain(|k, v| v.is_some() || current.contains_key(k));
            previous = current;
        }
    }

    pub(super) async fn snapshot(&self) -> Result<HashMap<String, Option<u64>>> {
        let repo = self.inner.opts.repository.clone();
        blocking(move || {
            let names = repository::list_models(&repo)?;
            Ok(names
                .into_iter()
                .map(|n| {
                    let fp = repository::scan_model(&repo, &n).map(|d| d.fingerprint());
                    (n, fp)
                })
                .collect())
        })
        .await?
    }
}
