//! The Raspberry Pi backend (rppal): GPIO, I2C bus 1 with the BME680, the
//! WS2812B strip on SPI0 MOSI (GPIO10), the DHT22 and the buzzer relay, and
//! CPU temperature from sysfs. Each device is probed at start; what is
//! missing is left out of the inventory (so no plugin is placed for it)
//! with a message saying what to do.

use super::bme680::Bme680Device;
use super::drivers::{DHT22_INTERVAL, Dht22Sensor, RelayBuzzer, SpiStrip};
use super::sysfs::LinuxSystem;
use super::{DeviceError, DeviceResult, Dht22, Gpio, Hardware, I2cBus};
use rppal::gpio::{Bias, IoPin, Mode};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// What is wired where (the showcase's Pi 4 by default).
#[derive(Debug, Clone)]
pub struct RpiConfig {
    pub dht22_pin: Option<u8>,
    pub buzzer_pin: Option<u8>,
    /// LEDs on the strip at SPI0 MOSI; 0 for none.
    pub led_count: usize,
    pub i2c_bus: u8,
    pub bme680_address: u8,
    pub bme680_burn_in: usize,
    pub spi_clock_hz: u32,
}

impl Default for RpiConfig {
    fn default() -> Self {
        RpiConfig {
            dht22_pin: Some(4),
            buzzer_pin: Some(17),
            led_count: 11,
            i2c_bus: 1,
            bme680_address: 0x77,
            bme680_burn_in: 100,
            spi_clock_hz: 3_000_000,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const ENABLE_I2C: &str = "enable I2C: sudo raspi-config, Interface Options, I2C (or dtparam=i2c_arm=on in /boot/firmware/config.txt), then reboot";
const ENABLE_SPI: &str = "enable SPI: sudo raspi-config, Interface Options, SPI (or dtparam=spi=on in /boot/firmware/config.txt), then reboot";

fn permission(path: &str, group: &str) -> String {
    format!(
        "no permission to open {path}: add this user to the {group} group (sudo usermod -aG {group} $USER, then log in again), or run the installed service (deploy/install)"
    )
}

pub fn gpio_error(e: rppal::gpio::Error) -> String {
    match e {
        rppal::gpio::Error::UnknownModel => {
            "this is not a Raspberry Pi (no known model in /proc/device-tree/model): run with --hardware sim".into()
        }
        rppal::gpio::Error::PermissionDenied(path) => permission(&path, "gpio"),
        rppal::gpio::Error::PinNotAvailable(pin) => format!("GPIO{pin} does not exist on this board"),
        rppal::gpio::Error::PinUsed(pin) => format!("GPIO{pin} is already in use by another program or driver"),
        other => format!("GPIO: {other}"),
    }
}

fn i2c_error(bus: u8, e: rppal::i2c::Error) -> String {
    match e {
        rppal::i2c::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            format!("I2C bus {bus} is not enabled (/dev/i2c-{bus} is missing): {ENABLE_I2C}")
        }
        rppal::i2c::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            permission(&format!("/dev/i2c-{bus}"), "i2c")
        }
        other => format!("I2C bus {bus}: {other}"),
    }
}

fn spi_error(e: rppal::spi::Error) -> String {
    match e {
        rppal::spi::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            format!("SPI0 is not enabled (/dev/spidev0.0 is missing): {ENABLE_SPI}")
        }
        rppal::spi::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            permission("/dev/spidev0.0", "spi")
        }
        other => format!("SPI0: {other}"),
    }
}

/// rppal's `IoPin` as an open-drain line, as the DHT22 needs: high lets
/// the pull-up hold the line (input), low drives it. An output pin's
/// `is_high` reads the latch, not the line, so the sensor would never be
/// heard otherwise.
pub struct OpenDrain(IoPin);

impl embedded_hal::digital::ErrorType for OpenDrain {
    type Error = std::convert::Infallible;
}

impl embedded_hal::digital::OutputPin for OpenDrain {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.0.set_mode(Mode::Output);
        self.0.set_low();
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.0.set_mode(Mode::Input);
        self.0.set_bias(Bias::PullUp);
        Ok(())
    }
}

