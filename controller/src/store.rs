//! Desired state in sled: one tree per kind, an ordered event log for
//! watches, and content-addressed blobs. Every write bumps one global
//! resource version, is flushed to disk before it is acknowledged, and is
//! published to live watchers after the flush.

use harvester_api::Digest;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::path::Path;
use tokio::sync::broadcast;

/// Events kept for watches that resume; older ones must list again.
pub const EVENT_HISTORY: u64 = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Plugin,
    Node,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Plugin => "Plugin",
            Kind::Node => "Node",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, as watchers receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchEvent {
    pub resource_version: u64,
    #[serde(rename = "type")]
    pub event: EventType,
    pub kind: Kind,
    pub object: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{kind} {name} was changed by someone else (you sent resourceVersion {sent}, it is now {current}): get it again and retry"
    )]
    Conflict {
        kind: &'static str,
        name: String,
        sent: u64,
        current: u64,
    },
    #[error("{kind} {name} not found")]
    NotFound { kind: &'static str, name: String },
    #[error(
        "resourceVersion {requested} is too old (the oldest kept is {oldest}): list again and watch from the list's resourceVersion"
    )]
    Gone { requested: u64, oldest: u64 },
    #[error("{0}")]
    Invalid(String),
    /// The writer may not make this change (decided with the write, against
    /// the object as it is then).
    #[error("{0}")]
    Forbidden(String),
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// The write could not be made durable; it was not acknowledged.
    #[error("storage: cannot flush the write to disk: {0}")]
    Flush(String),
    #[error("stored object is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("writing the snapshot: {0}")]
    Snapshot(String),
}

/// What a write function decides.
pub enum Write {
    /// Store this object (the store sets its resourceVersion).
    Put(serde_json::Value),
    /// Leave it as it is: no write, no event.
    Keep,
    Delete,
}

pub struct Store {
    db: sled::Db,
    plugins: sled::Tree,
    nodes: sled::Tree,
    events: sled::Tree,
    blobs: sled::Tree,
    /// When each blob was last uploaded (ms since the epoch), for the grace
    /// a blob gets before the Plugin naming it is applied.
    blob_times: sled::Tree,
    meta: sled::Tree,
    live: broadcast::Sender<WatchEvent>,
    history: u64,
    /// One writer at a time: every write bumps the one revision counter, so
    /// concurrent transactions would only conflict and retry, and events must
    /// reach watchers in revision order.
    writer: tokio::sync::Mutex<()>,
}

const RV_KEY: &[u8] = b"resourceVersion";

fn rv_bytes(rv: u64) -> [u8; 8] {
    rv.to_be_bytes()
}

