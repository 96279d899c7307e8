//! Who may touch the fleet. The hub CA signs node certificates; join
//! tokens let a board enrol once; a revoked certificate stops working at
//! once. The local admin holds a bearer token the hub made on first start
//! (stored as SHA-256; the plain token only in the admin's client file).
//!
//! - [`listener`]: TLS on the hub's listeners; who is at the other end.
//!
//! State lives in the store's `identity` tree: `admin` (the admin token's
//! hash), `token/<id>` ([`TokenRecord`]), `cert/<serial>` ([`CertRecord`]).

pub(crate) mod listener;

use harvester_api::identity::{ClientConfig, TokenInfo};
use harvester_pki::{Ca, CertInfo, Issued, JoinToken};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    Anonymous,
    /// The bearer of the admin token.
    Admin,
    /// A board, by its certificate. `expired`: past its validity, within
    /// the renewal grace; it may renew and nothing else.
    Node {
        name: String,
        serial: String,
        expired: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRecord {
    secret_sha256: String,
    expires: u64,
    uses_left: u32,
    created: u64,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CertRecord {
    node: String,
    not_after: u64,
    issued: u64,
    revoked: bool,
}

/// Why a join token or a credential was refused: one line, what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "no credential: send a bearer token (`harvester` reads it from its client configuration) or a node certificate"
    )]
    Anonymous,
    #[error("unknown token: it was never issued by this hub, or it was deleted")]
    UnknownToken,
    #[error("join token {0} expired; ask an admin for a new one (harvester token create)")]
    TokenExpired(String),
    #[error("join token {0} is used up; ask an admin for a new one (harvester token create)")]
    TokenUsedUp(String),
    #[error("node {0:?} is enrolled already; to enrol it again, an admin revokes it first (harvester node revoke {0})")]
    Enrolled(String),
    #[error("the certificate of node {0:?} was revoked; enrol the board again with a new join token")]
    Revoked(String),
    #[error("the certificate of node {0:?} expired; it may only renew itself")]
    Expired(String),
    #[error("{0}")]
    Store(String),
}

impl From<sled::Error> for Refusal {
    fn from(e: sled::Error) -> Refusal {
        Refusal::Store(format!("the hub's identity store failed: {e}"))
    }
}

impl From<serde_json::Error> for Refusal {
    fn from(e: serde_json::Error) -> Refusal {
        Refusal::Store(format!("the hub's identity store holds an unreadable record: {e}"))
    }
}

pub(crate) struct Identities {
    ca: Ca,
    tree: sled::Tree,
    admin_sha256: String,
    /// Serials revoked, for the check every request makes.
    revoked: RwLock<HashSet<String>>,
    /// Cancelled when a node's access ends: its open streams close.
    gone: Mutex<HashMap<String, CancellationToken>>,
    /// Token redemption and issuing read, then write.
    writes: Mutex<()>,
    node_cert_lifetime: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms(t: SystemTime) -> u64 {
    harvester_pki::unix_ms(t)
}

impl Identities {
    /// Opens the hub's identities: the CA in `pki` (made on first start)
    /// and the admin credential, whose client configuration is written to
    /// `admin_file` for `server` (the token is made again if the file is gone).
    pub(crate) fn open(
        tree: sled::Tree,
        pki: &Path,
        admin_file: &Path,
        server: &str,
        node_cert_lifetime: Duration,
    ) -> anyhow::Result<Identities> {
        let (ca, made) = Ca::load_or_create(pki)?;
        if made {
            tracing::info!(dir = %pki.display(), "made the hub CA (sha256 {})", ca.hash());
        }
        let stored = tree.get("admin")?.map(|v| String::from_utf8_lossy(&v).into_owned());
        let existing = std::fs::read_to_string(admin_file)
            .ok()
            .and_then(|t| serde_yaml::from_str::<ClientConfig>(&t).ok())
            .map(|c| c.token)
            .filter(|t| stored.as_deref() == Some(&*harvester_pki::sha256_hex(t.as_bytes())));
        let token = match existing {
            Some(t) => t,
            None => {
                let t = harvester_pki::random_hex(32);
                tree.insert("admin", harvester_pki::sha256_hex(t.as_bytes()).as_bytes())?;
                tree.flush()?;
                tracing::info!(file = %admin_file.display(), "made the admin credential");
                t
            }
        };
        // Rewritten at every start: the address or the CA may have changed.
        let config = ClientConfig {
            server: server.to_string(),
            certificate_authority_data: ca.cert_pem().to_string(),
            token: token.clone(),
        };
        let text = format!(
            "# The admin of this hub: HARVESTER_CONFIG={} harvester get nodes\n{}",
            admin_file.display(),
            serde_yaml::to_string(&config)?
        );
        harvester_pki::write_private(admin_file, text.as_bytes())?;
        let mut revoked = HashSet::new();
        for item in tree.scan_prefix("cert/") {
            let (k, v) = item?;
            let record: CertRecord = serde_json::from_slice(&v)?;
            if record.revoked {
                revoked.insert(String::from_utf8_lossy(&k["cert/".len()..]).into_owned());
            }
        }
        Ok(Identities {
            ca,
            tree,
            admin_sha256: harvester_pki::sha256_hex(token.as_bytes()),
            revoked: RwLock::new(revoked),
            gone: Mutex::new(HashMap::new()),
            writes: Mutex::new(()),
            node_cert_lifetime,
        })
    }

