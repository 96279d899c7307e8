//! Guarded revisions: while a progressive rollout updates this node, the
//! hub sends the revision's health rules and the way back with the
//! assignment ([`Guard`]). The node judges the revision it runs by those
//! rules, where the facts are, and when it fails them runs the fallback
//! until the hub sends something else, whether the hub is there or not.
//! What it went back from is kept on disk: a node restarted while the hub
//! is away does not try the failed revision again.

use crate::runtime::Runtime;
use harvester_api::resources::Assignment;
use harvester_api::rollout::{Guard, Health, NodeHealth};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// How often running revisions are judged.
pub(super) const CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// A revision this node judged failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Failed {
    generation: u64,
    revision: u64,
    why: String,
}

struct Watch {
    generation: u64,
    revision: u64,
    rules: Health,
    since: Instant,
    since_wall: SystemTime,
    /// Ticks and tick errors when the revision was first seen running.
    base: Option<(u64, u64)>,
}

pub(super) struct Guards {
    path: PathBuf,
    failed: Mutex<BTreeMap<String, Failed>>,
    watching: Mutex<BTreeMap<String, Watch>>,
    /// Plugin: (generation, revision, healthy since in ms).
    healthy: Mutex<BTreeMap<String, (u64, u64, u64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Guards {
    /// Guards kept in `path`, as a restarted node left them.
    pub(super) fn load(path: PathBuf) -> Guards {
        let failed = super::read_state(&path, "the revisions this node went back from").unwrap_or_default();
        Guards {
            path,
            failed: Mutex::new(failed),
            watching: Mutex::new(BTreeMap::new()),
            healthy: Mutex::new(BTreeMap::new()),
        }
    }

    fn save(&self, failed: &BTreeMap<String, Failed>) {
        let written = serde_json::to_vec(failed)
            .map_err(std::io::Error::other)
            .and_then(|b| harvester_api::files::write_state(&self.path, &b));
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), "cannot keep the revisions this node went back from: {e}");
        }
    }

    /// What to run for `a`: its fallback when this node judged it failed.
    pub(super) fn effective(&self, a: &Assignment) -> Option<Assignment> {
        let guard = a.guard.as_ref()?;
        let failed = lock(&self.failed);
        failed
            .get(&a.name)
            .filter(|f| f.generation == a.generation)
            .map(|_| fallback(a, guard))
    }

    /// Forgets judgements of revisions the hub no longer asks for.
    pub(super) fn retain(&self, assignments: &[Assignment]) {
        let guarded = |name: &str, generation: u64| {
            assignments
                .iter()
                .any(|a| a.name == name && a.generation == generation && a.guard.is_some())
        };
        let mut failed = lock(&self.failed);
        let before = failed.len();
        failed.retain(|n, f| guarded(n, f.generation));
        if failed.len() != before {
            self.save(&failed);
        }
        lock(&self.watching).retain(|n, w| guarded(n, w.generation));
        lock(&self.healthy).retain(|n, h| guarded(n, h.0));
    }

    /// `a` runs now: judge it from here on.
    pub(super) fn started(&self, a: &Assignment) {
        let Some(guard) = &a.guard else { return };
        if lock(&self.healthy).get(&a.name).is_some_and(|h| h.0 == a.generation) {
            return;
        }
        let mut watching = lock(&self.watching);
        if watching.get(&a.name).is_some_and(|w| w.generation == a.generation) {
            return;
        }
        watching.insert(
            a.name.clone(),
            Watch {
                generation: a.generation,
                revision: guard.revision,
                rules: guard.health.clone(),
                since: Instant::now(),
                since_wall: SystemTime::now(),
                base: None,
            },
        );
    }

    /// `a` could not even be loaded here.
    pub(super) fn failed_to_load(&self, a: &Assignment, why: &str) {
        let Some(guard) = &a.guard else { return };
        self.fail(&a.name, a.generation, guard.revision, format!("cannot load: {why}"));
    }

    fn fail(&self, plugin: &str, generation: u64, revision: u64, why: String) {
        tracing::error!(
            plugin,
            generation,
            revision,
            "revision {revision} failed its health rules here, going back: {why}"
        );
        lock(&self.watching).remove(plugin);
        let mut failed = lock(&self.failed);
        failed.insert(
            plugin.to_string(),
            Failed {
                generation,
                revision,
                why,
            },
        );
        self.save(&failed);
    }

    /// Judges every watched revision; true when one failed (run its
    /// fallback now).
    pub(super) fn check(&self, runtime: &Runtime) -> bool {
        let mut verdicts = Vec::new();
        {
            let mut watching = lock(&self.watching);
            for (name, w) in watching.iter_mut() {
                let Some(s) = runtime.plugin_status(name) else { continue };
                if s.generation != w.generation {
                    continue;
                }
                let base = *w.base.get_or_insert((s.ticks, s.tick_errors));
                let ticks = s.ticks.saturating_sub(base.0);
                let errors = s.tick_errors.saturating_sub(base.1);
                let r = &w.rules;
                // A trap waiting for its restart counts as that restart.
                let restarts = s.restarts + u32::from(s.phase == crate::events::Phase::Restarting);
                let mut why = None;
                if s.phase.is_failing() {
                    why = Some(format!("{}: {}", s.phase, s.last_error.clone().unwrap_or_default()));
                } else if restarts > r.max_restarts {
                    why = Some(format!(
                        "restarted {} times (health.maxRestarts {}): {}",
                        restarts,
                        r.max_restarts,
                        s.last_error.clone().unwrap_or_default()
                    ));
                } else if let Some(max) = r.max_tick_error_rate
                    && ticks > 0
                    && errors as f64 / ticks as f64 > max
                {
                    why = Some(format!(
                        "{errors} of {ticks} ticks failed (health.maxTickErrorRate {max})"
                    ));
                } else {
                    for bound in &r.telemetry {
                        if let Some(reading) = s.telemetry.get(&bound.sensor)
                            && reading.at >= w.since_wall
                            && let Some(broken) = bound.broken_by(reading.value)
                        {
                            why = Some(broken);
                            break;
                        }
                    }
                }
                let elapsed =
                    w.since.elapsed() >= r.min_ready.as_duration() && s.phase == crate::events::Phase::Running;
                match why {
                    Some(why) => verdicts.push((name.clone(), w.generation, w.revision, Err(why))),
                    None if elapsed => verdicts.push((name.clone(), w.generation, w.revision, Ok(()))),
                    None => {}
                }
            }
        }
        let mut any_failed = false;
        for (name, generation, revision, verdict) in verdicts {
            match verdict {
                Err(why) => {
                    self.fail(&name, generation, revision, why);
                    any_failed = true;
                }
                Ok(()) => {
                    if let Some(w) = lock(&self.watching).remove(&name) {
                        let since = harvester_api::unix_ms(w.since_wall);
                        lock(&self.healthy).insert(name, (generation, revision, since));
                    }
                }
            }
        }
        any_failed
    }

    /// What this node reports about the guarded revision of `plugin`.
    pub(super) fn report(&self, plugin: &str) -> Option<NodeHealth> {
        if let Some(f) = lock(&self.failed).get(plugin) {
            return Some(NodeHealth {
                revision: f.revision,
                healthy_since: 0,
                failure: f.why.clone(),
            });
        }
        if let Some(h) = lock(&self.healthy).get(plugin) {
            return Some(NodeHealth {
                revision: h.1,
                healthy_since: h.2,
                failure: String::new(),
            });
        }
        lock(&self.watching).get(plugin).map(|w| NodeHealth {
            revision: w.revision,
            ..Default::default()
        })
    }
}

/// The assignment that runs `guard`'s fallback in place of `a`.
fn fallback(a: &Assignment, guard: &Guard) -> Assignment {
    Assignment {
        name: a.name.clone(),
        generation: guard.fallback.generation,
        digest: guard.fallback.digest,
        image: guard.fallback.image.clone(),
        run: guard.fallback.run.clone(),
        guard: None,
    }
}
