//! [`SharedState`] in etcd (`--state-store etcd://host:port/prefix`, the `etcd` feature),
//! through the `etcd-client` crate. Under the prefix:
//!
//! - `routes`: the route table with its live state, one JSON record, changed only by a
//!   transaction that compares its `mod_revision` with the one the change was built on;
//! - `audit/TIME-REPLICA-N`: one JSON entry per change, written in the same transaction;
//! - `decider`: the id of the replica that runs canary analyses, attached to that replica's
//!   lease ([`LEASE_TTL_SECS`]), so it passes to another within seconds of the holder dying;
//! - `experiments/REPLICA`: each replica's A/B outcomes, summed by reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use inferd_traffic::experiment::Outcomes;

use super::shared::{BoxFut, SharedState, StoreUrl, Versioned, parse_table};

/// Seconds the decider lease outlives its holder's last keep-alive.
pub const LEASE_TTL_SECS: i64 = 3;
/// How often the decider lease is renewed (and taken over when free).
const RENEW: Duration = Duration::from_secs(1);
/// Per-call deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The route table and friends in etcd.
pub struct EtcdState {
    client: Client,
    url: String,
    prefix: String,
    replica: String,
    decider: Arc<AtomicBool>,
    /// The newest table revision this replica has read or written.
    seen: AtomicI64,
    audits: AtomicU64,
}

impl std::fmt::Debug for EtcdState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdState")
            .field("url", &self.url)
            .field("replica", &self.replica)
            .field("decider", &self.decider)
            .finish_non_exhaustive()
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("etcd {what}: {e}")
}

impl EtcdState {
    /// Connects (within a few seconds, or the error) and starts competing for the decider
    /// lease in the background; `replica` names this process in the store.
    pub async fn connect(url: &str, replica: String) -> Result<Arc<EtcdState>, String> {
        let parsed = StoreUrl::parse(url)?;
        let opts = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), CALL_TIMEOUT);
        let mut client = Client::connect(&parsed.endpoints, Some(opts))
            .await
            .map_err(|e| err(&format!("cannot connect to {url}"), e))?;
        // A call proves the endpoint answers (connect alone may be lazy).
        client
            .status()
            .await
            .map_err(|e| err(&format!("{url} does not answer"), e))?;
        let state = Arc::new(EtcdState {
            client,
            url: url.to_string(),
            prefix: parsed.prefix,
            replica,
            decider: Arc::new(AtomicBool::new(false)),
            seen: AtomicI64::new(0),
            audits: AtomicU64::new(0),
        });
        tokio::spawn(compete(
            state.client.clone(),
            state.key("decider"),
            state.replica.clone(),
            Arc::downgrade(&state.decider),
        ));
        Ok(state)
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    fn note_seen(&self, rev: i64) {
        self.seen.fetch_max(rev, Ordering::Relaxed);
    }
}

/// Holds (or waits for) the decider key: a key attached to this replica's lease, created only
/// when absent. Runs until `flag` is dropped.
async fn compete(
    mut client: Client,
    key: String,
    replica: String,
    flag: std::sync::Weak<AtomicBool>,
) {
    let mut lease: Option<(
        i64,
        etcd_client::LeaseKeeper,
        etcd_client::LeaseKeepAliveStream,
    )> = None;
    loop {
        let Some(decider) = flag.upgrade() else {
            if let Some((id, ..)) = lease {
                let _ = client.lease_revoke(id).await;
            }
            return;
        };
        let held = async {
            if lease.is_none() {
                let id = client
                    .lease_grant(LEASE_TTL_SECS, None)
                    .await
                    .map_err(|e| err("lease grant", e))?
                    .id();
                let (keeper, stream) = client
                    .lease_keep_alive(id)
                    .await
                    .map_err(|e| err("lease keep-alive", e))?;
                lease = Some((id, keeper, stream));
            }
            let Some((id, keeper, stream)) = lease.as_mut() else {
                return Ok(false);
            };
            keeper
                .keep_alive()
                .await
                .map_err(|e| err("lease keep-alive", e))?;
            match stream.message().await {
                Ok(Some(r)) if r.ttl() > 0 => {}
                other => {
                    lease = None;
                    return Err(format!("lease expired ({other:?})"));
                }
            }
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    replica.as_str(),
                    Some(PutOptions::new().with_lease(*id)),
                )])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let resp = client.txn(txn).await.map_err(|e| err("decider txn", e))?;
            if resp.succeeded() {
                return Ok(true);
            }
            Ok(resp.op_responses().iter().any(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().iter().any(|kv| kv.value() == replica.as_bytes()),
                _ => false,
            }))
        }
        .await;
        let now = held.as_ref().is_ok_and(|h| *h);
        if decider.swap(now, Ordering::Relaxed) != now {
            tracing::info!(replica = %replica, decider = now, "canary decider lease changed hands");
        }
        if let Err(e) = held {
            tracing::warn!("{e}");
        }
        drop(decider);
        tokio::time::sleep(RENEW).await;
    }
}

