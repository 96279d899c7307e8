//! Making the runtime match the assignments. Each plugin that does not
//! run as assigned gets an attempt of its own (a few at a time), so a slow
//! or stalled registry holds only the plugins it serves, and a new set of
//! assignments is acted on at once. What failed is retried with its own
//! full-jitter backoff (a registry back up, a signature added later).

use super::failure::Failure;
use super::{Agent, lock};
use crate::events::Phase;
use crate::runtime::{ComponentSource, PluginSpec};
use harvester_api::Digest;
use harvester_api::resources::{Assignment, Assignments, is_local_path};
use harvester_registry::{Refusal, parse_reference};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Attempts (pulls, verifications, compiles) running at once.
const PARALLEL_ATTEMPTS: usize = 4;

/// The first wait after a failure, and the longest.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(15);
/// Attempts at loading the same assignment: a load that failed for a
/// passing reason (memory or CPU short for a moment, a process killed
/// mid-compile) gets a few more; one that fails the same way every time
/// costs no more than these, then waits for a new assignment.
const LOAD_ATTEMPTS: u32 = 4;

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

/// An attempt at one assignment, running now.
struct Attempt {
    assignment: Assignment,
    task: tokio::task::AbortHandle,
}

/// When a failed assignment may be tried again, and the wait after that.
struct Retry {
    assignment: Assignment,
    at: Instant,
    step: Duration,
    /// Failed attempts at this assignment so far.
    attempts: u32,
}

/// What converging left behind, for status reports, and what it is doing.
pub(super) struct Converged {
    /// Versions the controller asked for that are not running, and why.
    pub failures: Mutex<BTreeMap<String, Failure>>,
    pub applied: Mutex<BTreeMap<String, Applied>>,
    attempts: Mutex<BTreeMap<String, Attempt>>,
    retries: Mutex<BTreeMap<String, Retry>>,
    slots: tokio::sync::Semaphore,
    /// Loading into the runtime (compiling, when the code is not cached)
    /// one at a time: a compile takes hundreds of MB on a small board.
    loading: tokio::sync::Semaphore,
    /// Rung when an attempt ends.
    done: tokio::sync::Notify,
}

impl Default for Converged {
    fn default() -> Self {
        Converged {
            failures: Mutex::default(),
            applied: Mutex::default(),
            attempts: Mutex::default(),
            retries: Mutex::default(),
            slots: tokio::sync::Semaphore::new(PARALLEL_ATTEMPTS),
            loading: tokio::sync::Semaphore::new(1),
            done: tokio::sync::Notify::new(),
        }
    }
}

/// Converges on every new set of assignments, every ended attempt and
/// every retry that falls due, until aborted.
pub(super) async fn run(agent: Arc<Agent>) {
    let mut desired = agent.desired.subscribe();
    loop {
        let current = desired.borrow_and_update().clone();
        let wake = match &current {
            Some(a) => agent.converge(a).await,
            None => None,
        };
        let due = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = agent.converged.done.notified() => {}
            _ = due => {}
        }
    }
}

impl Agent {
    /// Starts an attempt for every assignment that does not run as asked
    /// and is neither on its way nor waiting for a retry, and removes what
    /// is no longer assigned. Returns when the next retry falls due.
    async fn converge(self: &Arc<Self>, assignments: &Assignments) -> Option<Instant> {
        self.guards.retain(&assignments.plugins);
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        for assigned in &assignments.plugins {
            // A revision this node judged failed gives way to its fallback.
            let fallback = self.guards.effective(assigned);
            let judged = fallback.is_some();
            let a = fallback.unwrap_or_else(|| assigned.clone());
            if self.runs(&a) {
                lock(&self.converged.failures).remove(&a.name);
                lock(&self.converged.retries).remove(&a.name);
                if let Some(old) = lock(&self.converged.attempts).remove(&a.name) {
                    old.task.abort();
                }
                if !judged {
                    self.guards.started(&a);
                }
                continue;
            }
            {
                let mut attempts = lock(&self.converged.attempts);
                if attempts.get(&a.name).is_some_and(|at| at.assignment == a) {
                    continue;
                }
                // Superseded: what it would start is no longer wanted.
                if let Some(old) = attempts.remove(&a.name) {
                    old.task.abort();
                }
            }
            {
                let mut retries = lock(&self.converged.retries);
                match retries.get(&a.name) {
                    Some(r) if r.assignment == a && r.at > now => {
                        wake = Some(wake.map_or(r.at, |w| w.min(r.at)));
                        continue;
                    }
                    Some(r) if r.assignment != a => {
                        retries.remove(&a.name);
                    }
                    _ => {}
                }
            }
            let agent = self.clone();
            let attempt = a.clone();
            let task = crate::log_tap::spawn(async move {
                let slot = agent.converged.slots.acquire().await;
                let result = agent.run_assignment(&attempt).await;
                drop(slot);
                agent.record(&attempt, judged, result);
                let mut attempts = lock(&agent.converged.attempts);
                if attempts.get(&attempt.name).is_some_and(|at| at.assignment == attempt) {
                    attempts.remove(&attempt.name);
                }
                drop(attempts);
                agent.converged.done.notify_one();
            });
            lock(&self.converged.attempts).insert(
                a.name.clone(),
                Attempt {
                    assignment: a,
                    task: task.abort_handle(),
                },
            );
        }
        let wanted: Vec<&str> = assignments.plugins.iter().map(|a| a.name.as_str()).collect();
        lock(&self.converged.failures).retain(|name, _| wanted.contains(&name.as_str()));
        lock(&self.converged.retries).retain(|name, _| wanted.contains(&name.as_str()));
        lock(&self.converged.attempts).retain(|name, at| {
            let keep = wanted.contains(&name.as_str());
            if !keep {
                at.task.abort();
            }
            keep
        });
        for name in self.runtime.plugin_names() {
            if !wanted.contains(&name.as_str()) {
                lock(&self.converged.applied).remove(&name);
                let rt = self.runtime.clone();
                let _ = crate::log_tap::spawn_blocking(move || rt.remove(&name)).await;
            }
        }
        self.report_now.notify_one();
        wake
    }

    /// What one attempt came to: running, or a failure logged and counted
    /// once and retried after its backoff when that may help.
    fn record(&self, a: &Assignment, judged: bool, result: Result<(), Failure>) {
        match result {
            Ok(()) => {
                lock(&self.converged.failures).remove(&a.name);
                lock(&self.converged.retries).remove(&a.name);
                if !judged {
                    self.guards.started(a);
                }
            }
            // The next pass runs the fallback this judgement names.
            Err(f) if !judged && a.guard.is_some() && f.reason == harvester_api::Reason::LoadFailed => {
                self.guards.failed_to_load(a, &f.message);
            }
            Err(f) => {
                let mut retries = lock(&self.converged.retries);
                let (step, attempts) = match retries.get(&a.name) {
                    Some(r) if r.assignment == *a => ((r.step * 2).min(RETRY_MAX), r.attempts + 1),
                    _ => (RETRY_FIRST, 1),
                };
                let wait = if f.worth_retrying() || attempts < LOAD_ATTEMPTS {
                    harvester_api::jitter(step)
                } else {
                    Duration::from_secs(86_400 * 365)
                };
                retries.insert(
                    a.name.clone(),
                    Retry {
                        assignment: a.clone(),
                        at: Instant::now() + wait,
                        step,
                        attempts,
                    },
                );
                drop(retries);
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
        self.report_now.notify_one();
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
        let _loading = self.converged.loading.acquire().await;
        crate::log_tap::spawn_blocking(move || rt.apply(spec))
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
