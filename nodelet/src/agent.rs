//! The nodelet's link to the controller: one outbound watch (it works behind
//! NAT), reconnecting with backoff. It runs what the controller assigns,
//! keeps the assignments and their components on local disk so it runs them
//! again after a restart even when the controller is down, and reports each
//! plugin's state upstream.

use crate::events::{EventKind, Phase};
use crate::runtime::{PluginSpec, Runtime};
use futures::StreamExt;
use harvester_api::Digest;
use harvester_api::resources::{
    API_VERSION, Assignment, Assignments, Labels, Node, NodeStatusV1, ObjectMeta, PluginOnNode,
};
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
}

struct Agent {
    runtime: Arc<Runtime>,
    opts: AgentOptions,
    http: reqwest::Client,
    /// Load errors of versions the controller asked for but that did not start.
    load_errors: Mutex<BTreeMap<String, (u64, String)>>,
    report_now: tokio::sync::Notify,
}

fn artifact_path(data: &Path, digest: &Digest) -> PathBuf {
    data.join("artifacts").join(format!("{}.wasm", digest.hex()))
}

fn assignments_path(data: &Path) -> PathBuf {
    data.join("assignments.json")
}

/// Writes via a temporary file and rename, so a crash never leaves half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl Agent {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1alpha1/{path}", self.opts.controller.trim_end_matches('/'))
    }

    /// The component for `digest`: from the local store (checked against its
    /// digest), else downloaded from the controller and checked.
    async fn artifact(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        let path = artifact_path(&self.opts.data_dir, digest);
        if let Ok(bytes) = tokio::fs::read(&path).await {
            if &Digest::of(&bytes) == digest {
                return Ok(bytes);
            }
            tracing::warn!(path = %path.display(), "local artifact does not match its digest; fetching it again");
        }
        let resp = self.http.get(self.url(&format!("blobs/{digest}"))).send().await?;
        if !resp.status().is_success() {
            anyhow::bail!("downloading {digest}: {}", resp.status());
        }
        let bytes = resp.bytes().await?.to_vec();
        let actual = Digest::of(&bytes);
        if &actual != digest {
            anyhow::bail!("downloaded bytes for {digest} have digest {actual}: refusing them");
        }
        let p = path.clone();
        let b = bytes.clone();
        tokio::task::spawn_blocking(move || write_atomic(&p, &b)).await??;
        Ok(bytes)
    }

    /// Makes the runtime match `assignments`.
    async fn converge(&self, assignments: &Assignments) {
        for a in &assignments.plugins {
            if let Err(e) = self.run_assignment(a).await {
                tracing::error!(plugin = a.name, generation = a.generation, "{e:#}");
                self.load_errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(a.name.clone(), (a.generation, format!("{e:#}")));
            } else {
                self.load_errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&a.name);
            }
        }
        let wanted: Vec<&str> = assignments.plugins.iter().map(|a| a.name.as_str()).collect();
        for name in self.runtime.plugin_names() {
            if !wanted.contains(&name.as_str()) {
                let rt = self.runtime.clone();
                let _ = tokio::task::spawn_blocking(move || rt.remove(&name)).await;
            }
        }
        self.report_now.notify_one();
    }

    async fn run_assignment(&self, a: &Assignment) -> anyhow::Result<()> {
        if let Some(s) = self.runtime.plugin_status(&a.name)
            && s.generation == a.generation
            && s.digest == Some(a.digest)
            && s.phase != Phase::Stopped
        {
            return Ok(());
        }
        let bytes = self.artifact(&a.digest).await?;
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
        tokio::task::spawn_blocking(move || rt.apply(spec)).await??;
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
                last_heartbeat: crate::now_ms(),
                plugins: self.plugin_states(),
                conditions: Vec::new(),
            },
        }
    }

    fn plugin_states(&self) -> BTreeMap<String, PluginOnNode> {
        let errors = self.load_errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = BTreeMap::new();
        for s in self.runtime.status() {
            let message = match (s.phase, errors.get(&s.name)) {
                (_, Some((_, e))) => e.clone(),
                (Phase::Failed | Phase::CrashLoopBackOff | Phase::Restarting, _) => {
                    s.last_error.clone().unwrap_or_default()
                }
                _ => String::new(),
            };
            out.insert(
                s.name.clone(),
                PluginOnNode {
                    phase: format!("{:?}", s.phase),
                    generation: s.generation,
                    digest: s.digest,
                    restarts: s.restarts,
                    message,
                },
            );
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

    /// One watch connection, until it drops.
    async fn watch_once(&self) -> anyhow::Result<()> {
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
                let assignments: Assignments = serde_json::from_value(value)?;
                let path = assignments_path(&self.opts.data_dir);
                let json = serde_json::to_vec_pretty(&assignments)?;
                tokio::task::spawn_blocking(move || write_atomic(&path, &json)).await??;
                self.converge(&assignments).await;
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
    let agent = Arc::new(Agent {
        runtime,
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?,
        opts,
        load_errors: Mutex::new(BTreeMap::new()),
        report_now: tokio::sync::Notify::new(),
    });

    // Edge autonomy: whatever ran before the restart runs again, from disk.
    if let Ok(text) = std::fs::read(assignments_path(&agent.opts.data_dir)) {
        match serde_json::from_slice::<Assignments>(&text) {
            Ok(last) => {
                tracing::info!(plugins = last.plugins.len(), "running the last known assignments");
                agent.converge(&last).await;
            }
            Err(e) => tracing::warn!("ignoring unreadable last assignments: {e}"),
        }
    }

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
                        if let Ok(ev) = ev && matches!(ev.kind, EventKind::Telemetry { .. } | EventKind::Log { .. }) {
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
    reporter.abort();
    let rt = agent.runtime.clone();
    let _ = tokio::task::spawn_blocking(move || rt.shutdown()).await;
    Ok(())
}
