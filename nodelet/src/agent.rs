//! The nodelet's link to the controller: one outbound watch (it works behind
//! NAT), reconnecting with backoff. It runs what the controller assigns,
//! keeps the assignments and their components on local disk so it runs them
//! again after a restart even when the controller is down, and reports each
//! plugin's state upstream.

use crate::events::{EventKind, Phase};
use crate::runtime::{ComponentSource, PluginSpec, Runtime};
use futures::StreamExt;
use harvester_api::live::{Command, CommandResult, NodeMessage};
use harvester_api::resources::{
    API_VERSION, Assignment, Assignments, Labels, Node, NodeStatusV1, ObjectMeta, PluginOnNode, is_local_path,
};
use harvester_api::{Digest, Reason};
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
    pub compile: CompileMode,
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
pub const LOCAL_COMPILE_MIN_MEMORY: u64 = 1 << 30;

/// The machine's memory, from /proc/meminfo.
pub fn total_memory() -> Option<u64> {
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

/// Why an assignment is not running as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    generation: u64,
    reason: Reason,
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

    /// A registry's answer: a refusal, or a failure worth retrying.
    fn pulling(generation: u64, e: PullError) -> Failure {
        match e {
            PullError::Refused(r) => Failure::refused(generation, &r),
            PullError::Registry(e) => Failure::transient(generation, Reason::PullFailed, format!("{e:#}")),
        }
    }

    fn transient(generation: u64, reason: Reason, e: impl std::fmt::Display) -> Failure {
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
            .map_err(|e| Failure::transient(a.generation, Reason::PullFailed, e))?
            .map_err(|e| Failure::transient(a.generation, Reason::PullFailed, format!("local store: {e}")))?;
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
            .map_err(|e: anyhow::Error| Failure::transient(a.generation, Reason::PullFailed, format!("{e:#}")))?;
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
            .map_err(|e| Failure::transient(a.generation, Reason::PullFailed, e))?
            .map_err(|e| Failure::transient(a.generation, Reason::PullFailed, format!("local store: {e}")))?;
        Ok(bytes)
    }

    /// Checks an OCI image pinned by digest is signed by a key this node
    /// trusts (once; remembered for restarts). Returns whether it runs
    /// unsigned (--allow-unsigned).
    async fn verify_oci(&self, a: &Assignment, reference: &harvester_registry::Reference) -> Result<bool, Failure> {
        let g = a.generation;
        let repository = harvester_registry::repository(reference);
        let record_path = verified_path(&self.opts.data_dir, &a.digest);
        let trusted_before = std::fs::read(&record_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<VerifiedRecord>(&b).ok())
            .is_some_and(|r| r.repository == repository && self.opts.trust.keys.iter().any(|k| k.fingerprint == r.key));
        if trusted_before {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let outcome = self.registry.verify(reference, &a.digest, &self.opts.trust.keys).await;
        self.runtime
            .metrics()
            .fetch_seconds
            .with_label_values(&["verify"])
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(v) => {
                tracing::info!(plugin = a.name, image = %a.image, digest = %a.digest, key = v.key, "signature verified");
                let record = serde_json::to_vec(&VerifiedRecord { repository, key: v.key })
                    .map_err(|e| Failure::transient(g, Reason::PullFailed, e))?;
                let _ = harvester_registry::store::write_atomic(&record_path, &record);
                Ok(false)
            }
            Err(PullError::Refused(r)) if self.opts.trust.allow_unsigned && r.reason() == Reason::SignatureInvalid => {
                tracing::warn!(
                    plugin = a.name,
                    "RUNNING UNVERIFIED CODE because of --allow-unsigned: {r}"
                );
                Ok(true)
            }
            Err(e) => Err(Failure::pulling(g, e)),
        }
    }

    /// The component bytes of a verified OCI image, pulled and checked.
    async fn oci_bytes(&self, a: &Assignment, reference: &harvester_registry::Reference) -> Result<Vec<u8>, Failure> {
        let g = a.generation;
        let started = std::time::Instant::now();
        let pulled = self
            .registry
            .pull(reference, &a.digest, &self.store, &indicatif::ProgressBar::hidden())
            .await;
        self.runtime
            .metrics()
            .fetch_seconds
            .with_label_values(&["pull"])
            .observe(started.elapsed().as_secs_f64());
        pulled.map_err(|e| Failure::pulling(g, e))
    }

    /// Whether this node asks the hub for compiled code.
    fn asks_hub(&self) -> bool {
        self.opts.compile != CompileMode::Local && !self.opts.trust.compilers.is_empty()
    }

    /// Whether this node may run the compiler itself.
    fn compiles_here(&self) -> bool {
        match self.opts.compile {
            CompileMode::Local => true,
            CompileMode::Hub => false,
            CompileMode::Auto => {
                self.opts.trust.compilers.is_empty() || total_memory().is_none_or(|m| m >= LOCAL_COMPILE_MIN_MEMORY)
            }
        }
    }

    /// Fetches the code the hub compiled for `a` (whose component is
    /// `component`) into the compile cache, after checking the hub's key
    /// signed a statement naming this artifact, component, target and
    /// engine, and that the bytes are the ones it names.
    async fn hub_code(&self, a: &Assignment, component: Digest) -> Result<(), Failure> {
        use base64::Engine as _;
        use harvester_api::compiled::{CompiledStatement, SIGNATURE_HEADER, STATEMENT_HEADER};
        use sha2::Digest as _;
        use tokio::io::AsyncWriteExt;

        let g = a.generation;
        let unavailable = |m: String| Failure::transient(g, Reason::CompileUnavailable, m);
        let refused = |m: String| Failure {
            generation: g,
            reason: Reason::CompiledCodeRefused,
            message: m,
            refusal: Some("compiled_code"),
        };
        let engine = self.runtime.engine();
        let target = harvester_engine::config::host_target();
        let started = std::time::Instant::now();
        let url = self.url(&format!(
            "compiled/{}?target={target}&engine={}",
            a.digest,
            engine.portable_hash()
        ));
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| unavailable(format!("asking the hub for compiled code: {e}")))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or(body);
            return Err(unavailable(format!(
                "the hub has no compiled code for {}: {status} {message}",
                a.digest
            )));
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| refused(format!("the hub's answer for {} has no {name} header", a.digest)))
        };
        let statement = base64::engine::general_purpose::STANDARD
            .decode(header(STATEMENT_HEADER)?)
            .map_err(|e| refused(format!("the hub's statement for {} is not base64: {e}", a.digest)))?;
        let signature = header(SIGNATURE_HEADER)?;
        let trusted = &self.opts.trust.compilers;
        let Some(key) = trusted.iter().find(|k| k.verifies_bytes(&statement, &signature)) else {
            return Err(refused(format!(
                "the code the hub compiled for {} is not signed by a compiler key this node trusts ({})",
                a.digest,
                trusted
                    .iter()
                    .map(|k| k.fingerprint.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let st: CompiledStatement = serde_json::from_slice(&statement)
            .map_err(|e| refused(format!("the hub's statement for {}: {e}", a.digest)))?;
        let hash = engine.portable_hash();
        for (what, theirs, ours) in [
            ("artifact", st.artifact.to_string(), a.digest.to_string()),
            ("component", st.component.to_string(), component.to_string()),
            ("target", st.target.clone(), target.clone()),
            ("engine", st.engine.clone(), hash.to_string()),
        ] {
            if theirs != ours {
                return Err(refused(format!(
                    "the hub's signed statement for {} names {what} {theirs}, this node needs {ours}",
                    a.digest
                )));
            }
        }
        let cache = self.runtime.cache();
        let path = cache.portable_path(engine, &component);
        let tmp = cache.scratch_path(&path);
        let written = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| unavailable(format!("{}: {e}", tmp.display())))?;
            let mut sha = sha2::Sha256::new();
            let mut size = 0u64;
            let mut body = resp.bytes_stream();
            // Streamed to disk: the code of a Python component is ~30 MB
            // and never sits in this process's memory.
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| unavailable(format!("downloading compiled code for {}: {e}", a.digest)))?;
                size += chunk.len() as u64;
                if size > st.size {
                    return Err(refused(format!(
                        "the hub sent more than the {} bytes its statement for {} names",
                        st.size, a.digest
                    )));
                }
                sha.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(|e| unavailable(format!("{}: {e}", tmp.display())))?;
            }
            file.sync_all()
                .await
                .map_err(|e| unavailable(format!("{}: {e}", tmp.display())))?;
            let actual = Digest::from_sha256(sha);
            if size != st.size || actual != st.code {
                return Err(refused(format!(
                    "the code the hub sent for {} is not what it signed: {size} bytes with digest {actual}, signed {} bytes with {}",
                    a.digest, st.size, st.code
                )));
            }
            Ok(size)
        }
        .await;
        let size = match written {
            Ok(size) => size,
            Err(f) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(f);
            }
        };
        std::fs::rename(&tmp, &path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        self.runtime
            .metrics()
            .fetch_seconds
            .with_label_values(&["hub-code"])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            plugin = a.name,
            %component,
            key = key.fingerprint,
            bytes = size,
            ms = started.elapsed().as_millis() as u64,
            "compiled code from the hub verified"
        );
        Ok(())
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
                            reason = %f.reason,
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
        lock(&self.failures).values().any(|f| f.reason != Reason::LoadFailed)
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
        let g = a.generation;
        let (reference, unsigned) = if is_local_path(&a.image) {
            if !self.opts.trust.allow_unsigned {
                return Err(Failure::refused(
                    g,
                    &Refusal::Unsigned {
                        image: format!("{} (a local component uploaded to the controller)", a.image),
                        tag: "-: push it with `harvester push --key` and apply the OCI reference, or start this node with --allow-unsigned".into(),
                    },
                ));
            }
            (None, true)
        } else {
            let reference = parse_reference(&a.image).map_err(|e| Failure {
                generation: g,
                reason: Reason::InvalidArtifact,
                message: format!("{e:#}"),
                refusal: None,
            })?;
            let unsigned = self.verify_oci(a, &reference).await?;
            (Some(reference), unsigned)
        };
        let mut code = None;
        if self.asks_hub() {
            let component = match &reference {
                None => a.digest,
                Some(r) => self
                    .registry
                    .component_digest(r, &a.digest, &self.store)
                    .await
                    .map_err(|e| Failure::pulling(g, e))?,
            };
            if self.runtime.cache().contains(self.runtime.engine(), &component) {
                code = Some(ComponentSource::Precompiled(component));
            } else {
                match self.hub_code(a, component).await {
                    Ok(()) => code = Some(ComponentSource::Precompiled(component)),
                    Err(f) if self.compiles_here() && f.refusal.is_none() => {
                        tracing::warn!(plugin = a.name, "compiling here: {}", f.message);
                    }
                    Err(f) => return Err(f),
                }
            }
        }
        let code = match (code, &reference) {
            (Some(c), _) => c,
            (None, None) => self.controller_blob(a).await?.into(),
            (None, Some(r)) => self.oci_bytes(a, r).await?.into(),
        };
        let component = code.digest();
        let spec = PluginSpec {
            name: a.name.clone(),
            source: a.image.clone(),
            component: code,
            run: a.run.clone(),
            generation: Some(a.generation),
        };
        let rt = self.runtime.clone();
        tokio::task::spawn_blocking(move || rt.apply(spec))
            .await
            .map_err(|e| Failure::transient(a.generation, Reason::LoadFailed, e))?
            .map_err(|e| Failure::transient(a.generation, Reason::LoadFailed, format!("{e:#}")))?;
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
                engine: Some(harvester_api::compiled::EngineInfo {
                    target: harvester_engine::config::host_target(),
                    hash: self.runtime.engine().portable_hash().to_string(),
                    compile: self.opts.compile.as_str().to_string(),
                }),
                address: self.opts.address.clone(),
                trusted_keys: self.opts.trust.keys.iter().map(|k| k.fingerprint.clone()).collect(),
                allow_unsigned: self.opts.trust.allow_unsigned,
                last_heartbeat: harvester_api::now_ms(),
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
            let (reason, message) = match (&s.phase, failures.get(&s.name)) {
                (_, Some(f)) => (Some(f.reason.clone()), f.message.clone()),
                (Phase::Failed | Phase::CrashLoopBackOff | Phase::Restarting, _) => {
                    (None, s.last_error.clone().unwrap_or_default())
                }
                _ if ours.is_some_and(|a| a.unsigned) => (
                    Some(Reason::Unsigned),
                    "running a component without a valid signature: this node was started with --allow-unsigned".into(),
                ),
                _ => (None, String::new()),
            };
            out.insert(
                s.name.clone(),
                PluginOnNode {
                    phase: s.phase.clone(),
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
                phase: Phase::Failed,
                generation: 0,
                digest: None,
                restarts: 0,
                reason: Some(f.reason),
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
