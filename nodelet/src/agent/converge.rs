//! Making the runtime match the assignments: one task, so a slow pull or
//! compile never stalls the watch; what failed is retried with backoff (a
//! registry back up, a signature added later).

use super::failure::Failure;
use super::{Agent, lock};
use crate::events::Phase;
use crate::runtime::{ComponentSource, PluginSpec};
use harvester_api::Digest;
use harvester_api::resources::{Assignment, Assignments, is_local_path};
use harvester_registry::{Refusal, parse_reference};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The version of a plugin this agent handed to the runtime.
#[derive(Debug, Clone, Copy)]
pub(super) struct Applied {
    pub generation: u64,
    /// The artifact the controller assigned (a manifest digest for OCI images).
    pub artifact: Digest,
    /// The component bytes' digest, as the runtime reports it.
    pub component: Digest,
    pub unsigned: bool,
}

/// What converging left behind, for status reports.
#[derive(Default)]
pub(super) struct Converged {
    /// Versions the controller asked for that are not running, and why.
    pub failures: Mutex<BTreeMap<String, Failure>>,
    pub applied: Mutex<BTreeMap<String, Applied>>,
}

/// Converges on every new set of assignments until aborted.
pub(super) async fn run(agent: Arc<Agent>) {
    let mut desired = agent.desired.subscribe();
    let mut backoff = Duration::from_secs(1);
    loop {
        let current = desired.borrow_and_update().clone();
        let retry = match &current {
            Some(a) => agent.converge(a).await,
            None => false,
        };
        if retry {
            tokio::select! {
                changed = desired.changed() => {
                    if changed.is_err() { return }
                    backoff = Duration::from_secs(1);
                }
                _ = tokio::time::sleep(backoff) => {
                    backoff = (backoff * 2).min(Duration::from_secs(15));
                }
            }
        } else {
            backoff = Duration::from_secs(1);
            if desired.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Agent {
    /// Makes the runtime match `assignments`. Returns whether something
    /// could not be done and is worth retrying.
    async fn converge(&self, assignments: &Assignments) -> bool {
        self.guards.retain(&assignments.plugins);
        let mut again = false;
        for assigned in &assignments.plugins {
            // A revision this node judged failed gives way to its fallback.
            let fallback = self.guards.effective(assigned);
            let a = fallback.as_ref().unwrap_or(assigned);
            match self.run_assignment(a).await {
                Ok(()) => {
                    lock(&self.converged.failures).remove(&a.name);
                    if fallback.is_none() {
                        self.guards.started(a);
                    }
                }
                Err(f) if fallback.is_none() && a.guard.is_some() && f.reason == harvester_api::Reason::LoadFailed => {
                    self.guards.failed_to_load(a, &f.message);
                    again = true;
                }
                Err(f) => {
                    let mut failures = lock(&self.converged.failures);
                    // Retries repeat the same failure: log and count it once.
                    if failures.get(&a.name) != Some(&f) {
                        tracing::error!(
                            plugin = a.name,
                            generation = a.generation,
                            reason = %f.reason,
                            "{}",
                            f.message
                        );
                        if let Some(label) = f.refusal {
                            self.metrics.refusals.with_label_values(&[&a.name, label]).inc();
                        }
                        failures.insert(a.name.clone(), f);
                    }
                }
            }
        }
        let wanted: Vec<&str> = assignments.plugins.iter().map(|a| a.name.as_str()).collect();
        lock(&self.converged.failures).retain(|name, _| wanted.contains(&name.as_str()));
        for name in self.runtime.plugin_names() {
            if !wanted.contains(&name.as_str()) {
                lock(&self.converged.applied).remove(&name);
                let rt = self.runtime.clone();
                let _ = tokio::task::spawn_blocking(move || rt.remove(&name)).await;
            }
        }
        self.report_now.notify_one();
        again || lock(&self.converged.failures).values().any(Failure::worth_retrying)
    }

    /// Whether the runtime already runs exactly this assignment.
    fn runs(&self, a: &Assignment) -> bool {
        let applied = lock(&self.converged.applied).get(&a.name).copied();
        match (self.runtime.plugin_status(&a.name), applied) {
            (Some(s), Some(applied)) => {
                applied.generation == a.generation
                    && applied.artifact == a.digest
                    && s.generation == a.generation
                    && s.digest == Some(applied.component)
                    && s.phase != Phase::Stopped
            }
            _ => false,
        }
    }

    async fn run_assignment(&self, a: &Assignment) -> Result<(), Failure> {
        self.metrics.init_refusals(&a.name);
        if self.runs(a) {
            return Ok(());
        }
        let g = a.generation;
        let (reference, unsigned) = if is_local_path(&a.image) {
            if !self.opts.trust.allow_unsigned {
                return Err(Failure::refused(
                    g,
                    &Refusal::Unsigned {
                        image: format!("{} (a local component uploaded to the controller)", a.image),
                        tag: "-: push it with `harvester push --key` and apply the OCI reference, or start this node with --allow-unsigned".into(),
                    },
                ));
            }
            (None, true)
        } else {
            let reference = parse_reference(&a.image)
                .map_err(|e| Failure::transient(g, harvester_api::Reason::InvalidArtifact, format!("{e:#}")))?;
            let unsigned = self.verify_oci(a, &reference).await?;
            (Some(reference), unsigned)
        };
        let code = match self.code_from_hub(a, reference.as_ref()).await? {
            Some(c) => c,
            None => match &reference {
                None => self.controller_blob(a).await?.into(),
                Some(r) => self.oci_bytes(a, r).await?.into(),
            },
        };
        let component = code.digest();
        let spec = PluginSpec {
            name: a.name.clone(),
            source: a.image.clone(),
            component: code,
            run: a.run.clone(),
            generation: Some(g),
        };
        let rt = self.runtime.clone();
        tokio::task::spawn_blocking(move || rt.apply(spec))
            .await
            .map_err(|e| Failure::transient(g, harvester_api::Reason::LoadFailed, e))?
            .map_err(|e| Failure::transient(g, harvester_api::Reason::LoadFailed, format!("{e:#}")))?;
        lock(&self.converged.applied).insert(
            a.name.clone(),
            Applied {
                generation: g,
                artifact: a.digest,
                component,
                unsigned,
            },
        );
        Ok(())
    }

    /// Whether this node asks the hub for compiled code.
    fn asks_hub(&self) -> bool {
        self.opts.compile != super::CompileMode::Local && !self.opts.trust.compilers.is_empty()
    }

    /// Whether this node may run the compiler itself.
    fn compiles_here(&self) -> bool {
        match self.opts.compile {
            super::CompileMode::Local => true,
            super::CompileMode::Hub => false,
            super::CompileMode::Auto => {
                self.opts.trust.compilers.is_empty()
                    || super::total_memory().is_none_or(|m| m >= super::LOCAL_COMPILE_MIN_MEMORY)
            }
        }
    }

    /// Code the hub compiled, already cached or fetched now; `None` when
    /// this node compiles the component itself.
    async fn code_from_hub(
        &self,
        a: &Assignment,
        reference: Option<&harvester_registry::Reference>,
    ) -> Result<Option<ComponentSource>, Failure> {
        if !self.asks_hub() {
            return Ok(None);
        }
        let component = self.component_digest(a, reference).await?;
        if self.runtime.cache().contains(self.runtime.engine(), &component) {
            return Ok(Some(ComponentSource::Precompiled(component)));
        }
        match self.hub_code(a, component).await {
            Ok(()) => Ok(Some(ComponentSource::Precompiled(component))),
            Err(f) if self.compiles_here() && f.refusal.is_none() => {
                tracing::warn!(plugin = a.name, "compiling here: {}", f.message);
                Ok(None)
            }
            Err(f) => Err(f),
        }
    }
}
