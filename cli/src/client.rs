//! The one HTTP client of the CLI: the controller's API, typed with
//! `harvester-api`'s objects and answers, with errors that say what the
//! server said.

use anyhow::{Context, bail};
use harvester_api::answers::{AppliedObject, CommandAnswers, ErrorAnswer, List, ObjectEvent};
use harvester_api::identity::{
    AuditEntry, ClientConfig, Revoked, TokenCreated, TokenInfo, TokenRequest, UserCreated, UserInfo, UserRequest,
    WhoAmI,
};
use harvester_api::path_segment;
use harvester_api::resources::{Node, Plugin};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7000";

/// The client configuration file's default place:
/// `$XDG_CONFIG_HOME/harvester/config.yaml`, else `~/.config/...`.
pub fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("harvester/config.yaml"))
}

/// Where the CLI finds its client configuration: `--config` or
/// `HARVESTER_CONFIG`, else the default place if a file is there.
pub fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    default_config_path().filter(|p| p.exists())
}

/// Reads a client configuration, naming the file in every error.
pub fn read_config(path: &Path) -> anyhow::Result<ClientConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the client configuration {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("{}: not a Harvester client configuration", path.display()))
}

/// Writes a client configuration (mode 0600: it holds credentials).
pub fn write_config(path: &Path, config: &ClientConfig) -> anyhow::Result<()> {
    harvester_pki::write_private(path, serde_yaml::to_string(config)?.as_bytes())
}

/// The kinds the API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plugin,
    Node,
}

impl Kind {
    /// `plugin`, `plugins`, `pl`, `node`, `nodes` or `no`, any case.
    pub fn parse(s: &str) -> anyhow::Result<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "plugin" | "plugins" | "pl" => Ok(Kind::Plugin),
            "node" | "nodes" | "no" => Ok(Kind::Node),
            _ => bail!("unknown resource type {s:?}: use plugins (pl) or nodes (no)"),
        }
    }

    /// `TYPE NAME`, `TYPE/NAME` or `TYPE` alone, as kubectl takes them.
    pub fn target(kind: &str, name: Option<&str>) -> anyhow::Result<(Kind, Option<String>)> {
        match kind.split_once('/') {
            Some((k, n)) if name.is_none() && !n.is_empty() => Ok((Kind::parse(k)?, Some(n.to_string()))),
            Some(_) if name.is_some() => bail!("give {kind} or TYPE NAME, not both"),
            Some(_) => bail!("{kind:?}: expected TYPE/NAME"),
            None => Ok((Kind::parse(kind)?, name.map(str::to_string))),
        }
    }

    /// The path segment: `plugins` or `nodes`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Plugin => "plugins",
            Kind::Node => "nodes",
        }
    }

    /// As in `plugin/dht22`.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Plugin => "plugin",
            Kind::Node => "node",
        }
    }
}

pub struct Client {
    base: String,
    http: reqwest::Client,
}

/// The error of an answer that is not a success, as the server put it, in
/// the form of the CLI's own errors: what and where, one per line, no HTTP
/// status (it only shows when the hub said nothing more).
fn refusal(status: reqwest::StatusCode, body: ErrorAnswer) -> anyhow::Error {
    if !body.errors.is_empty() {
        let lines: Vec<String> = body.errors.iter().map(ToString::to_string).collect();
        let what = match body.message.as_str() {
            "" => "the manifest is not valid",
            m => m,
        };
        return anyhow::anyhow!("{what}, nothing was applied:\n  {}", lines.join("\n  "));
    }
    if body.message.is_empty() {
        return anyhow::anyhow!("the hub refused the request ({status})");
    }
    anyhow::anyhow!("{}", body.message)
}

