//! Progressive rollouts: which revision each node of a Plugin runs.
//!
//! [`advance`] is one level-triggered step of the rollout of the newest
//! revision: from the rollout's stored status, the nodes the Plugin is
//! placed on and what they report, it computes the next status, whose
//! `nodes` map is what each node is assigned. It holds no timer and no
//! state of its own: a hub killed at any point recomputes the same answer
//! from the store and resumes at the same step.
//!
//! Health is judged from what nodes report: a node runs the new revision
//! healthily once it has been Running on it for `health.minReady` without
//! failing; it fails when it crash-loops, restarts more than
//! `health.maxRestarts` times, or cannot load the revision at all (init
//! failed, refused). Past `maxFailedNodes` failures, or without progress
//! for `progressDeadline`, the rollout aborts and every node goes back to
//! the stable revision (the last one rolled out completely).

pub(crate) mod revisions;

use harvester_api::Phase;
use harvester_api::Reason;
use harvester_api::resources::PluginOnNode;
use harvester_api::rollout::{Amount, Pause, Revision, RolloutPhase, RolloutSpec, RolloutStatus, Strategy};
use std::collections::BTreeMap;

/// A node the Plugin is placed on, as the rollout sees it.
pub(crate) struct NodeView<'a> {
    pub name: &'a str,
    pub labels: &'a harvester_api::resources::Labels,
    pub ready: bool,
    /// What it reports for this Plugin.
    pub reported: Option<&'a PluginOnNode>,
}

pub(crate) struct Inputs<'a> {
    pub spec: &'a RolloutSpec,
    pub target: &'a Revision,
    /// The revision to go back to; none before a first rollout completes.
    pub stable: Option<&'a Revision>,
    /// The Plugin's generation: what a node on the target revision runs.
    pub generation: u64,
    /// Placed nodes, in name order.
    pub nodes: &'a [NodeView<'a>],
    pub now: u64,
}

/// The generation a node assigned `revision` is told to run: the
/// Plugin's own for the newest revision, else the one the stable revision
/// last ran at (a change of where a plugin runs makes a generation, not a
/// revision).
pub(crate) fn generation_of(s: &RolloutStatus, revision: &Revision, plugin_generation: u64) -> u64 {
    if revision.number == s.revision {
        plugin_generation
    } else if revision.number == s.stable_revision && s.stable_generation != 0 {
        s.stable_generation
    } else {
        revision.generation
    }
}

/// Reasons a node gives that say the revision itself cannot run there.
fn refuses(reason: &Reason) -> bool {
    matches!(
        reason,
        Reason::LoadFailed
            | Reason::SignatureInvalid
            | Reason::DigestMismatch
            | Reason::InvalidArtifact
            | Reason::CompiledCodeRefused
    )
}

/// What a node said, cut to a length a Plugin's status can hold for every
/// node of a large fleet.
fn bounded(said: &str) -> String {
    harvester_api::truncate(said.to_string(), 512)
}

/// How the target revision fares on a node assigned it: `Err(why)` when it
/// failed, `Ok(true)` when it runs, `Ok(false)` while it is not there yet.
fn judge(inputs: &Inputs<'_>, reported: Option<&PluginOnNode>) -> Result<bool, String> {
    let Some(r) = reported else { return Ok(false) };
    // The node's own judgement of the revision, by the rules it was sent.
    if let Some(h) = r
        .health
        .as_ref()
        .filter(|h| h.revision == inputs.target.number && !h.failure.is_empty())
    {
        return Err(h.failure.clone());
    }
    let on_target = r.generation == inputs.generation;
    let health = &inputs.spec.health;
    if let Some(reason) = r.reason.as_ref().filter(|r| refuses(r)) {
        // A refusal of the new version while an older one runs on, or of
        // the new version itself.
        if !on_target || r.phase.is_failing() || r.phase == Phase::Failed {
            return Err(format!("{reason}: {}", r.message).trim_end_matches(": ").to_string());
        }
    }
    if on_target {
        if r.phase.is_failing() {
            return Err(format!("{}: {}", r.phase, r.message).trim_end_matches(": ").to_string());
        }
        // A trap waiting for its restart counts as that restart.
        let restarts = r.restarts + u32::from(r.phase == Phase::Restarting);
        if restarts > health.max_restarts {
            let said = r.reason.as_ref().is_some_and(|r| *r != Reason::Unsigned) && !r.message.is_empty();
            return Err(format!(
                "restarted {} times (health.maxRestarts {}){}",
                restarts,
                health.max_restarts,
                if said {
                    format!(": {}", r.message)
                } else {
                    String::new()
                }
            ));
        }
        return Ok(r.phase == Phase::Running);
    }
    Ok(false)
}

