//! The numbered revisions of each Plugin, in the store's `revisions` tree,
//! keyed by plugin name and number. A revision is recorded when a Plugin
//! is applied with something new to run; the reconciler records one too
//! when it finds the Plugin running something its newest revision is not
//! (a hub stopped between the two writes), so none is ever missing.

use crate::store::{Store, StoreError};
use harvester_api::resources::Plugin;
use harvester_api::rollout::{DEFAULT_REVISION_HISTORY_LIMIT, Revision};

pub(crate) struct Revisions {
    tree: sled::Tree,
}

fn prefix(plugin: &str) -> Vec<u8> {
    let mut k = plugin.as_bytes().to_vec();
    k.push(0);
    k
}

fn key(plugin: &str, number: u64) -> Vec<u8> {
    let mut k = prefix(plugin);
    k.extend_from_slice(&number.to_be_bytes());
    k
}

/// What changed from `before` to `after`, in a few words.
fn change(before: Option<&Revision>, after: &Revision) -> String {
    let Some(b) = before else {
        return format!("created: {} ({})", after.image, after.digest.short());
    };
    let mut parts = Vec::new();
    if b.digest != after.digest {
        parts.push(format!("image {} ({})", after.image, after.digest.short()));
    }
    let (r0, r1) = (&b.run, &after.run);
    let config: Vec<String> = r1
        .config
        .iter()
        .filter(|(k, v)| r0.config.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}={v}"))
        .chain(
            r0.config
                .keys()
                .filter(|k| !r1.config.contains_key(*k))
                .map(|k| format!("-{k}")),
        )
        .collect();
    if !config.is_empty() {
        parts.push(format!("config {}", config.join(",")));
    }
    if r0.grants != r1.grants {
        parts.push("grants".into());
    }
    if r0.tick_interval != r1.tick_interval {
        parts.push(format!("tickInterval {}", r1.tick_interval));
    }
    if r0.limits != r1.limits {
        parts.push("limits".into());
    }
    parts.join("; ")
}

impl Revisions {
    pub(crate) fn open(store: &Store) -> Result<Revisions, StoreError> {
        Ok(Revisions {
            tree: store.open_tree("revisions")?,
        })
    }

    /// The artifact of every retained revision of every Plugin.
    pub(crate) fn all_digests(&self) -> Result<Vec<harvester_api::Digest>, StoreError> {
        let mut out = Vec::new();
        for v in self.tree.iter().values() {
            if let Ok(r) = serde_json::from_slice::<Revision>(&v?) {
                out.push(r.digest);
            }
        }
        Ok(out)
    }

    /// A Plugin's revisions, oldest first. One that does not read is
    /// skipped: a damaged entry must not hide the others.
    pub(crate) fn list(&self, plugin: &str) -> Result<Vec<Revision>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(prefix(plugin)) {
            let (_, v) = kv?;
            if let Ok(r) = serde_json::from_slice::<Revision>(&v) {
                out.push(r);
            }
        }
        Ok(out)
    }

    pub(crate) fn get(&self, plugin: &str, number: u64) -> Result<Option<Revision>, StoreError> {
        Ok(self
            .tree
            .get(key(plugin, number))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub(crate) fn newest(&self, plugin: &str) -> Result<Option<Revision>, StoreError> {
        let last = self.tree.scan_prefix(prefix(plugin)).next_back().transpose()?;
        Ok(last.and_then(|(_, v)| serde_json::from_slice(&v).ok()))
    }

    /// Records what `plugin` runs as its newest revision unless it already
    /// is; then keeps `spec.revisionHistoryLimit` revisions, never one in
    /// `keep`. Returns the newest revision, and whether it was made now.
    pub(crate) fn record(
        &self,
        plugin: &Plugin,
        by: &str,
        why: Option<String>,
        keep: &[u64],
    ) -> Result<Option<(Revision, bool)>, StoreError> {
        let Some(digest) = plugin.spec.digest else {
            return Ok(None);
        };
        let name = &plugin.metadata.name;
        let newest = self.newest(name)?;
        if let Some(n) = newest.as_ref().filter(|n| n.runs(&digest, &plugin.spec.run)) {
            return Ok(Some((n.clone(), false)));
        }
        let mut revision = Revision {
            number: newest.as_ref().map_or(1, |n| n.number + 1),
            generation: plugin.metadata.generation,
            image: plugin.spec.image.clone(),
            digest,
            run: plugin.spec.run.clone(),
            created: harvester_api::now_ms(),
            by: by.to_string(),
            change: String::new(),
            outcome: String::new(),
        };
        revision.change = why.unwrap_or_else(|| change(newest.as_ref(), &revision));
        self.tree
            .insert(key(name, revision.number), serde_json::to_vec(&revision)?)?;
        let limit = plugin
            .spec
            .revision_history_limit
            .unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT)
            .max(1) as usize;
        let all = self.list(name)?;
        let excess = all.len().saturating_sub(limit);
        for old in all
            .iter()
            .filter(|r| r.number != revision.number && !keep.contains(&r.number))
            .take(excess)
        {
            self.tree.remove(key(name, old.number))?;
        }
        Ok(Some((revision, true)))
    }

    /// Notes how a revision's rollout ended (once).
    pub(crate) fn set_outcome(&self, plugin: &str, number: u64, outcome: &str) -> Result<(), StoreError> {
        if let Some(mut r) = self.get(plugin, number)?
            && r.outcome != outcome
        {
            r.outcome = outcome.to_string();
            self.tree.insert(key(plugin, number), serde_json::to_vec(&r)?)?;
        }
        Ok(())
    }

    /// A deleted Plugin's revisions go with it.
    pub(crate) fn remove_all(&self, plugin: &str) -> Result<(), StoreError> {
        for kv in self.tree.scan_prefix(prefix(plugin)) {
            let (k, _) = kv?;
            self.tree.remove(k)?;
        }
        Ok(())
    }
}
