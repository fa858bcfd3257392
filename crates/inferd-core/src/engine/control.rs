//! The explicit load and unload API, and retiring versions: a retired version takes no new
//! requests, finishes (or, past the unload timeout, cancels) what it holds, then stops.

use super::*;

impl Engine {
    /// Loads (or reloads what changed of) a model from the repository, as the explicit-mode
    /// load API does. Fails if the model ends with no ready version.
    pub async fn load(&self, name: &str) -> Result<()> {
        repository::validate_model_name(name)?;
        let (root, _) = self.source_of(name);
        if !root.join(name).is_dir() && !self.knows(name)? {
            return Err(Error::NotFound(format!(
                "failed to load '{name}': no such model in the repository"
            )));
        }
        let failed = self.reconcile(name, true).await?;
        if !failed.is_empty() {
            let why: Vec<String> = failed
                .iter()
                .map(|(v, m)| format!("version {v}: {m}"))
                .collect();
            let message = format!(
                "failed to load model '{name}' ({}); versions that were serving keep serving",
                why.join("; ")
            );
            return Err(if failed.iter().any(|(_, f)| f.server_fault) {
                Error::Internal(message)
            } else {
                Error::InvalidArgument(message)
            });
        }
        let models = self.inner.models.read().map_err(lock_err)?;
        let entry = models
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("model '{name}' is not in the repository")))?;
        // The config could not be read: nothing new loaded, even if older versions serve.
        if let Some(e) = &entry.error {
            return Err(Error::InvalidArgument(format!(
                "failed to load model '{name}': {e}; versions that were serving keep serving"
            )));
        }
        if entry
            .versions
            .values()
            .any(|v| v.state == VersionState::Ready)
        {
            return Ok(());
        }
        let reason = entry.error.clone().unwrap_or_else(|| {
            entry
                .versions
                .iter()
                .map(|(v, e)| format!("version {v}: {}", e.reason))
                .collect::<Vec<_>>()
                .join("; ")
        });
        Err(Error::InvalidArgument(format!(
            "failed to load model '{name}': {reason}"
        )))
    }

    /// Explicit-mode load API: refuses in other modes.
    pub async fn load_api(&self, name: &str) -> Result<()> {
        self.load_with(name, LoadOverride::default()).await
    }

    /// Explicit-mode unload API: stops routing to every version of the model at once; the
    /// versions finish their in-flight requests in the background, then unload.
    pub async fn unload_api(&self, name: &str) -> Result<()> {
        self.require_explicit("unload")?;
        repository::validate_model_name(name)?;
        let _one_at_a_time = self.inner.override_lock.lock().await;
        let r = self.unload(name).await;
        if let Some(root) = self.set_override(name, None).and_then(|o| o.root) {
            let _ = std::fs::remove_dir_all(root);
        }
        r
    }

    pub(super) fn require_explicit(&self, what: &str) -> Result<()> {
        if self.inner.opts.control_mode != ControlMode::Explicit {
            return Err(Error::FailedPrecondition(format!(
                "explicit model {what} is not allowed in model control mode '{}'; start the server with --model-control-mode explicit",
                self.inner.opts.control_mode
            )));
        }
        Ok(())
    }

    /// Unloads every version of a model.
    pub async fn unload(&self, name: &str) -> Result<()> {
        if !self.knows(name)? {
            return Err(Error::NotFound(format!("model '{name}' is not loaded")));
        }
        let lock = self.model_lock(name)?;
        let _g = lock.lock().await;
        let retired = {
            let mut models = self.inner.models.write().map_err(lock_err)?;
            let Some(entry) = models.get_mut(name) else {
                return Err(Error::NotFound(format!("model '{name}' is not loaded")));
            };
            entry.unload()
        };
        self.retire(name, retired, true);
        Ok(())
    }

    pub(super) fn model_lock(&self, name: &str) -> Result<Arc<tokio::sync::Mutex<()>>> {
        let mut locks = self.inner.locks.lock().map_err(lock_err)?;
        Ok(locks.entry(name.to_string()).or_default().clone())
    }

    /// Drains and unloads runners in the background; with `mark`, their entries become
    /// UNAVAILABLE ("unloaded") afterwards.
    pub(super) fn retire(&self, name: &str, runners: Vec<(u64, Arc<VersionRunner>)>, mark: bool) {
        for (v, runner) in runners {
            let this = self.clone();
            let name = name.to_string();
            let limit = self.inner.opts.unload_timeout;
            tokio::spawn(async move {
                if tokio::time::timeout(limit, runner.wait_idle())
                    .await
                    .is_err()
                {
                    let cancelled = runner.cancel_queued(&Error::Unavailable(format!(
                        "model '{name}' version {v} was unloaded before this request ran"
                    )));
                    tracing::warn!(
                        model = %name,
                        version = v,
                        "unload: requests still in flight after {limit:?}; cancelled {cancelled} \
                         queued, waiting for {} executing",
                        runner.inflight().saturating_sub(cancelled)
                    );
                }
                let r = runner.clone();
                let _ = blocking(move || r.shutdown_blocking()).await;
                drop(runner);
                if let Some(reclaim) = this.inner.opts.reclaim_memory {
                    let _ = blocking(reclaim).await;
                }
                tracing::info!(model = %name, version = v, "unloaded");
                if mark
                    && let Ok(mut models) = this.inner.models.write()
                    && let Some(m) = models.get_mut(&name)
                {
                    m.stopped(v);
                }
            });
        }
    }
}
