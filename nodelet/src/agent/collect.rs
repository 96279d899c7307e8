//! Sweeping what no assignment needs any more off the board's storage:
//! manifests and components in the blob store, signature records, and
//! compiled code (of other components, or of a previous version's engine).
//! Kept: every assigned artifact, the fallback of a guarded one, and what
//! runs now. Only what was written more than one sweep ago goes, so an
//! attempt that is fetching right now keeps what it fetched.

use super::{Agent, lock};
use harvester_api::Digest;
use harvester_api::files::{Swept, remove_unneeded};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Sweeps every `every`, until aborted.
pub(super) async fn run(agent: Arc<Agent>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(before) = SystemTime::now().checked_sub(every) else {
            continue;
        };
        let agent = agent.clone();
        match crate::log_tap::spawn_blocking(move || agent.collect(before)).await {
            Ok(Ok(s)) if s.entries == 0 => {}
            Ok(Ok(s)) => tracing::info!(
                entries = s.entries,
                kb = s.bytes >> 10,
                "deleted components and compiled code no assignment needs any more"
            ),
            Ok(Err(e)) => tracing::warn!("sweeping unneeded components: {e}"),
            Err(e) => tracing::warn!("sweeping unneeded components: {e}"),
        }
    }
}

impl Agent {
    /// One sweep of what was written before `before`. Nothing goes before
    /// the node knows its assignments (from the hub or its own disk).
    pub(super) fn collect(&self, before: SystemTime) -> std::io::Result<Swept> {
        let Some(assignments) = self.desired.borrow().clone() else {
            return Ok(Swept::default());
        };
        let mut artifacts: HashSet<Digest> = HashSet::new();
        for a in &assignments.plugins {
            artifacts.insert(a.digest);
            if let Some(g) = &a.guard {
                artifacts.insert(g.fallback.digest);
            }
        }
        let mut components: HashSet<Digest> = HashSet::new();
        for applied in lock(&self.converged.applied).values() {
            artifacts.insert(applied.artifact);
            components.insert(applied.component);
        }
        let blobs = self.store.needed(artifacts.iter().copied());
        // An uploaded component is its own artifact; an OCI artifact's
        // component is the layer its manifest names.
        components.extend(blobs.iter().copied());
        let mut swept = self.store.collect(&blobs, before)?;
        let records: HashSet<String> = artifacts.iter().map(|d| format!("{}.json", d.hex())).collect();
        swept += remove_unneeded(&self.opts.data_dir.join("verified"), |n| records.contains(n), before)?;
        swept += self
            .runtime
            .cache()
            .collect(self.runtime.engine(), &components, before)?;
        Ok(swept)
    }
}
