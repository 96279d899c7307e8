//! The host side of every capability a plugin may import: one module per
//! capability, each owning its WIT binding, its grant check, its state and
//! what it reports. A call outside the grant's scope does nothing, returns
//! `denied` to the plugin, and is logged and counted.
//!
//! Adding a capability means its grant type (`harvester-api`), its hardware
//! trait (`hardware`), one module here implementing [`HostCapability`], and
//! its line in the `capabilities!` list below. Nothing else links it.
//!
//! Layers: the runtime asks [`linker`] for a linker holding WASI (locked
//! down by [`crate::sandbox`]) and exactly the granted interfaces; the
//! sandbox knows nothing of capabilities.

/// Declares a capability module's unit type and how it links: its
/// interface, bound to the store's [`HostState`].
macro_rules! host_capability {
    ($ty:ident, $cap:ident, $binding:ident) => {
        pub(super) struct $ty;

        impl super::HostCapability for $ty {
            const CAPABILITY: harvester_api::Capability = harvester_api::Capability::$cap;
            fn link(l: &mut wasmtime::component::Linker<super::HostState>) -> wasmtime::Result<()> {
                crate::bindings::$binding::add_to_linker::<super::HostState, super::Data>(l, |s| s)
            }
        }
    };
}

mod bme680;
mod buzzer;
mod config;
mod dht22;
mod gpio;
mod i2c;
mod leds;
mod log;
mod net;
mod system;
mod telemetry;

use crate::bindings;
use crate::bindings::types::HwError;
use crate::events::{EventKind, LogLevel, LogSource};
use crate::hardware::{DeviceError, Hardware, LedFrame};
use crate::report::Reporter;
use crate::sandbox::limits::MemoryCap;
use harvester_api::{Capability, Grants};
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// One host capability, in the spirit of Spin's factors: it knows its
/// interface and how to link it, and is linked only when granted.
trait HostCapability {
    const CAPABILITY: Capability;
    /// Defines the capability's interface in `linker`.
    fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()>;
}

/// The binding every capability's `link` uses: the host state is the store's data.
type Data = HasSelf<HostState>;

macro_rules! capabilities {
    ($($module:ident :: $ty:ident),* $(,)?) => {
        /// Links the interface of one granted capability.
        fn add_to_linker(linker: &mut Linker<HostState>, cap: Capability) -> wasmtime::Result<()> {
            $(
                if cap == <$module::$ty as HostCapability>::CAPABILITY {
                    return <$module::$ty as HostCapability>::link(linker);
                }
            )*
            Err(wasmtime::format_err!("this node has no host implementation of `{}`", cap.name()))
        }
    };
}

capabilities!(
    bme680::Bme680,
    buzzer::Buzzer,
    config::Config,
    dht22::Dht22,
    gpio::Gpio,
    i2c::I2c,
    leds::Leds,
    log::Log,
    net::Net,
    system::System,
    telemetry::Telemetry,
);

/// A linker with WASI and exactly the granted capability interfaces. A
/// capability that is not granted is not even defined, so a component that
/// imports it can never be instantiated, whatever the import check says.
pub(crate) fn linker(engine: &Engine, grants: &Grants) -> wasmtime::Result<Linker<HostState>> {
    let mut l = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut l)?;
    bindings::types::add_to_linker::<HostState, Data>(&mut l, |s| s)?;
    for cap in grants.capabilities() {
        add_to_linker(&mut l, cap)?;
    }
    Ok(l)
}

/// Everything about one plugin version that does not change between calls.
pub struct PluginContext {
    pub plugin: String,
    pub grants: Grants,
    pub config: BTreeMap<String, String>,
    pub(crate) hardware: Hardware,
    pub(crate) leds: Arc<LedFrame>,
    pub(crate) report: Arc<Reporter>,
    pub(crate) shared: Arc<Shared>,
}

/// What a plugin keeps across its versions: its telemetry series and its
/// log budget; removing the plugin removes its series.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) telemetry: telemetry::Series,
    log: log::LogBudget,
}