impl Client {
    /// A client for `server` (or the configuration's), trusting the
    /// configuration's CA and sending its token. Without a configuration
    /// only a plain-HTTP hub on loopback can be reached.
    pub fn new(server: Option<&str>, config: Option<&Path>, context: Option<&str>) -> anyhow::Result<Client> {
        let config = match config_path(config) {
            Some(p) => {
                let file = read_config(&p)?;
                Some(
                    file.context(context)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                        .clone(),
                )
            }
            None if context.is_some() => bail!(
                "--context {:?}: there is no client configuration (harvester login URL --token-file FILE makes one)",
                context.unwrap_or_default()
            ),
            None => None,
        };
        let server = server
            .map(str::to_string)
            .or_else(|| config.as_ref().map(|c| c.server.clone()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_string());
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            bail!("--server {server:?}: expected a URL like {DEFAULT_SERVER}");
        }
        let mut builder = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5));
        let mut headers = reqwest::header::HeaderMap::new();
        // What a page of another site cannot send: the hub refuses writes without it.
        headers.insert(
            harvester_api::cross_site::MARKER,
            reqwest::header::HeaderValue::from_static("1"),
        );
        match &config {
            // A token is never sent in clear. A hub on plain HTTP is one
            // without identities, on loopback only: it needs none.
            Some(_) if server.starts_with("http://") && !loopback_url(&server) => bail!(
                "not sending the client configuration's token to {server}: it would cross the network in clear; \
                 use the hub's https:// address (a hub on plain HTTP listens on loopback only)"
            ),
            Some(_) if server.starts_with("http://") => {}
            Some(c) => {
                let tls = harvester_pki::tls::client_config(&c.certificate_authority_data, None)
                    .context("the client configuration's certificate-authority-data")?;
                let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", c.token))
                    .context("the client configuration's token is not a valid header value")?;
                auth.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, auth);
                builder = builder.tls_backend_preconfigured(tls);
            }
            None if server.starts_with("https://") => bail!(
                "no client configuration to reach {server}: harvester login {server} --token-file FILE, \
                 or set HARVESTER_CONFIG (the hub writes one for its admin: DATA/admin.yaml)"
            ),
            None => {}
        }
        Ok(Client {
            base: format!("{}/api/v1alpha1", server.trim_end_matches('/')),
            http: builder.default_headers(headers).build()?,
        })
    }

    /// The typed body of a success, or the server's error.
    async fn answer<T: DeserializeOwned>(&self, resp: reqwest::Response) -> anyhow::Result<T> {
        let status = resp.status();
        if !status.is_success() {
            let body = resp.json::<ErrorAnswer>().await.unwrap_or_default();
            return Err(refusal(status, body));
        }
        resp.json::<T>()
            .await
            .with_context(|| format!("the controller sent an answer this client cannot read ({status})"))
    }

    /// Sends `req`; an unreachable controller is named.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        req.send().await.with_context(|| {
            format!(
                "cannot reach the controller at {}",
                self.base.trim_end_matches("/api/v1alpha1")
            )
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.send(self.http.get(self.url(path))).await?;
        self.answer(resp).await
    }

    fn list_path(kind: Kind, selector: Option<&str>) -> String {
        match selector {
            Some(s) => format!("{}?labelSelector={}", kind.plural(), path_segment(s)),
            None => kind.plural().to_string(),
        }
    }

    /// A kind's objects with the store revision they are as of, for a
    /// watch to start from.
    pub async fn list<T: DeserializeOwned>(&self, kind: Kind, selector: Option<&str>) -> anyhow::Result<List<T>> {
        self.get(&Self::list_path(kind, selector)).await
    }

    /// Every change after `resource_version`, as a stream of NDJSON lines;
    /// `None` when the hub no longer keeps changes that old (list again).
    pub async fn watch(&self, resource_version: u64) -> anyhow::Result<Option<reqwest::Response>> {
        let url = self.url(&format!("watch?resourceVersion={resource_version}"));
        let resp = self.send(self.http.get(url)).await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp)),
            reqwest::StatusCode::GONE => Ok(None),
            s => Err(refusal(s, resp.json().await.unwrap_or_default())),
        }
    }

    /// One object of `kind`.
    pub async fn object<T: DeserializeOwned>(&self, kind: Kind, name: &str) -> anyhow::Result<T> {
        self.get(&format!("{}/{}", kind.plural(), path_segment(name))).await
    }

    /// Replaces an object, if nobody changed it since the resourceVersion
    /// it carries (a stale one is refused as a conflict).
    pub async fn update(&self, kind: Kind, name: &str, object: &serde_json::Value) -> anyhow::Result<AppliedObject> {
        let url = self.url(&format!("{}/{}", kind.plural(), path_segment(name)));
        let resp = self.send(self.http.put(url).json(object)).await?;
        self.answer(resp).await
    }

    pub async fn plugin(&self, name: &str) -> anyhow::Result<Plugin> {
        self.get(&format!("plugins/{}", path_segment(name))).await
    }

    pub async fn plugins(&self, selector: Option<&str>) -> anyhow::Result<Vec<Plugin>> {
        Ok(self
            .get::<List<Plugin>>(&Self::list_path(Kind::Plugin, selector))
            .await?
            .items)
    }

    pub async fn node(&self, name: &str) -> anyhow::Result<Node> {
        self.get(&format!("nodes/{}", path_segment(name))).await
    }

    pub async fn nodes(&self, selector: Option<&str>) -> anyhow::Result<Vec<Node>> {
        Ok(self
            .get::<List<Node>>(&Self::list_path(Kind::Node, selector))
            .await?
            .items)
    }

    /// Recent events of a plugin, oldest first.
    pub async fn events(&self, plugin: &str) -> anyhow::Result<Vec<ObjectEvent>> {
        let path = format!("plugins/{}/events", path_segment(plugin));
        Ok(self.get::<List<ObjectEvent>>(&path).await?.items)
    }

    pub async fn delete(&self, kind: Kind, name: &str) -> anyhow::Result<()> {
        let url = self.url(&format!("{}/{}", kind.plural(), path_segment(name)));
        let resp = self.send(self.http.delete(url)).await?;
        self.answer::<serde_json::Value>(resp).await.map(|_| ())
    }

    pub async fn apply(&self, yaml: String, dry_run: bool) -> anyhow::Result<Vec<AppliedObject>> {
        let path = if dry_run { "apply?dryRun=All" } else { "apply" };
        let req = self
            .http
            .post(self.url(path))
            .header("content-type", "application/yaml")
            .body(yaml);
        let resp = self.send(req).await?;
        Ok(self.answer::<harvester_api::answers::Applied>(resp).await?.results)
    }

    /// A streaming GET (NDJSON): the response, once its status is good.
    pub async fn stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let resp = self.send(self.http.get(self.url(path))).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        Err(refusal(status, resp.json().await.unwrap_or_default()))
    }

    /// The path of a plugin command, every part encoded.
    fn exec_path(plugin: &str, command: &str, node: Option<&str>) -> String {
        let mut path = format!("plugins/{}/commands/{}", path_segment(plugin), path_segment(command));
        if let Some(n) = node {
            path.push_str(&format!("?node={}", path_segment(n)));
        }
        path
    }

    /// Runs a plugin command on the nodes running it (or on `node`):
    /// whether every node succeeded, and each node's answer.
    pub async fn exec(
        &self,
        plugin: &str,
        command: &str,
        node: Option<&str>,
        args: &BTreeMap<String, String>,
    ) -> anyhow::Result<(bool, CommandAnswers)> {
        let req = self
            .http
            .post(self.url(&Self::exec_path(plugin, command, node)))
            .json(args);
        let resp = self.send(req).await?;
        if resp.status() == reqwest::StatusCode::BAD_GATEWAY {
            // Some nodes failed: their answers say why.
            let answers = resp.json().await.context("the controller sent an unreadable answer")?;
            return Ok((false, answers));
        }
        Ok((true, self.answer(resp).await?))
    }

    pub async fn create_token(&self, request: &TokenRequest) -> anyhow::Result<TokenCreated> {
        let resp = self.send(self.http.post(self.url("tokens")).json(request)).await?;
        self.answer(resp).await
    }

    pub async fn tokens(&self) -> anyhow::Result<Vec<TokenInfo>> {
        Ok(self.get::<List<TokenInfo>>("tokens").await?.items)
    }

    pub async fn delete_token(&self, id: &str) -> anyhow::Result<()> {
        self.delete_path(&format!("tokens/{}", path_segment(id))).await
    }

    /// DELETE of something that answers with no body.
    async fn delete_path(&self, path: &str) -> anyhow::Result<()> {
        let resp = self.send(self.http.delete(self.url(path))).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(refusal(status, resp.json::<ErrorAnswer>().await.unwrap_or_default()));
        }
        Ok(())
    }

    pub async fn create_user(&self, request: &UserRequest) -> anyhow::Result<UserCreated> {
        let resp = self.send(self.http.post(self.url("users")).json(request)).await?;
        self.answer(resp).await
    }

    pub async fn users(&self) -> anyhow::Result<Vec<UserInfo>> {
        Ok(self.get::<List<UserInfo>>("users").await?.items)
    }

    pub async fn delete_user(&self, name: &str) -> anyhow::Result<()> {
        self.delete_path(&format!("users/{}", path_segment(name))).await
    }

    pub async fn info(&self) -> anyhow::Result<harvester_api::answers::HubInfo> {
        self.get("info").await
    }

    pub async fn whoami(&self) -> anyhow::Result<WhoAmI> {
        self.get("whoami").await
    }

    pub async fn audit(&self, since_ms: u64, user: Option<&str>) -> anyhow::Result<Vec<AuditEntry>> {
        let mut path = format!("audit?since={since_ms}");
        if let Some(u) = user {
            path.push_str(&format!("&user={}", path_segment(u)));
        }
        Ok(self.get::<List<AuditEntry>>(&path).await?.items)
    }

    pub async fn revisions(&self, plugin: &str) -> anyhow::Result<harvester_api::rollout::RevisionList> {
        self.get(&format!("plugins/{}/revisions", path_segment(plugin))).await
    }

    /// pause, resume, promote or abort a plugin's rollout.
    pub async fn rollout_decision(
        &self,
        plugin: &str,
        action: &str,
    ) -> anyhow::Result<harvester_api::rollout::RolloutDecision> {
        let url = self.url(&format!("plugins/{}/rollout/{action}", path_segment(plugin)));
        let resp = self.send(self.http.post(url)).await?;
        self.answer(resp).await
    }

    pub async fn undo(&self, plugin: &str, to: Option<u64>) -> anyhow::Result<harvester_api::rollout::Undone> {
        let mut path = format!("plugins/{}/rollout/undo", path_segment(plugin));
        if let Some(n) = to {
            path.push_str(&format!("?toRevision={n}"));
        }
        let resp = self.send(self.http.post(self.url(&path))).await?;
        self.answer(resp).await
    }

    pub async fn revoke_node(&self, name: &str) -> anyhow::Result<Revoked> {
        let url = self.url(&format!("nodes/{}/revoke", path_segment(name)));
        let resp = self.send(self.http.post(url)).await?;
        self.answer(resp).await
    }

    pub async fn put_blob(&self, digest: &harvester_api::Digest, bytes: Vec<u8>) -> anyhow::Result<()> {
        let resp = self
            .send(self.http.put(self.url(&format!("blobs/{digest}"))).body(bytes))
            .await?;
        self.answer::<serde_json::Value>(resp).await.map(|_| ())
    }
}