/// One step of the rollout of `inputs.target`, from `previous`.
pub(crate) fn advance(previous: Option<&RolloutStatus>, inputs: &Inputs<'_>) -> RolloutStatus {
    let now = inputs.now;
    let target = inputs.target.number;
    let stable = inputs.stable.map(|s| s.number);
    let mut s = match previous {
        Some(p) if p.revision == target => p.clone(),
        // A new revision: a new rollout, from where the nodes are.
        previous => RolloutStatus {
            revision: target,
            stable_revision: stable.unwrap_or(0),
            stable_generation: previous.map_or(0, |p| p.stable_generation),
            phase: RolloutPhase::Progressing,
            step: 0,
            step_started: now,
            last_progress: now,
            nodes: previous.map(|p| p.nodes.clone()).unwrap_or_default(),
            ..Default::default()
        },
    };
    s.stable_revision = stable.unwrap_or(0);
    let was_paused = s.phase == RolloutPhase::Paused;
    // Nodes no longer placed leave; new ones start on the stable revision
    // while the rollout is under way (the target once it is done).
    s.nodes.retain(|n, _| inputs.nodes.iter().any(|v| v.name == n));
    for v in inputs.nodes {
        let start = match (s.phase, stable) {
            (RolloutPhase::Complete, _) | (_, None) => target,
            (_, Some(st)) => st,
        };
        s.nodes.entry(v.name.to_string()).or_insert(start);
    }
    // Without a stable revision there is nothing to protect or go back to.
    if stable.is_none() {
        for r in s.nodes.values_mut() {
            *r = target;
        }
    }

    // Health of every node assigned the target. AllAtOnce (and a first
    // revision) is the plain apply it always was: nothing is judged,
    // nothing goes back by itself, and a node running the revision is done.
    let judged = inputs.spec.strategy != Strategy::AllAtOnce && stable.is_some();
    let min_ready = inputs.spec.health.min_ready.as_duration().as_millis() as u64;
    let mut healthy = BTreeMap::new();
    for v in inputs.nodes {
        if s.nodes.get(v.name) != Some(&target) {
            s.ready_since.remove(v.name);
            continue;
        }
        match judge(inputs, v.reported) {
            Ok(runs) if !judged => {
                healthy.insert(v.name, runs);
            }
            Err(_) if !judged => {}
            Err(why) => {
                s.ready_since.remove(v.name);
                let under_way = matches!(s.phase, RolloutPhase::Progressing | RolloutPhase::Paused);
                if under_way {
                    s.failed.entry(v.name.to_string()).or_insert_with(|| bounded(&why));
                }
            }
            Ok(true) if !s.failed.contains_key(v.name) => {
                let since = *s.ready_since.entry(v.name.to_string()).or_insert(now);
                let ok = now.saturating_sub(since) >= min_ready;
                healthy.insert(v.name, ok);
            }
            Ok(_) => {
                s.ready_since.remove(v.name);
            }
        }
    }
    s.ready_since.retain(|n, _| s.nodes.get(n) == Some(&target));
    let is_healthy = |n: &str| healthy.get(n).copied().unwrap_or(false);

    match s.phase {
        RolloutPhase::Aborted => {
            if let Some(st) = stable {
                for r in s.nodes.values_mut() {
                    *r = st;
                }
            }
            return s;
        }
        RolloutPhase::Complete => {
            s.ready_since.clear();
            s.nodes.clear();
            return s;
        }
        _ => {}
    }

    // Aborts: too many failures, or no progress for too long.
    if s.failed.len() > inputs.spec.max_failed_nodes as usize {
        let (node, why) = s
            .failed
            .iter()
            .next()
            .map(|(n, w)| (n.clone(), w.clone()))
            .unwrap_or_default();
        return abort(
            s,
            stable,
            Reason::HealthCheckFailed,
            format!("revision {target} failed on {node}: {why}"),
        );
    }
    if s.paused {
        s.phase = RolloutPhase::Paused;
        s.reason = Some(Reason::PausedByUser);
        s.message = "paused (harvester rollout resume to go on)".into();
        return s;
    }
    // A pause is not a lack of progress: the deadline counts from its end.
    let at_pause = inputs.spec.strategy == Strategy::Canary
        && inputs
            .spec
            .steps
            .get(s.step as usize)
            .is_some_and(|st| st.pause.is_some());
    if was_paused && !at_pause {
        s.last_progress = now;
    }
    let deadline = inputs.spec.progress_deadline.as_duration().as_millis() as u64;
    if !at_pause
        && inputs.spec.strategy != Strategy::AllAtOnce
        && now.saturating_sub(s.last_progress) > deadline
        && stable.is_some()
    {
        let waiting = s.message.clone();
        return abort(
            s,
            stable,
            Reason::ProgressDeadlineExceeded,
            format!("no progress for {} ({waiting})", inputs.spec.progress_deadline),
        );
    }

    let names: Vec<&str> = inputs.nodes.iter().map(|v| v.name).collect();
    let ready_node = |n: &str| inputs.nodes.iter().any(|v| v.name == n && v.ready);
    let on_target = |s: &RolloutStatus, n: &str| s.nodes.get(n) == Some(&target);
    // At most maxNodesPerMinute nodes start the new revision in a minute.
    let per_minute = inputs.spec.max_nodes_per_minute.map(|m| m as usize);
    s.recent_updates.retain(|t| now.saturating_sub(*t) < 60_000);
    let update = |s: &mut RolloutStatus, n: &str| -> bool {
        if s.nodes.get(n) == Some(&target) {
            return true;
        }
        if per_minute.is_some_and(|m| s.recent_updates.len() >= m) {
            return false;
        }
        s.nodes.insert(n.to_string(), target);
        s.recent_updates.push(now);
        s.last_progress = now;
        true
    };
    s.phase = RolloutPhase::Progressing;
    s.reason = None;
    // A first revision has nothing to protect: every node at once.
    let strategy = if stable.is_some() {
        inputs.spec.strategy
    } else {
        Strategy::AllAtOnce
    };
    match strategy {
        Strategy::AllAtOnce => {
            for n in &names {
                s.nodes.insert(n.to_string(), target);
            }
            s.recent_updates.clear();
        }
        Strategy::Rolling => {
            let budget = inputs
                .spec
                .max_unavailable
                .unwrap_or(Amount::Nodes(1))
                .of(names.len())
                .max(1);
            let mut updating = names.iter().filter(|n| on_target(&s, n) && !is_healthy(n)).count();
            for n in &names {
                if updating >= budget {
                    break;
                }
                if !on_target(&s, n) && ready_node(n) {
                    if !update(&mut s, n) {
                        break;
                    }
                    updating += 1;
                }
            }
        }
        Strategy::Canary => {
            let steps = &inputs.spec.steps;
            while (s.step as usize) < steps.len() {
                let i = s.step as usize;
                let step = &steps[i];
                let done = match step.pause {
                    Some(Pause::For(d)) => {
                        let left = s.step_started.saturating_add(ms(d)).saturating_sub(now);
                        s.message = format!("step {}/{}: pause {d}", i + 1, steps.len());
                        left == 0 || s.promote.is_some_and(|p| p as usize >= i)
                    }
                    Some(Pause::UntilPromoted) => {
                        s.message = format!(
                            "step {}/{}: paused until promoted (harvester rollout promote)",
                            i + 1,
                            steps.len()
                        );
                        s.promote.is_some_and(|p| p as usize >= i)
                    }
                    None => {
                        let wanted: Vec<&str> = if let Some(sel) = &step.selector {
                            let mut ignored = harvester_api::validation::ValidationErrors::default();
                            let sel = sel.selector("", &mut ignored);
                            inputs
                                .nodes
                                .iter()
                                .filter(|v| sel.matches(v.labels))
                                .map(|v| v.name)
                                .collect()
                        } else {
                            let count = match (step.nodes, step.percent) {
                                (Some(n), _) => Amount::Nodes(n).of(names.len()),
                                (_, Some(p)) => Amount::Percent(p).of(names.len()),
                                _ => 0,
                            };
                            // The nodes updated so far, then ready ones by name.
                            let mut w: Vec<&str> = names.iter().copied().filter(|n| on_target(&s, n)).collect();
                            for n in &names {
                                if w.len() >= count {
                                    break;
                                }
                                if !w.contains(n) && ready_node(n) {
                                    w.push(n);
                                }
                            }
                            w
                        };
                        let mut all_in = true;
                        for n in &wanted {
                            all_in &= update(&mut s, n);
                        }
                        let waiting: Vec<&str> = names
                            .iter()
                            .copied()
                            .filter(|n| on_target(&s, n) && !is_healthy(n))
                            .collect();
                        s.message = if waiting.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "step {}/{} ({}): waiting for {} to be healthy for {}",
                                i + 1,
                                steps.len(),
                                step.describe(),
                                waiting.join(", "),
                                inputs.spec.health.min_ready
                            )
                        };
                        if !all_in && s.message.is_empty() {
                            s.message = format!(
                                "step {}/{}: at most {} nodes a minute (maxNodesPerMinute)",
                                i + 1,
                                steps.len(),
                                per_minute.unwrap_or_default()
                            );
                        }
                        all_in && waiting.is_empty()
                    }
                };
                if !done {
                    if step.pause.is_some() {
                        s.phase = RolloutPhase::Paused;
                        s.reason = Some(Reason::PauseStep);
                    }
                    return s;
                }
                s.step += 1;
                s.step_started = now;
                s.last_progress = now;
            }
            for n in &names {
                update(&mut s, n);
            }
        }
    }
    let waiting: Vec<&str> = names.iter().copied().filter(|n| !is_healthy(n)).collect();
    if waiting.is_empty() {
        s.phase = RolloutPhase::Complete;
        s.stable_revision = target;
        s.stable_generation = inputs.generation;
        s.message.clear();
        s.failed.clear();
        s.ready_since.clear();
        s.recent_updates.clear();
        // Every placed node runs the revision: nothing to keep per node.
        s.nodes.clear();
    } else {
        let updated = names.iter().filter(|n| on_target(&s, n)).count();
        s.message = format!(
            "{updated}/{} nodes on revision {target}; waiting for {} to be healthy for {}",
            names.len(),
            waiting.join(", "),
            inputs.spec.health.min_ready
        );
    }
    s
}

