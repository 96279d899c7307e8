//! Reading from registries that are not trusted: every GET a node or the hub
//! makes (manifests, signatures, components, auth tokens) goes through here,
//! with a size cap checked before and while bytes arrive, connect, idle and
//! total timeouts, and a few retries with full jitter for what may pass.
//!
//! `oci-client` (used for pushes, to a registry the user chose) reads
//! manifests and token answers whole, with no bound and no way to hand it
//! a client that has one, so the pull side speaks the distribution API's
//! few GETs itself.

use harvester_api::Digest;
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much a registry may send, and how long it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// An image or signature manifest (real ones are a few KiB).
    pub manifest_bytes: u64,
    /// A signature payload (cosign's are a few hundred bytes).
    pub signature_bytes: u64,
    /// A component layer.
    pub layer_bytes: u64,
    pub connect_timeout: Duration,
    /// The longest wait for the next bytes of an answer.
    pub idle_timeout: Duration,
    /// The longest a manifest, signature or token may take in all; a layer
    /// gets this plus one second per 64 KiB of its size.
    pub total_timeout: Duration,
    /// Attempts of a request that failed in a way that may pass.
    pub attempts: u32,
}

/// Twice the largest Python component the repository builds (about 40 MiB).
pub const DEFAULT_LAYER_BYTES: u64 = 128 << 20;

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            manifest_bytes: 4 << 20,
            signature_bytes: 1 << 20,
            layer_bytes: DEFAULT_LAYER_BYTES,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(120),
            attempts: 3,
        }
    }
}

/// Why a GET gave nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// More than the cap: final for a digest (the same digest is always the
    /// same bytes), and for a tag until the registry changes it.
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge { what: String, size: String, limit: u64 },
    #[error("{0} not found in the registry")]
    NotFound(String),
    #[error("{what}: the registry refused the credentials (or wants some)")]
    Unauthorized { what: String },
    /// Could not be reached, stalled, or answered an error: may pass.
    #[error("{0}")]
    Transient(String),
}

/// What kind of thing a GET reads, for its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Manifest,
    Signature,
    Layer,
}

