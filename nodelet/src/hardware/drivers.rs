//! Device drivers over the embedded-hal 1.0 traits, so the same code drives
//! rppal's pins and SPI bus on a Raspberry Pi and the timing- and
//! register-level fakes of [`super::fakes`] in tests:
//!
//! - [`RelayBuzzer`]: a buzzer behind an active-low relay on one output pin.
//! - [`SpiStrip`]: a WS2812B strip through `ws2812-spi`'s hosted driver (one
//!   SPI transfer per frame, which keeps the timing on Linux).
//! - [`Dht22Sensor`]: a DHT22 through `dht-sensor`, at most one read per
//!   2 s (the sensor's own limit), the last good reading served in between.

use super::{BuzzerPattern, ClimateReading, DeviceError, DeviceResult, Dht22, LedStrip, Rgb};
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{InputPin, OutputPin};
use embedded_hal::spi::SpiBus;
use smart_leds::{RGB8, SmartLedsWrite};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum BuzzerJob {
    Pattern(BuzzerPattern),
    Tone(bool),
}

/// A buzzer switched by a relay whose input is active LOW: pin high is
/// silent. Silent from construction, after every pattern, and when dropped.
/// Patterns play on the driver's own thread, so a plugin's call returns at
/// once; a tone change or a new pattern cuts the one playing.
pub struct RelayBuzzer {
    jobs: Mutex<Option<mpsc::Sender<BuzzerJob>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RelayBuzzer {
    pub fn new<P: OutputPin + Send + 'static>(mut pin: P) -> DeviceResult<RelayBuzzer> {
        pin.set_high()
            .map_err(|e| DeviceError::Failed(format!("cannot silence the buzzer relay: {e:?}")))?;
        let (tx, rx) = mpsc::channel::<BuzzerJob>();
        let thread = std::thread::Builder::new()
            .name("buzzer".into())
            .spawn(move || {
                let mut pending: Option<BuzzerJob> = None;
                loop {
                    let job = match pending.take() {
                        Some(j) => j,
                        None => match rx.recv() {
                            Ok(j) => j,
                            Err(_) => break,
                        },
                    };
                    match job {
                        BuzzerJob::Tone(on) => {
                            let _ = if on { pin.set_low() } else { pin.set_high() };
                        }
                        BuzzerJob::Pattern(p) => {
                            for (i, ms) in p.timings_ms().iter().enumerate() {
                                let _ = if i % 2 == 0 { pin.set_low() } else { pin.set_high() };
                                // A new job interrupts the pattern.
                                if let Ok(next) = rx.recv_timeout(Duration::from_millis(*ms)) {
                                    pending = Some(next);
                                    break;
                                }
                            }
                            let _ = pin.set_high();
                        }
                    }
                }
                // The node is going away: the relay must not stay on.
                let _ = pin.set_high();
            })
            .map_err(|e| DeviceError::Failed(format!("cannot start the buzzer thread: {e}")))?;
        Ok(RelayBuzzer {
            jobs: Mutex::new(Some(tx)),
            thread: Some(thread),
        })
    }

    fn send(&self, job: BuzzerJob) -> DeviceResult<()> {
        lock(&self.jobs)
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(|| DeviceError::Failed("the buzzer thread has stopped".into()))
    }
}

