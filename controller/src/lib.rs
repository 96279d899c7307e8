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
//! - `identity/`: the hub CA, join tokens, node certificates, revocation,
//!   the admin credential; the TLS listener that says who is connecting.
//! - `commands`: plugin commands fanned out to the nodes running the plugin.
//! - `compile`: code compiled for the nodes' targets, signed by the hub.
//! - `live`: logs, readings and LED frames the nodes push; commands to nodes.
//! - `metrics`: the hub's Prometheus metrics.
//! - `backup`: a consistent snapshot of the store and the hub's own files,
//!   and restoring one into a new data folder.

pub use http::limits::ApiLimits;
pub use identity::listener::ConnectionLimits;

mod apply;
pub mod backup;
mod commands;
pub mod compile;
mod http;
mod identity;
mod live;
mod metrics;
mod reconciler;
pub(crate) mod rollout;
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
    /// The binary that runs each compile in a process of its own (the
    /// hub's own, with `compile::job::SUBCOMMAND`).
    pub compile_program: PathBuf,
    pub transport: Transport,
    /// How long a node certificate lives; nodes renew at two thirds.
    pub node_cert_lifetime: Duration,
    /// How long the audit trail keeps an entry (it also keeps at most
    /// `identity::audit::BUDGET` bytes of them).
    pub audit_retention: Duration,
    /// What clients may hold of the listeners.
    pub connections: ConnectionLimits,
    /// Requests, streams and Nodes each identity may take.
    pub api_limits: ApiLimits,
}

/// How the hub's listeners speak.
#[derive(Debug, Clone)]
pub enum Transport {
    /// TLS, with a server certificate from the hub CA for these names
    /// (DNS names or addresses) besides the usual local ones, or from
    /// the user's files (certificate chain, key).
    Tls {
        names: Vec<String>,
        files: Option<(PathBuf, PathBuf)>,
    },
    /// Plain HTTP without identities: loopback only, for development.
    PlainLoopback,
}

/// The names the hub's certificate carries: the local ones, the listen
/// address when it is a specific one, and the user's.
fn server_names(listen: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            names.push(host.to_string());
        }
    }
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// The names of the hub: the usual ones, the API's and the dashboard's
/// addresses, and the user's.
fn hub_names(options: &ControllerOptions, extra: &[String]) -> Vec<String> {
    let mut names = server_names(options.listen, extra);
    if let Some(d) = options.dashboard
        && !d.ip().is_unspecified()
    {
        names.push(d.ip().to_string());
    }
    names.sort();
    names.dedup();
    names
}

/// The URL the local admin reaches the hub at.
fn local_url(listen: SocketAddr) -> String {
    let host = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_string(),
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("https://{host}:{}", listen.port())
}

/// How often the hub sweeps uploaded components, and how long one nothing
/// names is kept after its upload.
const BLOB_SWEEP: Duration = Duration::from_secs(600);
const BLOB_GRACE_MS: u64 = 3_600_000;

