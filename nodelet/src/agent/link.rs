//! The node's side of the node protocol, typed: register, report status,
//! follow the assignment stream (NDJSON through `harvester_api::ndjson`), answer
//! commands, and fetch what the hub serves (uploaded components, code it
//! compiled). One outbound HTTP client; it works behind NAT.

use futures::{Stream, StreamExt, TryStreamExt};
use harvester_api::Digest;
use harvester_api::answers::ErrorAnswer;
use harvester_api::live::{CommandResult, NodeMessage};
use harvester_api::ndjson::Ndjson;
use harvester_api::resources::{Node, NodeStatusV1};
use std::time::Duration;
use tokio_util::codec::FramedRead;
use tokio_util::io::StreamReader;

use super::identity::NodeIdentity;

/// What the hub said to a status report.
pub(super) enum Reported {
    Accepted,
    /// The hub does not know this node (a new store): register again.
    Unknown,
}

/// The node protocol, as this node speaks it.
pub(super) struct HubLink {
    /// Made again when the node's certificate is renewed; open streams
    /// keep the client they started with.
    http: std::sync::RwLock<reqwest::Client>,
    /// `http://hub:port/api/v1alpha1`.
    base: String,
    /// This node's name, path-encoded.
    node: String,
}

/// Error answers are read only this far: a message, not a download.
const MAX_ERROR_BODY: usize = 64 << 10;
/// The largest component the hub may send (a Python one is about 18 MB).
const MAX_COMPONENT: usize = 256 << 20;

/// Reads a body of at most `max` bytes, whatever its length header says;
/// more is an error, found before it is held.
pub(super) async fn read_capped<S, E>(mut body: S, max: usize) -> anyhow::Result<Vec<u8>>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: Into<anyhow::Error>,
{
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(Into::into)?;
        if out.len() + chunk.len() > max {
            anyhow::bail!("the answer is larger than {max} bytes");
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `resp` when it is a success; otherwise an error naming `what`, the
/// status and the hub's message.
pub(super) async fn ensure_success(resp: reqwest::Response, what: &str) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = read_capped(resp.bytes_stream(), MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body);
    let message = serde_json::from_str::<ErrorAnswer>(&body)
        .ok()
        .map(|e| e.message)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| body.into_owned());
    Err(anyhow::anyhow!("{what}: {status} {message}"))
}

/// `builder` trusting only the hub CA `ca_pem`, presenting `identity`
/// (certificate, key) when given.
pub(super) fn with_tls(
    builder: reqwest::ClientBuilder,
    ca_pem: &str,
    identity: Option<&NodeIdentity>,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let tls = harvester_pki::tls::client_config(ca_pem, identity.map(|i| (i.cert_pem.as_str(), i.key_pem.as_str())))?;
    Ok(builder.tls_backend_preconfigured(tls))
}

fn client(identity: Option<&NodeIdentity>) -> anyhow::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .default_headers(crate::marker_header());
    Ok(match identity {
        Some(id) => with_tls(builder, &id.ca_pem, Some(id))?.build()?,
        None => builder.build()?,
    })
}

impl HubLink {
    /// `identity`: this node's certificate and the hub CA (none: a hub on
    /// plain HTTP, for development).
    pub fn new(controller: &str, node: &str, identity: Option<&NodeIdentity>) -> anyhow::Result<HubLink> {
        Ok(HubLink {
            http: std::sync::RwLock::new(client(identity)?),
            base: format!("{}/api/v1alpha1", controller.trim_end_matches('/')),
            node: harvester_api::path_segment(node),
        })
    }

    /// From now on, requests present `identity` (a renewed certificate).
    pub fn set_identity(&self, identity: &NodeIdentity) -> anyhow::Result<()> {
        *self.http.write().unwrap_or_else(|e| e.into_inner()) = client(Some(identity))?;
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn node_url(&self, path: &str) -> String {
        format!("{}/nodes/{}/{path}", self.base, self.node)
    }

    /// The client as of now (renewals replace it).
    pub fn http(&self) -> reqwest::Client {
        self.http.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn live_url(&self) -> String {
        self.node_url("live")
    }

    pub async fn register(&self, node: &Node) -> anyhow::Result<()> {
        let resp = self.http().put(self.node_url("register")).json(node).send().await?;
        let resp = ensure_success(resp, "registering").await?;
        // A hub that answers with the labels it keeps: after a board's
        // first registration, its labels are people's to change.
        let body = read_capped(resp.bytes_stream(), MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        if let Ok(answer) = serde_json::from_slice::<harvester_api::identity::Registered>(&body)
            && answer.proposed_ignored
        {
            let show = |l: &harvester_api::resources::Labels| {
                l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
            };
            tracing::warn!(
                "the hub keeps this board's labels {{{}}}; --labels {{{}}} set aside: a board's labels are set at its first registration (from its join token, or its --labels when the token has none), then people change them with harvester label node",
                show(&answer.labels),
                show(&node.metadata.labels)
            );
        }
        Ok(())
    }

    /// Renews the node's lease without a status (nothing changed).
    pub async fn heartbeat(&self) -> anyhow::Result<Reported> {
        let resp = self.http().post(self.node_url("heartbeat")).send().await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Reported::Unknown);
        }
        ensure_success(resp, "heartbeat").await?;
        Ok(Reported::Accepted)
    }

    pub async fn report(&self, status: &NodeStatusV1) -> anyhow::Result<Reported> {
        let resp = self.http().put(self.node_url("status")).json(status).send().await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Reported::Unknown);
        }
        ensure_success(resp, "reporting status").await?;
        Ok(Reported::Accepted)
    }

    /// The assignment stream: assignments and commands, until it ends.
    /// Keepalives arrive every 10 s; silence for `idle` means the
    /// connection is dead even if TCP has not noticed.
    pub async fn watch(
        &self,
        idle: Duration,
    ) -> anyhow::Result<impl Stream<Item = anyhow::Result<NodeMessage>> + use<>> {
        let resp = self.http().get(self.node_url("assignments")).send().await?;
        let resp = ensure_success(resp, "watching assignments").await?;
        Ok(messages(resp.bytes_stream(), idle))
    }

    pub async fn answer(&self, command: u64, result: &CommandResult) -> anyhow::Result<()> {
        let resp = self
            .http()
            .post(self.node_url(&format!("commands/{command}")))
            .json(result)
            .send()
            .await?;
        ensure_success(resp, &format!("answering command {command}"))
            .await
            .map(drop)
    }

    /// A component uploaded to the hub (unchecked: the caller checks its digest).
    pub async fn blob(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        let what = format!("downloading {digest} from the controller");
        let resp = ensure_success(
            self.http().get(self.url(&format!("blobs/{digest}"))).send().await?,
            &what,
        )
        .await?;
        read_capped(resp.bytes_stream(), MAX_COMPONENT)
            .await
            .map_err(|e| anyhow::anyhow!("{what}: {e:#}"))
    }

    /// The hub's answer for code compiled for `artifact`, once it is a success.
    pub async fn compiled(&self, artifact: &Digest, target: &str, engine: &str) -> anyhow::Result<reqwest::Response> {
        let url = self.url(&format!("compiled/{artifact}?target={target}&engine={engine}"));
        let resp = self
            .http()
            .get(url)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("asking the hub for compiled code: {e}"))?;
        ensure_success(resp, &format!("the hub has no compiled code for {artifact}")).await
    }
}

