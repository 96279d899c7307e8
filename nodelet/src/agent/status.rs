//! What the node reports: its Node object (hardware, engine, trust) and
//! each plugin's state, typed from the runtime's status and what
//! converging left behind; sent every heartbeat and soon after a change.

use super::{Agent, lock};
use crate::events::{EventKind, Phase};
use harvester_api::Reason;
use harvester_api::resources::{API_VERSION, Node, NodeStatusV1, ObjectMeta, PluginOnNode};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

impl Agent {
    pub(super) fn node_object(&self) -> Node {
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
                memory: super::node_memory(self.opts.plugin_memory),
                disk_pressure: {
                    let pressure = super::disk_pressure(&self.opts.data_dir);
                    self.metrics.disk_pressure.set(i64::from(pressure));
                    pressure
                },
                plugins: self.plugin_states(),
                conditions: Vec::new(),
            },
        }
    }

    fn plugin_states(&self) -> BTreeMap<String, PluginOnNode> {
        let failures = lock(&self.converged.failures).clone();
        let applied = lock(&self.converged.applied).clone();
        let mut out = BTreeMap::new();
        for s in self.runtime.status() {
            let ours = applied.get(&s.name).filter(|a| s.digest == Some(a.component));
            let (reason, message) = match (&s.phase, failures.get(&s.name)) {
                (_, Some(f)) => (Some(f.reason.clone()), f.message.clone()),
                (Phase::Failed | Phase::CrashLoopBackOff | Phase::Restarting, _) => {
                    (None, s.last_error.clone().unwrap_or_default())
                }
                (Phase::Running, _) if let Some(why) = s.cpu_limited() => (Some(Reason::CpuLimit), why),
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
                    health: self.guards.report(&s.name),
                },
            );
        }
        // Refused before anything ever ran here.
        for (name, f) in failures {
            let health = self.guards.report(&name);
            out.entry(name).or_insert(PluginOnNode {
                phase: Phase::Failed,
                generation: 0,
                digest: None,
                restarts: 0,
                health,
                reason: Some(f.reason),
                message: f.message,
            });
        }
        out
    }
}

/// Reports every heartbeat, and soon after a plugin changes state, until aborted.
pub(super) async fn run(agent: Arc<Agent>) {
    let mut events = agent.runtime.subscribe();
    // One interval for the whole loop: telemetry arrives far more often
    // than heartbeats and must not keep postponing them.
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
}