/// Whether `url` (`http://HOST[:PORT]/...`) names this machine's loopback.
fn loopback_url(url: &str) -> bool {
    let authority = url.split("://").nth(1).unwrap_or("").split('/').next().unwrap_or("");
    let host = harvester_api::cross_site::host_name(authority);
    harvester_api::cross_site::loopback_names().iter().any(|l| l == host)
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_goes_in_clear_only_to_this_machine() {
        assert!(loopback_url("http://127.0.0.1:7000"));
        assert!(loopback_url("http://localhost:7000/"));
        assert!(loopback_url("http://[::1]:7000"));
        assert!(loopback_url("http://127.0.0.5"));
        assert!(!loopback_url("http://192.0.2.10:7000"));
        assert!(!loopback_url("http://hub.example:7000"));
        assert!(!loopback_url("http://127.0.0.1.example:7000"));
    }

    #[test]
    fn names_in_paths_are_encoded() {
        assert_eq!(
            Client::exec_path("buzzer", "triple", Some("pi 4&x=1")),
            "plugins/buzzer/commands/triple?node=pi%204%26x%3D1"
        );
        assert_eq!(Client::exec_path("a/b", "c?d", None), "plugins/a%2Fb/commands/c%3Fd");
        assert_eq!(
            Client::list_path(Kind::Plugin, Some("app=climate")),
            "plugins?labelSelector=app%3Dclimate"
        );
    }
}