impl Shared {
    pub(crate) fn forget(&self, plugin: &str, metrics: &crate::metrics::Metrics) {
        self.telemetry.forget(plugin, metrics);
    }
}

impl PluginContext {
    pub(crate) fn new(
        plugin: String,
        grants: Grants,
        config: BTreeMap<String, String>,
        hardware: Hardware,
        leds: Arc<LedFrame>,
        report: Arc<Reporter>,
        shared: Arc<Shared>,
    ) -> PluginContext {
        PluginContext {
            plugin,
            grants,
            config,
            hardware,
            leds,
            report,
            shared,
        }
    }

    /// A line the plugin wrote, within its budget of lines per second; the
    /// node says once that lines are dropped, and how many when they flow again.
    pub(crate) fn log(&self, level: LogLevel, source: LogSource, message: String) {
        let node = |message: String| EventKind::Log {
            level: LogLevel::Warn,
            source: LogSource::Node,
            message,
        };
        match self.shared.log.admit(std::time::Instant::now()) {
            log::Admit::Write { dropped } => {
                if dropped > 0 {
                    self.report.emit(
                        &self.plugin,
                        node(format!("{dropped} log lines of this plugin were dropped")),
                    );
                }
                self.report
                    .emit(&self.plugin, EventKind::Log { level, source, message });
            }
            log::Admit::FirstDropped => {
                self.report
                    .metrics
                    .log_lines_dropped
                    .with_label_values(&[&self.plugin])
                    .inc();
                self.report.emit(
                    &self.plugin,
                    node(format!(
                        "this plugin writes more than {} log lines a second: further lines are dropped and counted",
                        log::LINES_PER_SECOND
                    )),
                );
            }
            log::Admit::Dropped => {
                self.report
                    .metrics
                    .log_lines_dropped
                    .with_label_values(&[&self.plugin])
                    .inc();
            }
        }
    }
}

/// What a plugin's store holds.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: MemoryCap,
    pub(crate) ctx: Arc<PluginContext>,
}

impl HostState {
    pub(crate) fn new(ctx: Arc<PluginContext>, memory_limit: u64) -> HostState {
        let out = {
            let ctx = ctx.clone();
            Arc::new(move |line: &str| ctx.log(LogLevel::Info, LogSource::Stdout, line.to_string()))
        };
        let err = {
            let ctx = ctx.clone();
            Arc::new(move |line: &str| ctx.log(LogLevel::Warn, LogSource::Stderr, line.to_string()))
        };
        HostState {
            wasi: crate::sandbox::wasi(out, err, memory_limit),
            table: crate::sandbox::table(),
            limits: MemoryCap::new(memory_limit),
            ctx,
        }
    }

    /// Refuses a call outside the grant: logged, counted, reported.
    fn deny(&self, capability: Capability, message: String) -> HwError {
        self.ctx.report.emit(
            &self.ctx.plugin,
            EventKind::Denied {
                capability,
                message: message.clone(),
            },
        );
        HwError::Denied(message)
    }

    /// Runs a capability's grant check: `Ok`, or the call is denied.
    fn check(&self, capability: Capability, verdict: Result<(), String>) -> Result<(), HwError> {
        verdict.map_err(|message| self.deny(capability, message))
    }

    /// A device that this node does not have.
    fn absent(what: &str) -> HwError {
        HwError::Unavailable(format!("this node has no {what}"))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::types::Host for HostState {}

impl From<DeviceError> for HwError {
    fn from(e: DeviceError) -> HwError {
        match e {
            DeviceError::Unavailable(m) => HwError::Unavailable(m),
            DeviceError::Failed(m) => HwError::Failed(m),
        }
    }
}

/// `[1, 2]` for messages that say what *is* granted.
fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    format!("[{}]", inner.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_of_the_api_has_a_host_implementation() {
        let engine = Engine::default();
        for cap in Capability::ALL {
            let mut l = Linker::<HostState>::new(&engine);
            add_to_linker(&mut l, cap).unwrap_or_else(|e| panic!("{}: {e:#}", cap.name()));
        }
    }
}
