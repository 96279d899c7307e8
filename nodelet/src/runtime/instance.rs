//! One plugin version (a linked, pre-instantiated component with its
//! context) and its live instances, with every call under a deadline and the
//! memory cap.

use crate::bindings::{Full, FullPre};
use crate::events::TrapKind;
use crate::host::{HostState, PluginContext};
use harvester_api::{Digest, MemorySize};
use harvester_engine::config::PluginEngine;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Store, Trap};

/// A call that did not return normally.
#[derive(Debug, Clone)]
pub struct CallFailure {
    pub kind: TrapKind,
    pub message: String,
}

/// A compiled, linked and checked version of a plugin, ready to instantiate
/// as often as restarts need.
pub struct Version {
    pub(crate) pre: FullPre<HostState>,
    pub ctx: Arc<PluginContext>,
    pub generation: u64,
    pub digest: Digest,
    pub from_cache: bool,
    pub tick_interval: Duration,
    pub call_timeout: Duration,
    pub memory_limit: MemorySize,
    pub cpu_limit: harvester_api::CpuShare,
}

/// A live instance of a version.
pub struct Instance {
    store: Store<HostState>,
    bindings: Full,
}

impl Version {
    /// A fresh instance, initialised with the plugin's config.
    pub fn start(&self) -> Result<Instance, CallFailure> {
        let mut instance = self.instantiate()?;
        let config: Vec<(String, String)> = self.ctx.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let started = Instant::now();
        let result = instance.call(self.call_timeout, "init", |s, b| {
            b.harvester_plugin_lifecycle().call_init(s, &config)
        });
        self.ctx
            .report
            .metrics
            .call_seconds
            .with_label_values(&[&self.ctx.plugin, "init"])
            .observe(started.elapsed().as_secs_f64());
        match result? {
            Ok(()) => Ok(instance),
            Err(message) => Err(CallFailure {
                kind: TrapKind::Trap,
                message: format!("init returned an error: {message}"),
            }),
        }
    }
}

impl Version {
    /// A fresh instance without calling `init` (the cost of a restart, less
    /// the plugin's own start-up).
    pub fn instantiate(&self) -> Result<Instance, CallFailure> {
        let mut store = Store::new(
            self.pre.engine(),
            HostState::new(self.ctx.clone(), self.memory_limit.bytes()),
        );
        store.limiter(|s| &mut s.limits);
        let started = std::time::Instant::now();
        let bindings = call(&mut store, self.call_timeout, "instantiation", |s| {
            self.pre.instantiate(s)
        })?;
        self.ctx
            .report
            .metrics
            .instantiate_seconds
            .with_label_values(&[&self.ctx.plugin])
            .observe(started.elapsed().as_secs_f64());
        Ok(Instance { store, bindings })
    }
}

impl Instance {
    fn call<R>(
        &mut self,
        timeout: Duration,
        what: &str,
        f: impl FnOnce(&mut Store<HostState>, &Full) -> wasmtime::Result<R>,
    ) -> Result<R, CallFailure> {
        let bindings = &self.bindings;
        call(&mut self.store, timeout, what, |s| f(s, bindings))
    }

    pub fn tick(&mut self, timeout: Duration) -> Result<Result<(), String>, CallFailure> {
        self.call(timeout, "tick", |s, b| b.harvester_plugin_lifecycle().call_tick(s))
    }

    pub fn command(
        &mut self,
        timeout: Duration,
        name: &str,
        args: &[(String, String)],
    ) -> Result<Result<String, String>, CallFailure> {
        self.call(timeout, "on-command", |s, b| {
            b.harvester_plugin_lifecycle().call_on_command(s, name, args)
        })
    }

    /// Linear memory the instance holds.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limits.used()
    }
}

/// Runs one call with a deadline and classifies how it failed.
fn call<R>(
    store: &mut Store<HostState>,
    timeout: Duration,
    what: &str,
    f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
) -> Result<R, CallFailure> {
    store.set_epoch_deadline(PluginEngine::deadline_ticks(timeout));
    store.data_mut().limits.take_refused();
    let err = match f(store) {
        Ok(r) => return Ok(r),
        Err(e) => e,
    };
    let memory_refused = store.data_mut().limits.take_refused();
    let limit = MemorySize(store.data().limits.limit() as u64);
    let (kind, message) = if matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        (
            TrapKind::Timeout,
            format!(
                "{what} ran past its call timeout of {} ms and was interrupted",
                timeout.as_millis()
            ),
        )
    } else if let Some(limit) = resource_limit(&err) {
        (TrapKind::ResourceLimit, format!("{what} was stopped: {limit}"))
    } else if memory_refused {
        (
            TrapKind::MemoryLimit,
            format!(
                "{what} failed after the plugin reached its memory limit of {limit}: {}",
                root_cause(&err)
            ),
        )
    } else {
        (TrapKind::Trap, format!("{what} trapped: {}", root_cause(&err)))
    };
    Err(CallFailure { kind, message })
}

/// Which of the host's own bounds a failed call ran into, named.
fn resource_limit(e: &wasmtime::Error) -> Option<String> {
    use wasmtime::component::ResourceTableError;
    if e.chain()
        .any(|c| matches!(c.downcast_ref::<ResourceTableError>(), Some(ResourceTableError::Full)))
    {
        return Some(format!(
            "the plugin holds {} WASI resources (streams, pollables...), its limit",
            crate::sandbox::MAX_TABLE_ENTRIES
        ));
    }
    // wasmtime-wasi's words for a `get-random-bytes` over `max_random_size`.
    let text = e.root_cause().to_string();
    if text.starts_with("requested len") && text.contains("exceeds limit") {
        return Some(format!("it asked the host for a buffer over its limit ({text})"));
    }
    None
}

fn root_cause(e: &wasmtime::Error) -> String {
    let mut text = e.root_cause().to_string();
    if let Some(trap) = e.downcast_ref::<Trap>()
        && !text.contains(&trap.to_string())
    {
        text = format!("{trap}: {text}");
    }
    text
}
