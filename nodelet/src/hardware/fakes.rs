//! Fakes of the boards' peripherals at the level the drivers see them
//! (embedded-hal 1.0 pins, delays and SPI buses), so the real driver code
//! of [`super::drivers`] runs on any machine:
//!
//! - [`RecordingPin`]: an output pin that records every level change with
//!   its time (the buzzer relay's pattern).
//! - [`CapturingSpi`]: an SPI bus that keeps what was written;
//!   [`decode_ws2812`] turns it back into LED colours.
//! - [`FakeDht22`]: a DHT22 on a pin and a delay sharing a virtual clock:
//!   it answers the host's start signal with the sensor's line timing
//!   (80 µs low, 80 µs high, 40 bits of 50 µs low and 26 or 70 µs high).

use super::Rgb;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An output pin that records `(when, high)` for every write.
#[derive(Clone, Default)]
pub struct RecordingPin {
    events: Arc<Mutex<Vec<(Instant, bool)>>>,
}

impl RecordingPin {
    pub fn levels(&self) -> Vec<bool> {
        lock(&self.events).iter().map(|e| e.1).collect()
    }

    /// How long the pin stayed low each time (an active-low relay: on).
    pub fn on_durations(&self) -> Vec<Duration> {
        let events = lock(&self.events).clone();
        let mut out = Vec::new();
        let mut low_since = None;
        for (at, high) in events {
            match (high, low_since) {
                (false, None) => low_since = Some(at),
                (true, Some(since)) => {
                    out.push(at.duration_since(since));
                    low_since = None;
                }
                _ => {}
            }
        }
        out
    }
}

impl embedded_hal::digital::ErrorType for RecordingPin {
    type Error = Infallible;
}

impl embedded_hal::digital::OutputPin for RecordingPin {
    fn set_low(&mut self) -> Result<(), Infallible> {
        lock(&self.events).push((Instant::now(), false));
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Infallible> {
        lock(&self.events).push((Instant::now(), true));
        Ok(())
    }
}

/// An SPI bus that keeps every write.
#[derive(Clone, Default)]
pub struct CapturingSpi {
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl CapturingSpi {
    pub fn writes(&self) -> Vec<Vec<u8>> {
        lock(&self.writes).clone()
    }
}

impl embedded_hal::spi::ErrorType for CapturingSpi {
    type Error = Infallible;
}

impl embedded_hal::spi::SpiBus<u8> for CapturingSpi {
    fn read(&mut self, words: &mut [u8]) -> Result<(), Infallible> {
        words.fill(0);
        Ok(())
    }

    fn write(&mut self, words: &[u8]) -> Result<(), Infallible> {
        lock(&self.writes).push(words.to_vec());
        Ok(())
    }

    fn transfer(&mut self, read: &mut [u8], write: &[u8]) -> Result<(), Infallible> {
        read.fill(0);
        self.write(write)
    }

