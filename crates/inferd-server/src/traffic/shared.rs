//! State shared by replicas (`--state-store`): the route table lives in one record that every
//! replica follows, changed only by compare-and-swap on its revision (so each change builds on
//! the last one any replica made, and a change that lost a race is refused, not merged), with
//! an audit entry written in the same transaction. One replica at a time holds the decider
//! lease and runs the canary analyses; the others apply the decisions it writes. A/B outcomes
//! are saved per replica and summed for reports.
//!
//! The store is a trait so the policy here is testable without one; etcd implements it
//! (`etcd` feature, [`super::etcd`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use inferd_traffic::experiment::Outcomes;
use inferd_traffic::table::Table;

use super::persist::{AuditEntry, rfc3339_now};
use super::{ChangeError, Traffic};

/// A boxed future, for the object-safe trait.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A table as the store holds it, at a revision.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// The store's revision of the record (0: never written).
    pub revision: i64,
    /// The table (empty when never written).
    pub table: Table,
}

/// Where replicas keep what they share.
pub trait SharedState: Send + Sync + std::fmt::Debug {
    /// Where it is, for logs and errors.
    fn describe(&self) -> String;

    /// The table now.
    fn load(&self) -> BoxFut<'_, Result<Versioned, String>>;

    /// Replaces the table, written at `expected`, with `table_json`, and appends
    /// `audit_json`: the new revision, or `None` when another replica wrote first.
    fn swap(
        &self,
        expected: i64,
        table_json: String,
        audit_json: String,
    ) -> BoxFut<'_, Result<Option<i64>, String>>;

    /// Every later version of the table, as it is written (by any replica), in order. Called
    /// once; the stream ends when the store is gone.
    fn follow(&self) -> tokio::sync::mpsc::Receiver<Versioned>;

    /// Whether this replica holds the decider lease now.
    fn is_decider(&self) -> bool;

    /// Saves this replica's A/B outcomes.
    fn save_outcomes(&self, json: String) -> BoxFut<'_, Result<(), String>>;

    /// The other replicas' A/B outcomes.
    fn others_outcomes(&self) -> BoxFut<'_, Result<Vec<BTreeMap<String, Outcomes>>, String>>;
}

impl Traffic {
    /// Writes `next` to the shared store as the successor of the table in force: its
    /// revision, or a 409 when another replica changed the routes meanwhile (the newer table
    /// is then put in force here, so a retry builds on it).
    pub(super) async fn swap_shared(
        &self,
        store: &Arc<dyn SharedState>,
        next: &Table,
        entry: &AuditEntry,
    ) -> Result<i64, ChangeError> {
        let expected = *self.revision.lock().unwrap_or_else(|p| p.into_inner());
        let table = serde_json::to_string(next).map_err(|e| ChangeError::Storage(e.to_string()))?;
        let audit =
            serde_json::to_string(entry).map_err(|e| ChangeError::Storage(e.to_string()))?;
        match store.swap(expected, table, audit).await {
            Ok(Some(rev)) => Ok(rev),
            Ok(None) => {
                if let Ok(v) = store.load().await {
                    self.apply_shared(v);
                }
                Err(ChangeError::Conflict(format!(
                    "route '{}': the routes changed on another replica meanwhile; retry",
                    entry.route
                )))
            }
            Err(e) => Err(ChangeError::Storage(e)),
        }
    }

    /// Puts `table`, the store's at `revision`, in force, unless a newer one already is.
    pub(super) fn replace_at(&self, table: Table, revision: i64) -> bool {
        let mut r = self.revision.lock().unwrap_or_else(|p| p.into_inner());
        if revision < *r {
            return false;
        }
        *r = revision;
        self.replace(table);
        true
    }

