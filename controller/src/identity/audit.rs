//! The audit trail: every write people make (and every enrolment), with
//! who, their role, what, the outcome and where from, in the store's
//! `audit` tree. The newest [`KEEP`] entries are kept.

use harvester_api::identity::AuditEntry;

/// Entries kept; older ones are dropped as new ones come.
pub(crate) const KEEP: u64 = 10_000;

pub(crate) struct Audit {
    tree: sled::Tree,
    /// The next sequence number; entries are written in its order.
    next: std::sync::Mutex<u64>,
}

impl Audit {
    pub(crate) fn new(tree: sled::Tree) -> Audit {
        let next = tree
            .last()
            .ok()
            .flatten()
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(0, |k| u64::from_be_bytes(k) + 1);
        Audit {
            tree,
            next: std::sync::Mutex::new(next),
        }
    }

    /// Records `entry` under the next sequence number; drops what falls
    /// out of the window.
    pub(crate) fn record(&self, entry: &AuditEntry) {
        let result = (|| -> Result<(), Box<dyn std::error::Error>> {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let seq = *next;
            *next += 1;
            self.tree.insert(seq.to_be_bytes(), serde_json::to_vec(entry)?)?;
            if seq >= KEEP {
                // Everything at or below seq - KEEP goes; usually one entry.
                let cut = (seq - KEEP).to_be_bytes();
                while let Some((k, _)) = self.tree.first()? {
                    if k.as_ref() > cut.as_slice() {
                        break;
                    }
                    self.tree.remove(k)?;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(
                "the audit trail could not record {} by {}: {e}",
                entry.action,
                entry.user
            );
        }
    }

    /// Entries since `since` (ms), of `user` if given, oldest first, at
    /// most `limit`, the newest ones.
    pub(crate) fn entries(&self, since: u64, user: Option<&str>, limit: usize) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = self
            .tree
            .iter()
            .rev()
            .filter_map(|r| r.ok())
            .filter_map(|(_, v)| serde_json::from_slice::<AuditEntry>(&v).ok())
            .take_while(|e| e.time >= since)
            .filter(|e| user.is_none_or(|u| e.user == u))
            .take(limit)
            .collect();
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(time: u64, user: &str) -> AuditEntry {
        AuditEntry {
            time,
            user: user.into(),
            role: "operator".into(),
            action: "POST /api/v1alpha1/apply".into(),
            status: 200,
            outcome: "ok".into(),
            source: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn the_window_keeps_the_newest_and_filters_by_time_and_user() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let audit = Audit::new(db.open_tree("audit").unwrap());
        for i in 0..KEEP + 5 {
            audit.record(&entry(i, if i % 2 == 0 { "alice" } else { "bob" }));
        }
        assert_eq!(audit.tree.len() as u64, KEEP);
        let all = audit.entries(0, None, usize::MAX);
        assert_eq!(all.first().unwrap().time, 5, "the oldest five are gone");
        assert_eq!(all.last().unwrap().time, KEEP + 4);
        let recent = audit.entries(KEEP, Some("alice"), 100);
        assert!(recent.iter().all(|e| e.user == "alice" && e.time >= KEEP));
        assert_eq!(recent.len(), 3);
        assert_eq!(audit.entries(0, None, 2).len(), 2);
    }
}
