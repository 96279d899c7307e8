//! `bme680`: the air-quality sensor, granted whole.

use super::{Data, HostCapability, HostState};
use crate::bindings;
use crate::bindings::bme680::{Host, Reading};
use crate::bindings::types::HwError;
use harvester_api::Capability;
use wasmtime::component::Linker;

pub(super) struct Bme680;

impl HostCapability for Bme680 {
    const CAPABILITY: Capability = Capability::Bme680;
    fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
        bindings::bme680::add_to_linker::<HostState, Data>(l, |s| s)
    }
}

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
