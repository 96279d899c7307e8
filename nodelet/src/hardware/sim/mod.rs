//! Simulated devices for machines that are not a Raspberry Pi. Each records
//! what plugins did to it (frames, patterns, pin writes) so tests and the
//! dashboard can see it.

pub mod bme680_registers;
pub mod world;

use super::bme680::Bme680Device;
use super::sysfs::LinuxSystem;
use super::{
    Buzzer, BuzzerPattern, ClimateReading, DeviceError, DeviceResult, Dht22, Gpio, Hardware, I2cBus, LedStrip, Rgb,
};
use bme680_registers::FakeBme680;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use world::SimWorld;

/// Recorded history is bounded so a long-running simulation stays small.
const HISTORY: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn push_bounded<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() == HISTORY {
        q.pop_front();
    }
    q.push_back(item);
}

/// What the simulated board has.
#[derive(Debug, Clone)]
pub struct SimProfile {
    pub led_count: usize,
    pub buzzer: bool,
    pub dht22: bool,
    pub bme680: bool,
    /// BME680 readings before its IAQ baseline is learnt.
    pub bme680_burn_in: usize,
    pub seed: u64,
}

impl Default for SimProfile {
    /// The showcase's Pi 4: every device.
    fn default() -> Self {
        SimProfile {
            led_count: 11,
            buzzer: true,
            dht22: true,
            bme680: true,
            bme680_burn_in: 10,
            seed: 0,
        }
    }
}

/// Handles to the simulated devices, for inspection and for pinning values.
#[derive(Clone)]
pub struct SimHandles {
    pub world: Arc<SimWorld>,
    pub gpio: Arc<SimGpio>,
    pub leds: Arc<SimLedStrip>,
    pub buzzer: Arc<SimBuzzer>,
    pub bme680: Option<Arc<Mutex<FakeBme680>>>,
    pub system: Arc<LinuxSystem>,
}

/// Builds a simulated board.
pub fn build(profile: &SimProfile) -> (Hardware, SimHandles) {
    let world = Arc::new(SimWorld::new(profile.seed));
    let gpio = Arc::new(SimGpio::default());
    let leds = Arc::new(SimLedStrip::new(profile.led_count));
    let buzzer = Arc::new(SimBuzzer::default());
    let system = Arc::new(LinuxSystem::new(true));
    let bus = Arc::new(SimI2cBus::default());
    let mut bme_fake = None;
    let mut bme680: Option<Arc<dyn super::Bme680>> = None;
    if profile.bme680 {
        let fake = Arc::new(Mutex::new(FakeBme680::new(world.clone())));
        bus.attach(0x77, fake.clone());
        match Bme680Device::new(SimI2cHandle(bus.clone()), NoDelay, 0x77, profile.bme680_burn_in, false) {
            Ok(dev) => bme680 = Some(Arc::new(dev)),
            Err(e) => tracing::error!("simulated BME680 failed to start: {e}"),
        }
        bme_fake = Some(fake);
    }
    let mut i2c: BTreeMap<u8, Arc<dyn I2cBus>> = BTreeMap::new();
    i2c.insert(1, bus);
    let hw = Hardware {
        backend: "sim",
        gpio: Some(gpio.clone()),
        i2c,
        leds: (profile.led_count > 0).then(|| leds.clone() as Arc<dyn LedStrip>),
        buzzer: profile.buzzer.then(|| buzzer.clone() as Arc<dyn Buzzer>),
        dht22: profile
            .dht22
            .then(|| Arc::new(SimDht22 { world: world.clone() }) as Arc<dyn Dht22>),
        bme680,
        system: system.clone(),
    };
    let handles = SimHandles {
        world,
        gpio,
        leds,
        buzzer,
        bme680: bme_fake,
        system,
    };
    (hw, handles)
}