impl SharedState for EtcdState {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn load(&self) -> BoxFut<'_, Result<Versioned, String>> {
        Box::pin(async move {
            let mut c = self.client.clone();
            let r = c
                .get(self.key("routes"), None)
                .await
                .map_err(|e| err("read routes", e))?;
            let v = match r.kvs().first() {
                Some(kv) => Versioned {
                    revision: kv.mod_revision(),
                    table: parse_table(kv.value())
                        .map_err(|e| format!("{}{}: {e}", self.url, self.key("routes")))?,
                },
                None => Versioned {
                    revision: 0,
                    table: Default::default(),
                },
            };
            self.note_seen(r.header().map_or(v.revision, |h| h.revision()));
            Ok(v)
        })
    }

    fn swap(
        &self,
        expected: i64,
        table_json: String,
        audit_json: String,
    ) -> BoxFut<'_, Result<Option<i64>, String>> {
        Box::pin(async move {
            let mut c = self.client.clone();
            let routes = self.key("routes");
            let n = self.audits.fetch_add(1, Ordering::Relaxed);
            let audit = self.key(&format!(
                "audit/{}-{}-{n:06}",
                super::persist::rfc3339_now(),
                self.replica
            ));
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    routes.as_str(),
                    CompareOp::Equal,
                    expected,
                )])
                .and_then([
                    TxnOp::put(routes.as_str(), table_json, None),
                    TxnOp::put(audit, audit_json, None),
                ]);
            let resp = c.txn(txn).await.map_err(|e| err("write routes", e))?;
            if !resp.succeeded() {
                return Ok(None);
            }
            let rev = resp.header().map_or(expected + 1, |h| h.revision());
            self.note_seen(rev);
            Ok(Some(rev))
        })
    }

    fn follow(&self) -> tokio::sync::mpsc::Receiver<Versioned> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut client = self.client.clone();
        let key = self.key("routes");
        let url = self.url.clone();
        let mut from = self.seen.load(Ordering::Relaxed) + 1;
        tokio::spawn(async move {
            loop {
                let watched = async {
                    let mut stream = client
                        .watch(
                            key.as_str(),
                            Some(WatchOptions::new().with_start_revision(from)),
                        )
                        .await
                        .map_err(|e| err("watch routes", e))?;
                    while let Some(resp) = stream.message().await.map_err(|e| err("watch", e))? {
                        if resp.compact_revision() > 0 {
                            return Err(format!("watch from revision {from} compacted; reloading"));
                        }
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let table = match ev.event_type() {
                                EventType::Put => match parse_table(kv.value()) {
                                    Ok(t) => t,
                                    Err(e) => {
                                        tracing::warn!("{url}{key}: {e}; ignored");
                                        continue;
                                    }
                                },
                                EventType::Delete => Default::default(),
                            };
                            from = kv.mod_revision() + 1;
                            let v = Versioned {
                                revision: kv.mod_revision(),
                                table,
                            };
                            if tx.send(v).await.is_err() {
                                return Ok(());
                            }
                        }
                        if resp.canceled() {
                            return Err(format!("watch canceled: {}", resp.cancel_reason()));
                        }
                    }
                    Err("watch stream ended".to_string())
                }
                .await;
                match watched {
                    Ok(()) => return,
                    Err(e) => tracing::warn!("following the shared routes: {e}"),
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                // Catch up with what was missed, then watch on from there.
                if let Ok(r) = client.get(key.as_str(), None).await
                    && let Some(kv) = r.kvs().first()
                    && let Ok(table) = parse_table(kv.value())
                {
                    from = kv.mod_revision() + 1;
                    let _ = tx
                        .send(Versioned {
                            revision: kv.mod_revision(),
                            table,
                        })
                        .await;
                }
            }
        });
        rx
    }

    fn is_decider(&self) -> bool {
        self.decider.load(Ordering::Relaxed)
    }

    fn save_outcomes(&self, json: String) -> BoxFut<'_, Result<(), String>> {
        Box::pin(async move {
            let mut c = self.client.clone();
            c.put(
                self.key(&format!("experiments/{}", self.replica)),
                json,
                None,
            )
            .await
            .map_err(|e| err("write A/B outcomes", e))?;
            Ok(())
        })
    }

    fn others_outcomes(&self) -> BoxFut<'_, Result<Vec<BTreeMap<String, Outcomes>>, String>> {
        Box::pin(async move {
            let mut c = self.client.clone();
            let mine = self.key(&format!("experiments/{}", self.replica));
            let r = c
                .get(
                    self.key("experiments/"),
                    Some(GetOptions::new().with_prefix()),
                )
                .await
                .map_err(|e| err("read A/B outcomes", e))?;
            Ok(r.kvs()
                .iter()
                .filter(|kv| kv.key() != mine.as_bytes())
                .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                .collect())
        })
    }
}
