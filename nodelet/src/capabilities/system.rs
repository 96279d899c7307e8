use crate::bindings::system::Host;
use crate::bindings::types::HwError;
use crate::sandbox::state::HostState;

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
