//! Who may touch the fleet. The hub CA signs node certificates; join
//! tokens let a board enrol once; a revoked certificate stops working at
//! once. People are users with a role and a bearer token `<user>.<secret>`
//! (stored as SHA-256); the hub makes the `admin` user on first start and
//! writes its client configuration for the local admin.
//!
//! - [`listener`]: TLS on the hub's listeners; who is at the other end.
//! - [`audit`]: what identified callers did, kept by age and size; refusals
//!   of callers without an identity, counted.
//! - [`sessions`]: dashboard sign-ins, each tied to one user record.
//! - [`certs`]: node certificates and revocation epochs.
//!
//! State lives in the store's `identity` tree: `user/<name>`
//! ([`UserRecord`]), `token/<id>` ([`TokenRecord`]), `cert/<serial>`
//! ([`CertRecord`]), `access/<node>` ([`NodeAccess`]).
//!
//! Revocation is a property of the node, not of the certificates that
//! exist when it is revoked: each node has a revocation epoch, every
//! certificate records the epoch it was issued in, and only certificates
//! of the node's current epoch work. Revoking bumps the epoch, so a
//! certificate renewed at the same moment is dead too; enrolling again with
//! a new join token issues one in the new epoch.

pub(crate) mod audit;
mod certs;
pub(crate) mod listener;
pub(crate) mod sessions;

use certs::{CertEntry, CertRecord, Certs, NodeAccess};
use harvester_api::identity::{ClientConfig, Context, Role, TokenInfo, UserInfo};
use harvester_api::resources::Labels;
use harvester_pki::{Ca, CertInfo, Issued, JoinToken};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    Anonymous,
    /// A person, by their bearer token or session: `uid` names the user
    /// record (a user made again under the same name is another one).
    User {
        name: String,
        role: Role,
        uid: String,
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
    /// The labels a board enrolling with it gets; none: its own, once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    labels: Option<Labels>,
}

/// What a board's enrolment decided about its labels (`enrolled/<node>`):
/// those of its join token, or none (the board proposes its own, once).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Enrolment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    labels: Option<Labels>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserRecord {
    role: Role,
    token_sha256: String,
    created: u64,
    /// This record's own id: a user deleted and made again under the same
    /// name is another record, and nothing of the first (a dashboard
    /// session) carries over to it.
    #[serde(default)]
    uid: String,
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
    #[error(
        "the certificate of node {0:?} is not one this hub issued or keeps (newer ones replaced it); enrol the board again with a new join token"
    )]
    UnknownCertificate(String),
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
    /// Certificates and epochs, for the check every request makes; written
    /// only under `writes`, after the store.
    certs: RwLock<Certs>,
    /// Cancelled when a node's access ends: its open streams close.
    gone: Mutex<HashMap<String, CancellationToken>>,
    /// Every identity write reads, then writes, under this lock: token
    /// redemption, issuing, revoking, users.
    writes: Mutex<()>,
    audit: audit::Audit,
    sessions: sessions::Sessions,
    node_cert_lifetime: Duration,
    /// Between a renewal's request check and its lock (tests make the
    /// race of a revocation with a renewal happen there every time).
    #[cfg(test)]
    before_renewal_lock: Mutex<Option<Box<dyn Fn() + Send>>>,
}

pub(crate) use sessions::SESSION_LIFETIME;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms(t: SystemTime) -> u64 {
    harvester_pki::unix_ms(t)
}

