//! The level-triggered reconciler. From the whole desired state (Plugins)
//! and the whole observed state (Nodes, heartbeats) it computes, every time
//! anything changes and periodically:
//!
//! - each Node's Ready condition from its heartbeat lease ([`status`]);
//! - each node's assignments ([`placement`]: label selector, the hardware
//!   the node reports, pins and LEDs one plugin at a time);
//! - each Plugin's rollout: which revision each of its nodes runs
//!   ([`crate::rollout`]);
//! - each Plugin's status: per-node phase, observedGeneration, the rollout,
//!   and Ready / Progressing / Degraded / Verified / RolledBack / Paused
//!   conditions with reasons ([`status`]), and the [`events`] `describe` shows.
//!
//! It keeps no state that matters across restarts: killed at any point, it
//! recomputes the same answer from the store. One object that cannot be
//! read or written is reported and skipped; the pass goes on.

pub(crate) mod events;
pub(crate) mod placement;
pub(crate) mod status;

use crate::metrics::Metrics;
use crate::rollout::revisions::Revisions;
use crate::store::{Kind, Store, StoreError, Write};
use harvester_api::resources::{Assignment, Assignments, Node, Plugin, PluginOnNode, PluginStatusV1};
use harvester_api::rollout::{Revision, RolloutPhase, RolloutStatus};
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
    revisions: Revisions,
    /// Who applied each Plugin's pending change, and why, for its revision.
    changes: Mutex<HashMap<String, (String, Option<String>)>>,
    /// When a rollout next has something to decide (ms since the epoch).
    wake_at: Mutex<Option<u64>>,
}

/// Where one Plugin's rollout stands this pass, with the revisions its
/// nodes are assigned.
pub(crate) struct Plan {
    pub status: RolloutStatus,
    pub target: Revision,
    pub stable: Option<Revision>,
}

