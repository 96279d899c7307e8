//! The hardware seam: one trait per device, so the same capability code drives
//! a simulated board on a PC and real peripherals on a Raspberry Pi.
//!
//! - [`sim`]: simulated devices (the BME680 through the real driver against a
//!   register-level fake), used on any machine that is not a Pi.
//! - [`bme680`]: the BME680 driver wrapper and [`iaq`] the air-quality index.
//! - [`rpi`]: the Raspberry Pi backend (rppal), devices probed at start.
//! - [`sysfs`]: CPU temperature, uptime and load from Linux.
//! - [`drivers`]: buzzer relay, WS2812B over SPI and DHT22 over embedded-hal,
//!   tested against the timing- and bus-level fakes of `fakes` (test-only).
//! - [`frame`]: the LED frame all plugins of a node share.

pub mod bme680;
pub mod drivers;
#[cfg(test)]
mod fakes;
mod frame;
pub mod iaq;
pub mod rpi;
pub mod sim;
pub mod sysfs;

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

pub use frame::LedFrame;

/// A device operation that did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The device is absent, not enabled or not ready; the message says what to do.
    #[error("{0}")]
    Unavailable(String),
    /// The device was reached but the operation failed; retrying may work.
    #[error("{0}")]
    Failed(String),
}

pub type DeviceResult<T> = Result<T, DeviceError>;

/// One LED colour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Rgb {
    pub r: u8,
    pub g: u8,
    pub b: u8,
}

impl Rgb {
    pub const OFF: Rgb = Rgb { r: 0, g: 0, b: 0 };

    pub const fn new(r: u8, g: u8, b: u8) -> Rgb {
        Rgb { r, g, b }
    }

    pub fn hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.r, self.g, self.b)
    }
}

/// Buzzer patterns, matching the WIT `buzzer.pattern` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuzzerPattern {
    Short,
    Triple,
    Long,
}

impl BuzzerPattern {
    /// On/off durations in milliseconds, starting with "on".
    pub fn timings_ms(self) -> &'static [u64] {
        match self {
            BuzzerPattern::Short => &[100],
            BuzzerPattern::Triple => &[100, 100, 100, 100, 100],
            BuzzerPattern::Long => &[1000],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClimateReading {
    pub temperature_c: f32,
    pub humidity_pct: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AirReading {
    pub temperature_c: f32,
    pub humidity_pct: f32,
    pub pressure_hpa: f32,
    pub gas_ohms: f32,
    pub iaq: f32,
    pub calibrating: bool,
}

/// Digital pins, by BCM number.
pub trait Gpio: Send + Sync {
    fn read(&self, pin: u8) -> DeviceResult<bool>;
    fn write(&self, pin: u8, high: bool) -> DeviceResult<()>;
}

/// One I2C bus. Implementations serialise transactions themselves.
pub trait I2cBus: Send + Sync {
    /// Writes `write` (if any), then reads `read_len` bytes (if any), as one transaction.
    fn transfer(&self, address: u8, write: &[u8], read_len: usize) -> DeviceResult<Vec<u8>>;
}

/// A WS2812B strip.
pub trait LedStrip: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sends a whole frame, one colour per LED.
    fn write_frame(&self, frame: &[Rgb]) -> DeviceResult<()>;
}

/// A buzzer (on the showcase board, a relay on GPIO17, active low).
pub trait Buzzer: Send + Sync {
    /// Starts playing `pattern` and returns without waiting for it to end.
    fn play(&self, pattern: BuzzerPattern) -> DeviceResult<()>;
    fn tone(&self, on: bool) -> DeviceResult<()>;
}

pub trait Dht22: Send + Sync {
    fn read(&self, pin: u8) -> DeviceResult<ClimateReading>;
}

pub trait Bme680: Send + Sync {
    fn read(&self) -> DeviceResult<AirReading>;
}

pub trait SystemInfo: Send + Sync {
    fn cpu_temperature(&self) -> DeviceResult<f32>;
    fn uptime_seconds(&self) -> u64;
    fn load_average(&self) -> (f32, f32, f32);
}

/// Everything a node can offer its plugins. A device that is `None` (or a bus
/// missing from `i2c`) is absent: a plugin that needs it gets `unavailable`.
#[derive(Clone)]
pub struct Hardware {
    /// `sim` or `rpi`: which backend drives the devices.
    pub backend: &'static str,
    pub gpio: Option<Arc<dyn Gpio>>,
    pub i2c: BTreeMap<u8, Arc<dyn I2cBus>>,
    pub leds: Option<Arc<dyn LedStrip>>,
    pub buzzer: Option<Arc<dyn Buzzer>>,
    pub dht22: Option<Arc<dyn Dht22>>,
    pub bme680: Option<Arc<dyn Bme680>>,
    pub system: Arc<dyn SystemInfo>,
}

/// What a node reports it has, so plugins are placed only where their hardware is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inventory {
    pub backend: String,
    pub devices: Vec<String>,
    pub led_count: usize,
    pub i2c_buses: Vec<u8>,
}

impl Hardware {
    pub fn inventory(&self) -> Inventory {
        let mut devices = vec!["system".to_string()];
        let mut add = |present: bool, name: &str| {
            if present {
                devices.push(name.to_string());
            }
        };
        add(self.gpio.is_some(), "gpio");
        add(!self.i2c.is_empty(), "i2c");
        add(self.leds.is_some(), "leds");
        add(self.buzzer.is_some(), "buzzer");
        add(self.dht22.is_some(), "dht22");
        add(self.bme680.is_some(), "bme680");
        devices.sort();
        Inventory {
            backend: self.backend.to_string(),
            devices,
            led_count: self.leds.as_ref().map_or(0, |l| l.len()),
            i2c_buses: self.i2c.keys().copied().collect(),
        }
    }
}
