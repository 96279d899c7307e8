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
//! were any. An identified caller's refusals are entries up to
//! [`REFUSED_PER_HOUR`] an hour; the rest are counted and summed up the
//! same way, so a viewer or a board cannot fill the trail with refusals
//! either. Every field of an entry is bounded ([`ACTION_MAX`]): a request
//! path is the caller's to choose.

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

/// An identified caller's refusals kept as entries in an hour; more are
/// summed up.
pub(crate) const REFUSED_PER_HOUR: u32 = 20;

/// Identified callers whose refusals are counted one by one; beyond, they
/// are summed up at once.
const CALLERS: usize = 16_384;

/// The longest action an entry keeps (a request line), in bytes; other
/// fields are shorter still.
pub(crate) const ACTION_MAX: usize = 512;

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// One identified caller's refusals this hour.
#[derive(Default)]
struct CallerRefusals {
    hour_started: u64,
    recorded: u32,
    /// Counted, not recorded, since the last summary, and the last of them.
    summed: u64,
    last: String,
}

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
    by_caller: Mutex<HashMap<String, CallerRefusals>>,
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
            by_caller: Mutex::new(HashMap::new()),
        };
        audit.prune(harvester_api::now_ms());
        audit
    }

    /// Records `entry` under the next sequence number; drops what is past
    /// the window's age or size.
    pub(crate) fn record(&self, entry: &AuditEntry) {
        let entry = AuditEntry {
            time: entry.time,
            user: bounded(&entry.user, 128),
            role: bounded(&entry.role, 16),
            action: bounded(&entry.action, ACTION_MAX),
            status: entry.status,
            outcome: bounded(&entry.outcome, 16),
            source: bounded(&entry.source, 64),
        };
        let result = (|| -> Result<(), Box<dyn std::error::Error>> {
            let value = serde_json::to_vec(&entry)?;
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

    /// Records the refusal `entry` of an identified caller, or, past
    /// [`REFUSED_PER_HOUR`] of theirs this hour, counts it for the summary.
    pub(crate) fn refused(&self, entry: &AuditEntry) {
        {
            let mut callers = lock(&self.by_caller);
            let hour = entry.time - entry.time % 3_600_000;
            let known = callers.len() < CALLERS || callers.contains_key(&entry.user);
            let mine = callers.entry(bounded(&entry.user, 128));
            let c = match (known, mine) {
                (true, e) => e.or_default(),
                (false, std::collections::hash_map::Entry::Occupied(e)) => e.into_mut(),
                (false, std::collections::hash_map::Entry::Vacant(_)) => {
                    drop(callers);
                    // Too many callers to count each: the anonymous count.
                    self.refused_anonymous(entry.source.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()));
                    return;
                }
            };
            if c.hour_started != hour {
                c.hour_started = hour;
                c.recorded = 0;
            }
            if c.recorded >= REFUSED_PER_HOUR {
                c.summed += 1;
                c.last = bounded(&entry.action, ACTION_MAX);
                return;
            }
            c.recorded += 1;
        }
        self.record(entry);
    }

    /// Writes one entry summing up the refusals of callers without an
    /// identity since the last summary, if there were any, and one per
    /// identified caller whose refusals were counted; the hub does so
    /// every minute, and before the trail is read.
    pub(crate) fn summarise_refusals(&self) {
        let summed: Vec<(String, u64, String)> = lock(&self.by_caller)
            .iter_mut()
            .filter(|(_, c)| c.summed > 0)
            .map(|(who, c)| (who.clone(), std::mem::take(&mut c.summed), std::mem::take(&mut c.last)))
            .collect();
        for (who, n, last) in summed {
            self.record(&AuditEntry {
                time: harvester_api::now_ms(),
                user: who,
                role: String::new(),
                action: format!(
                    "refused {n} more request{} (over {REFUSED_PER_HOUR} an hour are summed up; the last: {last})",
                    if n == 1 { "" } else { "s" }
                ),
                status: 403,
                outcome: "refused".into(),
                source: String::new(),
            });
        }
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

    /// A viewer or a board refused again and again, with paths as long as
    /// a request allows, cannot push people's entries out.
    #[test]
    fn an_identified_callers_refusals_are_bounded_in_number_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, audit) = open(
            dir.path(),
            Keep {
                age: RETENTION,
                bytes: 1 << 20,
            },
        );
        let now = harvester_api::now_ms();
        audit.record(&entry(now, "admin"));
        let long = format!("PUT /api/v1alpha1/plugins/{}", "a".repeat(60_000));
        for _ in 0..1_000 {
            audit.refused(&AuditEntry {
                action: long.clone(),
                status: 403,
                outcome: "refused".into(),
                ..entry(now, "vic")
            });
        }
        audit.summarise_refusals();
        let vic = audit.entries(0, Some("vic"), 10_000);
        assert_eq!(vic.len(), REFUSED_PER_HOUR as usize + 1);
        assert!(vic.iter().all(|e| e.action.len() <= ACTION_MAX), "actions are cut");
        assert!(
            vic.last().unwrap().action.starts_with("refused 980 more requests"),
            "{}",
            vic.last().unwrap().action
        );
        assert_eq!(audit.entries(0, Some("admin"), 10).len(), 1, "the admin's entry stays");
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
