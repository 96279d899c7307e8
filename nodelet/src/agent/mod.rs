//! The nodelet's link to the controller: one outbound watch (it works behind
//! NAT), reconnecting with backoff. It runs what the controller assigns,
//! keeps the assignments and their components on local disk so it runs them
//! again after a restart even when the controller is down, and reports each
//! plugin's state upstream.
//!
//! - [`link`]: the node protocol, typed (NDJSON through a codec).
//! - [`fetch`]: getting an assignment's component and checking its signature.
//! - [`hub_code`]: code the hub compiled for this node: fetch, verify, store.
//! - [`converge`]: making the runtime match the assignments.
//! - [`status`]: the Node object and each plugin's state, as reported.
//! - [`failure`]: why an assignment does not run, final or worth retrying.
//! - [`collect`]: sweeping what no assignment needs off the board's storage.

mod collect;
mod converge;
mod failure;
mod fetch;
mod health;
mod hub_code;
pub(crate) mod identity;
pub(crate) mod link;
mod status;

use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::uplink::LogBuffer;
use converge::Converged;
use futures::StreamExt;
use harvester_api::live::{Command, CommandResult, NodeMessage};
use harvester_api::resources::{Assignments, Labels};
use harvester_registry::{BlobStore, Registry, RegistryOptions, TrustedKey};
use link::{HubLink, Reported};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct AgentOptions {
    /// `https://host:port` of the controller (`http://`: a development
    /// hub without identities).
    pub controller: String,
    /// For the first start: the join token to enrol with.
    pub join_token: Option<identity::JoinTokenSource>,
    pub name: String,
    pub labels: Labels,
    pub data_dir: PathBuf,
    /// How often the node reports (and so renews its lease).
    pub heartbeat: Duration,
    /// Where this node serves /status and /metrics, for the Node object.
    pub address: String,
    pub trust: TrustPolicy,
    pub registry: RegistryOptions,
    /// This node's log lines (its own and its plugins'), sent to the hub
    /// with the live report.
    pub logs: Option<Arc<LogBuffer>>,
    pub compile: CompileMode,
    /// How often what no assignment needs is swept off the disk (and how
    /// long ago it must have been written).
    pub collect_every: Duration,
    /// What plugins' `limits.memory` may add up to here (`None`: three
    /// quarters of the board's memory).
    pub plugin_memory: Option<harvester_api::MemorySize>,
}

/// Where this node's runnable code comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompileMode {
    /// Ask the hub for code it compiled (signed by a `--trust-compiler`
    /// key); compile here when it cannot help and this board has the memory.
    #[default]
    Auto,
    /// Only code from the hub: this board never runs the compiler.
    Hub,
    /// Always compile here.
    Local,
}

impl CompileMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CompileMode::Auto => "auto",
            CompileMode::Hub => "hub",
            CompileMode::Local => "local",
        }
    }
}

/// Below this much memory a board does not compile a component itself
/// (Cranelift needs ~350 MB for a Python one); a Pi Zero 2W has 512 MB.
pub(crate) const LOCAL_COMPILE_MIN_MEMORY: u64 = 1 << 30;

/// The board's memory and what plugins may have of it: `plugin_memory`,
/// or three quarters of the board's (the rest is the system's and the node's).
pub(crate) fn node_memory(
    plugin_memory: Option<harvester_api::MemorySize>,
) -> Option<harvester_api::resources::NodeMemory> {
    let total = total_memory().map(harvester_api::MemorySize).or(plugin_memory)?;
    Some(harvester_api::resources::NodeMemory {
        total,
        allocatable: plugin_memory.unwrap_or(harvester_api::MemorySize(total.bytes() / 4 * 3)),
    })
}

/// Whether the filesystem of `data` is almost full: under 5% of it, or
/// under 64 MiB, free for this process.
pub(crate) fn disk_pressure(data: &Path) -> bool {
    match rustix::fs::statvfs(data) {
        Ok(s) => {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            let total = s.f_blocks.saturating_mul(s.f_frsize);
            free < (total / 20).min(64 << 20)
        }
        Err(_) => false,
    }
}

