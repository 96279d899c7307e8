//! The hub's Prometheus metrics: fleet state as the reconciler last saw it,
//! and the API's own work. Labels stay low-cardinality: node, plugin,
//! condition, outcome.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub nodes: IntGaugeVec,
    pub plugin_condition: IntGaugeVec,
    pub rollout_nodes: IntGaugeVec,
    pub rollout_step: IntGaugeVec,
    pub rollout_revision_nodes: IntGaugeVec,
    pub rollbacks: IntCounterVec,
    pub heartbeat: GaugeVec,
    pub reconcile_seconds: Histogram,
    pub reconcile_errors: IntCounter,
    pub connections_refused: IntCounter,
    pub task_panics: IntCounterVec,
    pub apply_requests: IntCounterVec,
    pub watch_connections: IntGaugeVec,
    pub compile_requests: IntCounterVec,
    pub compile_seconds: Histogram,
    pub compile_peak_memory: IntGauge,
    pub http_requests: IntCounterVec,
    pub audit_events: IntCounterVec,
    /// Refusals of callers without an identity: summed up in the audit
    /// trail once a minute, not recorded one by one.
    pub audit_anonymous_refusals: IntCounter,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// Outcomes of `POST apply` and `PUT`, known up front so every series exists
/// from the start (a rate over a missing series shows nothing).
pub const APPLY_OUTCOMES: [&str; 6] = ["created", "configured", "unchanged", "invalid", "conflict", "error"];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let m = Metrics {
            nodes: register(
                r,
                IntGaugeVec::new(
                    Opts::new("harvester_nodes", "Registered nodes by readiness"),
                    &["condition"],
                )
                .expect("valid metric"),
            ),
            plugin_condition: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "harvester_plugin_condition",
                        "1 when the plugin's condition has this status (Ready, Progressing, Degraded, Verified)",
                    ),
                    &["plugin", "condition", "status"],
                )
                .expect("valid metric"),
            ),
            rollout_nodes: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "harvester_plugin_rollout_nodes",
                        "Nodes a plugin is placed on, and of those the ones running its current generation",
                    ),
                    &["plugin", "state"],
                )
                .expect("valid metric"),
            ),
            rollout_step: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "harvester_rollout_step",
                        "The step a plugin's rollout is at (canary steps done; 0 for other strategies), by phase",
                    ),
                    &["plugin", "phase"],
                )
                .expect("valid metric"),
            ),
            rollout_revision_nodes: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "harvester_rollout_revision_nodes",
                        "Nodes assigned each revision of a plugin (the newest is `target`, the one to go back to `stable`)",
                    ),
                    &["plugin", "revision"],
                )
                .expect("valid metric"),
            ),
            rollbacks: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "harvester_rollbacks_total",
                        "Rollouts aborted with every node sent back to the stable revision, by reason",
                    ),
                    &["plugin", "reason"],
                )
                .expect("valid metric"),
            ),
            heartbeat: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "harvester_node_last_heartbeat_timestamp_seconds",
                        "When the controller last heard from the node (Unix time)",
                    ),
                    &["node"],
                )
                .expect("valid metric"),
            ),
            reconcile_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("harvester_reconcile_duration_seconds", "Time of one reconcile pass")
                        .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
                )
                .expect("valid metric"),
            ),
            task_panics: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "harvester_hub_task_panics_total",
                        "Panics in the hub's own tasks (each logged; the task was started again)",
                    ),
                    &["task"],
                )
                .expect("valid metric"),
            ),
            connections_refused: register(
                r,
                IntCounter::new(
                    "harvester_hub_connections_refused_total",
                    "Connections closed as they arrived because --max-connections were already open",
                )
                .expect("valid metric"),
            ),
            reconcile_errors: register(
                r,
                IntCounter::new(
                    "harvester_reconcile_errors_total",
                    "Objects a reconcile pass could not read or write (each named in the log), and passes that could not list the store",
                )
                    .expect("valid metric"),
            ),
            apply_requests: register(
                r,
                IntCounterVec::new(
                    Opts::new("harvester_apply_requests_total", "Objects applied, by outcome"),
                    &["outcome"],
                )
                .expect("valid metric"),
            ),
            watch_connections: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "harvester_watch_connections",
                        "Open streams: nodes following their assignments, API watches",
                    ),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
            compile_requests: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "harvester_hub_compile_requests_total",
                        "Nodes asking the hub for compiled code: compiled now, served from the hub's cache, or refused",
                    ),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            compile_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "harvester_hub_compile_duration_seconds",
                        "Time the hub took to compile a component for nodes",
                    )
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
                )
                .expect("valid metric"),
            ),
            compile_peak_memory: register(
                r,
                IntGauge::new(
                    "harvester_hub_compile_peak_memory_bytes",
                    "Peak memory of the hub's last compile, in its own process (the hub's memory stays apart)",
                )
                .expect("valid metric"),
            ),
            http_requests: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "harvester_hub_http_requests_total",
                        "Requests to the hub by audience (people, nodes, operators, dashboard) and outcome (ok, client_error, server_error)",
                    ),
                    &["audience", "outcome"],
                )
                .expect("valid metric"),
            ),
            audit_events: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "harvester_hub_audit_events_total",
                        "Writes recorded in the audit trail by outcome (ok, rejected, refused, failed)",
                    ),
                    &["outcome"],
                )
                .expect("valid metric"),
            ),
            audit_anonymous_refusals: register(
                r,
                IntCounter::new(
                    "harvester_hub_audit_anonymous_refusals_total",
                    "Requests without an identity (no credential, an unknown token, a wrong join token) that were refused; the audit trail sums them up by source address once a minute",
                )
                .expect("valid metric"),
            ),
            registry,
        };
        for o in ["ok", "rejected", "refused", "failed"] {
            m.audit_events.with_label_values(&[o]);
        }
        for a in crate::http::Audience::ALL {
            for o in ["ok", "client_error", "server_error"] {
                m.http_requests.with_label_values(&[a.as_str(), o]);
            }
        }
        for o in ["compiled", "cached", "refused"] {
            m.compile_requests.with_label_values(&[o]);
        }
        for o in APPLY_OUTCOMES {
            m.apply_requests.with_label_values(&[o]);
        }
        for k in ["assignments", "watch"] {
            m.watch_connections.with_label_values(&[k]);
        }
        for c in ["Ready", "NotReady"] {
            m.nodes.with_label_values(&[c]);
        }
        m
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts an open stream for as long as it lives.
pub struct StreamGuard(prometheus::IntGauge);

impl StreamGuard {
    pub fn new(metrics: &Metrics, kind: &str) -> StreamGuard {
        let g = metrics.watch_connections.with_label_values(&[kind]);
        g.inc();
        StreamGuard(g)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
