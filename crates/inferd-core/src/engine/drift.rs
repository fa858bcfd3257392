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

    /// The largest PSI of the outputs of `canary` (model, version) against `primary`'s over
    /// the same window (its reference while its window is too thin), for a canary or A/B
    /// guardrail; `None` until both have drift monitoring, the
    /// primary's reference is complete and the canary has answered enough since the first
    /// call.
    pub fn drift_output_psi(
        &self,
        canary: (&str, Option<u64>),
        primary: (&str, Option<u64>),
    ) -> Option<f64> {
        let pg = self.route(primary.0, primary.1).ok()?;
        let pd = pg.runner().drift()?;
        let reference = pd.reference()?;
        let key = format!("{}/{}", primary.0, pg.runner().version());
        let cg = self.route(canary.0, canary.1).ok()?;
        let cd = cg.runner().drift()?;
        if Arc::ptr_eq(cd, pd) {
            return None; // a version is not its own canary
        }
        cd.outputs_against(&key, &reference, pd)
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