/// The machine's memory, from /proc/meminfo.
pub(crate) fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What this node runs. Keys come from the node's own configuration, never
/// from the controller: a compromised hub cannot make a node run code.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    pub keys: Vec<TrustedKey>,
    /// Run components without a valid signature (development only). Digests
    /// are still checked.
    pub allow_unsigned: bool,
    /// Hub keys whose compiled code this node loads (`--trust-compiler`).
    pub compilers: Vec<TrustedKey>,
}

struct Agent {
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    opts: AgentOptions,
    link: HubLink,
    registry: Registry,
    store: BlobStore,
    converged: Converged,
    /// Revisions under a progressive rollout, judged here.
    guards: health::Guards,
    /// The latest assignments; one task converges on them.
    desired: tokio::sync::watch::Sender<Option<Assignments>>,
    /// The newest assignments could not be written (a full disk).
    unsaved: std::sync::atomic::AtomicBool,
    /// The status last sent, and when: an unchanged one is not sent again.
    last_report: Mutex<Option<(std::time::Instant, harvester_api::resources::NodeStatusV1)>>,
    report_now: tokio::sync::Notify,
}

/// An unchanged status is sent again this often all the same, so a hub
/// that lost it (restored from a backup) has it soon.
const STATUS_AT_LEAST_EVERY: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// State this node keeps as JSON at `path`: the newest copy, or the one
/// before it when a power cut or a worn card damaged the newest (said in
/// the log), or nothing.
pub(super) fn read_state<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Option<T> {
    let Some((value, copy)) = harvester_api::files::read_state(path, |b| serde_json::from_slice::<T>(b)) else {
        if path.exists() {
            tracing::warn!(path = %path.display(), "{what}: neither copy is usable; starting without");
        }
        return None;
    };
    if let harvester_api::files::StateCopy::Previous(why) = copy {
        tracing::warn!(path = %path.display(), "{what}: the newest copy is unusable ({why}); using the one before it");
    }
    Some(value)
}

fn assignments_path(data: &Path) -> PathBuf {
    data.join("assignments.json")
}

impl Agent {
    async fn register(&self) -> anyhow::Result<()> {
        // What the hub has now is what registering sends: the next report
        // sends the status whole.
        *lock(&self.last_report) = None;
        self.link.register(&self.node_object()).await
    }

    /// Sends the node's status when it changed (or a minute went by), else
    /// a bare heartbeat: the hub's lease on the node is renewed either way.
    async fn report(&self) -> anyhow::Result<()> {
        if self.unsaved.load(std::sync::atomic::Ordering::Relaxed) {
            self.keep_assignments().await;
        }
        let mut status = self.node_object().status;
        status.last_heartbeat = 0;
        let unchanged = {
            let last = lock(&self.last_report);
            last.as_ref()
                .is_some_and(|(at, sent)| *sent == status && at.elapsed() < STATUS_AT_LEAST_EVERY)
        };
        let reported = if unchanged {
            self.link.heartbeat().await?
        } else {
            status.last_heartbeat = harvester_api::now_ms();
            let r = self.link.report(&status).await?;
            status.last_heartbeat = 0;
            *lock(&self.last_report) = Some((std::time::Instant::now(), status));
            r
        };
        match reported {
            Reported::Accepted => Ok(()),
            // The controller lost us (a new store): register again.
            Reported::Unknown => {
                *lock(&self.last_report) = None;
                self.register().await
            }
        }
    }

