//! The plugin runtime of a node: loads components (compile cache, import
//! check, linking), starts them, hot-swaps new versions in while the old ones
//! keep ticking, and stops them.
//!
//! - [`instance`]: a version and its instances; every call has a deadline.
//! - [`worker`]: the thread that owns and ticks one plugin.

pub mod instance;
pub mod worker;

use crate::events::{Event, EventKind, Phase, PluginStatus};
use crate::hardware::{Hardware, LedFrame};
use crate::host::PluginContext;
use crate::metrics::Metrics;
use crate::report::Reporter;
use crate::sandbox::imports::{self, ImportError};
use harvester_api::{Capability, Digest, RunSpec};
use harvester_engine::cache::{CacheOutcome, CompileCache, CompileError};
use harvester_engine::config::PluginEngine;
use instance::Version;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::broadcast;
pub use worker::RestartPolicy;

/// The code of a version.
#[derive(Debug, Clone, PartialEq)]
pub enum ComponentSource {
    /// The component itself: compiled here unless the cache has it.
    Bytes(Arc<Vec<u8>>),
    /// A component with this digest whose compiled code is already in the
    /// compile cache (a hub compiled it for this node): nothing to compile.
    Precompiled(Digest),
}

impl ComponentSource {
    pub fn digest(&self) -> Digest {
        match self {
            ComponentSource::Bytes(b) => Digest::of(b),
            ComponentSource::Precompiled(d) => *d,
        }
    }
}

impl From<Vec<u8>> for ComponentSource {
    fn from(bytes: Vec<u8>) -> ComponentSource {
        ComponentSource::Bytes(Arc::new(bytes))
    }
}

impl From<Arc<Vec<u8>>> for ComponentSource {
    fn from(bytes: Arc<Vec<u8>>) -> ComponentSource {
        ComponentSource::Bytes(bytes)
    }
}

/// Everything needed to run one version of a plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSpec {
    pub name: String,
    /// Where the component came from (a path or an image reference), for messages.
    pub source: String,
    pub component: ComponentSource,
    pub run: RunSpec,
    /// The controller's generation for this version; standalone nodes
    /// number versions themselves when it is `None`.
    pub generation: Option<u64>,
}

impl PluginSpec {
    fn without_component(&self) -> PluginSpec {
        PluginSpec {
            component: ComponentSource::Bytes(Arc::new(Vec::new())),
            ..self.clone()
        }
    }
}

/// What `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Started a plugin that was not running.
    Started { generation: u64 },
    /// Swapped a new version in for the running one.
    Swapped { generation: u64, replaced: u64 },
    /// The spec is what already runs; nothing changed.
    Unchanged { generation: u64 },
}

/// Why a version was not started. Whatever ran before keeps running.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin {plugin} ({source_ref}): {error}")]
    Compile {
        plugin: String,
        source_ref: String,
        #[source]
        error: CompileError,
    },
    #[error("plugin {plugin} ({source_ref}): {error}")]
    Imports {
        plugin: String,
        source_ref: String,
        #[source]
        error: ImportError,
    },
    #[error("plugin {plugin} ({source_ref}): the component does not fit the harvester:plugin contract: {message}")]
    Link {
        plugin: String,
        source_ref: String,
        message: String,
    },
    #[error("plugin {plugin} ({source_ref}): {message}")]
    Init {
        plugin: String,
        source_ref: String,
        message: String,
    },
    #[error("plugin {plugin}: cannot start its thread: {0}", plugin = .1)]
    Thread(#[source] std::io::Error, String),
}

/// A command that got no answer from the plugin.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no plugin named {0:?} runs on this node")]
    NoSuchPlugin(String),
    #[error("plugin {0} stopped before answering")]
    Stopped(String),
    #[error("plugin {0} is busy: {MAX_PENDING_COMMANDS} commands already wait for it; try again later")]
    Busy(String),
    #[error("{0}")]
    Plugin(String),
}

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Compiled components live under `<data_dir>/compiled`.
    pub data_dir: PathBuf,
    pub restart: RestartPolicy,
}

/// Commands that may wait for one plugin at once: each holds a thread of
/// the node until the plugin answers.
pub const MAX_PENDING_COMMANDS: usize = 8;

