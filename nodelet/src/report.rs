//! One place where plugin events become log lines, metrics, status and
//! broadcast events: every state change is observable the same way.
//!
//! A plugin's own lines (its log calls, stdout and stderr) stay typed on
//! their way to the hub: they go to the uplink's buffer as [`LogLine`]s, and
//! to this process's log under the [`PLUGIN_LINES`] target, which the
//! uplink's tap leaves alone.

use crate::events::{Event, EventKind, LogLevel, Phase, PluginStatus, Reading, TrapKind};
use crate::metrics::Metrics;
use crate::uplink::LogBuffer;
use harvester_api::live::LogLine;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;
use tokio::sync::broadcast;

const EVENT_BUFFER: usize = 4096;

/// The tracing target of plugins' own lines in this process's log.
pub(crate) const PLUGIN_LINES: &str = "plugin";

pub struct Reporter {
    events: broadcast::Sender<Event>,
    status: Mutex<BTreeMap<String, PluginStatus>>,
    pub metrics: Arc<Metrics>,
    /// Where plugins' lines go for the hub, once a hub is followed.
    lines: OnceLock<Arc<LogBuffer>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reporter {
    pub fn new(metrics: Arc<Metrics>) -> Reporter {
        Reporter {
            events: broadcast::channel(EVENT_BUFFER).0,
            status: Mutex::new(BTreeMap::new()),
            metrics,
            lines: OnceLock::new(),
        }
    }

    /// Sends plugins' own lines to `buffer` from now on (the first call wins).
    pub(crate) fn forward_lines(&self, buffer: Arc<LogBuffer>) {
        let _ = self.lines.set(buffer);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn status(&self) -> Vec<PluginStatus> {
        lock(&self.status).values().cloned().collect()
    }

    pub fn plugin_status(&self, plugin: &str) -> Option<PluginStatus> {
        lock(&self.status).get(plugin).cloned()
    }

    /// Changes a plugin's status row, creating it if needed.
    pub fn update(&self, plugin: &str, source: &str, f: impl FnOnce(&mut PluginStatus)) {
        let mut all = lock(&self.status);
        let row = all.entry(plugin.to_string()).or_insert_with(|| {
            self.metrics.init_plugin(plugin);
            PluginStatus::new(plugin, source)
        });
        f(row);
    }

    /// Notes a version this node now runs.
    pub fn record_version(&self, plugin: &str, record: crate::events::VersionRecord) {
        if let Some(s) = lock(&self.status).get_mut(plugin) {
            if s.versions.len() == crate::events::VERSIONS_KEPT {
                s.versions.pop_front();
            }
            s.versions.push_back(record);
        }
    }

    pub fn remove(&self, plugin: &str) {
        let row = lock(&self.status).remove(plugin);
        let sensors: Vec<(String, String)> = row
            .map(|r| r.telemetry.into_iter().map(|(k, v)| (k, v.unit)).collect())
            .unwrap_or_default();
        self.metrics.forget_plugin(plugin, &sensors);
    }

    pub fn tick_done(&self, plugin: &str, handles: &crate::metrics::TickMetrics, seconds: f64, memory: usize) {
        if self.metrics.enabled() {
            handles.record(seconds, memory);
        }
        let mut all = lock(&self.status);
        if let Some(s) = all.get_mut(plugin) {
            s.ticks += 1;
            s.memory_bytes = memory as u64;
        }
    }

    pub fn ticks_missed(&self, plugin: &str, n: u64) {
        self.metrics.missed_ticks.with_label_values(&[plugin]).inc_by(n);
        if let Some(s) = lock(&self.status).get_mut(plugin) {
            s.missed_ticks += n;
        }
    }

    /// A tick that waits `wait` because the plugin is over its CPU budget:
    /// counted each time, logged when it starts being over.
    pub fn throttled(&self, plugin: &str, share: harvester_api::CpuShare, wait: std::time::Duration) {
        self.metrics.throttled.with_label_values(&[plugin]).inc();
        let mut all = lock(&self.status);
        let Some(s) = all.get_mut(plugin) else { return };
        let newly = s.cpu_limited().is_none();
        s.throttled_ticks += 1;
        s.throttled = Some((std::time::Instant::now(), share));
        drop(all);
        if newly {
            tracing::warn!(
                plugin,
                cpu = %share,
                wait_ms = wait.as_millis() as u64,
                "over its CPU budget: its ticks wait until it is back within it"
            );
        }
    }

    /// Records an event: log line, metrics, status, then broadcast.
    pub fn emit(&self, plugin: &str, kind: EventKind) {
        let at = SystemTime::now();
        match &kind {
            EventKind::Log { level, source, message } => {
                if let Some(buffer) = self.lines.get() {
                    buffer.push(LogLine {
                        at: harvester_api::unix_ms(at),
                        node: String::new(),
                        plugin: Some(plugin.to_string()),
                        level: *level,
                        source: *source,
                        message: message.clone(),
                    });
                }
                let source = source.as_str();
                match level {
                    LogLevel::Debug => tracing::debug!(target: PLUGIN_LINES, plugin, source, "{message}"),
                    LogLevel::Info => tracing::info!(target: PLUGIN_LINES, plugin, source, "{message}"),
                    LogLevel::Warn => tracing::warn!(target: PLUGIN_LINES, plugin, source, "{message}"),
                    LogLevel::Error => tracing::error!(target: PLUGIN_LINES, plugin, source, "{message}"),
                }
            }
            EventKind::Telemetry { name, value, unit } => {
                // The gauge was set by the telemetry capability, which
                // keeps its handle.
                if let Some(s) = lock(&self.status).get_mut(plugin) {
                    s.telemetry.insert(
                        name.clone(),
                        Reading {
                            value: *value,
                            unit: unit.clone(),
                            at,
                        },
                    );
                }
            }
            EventKind::Denied { capability, message } => {
                tracing::warn!(plugin, capability = capability.name(), "denied: {message}");
                self.metrics
                    .denied
                    .with_label_values(&[plugin, capability.name()])
                    .inc();
                if let Some(s) = lock(&self.status).get_mut(plugin) {
                    s.denied_calls += 1;
                }
            }
            EventKind::Buzzer { action } => {
                tracing::info!(plugin, "buzzer: {action}");
            }
            EventKind::Started {
                generation,
                digest,
                from_cache,
                replaced,
            } => {
                match replaced {
                    Some(old) => {
                        tracing::info!(plugin, generation, component = %digest, from_cache, "swapped in, replacing generation {old}")
                    }
                    None => tracing::info!(plugin, generation, component = %digest, from_cache, "started"),
                }
                self.metrics
                    .generation
                    .with_label_values(&[plugin])
                    .set(*generation as i64);
                if let Some(s) = lock(&self.status).get_mut(plugin) {
                    s.phase = Phase::Running;
                    s.generation = *generation;
                    s.digest = Some(*digest);
                    s.last_error = None;
                    // Restarts count for the version running: a rollout
                    // judges each revision by its own.
                    s.restarts = 0;
                }
            }
            EventKind::LoadFailed { generation, error } => {
                tracing::error!(plugin, generation, "cannot load: {error}");
                self.metrics.load_failures.with_label_values(&[plugin]).inc();
                if let Some(s) = lock(&self.status).get_mut(plugin) {
                    s.last_error = Some(error.clone());
                    if s.phase == Phase::Loading {
                        s.phase = Phase::Failed;
                    }
                }
            }
            EventKind::TickFailed { message } => {
                tracing::warn!(plugin, "tick returned an error: {message}");
                self.metrics.tick_errors.with_label_values(&[plugin]).inc();
                if let Some(s) = lock(&self.status).get_mut(plugin) {
                    s.tick_errors += 1;
                    s.last_error = Some(message.clone());
                }
            }
            EventKind::Trapped { kind, call, message } => {
                tracing::error!(plugin, call, "trapped: {message}");
                let k = match kind {
                    TrapKind::Timeout => "timeout",
                    TrapKind::MemoryLimit => "memory-limit",
                    TrapKind::ResourceLimit => "resource-limit",
                    TrapKind::Trap => "trap",
                };
                self.metrics.traps.with_label_values(&[plugin, k]).inc();
                if let Some(s) = lock(&self.status).get_mut(plugin) {
                    s.last_error = Some(message.clone());
                    if s.phase == Phase::Running {
                        s.phase = Phase::Restarting;
                    }
                }
            }
            EventKind::Restarted { attempt } => {
                tracing::info!(plugin, attempt, "restarted");
                self.metrics.restarts.with_label_values(&[plugin]).inc();
                if let Some(s) = lock(&self.status).get_mut(plugin) {
                    s.restarts += 1;
                    s.phase = Phase::Running;
                }
            }
            EventKind::CrashLoop { restarts, last_error } => {
                tracing::error!(plugin, restarts, "crash loop: {last_error}");
                if let Some(s) = lock(&self.status).get_mut(plugin) {
                    s.phase = Phase::CrashLoopBackOff;
                }
            }
            EventKind::Stopped => {
                tracing::info!(plugin, "stopped");
                if let Some(s) = lock(&self.status).get_mut(plugin) {
                    s.phase = Phase::Stopped;
                }
            }
        }
        // No receivers is normal: nobody is watching.
        let _ = self.events.send(Event {
            at,
            plugin: plugin.to_string(),
            kind,
        });
    }
}