    fn transfer_in_place(&mut self, words: &mut [u8]) -> Result<(), Infallible> {
        let w = words.to_vec();
        words.fill(0);
        self.write(&w)
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// The colours a WS2812B strip would show for this SPI transfer: each SPI
/// byte is two data bits (`1000` a zero, `1110` a one, high time first),
/// 24 bits per LED in G, R, B order, framed by the reset time (zeros).
pub fn decode_ws2812(transfer: &[u8]) -> Result<Vec<Rgb>, String> {
    let start = transfer.iter().position(|b| *b != 0).unwrap_or(transfer.len());
    let end = transfer.iter().rposition(|b| *b != 0).map_or(start, |i| i + 1);
    if start < 50 {
        return Err(format!(
            "only {start} reset bytes before the data: the strip would not latch"
        ));
    }
    let data = &transfer[start..end];
    if !data.len().is_multiple_of(12) {
        return Err(format!("{} data bytes is not a whole number of LEDs", data.len()));
    }
    let bit = |nibble: u8| match nibble {
        0b1000 => Ok(0u8),
        0b1110 => Ok(1u8),
        other => Err(format!("{other:04b} is not a WS2812 bit")),
    };
    let mut bytes = Vec::new();
    for chunk in data.chunks(4) {
        let mut v = 0u8;
        for b in chunk {
            v = (v << 1) | bit(b >> 4)?;
            v = (v << 1) | bit(b & 0x0f)?;
        }
        bytes.push(v);
    }
    Ok(bytes.chunks(3).map(|c| Rgb::new(c[1], c[0], c[2])).collect())
}

struct Line {
    now_ns: u64,
    host_low: bool,
    released_at: Option<u64>,
    frame: [u8; 5],
    temperature: f32,
    humidity: f32,
    corrupt: bool,
    connected: bool,
    requests: u32,
}

impl Line {
    fn encode(&mut self) {
        let h = (self.humidity * 10.0).round() as u16;
        let t = (self.temperature.abs() * 10.0).round() as u16;
        let mut th = (t >> 8) as u8;
        if self.temperature < 0.0 {
            th |= 0x80;
        }
        let d = [(h >> 8) as u8, h as u8, th, t as u8];
        let sum = d.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        self.frame = [d[0], d[1], d[2], d[3], if self.corrupt { sum ^ 1 } else { sum }];
    }

    /// The line level the host sees now.
    fn level(&self) -> bool {
        if self.host_low {
            return false;
        }
        let Some(at) = self.released_at else { return true };
        if !self.connected {
            return true;
        }
        let t = (self.now_ns - at) / 1000;
        // Sensor response: high until 30 µs, low 80 µs, high 80 µs.
        if t < 30 {
            return true;
        }
        if t < 110 {
            return false;
        }
        if t < 190 {
            return true;
        }
        let mut start = 190;
        for i in 0..40 {
            let one = self.frame[i / 8] & (0x80 >> (i % 8)) != 0;
            let high = if one { 70 } else { 26 };
            if t < start + 50 {
                return false;
            }
            if t < start + 50 + high {
                return true;
            }
            start += 50 + high;
        }
        // End of frame: 50 µs low, then released.
        t >= start + 50
    }
}

/// The DHT22's data pin, shared with its [`FakeDelay`].
#[derive(Clone)]
pub struct FakeDht22 {
    line: Arc<Mutex<Line>>,
}

/// A delay that moves the fake's clock instead of sleeping.
pub struct FakeDelay {
    line: Arc<Mutex<Line>>,
}

impl FakeDht22 {
    pub fn new(temperature: f32, humidity: f32) -> (FakeDht22, FakeDelay) {
        let line = Arc::new(Mutex::new(Line {
            now_ns: 0,
            host_low: false,
            released_at: None,
            frame: [0; 5],
            temperature,
            humidity,
            corrupt: false,
            connected: true,
            requests: 0,
        }));
        (FakeDht22 { line: line.clone() }, FakeDelay { line })
    }

    pub fn set_reading(&self, temperature: f32, humidity: f32) {
        let mut l = lock(&self.line);
        l.temperature = temperature;
        l.humidity = humidity;
    }

    pub fn corrupt_checksum(&self, corrupt: bool) {
        lock(&self.line).corrupt = corrupt;
    }

    /// The sensor stops answering (a loose wire).
    pub fn disconnect(&self) {
        lock(&self.line).connected = false;
    }

    /// How many start signals the host sent.
    pub fn requests(&self) -> u32 {
        lock(&self.line).requests
    }
}

impl embedded_hal::digital::ErrorType for FakeDht22 {
    type Error = Infallible;
}

impl embedded_hal::digital::OutputPin for FakeDht22 {
    fn set_low(&mut self) -> Result<(), Infallible> {
        let mut l = lock(&self.line);
        l.host_low = true;
        l.released_at = None;
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Infallible> {
        let mut l = lock(&self.line);
        if l.host_low {
            l.host_low = false;
            l.released_at = Some(l.now_ns);
            l.requests += 1;
            l.encode();
        }
        Ok(())
    }
}

impl embedded_hal::digital::InputPin for FakeDht22 {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(lock(&self.line).level())
    }

    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(!lock(&self.line).level())
    }
}

impl embedded_hal::delay::DelayNs for FakeDelay {
    fn delay_ns(&mut self, ns: u32) {
        lock(&self.line).now_ns += u64::from(ns);
    }
}
