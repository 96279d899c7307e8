//! `i2c`: transfers on the granted bus, to the granted addresses, bounded in size.

use super::{HostState, list};
use crate::bindings::i2c::Host;
use crate::bindings::types::HwError;
use harvester_api::{Capability, Grants};

const MAX_TRANSFER: usize = 256;

host_capability!(I2c, I2c, i2c);

/// The grant check: the granted bus and addresses only.
fn check(grants: &Grants, bus: u8, address: u8) -> Result<(), String> {
    if grants.allows_i2c(bus, address) {
        return Ok(());
    }
    let granted = grants
        .i2c
        .as_ref()
        .map(|g| {
            let addrs: Vec<String> = g.addresses.iter().map(|a| format!("{a:#04x}")).collect();
            format!("bus {} addresses {}", g.bus, list(&addrs))
        })
        .unwrap_or_default();
    Err(format!(
        "I2C bus {bus} address {address:#04x} is not granted (granted: {granted})"
    ))
}

impl HostState {
    fn i2c_transfer(&self, bus: u8, address: u8, write: &[u8], read_len: u32) -> Result<Vec<u8>, HwError> {
        self.check(Capability::I2c, check(&self.ctx.grants, bus, address))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use harvester_api::grants::I2cGrant;

    #[test]
    fn only_the_granted_bus_and_addresses_are_reachable() {
        let grants = Grants {
            i2c: Some(I2cGrant {
                bus: 1,
                addresses: vec![0x76, 0x77],
            }),
            ..Grants::default()
        };
        assert_eq!(check(&grants, 1, 0x77), Ok(()));
        assert_eq!(
            check(&grants, 1, 0x40),
            Err("I2C bus 1 address 0x40 is not granted (granted: bus 1 addresses [0x76, 0x77])".into())
        );
        assert!(check(&grants, 0, 0x77).is_err(), "another bus");
    }
}
