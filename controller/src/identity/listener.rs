//! The hub's listeners: TLS with optional client certificates, or plain
//! HTTP on loopback when asked for, served by hyper with bounds a client
//! cannot talk its way past: at most `max_connections` open at once (more
//! are closed as they arrive, so the hub keeps its memory and descriptors),
//! a TLS handshake within `handshake_timeout`, and each request's headers
//! (including the wait for the next request on a kept-alive connection)
//! within `header_timeout`. Handshakes run concurrently: one that never
//! finishes holds only its own connection. Each request knows its [`Peer`].

use axum::body::Body;
use axum::extract::ConnectInfo;
use harvester_pki::CertInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    /// The client certificate it presented, verified against the hub CA.
    pub cert: Option<CertInfo>,
}

/// What one client may hold of the hub's listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, on each listener.
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// For a request's headers, and for the next request on an idle
    /// kept-alive connection. Streams already answering are not cut.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `tcp` (TLS when `tls` is given) until `shutdown`, then
/// lets every open connection finish what it is answering.
pub(crate) async fn serve(
    tcp: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    limits: ConnectionLimits,
    refused: prometheus::IntCounter,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (close, closing) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait, then go on.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.inc();
            tracing::debug!(%addr, "connection closed: {} already open", limits.max_connections);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, acceptor, closing) = (app.clone(), acceptor.clone(), closing.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%addr, "TLS handshake timed out");
                            return;
                        }
                    };
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| CertInfo::of_der(c).ok());
                    connection(TokioIo::new(tls), Peer { addr, cert }, app, limits, closing).await;
                }
                None => connection(TokioIo::new(stream), Peer { addr, cert: None }, app, limits, closing).await,
            }
        });
    }
    drop(closing);
    let _ = close.send(());
    close.closed().await;
    Ok(())
}

/// One connection's requests, each carrying the peer as `ConnectInfo`.
async fn connection<I>(
    io: TokioIo<I>,
    peer: Peer,
    app: axum::Router,
    limits: ConnectionLimits,
    mut closing: watch::Receiver<()>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = tower::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer.clone()));
        tower::ServiceExt::oneshot(app.clone(), request.map(Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, TowerToHyperService::new(service));
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = closing.changed() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
