//! What a sync must do, decided without I/O: the store's listing compared with what the local
//! copy's manifest says was fetched before.
//!
//! The unit of atomic change is a **version folder** (`<model>/<n>/...`): it is fetched whole
//! into a hidden temporary folder and renamed into place, so the engine never sees half of one.
//! A model the local copy does not have at all is fetched whole the same way. Files at the model
//! level (`config.pbtxt`, label files) are replaced one by one, each by rename, after the
//! version folders they may describe.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// What identifies one object's content without reading it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sig {
    /// Size in bytes.
    pub size: u64,
    /// The store's entity tag, when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Last modification, milliseconds since the epoch.
    pub modified_ms: i64,
}

impl Sig {
    /// Whether two signatures name the same content: by entity tag where both have one, else
    /// by size and modification time.
    pub fn same(&self, other: &Sig) -> bool {
        match (&self.etag, &other.etag) {
            (Some(a), Some(b)) => a == b && self.size == other.size,
            _ => self.size == other.size && self.modified_ms == other.modified_ms,
        }
    }
}

/// Objects by key relative to the repository root (`model/1/model.onnx`).
pub type Listing = BTreeMap<String, Sig>;

/// Where a key belongs in a repository.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    /// Inside a version folder.
    Version(String, u64),
    /// A file at the model level (`config.pbtxt`, labels, non-numeric folders).
    ModelFile(String),
}

/// Classifies a key; `None` for keys that are not part of any model (files at the repository
/// root, hidden names, empty or unsafe components).
pub fn place(key: &str) -> Option<Place> {
    let parts: Vec<&str> = key.split('/').collect();
    if parts.len() < 2
        || parts
            .iter()
            .any(|p| p.is_empty() || p.starts_with('.') || *p == ".." || p.contains('\\'))
    {
        return None;
    }
    let model = parts[0].to_string();
    if parts.len() >= 3 {
        // Numeric folders without leading zeros are versions, as the repository scanner has it.
        if let Ok(v) = parts[1].parse::<u64>()
            && !(parts[1].starts_with('0') && parts[1] != "0")
        {
            return Some(Place::Version(model, v));
        }
    }
    Some(Place::ModelFile(model))
}

/// The model a key belongs to (its first component).
pub fn model_of(key: &str) -> &str {
    key.split('/').next().unwrap_or("")
}

/// The actions of one sync, in the order they run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Models absent locally: fetched whole, then renamed into place.
    pub new_models: Vec<String>,
    /// Version folders that are new or changed.
    pub fetch_versions: Vec<(String, u64)>,
    /// Model-level files that are new or changed (keys).
    pub fetch_files: Vec<String>,
    /// Version folders gone from the store.
    pub remove_versions: Vec<(String, u64)>,
    /// Model-level files gone from the store (keys).
    pub remove_files: Vec<String>,
    /// Models gone from the store.
    pub remove_models: Vec<String>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }

    /// Keys to download (with their sizes), for a progress bar.
    pub fn downloads<'a>(&self, remote: &'a Listing) -> Vec<(&'a String, &'a Sig)> {
        let models: BTreeSet<&str> = self.new_models.iter().map(String::as_str).collect();
        let versions: BTreeSet<(&str, u64)> = self
            .fetch_versions
            .iter()
            .map(|(m, v)| (m.as_str(), *v))
            .collect();
        let files: BTreeSet<&str> = self.fetch_files.iter().map(String::as_str).collect();
        remote
            .iter()
            .filter(|(k, _)| {
                models.contains(model_of(k))
                    || files.contains(k.as_str())
                    || matches!(place(k), Some(Place::Version(m, v)) if versions.contains(&(m.as_str(), v)))
            })
            .collect()
    }
}

/// Groups a listing by place.
fn group(listing: &Listing) -> BTreeMap<Place, Vec<(&String, &Sig)>> {
    let mut out: BTreeMap<Place, Vec<(&String, &Sig)>> = BTreeMap::new();
    for (k, s) in listing {
        if let Some(p) = place(k) {
            out.entry(p).or_default().push((k, s));
        }
    }
    out
}