impl embedded_hal::digital::InputPin for OpenDrain {
    fn is_high(&mut self) -> Result<bool, Self::Error> {
        Ok(self.0.is_high())
    }

    fn is_low(&mut self) -> Result<bool, Self::Error> {
        Ok(self.0.is_low())
    }
}

/// Plugin GPIO: pins are claimed on first use; pins that belong to a
/// device (buzzer, DHT22, I2C, SPI) are refused with the grant to use.
struct RpiGpio {
    gpio: rppal::gpio::Gpio,
    reserved: BTreeMap<u8, &'static str>,
    pins: Mutex<HashMap<u8, IoPin>>,
}

impl RpiGpio {
    fn with_pin<T>(&self, pin: u8, output: bool, f: impl FnOnce(&mut IoPin) -> T) -> DeviceResult<T> {
        if let Some(what) = self.reserved.get(&pin) {
            return Err(DeviceError::Unavailable(format!(
                "GPIO{pin} is wired to {what} on this node"
            )));
        }
        let mut pins = lock(&self.pins);
        let p = match pins.entry(pin) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                self.gpio
                    .get(pin)
                    .map_err(|e| DeviceError::Unavailable(gpio_error(e)))?
                    .into_io(if output { Mode::Output } else { Mode::Input }),
            ),
        };
        if output && p.mode() != Mode::Output {
            p.set_mode(Mode::Output);
        }
        Ok(f(p))
    }
}

impl Gpio for RpiGpio {
    fn read(&self, pin: u8) -> DeviceResult<bool> {
        self.with_pin(pin, false, |p| p.is_high())
    }

    fn write(&self, pin: u8, high: bool) -> DeviceResult<()> {
        self.with_pin(pin, true, |p| if high { p.set_high() } else { p.set_low() })
    }
}

/// Plugin I2C transfers on one bus, one transaction at a time.
struct RpiI2c {
    bus: u8,
    i2c: Mutex<rppal::i2c::I2c>,
}

impl I2cBus for RpiI2c {
    fn transfer(&self, address: u8, write: &[u8], read_len: usize) -> DeviceResult<Vec<u8>> {
        let mut i2c = lock(&self.i2c);
        let fail = |e: rppal::i2c::Error| {
            DeviceError::Failed(format!(
                "I2C bus {} address {address:#04x}: {e} (is a device there? i2cdetect -y {} lists them)",
                self.bus, self.bus
            ))
        };
        i2c.set_slave_address(u16::from(address)).map_err(fail)?;
        let mut buf = vec![0; read_len];
        match (write.is_empty(), read_len) {
            (false, 0) => i2c.write(write).map(|_| ()).map_err(fail)?,
            (true, _) => i2c.read(&mut buf).map(|_| ()).map_err(fail)?,
            (false, _) => i2c.write_read(write, &mut buf).map_err(fail)?,
        }
        Ok(buf)
    }
}

