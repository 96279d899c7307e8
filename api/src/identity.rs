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

/// What the CLI needs to reach a hub: where, which CA to trust, and the
/// credential. The file is the user's secret (mode 0600).
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClientConfig {
    /// `https://host:port`.
    pub server: String,
    /// The hub CA, PEM.
    pub certificate_authority_data: String,
    /// A bearer token.
    pub token: String,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}