/// What to do about a TLS failure, in words: the alerts a hub sends say
/// only which check failed.
pub(super) fn tls_hint(e: &anyhow::Error) -> &'static str {
    let text = format!("{e:#}");
    if text.contains("UnknownCA") || text.contains("BadCertificate") {
        " (the hub does not accept this board's certificate: issued by another hub's CA? \
         Move DATA/pki away and enrol again with a join token from this hub)"
    } else if text.contains("CertificateExpired") {
        " (this board's certificate expired more than 30 days ago: move DATA/pki away and enrol again with a new join token)"
    } else if text.contains("NotValidYet") {
        " (the hub's certificate is not valid yet by this board's clock: is the time set?)"
    } else {
        ""
    }
}

/// The messages of an assignment stream's bytes. Silence is timed on the
/// bytes, so the `{}` keepalives the codec skips still count as word from
/// the hub.
fn messages<S, E>(bytes: S, idle: Duration) -> impl Stream<Item = anyhow::Result<NodeMessage>>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: Into<anyhow::Error>,
{
    let bytes = tokio_stream_timeout(bytes, idle).map_err(std::io::Error::other);
    FramedRead::new(StreamReader::new(bytes), Ndjson::<NodeMessage>::new()).map_err(anyhow::Error::from)
}

/// Ends the stream with an error when no item arrives within `idle`.
fn tokio_stream_timeout<S, T, E>(stream: S, idle: Duration) -> impl Stream<Item = anyhow::Result<T>>
where
    S: Stream<Item = Result<T, E>> + Unpin,
    E: Into<anyhow::Error>,
{
    futures::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(item)) => Some((item.map_err(Into::into), Some(stream))),
            Ok(None) => None,
            Err(_) => Some((Err(anyhow::anyhow!("no word from the controller for {idle:?}")), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_past_its_bound_is_refused_whatever_it_claims() {
        let chunks = |n: usize| {
            futures::stream::iter((0..n).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 1024]))))
        };
        assert_eq!(read_capped(chunks(4), 4096).await.unwrap().len(), 4096);
        let err = read_capped(chunks(5), 4096).await.unwrap_err();
        assert!(err.to_string().contains("larger than 4096 bytes"), "{err}");
    }

    #[test]
    fn tls_refusals_say_what_to_do() {
        let alert = anyhow::anyhow!("received fatal alert: UnknownCA").context("error sending request");
        assert!(tls_hint(&alert).contains("another hub's CA"));
        assert!(tls_hint(&anyhow::anyhow!("received fatal alert: CertificateExpired")).contains("30 days"));
        assert_eq!(tls_hint(&anyhow::anyhow!("connection refused")), "");
    }

    #[tokio::test]
    async fn keepalives_keep_a_quiet_assignment_stream_open() {
        // `{}` every 5 ms for 200 ms, then nothing: with a 100 ms idle
        // bound the stream lives through the keepalives and ends after them
        // (timed on decoded messages, it would end at 100 ms).
        let ticks = futures::stream::unfold(0u32, |n| async move {
            if n == 40 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{}\n")), n + 1))
        })
        .chain(futures::stream::pending());
        let started = std::time::Instant::now();
        let mut s = Box::pin(messages(Box::pin(ticks), Duration::from_millis(100)));
        let end = s.next().await.expect("an error at the end");
        assert!(end.unwrap_err().to_string().contains("no word from the controller"));
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_silent_stream_ends_with_an_error() {
        let silent = futures::stream::pending::<Result<u8, std::io::Error>>();
        let mut s = Box::pin(tokio_stream_timeout(silent, Duration::from_millis(10)));
        let first = s.next().await.expect("an item");
        assert!(first.unwrap_err().to_string().contains("no word from the controller"));
        assert!(s.next().await.is_none());
    }
}
