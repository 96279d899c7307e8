use super::list;
use crate::bindings::i2c::Host;
use crate::bindings::types::HwError;
use crate::sandbox::state::HostState;
use harvester_api::Capability;

const MAX_TRANSFER: usize = 256;

impl HostState {
    fn i2c_transfer(&self, bus: u8, address: u8, write: &[u8], read_len: u32) -> Result<Vec<u8>, HwError> {
        if !self.ctx.grants.allows_i2c(bus, address) {
            let granted = self
                .ctx
                .grants
                .i2c
                .as_ref()
                .map(|g| {
                    let addrs: Vec<String> = g.addresses.iter().map(|a| format!("{a:#04x}")).collect();
                    format!("bus {} addresses {}", g.bus, list(&addrs))
                })
                .unwrap_or_default();
            return Err(self.deny(
                Capability::I2c,
                format!("I2C bus {bus} address {address:#04x} is not granted (granted: {granted})"),
            ));
        }
        if write.len() > MAX_TRANSFER || read_len as usize > MAX_TRANSFER {
            return Err(HwError::Failed(format!(
                "I2C transfers are limited to {MAX_TRANSFER} bytes"
            )));
        }
        let dev = self
            .ctx
            .hardware
            .i2c
            .get(&bus)
            .cloned()
            .ok_or_else(|| HostState::absent(&format!("I2C bus {bus}")))?;
        Ok(dev.transfer(address, write, read_len as usize)?)
    }
}

impl Host for HostState {
    fn read(&mut self, bus: u8, address: u8, len: u32) -> Result<Vec<u8>, HwError> {
        self.i2c_transfer(bus, address, &[], len)
    }

    fn write(&mut self, bus: u8, address: u8, data: Vec<u8>) -> Result<(), HwError> {
        self.i2c_transfer(bus, address, &data, 0).map(|_| ())
    }

    fn write_read(&mut self, bus: u8, address: u8, data: Vec<u8>, len: u32) -> Result<Vec<u8>, HwError> {
        self.i2c_transfer(bus, address, &data, len)
    }
}
