//! `system`: facts about the board (CPU temperature, uptime, load).

use super::{Data, HostCapability, HostState};
use crate::bindings;
use crate::bindings::system::Host;
use crate::bindings::types::HwError;
use harvester_api::Capability;
use wasmtime::component::Linker;

pub(super) struct System;

impl HostCapability for System {
    const CAPABILITY: Capability = Capability::System;
    fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
        bindings::system::add_to_linker::<HostState, Data>(l, |s| s)
    }
}

impl Host for HostState {
    fn cpu_temperature(&mut self) -> Result<f32, HwError> {
        Ok(self.ctx.hardware.system.cpu_temperature()?)
    }

    fn uptime_seconds(&mut self) -> u64 {
        self.ctx.hardware.system.uptime_seconds()
    }

    fn load_average(&mut self) -> (f32, f32, f32) {
        self.ctx.hardware.system.load_average()
    }
}
