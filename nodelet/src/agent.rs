//! The nodelet's link to the controller: one outbound watch (it works behind
//! NAT), reconnecting with backoff. It runs what the controller assigns,
//! keeps the assignments and their components on local disk so it runs them
//! again after a restart even when the controller is down, and reports each
//! plugin's state upstream.

use crate::events::{EventKind, Phase};
use crate::runtime::{PluginSpec, Runtime};
use futures::StreamExt;
use harvester_api::Digest;
use harvester_api::live::{Command, CommandResult, NodeMessage};
use harvester_api::resources::{
    API_VERSION, Assignment, Assignments, Labels, Node, NodeStatusV1, ObjectMeta, PluginOnNode, is_local_path,
};
use harvester_registry::{BlobStore, PullError, Refusal, Registry, RegistryOptions, TrustedKey, parse_reference};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `http://host:port` of the controller.
    pub controller: String,
    pub name: String,
    pub labels: Labels,
    pub data_dir: PathBuf,
    /// How often the node reports (and so renews its lease).
    pub heartbeat: Duration,
    /// Where this node serves /status and /metrics, for the Node object.
    pub address: String,
    pub trust: TrustPolicy,
    pub registry: RegistryOptions,
    /// This process's log lines, sent to the hub with the live report.
    pub logs: Option<Arc<crate::uplink::LogBuffer>>,
}

/// What this node runs. Keys come from the node's own configuration, never
/// from the controller: a compromised hub cannot make a node run code.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    pub keys: Vec<TrustedKey>,
    /// Run components without a valid signature (development only). Digests
    /// are still checked.
    pub allow_unsigned: bool,
}

/// Why an assignment is not running as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    generation: u64,
    reason: &'static str,
    message: String,
    /// Set for refusals, counted in harvester_signature_refusals_total.
    refusal: Option<&'static str>,
}

impl Failure {
    fn refused(generation: u64, r: &Refusal) -> Failure {
        Failure {
            generation,
            reason: r.reason(),
            message: r.to_string(),
            refusal: Some(r.label()),
        }
    }

    fn transient(generation: u64, reason: &'static str, e: impl std::fmt::Display) -> Failure {
        Failure {
            generation,
            reason,
            message: e.to_string(),
            refusal: None,
        }
    }
}

/// The version of a plugin this agent handed to the runtime.
#[derive(Debug, Clone, Copy)]
struct Applied {
    generation: u64,
    /// The artifact the controller assigned (a manifest digest for OCI images).
    artifact: Digest,
    /// The component bytes' digest, as the runtime reports it.
    component: Digest,
    unsigned: bool,
}

/// Recorded when a signature checked out, so a restart with the registry
/// down runs the same verified bytes from the local store.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct VerifiedRecord {
    repository: String,
    key: String,
}

struct Agent {
    runtime: Arc<Runtime>,
    opts: AgentOptions,
    http: reqwest::Client,
    registry: Registry,
    store: BlobStore,
    /// Versions the controller asked for that are not running, and why.
    failures: Mutex<BTreeMap<String, Failure>>,
    applied: Mutex<BTreeMap<String, Applied>>,
    /// The latest assignments; one task converges on them.
    desired: tokio::sync::watch::Sender<Option<Assignments>>,
    report_now: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn verified_path(data: &Path, digest: &Digest) -> PathBuf {
    data.join("verified").join(format!("{}.json", digest.hex()))
}

fn assignments_path(data: &Path) -> PathBuf {
    data.join("assignments.json")
}

impl Agent {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1alpha1/{path}", self.opts.controller.trim_end_matches('/'))
    }

