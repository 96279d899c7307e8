//! Node certificates and revocation epochs: what the store keeps of them
//! (`cert/<serial>`: [`CertRecord`], `access/<node>`: [`NodeAccess`]) and
//! the in-memory view every request is checked against ([`Certs`]).

use super::Refusal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CertRecord {
    pub(super) node: String,
    pub(super) not_after: u64,
    pub(super) issued: u64,
    pub(super) revoked: bool,
    /// The node's revocation epoch when this was issued.
    #[serde(default)]
    pub(super) epoch: u64,
}

/// A node's revocation epoch: certificates of another epoch never work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NodeAccess {
    pub(super) epoch: u64,
}

/// Certificate records kept per node: a board uses its newest; a node
/// renewing in a loop replaces its own older ones, it cannot grow the store.
pub(super) const CERTS_PER_NODE: usize = 4;

/// What the check every request makes needs of a certificate.
#[derive(Debug, Clone)]
pub(super) struct CertEntry {
    pub(super) node: String,
    pub(super) epoch: u64,
    pub(super) issued: u64,
    pub(super) not_after: u64,
    /// Marked by a revocation (the epoch says it too; records written
    /// before epochs existed say it only here).
    pub(super) revoked: bool,
}

impl CertEntry {
    pub(super) fn of(r: &CertRecord) -> CertEntry {
        CertEntry {
            node: r.node.clone(),
            epoch: r.epoch,
            issued: r.issued,
            not_after: r.not_after,
            revoked: r.revoked,
        }
    }
}

/// Node certificates and revocation epochs, as the store holds them.
#[derive(Default)]
pub(super) struct Certs {
    pub(super) by_serial: HashMap<String, CertEntry>,
    pub(super) epochs: HashMap<String, u64>,
}

impl Certs {
    pub(super) fn epoch(&self, node: &str) -> u64 {
        self.epochs.get(node).copied().unwrap_or(0)
    }

    /// Why `serial` (presented by `node`) does not work, if it does not.
    pub(super) fn refusal(&self, node: &str, serial: &str) -> Option<Refusal> {
        match self.by_serial.get(serial) {
            None => Some(Refusal::UnknownCertificate(node.to_string())),
            Some(c) if c.revoked || c.node != node || c.epoch != self.epoch(node) => {
                Some(Refusal::Revoked(node.to_string()))
            }
            Some(_) => None,
        }
    }

    /// `node`'s certificates, oldest first.
    pub(super) fn of(&self, node: &str) -> Vec<(&String, &CertEntry)> {
        let mut certs: Vec<(&String, &CertEntry)> = self.by_serial.iter().filter(|(_, c)| c.node == node).collect();
        certs.sort_by(|a, b| a.1.issued.cmp(&b.1.issued).then_with(|| a.0.cmp(b.0)));
        certs
    }

    /// Whether `node` has a certificate of its current epoch that is not
    /// revoked and not past `horizon` (the end of its renewal grace).
    pub(super) fn working(&self, node: &str, horizon: u64) -> bool {
        let epoch = self.epoch(node);
        self.by_serial
            .values()
            .any(|c| c.node == node && !c.revoked && c.epoch == epoch && c.not_after > horizon)
    }

    /// Which of `node`'s certificates to forget when it gets a new one: the
    /// expired (past `horizon`), and the oldest beyond [`CERTS_PER_NODE`]
    /// counting the new one.
    pub(super) fn to_forget(&self, node: &str, horizon: u64) -> Vec<String> {
        let (expired, kept): (Vec<_>, Vec<_>) = self.of(node).into_iter().partition(|(_, c)| c.not_after < horizon);
        let over = (kept.len() + 1).saturating_sub(CERTS_PER_NODE);
        expired
            .into_iter()
            .chain(kept.into_iter().take(over))
            .map(|(serial, _)| serial.clone())
            .collect()
    }
}