/// Pins 0-27, all starting low, with a log of writes.
#[derive(Default)]
pub struct SimGpio {
    state: Mutex<(u32, VecDeque<PinWrite>)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PinWrite {
    pub pin: u8,
    pub high: bool,
    pub at: SystemTime,
}

impl SimGpio {
    pub fn writes(&self) -> Vec<PinWrite> {
        lock(&self.state).1.iter().cloned().collect()
    }
}

impl Gpio for SimGpio {
    fn read(&self, pin: u8) -> DeviceResult<bool> {
        Ok(lock(&self.state).0 & (1 << pin) != 0)
    }

    fn write(&self, pin: u8, high: bool) -> DeviceResult<()> {
        let mut s = lock(&self.state);
        if high {
            s.0 |= 1 << pin;
        } else {
            s.0 &= !(1 << pin);
        }
        push_bounded(
            &mut s.1,
            PinWrite {
                pin,
                high,
                at: SystemTime::now(),
            },
        );
        Ok(())
    }
}

/// A strip that keeps every frame it was sent.
pub struct SimLedStrip {
    len: usize,
    frames: Mutex<(u64, Vec<Rgb>, VecDeque<Vec<Rgb>>)>,
}

impl SimLedStrip {
    pub fn new(len: usize) -> SimLedStrip {
        SimLedStrip {
            len,
            frames: Mutex::new((0, vec![Rgb::OFF; len], VecDeque::new())),
        }
    }

    /// The colours currently shown.
    pub fn current(&self) -> Vec<Rgb> {
        lock(&self.frames).1.clone()
    }

    /// How many frames were sent.
    pub fn frame_count(&self) -> u64 {
        lock(&self.frames).0
    }

    pub fn history(&self) -> Vec<Vec<Rgb>> {
        lock(&self.frames).2.iter().cloned().collect()
    }
}

impl LedStrip for SimLedStrip {
    fn len(&self) -> usize {
        self.len
    }

    fn write_frame(&self, frame: &[Rgb]) -> DeviceResult<()> {
        if frame.len() != self.len {
            return Err(DeviceError::Failed(format!(
                "frame of {} LEDs for a strip of {}",
                frame.len(),
                self.len
            )));
        }
        let mut f = lock(&self.frames);
        f.0 += 1;
        f.1 = frame.to_vec();
        push_bounded(&mut f.2, frame.to_vec());
        Ok(())
    }
}

/// What the buzzer was asked to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuzzerAction {
    Pattern(BuzzerPattern),
    Tone(bool),
}

#[derive(Debug, Clone, Serialize)]
pub struct BuzzerEvent {
    pub action: BuzzerAction,
    #[serde(with = "crate::events::unix_millis")]
    pub at: SystemTime,
}

#[derive(Default)]
pub struct SimBuzzer {
    events: Mutex<VecDeque<BuzzerEvent>>,
}

impl SimBuzzer {
    pub fn events(&self) -> Vec<BuzzerEvent> {
        lock(&self.events).iter().cloned().collect()
    }

    fn record(&self, action: BuzzerAction) {
        push_bounded(
            &mut lock(&self.events),
            BuzzerEvent {
                action,
                at: SystemTime::now(),
            },
        );
    }
}

impl Buzzer for SimBuzzer {
    fn play(&self, pattern: BuzzerPattern) -> DeviceResult<()> {
        self.record(BuzzerAction::Pattern(pattern));
        Ok(())
    }

    fn tone(&self, on: bool) -> DeviceResult<()> {
        self.record(BuzzerAction::Tone(on));
        Ok(())
    }
}

/// A DHT22 reading the simulated room, rounded to the sensor's 0.1 resolution.
pub struct SimDht22 {
    world: Arc<SimWorld>,
}

impl Dht22 for SimDht22 {
    fn read(&self, _pin: u8) -> DeviceResult<ClimateReading> {
        let room = self.world.room();
        let round = |v: f32| (v * 10.0).round() / 10.0;
        Ok(ClimateReading {
            temperature_c: round(room.temperature_c),
            humidity_pct: round(room.humidity_pct),
        })
    }
}

