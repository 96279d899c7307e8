//! The Harvester controller (the hub).
//!
//! - [`store`]: desired state in sled, the event log for watches, blobs.
//! - [`apply`]: server-side apply: generations, digest pinning, optimistic concurrency.
//! - [`reconciler`]: placement, Plugin and Node status, heartbeat leases.
//! - [`server`]: the HTTP API, `/metrics` and Prometheus service discovery.
//! - [`metrics`]: the hub's Prometheus metrics.

pub mod apply;
pub mod metrics;
pub mod reconciler;
pub mod server;
pub mod store;

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
    let reconciler = Arc::new(reconciler::Reconciler::new(
        store.clone(),
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
    let app = server::router(server::Api {
        store,
        reconciler,
        registry: Arc::new(harvester_registry::Registry::new(options.registry.clone())),
    });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    worker.abort();
    Ok(())
}
