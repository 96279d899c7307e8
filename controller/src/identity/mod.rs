//! Who may touch the fleet. The hub CA signs node certificates; join
//! tokens let a board enrol once; a revoked certificate stops working at
//! once. People are users with a role and a bearer token `<user>.<secret>`
//! (stored as SHA-256); the hub makes the `admin` user on first start and
//! writes its client configuration for the local admin.
//!
//! - [`listener`]: TLS on the hub's listeners; who is at the other end.
//! - [`audit`]: every write people make, in a bounded window.
//!
//! State lives in the store's `identity` tree: `user/<name>`
//! ([`UserRecord`]), `token/<id>` ([`TokenRecord`]), `cert/<serial>`
//! ([`CertRecord`]).

pub(crate) mod audit;
pub(crate) mod listener;

use harvester_api::identity::{ClientConfig, Context, Role, TokenInfo, UserInfo};
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
    /// A person, by their bearer token.
    User {
        name: String,
        role: Role,
    },
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
struct UserRecord {
    role: Role,
    token_sha256: String,
    created: u64,
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
    #[error("unknown token: it was never issued by this hub, or it or its user was deleted")]
    UnknownToken,
    #[error("user {0:?} exists already; delete it first to give it a new token")]
    UserExists(String),
    #[error("no user {0:?}")]
    NoUser(String),
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
    /// Users by name: role and token hash, for the check every request makes.
    users: RwLock<HashMap<String, UserRecord>>,
    /// Serials revoked, for the check every request makes.
    revoked: RwLock<HashSet<String>>,
    /// Cancelled when a node's access ends: its open streams close.
    gone: Mutex<HashMap<String, CancellationToken>>,
    /// Token redemption and issuing read, then write.
    writes: Mutex<()>,
    audit: audit::Audit,
    /// Dashboard sessions by the SHA-256 of their cookie: user and expiry.
    sessions: Mutex<HashMap<String, (String, SystemTime)>>,
    node_cert_lifetime: Duration,
}