    /// A table another replica (or this one) wrote: in force here, with the live numbers of
    /// routes it replaced or removed forgotten.
    pub fn apply_shared(&self, v: Versioned) {
        let before = self.snapshot();
        let changed: Vec<String> = before
            .iter()
            .filter(|(name, r)| v.table.get(name).is_none_or(|n| n.spec != r.spec))
            .map(|(name, _)| name.clone())
            .collect();
        if !self.replace_at(v.table, v.revision) {
            return;
        }
        for route in changed {
            self.observed.forget(&route);
            self.shadows.forget(&route);
            self.analysed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&route);
        }
    }

    /// Shares this server's routes through `store`: the stored table (merged with the routes
    /// `file`, as a restart merges the state dir) goes in force, and every later write by any
    /// replica follows within the store's watch latency.
    pub async fn install_shared(
        self: &Arc<Self>,
        store: Arc<dyn SharedState>,
        file: Option<Table>,
    ) -> Result<(), String> {
        if self.shared.set(store.clone()).is_err() {
            return Err("a shared state store is already attached".into());
        }
        let mut tries = 0;
        loop {
            let v = store.load().await?;
            let table = match &file {
                Some(f) => Table::restored(v.table.clone(), f.clone()),
                None => v.table.clone(),
            };
            if table == v.table {
                self.replace_at(table, v.revision);
                break;
            }
            let entry = AuditEntry {
                time: rfc3339_now(),
                who: "start".into(),
                action: "start".into(),
                route: String::new(),
                why: "routes file merged at start".into(),
                state: None,
            };
            let json = serde_json::to_string(&table).map_err(|e| e.to_string())?;
            let audit = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
            match store.swap(v.revision, json, audit).await? {
                Some(rev) => {
                    self.replace_at(table, rev);
                    break;
                }
                // Another replica started at the same moment: merge into its table.
                None if tries < 5 => tries += 1,
                None => {
                    return Err(format!(
                        "{}: the routes kept changing during start",
                        store.describe()
                    ));
                }
            }
        }
        let weak = Arc::downgrade(self);
        let mut rx = store.follow();
        tokio::spawn(async move {
            while let Some(v) = rx.recv().await {
                let Some(t) = weak.upgrade() else { return };
                t.apply_shared(v);
            }
        });
        tracing::info!(
            store = %store.describe(),
            routes = self.snapshot().iter().count(),
            "traffic routes shared with the other replicas"
        );
        Ok(())
    }

    /// An A/B route's outcomes: this replica's, plus the other replicas' when shared.
    pub async fn outcomes(&self, route: &str) -> Outcomes {
        let mine = self.experiments.outcomes(route);
        let Some(store) = self.shared.get() else {
            return mine;
        };
        match store.others_outcomes().await {
            Ok(others) => others
                .iter()
                .filter_map(|o| o.get(route))
                .fold(mine, |acc, o| acc.merged(o)),
            Err(e) => {
                tracing::warn!("other replicas' A/B outcomes unavailable: {e}");
                mine
            }
        }
    }
}

/// Parses a stored table; an empty record is an empty table.
pub fn parse_table(bytes: &[u8]) -> Result<Table, String> {
    if bytes.is_empty() {
        return Ok(Table::default());
    }
    serde_json::from_slice(bytes).map_err(|e| format!("not a routes table: {e}"))
}

/// `--state-store` URLs this build can open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// `host:port` endpoints.
    pub endpoints: Vec<String>,
    /// The key prefix (no trailing slash).
    pub prefix: String,
}

impl StoreUrl {
    /// Parses `etcd://host:port[,host:port...]/prefix`.
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("'{url}': only etcd://host:port/prefix is supported"))?;
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(format!("'{url}': no host:port"));
        }
        if let Some(bad) = endpoints.iter().find(|h| {
            h.rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        }) {
            return Err(format!("'{url}': '{bad}' is not host:port"));
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Err(format!(
                "'{url}': name a key prefix (etcd://host:port/inferd/prod), so replicas of one deployment share it and others do not"
            ));
        }
        Ok(StoreUrl {
            endpoints,
            prefix: format!("/{}", prefix.trim_start_matches('/')),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_or_say_what_is_wrong() {
        assert_eq!(
            StoreUrl::parse("etcd://127.0.0.1:2379,etcd-2:2379/inferd/prod/").unwrap(),
            StoreUrl {
                endpoints: vec!["127.0.0.1:2379".into(), "etcd-2:2379".into()],
                prefix: "/inferd/prod".into()
            }
        );
        for (bad, words) in [
            ("redis://h:1/p", "only etcd://"),
            ("etcd:///p", "no host:port"),
            ("etcd://host/p", "'host' is not host:port"),
            ("etcd://h:99999/p", "not host:port"),
            ("etcd://h:2379", "key prefix"),
            ("etcd://h:2379/", "key prefix"),
        ] {
            let e = StoreUrl::parse(bad).unwrap_err();
            assert!(e.contains(words), "{bad}: {e}");
        }
    }

    #[test]
    fn an_empty_record_is_an_empty_table() {
        assert_eq!(parse_table(b"").unwrap(), Table::default());
        assert!(
            parse_table(b"{")
                .unwrap_err()
                .contains("not a routes table")
        );
    }
}
