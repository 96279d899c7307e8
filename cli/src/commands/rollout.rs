//! `harvester rollout status plugin/NAME`: waits until every selected node
//! runs the plugin's current generation, or says why it cannot.

use super::{condition, running_current};
use crate::client::{Client, Kind};
use anyhow::bail;
use harvester_api::resources::ConditionStatus;
use harvester_api::{ConditionType, Reason};
use std::time::{Duration, Instant};

pub async fn rollout_status(client: &Client, target: &str, timeout: Duration) -> anyhow::Result<()> {
    let Some((kind, name)) = target.split_once('/') else {
        bail!("{target:?}: expected plugin/NAME");
    };
    if Kind::parse(kind)? != Kind::Plugin {
        bail!("rollout status works on plugins");
    }
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let p = client.plugin(name).await?;
        let generation = p.metadata.generation;
        let observed = p.status.as_ref().map_or(0, |s| s.observed_generation);
        let (done, total) = running_current(&p);
        if observed == generation && total > 0 && done == total {
            println!("plugin/{name}: generation {generation} runs on {done}/{total} nodes");
            return Ok(());
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
        let line = if total == 0 {
            format!("Waiting for plugin/{name}: no node matches it yet")
        } else {
            format!("Waiting for plugin/{name}: {done} of {total} nodes run generation {generation}")
        };
        if line != last {
            println!("{line}");
            last = line;
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for plugin/{name} to roll out");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
