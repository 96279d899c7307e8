//! The board's identity: its key (made here, never sent), the certificate
//! the hub signed for it, and the hub CA it trusts. The first start enrols
//! with a join token; later starts use what is on disk; a certificate is
//! renewed at two thirds of its life, also after a long power-off (within
//! the hub's grace), without a restart.
//!
//! Files, in `DATA/pki/` (mode 0600): `node.key`, `node.crt`, `ca.crt`.

use super::link::{ensure_success, read_capped, with_tls};
use harvester_api::identity::{CertificateAnswer, CertificateRequest};
use harvester_pki::{CertInfo, JoinToken, NodeKey};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What the node presents to the hub, and whom it trusts.
#[derive(Clone)]
pub(crate) struct NodeIdentity {
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub cert: CertInfo,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// Where the join token comes from: a file, or `-` for stdin.
#[derive(Debug, Clone)]
pub enum JoinTokenSource {
    File(PathBuf),
    Stdin,
}

impl JoinTokenSource {
    fn read(&self) -> anyhow::Result<JoinToken> {
        let text = match self {
            JoinTokenSource::File(p) => std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read the join token {}: {e}", p.display()))?,
            JoinTokenSource::Stdin => {
                let mut s = String::new();
                std::io::stdin().read_line(&mut s)?;
                s
            }
        };
        text.trim().parse().map_err(|e| anyhow::anyhow!("{e}"))
    }
}

fn dir(data: &Path) -> PathBuf {
    data.join("pki")
}

/// The identity on disk, if the board has one.
fn load(data: &Path, name: &str) -> anyhow::Result<Option<NodeIdentity>> {
    let d = dir(data);
    let (key, crt, ca) = (d.join("node.key"), d.join("node.crt"), d.join("ca.crt"));
    if !crt.exists() {
        return Ok(None);
    }
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()));
    let id = NodeIdentity {
        key_pem: read(&key)?,
        cert_pem: read(&crt)?,
        ca_pem: read(&ca)?,
        cert: CertInfo::of_pem(&read(&crt)?).map_err(|e| anyhow::anyhow!("{}: {e}", crt.display()))?,
    };
    if id.cert.name != name {
        anyhow::bail!(
            "{} is the certificate of node {:?}, not {name:?}: run with --name {:?}, or move {} away to enrol anew",
            crt.display(),
            id.cert.name,
            id.cert.name,
            d.display()
        );
    }
    Ok(Some(id))
}

fn save(data: &Path, key_pem: &str, answer: &CertificateAnswer) -> anyhow::Result<NodeIdentity> {
    let d = dir(data);
    let cert = CertInfo::of_pem(&answer.certificate).map_err(|e| anyhow::anyhow!("the hub's certificate: {e}"))?;
    harvester_pki::write_private(&d.join("ca.crt"), answer.ca.as_bytes())?;
    harvester_pki::write_private(&d.join("node.crt"), answer.certificate.as_bytes())?;
    Ok(NodeIdentity {
        key_pem: key_pem.to_string(),
        cert_pem: answer.certificate.clone(),
        ca_pem: answer.ca.clone(),
        cert,
    })
}

/// `https://host:port` split for the enrolment probe.
fn host_port(controller: &str) -> anyhow::Result<(String, u16)> {
    let url = reqwest::Url::parse(controller).map_err(|e| anyhow::anyhow!("--controller {controller:?}: {e}"))?;
    let host = url
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("--controller {controller:?}: no host"))?
        .to_string();
    Ok((host, url.port_or_known_default().unwrap_or(443)))
}