/// Where the hub listens, TLS or (loopback only) plain.
struct Listening {
    tcp: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Listening {
    async fn bind(
        addr: SocketAddr,
        tls: Option<&Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<(Listening, SocketAddr)> {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let local = tcp.local_addr()?;
        Ok((Listening { tcp, tls: tls.cloned() }, local))
    }

    async fn serve(
        self,
        app: axum::Router,
        limits: ConnectionLimits,
        refused: prometheus::IntCounter,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        identity::listener::serve(self.tcp, self.tls, app, limits, refused, shutdown).await
    }
}

/// Raises this process's open-file limit to what the system allows: every
/// connection is a descriptor, and a soft limit of 1024 would cap the hub
/// below its own --max-connections.
fn raise_file_limit(limits: &ConnectionLimits) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if (n as usize) < limits.max_connections * 2 + 256 => tracing::warn!(
            "this process may open {n} files: fewer than the {} connections each listener may hold (--max-connections) need; raise the hard limit (LimitNOFILE=)",
            limits.max_connections
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}

/// Opens the store, starts the reconciler and serves the API until `shutdown`.
pub async fn run(
    options: ControllerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mended = harvester_api::files::private_folder(&options.data)
        .map_err(|e| anyhow::anyhow!("the data folder {}: {e}", options.data.display()))?;
    if let Some(was) = mended.folder_was {
        tracing::warn!(
            dir = %options.data.display(),
            "the hub's data folder was mode {was:o}, open to other users: now 0700, and {} entries in it owner-only (it holds the CA key, tokens' hashes and plugins' configuration)",
            mended.entries
        );
    }
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
    )?);
    // The names the hub is reached by: its certificate's, and the only
    // Host headers its dashboard answers.
    let hosts = match &options.transport {
        Transport::Tls { names, .. } => hub_names(&options, names),
        Transport::PlainLoopback => hub_names(&options, &[]),
    };
    let (identities, tls) = match &options.transport {
        Transport::PlainLoopback => {
            let loopback = |a: SocketAddr| a.ip().is_loopback();
            if !loopback(options.listen) || options.dashboard.is_some_and(|d| !loopback(d)) {
                anyhow::bail!(
                    "plain HTTP is for loopback only: listen on 127.0.0.1 or [::1], or leave out --insecure-plain-http"
                );
            }
            tracing::warn!("plain HTTP without identities: anyone on this machine is the admin");
            (None, None)
        }
        Transport::Tls { files, .. } => {
            let ids = identity::Identities::open(
                store.open_tree("identity")?,
                identity::audit::Audit::new(
                    store.open_tree("audit")?,
                    identity::audit::Keep {
                        age: options.audit_retention,
                        bytes: identity::audit::BUDGET,
                    },
                ),
                &options.data.join("pki"),
                &options.data.join("admin.yaml"),
                &local_url(options.listen),
                options.node_cert_lifetime,
                true,
            )?;
            let (chain, key) = match files {
                Some((cert, key)) => harvester_pki::tls::read_identity(cert, key)?,
                None => ids.ca().server_identity(&hosts)?,
            };
            let config = harvester_pki::tls::server_config(chain, key, ids.ca().cert_der())?;
            (Some(Arc::new(ids)), Some(config))
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let compiler = match &options.compile_key {
        Some(key) => {
            let c = compile::Compiler::new(&options.data.join("compiled"), key, options.compile_program.clone())?;
            tracing::info!(
                key = c.fingerprint(),
                "compiling components for nodes; nodes trust this hub's code with --trust-compiler {}",
                c.public_key().display()
            );
            Some(Arc::new(c))
        }
        None => None,
    };
    // Components uploaded by apply that no Plugin, retained revision or
    // node needs any more go after an hour's grace, swept every ten minutes.
    let collector = {
        let (reconciler, store, compiler, identities, panics) = (
            reconciler.clone(),
            store.clone(),
            compiler.clone(),
            identities.clone(),
            metrics.task_panics.clone(),
        );
        harvester_api::task::supervise(
            "collect",
            move |task| panics.with_label_values(&[task]).inc(),
            Duration::from_secs(1),
            move || {
                let (reconciler, store, compiler, identities) =
                    (reconciler.clone(), store.clone(), compiler.clone(), identities.clone());
                async move {
                    let mut every = tokio::time::interval(BLOB_SWEEP);
                    every.tick().await;
                    loop {
                        every.tick().await;
                        if let Some(ids) = identities.clone() {
                            match tokio::task::spawn_blocking(move || ids.collect_certificates()).await {
                                Ok(Ok(0)) => {}
                                Ok(Ok(n)) => {
                                    tracing::info!(records = n, "forgot certificates past their renewal grace")
                                }
                                Ok(Err(e)) => tracing::warn!("forgetting expired certificates: {e}"),
                                Err(e) => tracing::warn!("forgetting expired certificates: {e}"),
                            }
                        }
                        let keep = match reconciler.referenced_artifacts() {
                            Ok(keep) => keep,
                            Err(e) => {
                                tracing::warn!("collecting unneeded components: {e}");
                                continue;
                            }
                        };
                        match store.collect_blobs(&keep, harvester_api::now_ms(), BLOB_GRACE_MS).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!("deleted {n} uploaded components nothing needs any more"),
                            Err(e) => tracing::warn!("collecting unneeded components: {e}"),
                        }
                        let Some(compiler) = &compiler else { continue };
                        let before = std::time::SystemTime::now() - Duration::from_millis(BLOB_GRACE_MS);
                        match compiler.collect(&keep, before).await {
                            Ok(s) if s.entries == 0 => {}
                            Ok(s) => tracing::info!(
                                entries = s.entries,
                                mb = s.bytes >> 20,
                                "deleted compiled code and pulled components nothing needs any more"
                            ),
                            Err(e) => tracing::warn!("collecting compiled code: {e}"),
                        }
                    }
                }
            },
        )
    };
    // Refusals of callers without an identity, summed up once a minute;
    // entries past their age go even when nothing is written.
    let auditor = identities.clone().map(|ids| {
        let panics = metrics.task_panics.clone();
        harvester_api::task::supervise(
            "audit",
            move |task| panics.with_label_values(&[task]).inc(),
            Duration::from_secs(1),
            move || {
                let ids = ids.clone();
                async move {
                    let mut every = tokio::time::interval(Duration::from_secs(60));
                    every.tick().await;
                    loop {
                        every.tick().await;
                        let ids = ids.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            ids.audit().summarise_refusals();
                            ids.audit().prune(harvester_api::now_ms());
                        })
                        .await;
                    }
                }
            },
        )
    });
    let worker = {
        let (reconciler, panics) = (reconciler.clone(), metrics.task_panics.clone());
        harvester_api::task::supervise(
            "reconcile",
            move |task| panics.with_label_values(&[task]).inc(),
            Duration::from_secs(1),
            move || reconciler.clone().run(),
        )
    };
    raise_file_limit(&options.connections);
    let (listener, local) = Listening::bind(options.listen, tls.as_ref()).await?;
    tracing::info!(
        "controller serving {scheme}://{local} (data {}, revision {})",
        options.data.display(),
        store.resource_version()
    );
    if identities.is_some() {
        tracing::info!(
            "the admin's client configuration: HARVESTER_CONFIG={}",
            options.data.join("admin.yaml").display()
        );
    }
    let api = http::Api {
        compiler,
        store,
        reconciler,
        metrics,
        registry: Arc::new(harvester_registry::Registry::new(options.registry.clone())),
        live: Arc::new(live::Live::new(options.log_memory)),
        identities,
        timezone: options.timezone.as_str().into(),
        limits: Arc::new(http::limits::Limits::new(options.api_limits)),
        data: options.data.as_path().into(),
    };
    let live = api.live.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let dashboard = match options.dashboard {
        Some(addr) => {
            let (listener, local) = Listening::bind(addr, tls.as_ref())
                .await
                .map_err(|e| anyhow::anyhow!("dashboard: {e}"))?;
            tracing::info!("dashboard on {scheme}://{local}/");
            let app = http::dashboard::router(api.clone(), options.timezone.clone(), hosts.clone());
            let mut stopped = stopped.clone();
            let (limits, refused) = (options.connections, api.metrics.connections_refused.clone());
            Some(tokio::spawn(async move {
                listener
                    .serve(app, limits, refused, async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await
            }))
        }
        None => None,
    };
    let refused = api.metrics.connections_refused.clone();
    let app = http::router(api);
    let shutdown = async move {
        shutdown.await;
        // Watches, log follows and the page's event streams end now, so the
        // servers do not wait for clients that never hang up.
        live.close();
        stop.send_replace(true);
    };
    listener.serve(app, options.connections, refused, shutdown).await?;
    if let Some(d) = dashboard {
        d.await??;
    }
    worker.abort();
    collector.abort();
    if let Some(a) = auditor {
        a.abort();
    }
    Ok(())
}