pub struct Fetcher {
    limits: FetchLimits,
    http: reqwest::Client,
    /// Bearer tokens by `registry/repository`, with when they expire.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

/// The most a token answer may be.
const TOKEN_BYTES: u64 = 64 << 10;

impl Fetcher {
    pub fn new(limits: FetchLimits) -> anyhow::Result<Fetcher> {
        let http = reqwest::Client::builder()
            .connect_timeout(limits.connect_timeout)
            .read_timeout(limits.idle_timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("harvester/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Fetcher {
            limits,
            http,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    pub fn limits(&self) -> &FetchLimits {
        &self.limits
    }

    fn cap(&self, body: Body) -> u64 {
        match body {
            Body::Manifest => self.limits.manifest_bytes,
            Body::Signature => self.limits.signature_bytes,
            Body::Layer => self.limits.layer_bytes,
        }
    }

    /// `GET /v2/REPO/manifests/REF` (a tag or a digest), within the manifest cap.
    pub async fn manifest(
        &self,
        reference: &Reference,
        reference_part: &str,
        base: &str,
        auth: &RegistryAuth,
        accept: &[&str],
    ) -> Result<Vec<u8>, FetchError> {
        let url = format!("{base}/v2/{}/manifests/{reference_part}", reference.repository());
        let what = format!(
            "manifest {}/{}:{reference_part}",
            reference.registry(),
            reference.repository()
        );
        self.get(reference, &url, &what, auth, Body::Manifest, &accept.join(", "), |_| {})
            .await
    }

    /// `GET /v2/REPO/blobs/DIGEST` within `body`'s cap; `progress` sees each
    /// chunk's length.
    #[allow(clippy::too_many_arguments)]
    pub async fn blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        base: &str,
        auth: &RegistryAuth,
        body: Body,
        progress: impl FnMut(u64),
    ) -> Result<Vec<u8>, FetchError> {
        let url = format!("{base}/v2/{}/blobs/{digest}", reference.repository());
        let what = format!("blob {digest} of {}/{}", reference.registry(), reference.repository());
        self.get(reference, &url, &what, auth, body, "*/*", progress).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn get(
        &self,
        reference: &Reference,
        url: &str,
        what: &str,
        auth: &RegistryAuth,
        body: Body,
        accept: &str,
        mut progress: impl FnMut(u64),
    ) -> Result<Vec<u8>, FetchError> {
        let cap = self.cap(body);
        let mut total = self.limits.total_timeout;
        if body == Body::Layer {
            total += Duration::from_secs(cap / (64 << 10));
        }
        let mut last = None;
        for attempt in 0..self.limits.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(jitter(attempt)).await;
            }
            let once = self.get_once(reference, url, what, auth, cap, accept, &mut progress);
            match tokio::time::timeout(total, once).await {
                Ok(Err(FetchError::Transient(e))) => last = Some(e),
                Ok(other) => return other,
                Err(_) => last = Some(format!("{what}: no complete answer within {}s", total.as_secs())),
            }
        }
        Err(FetchError::Transient(last.unwrap_or_default()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn get_once(
        &self,
        reference: &Reference,
        url: &str,
        what: &str,
        auth: &RegistryAuth,
        cap: u64,
        accept: &str,
        progress: &mut impl FnMut(u64),
    ) -> Result<Vec<u8>, FetchError> {
        let scope = format!("{}/{}", reference.registry(), reference.repository());
        let send = |bearer: Option<String>| {
            let mut req = self.http.get(url).header(reqwest::header::ACCEPT, accept);
            match (&bearer, auth) {
                (Some(t), _) => req = req.bearer_auth(t),
                (None, RegistryAuth::Basic(u, p)) => req = req.basic_auth(u, Some(p)),
                (None, RegistryAuth::Bearer(t)) => req = req.bearer_auth(t),
                (None, RegistryAuth::Anonymous) => {}
            }
            req.send()
        };
        let cached = self.token(&scope);
        let mut resp = send(cached).await.map_err(|e| transient(what, &e))?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if let Some(token) = self.bearer_token(challenge.as_deref(), auth, url, &scope, what).await? {
                resp = send(Some(token)).await.map_err(|e| transient(what, &e))?;
            }
        }
        match resp.status() {
            s if s.is_success() => {}
            reqwest::StatusCode::NOT_FOUND => return Err(FetchError::NotFound(what.to_string())),
            reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN => {
                return Err(FetchError::Unauthorized { what: what.to_string() });
            }
            s => return Err(FetchError::Transient(format!("{what}: the registry answered {s}"))),
        }
        read_bounded(resp, cap, what, progress).await
    }

    fn token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(scope)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(t, _)| t.clone())
    }

    /// The token a `Bearer realm=...` challenge points at, fetched (with the
    /// credentials, if any) and kept for its lifetime; `None` when the
    /// challenge is not for a token.
    async fn bearer_token(
        &self,
        challenge: Option<&str>,
        auth: &RegistryAuth,
        url: &str,
        scope: &str,
        what: &str,
    ) -> Result<Option<String>, FetchError> {
        let Some(params) = challenge.and_then(parse_bearer_challenge) else {
            return Ok(None);
        };
        let Some(realm) = params.get("realm") else {
            return Ok(None);
        };
        // A token service over plain HTTP only for a registry reached that way.
        if realm.starts_with("http://") && !url.starts_with("http://") {
            return Err(FetchError::Unauthorized {
                what: format!("{what} (the registry sent its token service as plain HTTP: {realm})"),
            });
        }
        let mut req = self.http.get(realm.as_str());
        let query: Vec<(&str, &str)> = ["service", "scope"]
            .iter()
            .filter_map(|k| params.get(*k).map(|v| (*k, v.as_str())))
            .collect();
        req = req.query(&query);
        if let RegistryAuth::Basic(u, p) = auth {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.map_err(|e| transient(what, &e))?;
        if !resp.status().is_success() {
            return Err(FetchError::Unauthorized { what: what.to_string() });
        }
        let body = read_bounded(resp, TOKEN_BYTES, &format!("the token for {what}"), &mut |_| {}).await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| FetchError::Transient(format!("{what}: the token service sent no token: {e}")))?;
        let Some(token) = answer.token.or(answer.access_token) else {
            return Err(FetchError::Transient(format!(
                "{what}: the token service sent no token"
            )));
        };
        let life = Duration::from_secs(answer.expires_in.unwrap_or(60).clamp(10, 3600) - 5);
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() > 1024 {
            tokens.clear();
        }
        tokens.insert(scope.to_string(), (token.clone(), Instant::now() + life));
        Ok(Some(token))
    }
}

fn transient(what: &str, e: &reqwest::Error) -> FetchError {
    let why = if e.is_timeout() {
        "no answer in time (timed out)".to_string()
    } else if e.is_connect() {
        format!("cannot connect: {e}")
    } else {
        e.to_string()
    };
    FetchError::Transient(format!("{what}: {why}"))
}

/// The wait before retry `attempt`: full jitter under 200 ms x 2^attempt
/// (at most 5 s).
fn jitter(attempt: u32) -> Duration {
    harvester_api::jitter(Duration::from_millis((200u64 << attempt.min(5)).min(5_000)))
}

/// The body of `resp`, refused as soon as it would pass `cap`: a length the
/// registry announces is checked first but never trusted for an allocation.
async fn read_bounded(
    mut resp: reqwest::Response,
    cap: u64,
    what: &str,
    progress: &mut impl FnMut(u64),
) -> Result<Vec<u8>, FetchError> {
    if let Some(len) = resp.content_length()
        && len > cap
    {
        return Err(FetchError::TooLarge {
            what: what.to_string(),
            size: len.to_string(),
            limit: cap,
        });
    }
    // Grown as bytes arrive, from a small start.
    let mut bytes = Vec::with_capacity(resp.content_length().unwrap_or(0).min(1 << 20) as usize);
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(transient(what, &e)),
        };
        if bytes.len() as u64 + chunk.len() as u64 > cap {
            return Err(FetchError::TooLarge {
                what: what.to_string(),
                size: format!("more than {cap}"),
                limit: cap,
            });
        }
        progress(chunk.len() as u64);
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// `Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull"`.
fn parse_bearer_challenge(header: &str) -> Option<HashMap<String, String>> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut escaped = false;
            for c in chars.by_ref() {
                match (escaped, c) {
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    _ => {
                        value.push(c);
                        escaped = false;
                    }
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value);
        if params.len() > 16 {
            break;
        }
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_as_registries_send_them() {
        let p = parse_bearer_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/alpine:pull");
        assert!(parse_bearer_challenge(r#"Basic realm="x""#).is_none());
        assert!(parse_bearer_challenge("Bearer ").unwrap().is_empty());
    }

    #[test]
    fn retries_spread_out_within_their_ceiling() {
        let waits: Vec<Duration> = (0..50).map(|_| jitter(2)).collect();
        assert!(waits.iter().all(|w| *w < Duration::from_millis(800)));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 10, "{waits:?}");
    }

    #[test]
    fn retries_wait_longer_each_time_up_to_five_seconds() {
        assert!((0..20).all(|_| jitter(0) < Duration::from_millis(200)));
        assert!((0..20).all(|_| jitter(9) < Duration::from_secs(5)));
    }
}
