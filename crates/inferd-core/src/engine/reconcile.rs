//! Bringing a model in line with its folder: which versions load, which retire, and the poll
//! loop that follows the repository.

use super::lifecycle::{Files, Settled};
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
        let (repo, config_text) = self.source_of(name);
        let n = name.to_string();
        let scanned = blocking(move || repository::scan_model(&repo, &n)).await?;
        // A load's config override stands in for the folder's config.pbtxt.
        let scanned = scanned.map(|mut d| {
            if let Some(text) = config_text {
                d.config = Some(Ok(text));
            }
            d
        });
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
        // Decide what to load; versions without a serving copy turn LOADING.
        let files: Vec<(u64, Files)> = targets
            .iter()
            .map(|v| {
                let files = Files {
                    version: dir.versions[v].fingerprint,
                    config: cfg_fp,
                };
                (*v, files)
            })
            .collect();
        let to_load: Vec<u64> = {
            let mut models = self.inner.models.write().map_err(lock_err)?;
            let entry = models.entry(name.to_string()).or_default();
            entry.wanted |= wanted;
            entry.plan_loads(&files)
        };
        // Load off the runtime, in parallel across versions and models, at most
        // `model_load_threads` at once.
        let mut handles = Vec::new();
        for v in to_load {
            let this = self.clone();
            let vdir = dir.versions[&v].clone();
            let cfg = parsed.clone();
            let n = name.to_string();
            let fingerprint = vdir.fingerprint;
            let slots = self.inner.load_slots.clone();
            handles.push((
                v,
                fingerprint,
                tokio::spawn(async move {
                    let _slot = slots
                        .acquire_owned()
                        .await
                        .map_err(|_| Error::Internal("the load slots are closed".into()))?;
                    blocking(move || this.load_version(&n, v, &vdir.path, cfg)).await
                }),
            ));
        }
        let mut results = Vec::new();
        let mut failed = Vec::new();
        for (v, fp, h) in handles {
            let r = match h.await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(LoadFailure::server(e.to_string())),
                Err(e) => Err(LoadFailure::server(e.to_string())),
            };
            let files = Files {
                version: fp,
                config: cfg_fp,
            };
            match r {
                Ok(runner) => {
                    tracing::info!(model = %name, version = v, "ready");
                    results.push((v, files, Ok(runner)));
                }
                Err(failure) => {
                    tracing::error!(model = %name, version = v, "load failed: {failure}");
                    results.push((v, files, Err(failure.reason.clone())));
                    failed.push((v, failure));
                }
            }
        }
        // Switch routing under one lock.
        let Settled { replaced, retired } = {
            let mut models = self.inner.models.write().map_err(lock_err)?;
            let entry = models.entry(name.to_string()).or_default();
            let settled = entry.settle(results, &targets);
            entry.forget_missing(|v| dir.versions.contains_key(&v));
            settled
        };
        self.inner.settled.notify_waiters();
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
