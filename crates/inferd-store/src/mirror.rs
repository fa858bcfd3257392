//! Keeping a local folder in step with a repository on object storage: the executor of a
//! [`Plan`](crate::plan::Plan). Everything it writes goes first to a hidden `.inferd-tmp-*`
//! name (which the repository scanner skips), is checked (size, and sha256 where the model's
//! config pins one), and is then renamed into place; an interrupted sync leaves only hidden
//! leftovers, removed by the next one. What was fetched is recorded in `.inferd-store.json` at
//! the folder's root, and only what that manifest lists is ever removed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use inferd_core::artifact::sha256_file;
use inferd_core::config::parse_config;

use crate::StoreError;
use crate::plan::{Listing, Place, Plan, model_of, place, plan};
use crate::source::Remote;

const MANIFEST: &str = ".inferd-store.json";
const TMP: &str = ".inferd-tmp-";

/// Told how a sync advances (`inferd pull` draws a progress bar from it).
pub trait Progress: Send + Sync {
    /// The sync will download `files` objects, `bytes` in all.
    fn start(&self, _files: usize, _bytes: u64) {}
    /// `bytes` more arrived.
    fn advance(&self, _bytes: u64) {}
    /// One object is complete.
    fn file_done(&self, _key: &str) {}
}

/// Reports nothing.
pub struct Silent;
impl Progress for Silent {}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Whether anything on disk changed.
    pub changed: bool,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Units (models, versions, files) that could not be brought in step, with the reason; the
    /// local copy keeps its previous state for them.
    pub failed: Vec<(String, StoreError)>,
    /// Time spent fetching each model that was fetched (whole, a version or files), by model.
    pub fetched: Vec<(String, std::time::Duration)>,
}

/// A local folder kept in step with a remote repository.
pub struct Mirror {
    remote: Remote,
    root: PathBuf,
    only: Option<BTreeSet<String>>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Deletes a file or a folder, whichever `path` is (best effort: leftovers are swept later).
fn remove_any(path: &Path) {
    let _ = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
}

impl Mirror {
    /// A mirror of `remote` into `root` (created when missing), limited to `only` models when
    /// given.
    pub fn new(
        remote: Remote,
        root: PathBuf,
        only: Option<BTreeSet<String>>,
    ) -> Result<Mirror, StoreError> {
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(Mirror { remote, root, only })
    }

    /// The local folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The remote's URL.
    pub fn url(&self) -> &str {
        self.remote.url()
    }

    /// The manifest, with entries whose file is gone or has another size dropped (so they are
    /// fetched again).
    fn local(&self) -> Listing {
        let path = self.root.join(MANIFEST);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Listing::new();
        };
        let Ok(listing) = serde_json::from_str::<Listing>(&text) else {
            tracing::warn!(file = %path.display(), "unreadable sync manifest: fetching again");
            return Listing::new();
        };
        listing
            .into_iter()
            .filter(|(k, s)| {
                std::fs::metadata(self.root.join(k)).is_ok_and(|m| m.is_file() && m.len() == s.size)
            })
            .collect()
    }

    fn save(&self, listing: &Listing) -> Result<(), StoreError> {
        let path = self.root.join(MANIFEST);
        let tmp = self.root.join(format!("{TMP}manifest"));
        let text = serde_json::to_string_pretty(listing).unwrap_or_default();
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Removes leftovers of interrupted syncs: hidden temporary names at the root and in each
    /// model folder.
    fn sweep(&self) {
        let mut dirs = vec![self.root.clone()];
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        for dir in dirs {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(TMP) {
                    remove_any(&e.path());
                }
            }
        }
    }

    /// Brings the local folder in step with the store. Fails only when the store cannot be
    /// listed (unreachable, bad credentials, no such bucket) or a named model is not in it;
    /// units that fail on their own are reported in [`SyncReport::failed`].
    pub async fn sync(&self, progress: &dyn Progress) -> Result<SyncReport, StoreError> {
        let remote = self.remote.list().await?;
        if let Some(only) = &self.only {
            for m in only {
                if !remote
                    .keys()
                    .any(|k| model_of(k) == m && place(k).is_some())
                {
                    return Err(StoreError::NoModel {
                        url: self.remote.url().to_string(),
                        model: m.clone(),
                    });
                }
            }
        }
        self.sweep();
        let mut local = self.local();
        let plan = plan(&remote, &local, self.only.as_ref());
        let mut report = SyncReport::default();
        if plan.is_empty() {
            return Ok(report);
        }
        let downloads = plan.downloads(&remote);
        progress.start(downloads.len(), downloads.iter().map(|(_, s)| s.size).sum());
        self.apply(&plan, &remote, &mut local, progress, &mut report)
            .await;
        Ok(report)
    }