    /// A component uploaded to the controller: from the local store, else
    /// downloaded and checked against its digest.
    async fn controller_blob(&self, a: &Assignment) -> Result<Vec<u8>, Failure> {
        let digest = a.digest;
        let store = self.store.clone();
        let local = tokio::task::spawn_blocking(move || store.get(&digest))
            .await
            .map_err(|e| Failure::transient(a.generation, "PullFailed", e))?
            .map_err(|e| Failure::transient(a.generation, "PullFailed", format!("local store: {e}")))?;
        if let Some(bytes) = local {
            return Ok(bytes);
        }
        let fetch = async {
            let resp = self.http.get(self.url(&format!("blobs/{digest}"))).send().await?;
            if !resp.status().is_success() {
                anyhow::bail!("downloading {digest} from the controller: {}", resp.status());
            }
            Ok(resp.bytes().await?.to_vec())
        };
        let bytes = fetch
            .await
            .map_err(|e: anyhow::Error| Failure::transient(a.generation, "PullFailed", format!("{e:#}")))?;
        let actual = Digest::of(&bytes);
        if actual != digest {
            return Err(Failure::refused(
                a.generation,
                &Refusal::DigestMismatch {
                    what: format!("component {digest} from the controller"),
                    expected: digest,
                    actual,
                },
            ));
        }
        let store = self.store.clone();
        let b = bytes.clone();
        tokio::task::spawn_blocking(move || store.put(&digest, &b))
            .await
            .map_err(|e| Failure::transient(a.generation, "PullFailed", e))?
            .map_err(|e| Failure::transient(a.generation, "PullFailed", format!("local store: {e}")))?;
        Ok(bytes)
    }

    /// An OCI image pinned by digest: its signature checked against this
    /// node's keys (once; remembered for restarts), then its bytes pulled
    /// and checked. Returns the component and whether it runs unsigned.
    async fn oci_artifact(&self, a: &Assignment) -> Result<(Vec<u8>, bool), Failure> {
        let g = a.generation;
        let reference = parse_reference(&a.image).map_err(|e| Failure {
            generation: g,
            reason: "InvalidArtifact",
            message: format!("{e:#}"),
            refusal: None,
        })?;
        let repository = harvester_registry::repository(&reference);
        let record_path = verified_path(&self.opts.data_dir, &a.digest);
        let trusted_before = std::fs::read(&record_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<VerifiedRecord>(&b).ok())
            .is_some_and(|r| r.repository == repository && self.opts.trust.keys.iter().any(|k| k.fingerprint == r.key));
        let mut unsigned = false;
        let mut verified = None;
        let metrics = self.runtime.metrics();
        if !trusted_before {
            let started = std::time::Instant::now();
            let outcome = self.registry.verify(&reference, &a.digest, &self.opts.trust.keys).await;
            metrics
                .fetch_seconds
                .with_label_values(&["verify"])
                .observe(started.elapsed().as_secs_f64());
            match outcome {
                Ok(v) => verified = Some(v),
                Err(PullError::Refused(r)) if self.opts.trust.allow_unsigned && r.reason() == "SignatureInvalid" => {
                    tracing::warn!(
                        plugin = a.name,
                        "RUNNING UNVERIFIED CODE because of --allow-unsigned: {r}"
                    );
                    unsigned = true;
                }
                Err(PullError::Refused(r)) => return Err(Failure::refused(g, &r)),
                Err(PullError::Registry(e)) => return Err(Failure::transient(g, "PullFailed", format!("{e:#}"))),
            }
        }
        let started = std::time::Instant::now();
        let pulled = self
            .registry
            .pull(&reference, &a.digest, &self.store, &indicatif::ProgressBar::hidden())
            .await;
        metrics
            .fetch_seconds
            .with_label_values(&["pull"])
            .observe(started.elapsed().as_secs_f64());
        let bytes = pulled.map_err(|e| match e {
            PullError::Refused(r) => Failure::refused(g, &r),
            PullError::Registry(e) => Failure::transient(g, "PullFailed", format!("{e:#}")),
        })?;
        if let Some(v) = verified {
            tracing::info!(plugin = a.name, image = %a.image, digest = %a.digest, key = v.key, "signature verified");
            let record = serde_json::to_vec(&VerifiedRecord { repository, key: v.key })
                .map_err(|e| Failure::transient(g, "PullFailed", e))?;
            let _ = harvester_registry::store::write_atomic(&record_path, &record);
        }
        Ok((bytes, unsigned))
    }