/// How long a dashboard sign-in lasts.
pub(crate) const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at once, all users together.
const MAX_SESSIONS: usize = 10_000;

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
        audit: sled::Tree,
        pki: &Path,
        admin_file: &Path,
        server: &str,
        node_cert_lifetime: Duration,
    ) -> anyhow::Result<Identities> {
        let (ca, made) = Ca::load_or_create(pki)?;
        if made {
            tracing::info!(dir = %pki.display(), "made the hub CA (sha256 {})", ca.hash());
        }
        // Part of an older layout: one admin hash, no users.
        tree.remove("admin")?;
        let mut users = HashMap::new();
        for item in tree.scan_prefix("user/") {
            let (k, v) = item?;
            users.insert(
                String::from_utf8_lossy(&k["user/".len()..]).into_owned(),
                serde_json::from_slice::<UserRecord>(&v)?,
            );
        }
        let context_name = format!("admin@{}", server.trim_start_matches("https://"));
        let existing = std::fs::read_to_string(admin_file)
            .ok()
            .and_then(|t| serde_yaml::from_str::<ClientConfig>(&t).ok())
            .and_then(|c| c.contexts.into_iter().next())
            .map(|c| c.token)
            .filter(|t| {
                t.split_once('.').is_some_and(|(name, secret)| {
                    name == "admin"
                        && users.get("admin").is_some_and(|u: &UserRecord| {
                            u.role == Role::Admin
                                && harvester_pki::same_secret(
                                    &harvester_pki::sha256_hex(secret.as_bytes()),
                                    &u.token_sha256,
                                )
                        })
                })
            });
        let token = match existing {
            Some(t) => t,
            None => {
                let secret = harvester_pki::random_hex(32);
                let record = UserRecord {
                    role: Role::Admin,
                    token_sha256: harvester_pki::sha256_hex(secret.as_bytes()),
                    created: ms(SystemTime::now()),
                };
                tree.insert("user/admin", serde_json::to_vec(&record)?)?;
                tree.flush()?;
                users.insert("admin".to_string(), record);
                tracing::info!(file = %admin_file.display(), "made the admin user");
                format!("admin.{secret}")
            }
        };
        let admin = Context {
            name: context_name,
            server: server.to_string(),
            certificate_authority_data: ca.cert_pem().to_string(),
            token,
        };
        // Rewritten at every start: the address or the CA may have changed.
        let config = ClientConfig {
            current_context: admin.name.clone(),
            contexts: vec![admin.clone()],
        };
        let text = format!(
            "# The admin of this hub: HARVESTER_CONFIG={} harvester get nodes\n{}",
            admin_file.display(),
            serde_yaml::to_string(&config)?
        );
        harvester_pki::write_private(admin_file, text.as_bytes())?;
        if made {
            merge_local_admin(admin);
        }
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
            users: RwLock::new(users),
            revoked: RwLock::new(revoked),
            gone: Mutex::new(HashMap::new()),
            writes: Mutex::new(()),
            audit: audit::Audit::new(audit),
            sessions: Mutex::new(HashMap::new()),
            node_cert_lifetime,
        })
    }

    pub(crate) fn audit(&self) -> &audit::Audit {
        &self.audit
    }

    pub(crate) fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Who sent a request: its bearer token if any, else the certificate
    /// its connection presented (already checked against the CA by TLS).
    pub(crate) fn identify(&self, bearer: Option<&str>, cert: Option<&CertInfo>) -> Result<Identity, Refusal> {
        if let Some(token) = bearer {
            let (name, secret) = token.split_once('.').ok_or(Refusal::UnknownToken)?;
            let users = self.users.read().unwrap_or_else(|e| e.into_inner());
            let user = users.get(name).ok_or(Refusal::UnknownToken)?;
            return if harvester_pki::same_secret(&harvester_pki::sha256_hex(secret.as_bytes()), &user.token_sha256) {
                Ok(Identity::User {
                    name: name.to_string(),
                    role: user.role,
                })
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
        self.end_access(&Identity::Node {
            name: node.to_string(),
            serial: String::new(),
            expired: false,
        });
        tracing::info!(node, certificates = count, "revoked a node");
        Ok(count)
    }

    /// Signs a person in to the dashboard with their token: a new session
    /// id (the cookie's value) that lasts `SESSION_LIFETIME`.
    pub(crate) fn sign_in(&self, token: &str) -> Result<(String, Identity), Refusal> {
        let who = self.identify(Some(token), None)?;
        let Identity::User { name, .. } = &who else {
            return Err(Refusal::UnknownToken);
        };
        let id = harvester_pki::random_hex(32);
        let now = SystemTime::now();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, (_, expires)| *expires > now);
        if sessions.len() >= MAX_SESSIONS {
            // The oldest go first: a flood of sign-ins cannot grow the map.
            let oldest = sessions.iter().min_by_key(|(_, (_, e))| *e).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                sessions.remove(&k);
            }
        }
        sessions.insert(
            harvester_pki::sha256_hex(id.as_bytes()),
            (name.clone(), now + SESSION_LIFETIME),
        );
        Ok((id, who))
    }

    /// The person a session cookie belongs to, with their current role;
    /// none once it expired, was ended, or its user was deleted.
    pub(crate) fn session(&self, id: &str) -> Option<Identity> {
        let key = harvester_pki::sha256_hex(id.as_bytes());
        let (user, expires) = lock(&self.sessions).get(&key).cloned()?;
        if SystemTime::now() > expires {
            lock(&self.sessions).remove(&key);
            return None;
        }
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        users.get(&user).map(|u| Identity::User {
            name: user.clone(),
            role: u.role,
        })
    }

    pub(crate) fn sign_out(&self, id: &str) {
        lock(&self.sessions).remove(&harvester_pki::sha256_hex(id.as_bytes()));
    }

    /// Cancelled when the access of `who` ends: a node revoked or
    /// deleted, a user deleted. None for who has no end (anonymous).
    pub(crate) fn until_gone(&self, who: &Identity) -> CancellationToken {
        match principal(who) {
            Some(key) => lock(&self.gone).entry(key).or_default().clone(),
            None => CancellationToken::new(),
        }
    }

    fn end_access(&self, who: &Identity) {
        if let Some(key) = principal(who)
            && let Some(token) = lock(&self.gone).remove(&key)
        {
            token.cancel();
        }
    }

    /// A new user with `role`; its token (shown once) carries the CA's hash.
    pub(crate) fn create_user(&self, name: &str, role: Role) -> Result<(String, UserInfo), EnrolError> {
        let mut errors = harvester_api::validation::ValidationErrors::default();
        harvester_api::standalone::validate_name(name, "name", &mut errors);
        errors.into_result().map_err(|e| EnrolError::Request(e.to_string()))?;
        let _w = lock(&self.writes);
        let key = format!("user/{name}");
        if self.tree.get(&key).map_err(Refusal::from)?.is_some() {
            return Err(Refusal::UserExists(name.to_string()).into());
        }
        let secret = harvester_pki::random_hex(32);
        let record = UserRecord {
            role,
            token_sha256: harvester_pki::sha256_hex(secret.as_bytes()),
            created: ms(SystemTime::now()),
        };
        self.tree
            .insert(&key, serde_json::to_vec(&record).map_err(Refusal::from)?)
            .map_err(Refusal::from)?;
        self.tree.flush().map_err(Refusal::from)?;
        let info = UserInfo {
            name: name.to_string(),
            role,
            created: record.created,
        };
        self.users
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), record);
        let token = JoinToken {
            ca_hash: self.ca.hash(),
            id: name.to_string(),
            secret,
        };
        Ok((token.to_string(), info))
    }

    pub(crate) fn users(&self) -> Vec<UserInfo> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<UserInfo> = users
            .iter()
            .map(|(name, r)| UserInfo {
                name: name.clone(),
                role: r.role,
                created: r.created,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Deletes a user: its token stops working and its open streams end.
    pub(crate) fn delete_user(&self, name: &str) -> Result<(), Refusal> {
        let _w = lock(&self.writes);
        let Some(record) = self.users.write().unwrap_or_else(|e| e.into_inner()).remove(name) else {
            return Err(Refusal::NoUser(name.to_string()));
        };
        self.tree.remove(format!("user/{name}"))?;
        self.tree.flush()?;
        self.end_access(&Identity::User {
            name: name.to_string(),
            role: record.role,
        });
        tracing::info!(user = name, "deleted a user");
        Ok(())
    }
}

/// The key of `who` among those whose access can end.
fn principal(who: &Identity) -> Option<String> {
    match who {
        Identity::User { name, .. } => Some(format!("user/{name}")),
        Identity::Node { name, .. } => Some(format!("node/{name}")),
        Identity::Anonymous => None,
    }
}

/// Adds the hub's admin context to the client configuration of the user
/// running the hub (`$XDG_CONFIG_HOME/harvester/config.yaml`), on the hub's
/// first start: `harvester` then works there with no setup. An existing
/// current context stays current.
fn merge_local_admin(admin: Context) {
    let Some(base) = std::env::var_os("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config")))
    else {
        return;
    };
    let file = base.join("harvester/config.yaml");
    let mut config = match std::fs::read_to_string(&file) {
        Ok(text) => match serde_yaml::from_str::<ClientConfig>(&text) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(file = %file.display(), "not adding the admin context to an unreadable client configuration: {e}");
                return;
            }
        },
        Err(_) => ClientConfig::default(),
    };
    let name = admin.name.clone();
    config.upsert(admin);
    if config.current_context.is_empty() {
        config.current_context = name.clone();
    }
    let written = serde_yaml::to_string(&config)
        .map_err(anyhow::Error::from)
        .and_then(|text| harvester_pki::write_private(&file, text.as_bytes()));
    match written {
        Ok(()) => tracing::info!(file = %file.display(), context = name, "added the admin context for the local user"),
        Err(e) => tracing::warn!(file = %file.display(), "could not add the admin context: {e:#}"),
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
