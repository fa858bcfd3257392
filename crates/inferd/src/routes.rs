//! `--routes-file`: the traffic routes read at start, validated against the repository's
//! models before the first request can reach them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use inferd_server::traffic::Traffic;
use inferd_traffic::spec::RoutesFile;
use inferd_traffic::table::Table;

/// The routes file to read: the one named, else `routes.toml` at the root of a local
/// repository when it exists (a mirrored one copies model folders only).
pub(crate) fn file(named: Option<&Path>, repo: &Path, remote: bool) -> Option<PathBuf> {
    if let Some(f) = named {
        return Some(f.to_path_buf());
    }
    let default = repo.join("routes.toml");
    (!remote && default.is_file()).then_some(default)
}

/// The model names of a repository: its folders (Triton's layout names a model by its folder).
fn models(repo: &Path) -> BTreeSet<String> {
    std::fs::read_dir(repo)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads and validates `file`; any refusal stops startup with the file, route, field and
/// reason.
pub(crate) fn load(file: &Path, repo: &Path) -> Result<Table> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("routes file {}: cannot read it", file.display()))?;
    let parsed = RoutesFile::parse(&file.display().to_string(), &text)?;
    let names = models(repo);
    // Steps start now: a canary from the file runs its first step in full.
    let table = Table::from_specs(
        &parsed.routes,
        &|m| names.contains(m),
        inferd_server::traffic::now(),
    )
    .with_context(|| format!("routes file {}", file.display()))?;
    tracing::info!(file = %file.display(), routes = parsed.routes.len(), "traffic routes loaded");
    Ok(table)
}

/// Puts the routes in force at start: those saved in the state dir (with their state), updated
/// by the routes file where it changed them.
pub(crate) fn install(traffic: &Traffic, file: Option<&Path>, repo: &Path) -> Result<()> {
    let from_file = file.map(|f| load(f, repo)).transpose()?;
    let saved = match traffic.state_dir() {
        Some(s) => s.load().map_err(anyhow::Error::msg)?,
        None => None,
    };
    let table = match (saved, from_file) {
        (Some(saved), Some(file)) => Table::restored(saved, file),
        (Some(saved), None) => saved,
        (None, Some(file)) => file,
        (None, None) => return Ok(()),
    };
    tracing::info!(routes = table.iter().count(), "traffic routes in force");
    traffic.install(table).map_err(anyhow::Error::msg)
}

/// Connects to the `--state-store` (`origin` names the flag, env var or file field).
#[cfg(feature = "etcd")]
pub(crate) async fn connect(
    url: &str,
    origin: &str,
) -> Result<std::sync::Arc<dyn inferd_server::traffic::shared::SharedState>> {
    inferd_server::traffic::shared::StoreUrl::parse(url)
        .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    // Unique per process: a restarted replica's A/B counts stay in the store under the old
    // id and keep counting in reports.
    let replica = format!(
        "{}-{}-{:08x}",
        if host.is_empty() { "inferd" } else { &host },
        std::process::id(),
        fastrand::u32(..)
    );
    let store = inferd_server::traffic::etcd::EtcdState::connect(url, replica)
        .await
        .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    Ok(store)
}

/// Without the `etcd` feature there is no store to connect to.
#[cfg(not(feature = "etcd"))]
pub(crate) async fn connect(
    _url: &str,
    origin: &str,
) -> Result<std::sync::Arc<dyn inferd_server::traffic::shared::SharedState>> {
    anyhow::bail!(
        "{origin}: this inferd was built without the etcd feature; build it with `cargo build --features etcd` (needs protoc)"
    )
}

/// Puts the shared routes in force, merged with the routes `file` when there is one.
pub(crate) async fn install_shared(
    traffic: &std::sync::Arc<Traffic>,
    store: std::sync::Arc<dyn inferd_server::traffic::shared::SharedState>,
    file: Option<&Path>,
    repo: &Path,
) -> Result<()> {
    let from_file = file.map(|f| load(f, repo)).transpose()?;
    let what = store.describe();
    traffic
        .install_shared(store, from_file)
        .await
        .map_err(|e| anyhow::anyhow!("state store {what}: {e}"))
}