impl Drop for RelayBuzzer {
    /// Waits until the relay is released, so a node that exits leaves it silent.
    fn drop(&mut self) {
        lock(&self.jobs).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl super::Buzzer for RelayBuzzer {
    fn play(&self, pattern: BuzzerPattern) -> DeviceResult<()> {
        self.send(BuzzerJob::Pattern(pattern))
    }

    fn tone(&self, on: bool) -> DeviceResult<()> {
        self.send(BuzzerJob::Tone(on))
    }
}

/// A WS2812B strip on an SPI bus (MOSI to the strip's DIN).
pub struct SpiStrip<S> {
    driver: Mutex<ws2812_spi::hosted::Ws2812<S>>,
    len: usize,
}

impl<S: SpiBus<u8>> SpiStrip<S> {
    pub fn new(spi: S, len: usize) -> SpiStrip<S> {
        SpiStrip {
            driver: Mutex::new(ws2812_spi::hosted::Ws2812::new(spi)),
            len,
        }
    }
}

impl<S: SpiBus<u8> + Send> LedStrip for SpiStrip<S> {
    fn len(&self) -> usize {
        self.len
    }

    fn write_frame(&self, frame: &[Rgb]) -> DeviceResult<()> {
        let colours = frame.iter().take(self.len).map(|c| RGB8::new(c.r, c.g, c.b));
        lock(&self.driver)
            .write(colours)
            .map_err(|e| DeviceError::Failed(format!("SPI write to the LED strip failed: {e:?}")))
    }
}

/// The sensor allows one read every 2 s.
pub const DHT22_INTERVAL: Duration = Duration::from_secs(2);
/// A reading this old is still served when a read fails (bit-banged reads
/// from userspace miss now and then).
const DHT22_STALE_OK: Duration = Duration::from_secs(10);

struct DhtState<P, D> {
    pin: P,
    delay: D,
    last_try: Option<Instant>,
    last_good: Option<(Instant, ClimateReading)>,
    failures_in_a_row: u32,
    last_error: String,
}

/// A DHT22 on one open-drain pin.
pub struct Dht22Sensor<P, D> {
    gpio: u8,
    interval: Duration,
    state: Mutex<DhtState<P, D>>,
}

impl<P, D> Dht22Sensor<P, D>
where
    P: InputPin + OutputPin,
    D: DelayNs,
{
    /// `gpio`: the BCM number, for messages and grants. `interval`: the
    /// minimum time between two reads of the sensor.
    pub fn new(mut pin: P, delay: D, gpio: u8, interval: Duration) -> Dht22Sensor<P, D> {
        // Released high: pulled low at start, the sensor misreads the first request.
        let _ = pin.set_high();
        Dht22Sensor {
            gpio,
            interval,
            state: Mutex::new(DhtState {
                pin,
                delay,
                last_try: None,
                last_good: None,
                failures_in_a_row: 0,
                last_error: String::new(),
            }),
        }
    }
}

impl<P, D> Dht22 for Dht22Sensor<P, D>
where
    P: InputPin + OutputPin + Send,
    D: DelayNs + Send,
{
    fn read(&self, pin: u8) -> DeviceResult<ClimateReading> {
        if pin != self.gpio {
            return Err(DeviceError::Unavailable(format!(
                "this node's DHT22 is on GPIO{}, not GPIO{pin}: fix the grant (dht22: {{pin: {}}})",
                self.gpio, self.gpio
            )));
        }
        let mut s = lock(&self.state);
        let now = Instant::now();
        let too_soon = s.last_try.is_some_and(|t| now.duration_since(t) < self.interval);
        if !too_soon {
            s.last_try = Some(now);
            let DhtState { pin, delay, .. } = &mut *s;
            match dht_sensor::dht22::blocking::read(delay, pin) {
                Ok(r) => {
                    s.failures_in_a_row = 0;
                    let reading = ClimateReading {
                        temperature_c: r.temperature,
                        humidity_pct: r.relative_humidity,
                    };
                    s.last_good = Some((now, reading));
                    return Ok(reading);
                }
                Err(e) => {
                    s.failures_in_a_row += 1;
                    s.last_error = match e {
                        dht_sensor::DhtError::Timeout => "no answer (timeout)".to_string(),
                        dht_sensor::DhtError::ChecksumMismatch => "a garbled answer (checksum)".to_string(),
                        dht_sensor::DhtError::PinError(e) => format!("pin error {e:?}"),
                    };
                }
            }
        }
        match s.last_good {
            Some((at, r)) if now.duration_since(at) <= DHT22_STALE_OK => Ok(r),
            _ if s.failures_in_a_row == 0 => Err(DeviceError::Unavailable(format!(
                "the DHT22 on GPIO{} allows one read every {:?}; the first is not in yet",
                self.gpio, self.interval
            ))),
            _ => Err(DeviceError::Failed(format!(
                "the DHT22 on GPIO{} gave {} in {} tries in a row: check its wiring (DATA to GPIO{}, 10 kΩ pull-up to 3V3, power), it is retried every {:?}",
                self.gpio, s.last_error, s.failures_in_a_row, self.gpio, self.interval
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fakes::{CapturingSpi, FakeDht22, RecordingPin, decode_ws2812};
    use super::*;
    use crate::hardware::Buzzer;

    #[test]
    fn the_relay_starts_silent_plays_patterns_and_ends_silent() {
        let pin = RecordingPin::default();
        let buzzer = RelayBuzzer::new(pin.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(pin.levels(), vec![true], "silent (high) from the start");
        buzzer.play(BuzzerPattern::Triple).unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let on = pin.on_durations();
        assert_eq!(on.len(), 3, "three beeps: {:?}", pin.levels());
        for d in &on {
            assert!(
                *d >= Duration::from_millis(90) && *d < Duration::from_millis(300),
                "{on:?}"
            );
        }
        assert_eq!(pin.levels().last(), Some(&true), "silent after the pattern");
        buzzer.tone(true).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(pin.levels().last(), Some(&false));
        drop(buzzer);
        assert_eq!(pin.levels().last(), Some(&true), "silent when the node lets go");
    }

    #[test]
    fn a_new_pattern_cuts_the_one_playing() {
        let pin = RecordingPin::default();
        let buzzer = RelayBuzzer::new(pin.clone()).unwrap();
        buzzer.play(BuzzerPattern::Long).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        buzzer.play(BuzzerPattern::Short).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let on = pin.on_durations();
        assert_eq!(on.len(), 2, "{:?}", pin.levels());
        assert!(on[0] < Duration::from_millis(500), "the long tone was cut: {on:?}");
        assert_eq!(pin.levels().last(), Some(&true));
    }

    #[test]
    fn frames_reach_the_strip_as_ws2812_bits() {
        let spi = CapturingSpi::default();
        let strip = SpiStrip::new(spi.clone(), 11);
        let mut frame = vec![Rgb::OFF; 11];
        frame[0] = Rgb::new(0, 255, 0);
        frame[1] = Rgb::new(255, 120, 0);
        frame[2] = Rgb::new(128, 0, 255);
        frame[10] = Rgb::new(1, 2, 3);
        strip.write_frame(&frame).unwrap();
        let writes = spi.writes();
        assert_eq!(writes.len(), 1, "one SPI transfer per frame");
        assert_eq!(decode_ws2812(&writes[0]).unwrap(), frame);
    }

    #[test]
    fn the_dht22_is_read_through_its_line_timing() {
        let (pin, delay) = FakeDht22::new(23.4, 45.6);
        let sensor = Dht22Sensor::new(pin.clone(), delay, 4, Duration::ZERO);
        let r = sensor.read(4).unwrap();
        assert!(
            (r.temperature_c - 23.4).abs() < 0.05 && (r.humidity_pct - 45.6).abs() < 0.05,
            "{r:?}"
        );
        pin.set_reading(-7.3, 88.0);
        let r = sensor.read(4).unwrap();
        assert!((r.temperature_c + 7.3).abs() < 0.05, "below zero: {r:?}");
        let err = sensor.read(17).unwrap_err().to_string();
        assert!(err.contains("GPIO4, not GPIO17"), "{err}");
    }

    #[test]
    fn the_dht22_is_asked_at_most_every_2_s_and_bad_answers_are_named() {
        let (pin, delay) = FakeDht22::new(21.0, 40.0);
        let sensor = Dht22Sensor::new(pin.clone(), delay, 4, DHT22_INTERVAL);
        sensor.read(4).unwrap();
        let requests = pin.requests();
        pin.set_reading(30.0, 40.0);
        let again = sensor.read(4).unwrap();
        assert_eq!(pin.requests(), requests, "no second request within 2 s");
        assert!((again.temperature_c - 21.0).abs() < 0.05, "the last reading is served");

        let (pin, delay) = FakeDht22::new(21.0, 40.0);
        pin.corrupt_checksum(true);
        let sensor = Dht22Sensor::new(pin.clone(), delay, 4, Duration::ZERO);
        let err = sensor.read(4).unwrap_err().to_string();
        assert!(err.contains("garbled") && err.contains("GPIO4"), "{err}");
        pin.disconnect();
        let err = sensor.read(4).unwrap_err().to_string();
        assert!(err.contains("timeout") && err.contains("2 tries"), "{err}");
    }
}
