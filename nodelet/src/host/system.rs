//! `system`: facts about the board (CPU temperature, uptime, load).

use super::HostState;
use crate::bindings::system::Host;
use crate::bindings::types::HwError;

host_capability!(System, System, system);

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
