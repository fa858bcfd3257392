//! What the engine says about its models: metadata, readiness, statistics, the repository
//! index.

use super::*;

impl Engine {
    /// Metadata of a model's ready version (newest unless `version` is given).
    pub fn model_info(&self, model: &str, version: Option<u64>) -> Result<ModelInfo> {
        let guard = self.route(model, version)?;
        let runner = guard.runner();
        let models = self.inner.models.read().map_err(lock_err)?;
        let versions = models
            .get(model)
            .map(|m| {
                m.versions
                    .iter()
                    .filter(|(_, v)| v.state == VersionState::Ready)
                    .map(|(k, _)| *k)
                    .collect()
            })
            .unwrap_or_default();
        Ok(ModelInfo {
            name: model.to_string(),
            versions,
            version: runner.version(),
            config: runner.config().clone(),
        })
    }

    /// Whether a model (or one version) is ready; an ensemble is ready when its members are.
    pub fn is_model_ready(&self, model: &str, version: Option<u64>) -> Result<bool> {
        match self.route(model, version) {
            Ok(g) => Ok(g.runner().health() == crate::backend::Health::Ready
                && g.runner()
                    .ensemble()
                    .is_none_or(|p| self.ensemble_blocked(g.runner().config(), p).is_none())),
            Err(Error::Unavailable(_)) => Ok(false),
            Err(Error::NotFound(_)) if self.knows(model)? => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) fn knows(&self, model: &str) -> Result<bool> {
        Ok(self
            .inner
            .models
            .read()
            .map_err(lock_err)?
            .contains_key(model))
    }

    /// Statistics of ready versions: of one model (or one version), or of all.
    pub fn statistics(
        &self,
        model: Option<&str>,
        version: Option<u64>,
    ) -> Result<Vec<(String, u64, VersionStats)>> {
        let models = self.inner.models.read().map_err(lock_err)?;
        if let Some(m) = model {
            let entry = models
                .get(m)
                .ok_or_else(|| Error::NotFound(super::routing::unknown_model(m)))?;
            if let Some(v) = version
                && !entry.versions.contains_key(&v)
            {
                return Err(Error::NotFound(super::routing::unknown_version(m, v)));
            }
        }
        let mut out = Vec::new();
        for (name, entry) in models.iter() {
            if model.is_some_and(|m| m != name) {
                continue;
            }
            for (v, e) in &entry.versions {
                if version.is_some_and(|want| want != *v) {
                    continue;
                }
                if let (VersionState::Ready, Some(r)) = (e.state, &e.runner) {
                    out.push((name.clone(), *v, r.stats()));
                }
            }
        }
        Ok(out)
    }

    /// What a metrics page shows of every version the engine knows, loaded or not.
    pub fn metrics_snapshot(&self) -> Vec<VersionMetrics> {
        let Ok(models) = self.inner.models.read() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, entry) in models.iter() {
            for (v, e) in &entry.versions {
                let r = e.runner.as_ref();
                out.push(VersionMetrics {
                    model: name.clone(),
                    version: *v,
                    state: e.state,
                    queue_depth: r.map_or(0, |r| r.queue_depth()),
                    inflight: r.map_or(0, |r| r.inflight()),
                    instances: r.map_or(1, |r| r.config().instance_count().max(1)),
                    load_duration: r.map(|r| r.load_duration()),
                    start_phases: r.map(|r| r.start_phases()).unwrap_or_default(),
                    stats: r.map(|r| r.stats()),
                    generator: r.and_then(|r| r.generator()).map(|g| g.stats()),
                });
            }
        }
        out
    }

    /// Live load of every ready version: (model, version, queue depth, requests in flight).
    pub fn load_gauges(&self) -> Vec<(String, u64, usize, usize)> {
        let Ok(models) = self.inner.models.read() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, entry) in models.iter() {
            for (v, e) in &entry.versions {
                if let Some(r) = &e.runner {
                    out.push((name.clone(), *v, r.queue_depth(), r.inflight()));
                }
            }
        }
        out
    }

    /// The repository index: every model folder, with per-version states where known.
    pub async fn index(&self, ready_only: bool) -> Result<Vec<IndexEntry>> {
        let repo = self.inner.opts.repository.clone();
        let on_disk = blocking(move || repository::list_models(&repo)).await??;
        let models = self.inner.models.read().map_err(lock_err)?;
        let mut names: Vec<&str> = on_disk.iter().map(String::as_str).collect();
        names.extend(models.keys().map(String::as_str));
        names.sort_unstable();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            match models.get(name) {
                Some(entry) if !entry.versions.is_empty() => {
                    for (v, e) in &entry.versions {
                        // A ready version whose backend gave up on it (a worker that keeps
                        // crashing) is UNAVAILABLE with the backend's reason; one recovering
                        // stays READY with the reason it is not answering now.
                        let health = match (e.state, &e.runner) {
                            (VersionState::Ready, Some(r)) => r.health(),
                            _ => crate::backend::Health::Ready,
                        };
                        let (state, reason) = match health {
                            crate::backend::Health::Ready => (e.state, e.reason.clone()),
                            crate::backend::Health::Recovering(why) => (e.state, why),
                            crate::backend::Health::Failed(why) => (VersionState::Unavailable, why),
                        };
                        out.push(IndexEntry {
                            name: name.to_string(),
                            version: Some(*v),
                            state: Some(state),
                            reason,
                        });
                    }
                }
                Some(entry) if entry.error.is_some() => out.push(IndexEntry {
                    name: name.to_string(),
                    version: None,
                    state: Some(VersionState::Unavailable),
                    reason: entry.error.clone().unwrap_or_default(),
                }),
                _ => out.push(IndexEntry {
                    name: name.to_string(),
                    version: None,
                    state: None,
                    reason: String::new(),
                }),
            }
        }
        if ready_only {
            out.retain(|e| e.state == Some(VersionState::Ready));
        }
        Ok(out)
    }
}
