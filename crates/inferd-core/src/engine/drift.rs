//! Drift reports of the versions the engine serves (see [`crate::drift`]).

use super::*;

impl Engine {
    /// A ready version's drift report (`version`, or the newest ready one): (version, sampling
    /// rate, report). A model whose drift monitoring is off is a client mistake to ask about.
    pub fn drift_report(
        &self,
        model: &str,
        version: Option<u64>,
    ) -> Result<(u64, f64, inferd_drift::Report)> {
        let guard = self.route(model, version)?;
        let runner = guard.runner();
        let Some(d) = runner.drift() else {
            return Err(Error::FailedPrecondition(format!(
                "drift monitoring is off for model '{model}' (drift_sample_rate 0, or the server's --drift-sample-rate 0)"
            )));
        };
        Ok((runner.version(), d.rate(), d.report()))
    }

    /// A ready version's drift reference, once complete (for `inferd drift baseline`).
    pub fn drift_reference(
        &self,
        model: &str,
        version: Option<u64>,
    ) -> Result<inferd_drift::Reference> {
        let guard = self.route(model, version)?;
        let runner = guard.runner();
        let Some(d) = runner.drift() else {
            return Err(Error::FailedPrecondition(format!(
                "drift monitoring is off for model '{model}'"
            )));
        };
        d.reference().ok_or_else(|| {
            Error::Unavailable(format!(
                "model '{model}' version {} has not finished its drift reference yet",
                runner.version()
            ))
        })
    }

    /// Every ready version's drift report, for the metrics page.
    pub fn drift_reports(&self) -> Vec<(String, u64, inferd_drift::Report)> {
        let Ok(models) = self.inner.models.read() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, entry) in models.iter() {
            for (v, e) in &entry.versions {
                if let (VersionState::Ready, Some(r)) = (e.state, &e.runner)
                    && let Some(d) = r.drift()
                {
                    out.push((name.clone(), *v, d.report()));
                }
            }
        }
        out
    }
}