/// Builds the Pi's hardware: an error only when this is not a usable Pi;
/// otherwise every device that answered, and a note for each that did not.
pub fn build(cfg: &RpiConfig) -> Result<(Hardware, Vec<String>), String> {
    let gpio = rppal::gpio::Gpio::new().map_err(gpio_error)?;
    let mut notes = Vec::new();
    let mut reserved: BTreeMap<u8, &'static str> = BTreeMap::new();

    let buzzer: Option<Arc<dyn super::Buzzer>> = match cfg.buzzer_pin {
        None => None,
        Some(p) => match gpio.get(p) {
            Ok(pin) => {
                reserved.insert(p, "the buzzer relay (grant buzzer)");
                // Active low: start high, silent.
                match RelayBuzzer::new(pin.into_output_high()) {
                    Ok(b) => Some(Arc::new(b)),
                    Err(e) => {
                        notes.push(format!("buzzer relay on GPIO{p}: {e}"));
                        None
                    }
                }
            }
            Err(e) => {
                notes.push(format!("buzzer relay on GPIO{p}: {}", gpio_error(e)));
                None
            }
        },
    };

    let dht22: Option<Arc<dyn Dht22>> = match cfg.dht22_pin {
        None => None,
        Some(p) => match gpio.get(p) {
            Ok(pin) => {
                reserved.insert(p, "the DHT22 (grant dht22)");
                let sensor = Dht22Sensor::new(
                    OpenDrain(pin.into_io(Mode::Input)),
                    rppal::hal::Delay::new(),
                    p,
                    DHT22_INTERVAL,
                );
                // Bit-banged reads miss now and then: three tries, 2 s apart.
                let mut answered = Err(DeviceError::Failed(String::new()));
                for attempt in 0..3 {
                    if attempt > 0 {
                        std::thread::sleep(DHT22_INTERVAL);
                    }
                    answered = sensor.read(p);
                    if answered.is_ok() {
                        break;
                    }
                }
                match answered {
                    Ok(_) => Some(Arc::new(sensor)),
                    Err(e) => {
                        notes.push(format!("no DHT22 found: {e}"));
                        None
                    }
                }
            }
            Err(e) => {
                notes.push(format!("DHT22 on GPIO{p}: {}", gpio_error(e)));
                None
            }
        },
    };

    let mut i2c: BTreeMap<u8, Arc<dyn I2cBus>> = BTreeMap::new();
    let mut bme680: Option<Arc<dyn super::Bme680>> = None;
    match rppal::i2c::I2c::with_bus(cfg.i2c_bus) {
        Ok(bus) => {
            reserved.insert(2, "I2C bus 1 (SDA; grant i2c)");
            reserved.insert(3, "I2C bus 1 (SCL; grant i2c)");
            i2c.insert(
                cfg.i2c_bus,
                Arc::new(RpiI2c {
                    bus: cfg.i2c_bus,
                    i2c: Mutex::new(bus),
                }),
            );
            // The driver gets its own handle; the kernel serialises each
            // transaction on the bus.
            match rppal::i2c::I2c::with_bus(cfg.i2c_bus).map_err(|e| i2c_error(cfg.i2c_bus, e)) {
                Ok(own) => match Bme680Device::new(
                    own,
                    rppal::hal::Delay::new(),
                    cfg.bme680_address,
                    cfg.bme680_burn_in,
                    true,
                ) {
                    Ok(d) => bme680 = Some(Arc::new(d)),
                    Err(e) => notes.push(format!(
                        "no BME680 at {:#04x} on I2C bus {}: {e} (wiring: SDA GPIO2, SCL GPIO3, 3V3; SDO high for 0x77, low for 0x76)",
                        cfg.bme680_address, cfg.i2c_bus
                    )),
                },
                Err(e) => notes.push(e),
            }
        }
        Err(e) => notes.push(i2c_error(cfg.i2c_bus, e)),
    }

    let leds: Option<Arc<dyn super::LedStrip>> = if cfg.led_count == 0 {
        None
    } else {
        match rppal::spi::Spi::new(
            rppal::spi::Bus::Spi0,
            rppal::spi::SlaveSelect::Ss0,
            cfg.spi_clock_hz,
            rppal::spi::Mode::Mode0,
        ) {
            Ok(spi) => {
                reserved.insert(10, "the LED strip (SPI0 MOSI; grant leds)");
                reserved.insert(11, "SPI0 (SCLK)");
                Some(Arc::new(SpiStrip::new(spi, cfg.led_count)))
            }
            Err(e) => {
                notes.push(format!("LED strip: {}", spi_error(e)));
                None
            }
        }
    };

    let used: BTreeSet<u8> = reserved.keys().copied().collect();
    tracing::debug!(pins = ?used, "GPIO pins held by devices");
    let hardware = Hardware {
        backend: "rpi",
        gpio: Some(Arc::new(RpiGpio {
            gpio,
            reserved,
            pins: Mutex::new(HashMap::new()),
        })),
        i2c,
        leds,
        buzzer,
        dht22,
        bme680,
        system: Arc::new(LinuxSystem::new(false)),
    };
    Ok((hardware, notes))
}
