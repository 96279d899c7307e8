//! `harvester rollout status|history|undo|pause|resume|promote|abort
//! plugin/NAME`: follow a plugin's rollout, list its revisions, go back to
//! one, and take the decisions a progressive rollout waits for.

use super::{Table, age, condition, running_current, short};
use crate::client::{Client, Kind};
use anyhow::bail;
use harvester_api::resources::ConditionStatus;
use harvester_api::rollout::RolloutPhase;
use harvester_api::{ConditionType, Reason};
use std::time::{Duration, Instant};

/// The plugin name in `plugin/NAME`.
fn plugin_name(target: &str) -> anyhow::Result<&str> {
    let Some((kind, name)) = target.split_once('/') else {
        bail!("{target:?}: expected plugin/NAME");
    };
    if Kind::parse(kind)? != Kind::Plugin {
        bail!("rollouts are of plugins: plugin/NAME");
    }
    Ok(name)
}

/// Waits until every node runs the plugin's newest revision and the
/// rollout is complete (every node held the health rules for minReady: a
/// revision can still be rolled back until then); fails when the rollout
/// was rolled back, or when the revision fails where it runs.
pub async fn rollout_status(client: &Client, target: &str, timeout: Duration) -> anyhow::Result<()> {
    let name = plugin_name(target)?;
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let p = client.plugin(name).await?;
        let generation = p.metadata.generation;
        let observed = p.status.as_ref().map_or(0, |s| s.observed_generation);
        let (done, total) = running_current(&p);
        let rollout = p.status.as_ref().and_then(|s| s.rollout.as_ref());
        let complete = rollout.is_none_or(|r| r.phase == RolloutPhase::Complete);
        if observed == generation && total > 0 && done == total && complete {
            println!("plugin/{name}: generation {generation} runs on {done}/{total} nodes");
            return Ok(());
        }
        if let Some(r) = rollout
            && r.phase == RolloutPhase::Aborted
            && observed == generation
        {
            bail!(
                "plugin/{name} revision {} was rolled back to revision {}: {}",
                r.revision,
                r.stable_revision,
                r.message
            );
        }
        let conditions = p.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
        if let Some(c) = condition(conditions, ConditionType::Degraded)
            && c.status == ConditionStatus::True
            // Waiting helps with a node down or a registry away, not with these.
            && c.reason != Reason::NodeNotReady
            && c.reason != Reason::PullFailed
        {
            bail!("plugin/{name} generation {generation} is failing: {}", c.message);
        }
        let line = match rollout.filter(|r| !r.message.is_empty() && r.phase != RolloutPhase::Complete) {
            Some(r) => format!(
                "Waiting for plugin/{name} revision {} ({}): {}",
                r.revision,
                per_revision(r),
                r.message
            ),
            None if total == 0 => format!("Waiting for plugin/{name}: no node matches it yet"),
            None => format!("Waiting for plugin/{name}: {done} of {total} nodes run generation {generation}"),
        };
        if line != last {
            super::say!("{line}");
            last = line;
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for plugin/{name} to roll out");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `3 on revision 4, 1 on revision 3`.
fn per_revision(r: &harvester_api::rollout::RolloutStatus) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for revision in r.nodes.values() {
        *counts.entry(std::cmp::Reverse(*revision)).or_insert(0) += 1;
    }
    counts
        .iter()
        .map(|(rev, n)| format!("{n} on revision {}", rev.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rollout history`: every revision kept, newest last.
pub async fn history(client: &Client, target: &str) -> anyhow::Result<()> {
    let name = plugin_name(target)?;
    let list = client.revisions(name).await?;
    if list.items.is_empty() {
        bail!("plugin/{name} has no revisions yet");
    }
    let (newest, stable) = list
        .rollout
        .as_ref()
        .map_or((0, 0), |r| (r.revision, r.stable_revision));
    let mut table = Table::new(["REVISION", "DIGEST", "CHANGE", "BY", "AGE", "OUTCOME"]);
    for r in &list.items {
        let mark = match r.number {
            n if n == newest && n == stable => " (running)",
            n if n == newest => " (rolling out)",
            n if n == stable => " (stable)",
            _ => "",
        };
        table.row(vec![
            format!("{}{mark}", r.number),
            short(Some(&r.digest)),
            r.change.clone(),
            if r.by.is_empty() { "-".into() } else { r.by.clone() },
            age(r.created),
            if r.outcome.is_empty() {
                "-".into()
            } else {
                r.outcome.clone()
            },
        ]);
    }
    table.print();
    Ok(())
}

/// `rollout undo [--to-revision N]`.
pub async fn undo(client: &Client, target: &str, to: Option<u64>) -> anyhow::Result<()> {
    let name = plugin_name(target)?;
    let done = client.undo(name, to).await?;
    println!(
        "plugin/{name} rolled back to revision {} (generation {}); follow it with harvester rollout status plugin/{name}",
        done.undone_to, done.generation
    );
    Ok(())
}

/// `rollout pause|resume|promote|abort`.
pub async fn decide(client: &Client, target: &str, action: &str) -> anyhow::Result<()> {
    let name = plugin_name(target)?;
    let answer = client.rollout_decision(name, action).await?;
    let revision = answer.rollout.as_ref().map_or(0, |r| r.revision);
    let said = match action {
        "pause" => "paused",
        "resume" => "resumed",
        "promote" => "promoted",
        _ => "aborted: every updated node goes back to the stable revision",
    };
    println!("plugin/{name} revision {revision}: {said}");
    Ok(())
}
