//! `--state-dir`: the routes with their live state (`routes.json`, replaced whole through a
//! temporary file and a rename, so a crash leaves the old file or the new one, never half of
//! one), A/B outcomes (`experiments.json`, the same way) and the audit log (`audit.log`, one JSON object per change, appended).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use inferd_traffic::experiment::Outcomes;
use inferd_traffic::table::Table;
use serde::Serialize;

/// The routes file inside the state dir.
pub const ROUTES_FILE: &str = "routes.json";
/// A/B outcomes inside the state dir.
pub const OUTCOMES_FILE: &str = "experiments.json";
/// The audit log inside the state dir.
pub const AUDIT_FILE: &str = "audit.log";

/// A state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// One change, as the audit log records it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// RFC 3339 UTC time.
    pub time: String,
    /// The token's name (`anonymous` without tokens, `controller` for canary decisions).
    pub who: String,
    /// `put`, `delete`, `promote`, `abort`, `pause`, `resume`, `switch`, `analysis`, `start`.
    pub action: String,
    /// The route.
    pub route: String,
    /// Why: the caller's `reason`, or the controller's decision.
    pub why: String,
    /// The route's state after the change (absent once deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

impl StateDir {
    /// Opens (creating) `dir`, checking it can be written.
    pub fn open(dir: &Path) -> Result<StateDir, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("state dir {}: cannot create it: {e}", dir.display()))?;
        let probe = dir.join(".inferd-write-probe");
        std::fs::write(&probe, b"")
            .map_err(|e| format!("state dir {}: cannot write in it: {e}", dir.display()))?;
        let _ = std::fs::remove_file(probe);
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The saved routes, if any were saved.
    pub fn load(&self) -> Result<Option<Table>, String> {
        let path = self.dir.join(ROUTES_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: cannot read it: {e}", path.display())),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| format!("{}: not a routes snapshot: {e}", path.display()))
    }

    /// Replaces the saved routes with `table`.
    pub fn save(&self, table: &Table) -> std::io::Result<()> {
        self.save_json(ROUTES_FILE, table)
    }

    /// The saved A/B outcomes, if any.
    pub fn load_outcomes(&self) -> Result<Option<BTreeMap<String, Outcomes>>, String> {
        let path = self.dir.join(OUTCOMES_FILE);
        match std::fs::read(&path) {
            Ok(t) => serde_json::from_slice(&t)
                .map(Some)
                .map_err(|e| format!("{}: not A/B outcomes: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: cannot read it: {e}", path.display())),
        }
    }

    /// Replaces the saved A/B outcomes.
    pub fn save_outcomes(&self, o: &BTreeMap<String, Outcomes>) -> std::io::Result<()> {
        self.save_json(OUTCOMES_FILE, o)
    }

    /// Replaces file `name` with `value` as JSON: temp file, fsync, rename, fsync of the dir.
    fn save_json<T: Serialize>(&self, name: &str, value: &T) -> std::io::Result<()> {
        let body = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(name))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Appends `entry` to the audit log.
    pub fn audit(&self, entry: &AuditEntry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(AUDIT_FILE))?;
        f.write_all(&line)?;
        f.sync_data()
    }
}

/// Now, as the audit log writes it.
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_table_round_trips_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        assert_eq!(s.load().unwrap(), None);
        let t = Table::default();
        s.save(&t).unwrap();
        assert_eq!(s.load().unwrap(), Some(t));
        let names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![ROUTES_FILE.to_string()]);
    }

    #[test]
    fn corrupt_snapshot_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(ROUTES_FILE), b"{not json").unwrap();
        let e = StateDir::open(d.path()).unwrap().load().unwrap_err();
        assert!(e.contains(ROUTES_FILE), "{e}");
    }

    #[test]
    fn audit_appends_one_line_per_change() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        for action in ["put", "delete"] {
            s.audit(&AuditEntry {
                time: rfc3339_now(),
                who: "alice".into(),
                action: action.into(),
                route: "r".into(),
                why: "test".into(),
                state: None,
            })
            .unwrap();
        }
        let text = std::fs::read_to_string(d.path().join(AUDIT_FILE)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["action"], "delete");
        assert_eq!(lines[0]["who"], "alice");
    }
}