/// When the rollout next has something to decide without anything
/// changing (a node's minReady ends, a timed pause ends, the deadline
/// passes), in ms since the epoch: the reconciler looks again then rather
/// than at its next periodic pass. Only a hint: the decision is made from
/// the stored state whenever the pass runs.
pub(crate) fn next_check(s: &RolloutStatus, spec: &RolloutSpec, now: u64) -> Option<u64> {
    if !matches!(s.phase, RolloutPhase::Progressing | RolloutPhase::Paused) {
        return None;
    }
    let min_ready = spec.health.min_ready.as_duration().as_millis() as u64;
    let ready = s.ready_since.values().map(|t| t.saturating_add(min_ready));
    let pause = match spec.steps.get(s.step as usize).and_then(|st| st.pause) {
        Some(Pause::For(d)) => Some(s.step_started.saturating_add(ms(d))),
        _ => None,
    };
    let deadline = (spec.strategy != Strategy::AllAtOnce).then(|| {
        s.last_progress
            .saturating_add(ms(spec.progress_deadline))
            .saturating_add(1)
    });
    ready.chain(pause).chain(deadline).filter(|t| *t > now).min()
}

fn ms(d: harvester_api::DurationSpec) -> u64 {
    u64::try_from(d.as_duration().as_millis()).unwrap_or(u64::MAX)
}

fn abort(mut s: RolloutStatus, stable: Option<u64>, reason: Reason, why: String) -> RolloutStatus {
    s.phase = RolloutPhase::Aborted;
    s.reason = Some(reason);
    s.message = why;
    if let Some(st) = stable {
        for r in s.nodes.values_mut() {
            *r = st;
        }
    }
    s
}

#[cfg(test)]
mod tests;
