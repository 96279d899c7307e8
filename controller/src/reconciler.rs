//! The level-triggered reconciler. From the whole desired state (Plugins)
//! and the whole observed state (Nodes, heartbeats) it computes, every time
//! anything changes and periodically:
//!
//! - each node's assignments (label selector, and the hardware the node
//!   reports: a plugin that needs the buzzer goes only where there is one);
//! - each Plugin's status: per-node phase, observedGeneration, and Ready /
//!   Progressing / Degraded conditions with reasons;
//! - each Node's Ready condition from its heartbeat lease.
//!
//! It keeps no state that matters across restarts: killed at any point, it
//! recomputes the same answer from the store.

use crate::apply::now_ms;
use crate::metrics::Metrics;
use crate::store::{Kind, Store, StoreError, Write};
use harvester_api::resources::{
    Assignment, Assignments, Condition, ConditionStatus, Node, Plugin, PluginOnNode, PluginStatusV1, required_devices,
    selector_matches,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

pub struct Reconciler {
    store: Arc<Store>,
    leases: Mutex<HashMap<String, Instant>>,
    assignments: Mutex<HashMap<String, watch::Sender<Assignments>>>,
    node_timeout: Duration,
    period: Duration,
    poke: Notify,
    /// Recent human-readable events per Plugin, newest last (kept in memory,
    /// like Kubernetes events: for `describe`, not for history).
    events: Mutex<HashMap<String, VecDeque<(u64, String)>>>,
    metrics: Arc<Metrics>,
}

const EVENTS_PER_OBJECT: usize = 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which nodes `plugin` belongs on.
pub fn places(plugin: &Plugin, node: &Node) -> bool {
    selector_matches(&plugin.spec.node_selector, &node.metadata.labels)
        && required_devices(&plugin.spec.grants)
            .iter()
            .all(|d| node.status.devices.iter().any(|have| have == d))
}

fn condition(kind: &str, ok: bool, reason: &str, message: String) -> Condition {
    Condition {
        kind: kind.to_string(),
        status: if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        reason: reason.to_string(),
        message,
        last_transition_time: 0,
    }
}

/// Keeps transition times of conditions whose status did not change.
fn merge_times(new: &mut [Condition], old: &[Condition], now: u64) {
    for c in new.iter_mut() {
        c.last_transition_time = old
            .iter()
            .find(|o| o.kind == c.kind && o.status == c.status)
            .map_or(now, |o| o.last_transition_time);
    }
}

impl Reconciler {
    pub fn new(store: Arc<Store>, node_timeout: Duration, period: Duration) -> Reconciler {
        Reconciler {
            store,
            leases: Mutex::new(HashMap::new()),
            assignments: Mutex::new(HashMap::new()),
            node_timeout,
            period,
            poke: Notify::new(),
            events: Mutex::new(HashMap::new()),
            metrics: Arc::new(Metrics::new()),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn heartbeat(&self, node: &str) {
        let first = lock(&self.leases).insert(node.to_string(), Instant::now()).is_none();
        if first {
            self.poke.notify_one();
        }
    }

    /// Milliseconds since the epoch of the node's last heartbeat, if any.
    pub fn last_heartbeat_ms(&self, node: &str) -> Option<u64> {
        let at = *lock(&self.leases).get(node)?;
        Some(now_ms().saturating_sub(at.elapsed().as_millis() as u64))
    }

    fn record(&self, plugin: &str, message: String) {
        tracing::info!(plugin, "{message}");
        let mut all = lock(&self.events);
        let q = all.entry(plugin.to_string()).or_default();
        if q.len() == EVENTS_PER_OBJECT {
            q.pop_front();
        }
        q.push_back((now_ms(), message));
    }

    /// Recent events of a plugin, oldest first: (milliseconds since the epoch, message).
    pub fn events_of(&self, plugin: &str) -> Vec<(u64, String)> {
        lock(&self.events)
            .get(plugin)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The node's assignments, kept current.
    pub fn watch_assignments(&self, node: &str) -> watch::Receiver<Assignments> {
        let mut all = lock(&self.assignments);
        let tx = all.entry(node.to_string()).or_insert_with(|| {
            watch::channel(Assignments {
                node: node.to_string(),
                plugins: Vec::new(),
            })
            .0
        });
        let rx = tx.subscribe();
        drop(all);
        self.poke.notify_one();
        rx
    }

    /// Reconciles on every store change, on pokes, and every `period`.
    pub async fn run(self: Arc<Self>) {
        let mut changes = self.store.subscribe();
        loop {
            let started = Instant::now();
            if let Err(e) = self.reconcile().await {
                self.metrics.reconcile_errors.inc();
                tracing::error!("reconcile failed: {e}");
            }
            self.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
            tracing::trace!(ms = started.elapsed().as_millis() as u64, "reconciled");
            tokio::select! {
                r = changes.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                        return;
                    }
                    // Coalesce a burst of changes into one pass.
                    while changes.try_recv().is_ok() {}
                }
                _ = self.poke.notified() => {}
                _ = tokio::time::sleep(self.period) => {}
            }
        }
    }

    /// Turns status differences into events a person can read.
    fn note_changes(&self, plugin: &str, old: &PluginStatusV1, new: &PluginStatusV1) {
        if old.observed_generation != new.observed_generation {
            self.record(
                plugin,
                format!(
                    "generation {} to roll out ({})",
                    new.observed_generation,
                    new.digest.map(|d| d.short()).unwrap_or_default()
                ),
            );
        }
        for (node, state) in &new.nodes {
            match old.nodes.get(node) {
                None => self.record(plugin, format!("assigned to {node}")),
                Some(before) if before.phase != state.phase || before.generation != state.generation => {
                    let mut m = format!("{node}: {} generation {}", state.phase, state.generation);
                    if !state.message.is_empty() {
                        m.push_str(&format!(": {}", state.message));
                    }
                    self.record(plugin, m);
                }
                _ => {}
            }
        }
        for node in old.nodes.keys().filter(|n| !new.nodes.contains_key(*n)) {
            self.record(plugin, format!("no longer assigned to {node}"));
        }
        for c in &new.conditions {
            let before = old.conditions.iter().find(|o| o.kind == c.kind);
            if before.is_none_or(|b| b.status != c.status) {
                self.record(
                    plugin,
                    format!(
                        "{} is {:?} ({}){}",
                        c.kind,
                        c.status,
                        c.reason,
                        if c.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", c.message)
                        }
                    ),
                );
            }
        }
    }

    pub async fn reconcile(&self) -> Result<(), StoreError> {
        let plugins: Vec<Plugin> = self
            .store
            .list(Kind::Plugin)?
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()?;
        let nodes: Vec<Node> = self
            .store
            .list(Kind::Node)?
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()?;
        let now = now_ms();

        // Readiness from heartbeat leases.
        let mut ready = BTreeMap::new();
        for node in &nodes {
            let lease = lock(&self.leases).get(&node.metadata.name).copied();
            let (ok, reason, message) = match lease {
                Some(at) if at.elapsed() <= self.node_timeout => (true, "HeartbeatReceived", String::new()),
                // A stable message: a changing one would rewrite the Node on
                // every pass.
                Some(_) => (
                    false,
                    "HeartbeatTimeout",
                    format!("no heartbeat for more than {}s", self.node_timeout.as_secs()),
                ),
                None => (
                    false,
                    "NoHeartbeat",
                    "no heartbeat since the controller started".to_string(),
                ),
            };
            ready.insert(node.metadata.name.clone(), ok);
            let mut conditions = vec![condition("Ready", ok, reason, message)];
            merge_times(&mut conditions, &node.status.conditions, now);
            if conditions != node.status.conditions {
                let name = node.metadata.name.clone();
                if !ok {
                    tracing::warn!(node = name, reason, "node not ready");
                }
                self.store
                    .write_observed(Kind::Node, &name, |cur| {
                        let Some(cur) = cur else { return Ok(Write::Keep) };
                        let mut n: Node = serde_json::from_value(cur.clone())?;
                        n.status.conditions = conditions.clone();
                        Ok(Write::Put(serde_json::to_value(n)?))
                    })
                    .await?;
            }
        }

        let up = ready.values().filter(|r| **r).count() as i64;
        self.metrics.nodes.with_label_values(&["Ready"]).set(up);
        self.metrics
            .nodes
            .with_label_values(&["NotReady"])
            .set(ready.len() as i64 - up);
        self.metrics.heartbeat.reset();
        for node in &nodes {
            if let Some(ms) = self.last_heartbeat_ms(&node.metadata.name) {
                self.metrics
                    .heartbeat
                    .with_label_values(&[&node.metadata.name])
                    .set(ms as f64 / 1000.0);
            }
        }

        // Placement. A NotReady node keeps its assignments: no flapping.
        // Older plugins place first, so one applied later that wants a pin
        // or an LED already granted on a node waits instead of taking it.
        let mut per_node: BTreeMap<String, Vec<Assignment>> = BTreeMap::new();
        let mut per_plugin: BTreeMap<String, Vec<&Node>> = BTreeMap::new();
        let mut clashes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // Per node, who holds each output pin and each LED.
        type Held<'a> = (BTreeMap<u8, &'a str>, BTreeMap<u32, &'a str>);
        let mut held: BTreeMap<&str, Held> = BTreeMap::new();
        let mut by_age: Vec<&Plugin> = plugins.iter().collect();
        by_age.sort_by_key(|p| (p.metadata.creation_timestamp, p.metadata.name.clone()));
        for plugin in by_age {
            let Some(digest) = plugin.spec.digest else { continue };
            let pins = plugin.spec.grants.output_pins();
            let leds = plugin.spec.grants.led_indices();
            let name = plugin.metadata.name.as_str();
            for node in nodes.iter().filter(|n| places(plugin, n)) {
                let (node_pins, node_leds) = held.entry(node.metadata.name.as_str()).or_default();
                let taken = pins
                    .iter()
                    .find_map(|p| node_pins.get(p).map(|o| (format!("GPIO pin {p}"), *o)))
                    .or_else(|| {
                        leds.iter()
                            .find_map(|l| node_leds.get(l).map(|o| (format!("LED {l}"), *o)))
                    });
                if let Some((what, other)) = taken {
                    clashes.entry(name.to_string()).or_default().push(format!(
                        "{what} is already granted to plugin {other} on node {}",
                        node.metadata.name
                    ));
                    continue;
                }
                node_pins.extend(pins.iter().map(|p| (*p, name)));
                node_leds.extend(leds.iter().map(|l| (*l, name)));
                per_node
                    .entry(node.metadata.name.clone())
                    .or_default()
                    .push(Assignment {
                        name: plugin.metadata.name.clone(),
                        generation: plugin.metadata.generation,
                        digest,
                        image: plugin.spec.image.clone(),
                        grants: plugin.spec.grants.clone(),
                        config: plugin.spec.config.clone(),
                        tick_interval: plugin.spec.tick_interval,
                        limits: plugin.spec.limits,
                    });
                per_plugin.entry(plugin.metadata.name.clone()).or_default().push(node);
            }
        }
        {
            let mut senders = lock(&self.assignments);
            for node in &nodes {
                let name = &node.metadata.name;
                let next = Assignments {
                    node: name.clone(),
                    plugins: per_node.remove(name).unwrap_or_default(),
                };
                let tx = senders
                    .entry(name.clone())
                    .or_insert_with(|| watch::channel(Assignments::default()).0);
                tx.send_if_modified(|cur| {
                    if *cur == next {
                        false
                    } else {
                        *cur = next.clone();
                        true
                    }
                });
            }
        }

        // Plugin status from what the nodes report.
        self.metrics.plugin_condition.reset();
        self.metrics.rollout_nodes.reset();
        for plugin in &plugins {
            let name = &plugin.metadata.name;
            let generation = plugin.metadata.generation;
            let placed = per_plugin.remove(name).unwrap_or_default();
            let mut on_nodes = BTreeMap::new();
            for node in &placed {
                let reported = node.status.plugins.get(name).cloned().unwrap_or(PluginOnNode {
                    phase: "Pending".into(),
                    generation: 0,
                    digest: None,
                    restarts: 0,
                    reason: String::new(),
                    message: String::new(),
                });
                on_nodes.insert(node.metadata.name.clone(), reported);
            }
            let current = |p: &PluginOnNode| p.generation == generation && p.phase == "Running";
            let done = on_nodes.values().filter(|p| current(p)).count();
            let failing: Vec<String> = on_nodes
                .iter()
                .filter(|(_, p)| {
                    // Crashing, or refusing the new version while the old runs on.
                    matches!(p.phase.as_str(), "Failed" | "CrashLoopBackOff")
                        || (p.generation < generation && !p.message.is_empty() && p.reason != "Unsigned")
                        || (!p.reason.is_empty() && p.reason != "Unsigned")
                })
                .map(|(n, p)| format!("{n}: {} {}", p.phase, p.message).trim().to_string())
                .collect();
            let unready: Vec<&String> = on_nodes
                .keys()
                .filter(|n| !ready.get(*n).copied().unwrap_or(false))
                .collect();
            let total = on_nodes.len();
            let mut conditions = vec![
                if total == 0 {
                    condition(
                        "Ready",
                        false,
                        "NoMatchingNodes",
                        "no node matches the selector and has the hardware the grants need".into(),
                    )
                } else if done == total {
                    condition(
                        "Ready",
                        true,
                        "AllNodesRunning",
                        format!("{done}/{total} nodes run generation {generation}"),
                    )
                } else {
                    condition(
                        "Ready",
                        false,
                        "RollingOut",
                        format!("{done}/{total} nodes run generation {generation}"),
                    )
                },
                if done < total && failing.is_empty() {
                    condition(
                        "Progressing",
                        true,
                        "RollingOut",
                        format!("{done}/{total} nodes run generation {generation}"),
                    )
                } else {
                    condition(
                        "Progressing",
                        false,
                        if done == total { "Complete" } else { "Stalled" },
                        String::new(),
                    )
                },
                if let Some(c) = clashes.get(name) {
                    condition("Degraded", true, "GrantConflict", c.join("; "))
                } else if !failing.is_empty() {
                    // A node's own reason (SignatureInvalid, PullFailed...) says more.
                    let reason = on_nodes
                        .values()
                        .find(|p| !p.reason.is_empty() && p.reason != "Unsigned")
                        .map(|p| p.reason.as_str())
                        .unwrap_or("PluginFailing");
                    condition("Degraded", true, reason, failing.join("; "))
                } else if !unready.is_empty() {
                    condition(
                        "Degraded",
                        true,
                        "NodeNotReady",
                        format!(
                            "not ready: {}",
                            unready.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    )
                } else {
                    condition("Degraded", false, "AsExpected", String::new())
                },
            ];
            let unsigned: Vec<&str> = on_nodes
                .iter()
                .filter(|(_, p)| p.reason == "Unsigned")
                .map(|(n, _)| n.as_str())
                .collect();
            if !unsigned.is_empty() {
                conditions.push(condition(
                    "Verified",
                    false,
                    "UnsignedAllowed",
                    format!(
                        "running without a valid signature on {} (--allow-unsigned)",
                        unsigned.join(", ")
                    ),
                ));
            } else if done > 0 {
                conditions.push(condition(
                    "Verified",
                    true,
                    "SignatureVerified",
                    "every node checked the signature against its own trusted keys".into(),
                ));
            }
            for c in &conditions {
                for status in ["True", "False"] {
                    let on = format!("{:?}", c.status) == status;
                    self.metrics
                        .plugin_condition
                        .with_label_values(&[name.as_str(), c.kind.as_str(), status])
                        .set(i64::from(on));
                }
            }
            let rollout = &self.metrics.rollout_nodes;
            rollout.with_label_values(&[name.as_str(), "placed"]).set(total as i64);
            rollout.with_label_values(&[name.as_str(), "current"]).set(done as i64);
            let old = plugin.status.clone().unwrap_or_default();
            merge_times(&mut conditions, &old.conditions, now);
            let status = PluginStatusV1 {
                observed_generation: generation,
                digest: plugin.spec.digest,
                nodes: on_nodes,
                conditions,
            };
            if plugin.status.as_ref() == Some(&status) {
                continue;
            }
            self.note_changes(name, &old, &status);
            self.store
                .write_observed(Kind::Plugin, name, |cur| {
                    let Some(cur) = cur else { return Ok(Write::Keep) };
                    let mut p: Plugin = serde_json::from_value(cur.clone())?;
                    if p.metadata.generation != generation {
                        // The spec moved on meanwhile; the next pass handles it.
                        return Ok(Write::Keep);
                    }
                    p.status = Some(status.clone());
                    Ok(Write::Put(serde_json::to_value(p)?))
                })
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harvester_api::resources::parse_documents;

    pub(super) fn plugin(yaml_spec: &str) -> Plugin {
        let text = format!(
            "apiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: p}}\nspec:\n  image: p.wasm\n{yaml_spec}"
        );
        match parse_documents(&text).unwrap().remove(0) {
            harvester_api::resources::Object::Plugin(p) => p,
            _ => unreachable!(),
        }
    }

    pub(super) fn node(labels: &[(&str, &str)], devices: &[&str]) -> Node {
        let mut n: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "harvester.dev/v1alpha1", "kind": "Node", "metadata": {"name": "n"}
        }))
        .unwrap();
        n.metadata.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        n.status.devices = devices.iter().map(|d| d.to_string()).collect();
        n
    }

    #[test]
    fn placement_needs_the_labels_and_the_hardware() {
        let sensor = node(&[("role", "sensor")], &["gpio", "leds", "dht22"]);
        let hub = node(&[("role", "hub")], &["gpio", "leds", "buzzer"]);
        let p = plugin("  nodeSelector: {role: sensor}\n  grants: {dht22: {pin: 4}, leds: {indices: [1]}}\n");
        assert!(places(&p, &sensor) && !places(&p, &hub));
        let buzz = plugin("  grants: {buzzer: {}}\n");
        assert!(!places(&buzz, &sensor) && places(&buzz, &hub));
        let anywhere = plugin("  grants: {system: {}, net: {hosts: [127.0.0.1]}}\n");
        assert!(places(&anywhere, &sensor) && places(&anywhere, &hub));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use harvester_api::Grants;
    use proptest::prelude::*;

    const DEVICES: [&str; 5] = ["gpio", "leds", "buzzer", "dht22", "bme680"];

    fn grants_needing(needs: &[bool]) -> Grants {
        let mut g = Grants::default();
        if needs[0] {
            g.gpio = Some(harvester_api::grants::GpioGrant { pins: vec![17] });
        }
        if needs[1] {
            g.leds = Some(harvester_api::grants::LedsGrant { indices: vec![1] });
        }
        if needs[2] {
            g.buzzer = Some(Default::default());
        }
        if needs[3] {
            g.dht22 = Some(harvester_api::grants::Dht22Grant { pin: 4 });
        }
        if needs[4] {
            g.bme680 = Some(Default::default());
        }
        g
    }

    proptest! {
        /// A plugin lands on a node exactly when the node's labels include
        /// the selector and the node has every device the grants need.
        #[test]
        fn placement_is_selector_and_hardware(
            selector in proptest::collection::btree_map("[a-c]", "[x-z]", 0..3),
            labels in proptest::collection::btree_map("[a-d]", "[x-z]", 0..4),
            needs in proptest::collection::vec(any::<bool>(), 5),
            has in proptest::collection::vec(any::<bool>(), 5),
        ) {
            let mut plugin = tests::plugin("  grants: {}\n");
            plugin.spec.node_selector = selector.clone();
            plugin.spec.grants = grants_needing(&needs);
            let devices: Vec<&str> = DEVICES.iter().zip(&has).filter(|(_, h)| **h).map(|(d, _)| *d).collect();
            let labels_vec: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let node = tests::node(&labels_vec, &devices);
            let selector_ok = selector.iter().all(|(k, v)| labels.get(k) == Some(v));
            let hardware_ok = needs.iter().zip(&has).all(|(need, have)| !need || *have);
            prop_assert_eq!(places(&plugin, &node), selector_ok && hardware_ok);
        }
    }
}