    pub(crate) fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Who sent a request: its bearer token if any, else the certificate
    /// its connection presented (already checked against the CA by TLS).
    pub(crate) fn identify(&self, bearer: Option<&str>, cert: Option<&CertInfo>) -> Result<Identity, Refusal> {
        if let Some(token) = bearer {
            return if harvester_pki::same_secret(&harvester_pki::sha256_hex(token.as_bytes()), &self.admin_sha256) {
                Ok(Identity::Admin)
            } else {
                Err(Refusal::UnknownToken)
            };
        }
        let Some(cert) = cert else {
            return Ok(Identity::Anonymous);
        };
        if self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&cert.serial)
        {
            return Err(Refusal::Revoked(cert.name.clone()));
        }
        Ok(Identity::Node {
            name: cert.name.clone(),
            serial: cert.serial.clone(),
            expired: SystemTime::now() > cert.not_after,
        })
    }

    /// A new join token; its secret is in the returned value only.
    pub(crate) fn create_token(
        &self,
        ttl: Duration,
        uses: u32,
        description: &str,
    ) -> Result<(JoinToken, TokenInfo), Refusal> {
        let token = JoinToken::new(&self.ca.hash());
        let now = SystemTime::now();
        let record = TokenRecord {
            secret_sha256: token.secret_hash(),
            expires: ms(now + ttl),
            uses_left: uses,
            created: ms(now),
            description: description.to_string(),
        };
        self.tree
            .insert(format!("token/{}", token.id), serde_json::to_vec(&record)?)?;
        self.tree.flush()?;
        let info = info(&token.id, &record);
        Ok((token, info))
    }