impl Plan {
    /// What `node` is told to run.
    fn assignment(&self, plugin: &Plugin, node: &str) -> Option<Assignment> {
        let number = self.status.revision_of(node)?;
        let revision = if number == self.target.number {
            &self.target
        } else {
            self.stable.as_ref().filter(|s| s.number == number)?
        };
        // While a progressive rollout updates the node, it carries the
        // health rules and the way back, for the node to judge and act on
        // by itself.
        let under_way = matches!(self.status.phase, RolloutPhase::Progressing | RolloutPhase::Paused);
        let guard = self
            .stable
            .as_ref()
            .filter(|s| {
                under_way
                    && number == self.target.number
                    && s.number != number
                    && plugin.spec.rollout.strategy != harvester_api::rollout::Strategy::AllAtOnce
            })
            .map(|s| {
                Box::new(harvester_api::rollout::Guard {
                    revision: number,
                    health: plugin.spec.rollout.health.clone(),
                    fallback: harvester_api::rollout::Fallback {
                        generation: crate::rollout::generation_of(&self.status, s, plugin.metadata.generation),
                        digest: s.digest,
                        image: s.image.clone(),
                        run: s.run.clone(),
                    },
                })
            });
        Some(Assignment {
            name: plugin.metadata.name.clone(),
            generation: crate::rollout::generation_of(&self.status, revision, plugin.metadata.generation),
            digest: revision.digest,
            image: revision.image.clone(),
            run: revision.run.clone(),
            guard,
        })
    }
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
    ) -> Result<Reconciler, StoreError> {
        Ok(Reconciler {
            revisions: Revisions::open(&store)?,
            changes: Mutex::new(HashMap::new()),
            wake_at: Mutex::new(None),
            store,
            leases: Mutex::new(HashMap::new()),
            assignments: Mutex::new(HashMap::new()),
            node_timeout,
            period,
            poke: Notify::new(),
            events: events::Events::default(),
            metrics,
        })
    }

    /// Notes who is about to change what `plugin` runs, and why, for the
    /// revision the change makes (recorded by the next pass).
    pub(crate) fn note_change(&self, plugin: &str, by: &str, why: Option<String>) {
        lock(&self.changes).insert(plugin.to_string(), (by.to_string(), why));
    }

    /// Every artifact something still needs: each Plugin's current one,
    /// each retained revision's, and what each node reports running (its
    /// last good one, even while a rollout moves on).
    pub(crate) fn referenced_artifacts(&self) -> Result<std::collections::HashSet<harvester_api::Digest>, StoreError> {
        let mut out: std::collections::HashSet<harvester_api::Digest> =
            self.revisions.all_digests()?.into_iter().collect();
        for v in self.store.list(Kind::Plugin)? {
            if let Ok(p) = serde_json::from_value::<harvester_api::resources::Plugin>(v) {
                out.extend(p.spec.digest);
                out.extend(p.status.iter().flat_map(|s| s.nodes.values().filter_map(|n| n.digest)));
            }
        }
        Ok(out)
    }

    /// A Plugin's revisions, oldest first.
    pub(crate) fn revisions(&self, plugin: &str) -> Result<Vec<Revision>, StoreError> {
        self.revisions.list(plugin)
    }

    /// A deleted Plugin's revisions go with it.
    pub(crate) fn forget(&self, plugin: &str) -> Result<(), StoreError> {
        lock(&self.changes).remove(plugin);
        self.revisions.remove_all(plugin)
    }

    /// Asks for a pass soon.
    pub(crate) fn poke(&self) {
        self.poke.notify_one();
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
                _ = tokio::time::sleep(self.until_next_pass()) => {}
            }
        }
    }

    /// The periodic pass, sooner when a rollout has something to decide.
    fn until_next_pass(&self) -> Duration {
        let soonest = lock(&self.wake_at).take();
        match soonest {
            Some(at) => Duration::from_millis(at.saturating_sub(harvester_api::now_ms())).min(self.period),
            None => self.period,
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
        let mut plans = BTreeMap::new();
        let mut wake: Option<u64> = None;
        for plugin in plugins.iter().filter(|p| p.spec.digest.is_some()) {
            match self.plan(plugin, &placement, &ready) {
                Ok(plan) => {
                    if let Some(at) =
                        crate::rollout::next_check(&plan.status, &plugin.spec.rollout, harvester_api::now_ms())
                    {
                        wake = Some(wake.map_or(at, |w| w.min(at)));
                    }
                    plans.insert(plugin.metadata.name.as_str(), plan);
                }
                Err(source) => errors.push(ObjectError {
                    kind: "Plugin",
                    name: plugin.metadata.name.clone(),
                    source,
                }),
            }
        }
        self.publish(&nodes, &placement, &plans);
        *lock(&self.wake_at) = wake;

        self.metrics.plugin_condition.reset();
        self.metrics.rollout_nodes.reset();
        self.metrics.rollout_step.reset();
        self.metrics.rollout_revision_nodes.reset();
        for plugin in &plugins {
            let plan = plans.get(plugin.metadata.name.as_str());
            if let Err(source) = self.plugin_status(plugin, &placement, &ready, plan).await {
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
            let mut conditions = vec![
                status::node_ready(lease, self.node_timeout),
                status::node_disk(node.status.disk_pressure),
            ];
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

    /// One step of a Plugin's rollout: its newest revision recorded, and
    /// the revision each of its nodes runs.
    fn plan(
        &self,
        plugin: &Plugin,
        placement: &placement::Placement<'_>,
        ready: &BTreeMap<String, bool>,
    ) -> Result<Plan, StoreError> {
        let name = plugin.metadata.name.as_str();
        let previous = plugin.status.as_ref().and_then(|s| s.rollout.as_ref());
        let keep: Vec<u64> = previous
            .map(|p| vec![p.revision, p.stable_revision])
            .unwrap_or_default();
        let noted = lock(&self.changes).get(name).cloned();
        let (by, why) = noted.clone().unwrap_or_default();
        let (target, made) = self
            .revisions
            .record(plugin, &by, why, &keep)?
            .ok_or_else(|| StoreError::Invalid(format!("Plugin {name} has no digest")))?;
        // The note is for the change that makes a revision, not for one
        // about to be written.
        if made {
            lock(&self.changes).remove(name);
        }
        let stable_number = match previous {
            Some(p) if p.revision != target.number && p.phase == RolloutPhase::Complete => p.revision,
            Some(p) => p.stable_revision,
            None => 0,
        };
        let stable = match stable_number {
            0 => None,
            n if n == target.number => Some(target.clone()),
            n => self.revisions.get(name, n)?,
        };
        let placed: Vec<&Node> = {
            let mut v: Vec<&Node> = placement.nodes_of.get(name).into_iter().flatten().copied().collect();
            v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            v
        };
        let views: Vec<crate::rollout::NodeView<'_>> = placed
            .iter()
            .map(|n| crate::rollout::NodeView {
                name: &n.metadata.name,
                labels: &n.metadata.labels,
                ready: ready.get(&n.metadata.name).copied().unwrap_or(false),
                reported: n.status.plugins.get(name),
            })
            .collect();
        let status = crate::rollout::advance(
            previous,
            &crate::rollout::Inputs {
                spec: &plugin.spec.rollout,
                target: &target,
                stable: stable.as_ref(),
                generation: plugin.metadata.generation,
                nodes: &views,
                now: harvester_api::now_ms(),
            },
        );
        Ok(Plan { status, target, stable })
    }

    /// Hands every node its full assignments; watchers hear only of changes.
    fn publish(&self, nodes: &[Node], placement: &placement::Placement<'_>, plans: &BTreeMap<&str, Plan>) {
        let mut senders = lock(&self.assignments);
        for node in nodes {
            let name = &node.metadata.name;
            let plugins = placement
                .on_node
                .get(name.as_str())
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| plans.get(p.metadata.name.as_str())?.assignment(p, name))
                        .collect()
                })
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
        plan: Option<&Plan>,
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
            placement.short_of_memory.get(name).map(Vec::as_slice),
        );
        let rollout = &self.metrics.rollout_nodes;
        rollout.with_label_values(&[name, "placed"]).set(progress.placed as i64);
        rollout
            .with_label_values(&[name, "current"])
            .set(progress.current as i64);
        let old = plugin.status.clone().unwrap_or_default();
        let rollout = plan.map(|p| p.status.clone());
        if let Some(r) = &rollout {
            status::rollout_conditions(&mut conditions, r, plugin.spec.rollout.strategy);
            self.rollout_metrics(name, plan, &on_nodes);
        }
        // The conditions as the Plugin shows them, the rollout's included.
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
        status::merge_times(&mut conditions, &old.conditions, harvester_api::now_ms());
        let new = PluginStatusV1 {
            observed_generation: generation,
            rollout,
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
        if let Some(r) = &new.rollout {
            for message in events::describe_rollout(old.rollout.as_ref(), r) {
                self.events.record(name, message);
            }
            self.note_outcome(name, old.rollout.as_ref(), r)?;
        }
        // The rollout's own state is written durably: a restarted hub must
        // resume with the same nodes on the same revisions.
        let write = |cur: Option<&serde_json::Value>| {
            let Some(cur) = cur else { return Ok(Write::Keep) };
            let mut p: Plugin = serde_json::from_value(cur.clone())?;
            if p.metadata.generation != generation
                || p.status.as_ref().and_then(|s| s.rollout.as_ref()) != old.rollout.as_ref()
            {
                // The spec moved on meanwhile, or someone paused, promoted
                // or aborted: the next pass starts from that.
                return Ok(Write::Keep);
            }
            p.status = Some(new.clone());
            Ok(Write::Put(serde_json::to_value(p)?))
        };
        let (_, event) = if decisive(plugin, old.rollout.as_ref(), new.rollout.as_ref()) {
            self.store.write(Kind::Plugin, name, write).await?
        } else {
            self.store.write_observed(Kind::Plugin, name, write).await?
        };
        if event.is_none() {
            self.poke.notify_one();
        }
        Ok(())
    }

    /// A revision's outcome, once its rollout completes or aborts.
    fn note_outcome(&self, plugin: &str, old: Option<&RolloutStatus>, new: &RolloutStatus) -> Result<(), StoreError> {
        let changed = old.is_none_or(|o| o.phase != new.phase || o.revision != new.revision);
        if !changed {
            return Ok(());
        }
        match new.phase {
            RolloutPhase::Complete => self.revisions.set_outcome(plugin, new.revision, "rolled out"),
            RolloutPhase::Aborted => {
                let reason = new.reason.as_ref().map_or("Aborted", |r| r.as_str());
                self.metrics.rollbacks.with_label_values(&[plugin, reason]).inc();
                self.revisions
                    .set_outcome(plugin, new.revision, &format!("rolled back: {}", new.message))
            }
            _ => Ok(()),
        }
    }

    fn rollout_metrics(&self, plugin: &str, plan: Option<&Plan>, placed: &BTreeMap<String, PluginOnNode>) {
        let Some(plan) = plan else { return };
        let s = &plan.status;
        self.metrics
            .rollout_step
            .with_label_values(&[plugin, s.phase.as_str()])
            .set(i64::from(s.step));
        let on = |n: u64| placed.keys().filter(|node| s.revision_of(node) == Some(n)).count() as i64;
        let m = &self.metrics.rollout_revision_nodes;
        m.with_label_values(&[plugin, "target"]).set(on(s.revision));
        if s.stable_revision != 0 && s.stable_revision != s.revision {
            m.with_label_values(&[plugin, "stable"]).set(on(s.stable_revision));
        }
    }
}

/// Whether a rollout's change must be on disk before anything else: which
/// node runs which revision, the step, the phase and people's decisions,
/// for Rolling and Canary. Times and messages are recomputed after a crash
/// (a node waits minReady again at worst), and AllAtOnce protects nothing.
fn decisive(plugin: &Plugin, old: Option<&RolloutStatus>, new: Option<&RolloutStatus>) -> bool {
    if plugin.spec.rollout.strategy == harvester_api::rollout::Strategy::AllAtOnce {
        return false;
    }
    let key = |r: Option<&RolloutStatus>| {
        r.map(|r| {
            (
                r.revision,
                r.stable_revision,
                r.phase,
                r.step,
                r.nodes.clone(),
                r.failed.clone(),
                r.paused,
                r.promote,
            )
        })
    };
    key(old) != key(new)
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

    fn reconciler(store: &Arc<Store>) -> Reconciler {
        Reconciler::new(
            store.clone(),
            Arc::new(Metrics::new()),
            Duration::from_secs(15),
            Duration::from_secs(60),
        )
        .unwrap()
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
        let r = reconciler(&store);
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

    #[tokio::test]
    async fn what_plugins_revisions_and_nodes_name_is_referenced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut a = plugin_json("a", 1);
        let running = harvester_api::Digest::of(b"what pi4 still runs");
        a["status"] = json!({"observedGeneration": 1, "nodes": {"pi4": {"phase": "Running", "generation": 1, "digest": running.to_string()}}});
        put(&store, Kind::Plugin, "a", a).await;
        let r = reconciler(&store);
        let referenced = r.referenced_artifacts().unwrap();
        assert!(referenced.contains(&harvester_api::Digest::of(b"a")), "the current one");
        assert!(referenced.contains(&running), "the one a node runs");
        assert!(!referenced.contains(&harvester_api::Digest::of(b"b")));
    }
}
