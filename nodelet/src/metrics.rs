//! The node's Prometheus metrics. Labels stay low-cardinality: plugin,
//! capability, kind, sensor name (capped per plugin), unit.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Why an artifact (or code compiled for it) was refused, as metric labels.
pub const REFUSAL_LABELS: [&str; 6] = [
    "unsigned",
    "untrusted",
    "identity_mismatch",
    "digest_mismatch",
    "not_a_component",
    "compiled_code",
];

pub struct Metrics {
    pub registry: Registry,
    pub ticks: IntCounterVec,
    pub missed_ticks: IntCounterVec,
    pub throttled: IntCounterVec,
    pub log_lines_dropped: IntCounterVec,
    pub tick_errors: IntCounterVec,
    pub call_seconds: HistogramVec,
    pub denied: IntCounterVec,
    pub traps: IntCounterVec,
    pub restarts: IntCounterVec,
    pub load_failures: IntCounterVec,
    pub sensor: GaugeVec,
    pub memory: IntGaugeVec,
    pub generation: IntGaugeVec,
    pub compiles: IntCounter,
    pub cache_hits: IntCounter,
    pub load_seconds: HistogramVec,
    pub refusals: IntCounterVec,
    pub task_panics: IntCounterVec,
    /// 1 while the data folder's filesystem is almost full.
    pub disk_pressure: prometheus::IntGauge,
    pub fetch_seconds: HistogramVec,
    pub instantiate_seconds: HistogramVec,
    pub phase: IntGaugeVec,
    pub info: IntGaugeVec,
    /// Off only to measure what recording costs (the runtime benchmark).
    enabled: std::sync::atomic::AtomicBool,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let call_seconds = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "harvester_plugin_call_duration_seconds",
                    "Time spent in one call into a plugin",
                )
                .buckets(vec![
                    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                ]),
                &["plugin", "call"],
            )
            .expect("valid metric"),
        );
        let load_seconds = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "harvester_component_load_duration_seconds",
                    "Time to get a runnable component: compile or load from the cache",
                )
                .buckets(vec![0.001, 0.005, 0.02, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["outcome"],
            )
            .expect("valid metric"),
        );
        let fetch_seconds = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "harvester_artifact_fetch_duration_seconds",
                    "Time to get an assigned artifact ready to load: verify its signature, pull its bytes, or fetch the code the hub compiled for it",
                )
                .buckets(vec![0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["step"],
            )
            .expect("valid metric"),
        );
        for step in ["verify", "pull", "hub-code"] {
            fetch_seconds.with_label_values(&[step]);
        }
        let phase = register(&registry, IntGaugeVec::new(
            Opts::new(
                "harvester_plugin_phase",
                "1 for the phase the plugin is in (Loading, Running, Restarting, CrashLoopBackOff, Failed, Stopped)",
            ),
            &["plugin", "phase"],
        ).expect("valid metric"));
        let info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "harvester_plugin_info",
                    "The version a node runs: generation, component digest and image",
                ),
                &["plugin", "generation", "digest", "image"],
            )
            .expect("valid metric"),
        );
        let instantiate_seconds = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "harvester_plugin_instantiate_duration_seconds",
                    "Time to instantiate a plugin (at start, swap and restart), before init",
                )
                .buckets(vec![
                    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1,
                ]),
                &["plugin"],
            )
            .expect("valid metric"),
        );
        let sensor = register(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "harvester_sensor_value",
                    "Latest reading a plugin emitted through telemetry",
                ),
                &["plugin", "sensor", "unit"],
            )
            .expect("valid metric"),
        );
        let memory = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "harvester_plugin_memory_bytes",
                    "Linear memory held by the plugin's instance",
                ),
                &["plugin"],
            )
            .expect("valid metric"),
        );
        let generation = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "harvester_plugin_generation",
                    "Generation of the plugin version running",
                ),
                &["plugin"],
            )
            .expect("valid metric"),
        );
        let compiles = register(
            &registry,
            IntCounter::new(
                "harvester_component_compiles_total",
                "Components compiled with Cranelift",
            )
            .expect("valid metric"),
        );
        let cache_hits = register(
            &registry,
            IntCounter::new(
                "harvester_component_cache_hits_total",
                "Components loaded precompiled from the cache",
            )
            .expect("valid metric"),
        );
        Metrics {
            ticks: counter(&registry, "harvester_plugin_ticks_total", "Ticks that ran", &["plugin"]),
            missed_ticks: counter(
                &registry,
                "harvester_plugin_missed_ticks_total",
                "Ticks skipped because the previous one ran late",
                &["plugin"],
            ),
            throttled: counter(
                &registry,
                "harvester_plugin_throttled_total",
                "Ticks delayed because the plugin was over its CPU budget (limits.cpu)",
                &["plugin"],
            ),
            log_lines_dropped: counter(
                &registry,
                "harvester_plugin_log_lines_dropped_total",
                "Lines a plugin wrote over its budget of lines per second, dropped",
                &["plugin"],
            ),
            tick_errors: counter(
                &registry,
                "harvester_plugin_tick_errors_total",
                "Ticks where the plugin returned an error",
                &["plugin"],
            ),
            denied: counter(
                &registry,
                "harvester_plugin_denied_calls_total",
                "Capability calls refused because they were outside the plugin's grants",
                &["plugin", "capability"],
            ),
            traps: counter(
                &registry,
                "harvester_plugin_traps_total",
                "Calls that trapped, by kind",
                &["plugin", "kind"],
            ),
            restarts: counter(
                &registry,
                "harvester_plugin_restarts_total",
                "Instances restarted after a trap",
                &["plugin"],
            ),
            load_failures: counter(
                &registry,
                "harvester_plugin_load_failures_total",
                "Versions that failed to compile, link or initialise",
                &["plugin"],
            ),
            refusals: counter(
                &registry,
                "harvester_signature_refusals_total",
                "Artifacts refused before running: unsigned, untrusted, signed for another repository, or tampered",
                &["plugin", "reason"],
            ),
            task_panics: counter(
                &registry,
                "harvester_node_task_panics_total",
                "Panics in the node's own tasks (each logged; the task was started again)",
                &["task"],
            ),
            disk_pressure: register(
                &registry,
                prometheus::IntGauge::new(
                    "harvester_node_disk_pressure",
                    "1 while the filesystem of the node's data folder is almost full (under 5% or 64 MiB free)",
                )
                .expect("valid metric"),
            ),
            registry,
            fetch_seconds,
            instantiate_seconds,
            phase,
            info,
            enabled: std::sync::atomic::AtomicBool::new(true),
            call_seconds,
            sensor,
            memory,
            generation,
            compiles,
            cache_hits,
            load_seconds,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn tick_metrics(&self, plugin: &str) -> TickMetrics {
        TickMetrics {
            ticks: self.ticks.with_label_values(&[plugin]),
            seconds: self.call_seconds.with_label_values(&[plugin, "tick"]),
            memory: self.memory.with_label_values(&[plugin]),
        }
    }

    /// Creates a plugin's series at zero, so rates and sums over them show
    /// a flat line instead of nothing until the first event.
    pub fn init_plugin(&self, plugin: &str) {
        for v in [
            &self.ticks,
            &self.missed_ticks,
            &self.throttled,
            &self.log_lines_dropped,
            &self.tick_errors,
            &self.restarts,
            &self.load_failures,
        ] {
            v.with_label_values(&[plugin]);
        }
        for cap in harvester_api::Capability::ALL {
            self.denied.with_label_values(&[plugin, cap.name()]);
        }
        for kind in ["timeout", "memory-limit", "resource-limit", "trap"] {
            self.traps.with_label_values(&[plugin, kind]);
        }
    }

    /// Refusal reasons start at zero too, once a plugin is assigned.
    pub fn init_refusals(&self, plugin: &str) {
        for reason in REFUSAL_LABELS {
            self.refusals.with_label_values(&[plugin, reason]);
        }
    }

    /// The exposition with each plugin's phase and version as of now.
    pub fn render_with(&self, status: &[crate::events::PluginStatus]) -> String {
        self.phase.reset();
        self.info.reset();
        for s in status {
            self.phase
                .with_label_values(&[s.name.as_str(), s.phase.as_str()])
                .set(1);
            let digest = s.digest.map(|d| d.to_string()).unwrap_or_default();
            self.info
                .with_label_values(&[s.name.as_str(), &s.generation.to_string(), &digest, &s.source])
                .set(1);
        }
        self.render()
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Drops every series of a plugin that was removed.
    pub fn forget_plugin(&self, plugin: &str, sensors: &[(String, String)]) {
        for v in [
            &self.ticks,
            &self.missed_ticks,
            &self.throttled,
            &self.log_lines_dropped,
            &self.tick_errors,
            &self.restarts,
            &self.load_failures,
        ] {
            let _ = v.remove_label_values(&[plugin]);
        }
        let _ = self.memory.remove_label_values(&[plugin]);
        let _ = self.generation.remove_label_values(&[plugin]);
        for (name, unit) in sensors {
            let _ = self.sensor.remove_label_values(&[plugin, name, unit]);
        }
        for cap in harvester_api::Capability::ALL {
            let _ = self.denied.remove_label_values(&[plugin, cap.name()]);
        }
        for kind in ["timeout", "memory-limit", "resource-limit", "trap"] {
            let _ = self.traps.remove_label_values(&[plugin, kind]);
        }
        for call in ["init", "tick", "on-command"] {
            let _ = self.call_seconds.remove_label_values(&[plugin, call]);
        }
        let _ = self.instantiate_seconds.remove_label_values(&[plugin]);
        for reason in REFUSAL_LABELS {
            let _ = self.refusals.remove_label_values(&[plugin, reason]);
        }
    }
}

/// One plugin's per-tick series, looked up once per worker: a label lookup
/// on every tick would cost a tenth of a Rust plugin's tick.
pub struct TickMetrics {
    ticks: prometheus::IntCounter,
    seconds: prometheus::Histogram,
    memory: prometheus::IntGauge,
}

impl TickMetrics {
    pub fn record(&self, seconds: f64, memory: usize) {
        self.ticks.inc();
        self.seconds.observe(seconds);
        self.memory.set(memory as i64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
