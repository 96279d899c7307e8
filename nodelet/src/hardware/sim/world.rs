//! The simulated room all simulated sensors read from, so the DHT22 and the
//! BME680 of one node agree. Values drift slowly like a real room; tests and
//! demos can pin any of them.

use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    pub temperature_c: f32,
    pub humidity_pct: f32,
    pub pressure_hpa: f32,
    pub gas_ohms: f32,
}

#[derive(Debug, Default, Clone, Copy)]
struct Pinned {
    temperature_c: Option<f32>,
    humidity_pct: Option<f32>,
    pressure_hpa: Option<f32>,
    gas_ohms: Option<f32>,
}

pub struct SimWorld {
    started: Instant,
    /// Spreads the phases of different nodes' rooms apart.
    seed: f32,
    pinned: Mutex<Pinned>,
}

impl SimWorld {
    pub fn new(seed: u64) -> SimWorld {
        SimWorld {
            started: Instant::now(),
            seed: (seed % 1000) as f32,
            pinned: Mutex::new(Pinned::default()),
        }
    }

    pub fn room(&self) -> Room {
        let t = self.started.elapsed().as_secs_f32() + self.seed * 37.0;
        let wave = |period: f32, phase: f32| (std::f32::consts::TAU * t / period + phase).sin();
        let pinned = *self.pinned.lock().unwrap_or_else(|e| e.into_inner());
        // A warm room, 21.4-24.6 C: LED 1 shows green or orange, and the
        // hot-reload walk-through's HIGH_TEMP = 20.0 always raises the alarm.
        Room {
            temperature_c: pinned
                .temperature_c
                .unwrap_or(23.0 + 1.5 * wave(600.0, 0.0) + 0.15 * wave(23.0, 1.0)),
            humidity_pct: pinned
                .humidity_pct
                .unwrap_or(45.0 + 6.0 * wave(900.0, 2.0) + 0.5 * wave(31.0, 0.5)),
            pressure_hpa: pinned.pressure_hpa.unwrap_or(1013.0 + 1.5 * wave(3600.0, 1.0)),
            gas_ohms: pinned
                .gas_ohms
                .unwrap_or(120_000.0 + 15_000.0 * wave(1200.0, 3.0) + 2_000.0 * wave(17.0, 0.0)),
        }
    }

    fn pin(&self, f: impl FnOnce(&mut Pinned)) {
        f(&mut self.pinned.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Pins the room temperature (`None` lets it drift again).
    pub fn set_temperature(&self, celsius: Option<f32>) {
        self.pin(|p| p.temperature_c = celsius);
    }

    pub fn set_humidity(&self, percent: Option<f32>) {
        self.pin(|p| p.humidity_pct = percent);
    }

    pub fn set_pressure(&self, hpa: Option<f32>) {
        self.pin(|p| p.pressure_hpa = hpa);
    }

    pub fn set_gas_resistance(&self, ohms: Option<f32>) {
        self.pin(|p| p.gas_ohms = ohms);
    }
}