impl Identities {
    /// Opens the hub's identities: the CA in `pki` (made on first start)
    /// and the admin credential, whose client configuration is written to
    /// `admin_file` for `server` (the token is made again if the file is
    /// gone). `local_admin`: on the CA's first start, also add the admin
    /// context to the client configuration of the user running the hub.
    pub(crate) fn open(
        tree: sled::Tree,
        audit: audit::Audit,
        pki: &Path,
        admin_file: &Path,
        server: &str,
        node_cert_lifetime: Duration,
        local_admin: bool,
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
            let mut record = serde_json::from_slice::<UserRecord>(&v)?;
            if record.uid.is_empty() {
                // A record from before users had ids: one for this process
                // (sessions do not outlive it).
                record.uid = harvester_pki::random_hex(16);
            }
            users.insert(String::from_utf8_lossy(&k["user/".len()..]).into_owned(), record);
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
                    uid: harvester_pki::random_hex(16),
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
        if made && local_admin {
            merge_local_admin(admin);
        }
        let mut certs = Certs::default();
        for item in tree.scan_prefix("access/") {
            let (k, v) = item?;
            let access: NodeAccess = serde_json::from_slice(&v)?;
            certs.epochs.insert(
                String::from_utf8_lossy(&k["access/".len()..]).into_owned(),
                access.epoch,
            );
        }
        for item in tree.scan_prefix("cert/") {
            let (k, v) = item?;
            let record: CertRecord = serde_json::from_slice(&v)?;
            certs.by_serial.insert(
                String::from_utf8_lossy(&k["cert/".len()..]).into_owned(),
                CertEntry::of(&record),
            );
        }
        let ids = Identities {
            ca,
            tree,
            users: RwLock::new(users),
            certs: RwLock::new(certs),
            gone: Mutex::new(HashMap::new()),
            writes: Mutex::new(()),
            audit,
            sessions: sessions::Sessions::default(),
            node_cert_lifetime,
            #[cfg(test)]
            before_renewal_lock: Mutex::new(None),
        };
        let collected = ids.collect_certificates()?;
        if collected > 0 {
            tracing::info!(records = collected, "forgot certificates past their renewal grace");
        }
        Ok(ids)
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
            return self.identify_user(&self.users.read().unwrap_or_else(|e| e.into_inner()), token);
        }
        let Some(cert) = cert else {
            return Ok(Identity::Anonymous);
        };
        if let Some(refusal) = self
            .certs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .refusal(&cert.name, &cert.serial)
        {
            return Err(refusal);
        }
        Ok(Identity::Node {
            name: cert.name.clone(),
            serial: cert.serial.clone(),
            expired: SystemTime::now() > cert.not_after,
        })
    }

    /// The user a bearer token `<user>.<secret>` belongs to, in `users`.
    fn identify_user(&self, users: &HashMap<String, UserRecord>, token: &str) -> Result<Identity, Refusal> {
        let (name, secret) = token.split_once('.').ok_or(Refusal::UnknownToken)?;
        let user = users.get(name).ok_or(Refusal::UnknownToken)?;
        if harvester_pki::same_secret(&harvester_pki::sha256_hex(secret.as_bytes()), &user.token_sha256) {
            Ok(Identity::User {
                name: name.to_string(),
                role: user.role,
                uid: user.uid.clone(),
            })
        } else {
            Err(Refusal::UnknownToken)
        }
    }

    /// A new join token; its secret is in the returned value only.
    pub(crate) fn create_token(
        &self,
        ttl: Duration,
        uses: u32,
        description: &str,
        labels: Option<Labels>,
    ) -> Result<(JoinToken, TokenInfo), Refusal> {
        let token = JoinToken::new(&self.ca.hash());
        let now = SystemTime::now();
        let record = TokenRecord {
            secret_sha256: token.secret_hash(),
            expires: ms(now + ttl),
            uses_left: uses,
            created: ms(now),
            description: description.to_string(),
            labels,
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
    /// and signs the CSR's public key in the node's current epoch, unless
    /// the name has a working certificate already. After a revocation this
    /// is how the board comes back: the certificates from before stay dead.
    pub(crate) fn enrol(&self, credential: &str, node: &str, csr: &str) -> Result<Issued, EnrolError> {
        let (id, secret) = JoinToken::split_credential(credential).ok_or(Refusal::UnknownToken)?;
        let _w = lock(&self.writes);
        let key = format!("token/{id}");
        let mut record = self.usable_token(id, secret)?;
        if self.has_working_certificate(node) {
            return Err(Refusal::Enrolled(node.to_string()).into());
        }
        // Checked before a use is spent: a bad request costs nothing.
        let issued = self.sign(node, csr)?;
        record.uses_left -= 1;
        let enrolment = Enrolment {
            labels: record.labels.clone(),
        };
        let mut batch = sled::Batch::default();
        batch.insert(key.as_bytes(), serde_json::to_vec(&record).map_err(Refusal::from)?);
        batch.insert(
            format!("enrolled/{node}").as_bytes(),
            serde_json::to_vec(&enrolment).map_err(Refusal::from)?,
        );
        self.tree.apply_batch(batch).map_err(Refusal::from)?;
        self.tree.flush().map_err(Refusal::from)?;
        tracing::info!(node, token = id, serial = issued.serial, "enrolled a node");
        Ok(issued)
    }

    /// The labels the join token `node` enrolled with gave it: Some(None)
    /// when the token had none (the board proposes its own, once); None
    /// when the hub has no record of its enrolment (a board enrolled before
    /// tokens carried labels).
    pub(crate) fn labels_at_enrolment(&self, node: &str) -> Option<Option<Labels>> {
        let v = self.tree.get(format!("enrolled/{node}")).ok()??;
        serde_json::from_slice::<Enrolment>(&v).ok().map(|e| e.labels)
    }

    /// A node renews its own certificate (the key may stay the same).
    /// `serial`: the certificate it asks with (None for an admin asking
    /// for it). Checked again under the lock that signs: a revocation that
    /// came after the request's check and before this lock wins.
    pub(crate) fn renew(&self, node: &str, serial: Option<&str>, csr: &str) -> Result<Issued, EnrolError> {
        #[cfg(test)]
        if let Some(pause) = lock(&self.before_renewal_lock).as_ref() {
            pause();
        }
        let _w = lock(&self.writes);
        {
            let certs = self.certs.read().unwrap_or_else(|e| e.into_inner());
            match serial {
                Some(serial) => {
                    if let Some(refusal) = certs.refusal(node, serial) {
                        return Err(refusal.into());
                    }
                }
                None if !self.working_in(&certs, node) => return Err(Refusal::Revoked(node.to_string()).into()),
                None => {}
            }
        }
        let issued = self.sign(node, csr)?;
        tracing::debug!(node, serial = issued.serial, "renewed a node certificate");
        Ok(issued)
    }

    /// Signs a certificate for `node` in its current epoch and records it,
    /// forgetting its oldest beyond [`CERTS_PER_NODE`] and its expired
    /// ones. Called under `writes`.
    fn sign(&self, node: &str, csr: &str) -> Result<Issued, EnrolError> {
        let mut errors = harvester_api::validation::ValidationErrors::default();
        harvester_api::standalone::validate_name(node, "node", &mut errors);
        errors.into_result().map_err(|e| EnrolError::Request(e.to_string()))?;
        let issued = self
            .ca
            .sign_node(node, csr, self.node_cert_lifetime)
            .map_err(|e| EnrolError::Request(format!("{e:#}")))?;
        let horizon = self.collect_horizon();
        let (record, forget) = {
            let certs = self.certs.read().unwrap_or_else(|e| e.into_inner());
            let record = CertRecord {
                node: node.to_string(),
                not_after: ms(issued.not_after),
                issued: ms(SystemTime::now()),
                revoked: false,
                epoch: certs.epoch(node),
            };
            (record, certs.to_forget(node, horizon))
        };
        let mut batch = sled::Batch::default();
        batch.insert(
            format!("cert/{}", issued.serial).as_bytes(),
            serde_json::to_vec(&record).map_err(Refusal::from)?,
        );
        for serial in &forget {
            batch.remove(format!("cert/{serial}").as_bytes());
        }
        self.tree.apply_batch(batch).map_err(Refusal::from)?;
        self.tree.flush().map_err(Refusal::from)?;
        let mut certs = self.certs.write().unwrap_or_else(|e| e.into_inner());
        for serial in &forget {
            certs.by_serial.remove(serial);
        }
        certs.by_serial.insert(issued.serial.clone(), CertEntry::of(&record));
        Ok(issued)
    }

    /// Certificates past their renewal grace work for nothing: their
    /// records go (and with them, the certificates, should one reappear).
    fn collect_horizon(&self) -> u64 {
        ms(SystemTime::now()).saturating_sub(harvester_pki::tls::RENEWAL_GRACE.as_millis() as u64)
    }

    /// Forgets every certificate past its renewal grace; how many.
    pub(crate) fn collect_certificates(&self) -> Result<usize, Refusal> {
        let _w = lock(&self.writes);
        let horizon = self.collect_horizon();
        let old: Vec<String> = self
            .certs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_serial
            .iter()
            .filter(|(_, c)| c.not_after < horizon)
            .map(|(s, _)| s.clone())
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        for serial in &old {
            batch.remove(format!("cert/{serial}").as_bytes());
        }
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        let mut certs = self.certs.write().unwrap_or_else(|e| e.into_inner());
        for serial in &old {
            certs.by_serial.remove(serial);
        }
        Ok(old.len())
    }

    /// A certificate for `node` of its current epoch that is neither
    /// revoked nor past its grace.
    fn has_working_certificate(&self, node: &str) -> bool {
        self.working_in(&self.certs.read().unwrap_or_else(|e| e.into_inner()), node)
    }

    fn working_in(&self, certs: &Certs, node: &str) -> bool {
        certs.working(node, self.collect_horizon())
    }

    /// How many certificate records the hub keeps for `node`.
    #[cfg(test)]
    fn certificates_of(&self, node: &str) -> usize {
        self.certs.read().unwrap_or_else(|e| e.into_inner()).of(node).len()
    }

    /// Ends `node`'s access: its revocation epoch moves on, so every
    /// certificate it holds or is being issued stops working, and its open
    /// streams close. Returns how many certificates were revoked.
    pub(crate) fn revoke(&self, node: &str) -> Result<u32, Refusal> {
        let _w = lock(&self.writes);
        let epoch = self.certs.read().unwrap_or_else(|e| e.into_inner()).epoch(node) + 1;
        let mut batch = sled::Batch::default();
        batch.insert(
            format!("access/{node}").as_bytes(),
            serde_json::to_vec(&NodeAccess { epoch })?,
        );
        // The records say it too, for whoever reads the store.
        let mut marked = Vec::new();
        for item in self.tree.scan_prefix("cert/") {
            let (k, v) = item?;
            let mut r: CertRecord = serde_json::from_slice(&v)?;
            if r.node == node && !r.revoked {
                r.revoked = true;
                batch.insert(k.clone(), serde_json::to_vec(&r)?);
                marked.push(String::from_utf8_lossy(&k["cert/".len()..]).into_owned());
            }
        }
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        {
            let mut certs = self.certs.write().unwrap_or_else(|e| e.into_inner());
            certs.epochs.insert(node.to_string(), epoch);
            for serial in &marked {
                if let Some(c) = certs.by_serial.get_mut(serial) {
                    c.revoked = true;
                }
            }
        }
        self.end_access(&Identity::Node {
            name: node.to_string(),
            serial: String::new(),
            expired: false,
        });
        let count = marked.len() as u32;
        tracing::info!(node, certificates = count, epoch, "revoked a node");
        Ok(count)
    }

    /// Signs a person in to the dashboard with their token: a new session
    /// id (the cookie's value) that lasts `SESSION_LIFETIME`.
    pub(crate) fn sign_in(&self, token: &str) -> Result<(String, Identity), Refusal> {
        let (name, _) = token.split_once('.').ok_or(Refusal::UnknownToken)?;
        // The record the token was checked against, read under one lock:
        // the session belongs to that record, not to whoever has the name later.
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let who = self.identify_user(&users, token)?;
        let uid = users.get(name).map(|u| u.uid.clone()).ok_or(Refusal::UnknownToken)?;
        drop(users);
        let id = self.sessions.start(name, &uid);
        Ok((id, who))
    }

    /// The person a session cookie belongs to, with their current role;
    /// none once it expired, was ended, or its user record was deleted
    /// (also when a user of the same name was made since).
    pub(crate) fn session(&self, id: &str) -> Option<Identity> {
        let (user, uid) = self.sessions.get(id)?;
        let role = {
            let users = self.users.read().unwrap_or_else(|e| e.into_inner());
            users.get(&user).filter(|u| u.uid == uid).map(|u| u.role)
        };
        match role {
            Some(role) => Some(Identity::User { name: user, role, uid }),
            None => {
                self.sessions.end(id);
                None
            }
        }
    }

    /// Signs a session out: its cookie stops working, its streams close.
    pub(crate) fn sign_out(&self, id: &str) {
        self.sessions.end(id);
    }

    /// Cancelled when the session `id` ends (signed out, its user deleted,
    /// expired): for the dashboard's streams.
    pub(crate) fn session_ended(&self, id: &str) -> CancellationToken {
        self.sessions.ended(id)
    }

    /// Cancelled when the access of `who` ends: a node revoked or
    /// deleted, a user deleted. None for who has no end (anonymous).
    pub(crate) fn until_gone(&self, who: &Identity) -> CancellationToken {
        let Some(key) = principal(who) else {
            return CancellationToken::new();
        };
        let token = lock(&self.gone).entry(key).or_default().clone();
        // An end between the request's check and the line above found no
        // token of this stream to cancel: check again now that it is in
        // place (an end from now on cancels it).
        if !self.still_works(who) {
            let ended = CancellationToken::new();
            ended.cancel();
            return ended;
        }
        token
    }

    /// Whether the credential `who` was identified by works still.
    fn still_works(&self, who: &Identity) -> bool {
        match who {
            Identity::Anonymous => true,
            Identity::User { name, uid, .. } => self
                .users
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .is_some_and(|u| u.uid == *uid),
            Identity::Node { name, serial, .. } => self
                .certs
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .refusal(name, serial)
                .is_none(),
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
            uid: harvester_pki::random_hex(16),
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
        let sessions = self.sessions.end_user(name);
        self.end_access(&Identity::User {
            name: name.to_string(),
            role: record.role,
            uid: record.uid,
        });
        tracing::info!(user = name, sessions, "deleted a user");
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
        labels: r.labels.clone(),
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

#[cfg(test)]
mod tests {
    use super::certs::CERTS_PER_NODE;
    use super::*;
    use harvester_pki::{CertInfo, NodeKey};
    use std::sync::Arc;

    struct Hub {
        ids: Arc<Identities>,
        _db: sled::Db,
        _dir: tempfile::TempDir,
    }

    fn hub() -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path().join("store")).open().unwrap();
        let ids = open(&db, dir.path());
        Hub {
            ids: Arc::new(ids),
            _db: db,
            _dir: dir,
        }
    }

    fn open(db: &sled::Db, dir: &Path) -> Identities {
        Identities::open(
            db.open_tree("identity").unwrap(),
            audit::Audit::new(db.open_tree("audit").unwrap(), Default::default()),
            &dir.join("pki"),
            &dir.join("admin.yaml"),
            "https://127.0.0.1:1",
            Duration::from_secs(3600),
            false,
        )
        .unwrap()
    }

    fn token(ids: &Identities) -> String {
        ids.create_token(Duration::from_secs(60), 1, "test", None)
            .unwrap()
            .0
            .credential()
    }

    fn csr(node: &str) -> String {
        NodeKey::generate().unwrap().csr(node).unwrap()
    }

    fn enrol(ids: &Identities, node: &str) -> CertInfo {
        let issued = ids.enrol(&token(ids), node, &csr(node)).unwrap();
        CertInfo::of_pem(&issued.pem).unwrap()
    }

    fn works(ids: &Identities, cert: &CertInfo) -> bool {
        ids.identify(None, Some(cert)).is_ok()
    }

    /// A revocation that lands after a renewal's request check and before
    /// its signing lock (made to happen there every time) refuses it.
    #[test]
    fn a_renewal_overtaken_by_a_revocation_gets_no_certificate() {
        let hub = hub();
        let first = enrol(&hub.ids, "pi4");
        // The request check the HTTP layer makes: it passes.
        assert!(works(&hub.ids, &first));
        let ids = Arc::downgrade(&hub.ids);
        *lock(&hub.ids.before_renewal_lock) = Some(Box::new(move || {
            let ids = ids.upgrade().unwrap();
            assert_eq!(ids.revoke("pi4").unwrap(), 1);
        }));
        let renewed = hub.ids.renew("pi4", Some(&first.serial), &csr("pi4"));
        assert!(
            matches!(renewed, Err(EnrolError::Refused(Refusal::Revoked(ref n))) if n == "pi4"),
            "{renewed:?}"
        );
        assert!(!works(&hub.ids, &first));
        // An admin renewing for it is refused too: nothing of the node works.
        *lock(&hub.ids.before_renewal_lock) = None;
        assert!(hub.ids.renew("pi4", None, &csr("pi4")).is_err());
    }

    /// A stream opened by a request checked before its credential ended,
    /// but set up after: it ends at once, not at the next end.
    #[test]
    fn a_stream_set_up_after_its_credential_ended_ends_at_once() {
        let hub = hub();
        let cert = enrol(&hub.ids, "pi4");
        let board = hub.ids.identify(None, Some(&cert)).unwrap();
        hub.ids.revoke("pi4").unwrap();
        assert!(hub.ids.until_gone(&board).is_cancelled());
        let again = enrol(&hub.ids, "pi4");
        let back = hub.ids.identify(None, Some(&again)).unwrap();
        assert!(
            !hub.ids.until_gone(&back).is_cancelled(),
            "the board enrolled again streams"
        );

        let (token, _) = hub.ids.create_user("alice", Role::Viewer).unwrap();
        let credential = token.rsplit_once("::").unwrap().1.to_string();
        let alice = hub.ids.identify(Some(&credential), None).unwrap();
        hub.ids.delete_user("alice").unwrap();
        assert!(hub.ids.until_gone(&alice).is_cancelled());
        hub.ids.create_user("alice", Role::Admin).unwrap();
        assert!(
            hub.ids.until_gone(&alice).is_cancelled(),
            "the first alice's stream is not the second's"
        );
    }

    /// Sixty renewals in flight around a revocation: none of what they
    /// got works once the revocation answered.
    #[test]
    fn no_certificate_issued_around_a_revocation_works_after_it() {
        let hub = hub();
        let first = enrol(&hub.ids, "pi4");
        let barrier = Arc::new(std::sync::Barrier::new(61));
        let renewals: Vec<_> = (0..60)
            .map(|_| {
                let (ids, barrier, serial) = (hub.ids.clone(), barrier.clone(), first.serial.clone());
                let csr = csr("pi4");
                std::thread::spawn(move || {
                    barrier.wait();
                    ids.renew("pi4", Some(&serial), &csr).ok()
                })
            })
            .collect();
        barrier.wait();
        hub.ids.revoke("pi4").unwrap();
        let issued: Vec<_> = renewals.into_iter().filter_map(|t| t.join().unwrap()).collect();
        for i in &issued {
            let cert = CertInfo::of_pem(&i.pem).unwrap();
            assert!(
                !works(&hub.ids, &cert),
                "certificate {} works after the revocation",
                cert.serial
            );
        }
        assert!(!works(&hub.ids, &first));
    }

    /// Enrolling again with a new join token after a revocation works; the
    /// certificates from before it stay dead, across a hub restart too.
    #[test]
    fn a_revoked_node_enrols_again_and_its_old_certificates_stay_dead() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path().join("store")).open().unwrap();
        let ids = open(&db, dir.path());
        let old = enrol(&ids, "pi4");
        let refused = ids.enrol(&token(&ids), "pi4", &csr("pi4"));
        assert!(
            matches!(refused, Err(EnrolError::Refused(Refusal::Enrolled(_)))),
            "{refused:?}"
        );
        ids.revoke("pi4").unwrap();
        let new = enrol(&ids, "pi4");
        assert!(works(&ids, &new));
        assert!(!works(&ids, &old));
        let renewed = CertInfo::of_pem(&ids.renew("pi4", Some(&new.serial), &csr("pi4")).unwrap().pem).unwrap();
        assert!(works(&ids, &renewed));
        drop(ids);
        let ids = open(&db, dir.path());
        assert!(works(&ids, &new) && works(&ids, &renewed));
        assert!(!works(&ids, &old));
        // A second revocation ends the re-enrolled certificates as well.
        ids.revoke("pi4").unwrap();
        assert!(!works(&ids, &new) && !works(&ids, &renewed));
    }

    /// A node renewing in a loop keeps only its newest certificates; the
    /// ones it replaced stop working; expired ones are forgotten.
    #[test]
    fn certificate_records_are_bounded_per_node_and_expired_ones_collected() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path().join("store")).open().unwrap();
        let ids = open(&db, dir.path());
        let first = enrol(&ids, "pi4");
        let other = enrol(&ids, "pi5");
        let mut newest = first.clone();
        for _ in 0..40 {
            let issued = ids.renew("pi4", Some(&newest.serial), &csr("pi4")).unwrap();
            newest = CertInfo::of_pem(&issued.pem).unwrap();
        }
        assert_eq!(ids.certificates_of("pi4"), CERTS_PER_NODE);
        assert_eq!(ids.tree.scan_prefix("cert/").count(), CERTS_PER_NODE + 1);
        assert!(works(&ids, &newest));
        assert!(matches!(
            ids.identify(None, Some(&first)),
            Err(Refusal::UnknownCertificate(_))
        ));
        assert!(works(&ids, &other), "another node's certificates are its own");

        // A record long past its grace, as an old hub may have left.
        let dead = CertRecord {
            node: "gone".into(),
            not_after: 1,
            issued: 0,
            revoked: false,
            epoch: 0,
        };
        ids.tree
            .insert("cert/0dead", serde_json::to_vec(&dead).unwrap())
            .unwrap();
        drop(ids);
        let ids = open(&db, dir.path());
        assert!(ids.tree.get("cert/0dead").unwrap().is_none(), "collected at start");
        assert_eq!(ids.collect_certificates().unwrap(), 0);
        assert!(works(&ids, &newest));
    }

    /// A dashboard session belongs to the user record it signed in as:
    /// deleting the user ends it for good, even when a user of the same
    /// name is made again; signing out ends its streams.
    #[test]
    fn a_session_dies_with_its_user_and_ends_its_streams_on_sign_out() {
        let hub = hub();
        let (token, _) = hub.ids.create_user("alice", Role::Viewer).unwrap();
        let credential = token.rsplit_once("::").unwrap().1.to_string();
        let (id, _) = hub.ids.sign_in(&credential).unwrap();
        assert!(
            matches!(hub.ids.session(&id), Some(Identity::User { ref name, role: Role::Viewer, .. }) if name == "alice")
        );
        let streams = hub.ids.session_ended(&id);
        assert!(!streams.is_cancelled());

        hub.ids.delete_user("alice").unwrap();
        assert!(streams.is_cancelled(), "the deleted user's streams end");
        hub.ids.create_user("alice", Role::Admin).unwrap();
        assert_eq!(
            hub.ids.session(&id),
            None,
            "the new alice does not inherit the old one's session"
        );

        let (token, _) = hub.ids.create_user("bob", Role::Operator).unwrap();
        let (id, _) = hub.ids.sign_in(token.rsplit_once("::").unwrap().1).unwrap();
        let streams = hub.ids.session_ended(&id);
        hub.ids.sign_out(&id);
        assert!(streams.is_cancelled());
        assert_eq!(hub.ids.session(&id), None);
        assert!(hub.ids.session_ended(&id).is_cancelled());
        assert_eq!(hub.ids.sessions.len(), 0);
    }
}
