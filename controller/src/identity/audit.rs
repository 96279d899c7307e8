//! The audit trail: what identified callers did (people's writes and
//! refusals, backups, sign-ins, enrolments), with who, their role, what,
//! the outcome and where from, in the store's `audit` tree. Entries are
//! kept by age and size ([`Keep`]), never by count: no amount of traffic
//! pushes an entry out before its time unless the trail outgrows its
//! size budget.
//!
//! Callers without an identity (no credential, an unknown token, a wrong
//! join token) are not entries: anyone who reaches the port could write
//! those. Their refusals are counted per source address in memory
//! ([`Refusals`]) and written as one summary entry a minute, when there
//! were any.

use harvester_api::identity::AuditEntry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How long entries are kept unless the hub is told otherwise
/// (`--audit-retention`).
pub(crate) const RETENTION: Duration = Duration::from_secs(90 * 86_400);

/// The most entry bytes the trail holds (about 300,000 entries); the
/// oldest go first beyond it.
pub(crate) const BUDGET: u64 = 64 << 20;

/// Source addresses whose refusals are counted one by one; the rest are
/// counted together.
const SOURCES: usize = 1024;

/// Addresses a summary names.
const TOP: usize = 5;

/// What the trail keeps: entries younger than `age`, at most `bytes` of
/// them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keep {
    pub age: Duration,
    pub bytes: u64,
}

impl Default for Keep {
    fn default() -> Keep {
        Keep {
            age: RETENTION,
            bytes: BUDGET,
        }
    }
}

/// The stored window: the next sequence number and the bytes held.
struct Window {
    next: u64,
    bytes: u64,
}

/// Refusals of callers without an identity since the last summary.
#[derive(Default)]
struct Refusals {
    by_source: HashMap<IpAddr, u64>,
    /// Beyond [`SOURCES`] addresses, or without a known address.
    other: u64,
}

