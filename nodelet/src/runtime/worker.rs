//! One thread per plugin: it owns the live instance, ticks it on schedule,
//! runs its commands, swaps in new versions between ticks, and restarts it
//! with exponential backoff after a trap. Plugins never run on the async
//! runtime, so a slow plugin cannot stall the node's networking, and one
//! plugin's slowness never delays another's ticks.

use super::instance::{CallFailure, Instance, Version};
use crate::events::EventKind;
use crate::report::Reporter;
use crate::sandbox::cpu::CpuBudget;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// How a trapped plugin comes back.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Wait before the first restart; doubles after each further failure.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Consecutive failures before the plugin is reported as crash-looping.
    pub crash_loop_after: u32,
    /// Successful ticks after which the failure count starts over.
    pub healthy_after_ticks: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            crash_loop_after: 3,
            healthy_after_ticks: 10,
        }
    }
}

impl RestartPolicy {
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

pub(crate) enum Msg {
    /// Replace the running version with this one (already initialised).
    Swap {
        version: Arc<Version>,
        instance: Instance,
        done: Sender<()>,
    },
    Command {
        name: String,
        args: Vec<(String, String)>,
        reply: Sender<Result<String, String>>,
    },
    Stop,
}

pub(crate) struct Worker {
    plugin: String,
    report: Arc<Reporter>,
    policy: RestartPolicy,
    version: Arc<Version>,
    instance: Option<Instance>,
    next_tick: Instant,
    restart_at: Option<Instant>,
    failures: u32,
    healthy_ticks: u32,
    last_error: String,
    tick_metrics: crate::metrics::TickMetrics,
    cpu: CpuBudget,
}

impl Worker {
    pub(crate) fn spawn(
        report: Arc<Reporter>,
        policy: RestartPolicy,
        version: Arc<Version>,
        instance: Instance,
        rx: Receiver<Msg>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let plugin = version.ctx.plugin.clone();
        // Reported before the thread starts, so the caller of `apply` sees
        // the plugin Running when it returns.
        report.emit(
            &plugin,
            EventKind::Started {
                generation: version.generation,
                digest: version.digest,
                from_cache: version.from_cache,
                replaced: None,
            },
        );
        let worker = Worker {
            plugin: plugin.clone(),
            tick_metrics: report.metrics.tick_metrics(&plugin),
            cpu: CpuBudget::new(version.cpu_limit),
            report,
            policy,
            next_tick: Instant::now() + version.tick_interval,
            version,
            instance: Some(instance),
            restart_at: None,
            failures: 0,
            healthy_ticks: 0,
            last_error: String::new(),
        };
        // The plugin's thread logs as part of the node that started it.
        let node = crate::log_tap::LogContext::current();
        std::thread::Builder::new()
            .name(format!("plugin-{plugin}"))
            .spawn(move || node.run(|| worker.run(rx)))
    }

