//! The level-triggered reconciler. From the whole desired state (Plugins)
//! and the whole observed state (Nodes, heartbeats) it computes, every time
//! anything changes and periodically:
//!
//! - each Node's Ready condition from its heartbeat lease ([`status`]);
//! - each node's assignments ([`placement`]: label selector, the hardware
//!   the node reports, pins and LEDs one plugin at a time);
//! - each Plugin's status: per-node phase, observedGeneration, and Ready /
//!   Progressing / Degraded / Verified conditions with reasons ([`status`]),
//!   and the [`events`] `describe` shows.
//!
//! It keeps no state that matters across restarts: killed at any point, it
//! recomputes the same answer from the store. One object that cannot be
//! read or written is reported and skipped; the pass goes on.

pub(crate) mod events;
pub(crate) mod placement;
pub(crate) mod status;

use crate::metrics::Metrics;
use crate::store::{Kind, Store, StoreError, Write};
use harvester_api::resources::{Assignment, Assignments, Node, Plugin, PluginStatusV1};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

pub(crate) struct Reconciler {
    store: Arc<Store>,
    leases: Mutex<HashMap<String, Instant>>,
    assignments: Mutex<HashMap<String, watch::Sender<Assignments>>>,
    node_timeout: Duration,
    period: Duration,
    poke: Notify,
    events: events::Events,
    metrics: Arc<Metrics>,
}

/// Something one pass could not do, naming the object; the next pass
/// tries again.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name}: {source}")]
pub(crate) struct ObjectError {
    pub kind: &'static str,
    pub name: String,
    #[source]
    pub source: StoreError,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads every object of a kind; one that does not parse is reported in
/// `errors` and left out.
fn load<T: serde::de::DeserializeOwned>(
    store: &Store,
    kind: Kind,
    errors: &mut Vec<ObjectError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for value in store.list(kind)? {
        let name = value["metadata"]["name"].as_str().unwrap_or("(unnamed)").to_string();
        match serde_json::from_value(value) {
            Ok(o) => out.push(o),
            Err(e) => errors.push(ObjectError {
                kind: kind.as_str(),
                name,
                source: e.into(),
            }),
        }
    }
    Ok(out)
}

impl Reconciler {
    pub(crate) fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        node_timeout: Duration,
        period: Duration,
    ) -> Reconciler {
        Reconciler {
            store,
            leases: Mutex::new(HashMap::new()),
            assignments: Mutex::new(HashMap::new()),
            node_timeout,
            period,
            poke: Notify::new(),
            events: events::Events::default(),
            metrics,
        }
    }

    pub(crate) fn heartbeat(&self, node: &str) {
        let first = lock(&self.leases).insert(node.to_string(), Instant::now()).is_none();
        if first {
            self.poke.notify_one();
        }
    }

    /// Milliseconds since the epoch of the node's last heartbeat, if any.
    pub(crate) fn last_heartbeat_ms(&self, node: &str) -> Option<u64> {
        let at = *lock(&self.leases).get(node)?;
        Some(harvester_api::now_ms().saturating_sub(at.elapsed().as_millis() as u64))
    }

    /// Recent events of a plugin, oldest first: (milliseconds since the epoch, message).
    pub(crate) fn events_of(&self, plugin: &str) -> Vec<(u64, String)> {
        self.events.of(plugin)
    }

    /// Whether `node` is assigned a plugin whose artifact is `digest`.
    pub(crate) fn assigned(&self, node: &str, digest: &harvester_api::Digest) -> bool {
        lock(&self.assignments)
            .get(node)
            .is_some_and(|tx| tx.borrow().plugins.iter().any(|a| a.digest == *digest))
    }

