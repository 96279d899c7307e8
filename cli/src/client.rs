//! The one HTTP client of the CLI: the controller's API, with errors that
//! say what the server said.

use anyhow::{Context, bail};
use serde_json::Value;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7000";

pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str) -> anyhow::Result<Client> {
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            bail!("--server {server:?}: expected a URL like {DEFAULT_SERVER}");
        }
        Ok(Client {
            base: format!("{}/api/v1alpha1", server.trim_end_matches('/')),
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .build()?,
        })
    }

    async fn check(&self, resp: reqwest::Response) -> anyhow::Result<Value> {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        if let Some(errors) = body["errors"].as_array() {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| {
                    let mut s = format!("document {}", e["document"]);
                    if let (Some(k), Some(n)) = (e["kind"].as_str(), e["name"].as_str()) {
                        s.push_str(&format!(" ({k} {n})"));
                    }
                    format!("{s}: {}", e["message"].as_str().unwrap_or_default())
                })
                .collect();
            bail!(
                "the manifest was rejected, nothing was applied:\n  {}",
                lines.join("\n  ")
            );
        }
        bail!("{} ({status})", body["message"].as_str().unwrap_or("request failed"))
    }

    /// Sends `req` to `path` under the API; an unreachable controller is named.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        req.send().await.with_context(|| self.connect_err())
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn connect_err(&self) -> String {
        format!(
            "cannot reach the controller at {}",
            self.base.trim_end_matches("/api/v1alpha1")
        )
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self.send(self.http.get(self.url(path))).await?;
        self.check(resp).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self.send(self.http.delete(self.url(path))).await?;
        self.check(resp).await
    }

    pub async fn apply(&self, yaml: String) -> anyhow::Result<Value> {
        let resp = self
            .send(
                self.http
                    .post(self.url("apply"))
                    .header("content-type", "application/yaml")
                    .body(yaml),
            )
            .await?;
        self.check(resp).await
    }

    /// A streaming GET (NDJSON): the response, once its status is good.
    pub async fn stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let resp = self.send(self.http.get(self.url(path))).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        Err(self
            .check(resp)
            .await
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("unexpected answer {status}")))
    }

    /// A POST whose answer carries per-node results even when some failed:
    /// returns whether all went well, and the body.
    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<(bool, Value)> {
        let resp = self.send(self.http.post(self.url(path)).json(body)).await?;
        let status = resp.status();
        if status == reqwest::StatusCode::BAD_GATEWAY {
            return Ok((false, resp.json().await.unwrap_or(Value::Null)));
        }
        Ok((true, self.check(resp).await?))
    }

    pub async fn put_blob(&self, digest: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        let resp = self
            .send(self.http.put(self.url(&format!("blobs/{digest}"))).body(bytes))
            .await?;
        self.check(resp).await.map(|_| ())
    }
}
