//! Host side of each capability interface: one module per capability, each
//! owning its WIT binding and its scope check. A call outside the grant's
//! scope does nothing, returns `denied` to the plugin, and is logged and
//! counted.

pub mod bme680;
pub mod buzzer;
pub mod config;
pub mod dht22;
pub mod gpio;
pub mod i2c;
pub mod leds;
pub mod log;
pub mod net;
pub mod system;
pub mod telemetry;

use crate::bindings;
use crate::bindings::types::HwError;
use crate::events::EventKind;
use crate::hardware::DeviceError;
use crate::sandbox::state::HostState;
use harvester_api::Capability;
use wasmtime::component::{HasSelf, Linker};

pub fn add_to_linker(l: &mut Linker<HostState>, cap: Capability) -> wasmtime::Result<()> {
    type D = HasSelf<HostState>;
    match cap {
        Capability::Gpio => bindings::gpio::add_to_linker::<HostState, D>(l, |s| s),
        Capability::I2c => bindings::i2c::add_to_linker::<HostState, D>(l, |s| s),
        Capability::Leds => bindings::leds::add_to_linker::<HostState, D>(l, |s| s),
        Capability::Buzzer => bindings::buzzer::add_to_linker::<HostState, D>(l, |s| s),
        Capability::Dht22 => bindings::dht22::add_to_linker::<HostState, D>(l, |s| s),
        Capability::Bme680 => bindings::bme680::add_to_linker::<HostState, D>(l, |s| s),
        Capability::System => bindings::system::add_to_linker::<HostState, D>(l, |s| s),
        Capability::Net => bindings::net::add_to_linker::<HostState, D>(l, |s| s),
        Capability::Log => bindings::log::add_to_linker::<HostState, D>(l, |s| s),
        Capability::Telemetry => bindings::telemetry::add_to_linker::<HostState, D>(l, |s| s),
        Capability::Config => bindings::config::add_to_linker::<HostState, D>(l, |s| s),
    }
}

impl bindings::types::Host for HostState {}

impl HostState {
    /// Refuses a call outside the grant: logged, counted, reported.
    pub(crate) fn deny(&self, capability: Capability, message: String) -> HwError {
        self.ctx.report.emit(
            &self.ctx.plugin,
            EventKind::Denied {
                capability,
                message: message.clone(),
            },
        );
        HwError::Denied(message)
    }

    /// A device that this node does not have.
    pub(crate) fn absent(what: &str) -> HwError {
        HwError::Unavailable(format!("this node has no {what}"))
    }
}

impl From<DeviceError> for HwError {
    fn from(e: DeviceError) -> HwError {
        match e {
            DeviceError::Unavailable(m) => HwError::Unavailable(m),
            DeviceError::Failed(m) => HwError::Failed(m),
        }
    }
}

/// `[1, 2]` for messages that say what *is* granted.
pub(crate) fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    format!("[{}]", inner.join(", "))
}
