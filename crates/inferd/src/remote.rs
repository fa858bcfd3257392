//! Repositories on object storage: `inferd serve --model-repository s3://...` serves a local
//! copy kept in step with the store (a first sync before the startup loads, then one per poll
//! interval in poll and explicit modes), and `inferd pull` copies a repository to disk with a
//! progress bar.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use inferd_store::{Mirror, Progress, Remote, Silent, StoreError, SyncReport};

/// The URL when `--model-repository` names object storage.
pub(crate) fn remote_url(repository: &Path) -> Option<&str> {
    repository.to_str().filter(|s| inferd_store::is_remote(s))
}

/// The default local copy of `url`: a folder named after it under the temporary folder, so two
/// servers of different repositories never share one.
fn default_cache(url: &str) -> PathBuf {
    let name: String = url
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(120)
        .collect();
    std::env::temp_dir().join(format!("inferd-repository-{name}"))
}

/// Opens the mirror of `url` in `cache` (or the default folder).
pub(crate) fn mirror(url: &str, cache: Option<PathBuf>) -> Result<Mirror> {
    let remote = Remote::open(url)?;
    let root = cache.unwrap_or_else(|| default_cache(url));
    Ok(Mirror::new(remote, root, None)?)
}

fn log_failures(report: &SyncReport, seen: &mut BTreeSet<String>) {
    let now: BTreeSet<String> = report
        .failed
        .iter()
        .map(|(unit, e)| format!("{unit}: {e}"))
        .collect();
    for f in now.difference(seen) {
        tracing::warn!("not taken from the store (the local copy keeps its previous state): {f}");
    }
    *seen = now;
}

/// Each fetched model's download time becomes the `fetch` phase of its next start.
fn record_fetches(report: &SyncReport, engine: &inferd_core::Engine) {
    for (model, took) in &report.fetched {
        engine.record_fetch(model, *took);
    }
}

/// The first sync, before any model loads: a store that cannot be listed is a startup error
/// naming the URL and the cause.
pub(crate) async fn first_sync(m: &Mirror, engine: &inferd_core::Engine) -> Result<()> {
    let t = std::time::Instant::now();
    let report = m.sync(&Silent).await?;
    log_failures(&report, &mut BTreeSet::new());
    record_fetches(&report, engine);
    tracing::info!(
        url = m.url(),
        cache = %m.root().display(),
        bytes = report.bytes,
        secs = t.elapsed().as_secs_f64(),
        "repository copied from object storage"
    );
    Ok(())
}

/// Keeps the copy in step every `interval`. An outage leaves the copy, and so every model,
/// as it is; it is logged once, retried with backoff (doubling to a minute), and its end is
/// logged once.
pub(crate) async fn follow(m: Mirror, interval: Duration, engine: inferd_core::Engine) {
    let mut failing: Option<String> = None;
    let mut wait = interval;
    let mut seen = BTreeSet::new();
    loop {
        tokio::time::sleep(wait).await;
        match m.sync(&Silent).await {
            Ok(report) => {
                if failing.take().is_some() {
                    tracing::info!(url = m.url(), "object store reachable again");
                }
                if report.changed {
                    tracing::info!(
                        url = m.url(),
                        bytes = report.bytes,
                        "repository copy updated"
                    );
                }
                log_failures(&report, &mut seen);
                record_fetches(&report, &engine);
                wait = interval;
            }
            Err(e) => {
                let msg = e.to_string();
                if failing.is_none() {
                    tracing::warn!(
                        "object store unavailable, serving models stay up; retrying with \
                         backoff: {msg}"
                    );
                }
                failing = Some(msg);
                wait = (wait * 2).clamp(interval, Duration::from_secs(60).max(interval));
            }
        }
    }
}

/// A progress bar over the bytes of a pull (drawn only on a terminal).
struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, files: usize, bytes: u64) {
        self.0.set_length(bytes);
        self.0.set_message(format!("{files} files"));
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

/// Runs `inferd pull`; returns the exit code: 0 in step, 1 when some version or file failed
/// its checks (the rest was pulled), 2 when the store could not be read.
pub(crate) fn pull(source: &str, to: PathBuf, models: Vec<String>, quiet: bool) -> u8 {
    let run = || -> Result<SyncReport> {
        if !inferd_store::is_remote(source) {
            bail!("'{source}' is not an object-storage URL (s3://, gs:// or az://)");
        }
        let only = (!models.is_empty()).then(|| models.iter().cloned().collect());
        let m = Mirror::new(Remote::open(source)?, to.clone(), only)?;
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .progress_chars("=> "),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let bar = Bar(bar);
        let report = rt
            .block_on(m.sync(&bar))
            .map_err(|e: StoreError| anyhow::anyhow!(e))?;
        bar.0.finish_and_clear();
        Ok(report)
    };
    match run() {
        Ok(report) => {
            for (unit, e) in &report.failed {
                eprintln!("inferd pull: {unit}: {e}");
            }
            if !quiet {
                println!(
                    "{}: {} bytes pulled from {source}{}",
                    to.display(),
                    report.bytes,
                    if report.failed.is_empty() {
                        String::new()
                    } else {
                        format!(", {} failed", report.failed.len())
                    }
                );
            }
            u8::from(!report.failed.is_empty())
        }
        Err(e) => {
            eprintln!("inferd pull: error: {e:#}");
            2
        }
    }
}
