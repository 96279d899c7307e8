//! Registry credentials from the usual docker config file
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), which is
//! what `docker login`, `oras login` and `skopeo login --authfile` write.

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// Credentials per registry host, loaded once.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_host: BTreeMap<String, RegistryAuth>,
}

impl Credentials {
    /// The docker config file's location, if the environment names one.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }

    /// Reads the docker config at the default path; a missing file means
    /// anonymous access everywhere.
    pub fn from_environment() -> anyhow::Result<Credentials> {
        match Credentials::default_path() {
            Some(p) if p.exists() => Credentials::from_file(&p),
            _ => Ok(Credentials::default()),
        }
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Credentials> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading registry credentials {}: {e}", path.display()))?;
        Credentials::parse(&text).map_err(|e| anyhow::anyhow!("registry credentials {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Credentials> {
        let config: DockerConfig = serde_json::from_str(text)?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in config.auths {
            let host = normalize_host(&key);
            let auth = if let Some(token) = entry.registrytoken.filter(|t| !t.is_empty()) {
                RegistryAuth::Bearer(token)
            } else if let Some(encoded) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|e| anyhow::anyhow!("auths.{key:?}.auth: not base64: {e}"))?;
                let text = String::from_utf8(decoded)
                    .map_err(|_| anyhow::anyhow!("auths.{key:?}.auth: not UTF-8 user:password"))?;
                let (user, pass) = text
                    .split_once(':')
                    .ok_or_else(|| anyhow::anyhow!("auths.{key:?}.auth: expected base64 of user:password"))?;
                RegistryAuth::Basic(user.to_string(), pass.to_string())
            } else if let (Some(u), Some(p)) = (entry.username, entry.password) {
                RegistryAuth::Basic(u, p)
            } else {
                continue;
            };
            by_host.insert(host, auth);
        }
        Ok(Credentials { by_host })
    }

    /// What to present to `registry` (`host[:port]`).
    pub fn for_registry(&self, registry: &str) -> RegistryAuth {
        let host = normalize_host(registry);
        self.by_host.get(&host).cloned().unwrap_or(RegistryAuth::Anonymous)
    }
}

/// `https://index.docker.io/v1/` and `docker.io` name the same registry;
/// keys may carry a scheme and a path.
fn normalize_host(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match k.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_basic_and_token_entries() {
        let creds = Credentials::parse(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
                "registry.example:5000": {"registrytoken": "tok"},
                "ghcr.io": {"username": "u", "password": "p"},
                "empty.example": {}
            }, "credsStore": "desktop"}"#,
        )
        .unwrap();
        assert_eq!(
            creds.for_registry("docker.io"),
            RegistryAuth::Basic("user".into(), "pass".into())
        );
        assert_eq!(
            creds.for_registry("registry.example:5000"),
            RegistryAuth::Bearer("tok".into())
        );
        assert_eq!(
            creds.for_registry("GHCR.io"),
            RegistryAuth::Basic("u".into(), "p".into())
        );
        assert_eq!(creds.for_registry("empty.example"), RegistryAuth::Anonymous);
        assert_eq!(creds.for_registry("127.0.0.1:5000"), RegistryAuth::Anonymous);
    }

    #[test]
    fn names_the_bad_entry() {
        let err = Credentials::parse(r#"{"auths": {"r.example": {"auth": "bm9jb2xvbg=="}}}"#).unwrap_err();
        assert!(err.to_string().contains("r.example"), "{err}");
    }
}