    pub(crate) fn tokens(&self) -> Result<Vec<TokenInfo>, Refusal> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix("token/") {
            let (k, v) = item?;
            let record: TokenRecord = serde_json::from_slice(&v)?;
            out.push(info(&String::from_utf8_lossy(&k["token/".len()..]), &record));
        }
        Ok(out)
    }

    pub(crate) fn delete_token(&self, id: &str) -> Result<bool, Refusal> {
        let gone = self.tree.remove(format!("token/{id}"))?.is_some();
        self.tree.flush()?;
        Ok(gone)
    }

    /// Whether a join token's `<id>.<secret>` would enrol a board now.
    pub(crate) fn check_join_token(&self, credential: &str) -> Result<(), Refusal> {
        let (id, secret) = JoinToken::split_credential(credential).ok_or(Refusal::UnknownToken)?;
        self.usable_token(id, secret).map(drop)
    }

    fn usable_token(&self, id: &str, secret: &str) -> Result<TokenRecord, Refusal> {
        let record: TokenRecord = match self.tree.get(format!("token/{id}"))? {
            Some(v) => serde_json::from_slice(&v)?,
            None => return Err(Refusal::UnknownToken),
        };
        if !harvester_pki::same_secret(&harvester_pki::sha256_hex(secret.as_bytes()), &record.secret_sha256) {
            return Err(Refusal::UnknownToken);
        }
        if ms(SystemTime::now()) >= record.expires {
            return Err(Refusal::TokenExpired(id.to_string()));
        }
        if record.uses_left == 0 {
            return Err(Refusal::TokenUsedUp(id.to_string()));
        }
        Ok(record)
    }

    /// Enrols `node` with a join token's `<id>.<secret>`: spends one use
    /// and signs the CSR's public key, unless the name has a working
    /// certificate already.
    pub(crate) fn enrol(&self, credential: &str, node: &str, csr: &str) -> Result<Issued, EnrolError> {
        let (id, secret) = JoinToken::split_credential(credential).ok_or(Refusal::UnknownToken)?;
        let _w = lock(&self.writes);
        let key = format!("token/{id}");
        let mut record = self.usable_token(id, secret)?;
        if self.has_working_certificate(node)? {
            return Err(Refusal::Enrolled(node.to_string()).into());
        }
        // Checked before a use is spent: a bad request costs nothing.
        let issued = self.sign(node, csr)?;
        record.uses_left -= 1;
        self.tree
            .insert(&key, serde_json::to_vec(&record).map_err(Refusal::from)?)
            .map_err(Refusal::from)?;
        self.tree.flush().map_err(Refusal::from)?;
        tracing::info!(node, token = id, serial = issued.serial, "enrolled a node");
        Ok(issued)
    }

    /// A node renews its own certificate (the key may stay the same).
    pub(crate) fn renew(&self, node: &str, csr: &str) -> Result<Issued, EnrolError> {
        let _w = lock(&self.writes);
        let issued = self.sign(node, csr)?;
        tracing::debug!(node, serial = issued.serial, "renewed a node certificate");
        Ok(issued)
    }

    fn sign(&self, node: &str, csr: &str) -> Result<Issued, EnrolError> {
        let mut errors = harvester_api::validation::ValidationErrors::default();
        harvester_api::standalone::validate_name(node, "node", &mut errors);
        errors.into_result().map_err(|e| EnrolError::Request(e.to_string()))?;
        let issued = self
            .ca
            .sign_node(node, csr, self.node_cert_lifetime)
            .map_err(|e| EnrolError::Request(format!("{e:#}")))?;
        let record = CertRecord {
            node: node.to_string(),
            not_after: ms(issued.not_after),
            issued: ms(SystemTime::now()),
            revoked: false,
        };
        self.tree
            .insert(
                format!("cert/{}", issued.serial),
                serde_json::to_vec(&record).map_err(Refusal::from)?,
            )
            .map_err(Refusal::from)?;
        self.tree.flush().map_err(Refusal::from)?;
        Ok(issued)
    }

    /// A certificate for `node` that is neither revoked nor past its grace.
    fn has_working_certificate(&self, node: &str) -> Result<bool, Refusal> {
        let horizon = ms(SystemTime::now()).saturating_sub(harvester_pki::tls::RENEWAL_GRACE.as_millis() as u64);
        for item in self.tree.scan_prefix("cert/") {
            let (_, v) = item?;
            let r: CertRecord = serde_json::from_slice(&v)?;
            if r.node == node && !r.revoked && r.not_after > horizon {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Ends `node`'s access: every certificate it holds stops working and
    /// its open streams close. Returns how many certificates were revoked.
    pub(crate) fn revoke(&self, node: &str) -> Result<u32, Refusal> {
        let _w = lock(&self.writes);
        let mut count = 0;
        for item in self.tree.scan_prefix("cert/") {
            let (k, v) = item?;
            let mut r: CertRecord = serde_json::from_slice(&v)?;
            if r.node == node && !r.revoked {
                r.revoked = true;
                self.tree.insert(&k, serde_json::to_vec(&r)?)?;
                self.revoked
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(String::from_utf8_lossy(&k["cert/".len()..]).into_owned());
                count += 1;
            }
        }
        self.tree.flush()?;
        if let Some(token) = lock(&self.gone).remove(node) {
            token.cancel();
        }
        tracing::info!(node, certificates = count, "revoked a node");
        Ok(count)
    }

    /// Cancelled when `node`'s access ends (revoked or deleted).
    pub(crate) fn until_gone(&self, node: &str) -> CancellationToken {
        lock(&self.gone).entry(node.to_string()).or_default().clone()
    }
}

fn info(id: &str, r: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: id.to_string(),
        expires: r.expires,
        uses_left: r.uses_left,
        created: r.created,
        description: r.description.clone(),
    }
}

/// Enrolment refused: by policy, or because the request was malformed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnrolError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("{0}")]
    Request(String),
}