/// Waits while this board's clock is before `cert`'s validity: a Pi
/// without a real-time clock boots in the past until time sync sets it.
async fn wait_for_clock(cert: &CertInfo) {
    let mut said = false;
    while SystemTime::now() < cert.not_before {
        if !said {
            tracing::warn!(
                "this board's clock ({}) is before its certificate's validity ({}): waiting for the time to be set",
                harvester_pki::rfc3339(SystemTime::now()),
                harvester_pki::rfc3339(cert.not_before),
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The board's identity: from disk, else by enrolling with the join token.
/// Unreachable hubs are waited for; refusals (a token that is expired,
/// used up, unknown, or names another CA) end with one line saying so.
pub(crate) async fn establish(
    controller: &str,
    name: &str,
    data: &Path,
    token: Option<&JoinTokenSource>,
) -> anyhow::Result<NodeIdentity> {
    if let Some(id) = load(data, name)? {
        wait_for_clock(&id.cert).await;
        let grace_end = id.cert.not_after + harvester_pki::tls::RENEWAL_GRACE;
        if SystemTime::now() > grace_end {
            anyhow::bail!(
                "this board's certificate expired more than 30 days ago: enrol it again with a new join token (--join-token-file), after moving {} away",
                dir(data).display()
            );
        }
        return Ok(id);
    }
    let Some(source) = token else {
        anyhow::bail!(
            "this board has no certificate yet: give it a join token with --join-token-file FILE (on the hub: harvester token create)"
        );
    };
    let token = source.read()?;
    let key_file = dir(data).join("node.key");
    // The key is made once and kept: a retried enrolment uses the same one.
    let key = match std::fs::read_to_string(&key_file) {
        Ok(pem) => NodeKey::from_pem(&pem)?,
        Err(_) => {
            let k = NodeKey::generate()?;
            harvester_pki::write_private(&key_file, k.pem().as_bytes())?;
            k
        }
    };
    let (host, port) = host_port(controller)?;
    let mut backoff = Duration::from_millis(500);
    let ca_pem = loop {
        let (h, t) = (host.clone(), token.clone());
        let probed =
            crate::log_tap::spawn_blocking(move || harvester_pki::tls::probe_hub(&h, port, &t, Duration::from_secs(5)))
                .await?;
        match probed {
            Ok(ca) => break ca,
            Err(e @ harvester_pki::tls::ProbeError::Unreachable(..)) => {
                let wait = harvester_api::jitter(backoff);
                tracing::warn!("enrolling: {e}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => anyhow::bail!("refusing to enrol: {e}"),
        }
    };
    let http = with_tls(
        reqwest::Client::builder().default_headers(crate::marker_header()),
        &ca_pem,
        None,
    )?
    .build()?;
    let request = CertificateRequest {
        node: name.to_string(),
        csr: key.csr(name)?,
    };
    let url = format!("{}/api/v1alpha1/enrol", controller.trim_end_matches('/'));
    let resp = http
        .post(url)
        .bearer_auth(token.credential())
        .json(&request)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("enrolling with the hub at {controller}: {e}"))?;
    let answer = certificate_answer(ensure_success(resp, "the hub refused to enrol this board").await?).await?;
    let id = save(data, &key.pem(), &answer)?;
    tracing::info!(
        serial = id.cert.serial,
        "enrolled with the hub as node {name}: certificate in {}",
        dir(data).display()
    );
    Ok(id)
}

/// The hub's certificate answer, read within a bound whatever its length
/// header says: two PEM certificates and a number.
async fn certificate_answer(resp: reqwest::Response) -> anyhow::Result<CertificateAnswer> {
    const MAX_ANSWER: usize = 64 << 10;
    let body = read_capped(resp.bytes_stream(), MAX_ANSWER)
        .await
        .map_err(|e| anyhow::anyhow!("the hub's certificate answer: {e:#}"))?;
    serde_json::from_slice(&body).map_err(|e| anyhow::anyhow!("the hub's certificate answer: {e}"))
}

/// Renews `current` with the same key, over the current mutual-TLS link.
pub(crate) async fn renew(
    http: &reqwest::Client,
    controller: &str,
    name: &str,
    data: &Path,
    current: &NodeIdentity,
) -> anyhow::Result<NodeIdentity> {
    let key = NodeKey::from_pem(&current.key_pem)?;
    let request = CertificateRequest {
        node: name.to_string(),
        csr: key.csr(name)?,
    };
    let url = format!(
        "{}/api/v1alpha1/nodes/{}/certificate",
        controller.trim_end_matches('/'),
        harvester_api::path_segment(name)
    );
    let resp = http.post(url).json(&request).send().await?;
    let answer = certificate_answer(ensure_success(resp, "renewing this board's certificate").await?).await?;
    save(data, &current.key_pem, &answer)
}
