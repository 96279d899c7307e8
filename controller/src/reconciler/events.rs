//! Recent human-readable events per Plugin, newest last, kept in memory
//! like Kubernetes events: for `describe`, not for history.

use harvester_api::resources::PluginStatusV1;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

const EVENTS_PER_OBJECT: usize = 20;
/// The longest an event's message is kept.
const EVENT_BYTES: usize = 1024;

#[derive(Default)]
pub(crate) struct Events {
    by_plugin: Mutex<HashMap<String, VecDeque<(u64, String)>>>,
}

impl Events {
    pub(crate) fn record(&self, plugin: &str, message: String) {
        // Events quote what nodes report: bounded in bytes, not just in count.
        let message = harvester_api::truncate(message, EVENT_BYTES);
        tracing::info!(plugin, "{message}");
        let mut all = self.by_plugin.lock().unwrap_or_else(|e| e.into_inner());
        let q = all.entry(plugin.to_string()).or_default();
        if q.len() == EVENTS_PER_OBJECT {
            q.pop_front();
        }
        q.push_back((harvester_api::now_ms(), message));
    }

    /// Recent events of a plugin, oldest first: (milliseconds since the epoch, message).
    pub(crate) fn of(&self, plugin: &str) -> Vec<(u64, String)> {
        self.by_plugin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(plugin)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What changed between two statuses of a plugin, as a person reads it.
pub(crate) fn describe_changes(old: &PluginStatusV1, new: &PluginStatusV1) -> Vec<String> {
    let mut out = Vec::new();
    if old.observed_generation != new.observed_generation {
        out.push(format!(
            "generation {} to roll out ({})",
            new.observed_generation,
            new.digest.map(|d| d.short()).unwrap_or_default()
        ));
    }
    for (node, state) in &new.nodes {
        match old.nodes.get(node) {
            None => out.push(format!("assigned to {node}")),
            Some(before) if before.phase != state.phase || before.generation != state.generation => {
                let mut m = format!("{node}: {} generation {}", state.phase, state.generation);
                if !state.message.is_empty() {
                    m.push_str(&format!(": {}", state.message));
                }
                out.push(m);
            }
            _ => {}
        }
    }
    for node in old.nodes.keys().filter(|n| !new.nodes.contains_key(*n)) {
        out.push(format!("no longer assigned to {node}"));
    }
    for c in &new.conditions {
        let before = old.conditions.iter().find(|o| o.kind == c.kind);
        if before.is_none_or(|b| b.status != c.status) {
            let mut m = format!("{} is {} ({})", c.kind, c.status.as_str(), c.reason);
            if !c.message.is_empty() {
                m.push_str(&format!(": {}", c.message));
            }
            out.push(m);
        }
    }
    out
}

/// What changed in a rollout, as a person reads it.
pub(crate) fn describe_rollout(
    old: Option<&harvester_api::rollout::RolloutStatus>,
    new: &harvester_api::rollout::RolloutStatus,
) -> Vec<String> {
    use harvester_api::rollout::RolloutPhase;
    let mut out = Vec::new();
    let fresh = old.is_none_or(|o| o.revision != new.revision);
    if fresh && new.stable_revision != 0 && new.stable_revision != new.revision {
        out.push(format!(
            "rollout of revision {} started (stable revision {})",
            new.revision, new.stable_revision
        ));
    }
    for (node, revision) in &new.nodes {
        let before = old.and_then(|o| o.nodes.get(node));
        if before.is_some() && before != Some(revision) {
            out.push(format!("{node}: revision {revision}"));
        }
    }
    for (node, why) in &new.failed {
        if old.is_none_or(|o| !o.failed.contains_key(node)) {
            out.push(format!("revision {} failed on {node}: {why}", new.revision));
        }
    }
    if old.is_some_and(|o| o.step != new.step && o.revision == new.revision) {
        out.push(format!("rollout of revision {} at step {}", new.revision, new.step + 1));
    }
    if old.is_none_or(|o| o.phase != new.phase) {
        match new.phase {
            RolloutPhase::Aborted => out.push(format!(
                "rollout of revision {} aborted, every node back on revision {}: {}",
                new.revision, new.stable_revision, new.message
            )),
            RolloutPhase::Complete if !fresh || new.stable_revision == new.revision => {
                out.push(format!("revision {} rolled out", new.revision))
            }
            RolloutPhase::Paused => out.push(format!("rollout paused: {}", new.message)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconciler::status::{condition, not_reported};
    use harvester_api::{ConditionType, Phase, Reason};

    #[test]
    fn changes_read_as_sentences_and_only_changes_are_told() {
        let old = PluginStatusV1::default();
        let mut new = PluginStatusV1 {
            observed_generation: 2,
            ..Default::default()
        };
        new.nodes.insert("pi4".into(), not_reported());
        new.conditions
            .push(condition(ConditionType::Ready, false, Reason::RollingOut, "0/1".into()));
        assert_eq!(
            describe_changes(&old, &new),
            [
                "generation 2 to roll out ()",
                "assigned to pi4",
                "Ready is False (RollingOut): 0/1"
            ]
        );
        let mut later = new.clone();
        later.nodes.get_mut("pi4").unwrap().phase = Phase::Running;
        later.nodes.get_mut("pi4").unwrap().generation = 2;
        assert_eq!(describe_changes(&new, &later), ["pi4: Running generation 2"]);
        assert!(describe_changes(&later, &later).is_empty());
        let events = Events::default();
        for i in 0..25 {
            events.record("p", format!("event {i}"));
        }
        let kept = events.of("p");
        assert_eq!(kept.len(), EVENTS_PER_OBJECT);
        assert_eq!(kept.last().unwrap().1, "event 24");
        assert!(events.of("other").is_empty());
    }
}