    fn run(mut self, rx: Receiver<Msg>) {
        self.cpu.begin();
        loop {
            let wake = match self.restart_at {
                Some(r) => r.min(self.next_tick),
                None => self.next_tick,
            };
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Msg::Swap {
                    version,
                    instance,
                    done,
                }) => {
                    let replaced = self.version.generation;
                    self.next_tick = self.next_tick.min(Instant::now() + version.tick_interval);
                    self.cpu.set_share(version.cpu_limit);
                    self.version = version;
                    // The old instance is dropped here, between two ticks.
                    self.instance = Some(instance);
                    self.restart_at = None;
                    self.failures = 0;
                    self.healthy_ticks = 0;
                    self.report.emit(
                        &self.plugin,
                        EventKind::Started {
                            generation: self.version.generation,
                            digest: self.version.digest,
                            from_cache: self.version.from_cache,
                            replaced: Some(replaced),
                        },
                    );
                    let _ = done.send(());
                }
                Ok(Msg::Command { name, args, reply }) => {
                    let answer = self.command(&name, &args);
                    let _ = reply.send(answer);
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    if self.restart_at.is_some_and(|r| r <= now) {
                        self.restart();
                    }
                    if self.next_tick <= Instant::now() {
                        self.tick();
                    }
                }
            }
        }
        self.instance = None;
        self.silence();
        self.report.emit(&self.plugin, EventKind::Stopped);
    }

    /// A plugin that stops or crashes while its tone is on must not leave
    /// the buzzer sounding.
    fn silence(&self) {
        let ctx = &self.version.ctx;
        if ctx.grants.grants(harvester_api::Capability::Buzzer)
            && let Some(b) = &ctx.hardware.buzzer
            && let Err(e) = b.tone(false)
        {
            tracing::warn!(plugin = self.plugin, "cannot silence the buzzer: {e}");
        }
    }

    fn tick(&mut self) {
        let interval = self.version.tick_interval;
        let mut wait = None;
        if let Some(instance) = self.instance.as_mut() {
            let started = Instant::now();
            let outcome = instance.tick(self.version.call_timeout);
            let ended = Instant::now();
            let took = ended.saturating_duration_since(started);
            wait = self.cpu.charge(ended, took);
            match outcome {
                Ok(result) => {
                    self.report.tick_done(
                        &self.plugin,
                        &self.tick_metrics,
                        took.as_secs_f64(),
                        instance.memory_bytes(),
                    );
                    if let Err(message) = result {
                        self.report.emit(&self.plugin, EventKind::TickFailed { message });
                    }
                    self.healthy_ticks += 1;
                    if self.healthy_ticks >= self.policy.healthy_after_ticks {
                        self.failures = 0;
                    }
                }
                Err(failure) => self.trapped("tick", failure),
            }
        }
        // Fixed-rate schedule; ticks that could not run on time are skipped
        // and counted rather than bunched up.
        self.next_tick += interval;
        self.throttle(wait);
        let now = Instant::now();
        if self.next_tick <= now {
            let behind = now.duration_since(self.next_tick);
            let missed = (behind.as_nanos() / interval.as_nanos().max(1)) as u64 + 1;
            self.next_tick += interval.saturating_mul(missed as u32);
            if self.instance.is_some() {
                self.report.ticks_missed(&self.plugin, missed);
            }
        }
    }

    fn command(&mut self, name: &str, args: &[(String, String)]) -> Result<String, String> {
        let Some(instance) = self.instance.as_mut() else {
            return Err(format!(
                "plugin {} is restarting after: {}",
                self.plugin, self.last_error
            ));
        };
        let started = Instant::now();
        let result = instance.command(self.version.call_timeout, name, args);
        let ended = Instant::now();
        let took = ended.saturating_duration_since(started);
        self.report
            .metrics
            .call_seconds
            .with_label_values(&[&self.plugin, "on-command"])
            .observe(took.as_secs_f64());
        let wait = self.cpu.charge(ended, took);
        self.throttle(wait);
        match result {
            Ok(answer) => answer,
            Err(failure) => {
                let message = failure.message.clone();
                self.trapped("on-command", failure);
                Err(message)
            }
        }
    }

    /// Over its CPU budget, the plugin's next tick waits until it is back
    /// within it: delayed and counted, never skipped in a burst later.
    fn throttle(&mut self, wait: Option<Duration>) {
        let Some(wait) = wait else { return };
        let earliest = Instant::now() + wait;
        if self.next_tick < earliest {
            self.next_tick = earliest;
            self.report.throttled(&self.plugin, self.version.cpu_limit, wait);
        }
    }

    fn trapped(&mut self, call: &str, failure: CallFailure) {
        // A trapped instance is poisoned: drop it and start a fresh one later.
        self.instance = None;
        self.silence();
        self.failures += 1;
        self.healthy_ticks = 0;
        self.last_error = failure.message.clone();
        self.report.emit(
            &self.plugin,
            EventKind::Trapped {
                kind: failure.kind,
                call: call.to_string(),
                message: failure.message,
            },
        );
        self.schedule_restart();
    }

    fn schedule_restart(&mut self) {
        let backoff = self.policy.backoff(self.failures);
        self.restart_at = Some(Instant::now() + backoff);
        if self.failures >= self.policy.crash_loop_after {
            self.report.emit(
                &self.plugin,
                EventKind::CrashLoop {
                    restarts: self.failures,
                    last_error: self.last_error.clone(),
                },
            );
        }
    }

    fn restart(&mut self) {
        self.restart_at = None;
        match self.version.start() {
            Ok(instance) => {
                self.instance = Some(instance);
                self.report
                    .emit(&self.plugin, EventKind::Restarted { attempt: self.failures });
            }
            Err(failure) => {
                self.failures += 1;
                self.last_error = failure.message.clone();
                self.report.emit(
                    &self.plugin,
                    EventKind::Trapped {
                        kind: failure.kind,
                        call: "restart".into(),
                        message: failure.message,
                    },
                );
                self.schedule_restart();
            }
        }
    }
}
