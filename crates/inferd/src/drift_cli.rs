//! `inferd drift baseline MODEL FILE`: saves a serving version's drift reference (the
//! distributions its first sampled requests made) as JSON. Put the file in the model's folder as
//! `drift_reference.json` and every version loaded from then on is judged against it, not
//! against its own first requests: a new version that answers differently from the one the
//! baseline came from is flagged from its first window.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

/// `inferd drift ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum DriftCommand {
    /// Save a version's reference to FILE.
    Baseline {
        /// The model.
        model: String,
        /// Where to write the reference (JSON).
        file: PathBuf,
        /// The version (default: the newest ready one).
        #[arg(long)]
        version: Option<u64>,
        /// The server's HTTP API.
        #[arg(long, env = "INFERD_URL", default_value = "http://127.0.0.1:8000")]
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 30.0)]
        timeout_secs: f64,
    },
}

/// Runs the command; the process's exit code.
pub(crate) async fn run(cmd: DriftCommand) -> Result<u8> {
    let DriftCommand::Baseline {
        model,
        file,
        version,
        url,
        timeout_secs,
    } = cmd;
    let path = match version {
        Some(v) => format!("/v2/models/{model}/versions/{v}/drift/reference"),
        None => format!("/v2/models/{model}/drift/reference"),
    };
    crate::http_client::check_url(&url)?;
    let http =
        crate::http_client::client(Duration::from_secs_f64(timeout_secs.clamp(0.001, 3600.0)))?;
    let full = format!("{}{path}", url.trim_end_matches('/'));
    let resp = http
        .get(&full)
        .send()
        .await
        .with_context(|| format!("GET {full}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .with_context(|| format!("GET {full}: reading the answer"))?;
    if !status.is_success() {
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text);
        eprintln!("{}: {msg}", status.as_u16());
        return Ok(1);
    }
    if serde_json::from_str::<serde_json::Value>(&text).is_err() {
        bail!("GET {full}: the answer is not JSON");
    }
    std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    println!("wrote {}", file.display());
    Ok(0)
}