    /// Makes the runtime match `assignments`. Returns whether something
    /// could not be done (and is worth retrying).
    async fn converge(&self, assignments: &Assignments) -> bool {
        for a in &assignments.plugins {
            match self.run_assignment(a).await {
                Ok(()) => {
                    lock(&self.failures).remove(&a.name);
                }
                Err(f) => {
                    let mut failures = lock(&self.failures);
                    // Retries repeat the same failure: log and count it once.
                    if failures.get(&a.name) != Some(&f) {
                        tracing::error!(
                            plugin = a.name,
                            generation = a.generation,
                            reason = f.reason,
                            "{}",
                            f.message
                        );
                        if let Some(label) = f.refusal {
                            self.runtime
                                .metrics()
                                .refusals
                                .with_label_values(&[&a.name, label])
                                .inc();
                        }
                        failures.insert(a.name.clone(), f);
                    }
                }
            }
        }
        let wanted: Vec<&str> = assignments.plugins.iter().map(|a| a.name.as_str()).collect();
        lock(&self.failures).retain(|name, _| wanted.contains(&name.as_str()));
        for name in self.runtime.plugin_names() {
            if !wanted.contains(&name.as_str()) {
                lock(&self.applied).remove(&name);
                let rt = self.runtime.clone();
                let _ = tokio::task::spawn_blocking(move || rt.remove(&name)).await;
            }
        }
        self.report_now.notify_one();
        // The same bytes and config fail to load the same way every time;
        // a registry may come back, and a signature may be added.
        lock(&self.failures).values().any(|f| f.reason != "LoadFailed")
    }

    async fn run_assignment(&self, a: &Assignment) -> Result<(), Failure> {
        self.runtime.metrics().init_refusals(&a.name);
        let applied = lock(&self.applied).get(&a.name).copied();
        if let (Some(s), Some(applied)) = (self.runtime.plugin_status(&a.name), applied)
            && applied.generation == a.generation
            && applied.artifact == a.digest
            && s.generation == a.generation
            && s.digest == Some(applied.component)
            && s.phase != Phase::Stopped
        {
            return Ok(());
        }
        let (bytes, unsigned) = if is_local_path(&a.image) {
            if !self.opts.trust.allow_unsigned {
                return Err(Failure::refused(
                    a.generation,
                    &Refusal::Unsigned {
                        image: format!("{} (a local component uploaded to the controller)", a.image),
                        tag: "-: push it with `harvester push --key` and apply the OCI reference, or start this node with --allow-unsigned".into(),
                    },
                ));
            }
            (self.controller_blob(a).await?, true)
        } else {
            self.oci_artifact(a).await?
        };
        let component = Digest::of(&bytes);
        let spec = PluginSpec {
            name: a.name.clone(),
            source: a.image.clone(),
            component: Arc::new(bytes),
            grants: a.grants.clone(),
            config: a.config.clone(),
            tick_interval: a.tick_interval,
            limits: a.limits,
            generation: Some(a.generation),
        };
        let rt = self.runtime.clone();
        tokio::task::spawn_blocking(move || rt.apply(spec))
            .await
            .map_err(|e| Failure::transient(a.generation, "LoadFailed", e))?
            .map_err(|e| Failure::transient(a.generation, "LoadFailed", format!("{e:#}")))?;
        lock(&self.applied).insert(
            a.name.clone(),
            Applied {
                generation: a.generation,
                artifact: a.digest,
                component,
                unsigned,
            },
        );
        Ok(())
    }

    fn node_object(&self) -> Node {
        let inv = self.runtime.hardware().inventory();
        Node {
            api_version: API_VERSION.into(),
            kind: "Node".into(),
            metadata: ObjectMeta {
                name: self.opts.name.clone(),
                labels: self.opts.labels.clone(),
                ..ObjectMeta::default()
            },
            status: NodeStatusV1 {
                architecture: std::env::consts::ARCH.into(),
                backend: inv.backend,
                devices: inv.devices,
                led_count: inv.led_count,
                address: self.opts.address.clone(),
                trusted_keys: self.opts.trust.keys.iter().map(|k| k.fingerprint.clone()).collect(),
                allow_unsigned: self.opts.trust.allow_unsigned,
                last_heartbeat: crate::now_ms(),
                plugins: self.plugin_states(),
                conditions: Vec::new(),
            },
        }
    }

