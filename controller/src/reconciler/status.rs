//! Conditions from facts, as pure functions: a Node's Ready condition from
//! its heartbeat lease, a Plugin's Ready / Progressing / Degraded /
//! Verified conditions from what its nodes report.

use harvester_api::resources::{Condition, ConditionStatus, PluginOnNode};
use harvester_api::{ConditionType, Phase, Reason};
use std::collections::BTreeMap;
use std::time::Duration;

pub(crate) fn condition(kind: ConditionType, ok: bool, reason: Reason, message: String) -> Condition {
    Condition {
        kind,
        status: if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        reason,
        message,
        last_transition_time: 0,
    }
}

/// Keeps the transition times of conditions whose status did not change;
/// the others changed `now`.
pub(crate) fn merge_times(new: &mut [Condition], old: &[Condition], now: u64) {
    for c in new.iter_mut() {
        c.last_transition_time = old
            .iter()
            .find(|o| o.kind == c.kind && o.status == c.status)
            .map_or(now, |o| o.last_transition_time);
    }
}

/// A node's Ready condition, from how long ago its last heartbeat came
/// (`None`: none since the hub started).
pub(crate) fn node_ready(since_heartbeat: Option<Duration>, timeout: Duration) -> Condition {
    match since_heartbeat {
        Some(age) if age <= timeout => condition(ConditionType::Ready, true, Reason::HeartbeatReceived, String::new()),
        // A stable message: a changing one would rewrite the Node on every pass.
        Some(_) => condition(
            ConditionType::Ready,
            false,
            Reason::HeartbeatTimeout,
            format!("no heartbeat for more than {}s", timeout.as_secs()),
        ),
        None => condition(
            ConditionType::Ready,
            false,
            Reason::NoHeartbeat,
            "no heartbeat since the controller started".to_string(),
        ),
    }
}

/// A node's DiskPressure condition, from what it reports.
pub(crate) fn node_disk(pressure: bool) -> Condition {
    if pressure {
        condition(
            ConditionType::DiskPressure,
            true,
            Reason::LowOnDisk,
            "its data folder is almost full: it keeps running what it runs and applies removals and config changes, but takes in no new component until space is freed".into(),
        )
    } else {
        condition(ConditionType::DiskPressure, false, Reason::EnoughDisk, String::new())
    }
}

/// What a node the plugin was just assigned to counts as until it reports.
pub(crate) fn not_reported() -> PluginOnNode {
    PluginOnNode {
        phase: Phase::Pending,
        generation: 0,
        digest: None,
        restarts: 0,
        reason: None,
        message: String::new(),
        health: None,
    }
}

/// How far a plugin's rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Nodes it is placed on.
    pub placed: usize,
    /// Of those, nodes running the current generation.
    pub current: usize,
}

/// What a rollout adds to a Plugin's conditions: the step in Progressing;
/// `Paused` while it waits; `RolledBack` once it aborted, with Ready and
/// Progressing saying so instead of waiting for nodes that went back.
///
/// Node counts alone do not end a rollout: until every node has held the
/// health rules for `minReady`, the revision may still be rolled back, so
/// the Plugin is neither Ready nor Complete while the rollout is under way,
/// even when every node already runs the newest generation.
pub(crate) fn rollout_conditions(
    conditions: &mut Vec<Condition>,
    r: &harvester_api::rollout::RolloutStatus,
    strategy: harvester_api::rollout::Strategy,
) {
    use harvester_api::rollout::{RolloutPhase, Strategy};
    let reason = r.reason.clone().unwrap_or(Reason::AbortedByUser);
    for c in conditions.iter_mut() {
        match (c.kind.clone(), r.phase) {
            (ConditionType::Progressing, RolloutPhase::Aborted) => {
                *c = condition(ConditionType::Progressing, false, reason.clone(), r.message.clone());
            }
            (ConditionType::Ready, RolloutPhase::Aborted) => {
                *c = condition(
                    ConditionType::Ready,
                    false,
                    reason.clone(),
                    format!(
                        "revision {} was rolled back to revision {}",
                        r.revision, r.stable_revision
                    ),
                );
            }
            (ConditionType::Ready, RolloutPhase::Progressing | RolloutPhase::Paused)
                if c.status == ConditionStatus::True =>
            {
                let waiting = if r.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.message)
                };
                *c = condition(
                    ConditionType::Ready,
                    false,
                    Reason::RollingOut,
                    format!("{}; revision {} is still rolling out{waiting}", c.message, r.revision),
                );
            }
            (ConditionType::Progressing, RolloutPhase::Progressing | RolloutPhase::Paused) => {
                if c.reason == Reason::Complete {
                    *c = condition(ConditionType::Progressing, true, Reason::RollingOut, c.message.clone());
                }
                if strategy != Strategy::AllAtOnce && !r.message.is_empty() {
                    c.message = format!("revision {}: {}", r.revision, r.message);
                }
            }
            _ => {}
        }
    }
    if r.phase == RolloutPhase::Aborted {
        conditions.push(condition(ConditionType::RolledBack, true, reason, r.message.clone()));
    }
    if r.phase == RolloutPhase::Paused {
        conditions.push(condition(
            ConditionType::Paused,
            true,
            r.reason.clone().unwrap_or(Reason::PausedByUser),
            r.message.clone(),
        ));
    }
}