    async fn apply(
        &self,
        plan: &Plan,
        remote: &Listing,
        local: &mut Listing,
        progress: &dyn Progress,
        report: &mut SyncReport,
    ) {
        let keys_where = |f: &dyn Fn(&str) -> bool| -> Vec<(String, u64)> {
            remote
                .iter()
                .filter(|(k, _)| place(k).is_some() && f(k))
                .map(|(k, s)| (k.clone(), s.size))
                .collect()
        };
        let timed = |report: &mut SyncReport, m: &str, t: std::time::Instant, ok: bool| {
            if ok {
                report.fetched.push((m.to_string(), t.elapsed()));
            }
        };
        for m in &plan.new_models {
            let keys = keys_where(&|k| model_of(k) == m);
            let t = std::time::Instant::now();
            let r = self.fetch_model(m, &keys, progress).await;
            timed(report, m, t, r.is_ok());
            self.settle(m, r, remote, local, report, |k| model_of(k) == m);
        }
        for (m, v) in &plan.fetch_versions {
            let unit = Place::Version(m.clone(), *v);
            let keys = keys_where(&|k| place(k).as_ref() == Some(&unit));
            let t = std::time::Instant::now();
            let r = self.fetch_version(m, *v, &keys, progress).await;
            timed(report, m, t, r.is_ok());
            self.settle(&format!("{m}/{v}"), r, remote, local, report, |k| {
                place(k).as_ref() == Some(&unit)
            });
        }
        for key in &plan.fetch_files {
            let size = remote.get(key).map_or(0, |s| s.size);
            let t = std::time::Instant::now();
            let r = self.fetch_file(key, size, progress).await;
            timed(report, model_of(key), t, r.is_ok());
            self.settle(key, r, remote, local, report, |k| k == key);
        }
        for (m, v) in &plan.remove_versions {
            let r = self.remove(&self.root.join(m).join(v.to_string()));
            let unit = Place::Version(m.clone(), *v);
            self.settle(&format!("{m}/{v}"), r, remote, local, report, |k| {
                place(k).as_ref() == Some(&unit)
            });
        }
        for key in &plan.remove_files {
            let r = self.remove(&self.root.join(key));
            self.settle(key, r, remote, local, report, |k| k == key);
        }
        for m in &plan.remove_models {
            let r = self.remove(&self.root.join(m));
            self.settle(m, r, remote, local, report, |k| model_of(k) == m);
        }
    }

    /// Records a unit's outcome: on success the manifest takes the store's entries for it (or
    /// drops them, for a removal) and is saved at once, so a later interruption does not
    /// forget it.
    fn settle(
        &self,
        unit: &str,
        r: Result<u64, StoreError>,
        remote: &Listing,
        local: &mut Listing,
        report: &mut SyncReport,
        belongs: impl Fn(&str) -> bool,
    ) {
        match r {
            Ok(bytes) => {
                report.changed = true;
                report.bytes += bytes;
                local.retain(|k, _| !belongs(k));
                local.extend(
                    remote
                        .iter()
                        .filter(|(k, _)| place(k).is_some() && belongs(k))
                        .map(|(k, s)| (k.clone(), s.clone())),
                );
                if let Err(e) = self.save(local) {
                    report.failed.push((unit.to_string(), e));
                }
            }
            Err(e) => report.failed.push((unit.to_string(), e)),
        }
    }

    fn remove(&self, path: &Path) -> Result<u64, StoreError> {
        if !path.exists() {
            return Ok(0);
        }
        // Renamed away first: the engine sees the unit vanish at once, never half-deleted.
        let parent = path.parent().unwrap_or(&self.root);
        let gone = parent.join(format!("{TMP}removed"));
        remove_any(&gone);
        std::fs::rename(path, &gone).map_err(io_err(path))?;
        remove_any(&gone);
        Ok(0)
    }