/// An I2C bus with register-level fakes attached at their addresses.
#[derive(Default)]
pub struct SimI2cBus {
    devices: Mutex<BTreeMap<u8, Arc<Mutex<FakeBme680>>>>,
}

impl SimI2cBus {
    pub fn attach(&self, address: u8, device: Arc<Mutex<FakeBme680>>) {
        lock(&self.devices).insert(address, device);
    }

    fn device(&self, address: u8) -> DeviceResult<Arc<Mutex<FakeBme680>>> {
        lock(&self.devices)
            .get(&address)
            .cloned()
            .ok_or_else(|| DeviceError::Failed(format!("no device acknowledged address {address:#04x}")))
    }
}

impl I2cBus for SimI2cBus {
    fn transfer(&self, address: u8, write: &[u8], read_len: usize) -> DeviceResult<Vec<u8>> {
        let dev = self.device(address)?;
        let mut dev = lock(&dev);
        if !write.is_empty() {
            dev.write(write);
        }
        let mut buf = vec![0; read_len];
        dev.read(&mut buf);
        Ok(buf)
    }
}

/// The embedded-hal 0.2 face of the simulated bus, for real drivers.
pub struct SimI2cHandle(pub Arc<SimI2cBus>);

#[derive(Debug)]
pub struct SimI2cError(pub String);

impl embedded_hal_02::blocking::i2c::Write for SimI2cHandle {
    type Error = SimI2cError;

    fn write(&mut self, address: u8, bytes: &[u8]) -> Result<(), Self::Error> {
        let dev = self.0.device(address).map_err(|e| SimI2cError(e.to_string()))?;
        lock(&dev).write(bytes);
        Ok(())
    }
}

impl embedded_hal_02::blocking::i2c::Read for SimI2cHandle {
    type Error = SimI2cError;

    fn read(&mut self, address: u8, buffer: &mut [u8]) -> Result<(), Self::Error> {
        let dev = self.0.device(address).map_err(|e| SimI2cError(e.to_string()))?;
        lock(&dev).read(buffer);
        Ok(())
    }
}

/// The fake chip measures instantly: no need to wait.
pub struct NoDelay;

impl embedded_hal_02::blocking::delay::DelayMs<u8> for NoDelay {
    fn delay_ms(&mut self, _ms: u8) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_bme680_driver_reads_the_simulated_room() {
        let (hw, sim) = build(&SimProfile {
            bme680_burn_in: 3,
            ..SimProfile::default()
        });
        sim.world.set_temperature(Some(23.4));
        sim.world.set_humidity(Some(51.0));
        sim.world.set_pressure(Some(1002.5));
        sim.world.set_gas_resistance(Some(85_000.0));
        let bme = hw.bme680.expect("bme680 present");
        let r = bme.read().unwrap();
        assert!((r.temperature_c - 23.4).abs() < 0.05, "{r:?}");
        assert!((r.humidity_pct - 51.0).abs() < 0.2, "{r:?}");
        assert!((r.pressure_hpa - 1002.5).abs() < 0.2, "{r:?}");
        assert!((r.gas_ohms - 85_000.0).abs() / 85_000.0 < 0.03, "{r:?}");
        assert!(r.calibrating);
        bme.read().unwrap();
        assert!(!bme.read().unwrap().calibrating, "burn-in of 3 samples is over");
        // The driver's settings write starts one measurement of its own.
        assert_eq!(sim.bme680.unwrap().lock().unwrap().measurements(), 4);
    }

    #[test]
    fn raw_i2c_sees_the_chip_id() {
        let (hw, _) = build(&SimProfile::default());
        let id = hw.i2c[&1].transfer(0x77, &[0xD0], 1).unwrap();
        assert_eq!(id, vec![0x61]);
        let err = hw.i2c[&1].transfer(0x40, &[0x00], 1).unwrap_err();
        assert!(err.to_string().contains("0x40"), "{err}");
    }
}
