//! The Harvester controller (the hub). [`run`] is its composition root:
//! it opens the store, makes the metrics, starts the reconciler and serves
//! the API and the dashboard, handing each part what it needs.
//!
//! - `store`: desired state in sled, the event log for watches, blobs.
//! - `apply`: server-side apply: generations, digest pinning, optimistic
//!   concurrency, admission of exclusive grants.
//! - `reconciler/`: the level-triggered loop; `placement` (which plugins run
//!   where), `status` (conditions from facts), `events` (for `describe`).
//! - `http/`: the API by audience (`objects` for people, `nodes` for the
//!   node protocol, `ops`, `compiled`), its error shape, NDJSON streams,
//!   and the `dashboard`.
//! - `commands`: plugin commands fanned out to the nodes running the plugin.
//! - `compile`: code compiled for the nodes' targets, signed by the hub.
//! - `live`: logs, readings and LED frames the nodes push; commands to nodes.
//! - `metrics`: the hub's Prometheus metrics.

mod apply;
mod commands;
mod compile;
mod http;
mod live;
mod metrics;
mod reconciler;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub data: PathBuf,
    pub listen: SocketAddr,
    /// A node that has not sent a heartbeat for this long is NotReady.
    pub node_timeout: Duration,
    /// How often the reconciler runs when nothing changes.
    pub resync: Duration,
    /// How to reach OCI registries when resolving tags.
    pub registry: harvester_registry::RegistryOptions,
    /// Where the dashboard listens (none: no dashboard).
    pub dashboard: Option<SocketAddr>,
    /// The IANA time zone the dashboard shows times in.
    pub timezone: String,
    /// Memory for the nodes' recent log lines, all together.
    pub log_memory: usize,
    /// Compile components for nodes that ask (with the hub's signing key
    /// at this path, made on first start), or not at all.
    pub compile_key: Option<PathBuf>,
}

/// Opens the store, starts the reconciler and serves the API until `shutdown`.
pub async fn run(
    options: ControllerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.data)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", options.data.display()))?;
    let store = Arc::new(
        store::Store::open(&options.data.join("store"))
            .map_err(|e| anyhow::anyhow!("cannot open the store in {}: {e}", options.data.display()))?,
    );
    let metrics = Arc::new(metrics::Metrics::new());
    let reconciler = Arc::new(reconciler::Reconciler::new(
        store.clone(),
        metrics.clone(),
        options.node_timeout,
        options.resync,
    ));
    let worker = tokio::spawn(reconciler.clone().run());
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", options.listen))?;
    tracing::info!(
        "controller serving http://{} (data {}, revision {})",
        listener.local_addr()?,
        options.data.display(),
        store.resource_version()
    );
    let compiler = match &options.compile_key {
        Some(key) => {
            let c = compile::Compiler::new(&options.data.join("compiled"), key)?;
            tracing::info!(
                key = c.fingerprint(),
                "compiling components for nodes; nodes trust this hub's code with --trust-compiler {}",
                c.public_key().display()
            );
            Some(Arc::new(c))
        }
        None => None,
    };
    let api = http::Api {
        compiler,
        store,
        reconciler,
        metrics,
        registry: Arc::new(harvester_registry::Registry::new(options.registry.clone())),
        live: Arc::new(live::Live::new(options.log_memory)),
    };
    let live = api.live.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let dashboard = match options.dashboard {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("dashboard: cannot listen on {addr}: {e}"))?;
            tracing::info!("dashboard on http://{}/", listener.local_addr()?);
            let app = http::dashboard::router(api.clone(), options.timezone.clone());
            let mut stopped = stopped.clone();
            Some(tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await
            }))
        }
        None => None,
    };
    let app = http::router(api);
    let shutdown = async move {
        shutdown.await;
        // Watches, log follows and the page's event streams end now, so the
        // servers do not wait for clients that never hang up.
        live.close();
        stop.send_replace(true);
    };
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    if let Some(d) = dashboard {
        d.await??;
    }
    worker.abort();
    Ok(())
}
