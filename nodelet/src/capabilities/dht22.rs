use crate::bindings::dht22::{Host, Reading};
use crate::bindings::types::HwError;
use crate::sandbox::state::HostState;
use harvester_api::Capability;

impl Host for HostState {
    fn read(&mut self, pin: u8) -> Result<Reading, HwError> {
        if !self.ctx.grants.allows_dht22_pin(pin) {
            let granted = self
                .ctx
                .grants
                .dht22
                .as_ref()
                .map(|g| g.pin.to_string())
                .unwrap_or_default();
            return Err(self.deny(
                Capability::Dht22,
                format!("DHT22 on GPIO{pin} is not granted (granted pin: {granted})"),
            ));
        }
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
