//! Long-lived answers, one JSON document per line (watches, log follows,
//! a node's assignment stream): fed by a task that stops when the client
//! goes away, ended when the hub shuts down or the caller's access ends
//! (a user deleted, a node revoked), kept open by `{}` keepalives.

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::time::Duration;

/// How often an idle stream says `{}` so proxies and clients see it alive.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(10);

pub(crate) type Line = Result<Bytes, Infallible>;

pub(crate) fn line(v: &impl serde::Serialize) -> Line {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    Ok(Bytes::from(line))
}

pub(crate) fn keepalive() -> Line {
    Ok(Bytes::from_static(b"{}\n"))
}

/// The answer: lines from `f`, which sends into the channel it is given
/// and returns when the client is gone or it has nothing more to say.
/// It ends at once when the hub is `closing` or the caller is `gone`.
pub(crate) fn response<F, Fut>(
    closing: tokio::sync::watch::Receiver<bool>,
    gone: tokio_util::sync::CancellationToken,
    slot: super::limits::StreamSlot,
    f: F,
) -> Response
where
    F: FnOnce(tokio::sync::mpsc::Sender<Line>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    // The slot is held as long as the stream is: it counts against the
    // caller's open streams until the answer ends.
    let stream = futures::stream::unfold(
        (rx, closing, gone, slot),
        |(mut rx, mut closing, gone, slot)| async move {
            let item = tokio::select! {
                item = rx.recv() => item,
                _ = closing.wait_for(|c| *c) => None,
                _ = gone.cancelled() => None,
            };
            item.map(|item| (item, (rx, closing, gone, slot)))
        },
    );
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}
