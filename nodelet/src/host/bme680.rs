//! `bme680`: the air-quality sensor, granted whole.

use super::HostState;
use crate::bindings::bme680::{Host, Reading};
use crate::bindings::types::HwError;

host_capability!(Bme680, Bme680, bme680);

impl Host for HostState {
    fn read(&mut self) -> Result<Reading, HwError> {
        let dev = self
            .ctx
            .hardware
            .bme680
            .clone()
            .ok_or_else(|| HostState::absent("BME680"))?;
        let r = dev.read()?;
        Ok(Reading {
            temperature_c: r.temperature_c,
            humidity_pct: r.humidity_pct,
            pressure_hpa: r.pressure_hpa,
            gas_ohms: r.gas_ohms,
            iaq: r.iaq,
            calibrating: r.calibrating,
        })
    }
}
