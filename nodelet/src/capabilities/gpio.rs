use super::list;
use crate::bindings::gpio::Host;
use crate::bindings::types::HwError;
use crate::sandbox::state::HostState;
use harvester_api::Capability;
use std::time::Duration;

const MAX_PULSE_MS: u32 = 5000;

impl HostState {
    fn gpio_pin(&self, pin: u8) -> Result<std::sync::Arc<dyn crate::hardware::Gpio>, HwError> {
        if !self.ctx.grants.allows_gpio_pin(pin) {
            let granted = self.ctx.grants.gpio.as_ref().map(|g| list(&g.pins)).unwrap_or_default();
            return Err(self.deny(
                Capability::Gpio,
                format!("GPIO{pin} is not granted (granted pins: {granted})"),
            ));
        }
        self.ctx.hardware.gpio.clone().ok_or_else(|| HostState::absent("GPIO"))
    }
}

impl Host for HostState {
    fn read(&mut self, pin: u8) -> Result<bool, HwError> {
        Ok(self.gpio_pin(pin)?.read(pin)?)
    }

    fn write(&mut self, pin: u8, high: bool) -> Result<(), HwError> {
        Ok(self.gpio_pin(pin)?.write(pin, high)?)
    }

    fn pulse(&mut self, pin: u8, high: bool, duration_ms: u32) -> Result<(), HwError> {
        let gpio = self.gpio_pin(pin)?;
        if duration_ms > MAX_PULSE_MS {
            return Err(HwError::Failed(format!(
                "pulse of {duration_ms} ms is longer than {MAX_PULSE_MS} ms"
            )));
        }
        gpio.write(pin, high)?;
        std::thread::sleep(Duration::from_millis(duration_ms as u64));
        Ok(gpio.write(pin, !high)?)
    }
}