    /// Writes the assignments that run now, which a full disk kept off it.
    async fn keep_assignments(&self) {
        let Some(assignments) = self.desired.borrow().clone() else {
            return;
        };
        let path = assignments_path(&self.opts.data_dir);
        let Ok(json) = serde_json::to_vec_pretty(&assignments) else {
            return;
        };
        let kept = crate::log_tap::spawn_blocking(move || harvester_api::files::write_state(&path, &json)).await;
        if matches!(kept, Ok(Ok(()))) {
            tracing::info!("the assignments are kept on disk again");
            self.unsaved.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A command from the hub (a dashboard button): run it, send the answer back.
    async fn run_command(&self, command: Command) {
        let rt = self.runtime.clone();
        let (plugin, name, args) = (command.plugin.clone(), command.name.clone(), command.args.clone());
        let outcome = crate::log_tap::spawn_blocking(move || rt.command(&plugin, &name, args)).await;
        let result = match outcome {
            Ok(Ok(message)) => CommandResult { ok: true, message },
            Ok(Err(e)) => CommandResult {
                ok: false,
                message: e.to_string(),
            },
            Err(e) => CommandResult {
                ok: false,
                message: e.to_string(),
            },
        };
        tracing::info!(
            plugin = command.plugin,
            command = command.name,
            ok = result.ok,
            "command from the hub: {}",
            result.message
        );
        if let Err(e) = self.link.answer(command.id, &result).await {
            tracing::warn!("could not answer command {}: {e:#}", command.id);
        }
    }

    /// One watch connection, until it drops.
    async fn watch_once(self: &Arc<Self>) -> anyhow::Result<()> {
        self.register().await?;
        let mut messages = Box::pin(self.link.watch(Duration::from_secs(30)).await?);
        tracing::info!(controller = self.opts.controller, "connected");
        while let Some(message) = messages.next().await {
            match message? {
                NodeMessage::Command { command } => {
                    let agent = self.clone();
                    crate::log_tap::spawn(async move { agent.run_command(command).await });
                }
                NodeMessage::Assignments(assignments) => {
                    let path = assignments_path(&self.opts.data_dir);
                    let json = serde_json::to_vec_pretty(&assignments)?;
                    let kept =
                        crate::log_tap::spawn_blocking(move || harvester_api::files::write_state(&path, &json)).await?;
                    // A full disk must not stop removals and config changes:
                    // they are applied all the same, and kept once it can
                    // (each report tries again).
                    if let Err(e) = &kept {
                        tracing::warn!(
                            "cannot keep the new assignments on disk ({e}); applying them all the same (a restart before space is freed runs the previous ones)"
                        );
                    }
                    self.unsaved.store(kept.is_err(), std::sync::atomic::Ordering::Relaxed);
                    self.desired.send_replace(Some(assignments));
                }
            }
        }
        anyhow::bail!("the controller closed the watch")
    }
}

/// Runs the agent until `shutdown`, with the node's metrics handed in.
pub(crate) async fn run(
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    opts: AgentOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if opts.trust.allow_unsigned {
        tracing::warn!("--allow-unsigned: this node RUNS UNSIGNED COMPONENTS; use it for development only");
    } else if opts.trust.keys.is_empty() {
        tracing::warn!("this node trusts no signing key: every plugin will be refused; pass --trust-key FILE");
    }
    for k in &opts.trust.keys {
        tracing::info!(key = k.fingerprint, file = %k.path.display(), "trusting signatures by this key");
    }
    let me = if opts.controller.starts_with("http://") {
        tracing::warn!("the controller is plain HTTP: no identity, nothing encrypted; for development only");
        None
    } else {
        Some(identity::establish(&opts.controller, &opts.name, &opts.data_dir, opts.join_token.as_ref()).await?)
    };
    let agent = Arc::new(Agent {
        runtime,
        metrics,
        link: HubLink::new(&opts.controller, &opts.name, me.as_ref())?,
        registry: Registry::new(opts.registry.clone()),
        store: BlobStore::new(opts.data_dir.join("blobs")),
        guards: health::Guards::load(opts.data_dir.join("rollbacks.json")),
        opts,
        converged: Converged::default(),
        desired: tokio::sync::watch::channel(None).0,
        last_report: Mutex::new(None),
        unsaved: std::sync::atomic::AtomicBool::new(false),
        report_now: tokio::sync::Notify::new(),
    });

    // Edge autonomy: whatever ran before the restart runs again, from disk.
    if let Some(last) = read_state::<Assignments>(&assignments_path(&agent.opts.data_dir), "the last assignments") {
        tracing::info!(plugins = last.plugins.len(), "running the last known assignments");
        agent.desired.send_replace(Some(last));
    }

    // Each runs under a supervisor: a panic is logged, counted and the task
    // started again, so one bug never leaves a board without its link,
    // reports or plugins.
    let supervised = |name: &'static str, f: fn(Arc<Agent>) -> futures::future::BoxFuture<'static, ()>| {
        let (agent, panics) = (agent.clone(), agent.metrics.task_panics.clone());
        harvester_api::task::supervise(
            name,
            move |task| panics.with_label_values(&[task]).inc(),
            Duration::from_secs(1),
            move || f(agent.clone()),
        )
    };
    let converger = supervised("converge", |a| Box::pin(converge::run(a)));
    let judge = supervised("health", |agent| {
        Box::pin(async move {
            let mut every = tokio::time::interval(health::CHECK_EVERY);
            loop {
                every.tick().await;
                if agent.guards.check(&agent.runtime) {
                    // Converge again: the failed revision's fallback runs.
                    agent.desired.send_modify(|_| {});
                    agent.report_now.notify_one();
                }
            }
        })
    });
    let reporter = supervised("report", |a| Box::pin(status::run(a)));
    let collector = supervised("collect", |a| {
        let every = a.opts.collect_every.max(Duration::from_secs(1));
        Box::pin(collect::run(a, every))
    });
    let renewer = me.map(|me| {
        let (agent, panics) = (agent.clone(), agent.metrics.task_panics.clone());
        harvester_api::task::supervise(
            "renew",
            move |task| panics.with_label_values(&[task]).inc(),
            Duration::from_secs(1),
            move || renew(agent.clone(), me.clone()),
        )
    });
    let uplink = supervised("uplink", |agent| {
        Box::pin(crate::uplink::run(
            {
                let agent = agent.clone();
                move || agent.link.http()
            },
            agent.link.live_url(),
            agent.runtime.clone(),
            agent.opts.logs.clone(),
        ))
    });
    let watcher = supervised("watch", |agent| {
        Box::pin(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                let started = std::time::Instant::now();
                // Full jitter: after a hub restart a whole fleet reconnects
                // spread over the wait, not all at once.
                let outcome = agent.watch_once().await;
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(250);
                }
                let wait = harvester_api::jitter(backoff);
                if let Err(e) = outcome {
                    tracing::warn!(
                        controller = agent.opts.controller,
                        "watch ended: {e:#}{}; retrying in {wait:?}",
                        link::tls_hint(&e)
                    );
                }
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    });

    shutdown.await;
    if let Some(r) = renewer {
        r.abort();
    }
    watcher.abort();
    uplink.abort();
    reporter.abort();
    collector.abort();
    judge.abort();
    converger.abort();
    let rt = agent.runtime.clone();
    let _ = crate::log_tap::spawn_blocking(move || rt.shutdown()).await;
    Ok(())
}

/// Renews the node's certificate at two thirds of its life, for as long
/// as the agent runs; a failed attempt is retried with backoff.
async fn renew(agent: Arc<Agent>, mut me: identity::NodeIdentity) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let wait = me
            .cert
            .renew_at()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            // Never a tight loop, whatever the clock says.
            .max(Duration::from_secs(1));
        tokio::time::sleep(wait).await;
        let http = agent.link.http();
        match identity::renew(
            &http,
            &agent.opts.controller,
            &agent.opts.name,
            &agent.opts.data_dir,
            &me,
        )
        .await
        {
            Ok(renewed) => match agent.link.set_identity(&renewed) {
                Ok(()) => {
                    tracing::info!(
                        serial = renewed.cert.serial,
                        "renewed this board's certificate, valid until {}",
                        harvester_pki::rfc3339(renewed.cert.not_after)
                    );
                    me = renewed;
                    backoff = Duration::from_secs(1);
                }
                Err(e) => tracing::error!("cannot use the renewed certificate: {e:#}"),
            },
            Err(e) => {
                tracing::warn!("renewing this board's certificate: {e:#}; retrying in {backoff:?}");
                tokio::time::sleep(harvester_api::jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}