fn abort<T>(e: StoreError) -> Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(e))
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_history(path, EVENT_HISTORY)
    }

    /// A store that keeps `history` events for resuming watches.
    pub fn open_with_history(path: &Path, history: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new().path(path).open()?;
        Ok(Store {
            plugins: db.open_tree("plugins")?,
            nodes: db.open_tree("nodes")?,
            events: db.open_tree("events")?,
            blobs: db.open_tree("blobs")?,
            blob_times: db.open_tree("blob-times")?,
            meta: db.open_tree("meta")?,
            db,
            live: broadcast::channel(8192).0,
            history: history.max(1),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// Every tree's name and entries, while no write can happen: what a
    /// backup holds. `each` gets (tree, key, value) in order; the revision
    /// it stands at is returned.
    pub async fn snapshot(
        &self,
        mut each: impl FnMut(&[u8], &[u8], &[u8]) -> std::io::Result<()>,
    ) -> Result<u64, StoreError> {
        let _no_writes = self.writer.lock().await;
        let mut walk = || -> Result<u64, StoreError> {
            for name in self.db.tree_names() {
                let tree = self.db.open_tree(&name)?;
                for kv in tree.iter() {
                    let (k, v) = kv?;
                    each(&name, &k, &v).map_err(|e| StoreError::Snapshot(e.to_string()))?;
                }
            }
            Ok(self.resource_version())
        };
        // A large store takes a while to read: other tasks move on meanwhile.
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(walk),
            _ => walk(),
        }
    }

    /// Another tree in the same database (identities keep theirs here).
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    fn tree(&self, kind: Kind) -> &sled::Tree {
        match kind {
            Kind::Plugin => &self.plugins,
            Kind::Node => &self.nodes,
        }
    }

    /// The store's current revision.
    pub fn resource_version(&self) -> u64 {
        self.meta
            .get(RV_KEY)
            .ok()
            .flatten()
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
            .unwrap_or(0)
    }

    pub fn get(&self, kind: Kind, name: &str) -> Result<Option<serde_json::Value>, StoreError> {
        match self.tree(kind).get(name.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    pub fn list(&self, kind: Kind) -> Result<Vec<serde_json::Value>, StoreError> {
        self.list_as(kind)
    }

    /// Every object of a kind as its type; one that does not parse fails the
    /// whole list (the reconciler, which must go on, reads them one by one).
    pub fn list_as<T: serde::de::DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>, StoreError> {
        self.tree(kind)
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// Reads the object, lets `f` decide, and writes the result with a new
    /// resource version and an event, in one transaction, flushed before it
    /// returns. Returns the stored object (None when deleted or kept absent).
    pub async fn write(
        &self,
        kind: Kind,
        name: &str,
        f: impl Fn(Option<&serde_json::Value>) -> Result<Write, StoreError>,
    ) -> Result<(Option<serde_json::Value>, Option<WatchEvent>), StoreError> {
        self.write_inner(kind, name, f, true).await
    }

    /// A write of observed state (node reports, computed status), which the
    /// system recomputes after a crash: it is not flushed on its own but
    /// rides on sled's periodic flush (every 500 ms) and the next durable write.
    pub async fn write_observed(
        &self,
        kind: Kind,
        name: &str,
        f: impl Fn(Option<&serde_json::Value>) -> Result<Write, StoreError>,
    ) -> Result<(Option<serde_json::Value>, Option<WatchEvent>), StoreError> {
        self.write_inner(kind, name, f, false).await
    }

    async fn write_inner(
        &self,
        kind: Kind,
        name: &str,
        f: impl Fn(Option<&serde_json::Value>) -> Result<Write, StoreError>,
        durable: bool,
    ) -> Result<(Option<serde_json::Value>, Option<WatchEvent>), StoreError> {
        let _one_writer = self.writer.lock().await;
        let tree = self.tree(kind);
        let result = (tree, &self.events, &self.meta).transaction(|(objects, events, meta)| {
            let current: Option<serde_json::Value> = match objects.get(name.as_bytes())? {
                Some(v) => match serde_json::from_slice(&v) {
                    Ok(v) => Some(v),
                    Err(e) => return abort(StoreError::Corrupt(e)),
                },
                None => None,
            };
            let decision = match f(current.as_ref()) {
                Ok(d) => d,
                Err(e) => return abort(e),
            };
            let (event, stored) = match decision {
                Write::Keep => return Ok((current, None)),
                Write::Delete => {
                    let Some(old) = current else {
                        return abort(StoreError::NotFound {
                            kind: kind.as_str(),
                            name: name.to_string(),
                        });
                    };
                    (EventType::Deleted, old)
                }
                Write::Put(obj) => (
                    if current.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    },
                    obj,
                ),
            };
            let rv = meta
                .get(RV_KEY)?
                .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
                .unwrap_or(0)
                + 1;
            meta.insert(RV_KEY, &rv_bytes(rv))?;
            let mut stored = stored;
            stored["metadata"]["resourceVersion"] = serde_json::json!(rv);
            let bytes = serde_json::to_vec(&stored).map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
            if event == EventType::Deleted {
                objects.remove(name.as_bytes())?;
            } else {
                objects.insert(name.as_bytes(), bytes)?;
            }
            let ev = WatchEvent {
                resource_version: rv,
                event,
                kind,
                object: stored.clone(),
            };
            let ev_bytes = serde_json::to_vec(&ev).map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
            events.insert(&rv_bytes(rv), ev_bytes)?;
            Ok(((event != EventType::Deleted).then_some(stored), Some(ev)))
        });
        let (stored, event) = match result {
            Ok(r) => r,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        if event.is_some() && durable {
            // Durable before anyone hears of it. (A blocking flush on a
            // blocking thread: sled's flush_async can stall under load.)
            let db = self.db.clone();
            tokio::task::spawn_blocking(move || db.flush())
                .await
                .map_err(|e| StoreError::Flush(e.to_string()))??;
        }
        if let Some(ev) = &event {
            if ev.resource_version.is_multiple_of((self.history / 10).max(1)) {
                self.compact(ev.resource_version)?;
            }
            let _ = self.live.send(ev.clone());
        }
        Ok((stored, event))
    }

    fn compact(&self, now: u64) -> Result<(), StoreError> {
        let keep_from = now.saturating_sub(self.history);
        for key in self.events.range(..rv_bytes(keep_from)).keys() {
            self.events.remove(key?)?;
        }
        Ok(())
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.live.subscribe()
    }

    /// Stored events after `rv`, oldest first; `Gone` if some were compacted.
    pub fn events_since(&self, rv: u64) -> Result<Vec<WatchEvent>, StoreError> {
        let oldest = self
            .events
            .first()?
            .map(|(k, _)| u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])))
            .unwrap_or(self.resource_version() + 1);
        if rv + 1 < oldest && rv < self.resource_version() {
            return Err(StoreError::Gone { requested: rv, oldest });
        }
        self.events
            .range(rv_bytes(rv + 1)..)
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// Stores a component under its digest after checking the bytes match.
    pub async fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let actual = Digest::of(bytes);
        if &actual != digest {
            return Err(StoreError::Invalid(format!(
                "the uploaded bytes have digest {actual}, not {digest}"
            )));
        }
        // Every upload restarts the blob's grace: apply uploads it just
        // before the Plugin that names it.
        self.blob_times
            .insert(digest.hex(), &harvester_api::now_ms().to_be_bytes())?;
        if !self.blobs.contains_key(digest.hex())? {
            let _one_writer = self.writer.lock().await;
            self.blobs.insert(digest.hex(), bytes)?;
            let db = self.db.clone();
            tokio::task::spawn_blocking(move || db.flush())
                .await
                .map_err(|e| StoreError::Flush(e.to_string()))??;
        }
        Ok(())
    }

    pub fn has_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self.blobs.contains_key(digest.hex())?)
    }

    pub fn get_blob(&self, digest: &Digest) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.blobs.get(digest.hex())?)
    }

    /// Deletes the blobs nothing in `keep` names and that were uploaded
    /// more than `grace_ms` before `now_ms`; a blob with no upload time (kept
    /// by an older release) starts its grace now. Returns how many went.
    pub async fn collect_blobs(
        &self,
        keep: &std::collections::HashSet<Digest>,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<usize, StoreError> {
        let _one_writer = self.writer.lock().await;
        let (mut removed, mut changed) = (0, false);
        for key in self.blobs.iter().keys() {
            let key = key?;
            let Some(digest) = std::str::from_utf8(&key)
                .ok()
                .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
            else {
                continue;
            };
            if keep.contains(&digest) {
                continue;
            }
            let uploaded = self
                .blob_times
                .get(&key)?
                .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                .map(u64::from_be_bytes);
            match uploaded {
                None => {
                    self.blob_times.insert(&key, &now_ms.to_be_bytes())?;
                    changed = true;
                }
                Some(at) if now_ms.saturating_sub(at) < grace_ms => {}
                Some(_) => {
                    self.blobs.remove(&key)?;
                    self.blob_times.remove(&key)?;
                    removed += 1;
                    changed = true;
                }
            }
        }
        if !changed {
            return Ok(0);
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Flush(e.to_string()))??;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn put(store: &Store, name: &str, v: u64) -> WatchEvent {
        let obj = json!({"metadata": {"name": name}, "v": v});
        store
            .write(Kind::Plugin, name, |_| Ok(Write::Put(obj.clone())))
            .await
            .unwrap()
            .1
            .unwrap()
    }

    #[tokio::test]
    async fn writes_survive_reopening_and_revisions_are_contiguous() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for i in 0..5 {
                assert_eq!(put(&store, &format!("p{i}"), i).await.resource_version, i + 1);
            }
            store.write(Kind::Plugin, "p0", |_| Ok(Write::Delete)).await.unwrap();
        }
        // A store just dropped may keep its lock for a moment while
        // sled's flusher thread ends.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match Store::open(dir.path()) {
                Ok(s) => break s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("reopening the store: {e}"),
            }
        };
        assert_eq!(store.resource_version(), 6);
        assert_eq!(store.list(Kind::Plugin).unwrap().len(), 4);
        assert_eq!(
            store.get(Kind::Plugin, "p3").unwrap().unwrap()["metadata"]["resourceVersion"],
            4
        );
        let events = store.events_since(3).unwrap();
        let rvs: Vec<u64> = events.iter().map(|e| e.resource_version).collect();
        assert_eq!(rvs, vec![4, 5, 6]);
        assert_eq!(events[2].event, EventType::Deleted);
        let err = store
            .write(Kind::Plugin, "nope", |_| Ok(Write::Delete))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_too_old_resource_version_gets_a_resync_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_history(dir.path(), 10).unwrap();
        for i in 0..40 {
            put(&store, "same", i).await;
        }
        let err = store.events_since(1).unwrap_err();
        assert!(matches!(err, StoreError::Gone { .. }));
        assert!(
            err.to_string()
                .contains("list again and watch from the list's resourceVersion"),
            "{err}"
        );
        assert_eq!(store.events_since(35).unwrap().len(), 5);
    }

    #[tokio::test]
    async fn blobs_nothing_names_go_after_their_grace() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (kept, stale, fresh) = (b"kept".as_slice(), b"stale".as_slice(), b"fresh".as_slice());
        for b in [kept, stale, fresh] {
            store.put_blob(&Digest::of(b), b).await.unwrap();
        }
        let keep: std::collections::HashSet<Digest> = [Digest::of(kept)].into();
        let now = harvester_api::now_ms();
        // Within the grace nothing goes.
        assert_eq!(store.collect_blobs(&keep, now, 3_600_000).await.unwrap(), 0);
        // Past it, only what nothing names; an upload again restarts the grace.
        store.put_blob(&Digest::of(fresh), fresh).await.unwrap();
        let later = now + 3_600_000 + 1;
        store
            .blob_times
            .insert(Digest::of(fresh).hex(), &later.to_be_bytes())
            .unwrap();
        assert_eq!(store.collect_blobs(&keep, later, 3_600_000).await.unwrap(), 1);
        assert!(store.has_blob(&Digest::of(kept)).unwrap());
        assert!(!store.has_blob(&Digest::of(stale)).unwrap());
        assert!(store.has_blob(&Digest::of(fresh)).unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_all_complete_in_revision_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let mut live = store.subscribe();
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..30 {
                        put(&store, &format!("w{w}-{i}"), i).await;
                    }
                })
            })
            .collect();
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .expect("writers stalled");
        assert_eq!(store.resource_version(), 240);
        let rvs: Vec<u64> = (0..240).map(|_| live.try_recv().unwrap().resource_version).collect();
        assert_eq!(rvs, (1..=240).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_rejected_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put(&store, "p", 1).await;
        let err = store
            .write(Kind::Plugin, "p", |_| {
                Err(StoreError::Conflict {
                    kind: "Plugin",
                    name: "p".into(),
                    sent: 0,
                    current: 1,
                })
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }));
        assert_eq!(store.resource_version(), 1);
        assert_eq!(store.get(Kind::Plugin, "p").unwrap().unwrap()["v"], 1);
    }
}