/// A plugin's conditions at `generation`, from what each node it is
/// placed on reports, which of them are ready, and why it is kept off
/// others (`clashes`, `short_of_memory`).
pub(crate) fn plugin_conditions(
    generation: u64,
    on_nodes: &BTreeMap<String, PluginOnNode>,
    node_ready: impl Fn(&str) -> bool,
    clashes: Option<&[String]>,
    short_of_memory: Option<&[String]>,
) -> (Vec<Condition>, Progress) {
    let unsigned = |p: &PluginOnNode| p.reason == Some(Reason::Unsigned);
    let current = |p: &PluginOnNode| p.generation == generation && p.phase == Phase::Running;
    let done = on_nodes.values().filter(|p| current(p)).count();
    let total = on_nodes.len();
    let failing: Vec<String> = on_nodes
        .iter()
        .filter(|(_, p)| {
            // Crashing, or refusing the new version while the old runs on.
            p.phase.is_failing()
                || (p.generation < generation && !p.message.is_empty() && !unsigned(p))
                || p.reason.as_ref().is_some_and(Reason::is_failure)
        })
        .map(|(n, p)| format!("{n}: {} {}", p.phase, p.message).trim().to_string())
        .collect();
    let unready: Vec<&str> = on_nodes.keys().map(String::as_str).filter(|n| !node_ready(n)).collect();
    let rolled = format!("{done}/{total} nodes run generation {generation}");
    let ready = if total == 0 {
        condition(
            ConditionType::Ready,
            false,
            Reason::NoMatchingNodes,
            "no node matches the selector and has the hardware the grants need".into(),
        )
    } else if done == total {
        condition(ConditionType::Ready, true, Reason::AllNodesRunning, rolled.clone())
    } else {
        condition(ConditionType::Ready, false, Reason::RollingOut, rolled.clone())
    };
    let progressing = if done < total && failing.is_empty() {
        condition(ConditionType::Progressing, true, Reason::RollingOut, rolled)
    } else {
        let reason = if done == total {
            Reason::Complete
        } else {
            Reason::Stalled
        };
        condition(ConditionType::Progressing, false, reason, String::new())
    };
    let degraded = if let Some(c) = clashes.filter(|c| !c.is_empty()) {
        condition(ConditionType::Degraded, true, Reason::GrantConflict, c.join("; "))
    } else if let Some(m) = short_of_memory.filter(|m| !m.is_empty()) {
        condition(ConditionType::Degraded, true, Reason::InsufficientMemory, m.join("; "))
    } else if !failing.is_empty() {
        // A node's own reason (SignatureInvalid, PullFailed...) says more.
        let reason = on_nodes
            .values()
            .filter_map(|p| p.reason.clone())
            .find(Reason::is_failure)
            .unwrap_or(Reason::PluginFailing);
        condition(ConditionType::Degraded, true, reason, failing.join("; "))
    } else if !unready.is_empty() {
        condition(
            ConditionType::Degraded,
            true,
            Reason::NodeNotReady,
            format!("not ready: {}", unready.join(", ")),
        )
    } else {
        condition(ConditionType::Degraded, false, Reason::AsExpected, String::new())
    };
    let mut conditions = vec![ready, progressing, degraded];
    let unsigned: Vec<&str> = on_nodes
        .iter()
        .filter(|(_, p)| unsigned(p))
        .map(|(n, _)| n.as_str())
        .collect();
    if !unsigned.is_empty() {
        conditions.push(condition(
            ConditionType::Verified,
            false,
            Reason::UnsignedAllowed,
            format!(
                "running without a valid signature on {} (--allow-unsigned)",
                unsigned.join(", ")
            ),
        ));
    } else if done > 0 {
        conditions.push(condition(
            ConditionType::Verified,
            true,
            Reason::SignatureVerified,
            "every node checked the signature against its own trusted keys".into(),
        ));
    }
    (
        conditions,
        Progress {
            placed: total,
            current: done,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(phase: Phase, generation: u64, reason: Option<Reason>, message: &str) -> PluginOnNode {
        PluginOnNode {
            phase,
            generation,
            digest: None,
            restarts: 0,
            reason,
            message: message.into(),
            health: None,
        }
    }

    fn nodes(states: &[(&str, PluginOnNode)]) -> BTreeMap<String, PluginOnNode> {
        states.iter().map(|(n, p)| (n.to_string(), p.clone())).collect()
    }

    /// (type, status, reason) of each condition.
    fn summary(cs: &[Condition]) -> Vec<(String, ConditionStatus, String)> {
        cs.iter()
            .map(|c| (c.kind.to_string(), c.status, c.reason.to_string()))
            .collect()
    }

    fn get(cs: &[Condition], kind: ConditionType) -> &Condition {
        cs.iter().find(|c| c.kind == kind).unwrap()
    }

    #[test]
    fn a_node_is_ready_while_its_heartbeats_arrive() {
        let timeout = Duration::from_secs(15);
        let c = node_ready(Some(Duration::from_secs(3)), timeout);
        assert_eq!((c.status, c.reason), (ConditionStatus::True, Reason::HeartbeatReceived));
        let c = node_ready(Some(Duration::from_secs(16)), timeout);
        assert_eq!(
            (c.status, c.reason.clone()),
            (ConditionStatus::False, Reason::HeartbeatTimeout)
        );
        assert_eq!(c.message, "no heartbeat for more than 15s");
        let c = node_ready(None, timeout);
        assert_eq!((c.status, c.reason), (ConditionStatus::False, Reason::NoHeartbeat));
    }

    #[test]
    fn every_phase_of_a_current_node_gives_its_conditions() {
        use ConditionStatus::{False, True};
        for phase in Phase::KNOWN.iter().cloned().chain([Phase::Other("Throttled".into())]) {
            let states = nodes(&[("pi4", on(phase.clone(), 3, None, ""))]);
            let (cs, progress) = plugin_conditions(3, &states, |_| true, None, None);
            let (ready, degraded) = (get(&cs, ConditionType::Ready), get(&cs, ConditionType::Degraded));
            match &phase {
                Phase::Running => {
                    assert_eq!((ready.status, &ready.reason), (True, &Reason::AllNodesRunning));
                    assert_eq!(ready.message, "1/1 nodes run generation 3");
                    assert_eq!(get(&cs, ConditionType::Progressing).reason, Reason::Complete);
                    assert_eq!(degraded.reason, Reason::AsExpected);
                    assert_eq!(get(&cs, ConditionType::Verified).reason, Reason::SignatureVerified);
                    assert_eq!(progress, Progress { placed: 1, current: 1 });
                }
                Phase::Failed | Phase::CrashLoopBackOff => {
                    assert_eq!((ready.status, &ready.reason), (False, &Reason::RollingOut), "{phase}");
                    let progressing = get(&cs, ConditionType::Progressing);
                    assert_eq!((progressing.status, &progressing.reason), (False, &Reason::Stalled));
                    assert_eq!((degraded.status, &degraded.reason), (True, &Reason::PluginFailing));
                    assert_eq!(degraded.message, format!("pi4: {phase}"));
                    assert!(cs.iter().all(|c| c.kind != ConditionType::Verified));
                }
                _ => {
                    // On its way: rolling out, nothing wrong yet.
                    assert_eq!((ready.status, &ready.reason), (False, &Reason::RollingOut), "{phase}");
                    let progressing = get(&cs, ConditionType::Progressing);
                    assert_eq!((progressing.status, &progressing.reason), (True, &Reason::RollingOut));
                    assert_eq!((degraded.status, &degraded.reason), (False, &Reason::AsExpected));
                    assert_eq!(progress, Progress { placed: 1, current: 0 });
                }
            }
        }
    }

    #[test]
    fn every_reason_a_node_reports_shows_as_degraded_except_unsigned() {
        let reported = [
            Reason::SignatureInvalid,
            Reason::DigestMismatch,
            Reason::InvalidArtifact,
            Reason::PullFailed,
            Reason::CompiledCodeRefused,
            Reason::CompileUnavailable,
            Reason::LoadFailed,
            Reason::Other("QuotaExceeded".into()),
        ];
        for reason in reported {
            // The old version runs on while the new one is refused.
            let states = nodes(&[
                ("pi4", on(Phase::Running, 1, Some(reason.clone()), "refused: no")),
                ("zero", on(Phase::Running, 2, None, "")),
            ]);
            let (cs, _) = plugin_conditions(2, &states, |_| true, None, None);
            let degraded = get(&cs, ConditionType::Degraded);
            assert_eq!(degraded.status, ConditionStatus::True, "{reason}");
            assert_eq!(degraded.reason, reason);
            assert_eq!(degraded.message, "pi4: Running refused: no");
            assert_eq!(get(&cs, ConditionType::Progressing).reason, Reason::Stalled);
        }
        let states = nodes(&[("pi4", on(Phase::Running, 2, Some(Reason::Unsigned), "no signature"))]);
        let (cs, _) = plugin_conditions(2, &states, |_| true, None, None);
        assert_eq!(
            summary(&cs),
            [
                ("Ready".into(), ConditionStatus::True, "AllNodesRunning".into()),
                ("Progressing".into(), ConditionStatus::False, "Complete".into()),
                ("Degraded".into(), ConditionStatus::False, "AsExpected".into()),
                ("Verified".into(), ConditionStatus::False, "UnsignedAllowed".into()),
            ]
        );
        assert!(get(&cs, ConditionType::Verified).message.contains("on pi4"));
        // Running, but over its CPU budget: rolled out, and degraded for it.
        let why = "over its CPU budget of 100m (limits.cpu): 12 ticks delayed so far";
        let states = nodes(&[("pi4", on(Phase::Running, 2, Some(Reason::CpuLimit), why))]);
        let (cs, _) = plugin_conditions(2, &states, |_| true, None, None);
        assert_eq!(get(&cs, ConditionType::Ready).status, ConditionStatus::True);
        let degraded = get(&cs, ConditionType::Degraded);
        assert_eq!(
            (&degraded.status, &degraded.reason),
            (&ConditionStatus::True, &Reason::CpuLimit)
        );
        assert!(degraded.message.contains(why), "{}", degraded.message);
    }

    #[test]
    fn no_nodes_a_conflict_and_an_unready_node_each_say_so() {
        let (cs, progress) = plugin_conditions(1, &BTreeMap::new(), |_| true, None, None);
        assert_eq!(get(&cs, ConditionType::Ready).reason, Reason::NoMatchingNodes);
        assert_eq!(progress.placed, 0);
        assert!(cs.iter().all(|c| c.kind != ConditionType::Verified));

        let states = nodes(&[("pi4", on(Phase::Running, 1, None, ""))]);
        let clash = ["LED 5 is already granted to plugin older on node lab".to_string()];
        let (cs, _) = plugin_conditions(1, &states, |_| true, Some(&clash), None);
        let degraded = get(&cs, ConditionType::Degraded);
        assert_eq!(
            (degraded.status, &degraded.reason),
            (ConditionStatus::True, &Reason::GrantConflict)
        );
        assert_eq!(degraded.message, clash[0]);

        let states = nodes(&[("pi4", on(Phase::Running, 1, None, "")), ("zero", not_reported())]);
        let (cs, _) = plugin_conditions(1, &states, |n| n != "zero", None, None);
        let degraded = get(&cs, ConditionType::Degraded);
        assert_eq!(
            (degraded.reason.clone(), degraded.message.as_str()),
            (Reason::NodeNotReady, "not ready: zero")
        );
        assert_eq!(get(&cs, ConditionType::Ready).message, "1/2 nodes run generation 1");
    }

    #[test]
    fn a_rollout_within_its_min_ready_window_is_neither_ready_nor_complete() {
        use ConditionStatus::{False, True};
        use harvester_api::rollout::{RolloutPhase, RolloutStatus, Strategy};
        // Every node already runs generation 2: the counts alone say done.
        let states = nodes(&[
            ("n1", on(Phase::Running, 2, None, "")),
            ("n3", on(Phase::Running, 2, None, "")),
        ]);
        let waiting = RolloutStatus {
            revision: 2,
            stable_revision: 1,
            phase: RolloutPhase::Progressing,
            message: "2/2 nodes on revision 2; waiting for n3 to be healthy for 2s".into(),
            ..Default::default()
        };
        let with = |r: &RolloutStatus, strategy: Strategy| {
            let (mut cs, _) = plugin_conditions(2, &states, |_| true, None, None);
            rollout_conditions(&mut cs, r, strategy);
            cs
        };
        for strategy in [Strategy::Rolling, Strategy::Canary] {
            let cs = with(&waiting, strategy);
            assert_eq!(
                summary(&cs)[..3],
                [
                    ("Ready".into(), False, "RollingOut".into()),
                    ("Progressing".into(), True, "RollingOut".into()),
                    ("Degraded".into(), False, "AsExpected".into()),
                ]
            );
            assert_eq!(
                get(&cs, ConditionType::Ready).message,
                "2/2 nodes run generation 2; revision 2 is still rolling out: 2/2 nodes on revision 2; waiting for n3 to be healthy for 2s"
            );
            assert_eq!(
                get(&cs, ConditionType::Progressing).message,
                "revision 2: 2/2 nodes on revision 2; waiting for n3 to be healthy for 2s"
            );
        }
        // Paused by someone with every node on it: still not done.
        let paused = RolloutStatus {
            phase: RolloutPhase::Paused,
            paused: true,
            ..waiting.clone()
        };
        let cs = with(&paused, Strategy::Canary);
        assert_eq!(get(&cs, ConditionType::Ready).status, False);
        assert_eq!(get(&cs, ConditionType::Progressing).reason, Reason::RollingOut);
        // Once each node held the rules for minReady: complete.
        let complete = RolloutStatus {
            stable_revision: 2,
            phase: RolloutPhase::Complete,
            message: String::new(),
            ..waiting.clone()
        };
        let cs = with(&complete, Strategy::Rolling);
        assert_eq!(
            summary(&cs)[..3],
            [
                ("Ready".into(), True, "AllNodesRunning".into()),
                ("Progressing".into(), False, "Complete".into()),
                ("Degraded".into(), False, "AsExpected".into()),
            ]
        );
        assert_eq!(get(&cs, ConditionType::Ready).message, "2/2 nodes run generation 2");
        // A node still starting it: rolling out either way.
        let states = nodes(&[
            ("n1", on(Phase::Running, 2, None, "")),
            ("n3", on(Phase::Loading, 2, None, "")),
        ]);
        let (mut cs, _) = plugin_conditions(2, &states, |_| true, None, None);
        rollout_conditions(&mut cs, &waiting, Strategy::Rolling);
        assert_eq!(get(&cs, ConditionType::Ready).message, "1/2 nodes run generation 2");
        assert_eq!(get(&cs, ConditionType::Progressing).status, True);
    }

    #[test]
    fn transition_times_move_only_when_the_status_does() {
        let old = vec![
            Condition {
                last_transition_time: 100,
                ..condition(ConditionType::Ready, true, Reason::AllNodesRunning, String::new())
            },
            Condition {
                last_transition_time: 100,
                ..condition(ConditionType::Degraded, false, Reason::AsExpected, String::new())
            },
        ];
        let mut new = vec![
            condition(
                ConditionType::Ready,
                true,
                Reason::AllNodesRunning,
                "changed text".into(),
            ),
            condition(ConditionType::Degraded, true, Reason::PluginFailing, String::new()),
        ];
        merge_times(&mut new, &old, 200);
        assert_eq!(new[0].last_transition_time, 100);
        assert_eq!(new[1].last_transition_time, 200);
    }
}