    /// The node's assignments, kept current.
    pub(crate) fn watch_assignments(&self, node: &str) -> watch::Receiver<Assignments> {
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
    pub(crate) async fn run(self: Arc<Self>) {
        let mut changes = self.store.subscribe();
        loop {
            let started = Instant::now();
            match self.reconcile().await {
                Ok(errors) => {
                    for e in &errors {
                        tracing::error!("reconcile: {e}");
                    }
                    self.metrics.reconcile_errors.inc_by(errors.len() as u64);
                }
                Err(e) => {
                    self.metrics.reconcile_errors.inc();
                    tracing::error!("reconcile failed: {e}");
                }
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

    /// One pass. Fails only when the store cannot be listed; the objects it
    /// could not handle come back as errors, each naming its object.
    pub(crate) async fn reconcile(&self) -> Result<Vec<ObjectError>, StoreError> {
        let mut errors = Vec::new();
        let plugins: Vec<Plugin> = load(&self.store, Kind::Plugin, &mut errors)?;
        let nodes: Vec<Node> = load(&self.store, Kind::Node, &mut errors)?;
        let ready = self.node_readiness(&nodes, &mut errors).await;
        self.node_metrics(&nodes, &ready);

        // A NotReady node keeps its assignments: no flapping. A plugin
        // without a digest was never resolved and runs nowhere.
        let placement = placement::place(
            placement::oldest_first(&plugins)
                .into_iter()
                .filter(|p| p.spec.digest.is_some()),
            &nodes,
        );
        self.publish(&nodes, &placement);

        self.metrics.plugin_condition.reset();
        self.metrics.rollout_nodes.reset();
        for plugin in &plugins {
            if let Err(source) = self.plugin_status(plugin, &placement, &ready).await {
                errors.push(ObjectError {
                    kind: "Plugin",
                    name: plugin.metadata.name.clone(),
                    source,
                });
            }
        }
        Ok(errors)
    }

    /// Writes each node's Ready condition where it changed; returns who is ready.
    async fn node_readiness(&self, nodes: &[Node], errors: &mut Vec<ObjectError>) -> BTreeMap<String, bool> {
        let now = harvester_api::now_ms();
        let mut ready = BTreeMap::new();
        for node in nodes {
            let name = &node.metadata.name;
            let lease = lock(&self.leases).get(name).map(|at| at.elapsed());
            let mut conditions = vec![status::node_ready(lease, self.node_timeout)];
            let ok = conditions[0].status == harvester_api::resources::ConditionStatus::True;
            ready.insert(name.clone(), ok);
            status::merge_times(&mut conditions, &node.status.conditions, now);
            if conditions == node.status.conditions {
                continue;
            }
            if !ok {
                tracing::warn!(node = name, reason = %conditions[0].reason, "node not ready");
            }
            let written = self
                .store
                .write_observed(Kind::Node, name, |cur| {
                    let Some(cur) = cur else { return Ok(Write::Keep) };
                    let mut n: Node = serde_json::from_value(cur.clone())?;
                    n.status.conditions = conditions.clone();
                    Ok(Write::Put(serde_json::to_value(n)?))
                })
                .await;
            if let Err(source) = written {
                errors.push(ObjectError {
                    kind: "Node",
                    name: name.clone(),
                    source,
                });
            }
        }
        ready
    }

    fn node_metrics(&self, nodes: &[Node], ready: &BTreeMap<String, bool>) {
        let up = ready.values().filter(|r| **r).count() as i64;
        self.metrics.nodes.with_label_values(&["Ready"]).set(up);
        self.metrics
            .nodes
            .with_label_values(&["NotReady"])
            .set(ready.len() as i64 - up);
        self.metrics.heartbeat.reset();
        for node in nodes {
            if let Some(ms) = self.last_heartbeat_ms(&node.metadata.name) {
                self.metrics
                    .heartbeat
                    .with_label_values(&[&node.metadata.name])
                    .set(ms as f64 / 1000.0);
            }
        }
    }

    /// Hands every node its full assignments; watchers hear only of changes.
    fn publish(&self, nodes: &[Node], placement: &placement::Placement<'_>) {
        let mut senders = lock(&self.assignments);
        for node in nodes {
            let name = &node.metadata.name;
            let plugins = placement
                .on_node
                .get(name.as_str())
                .map(|ps| ps.iter().filter_map(|p| assignment(p)).collect())
                .unwrap_or_default();
            let next = Assignments {
                node: name.clone(),
                plugins,
            };
            let tx = senders
                .entry(name.clone())
                .or_insert_with(|| watch::channel(Assignments::default()).0);
            tx.send_if_modified(|cur| {
                if *cur == next {
                    false
                } else {
                    *cur = next;
                    true
                }
            });
        }
    }

    /// Computes one Plugin's status from what its nodes report and writes
    /// it if it changed.
    async fn plugin_status(
        &self,
        plugin: &Plugin,
        placement: &placement::Placement<'_>,
        ready: &BTreeMap<String, bool>,
    ) -> Result<(), StoreError> {
        let name = plugin.metadata.name.as_str();
        let generation = plugin.metadata.generation;
        let on_nodes: BTreeMap<String, _> = placement
            .nodes_of
            .get(name)
            .into_iter()
            .flatten()
            .map(|node| {
                let reported = node.status.plugins.get(name).cloned();
                (
                    node.metadata.name.clone(),
                    reported.unwrap_or_else(status::not_reported),
                )
            })
            .collect();
        let (mut conditions, progress) = status::plugin_conditions(
            generation,
            &on_nodes,
            |n| ready.get(n).copied().unwrap_or(false),
            placement.clashes.get(name).map(Vec::as_slice),
        );
        for c in &conditions {
            for s in [
                harvester_api::resources::ConditionStatus::True,
                harvester_api::resources::ConditionStatus::False,
            ] {
                self.metrics
                    .plugin_condition
                    .with_label_values(&[name, c.kind.as_str(), s.as_str()])
                    .set(i64::from(c.status == s));
            }
        }
        let rollout = &self.metrics.rollout_nodes;
        rollout.with_label_values(&[name, "placed"]).set(progress.placed as i64);
        rollout
            .with_label_values(&[name, "current"])
            .set(progress.current as i64);
        let old = plugin.status.clone().unwrap_or_default();
        status::merge_times(&mut conditions, &old.conditions, harvester_api::now_ms());
        let new = PluginStatusV1 {
            observed_generation: generation,
            digest: plugin.spec.digest,
            nodes: on_nodes,
            conditions,
        };
        if plugin.status.as_ref() == Some(&new) {
            return Ok(());
        }
        for message in events::describe_changes(&old, &new) {
            self.events.record(name, message);
        }
        self.store
            .write_observed(Kind::Plugin, name, |cur| {
                let Some(cur) = cur else { return Ok(Write::Keep) };
                let mut p: Plugin = serde_json::from_value(cur.clone())?;
                if p.metadata.generation != generation {
                    // The spec moved on meanwhile; the next pass handles it.
                    return Ok(Write::Keep);
                }
                p.status = Some(new.clone());
                Ok(Write::Put(serde_json::to_value(p)?))
            })
            .await?;
        Ok(())
    }
}

/// What a node is told to run for a placed plugin (only plugins with a
/// digest are placed).
fn assignment(plugin: &Plugin) -> Option<Assignment> {
    Some(Assignment {
        name: plugin.metadata.name.clone(),
        generation: plugin.metadata.generation,
        digest: plugin.spec.digest?,
        image: plugin.spec.image.clone(),
        run: plugin.spec.run.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use harvester_api::ConditionType;
    use serde_json::json;

    fn plugin_json(name: &str, created: u64) -> serde_json::Value {
        json!({
            "apiVersion": "harvester.dev/v1alpha1", "kind": "Plugin",
            "metadata": {"name": name, "generation": 1, "creationTimestamp": created},
            "spec": {"image": "p.wasm", "digest": harvester_api::Digest::of(name.as_bytes()).to_string(),
                     "grants": {"leds": {"indices": [1]}}}
        })
    }

    async fn put(store: &Store, kind: Kind, name: &str, value: serde_json::Value) {
        store
            .write(kind, name, |_| Ok(Write::Put(value.clone())))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn one_bad_object_is_reported_by_name_and_the_pass_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        put(&store, Kind::Plugin, "good", plugin_json("good", 1)).await;
        put(&store, Kind::Plugin, "later", plugin_json("later", 2)).await;
        // Written by an older or newer release, or by hand: not a Plugin.
        put(
            &store,
            Kind::Plugin,
            "bad",
            json!({"metadata": {"name": "bad"}, "spec": 7}),
        )
        .await;
        let node = json!({"apiVersion": "harvester.dev/v1alpha1", "kind": "Node",
                          "metadata": {"name": "pi4"}, "status": {"devices": ["leds"]}});
        put(&store, Kind::Node, "pi4", node).await;
        let r = Reconciler::new(
            store.clone(),
            Arc::new(Metrics::new()),
            Duration::from_secs(15),
            Duration::from_secs(60),
        );
        let mut rx = r.watch_assignments("pi4");
        let errors = r.reconcile().await.unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let said = errors[0].to_string();
        assert!(said.starts_with("Plugin bad: stored object is corrupt"), "{said}");

        // The good plugin was placed and got its status; the later one
        // wants the same LED and says why it waits.
        let assigned: Vec<String> = rx.borrow_and_update().plugins.iter().map(|a| a.name.clone()).collect();
        assert_eq!(assigned, ["good"]);
        let good: Plugin = serde_json::from_value(store.get(Kind::Plugin, "good").unwrap().unwrap()).unwrap();
        let status = good.status.unwrap();
        assert_eq!(status.nodes["pi4"].phase, harvester_api::Phase::Pending);
        let later: Plugin = serde_json::from_value(store.get(Kind::Plugin, "later").unwrap().unwrap()).unwrap();
        let degraded = later
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.kind == ConditionType::Degraded)
            .unwrap();
        assert_eq!(degraded.reason, harvester_api::Reason::GrantConflict);
        assert!(
            degraded
                .message
                .contains("LED 1 is already granted to plugin good on node pi4")
        );
        // The node has no heartbeat: its Ready condition says so.
        let pi4: Node = serde_json::from_value(store.get(Kind::Node, "pi4").unwrap().unwrap()).unwrap();
        assert_eq!(pi4.status.conditions[0].reason, harvester_api::Reason::NoHeartbeat);
        assert!(!r.events_of("good").is_empty());
    }
}