/// Decides a sync. `local` is the manifest of what was fetched before (entries whose file is
/// missing or has the wrong size already dropped); `only` limits the sync to those models
/// (nothing outside them is fetched or removed).
pub fn plan(remote: &Listing, local: &Listing, only: Option<&BTreeSet<String>>) -> Plan {
    let wanted = |m: &str| only.is_none_or(|o| o.contains(m));
    let remote_models: BTreeSet<&str> = remote
        .keys()
        .filter(|k| place(k).is_some())
        .map(|k| model_of(k))
        .filter(|m| wanted(m))
        .collect();
    let local_models: BTreeSet<&str> = local
        .keys()
        .map(|k| model_of(k))
        .filter(|m| wanted(m))
        .collect();
    let (rg, lg) = (group(remote), group(local));
    let mut p = Plan::default();
    for m in &remote_models {
        if !local_models.contains(m) {
            p.new_models.push(m.to_string());
        }
    }
    let same_unit = |a: &[(&String, &Sig)], b: &[(&String, &Sig)]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|((ka, sa), (kb, sb))| ka == kb && sa.same(sb))
    };
    for (place, objs) in &rg {
        let (Place::Version(m, _) | Place::ModelFile(m)) = place;
        if !wanted(m) || !local_models.contains(m.as_str()) {
            continue;
        }
        match place {
            Place::Version(m, v) => {
                if !lg.get(place).is_some_and(|l| same_unit(objs, l)) {
                    p.fetch_versions.push((m.clone(), *v));
                }
            }
            Place::ModelFile(_) => {
                for (k, s) in objs {
                    if !local.get(*k).is_some_and(|l| l.same(s)) {
                        p.fetch_files.push((*k).clone());
                    }
                }
            }
        }
    }
    for (place, objs) in &lg {
        let (Place::Version(m, _) | Place::ModelFile(m)) = place;
        if !wanted(m) || !remote_models.contains(m.as_str()) {
            continue;
        }
        match place {
            Place::Version(m, v) => {
                if !rg.contains_key(place) {
                    p.remove_versions.push((m.clone(), *v));
                }
            }
            Place::ModelFile(_) => {
                for (k, _) in objs {
                    if !remote.contains_key(*k) {
                        p.remove_files.push((*k).clone());
                    }
                }
            }
        }
    }
    for m in &local_models {
        if !remote_models.contains(m) {
            p.remove_models.push(m.to_string());
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(size: u64, etag: &str) -> Sig {
        Sig {
            size,
            etag: Some(etag.into()),
            modified_ms: 0,
        }
    }

    fn listing(items: &[(&str, u64, &str)]) -> Listing {
        items
            .iter()
            .map(|(k, s, e)| (k.to_string(), sig(*s, e)))
            .collect()
    }

    #[test]
    fn places_versions_model_files_and_refuses_unsafe_keys() {
        assert_eq!(place("m/1/model.onnx"), Some(Place::Version("m".into(), 1)));
        assert_eq!(place("m/12/a/b.bin"), Some(Place::Version("m".into(), 12)));
        assert_eq!(place("m/config.pbtxt"), Some(Place::ModelFile("m".into())));
        assert_eq!(place("m/01/x"), Some(Place::ModelFile("m".into())));
        assert_eq!(place("m/assets/x"), Some(Place::ModelFile("m".into())));
        assert_eq!(place("README.md"), None);
        assert_eq!(place("m/.inferd-tmp-1/x"), None);
        assert_eq!(place(".hidden/1/x"), None);
        assert_eq!(place("m/../x"), None);
        assert_eq!(place("m//x"), None);
    }

    #[test]
    fn empty_local_copy_fetches_every_model_whole() {
        let r = listing(&[
            ("a/config.pbtxt", 10, "c"),
            ("a/1/model.onnx", 100, "x"),
            ("b/1/model.onnx", 5, "y"),
            ("toplevel.txt", 1, "z"),
        ]);
        let p = plan(&r, &Listing::new(), None);
        assert_eq!(p.new_models, vec!["a", "b"]);
        assert!(p.fetch_versions.is_empty() && p.fetch_files.is_empty());
        assert_eq!(
            p.downloads(&r).len(),
            3,
            "the root file is not part of a model"
        );
    }

    #[test]
    fn in_step_copy_plans_nothing() {
        let r = listing(&[("a/config.pbtxt", 10, "c"), ("a/1/model.onnx", 100, "x")]);
        assert!(plan(&r, &r, None).is_empty());
    }

    #[test]
    fn added_version_is_the_only_fetch() {
        let local = listing(&[("a/config.pbtxt", 10, "c"), ("a/1/model.onnx", 100, "x")]);
        let mut r = local.clone();
        r.insert("a/2/model.onnx".into(), sig(120, "x2"));
        let p = plan(&r, &local, None);
        assert_eq!(p.fetch_versions, vec![("a".to_string(), 2)]);
        assert!(p.new_models.is_empty() && p.fetch_files.is_empty());
        assert_eq!(p.downloads(&r).len(), 1);
    }

    #[test]
    fn changed_file_refetches_its_whole_version_folder() {
        let local = listing(&[
            ("a/1/model.onnx", 100, "x"),
            ("a/1/extra.bin", 7, "e"),
            ("a/2/model.onnx", 5, "v2"),
        ]);
        let mut r = local.clone();
        r.insert("a/1/model.onnx".into(), sig(100, "changed"));
        let p = plan(&r, &local, None);
        assert_eq!(p.fetch_versions, vec![("a".to_string(), 1)]);
        assert_eq!(p.downloads(&r).len(), 2, "both files of version 1");
    }

    #[test]
    fn file_added_to_a_version_refetches_it() {
        let local = listing(&[("a/1/model.onnx", 100, "x")]);
        let mut r = local.clone();
        r.insert("a/1/weights.bin".into(), sig(3, "w"));
        assert_eq!(
            plan(&r, &local, None).fetch_versions,
            vec![("a".to_string(), 1)]
        );
    }

    #[test]
    fn config_change_replaces_only_the_file() {
        let local = listing(&[("a/config.pbtxt", 10, "c"), ("a/1/model.onnx", 100, "x")]);
        let mut r = local.clone();
        r.insert("a/config.pbtxt".into(), sig(11, "c2"));
        let p = plan(&r, &local, None);
        assert_eq!(p.fetch_files, vec!["a/config.pbtxt"]);
        assert!(p.fetch_versions.is_empty());
    }

    #[test]
    fn removals_of_versions_files_and_models() {
        let local = listing(&[
            ("a/labels.txt", 3, "l"),
            ("a/1/model.onnx", 100, "x"),
            ("a/2/model.onnx", 100, "y"),
            ("gone/1/model.onnx", 1, "g"),
        ]);
        let r = listing(&[("a/2/model.onnx", 100, "y")]);
        let p = plan(&r, &local, None);
        assert_eq!(p.remove_versions, vec![("a".to_string(), 1)]);
        assert_eq!(p.remove_files, vec!["a/labels.txt"]);
        assert_eq!(p.remove_models, vec!["gone"]);
    }

    #[test]
    fn only_limits_fetches_and_removals_to_the_named_models() {
        let local = listing(&[("gone/1/m", 1, "g")]);
        let r = listing(&[("a/1/m", 1, "a"), ("b/1/m", 1, "b")]);
        let only: BTreeSet<String> = ["b".to_string()].into();
        let p = plan(&r, &local, Some(&only));
        assert_eq!(p.new_models, vec!["b"]);
        assert!(p.remove_models.is_empty(), "'gone' was not asked for");
    }

    #[test]
    fn without_etags_size_and_time_decide() {
        let a = Sig {
            size: 1,
            etag: None,
            modified_ms: 5,
        };
        assert!(a.same(&a.clone()));
        assert!(!a.same(&Sig {
            modified_ms: 6,
            ..a.clone()
        }));
        assert!(!sig(1, "e").same(&sig(2, "e")));
    }
}