    fn plugin_states(&self) -> BTreeMap<String, PluginOnNode> {
        let failures = lock(&self.failures).clone();
        let applied = lock(&self.applied).clone();
        let mut out = BTreeMap::new();
        for s in self.runtime.status() {
            let ours = applied.get(&s.name).filter(|a| s.digest == Some(a.component));
            let (reason, message) = match (s.phase, failures.get(&s.name)) {
                (_, Some(f)) => (f.reason.to_string(), f.message.clone()),
                (Phase::Failed | Phase::CrashLoopBackOff | Phase::Restarting, _) => {
                    (String::new(), s.last_error.clone().unwrap_or_default())
                }
                _ if ours.is_some_and(|a| a.unsigned) => (
                    "Unsigned".to_string(),
                    "running a component without a valid signature: this node was started with --allow-unsigned".into(),
                ),
                _ => (String::new(), String::new()),
            };
            out.insert(
                s.name.clone(),
                PluginOnNode {
                    phase: format!("{:?}", s.phase),
                    generation: s.generation,
                    // The artifact digest the controller knows, not the layer's.
                    digest: ours.map(|a| a.artifact).or(s.digest),
                    restarts: s.restarts,
                    reason,
                    message,
                },
            );
        }
        // Refused before anything ever ran here.
        for (name, f) in failures {
            out.entry(name).or_insert(PluginOnNode {
                phase: "Failed".into(),
                generation: 0,
                digest: None,
                restarts: 0,
                reason: f.reason.to_string(),
                message: f.message,
            });
        }
        out
    }

    async fn register(&self) -> anyhow::Result<()> {
        let resp = self
            .http
            .put(self.url(&format!("nodes/{}/register", self.opts.name)))
            .json(&self.node_object())
            .send()
            .await?;
        if !resp.status().is_success() {
            anyhow::bail!(
                "registering: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    async fn report(&self) -> anyhow::Result<()> {
        let status = self.node_object().status;
        let resp = self
            .http
            .put(self.url(&format!("nodes/{}/status", self.opts.name)))
            .json(&status)
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            // The controller lost us (a new store): register again.
            self.register().await?;
        } else if !resp.status().is_success() {
            anyhow::bail!("reporting status: {}", resp.status());
        }
        Ok(())
    }

    /// A command from the hub (a dashboard button): run it, send the answer back.
    async fn run_command(&self, command: Command) {
        let rt = self.runtime.clone();
        let (plugin, name, args) = (command.plugin.clone(), command.name.clone(), command.args.clone());
        let outcome = tokio::task::spawn_blocking(move || rt.command(&plugin, &name, args)).await;
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
        let url = self.url(&format!("nodes/{}/commands/{}", self.opts.name, command.id));
        if let Err(e) = self.http.post(url).json(&result).send().await {
            tracing::warn!("could not answer command {}: {e}", command.id);
        }
    }

    /// One watch connection, until it drops.
    async fn watch_once(self: &Arc<Self>) -> anyhow::Result<()> {
        self.register().await?;
        let resp = self
            .http
            .get(self.url(&format!("nodes/{}/assignments", self.opts.name)))
            .send()
            .await?;
        if !resp.status().is_success() {
            anyhow::bail!("watching assignments: {}", resp.status());
        }
        tracing::info!(controller = self.opts.controller, "connected");
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        // Keepalives arrive every 10 s; silence for three times that means
        // the connection is dead even if TCP has not noticed.
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), body.next()).await? {
            buf.extend_from_slice(&chunk?);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let value: serde_json::Value = serde_json::from_slice(&line)?;
                if value.as_object().is_some_and(|o| o.is_empty()) {
                    continue;
                }
                let assignments = match serde_json::from_value(value)? {
                    NodeMessage::Assignments(a) => a,
                    NodeMessage::Command { command } => {
                        let agent = self.clone();
                        tokio::spawn(async move { agent.run_command(command).await });
                        continue;
                    }
                };
                let path = assignments_path(&self.opts.data_dir);
                let json = serde_json::to_vec_pretty(&assignments)?;
                tokio::task::spawn_blocking(move || harvester_registry::store::write_atomic(&path, &json)).await??;
                self.desired.send_replace(Some(assignments));
            }
        }
        anyhow::bail!("the controller closed the watch")
    }
}