struct Running {
    tx: Sender<worker::Msg>,
    /// Commands sent and not yet answered.
    pending: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<JoinHandle<()>>,
    /// The spec without its component bytes (the digest stands for them):
    /// a Python component is ~18 MB the node must not keep twice.
    spec: PluginSpec,
    digest: Digest,
    generation: u64,
}

pub struct Runtime {
    engine: Arc<PluginEngine>,
    cache: CompileCache,
    hardware: Hardware,
    leds: Arc<LedFrame>,
    report: Arc<Reporter>,
    options: RuntimeOptions,
    plugins: Mutex<BTreeMap<String, Running>>,
    /// Highest generation handed out per plugin name, kept across removals
    /// so a generation number is never reused.
    generations: Mutex<BTreeMap<String, u64>>,
    /// Loads are rare and heavy; one at a time keeps peak memory bounded.
    loading: Mutex<()>,
    /// What each plugin keeps across its versions (telemetry series, log budget).
    shared: Mutex<BTreeMap<String, Arc<crate::host::Shared>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Runtime {
    pub fn new(options: RuntimeOptions, hardware: Hardware) -> anyhow::Result<Runtime> {
        Runtime::with_metrics(options, hardware, Arc::new(Metrics::new()))
    }

    /// A runtime recording into `metrics`, which the node's composition
    /// root also hands to the agent and the HTTP server.
    pub fn with_metrics(options: RuntimeOptions, hardware: Hardware, metrics: Arc<Metrics>) -> anyhow::Result<Runtime> {
        let engine = Arc::new(PluginEngine::new()?);
        let cache_dir = options.data_dir.join("compiled");
        let cache = CompileCache::new(&cache_dir)
            .map_err(|e| anyhow::anyhow!("cannot create the compile cache {}: {e}", cache_dir.display()))?;
        Ok(Runtime {
            engine,
            cache,
            leds: Arc::new(LedFrame::new(hardware.leds.clone())),
            hardware,
            report: Arc::new(Reporter::new(metrics)),
            options,
            plugins: Mutex::new(BTreeMap::new()),
            generations: Mutex::new(BTreeMap::new()),
            loading: Mutex::new(()),
            shared: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn hardware(&self) -> &Hardware {
        &self.hardware
    }

    pub fn cache(&self) -> &CompileCache {
        &self.cache
    }

    pub(crate) fn reporter(&self) -> &Reporter {
        &self.report
    }

    pub fn metrics(&self) -> &Metrics {
        &self.report.metrics
    }

    pub fn engine(&self) -> &PluginEngine {
        &self.engine
    }

    /// The LED frame the plugins have set.
    pub fn led_frame(&self) -> Vec<crate::hardware::Rgb> {
        self.leds.frame()
    }

    /// Sends plugins' own log lines, typed, to `buffer` (the node's, for the hub).
    pub(crate) fn forward_plugin_lines(&self, buffer: Arc<crate::uplink::LogBuffer>) {
        self.report.forward_lines(buffer);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.report.subscribe()
    }

    pub fn status(&self) -> Vec<PluginStatus> {
        self.report.status()
    }

    pub fn plugin_status(&self, name: &str) -> Option<PluginStatus> {
        self.report.plugin_status(name)
    }

    pub fn plugin_names(&self) -> BTreeSet<String> {
        lock(&self.plugins).keys().cloned().collect()
    }

    /// Runs `spec`: starts it, or swaps it in for the running version once it
    /// has compiled, linked and initialised. Blocks while it compiles; call it
    /// from a blocking thread. On error the previous version keeps running.
    pub fn apply(&self, spec: PluginSpec) -> Result<Applied, LoadError> {
        let _one_at_a_time = lock(&self.loading);
        let digest = spec.component.digest();
        if let Some(r) = lock(&self.plugins).get(&spec.name)
            && r.digest == digest
            && r.spec == spec.without_component()
        {
            return Ok(Applied::Unchanged {
                generation: r.generation,
            });
        }
        let requested = harvester_api::now_ms();
        let generation = {
            let mut g = lock(&self.generations);
            let n = g.entry(spec.name.clone()).or_insert(0);
            // The hub's number stands, lower ones included: a rollback
            // runs an earlier revision under its own generation.
            *n = spec.generation.unwrap_or(*n + 1);
            *n
        };
        self.report.update(&spec.name, &spec.source, |s| {
            s.source = spec.source.clone();
            if s.phase == Phase::Stopped {
                s.phase = Phase::Loading;
            }
        });
        let name = spec.name.clone();
        let result = match self.prepare(&spec, digest, generation) {
            Ok((version, instance)) => self.install(spec, digest, version, instance),
            Err(e) => {
                self.report.emit(
                    &spec.name,
                    EventKind::LoadFailed {
                        generation,
                        error: e.to_string(),
                    },
                );
                Err(e)
            }
        };
        if result.is_ok() {
            self.report.record_version(
                &name,
                crate::events::VersionRecord {
                    generation,
                    digest,
                    requested,
                    running: harvester_api::now_ms(),
                },
            );
        }
        // The component bytes and the compiler's scratch memory are freed by
        // now, and the code only start-up ran is cold: give both back so a
        // small board shrinks to its running size.
        harvester_engine::cache::release_freed_memory();
        harvester_engine::cache::release_cold_code();
        result
    }

    /// Compiles (or loads from the cache), checks, links and initialises a
    /// version without running it: what `apply` does before the swap.
    pub fn load(&self, spec: &PluginSpec) -> Result<(Arc<Version>, instance::Instance), LoadError> {
        let _one_at_a_time = lock(&self.loading);
        self.prepare(spec, spec.component.digest(), 0)
    }

    fn prepare(
        &self,
        spec: &PluginSpec,
        digest: Digest,
        generation: u64,
    ) -> Result<(Arc<Version>, instance::Instance), LoadError> {
        let plugin = spec.name.clone();
        let source_ref = spec.source.clone();
        let loaded = match &spec.component {
            ComponentSource::Bytes(bytes) => self.cache.load(&self.engine, &digest, bytes),
            ComponentSource::Precompiled(_) => self.cache.load_precompiled(&self.engine, &digest),
        };
        let (component, outcome, took) = loaded.map_err(|error| LoadError::Compile {
            plugin: plugin.clone(),
            source_ref: source_ref.clone(),
            error,
        })?;
        let metrics = &self.report.metrics;
        match outcome {
            CacheOutcome::Hit => metrics.cache_hits.inc(),
            CacheOutcome::Compiled => metrics.compiles.inc(),
        }
        metrics
            .load_seconds
            .with_label_values(&[if outcome == CacheOutcome::Hit {
                "cache-hit"
            } else {
                "compiled"
            }])
            .observe(took.as_secs_f64());
        tracing::debug!(plugin, ?outcome, ms = took.as_millis() as u64, "component ready");

        let used =
            imports::check(self.engine.engine(), &component, &spec.run.grants).map_err(|error| LoadError::Imports {
                plugin: plugin.clone(),
                source_ref: source_ref.clone(),
                error,
            })?;
        let link = |e: wasmtime::Error| LoadError::Link {
            plugin: plugin.clone(),
            source_ref: source_ref.clone(),
            message: format!("{e:#}"),
        };
        let linker = crate::host::linker(self.engine.engine(), &spec.run.grants).map_err(link)?;
        let pre = linker.instantiate_pre(&component).map_err(link)?;
        let ctx = Arc::new(PluginContext::new(
            plugin.clone(),
            spec.run.grants.clone(),
            spec.run.config.clone(),
            self.hardware.clone(),
            self.leds.clone(),
            self.report.clone(),
            lock(&self.shared).entry(plugin.clone()).or_default().clone(),
        ));
        let version = Arc::new(Version {
            pre: crate::bindings::FullPre::new(pre).map_err(link)?,
            ctx,
            generation,
            digest,
            from_cache: outcome == CacheOutcome::Hit,
            tick_interval: spec.run.tick_interval.as_duration(),
            call_timeout: spec.run.limits.call_timeout.as_duration(),
            memory_limit: spec.run.limits.memory,
            cpu_limit: spec.run.limits.cpu,
        });
        let instance = version.start().map_err(|f| LoadError::Init {
            plugin: plugin.clone(),
            source_ref: source_ref.clone(),
            message: f.message,
        })?;
        tracing::debug!(plugin, generation, capabilities = ?used.iter().map(|c: &Capability| c.name()).collect::<Vec<_>>(), "initialised");
        Ok((version, instance))
    }

    fn install(
        &self,
        spec: PluginSpec,
        digest: Digest,
        version: Arc<Version>,
        instance: instance::Instance,
    ) -> Result<Applied, LoadError> {
        let generation = version.generation;
        let mut plugins = lock(&self.plugins);
        if let Some(running) = plugins.get_mut(&spec.name) {
            let (done_tx, done_rx) = mpsc::channel();
            let replaced = running.generation;
            let swap = worker::Msg::Swap {
                version: version.clone(),
                instance,
                done: done_tx,
            };
            // A worker that is gone (it panicked) is replaced by a new one
            // running this version; nothing is compiled again.
            let instance = match running.tx.send(swap) {
                Ok(()) if done_rx.recv().is_ok() => {
                    running.spec = spec.without_component();
                    running.digest = digest;
                    running.generation = generation;
                    return Ok(Applied::Swapped { generation, replaced });
                }
                Err(mpsc::SendError(worker::Msg::Swap { instance, .. })) => instance,
                _ => version.start().map_err(|f| LoadError::Init {
                    plugin: spec.name.clone(),
                    source_ref: spec.source.clone(),
                    message: f.message,
                })?,
            };
            plugins.remove(&spec.name);
            return self.spawn(&mut plugins, spec, digest, version, instance);
        }
        self.spawn(&mut plugins, spec, digest, version, instance)
    }

    fn spawn(
        &self,
        plugins: &mut BTreeMap<String, Running>,
        spec: PluginSpec,
        digest: Digest,
        version: Arc<Version>,
        instance: instance::Instance,
    ) -> Result<Applied, LoadError> {
        let generation = version.generation;
        let (tx, rx) = mpsc::channel();
        let thread = worker::Worker::spawn(self.report.clone(), self.options.restart, version, instance, rx)
            .map_err(|e| LoadError::Thread(e, spec.name.clone()))?;
        plugins.insert(
            spec.name.clone(),
            Running {
                tx,
                pending: Arc::default(),
                thread: Some(thread),
                spec: spec.without_component(),
                digest,
                generation,
            },
        );
        Ok(Applied::Started { generation })
    }

    /// Stops and forgets a plugin. Returns whether it was running.
    pub fn remove(&self, name: &str) -> bool {
        let running = lock(&self.plugins).remove(name);
        let Some(mut running) = running else {
            return false;
        };
        let _ = running.tx.send(worker::Msg::Stop);
        if let Some(t) = running.thread.take() {
            let _ = t.join();
        }
        self.report.remove(name);
        if let Some(shared) = lock(&self.shared).remove(name) {
            shared.forget(name, &self.report.metrics);
        }
        true
    }

    /// Sends a command to a plugin and waits for its answer.
    pub fn command(&self, plugin: &str, name: &str, args: Vec<(String, String)>) -> Result<String, CommandError> {
        use std::sync::atomic::Ordering;
        let (tx, pending) = lock(&self.plugins)
            .get(plugin)
            .map(|r| (r.tx.clone(), r.pending.clone()))
            .ok_or_else(|| CommandError::NoSuchPlugin(plugin.to_string()))?;
        if pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_PENDING_COMMANDS).then_some(n + 1)
            })
            .is_err()
        {
            return Err(CommandError::Busy(plugin.to_string()));
        }
        struct Done(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        let _done = Done(pending);
        let (reply, answer) = mpsc::channel();
        tx.send(worker::Msg::Command {
            name: name.to_string(),
            args,
            reply,
        })
        .map_err(|_| CommandError::Stopped(plugin.to_string()))?;
        match answer.recv_timeout(Duration::from_secs(70)) {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(CommandError::Plugin(e)),
            Err(_) => Err(CommandError::Stopped(plugin.to_string())),
        }
    }

    /// Stops every plugin.
    pub fn shutdown(&self) {
        let names: Vec<String> = lock(&self.plugins).keys().cloned().collect();
        for n in names {
            self.remove(&n);
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown();
    }
}
