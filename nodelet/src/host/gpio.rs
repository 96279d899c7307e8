//! `gpio`: digital pins, each read, write or pulse limited to granted pins.

use super::{HostState, list};
use crate::bindings::gpio::Host;
use crate::bindings::types::HwError;
use harvester_api::{Capability, Grants};
use std::sync::Arc;
use std::time::Duration;

const MAX_PULSE_MS: u32 = 5000;

host_capability!(Gpio, Gpio, gpio);

/// The grant check: only granted pins.
fn check(grants: &Grants, pin: u8) -> Result<(), String> {
    if grants.allows_gpio_pin(pin) {
        return Ok(());
    }
    let granted = grants.gpio.as_ref().map(|g| list(&g.pins)).unwrap_or_default();
    Err(format!("GPIO{pin} is not granted (granted pins: {granted})"))
}

impl HostState {
    fn gpio_pin(&self, pin: u8) -> Result<Arc<dyn crate::hardware::Gpio>, HwError> {
        self.check(Capability::Gpio, check(&self.ctx.grants, pin))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use harvester_api::grants::GpioGrant;

    #[test]
    fn only_granted_pins_are_reachable() {
        let grants = Grants {
            gpio: Some(GpioGrant { pins: vec![17, 27] }),
            ..Grants::default()
        };
        assert_eq!(check(&grants, 27), Ok(()));
        assert_eq!(
            check(&grants, 4),
            Err("GPIO4 is not granted (granted pins: [17, 27])".into())
        );
        assert!(check(&Grants::default(), 17).is_err());
    }
}