/// Runs the agent until `shutdown`.
pub async fn run(
    runtime: Arc<Runtime>,
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
    let agent = Arc::new(Agent {
        runtime,
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?,
        registry: Registry::new(opts.registry.clone()),
        store: BlobStore::new(opts.data_dir.join("blobs")),
        opts,
        failures: Mutex::new(BTreeMap::new()),
        applied: Mutex::new(BTreeMap::new()),
        desired: tokio::sync::watch::channel(None).0,
        report_now: tokio::sync::Notify::new(),
    });

    // Edge autonomy: whatever ran before the restart runs again, from disk.
    if let Ok(text) = std::fs::read(assignments_path(&agent.opts.data_dir)) {
        match serde_json::from_slice::<Assignments>(&text) {
            Ok(last) => {
                tracing::info!(plugins = last.plugins.len(), "running the last known assignments");
                agent.desired.send_replace(Some(last));
            }
            Err(e) => tracing::warn!("ignoring unreadable last assignments: {e}"),
        }
    }

    // One task converges, so a slow pull or compile never stalls the watch;
    // what failed is retried with backoff (a registry back up, a signature
    // added later).
    let converger = {
        let agent = agent.clone();
        let mut desired = agent.desired.subscribe();
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let current = desired.borrow_and_update().clone();
                let retry = match &current {
                    Some(a) => agent.converge(a).await,
                    None => false,
                };
                if retry {
                    tokio::select! {
                        changed = desired.changed() => {
                            if changed.is_err() { break }
                            backoff = Duration::from_secs(1);
                        }
                        _ = tokio::time::sleep(backoff) => {
                            backoff = (backoff * 2).min(Duration::from_secs(15));
                        }
                    }
                } else {
                    backoff = Duration::from_secs(1);
                    if desired.changed().await.is_err() {
                        break;
                    }
                }
            }
        })
    };

    let reporter = {
        let agent = agent.clone();
        let mut events = agent.runtime.subscribe();
        tokio::spawn(async move {
            // One interval for the whole loop: telemetry arrives far more
            // often than heartbeats and must not keep postponing them.
            let mut beat = tokio::time::interval(agent.opts.heartbeat);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = beat.tick() => {}
                    _ = agent.report_now.notified() => {}
                    ev = events.recv() => {
                        if let Ok(ev) = ev && matches!(ev.kind, EventKind::Telemetry { .. } | EventKind::Log { .. } | EventKind::Buzzer { .. }) {
                            continue;
                        }
                        // Let a burst of state changes settle into one report.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                if let Err(e) = agent.report().await {
                    tracing::debug!("status report failed: {e:#}");
                }
            }
        })
    };

    let uplink = tokio::spawn(crate::uplink::run(
        agent.http.clone(),
        agent.url(&format!("nodes/{}/live", agent.opts.name)),
        agent.runtime.clone(),
        agent.opts.logs.clone(),
    ));

    let watcher = {
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                let started = std::time::Instant::now();
                if let Err(e) = agent.watch_once().await {
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = Duration::from_millis(250);
                    }
                    tracing::warn!(
                        controller = agent.opts.controller,
                        "watch ended: {e:#}; retrying in {backoff:?}"
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    };

    shutdown.await;
    watcher.abort();
    uplink.abort();
    reporter.abort();
    converger.abort();
    let rt = agent.runtime.clone();
    let _ = tokio::task::spawn_blocking(move || rt.shutdown()).await;
    Ok(())
}
