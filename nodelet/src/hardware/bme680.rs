//! The BME680 through the `bme680` crate, on any embedded-hal 0.2 I2C bus:
//! rppal's on a Pi, the register-level fake of [`super::sim`] elsewhere.

use super::iaq::IaqEstimator;
use super::{AirReading, Bme680, DeviceError, DeviceResult};
use bme680::{
    Bme680 as Driver, FieldDataCondition, I2CAddress, IIRFilterSize, OversamplingSetting, PowerMode, SettingsBuilder,
};
use embedded_hal_02::blocking::delay::DelayMs;
use embedded_hal_02::blocking::i2c::{Read, Write};
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::Duration;

/// Heater profile of the Bosch examples: 320 C for 150 ms.
const HEATER_TEMP_C: u16 = 320;
const HEATER_MS: u64 = 150;

struct Inner<I2C, D> {
    driver: Driver<I2C, D>,
    delay: D,
    iaq: IaqEstimator,
    profile: Duration,
}

/// A BME680 with its IAQ estimator. Reads are serialised.
pub struct Bme680Device<I2C, D> {
    inner: Mutex<Inner<I2C, D>>,
    /// Real sensors need the measurement time to pass; the fake is instant.
    wait_for_measurement: bool,
    address: u8,
}

fn describe<R: Debug, W: Debug>(e: bme680::Error<R, W>, address: u8) -> DeviceError {
    match e {
        bme680::Error::DeviceNotFound => DeviceError::Unavailable(format!(
            "the device at {address:#04x} is not a BME680 (wrong chip id): check the wiring and the address (0x76 or 0x77)"
        )),
        bme680::Error::I2CWrite(w) => DeviceError::Failed(format!("I2C write to {address:#04x} failed: {w:?}")),
        bme680::Error::I2CRead(r) => DeviceError::Failed(format!("I2C read from {address:#04x} failed: {r:?}")),
        other => DeviceError::Failed(format!("BME680 at {address:#04x}: {other:?}")),
    }
}

impl<I2C, D> Bme680Device<I2C, D>
where
    I2C: Read + Write + Send,
    <I2C as Read>::Error: Debug,
    <I2C as Write>::Error: Debug,
    D: DelayMs<u8> + Send,
{
    /// Probes the chip and configures oversampling and the gas heater.
    pub fn new(
        i2c: I2C,
        mut delay: D,
        address: u8,
        burn_in_samples: usize,
        wait_for_measurement: bool,
    ) -> DeviceResult<Self> {
        let addr = if address == 0x76 {
            I2CAddress::Primary
        } else {
            I2CAddress::Secondary
        };
        let mut driver = Driver::init(i2c, &mut delay, addr).map_err(|e| describe(e, address))?;
        let settings = SettingsBuilder::new()
            .with_humidity_oversampling(OversamplingSetting::OS2x)
            .with_pressure_oversampling(OversamplingSetting::OS4x)
            .with_temperature_oversampling(OversamplingSetting::OS8x)
            .with_temperature_filter(IIRFilterSize::Size3)
            .with_gas_measurement(Duration::from_millis(HEATER_MS), HEATER_TEMP_C, 25)
            .with_run_gas(true)
            .build();
        driver
            .set_sensor_settings(&mut delay, settings)
            .map_err(|e| describe(e, address))?;
        let profile = driver.get_profile_dur(&settings.0).map_err(|e| describe(e, address))?;
        Ok(Bme680Device {
            inner: Mutex::new(Inner {
                driver,
                delay,
                iaq: IaqEstimator::new(burn_in_samples),
                profile,
            }),
            wait_for_measurement,
            address,
        })
    }
}

impl<I2C, D> Bme680 for Bme680Device<I2C, D>
where
    I2C: Read + Write + Send,
    <I2C as Read>::Error: Debug,
    <I2C as Write>::Error: Debug,
    D: DelayMs<u8> + Send,
{
    fn read(&self) -> DeviceResult<AirReading> {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *guard;
        let address = self.address;
        inner
            .driver
            .set_sensor_mode(&mut inner.delay, PowerMode::ForcedMode)
            .map_err(|e| describe(e, address))?;
        if self.wait_for_measurement {
            std::thread::sleep(inner.profile);
        }
        let (data, condition) = inner
            .driver
            .get_sensor_data(&mut inner.delay)
            .map_err(|e| describe(e, address))?;
        if condition == FieldDataCondition::Unchanged {
            return Err(DeviceError::Failed(
                "BME680 produced no new measurement; try again".into(),
            ));
        }
        let gas = data.gas_resistance_ohm() as f32;
        let humidity = data.humidity_percent();
        let (iaq, calibrating) = inner.iaq.update(gas, humidity);
        Ok(AirReading {
            temperature_c: data.temperature_celsius(),
            humidity_pct: humidity,
            pressure_hpa: data.pressure_hpa(),
            gas_ohms: gas,
            iaq,
            calibrating,
        })
    }
}
