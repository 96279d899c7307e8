//! Identities on the wire: how a board enrols and renews its certificate,
//! the join tokens an admin makes, and the client configuration a person's
//! CLI reads (the hub writes one for its local admin).

use serde::{Deserialize, Serialize};

/// `POST /api/v1alpha1/enrol` with `Authorization: Bearer <id>.<secret>`
/// of a join token, and `POST /api/v1alpha1/nodes/{name}/certificate` with
/// the node's own certificate (renewal).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRequest {
    pub node: String,
    /// PEM; the hub uses its public key and nothing else.
    pub csr: String,
}

/// The hub's answer: the node's certificate and the CA that signed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateAnswer {
    pub certificate: String,
    pub ca: String,
    /// Milliseconds since the epoch.
    pub not_after: u64,
}

/// `POST /api/v1alpha1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    /// Seconds the token stays valid.
    pub ttl_seconds: u64,
    /// How many boards may enrol with it.
    pub uses: u32,
    #[serde(default)]
    pub description: String,
    /// The labels a board enrolling with it gets at its first
    /// registration; none: the board proposes its own, once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<crate::resources::Labels>,
}

/// A join token as lists show it: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    pub expires: u64,
    pub uses_left: u32,
    pub created: u64,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<crate::resources::Labels>,
}

/// The answer to a board's registration: the labels the hub keeps for it
/// (set at its first registration; people change them after that), and
/// whether the ones it proposed were set aside.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    pub labels: crate::resources::Labels,
    #[serde(default)]
    pub proposed_ignored: bool,
}

/// The answer to `POST /api/v1alpha1/tokens`: the token, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreated {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// `POST /api/v1alpha1/nodes/{name}/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revoked {
    pub node: String,
    /// Certificates that stopped working now.
    pub certificates: u32,
}

/// What a person may do. Each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// get, list, watch, logs, events, the dashboard.
    Viewer,
    /// + apply, update, delete, uploads, plugin commands (the buzzer).
    Operator,
    /// + users, join tokens, node revocation, the audit trail.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?}: viewer, operator or admin")),
        }
    }
}

/// `POST /api/v1alpha1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserRequest {
    pub name: String,
    pub role: Role,
}

/// A user as lists show it: never a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    pub created: u64,
}

/// The answer to `POST /api/v1alpha1/users`: the token, shown once. It
/// carries the hub CA's hash as join tokens do, so `harvester login` can
/// check the hub before it sends the token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserCreated {
    pub token: String,
    #[serde(flatten)]
    pub info: UserInfo,
}

/// `GET /api/v1alpha1/whoami`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    pub user: String,
    pub role: Role,
}

/// One write, as the audit trail keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Milliseconds since the epoch.
    pub time: u64,
    pub user: String,
    /// Empty for a board enrolling with a join token.
    #[serde(default)]
    pub role: String,
    /// `POST /api/v1alpha1/apply` and the like.
    pub action: String,
    /// The HTTP status of the answer.
    pub status: u16,
    /// `ok` or `refused`, `failed`.
    pub outcome: String,
    /// The client's address.
    pub source: String,
}

/// A client configuration file: hubs to reach (contexts) and which one is
/// current, as kubectl's kubeconfig. The file is the user's secret (0600).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClientConfig {
    #[serde(default)]
    pub current_context: String,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// One hub: where, which CA to trust, and the credential.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    pub name: String,
    /// `https://host:port`.
    pub server: String,
    /// The hub CA, PEM.
    pub certificate_authority_data: String,
    /// `<user>.<secret>`.
    pub token: String,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("current_context", &self.current_context)
            .field("contexts", &self.contexts)
            .finish()
    }
}

impl ClientConfig {
    /// The context `name`, else the current one.
    pub fn context(&self, name: Option<&str>) -> Result<&Context, String> {
        let want = name.unwrap_or(&self.current_context);
        if want.is_empty() {
            return Err("no current context: harvester config use-context NAME, or harvester login".into());
        }
        self.contexts.iter().find(|c| c.name == want).ok_or_else(|| {
            let known: Vec<&str> = self.contexts.iter().map(|c| c.name.as_str()).collect();
            format!(
                "no context {want:?}; known: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
    }

    /// Adds `context`, replacing one of the same name.
    pub fn upsert(&mut self, context: Context) {
        self.contexts.retain(|c| c.name != context.name);
        self.contexts.push(context);
    }
}
