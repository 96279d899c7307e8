//! `dht22`: temperature and humidity from the DHT22 on the granted pin.

use super::HostState;
use crate::bindings::dht22::{Host, Reading};
use crate::bindings::types::HwError;
use harvester_api::{Capability, Grants};

host_capability!(Dht22, Dht22, dht22);

/// The grant check: the granted data pin only.
fn check(grants: &Grants, pin: u8) -> Result<(), String> {
    if grants.allows_dht22_pin(pin) {
        return Ok(());
    }
    let granted = grants.dht22.as_ref().map(|g| g.pin.to_string()).unwrap_or_default();
    Err(format!("DHT22 on GPIO{pin} is not granted (granted pin: {granted})"))
}

impl Host for HostState {
    fn read(&mut self, pin: u8) -> Result<Reading, HwError> {
        self.check(Capability::Dht22, check(&self.ctx.grants, pin))?;
        let dev = self
            .ctx
            .hardware
            .dht22
            .clone()
            .ok_or_else(|| HostState::absent("DHT22"))?;
        let r = dev.read(pin)?;
        Ok(Reading {
            temperature_c: r.temperature_c,
            humidity_pct: r.humidity_pct,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harvester_api::grants::Dht22Grant;

    #[test]
    fn only_the_granted_pin_is_read() {
        let grants = Grants {
            dht22: Some(Dht22Grant { pin: 4 }),
            ..Grants::default()
        };
        assert_eq!(check(&grants, 4), Ok(()));
        assert_eq!(
            check(&grants, 5),
            Err("DHT22 on GPIO5 is not granted (granted pin: 4)".into())
        );
    }
}