pub(crate) struct Audit {
    tree: sled::Tree,
    keep: Keep,
    window: Mutex<Window>,
    refusals: Mutex<Refusals>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Audit {
    pub(crate) fn new(tree: sled::Tree, keep: Keep) -> Audit {
        let next = tree
            .last()
            .ok()
            .flatten()
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(0, |k| u64::from_be_bytes(k) + 1);
        let bytes = tree
            .iter()
            .values()
            .filter_map(|v| v.ok())
            .map(|v| v.len() as u64)
            .sum();
        let audit = Audit {
            tree,
            keep,
            window: Mutex::new(Window { next, bytes }),
            refusals: Mutex::new(Refusals::default()),
        };
        audit.prune(harvester_api::now_ms());
        audit
    }

    /// Records `entry` under the next sequence number; drops what is past
    /// the window's age or size.
    pub(crate) fn record(&self, entry: &AuditEntry) {
        let result = (|| -> Result<(), Box<dyn std::error::Error>> {
            let value = serde_json::to_vec(entry)?;
            let mut window = lock(&self.window);
            let seq = window.next;
            window.next += 1;
            self.tree.insert(seq.to_be_bytes(), value.as_slice())?;
            window.bytes += value.len() as u64;
            self.drop_old(&mut window, harvester_api::now_ms())?;
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

    /// Drops entries past their age (also when nothing is written).
    pub(crate) fn prune(&self, now_ms: u64) {
        let mut window = lock(&self.window);
        if let Err(e) = self.drop_old(&mut window, now_ms) {
            tracing::error!("the audit trail could not drop old entries: {e}");
        }
    }

    /// The oldest entries go while they are older than the age kept or
    /// the trail holds more than its bytes. Called under `window`.
    fn drop_old(&self, window: &mut Window, now_ms: u64) -> Result<(), Box<dyn std::error::Error>> {
        let horizon = now_ms.saturating_sub(self.keep.age.as_millis() as u64);
        while let Some((k, v)) = self.tree.first()? {
            let expired = || serde_json::from_slice::<AuditEntry>(&v).map_or(true, |e| e.time < horizon);
            if window.bytes <= self.keep.bytes && !expired() {
                break;
            }
            self.tree.remove(k)?;
            window.bytes = window.bytes.saturating_sub(v.len() as u64);
        }
        Ok(())
    }

    /// Counts one refusal of a caller without an identity, from `source`.
    pub(crate) fn refused_anonymous(&self, source: Option<IpAddr>) {
        let mut refusals = lock(&self.refusals);
        match source {
            Some(ip) if refusals.by_source.len() < SOURCES || refusals.by_source.contains_key(&ip) => {
                *refusals.by_source.entry(ip).or_default() += 1
            }
            _ => refusals.other += 1,
        }
    }

    /// Writes one entry summing up the refusals of callers without an
    /// identity since the last summary, if there were any; the hub does
    /// so every minute, and before the trail is read.
    pub(crate) fn summarise_refusals(&self) {
        let Refusals { by_source, other } = std::mem::take(&mut *lock(&self.refusals));
        let total = by_source.values().sum::<u64>() + other;
        if total == 0 {
            return;
        }
        let mut top: Vec<(IpAddr, u64)> = by_source.into_iter().collect();
        let addresses = top.len();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut named: Vec<String> = top.iter().take(TOP).map(|(ip, n)| format!("{ip} x{n}")).collect();
        if other > 0 {
            named.push(format!("other x{other}"));
        }
        let from = match (addresses, other) {
            (1, 0) => "1 address".to_string(),
            (n, 0) => format!("{n} addresses"),
            (n, _) => format!("{n}+ addresses"),
        };
        self.record(&AuditEntry {
            time: harvester_api::now_ms(),
            user: "anonymous".into(),
            role: String::new(),
            action: format!(
                "refused {total} request{} without an identity from {from} (top: {})",
                if total == 1 { "" } else { "s" },
                named.join(", ")
            ),
            status: 401,
            outcome: "refused".into(),
            source: top.first().map(|(ip, _)| ip.to_string()).unwrap_or_default(),
        });
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

    fn open(dir: &std::path::Path, keep: Keep) -> (sled::Db, Audit) {
        let db = reopen(dir);
        let audit = Audit::new(db.open_tree("audit").unwrap(), keep);
        (db, audit)
    }

    /// The store in `dir`: a store just dropped may keep its lock for a
    /// moment while sled's flusher thread ends.
    fn reopen(dir: &std::path::Path) -> sled::Db {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match sled::Config::new().path(dir).open() {
                Ok(db) => return db,
                Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("opening the store in {}: {e}", dir.display()),
            }
        }
    }

    const DAY_MS: u64 = 86_400_000;

    #[test]
    fn entries_are_kept_by_age_not_by_count_and_filtered_by_time_and_user() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, audit) = open(dir.path(), Keep::default());
        let now = harvester_api::now_ms();
        let old = now - RETENTION.as_millis() as u64 - DAY_MS;
        for i in 0..5 {
            audit.record(&entry(old + i, "mallory"));
        }
        // Far more than the old window of 10,000: nothing is pushed out.
        for i in 0..12_000 {
            audit.record(&entry(now + i, if i % 2 == 0 { "alice" } else { "bob" }));
        }
        assert_eq!(audit.tree.len(), 12_000, "only the entries past the retention are gone");
        let all = audit.entries(0, None, usize::MAX);
        assert_eq!(all.first().unwrap().time, now);
        let recent = audit.entries(now + 11_990, Some("alice"), 100);
        assert!(recent.iter().all(|e| e.user == "alice" && e.time >= now + 11_990));
        assert_eq!(recent.len(), 5);
        assert_eq!(audit.entries(0, None, 2).len(), 2);
    }

    #[test]
    fn the_oldest_go_when_the_trail_outgrows_its_size_and_it_reopens_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let now = harvester_api::now_ms();
        let one = serde_json::to_vec(&entry(now, "alice")).unwrap().len() as u64;
        let keep = Keep {
            age: RETENTION,
            bytes: one * 100,
        };
        {
            let (_db, audit) = open(dir.path(), keep);
            for i in 0..150 {
                audit.record(&entry(now + i, "alice"));
            }
            assert_eq!(audit.tree.len(), 100);
            assert_eq!(audit.entries(0, None, usize::MAX)[0].time, now + 50);
        }
        let (_db, audit) = open(dir.path(), keep);
        audit.record(&entry(now + 150, "alice"));
        assert_eq!(audit.tree.len(), 100, "the size is counted again on opening");
        assert_eq!(audit.entries(0, None, usize::MAX)[0].time, now + 51);
    }

    #[test]
    fn refusals_without_an_identity_are_one_summary_entry_by_source() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, audit) = open(dir.path(), Keep::default());
        audit.record(&entry(harvester_api::now_ms(), "alice"));
        audit.summarise_refusals();
        assert_eq!(audit.tree.len(), 1, "no refusals, no summary");
        let flood: IpAddr = "203.0.113.7".parse().unwrap();
        for _ in 0..20_000 {
            audit.refused_anonymous(Some(flood));
        }
        for i in 0..SOURCES as u32 + 10 {
            audit.refused_anonymous(Some(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))));
        }
        // The map holds 1,024 addresses: the flood's and 1,023 others; the
        // 11 beyond and the one without an address are "other".
        audit.refused_anonymous(None);
        assert_eq!(audit.tree.len(), 1, "refusals are counted, not recorded one by one");
        audit.summarise_refusals();
        let all = audit.entries(0, None, usize::MAX);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].user, "alice", "the flood evicted nothing");
        let summary = &all[1];
        assert_eq!(
            (summary.user.as_str(), summary.outcome.as_str()),
            ("anonymous", "refused")
        );
        assert!(
            summary.action.starts_with(
                "refused 21035 requests without an identity from 1024+ addresses (top: 203.0.113.7 x20000, "
            ),
            "{}",
            summary.action
        );
        assert!(summary.action.ends_with(", other x12)"), "{}", summary.action);
        assert_eq!(summary.source, "203.0.113.7");
        audit.summarise_refusals();
        assert_eq!(audit.tree.len(), 2, "counting starts again after a summary");
    }
}
