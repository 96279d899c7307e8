//! The node's side of the node protocol, typed: register, report status,
//! follow the assignment stream (NDJSON through [`Ndjson`]), answer
//! commands, and fetch what the hub serves (uploaded components, code it
//! compiled). One outbound HTTP client; it works behind NAT.

use bytes::BytesMut;
use futures::{Stream, StreamExt, TryStreamExt};
use harvester_api::Digest;
use harvester_api::live::{CommandResult, NodeMessage};
use harvester_api::resources::{Node, NodeStatusV1};
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::time::Duration;
use tokio_util::codec::{Decoder, FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;

/// The longest line the hub may send: every assignment of a node with its
/// config fits many times over, and a hub that sends more is not trusted
/// with this node's memory.
const MAX_LINE: usize = 8 << 20;

/// Why a line of the stream was not a message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NdjsonError {
    #[error("a line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("reading the stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("a line that is not a message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Newline-delimited JSON: one `T` per line, `{}` keepalives skipped.
pub(crate) struct Ndjson<T> {
    lines: LinesCodec,
    _message: PhantomData<fn() -> T>,
}

impl<T> Ndjson<T> {
    pub(crate) fn new() -> Ndjson<T> {
        Ndjson {
            lines: LinesCodec::new_with_max_length(MAX_LINE),
            _message: PhantomData,
        }
    }

    fn message(line: Option<String>) -> Result<Option<Option<T>>, NdjsonError>
    where
        T: DeserializeOwned,
    {
        let Some(line) = line else { return Ok(None) };
        let line = line.trim();
        if line.is_empty() || line == "{}" {
            return Ok(Some(None));
        }
        Ok(Some(Some(serde_json::from_str(line)?)))
    }
}

fn lines_error(e: LinesCodecError) -> NdjsonError {
    match e {
        LinesCodecError::MaxLineLengthExceeded => NdjsonError::TooLong,
        LinesCodecError::Io(e) => NdjsonError::Io(e),
    }
}

impl<T: DeserializeOwned> Ndjson<T> {
    /// The next message `next_line` yields, past keepalives.
    fn next(
        &mut self,
        buf: &mut BytesMut,
        next_line: fn(&mut LinesCodec, &mut BytesMut) -> Result<Option<String>, LinesCodecError>,
    ) -> Result<Option<T>, NdjsonError> {
        loop {
            match Self::message(next_line(&mut self.lines, buf).map_err(lines_error)?)? {
                None => return Ok(None),
                Some(None) => continue,
                Some(Some(m)) => return Ok(Some(m)),
            }
        }
    }
}

impl<T: DeserializeOwned> Decoder for Ndjson<T> {
    type Item = T;
    type Error = NdjsonError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<T>, NdjsonError> {
        self.next(buf, LinesCodec::decode)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<T>, NdjsonError> {
        self.next(buf, LinesCodec::decode_eof)
    }
}

/// What the hub said to a status report.
pub(super) enum Reported {
    Accepted,
    /// The hub does not know this node (a new store): register again.
    Unknown,
}

/// The node protocol, as this node speaks it.
pub(super) struct HubLink {
    http: reqwest::Client,
    /// `http://hub:port/api/v1alpha1`.
    base: String,
    /// This node's name, path-encoded.
    node: String,
}

fn status_error(what: &str, status: reqwest::StatusCode, body: String) -> anyhow::Error {
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or(body);
    anyhow::anyhow!("{what}: {status} {message}")
}

impl HubLink {
    pub fn new(controller: &str, node: &str) -> anyhow::Result<HubLink> {
        Ok(HubLink {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()?,
            base: format!("{}/api/v1alpha1", controller.trim_end_matches('/')),
            node: harvester_api::path_segment(node),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn node_url(&self, path: &str) -> String {
        format!("{}/nodes/{}/{path}", self.base, self.node)
    }

    /// The client, for the uplink's reports on the same connection pool.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    pub fn live_url(&self) -> String {
        self.node_url("live")
    }

    pub async fn register(&self, node: &Node) -> anyhow::Result<()> {
        let resp = self.http.put(self.node_url("register")).json(node).send().await?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(status_error(
                "registering",
                status,
                resp.text().await.unwrap_or_default(),
            ));
        }
        Ok(())
    }

    pub async fn report(&self, status: &NodeStatusV1) -> anyhow::Result<Reported> {
        let resp = self.http.put(self.node_url("status")).json(status).send().await?;
        match resp.status() {
            s if s.is_success() => Ok(Reported::Accepted),
            reqwest::StatusCode::NOT_FOUND => Ok(Reported::Unknown),
            s => Err(status_error(
                "reporting status",
                s,
                resp.text().await.unwrap_or_default(),
            )),
        }
    }

    /// The assignment stream: assignments and commands, until it ends.
    /// Keepalives arrive every 10 s; silence for `idle` means the
    /// connection is dead even if TCP has not noticed.
    pub async fn watch(
        &self,
        idle: Duration,
    ) -> anyhow::Result<impl Stream<Item = anyhow::Result<NodeMessage>> + use<>> {
        let resp = self.http.get(self.node_url("assignments")).send().await?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(status_error(
                "watching assignments",
                status,
                resp.text().await.unwrap_or_default(),
            ));
        }
        let bytes = resp.bytes_stream().map_err(std::io::Error::other);
        let messages = FramedRead::new(StreamReader::new(bytes), Ndjson::<NodeMessage>::new());
        Ok(tokio_stream_timeout(messages, idle))
    }

    pub async fn answer(&self, command: u64, result: &CommandResult) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(self.node_url(&format!("commands/{command}")))
            .json(result)
            .send()
            .await?;
        if !resp.status().is_success() {
            anyhow::bail!("answering command {command}: {}", resp.status());
        }
        Ok(())
    }

    /// A component uploaded to the hub (unchecked: the caller checks its digest).
    pub async fn blob(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        let resp = self.http.get(self.url(&format!("blobs/{digest}"))).send().await?;
        if !resp.status().is_success() {
            anyhow::bail!("downloading {digest} from the controller: {}", resp.status());
        }
        Ok(resp.bytes().await?.to_vec())
    }

    /// The hub's answer for code compiled for `artifact`, once it is a success.
    pub async fn compiled(&self, artifact: &Digest, target: &str, engine: &str) -> anyhow::Result<reqwest::Response> {
        let url = self.url(&format!("compiled/{artifact}?target={target}&engine={engine}"));
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("asking the hub for compiled code: {e}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(status_error(
                &format!("the hub has no compiled code for {artifact}"),
                status,
                resp.text().await.unwrap_or_default(),
            ));
        }
        Ok(resp)
    }
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
    use bytes::BufMut;

    fn decode_all(chunks: &[&[u8]]) -> Vec<Result<NodeMessage, String>> {
        let mut codec = Ndjson::<NodeMessage>::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for c in chunks {
            buf.put_slice(c);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(m)) => out.push(Ok(m)),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e.to_string()));
                        break;
                    }
                }
            }
        }
        while let Ok(Some(m)) = codec.decode_eof(&mut buf) {
            out.push(Ok(m));
        }
        out
    }

    #[test]
    fn messages_split_across_chunks_are_reassembled_and_keepalives_skipped() {
        let got = decode_all(&[
            b"{}\n{\"node\":\"pi4\",\"plugins\":[]",
            b"}\n{}\n",
            b"{\"command\":{\"id\":7,\"plugin\":\"buzzer\",\"name\":\"triple\"}}",
            b"\n",
        ]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(&got[0], Ok(NodeMessage::Assignments(a)) if a.plugins.is_empty()));
        assert!(matches!(&got[1], Ok(NodeMessage::Command { command }) if command.id == 7 && command.name == "triple"));
    }

    #[test]
    fn a_line_that_is_not_a_message_is_an_error() {
        let got = decode_all(&[b"{\"plugins\": 5}\n"]);
        assert!(matches!(&got[..], [Err(e)] if e.contains("not a message")), "{got:?}");
    }

    #[test]
    fn a_line_past_the_bound_is_refused_before_it_is_held() {
        let mut codec = Ndjson::<NodeMessage>::new();
        let mut buf = BytesMut::new();
        buf.put_bytes(b'x', MAX_LINE + 1);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, NdjsonError::TooLong), "{err}");
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