    /// Downloads `keys` (relative to the repository root) under `tmp`, stripping the first
    /// `strip` components, and checks them against the model's pins.
    async fn download_all(
        &self,
        model: &str,
        keys: &[(String, u64)],
        strip: usize,
        tmp: &Path,
        progress: &dyn Progress,
    ) -> Result<u64, StoreError> {
        let mut bytes = 0;
        for (key, size) in keys {
            let rel: PathBuf = key.split('/').skip(strip).collect();
            let dest = tmp.join(&rel);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            self.remote
                .download(key, *size, &dest, &|n| progress.advance(n))
                .await?;
            progress.file_done(key);
            bytes += size;
        }
        let pins = self.pins(model).await;
        for (key, _) in keys {
            let in_model = key.split_once('/').map_or("", |(_, r)| r);
            if let Some(want) = pins.iter().find(|(p, _)| p == in_model).map(|(_, w)| w) {
                let file: PathBuf = tmp.join(key.split('/').skip(strip).collect::<PathBuf>());
                let got = sha256_file(&file).map_err(io_err(&file))?;
                if !got.eq_ignore_ascii_case(want.trim()) {
                    return Err(StoreError::Check {
                        key: key.clone(),
                        reason: format!("sha256 is {got} but the config pins {}", want.trim()),
                    });
                }
            }
        }
        Ok(bytes)
    }

    /// The sha256 pins of a model's config in the store (`sha256:<path in the model folder>`
    /// parameters); none when it has no config or the config does not parse (its load will
    /// say why).
    async fn pins(&self, model: &str) -> Vec<(String, String)> {
        let key = format!("{model}/config.pbtxt");
        let Ok(bytes) = self.remote.read(&key).await else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(&bytes);
        let Ok(parsed) = parse_config(&text, Path::new(&key)) else {
            return Vec::new();
        };
        parsed
            .config
            .parameters
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("sha256:")?.to_string(), v.string_value)))
            .collect()
    }

    /// Puts `tmp` at `dest`, replacing what is there.
    fn swap_in(&self, tmp: &Path, dest: &Path) -> Result<(), StoreError> {
        if dest.exists() {
            let parent = dest.parent().unwrap_or(&self.root);
            let old = parent.join(format!("{TMP}replaced"));
            remove_any(&old);
            std::fs::rename(dest, &old).map_err(io_err(dest))?;
            std::fs::rename(tmp, dest).map_err(io_err(dest))?;
            remove_any(&old);
            Ok(())
        } else {
            std::fs::rename(tmp, dest).map_err(io_err(dest))
        }
    }

    /// Downloads `keys` into the fresh temporary folder `tmp` (stripping `strip` key
    /// components) and renames it to `dest`; on failure nothing but the sweepable `tmp` is left.
    async fn fetch_into(
        &self,
        model: &str,
        keys: &[(String, u64)],
        strip: usize,
        tmp: &Path,
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<u64, StoreError> {
        remove_any(tmp);
        std::fs::create_dir_all(tmp).map_err(io_err(tmp))?;
        match self.download_all(model, keys, strip, tmp, progress).await {
            Ok(bytes) => self.swap_in(tmp, dest).map(|()| bytes),
            Err(e) => {
                remove_any(tmp);
                Err(e)
            }
        }
    }

    async fn fetch_model(
        &self,
        model: &str,
        keys: &[(String, u64)],
        progress: &dyn Progress,
    ) -> Result<u64, StoreError> {
        let tmp = self.root.join(format!("{TMP}{model}"));
        self.fetch_into(model, keys, 1, &tmp, &self.root.join(model), progress)
            .await
    }

    async fn fetch_version(
        &self,
        model: &str,
        version: u64,
        keys: &[(String, u64)],
        progress: &dyn Progress,
    ) -> Result<u64, StoreError> {
        let dir = self.root.join(model);
        let tmp = dir.join(format!("{TMP}{version}"));
        self.fetch_into(
            model,
            keys,
            2,
            &tmp,
            &dir.join(version.to_string()),
            progress,
        )
        .await
    }

    async fn fetch_file(
        &self,
        key: &str,
        size: u64,
        progress: &dyn Progress,
    ) -> Result<u64, StoreError> {
        let model = model_of(key);
        let dir = self.root.join(model);
        let tmp = dir.join(format!("{TMP}file"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let r = self
            .download_all(model, &[(key.to_string(), size)], 1, &tmp, progress)
            .await;
        let rel: PathBuf = key.split('/').skip(1).collect();
        let out = match r {
            Ok(bytes) => {
                let dest = dir.join(&rel);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                std::fs::rename(tmp.join(&rel), &dest)
                    .map_err(io_err(&dest))
                    .map(|()| bytes)
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&tmp);
        out
    }
}
