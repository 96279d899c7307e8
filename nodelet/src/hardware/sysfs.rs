//! Host facts from Linux: SoC temperature, uptime, load.

use super::{DeviceError, DeviceResult, SystemInfo};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

const THERMAL_ZONE: &str = "/sys/class/thermal/thermal_zone0/temp";

/// Reads `/sys` and `/proc`. Machines without a thermal zone (most VMs) get a
/// plausible simulated CPU temperature when `simulate_missing` is set.
pub struct LinuxSystem {
    thermal: PathBuf,
    simulate_missing: bool,
    started: Instant,
    override_temp: Mutex<Option<f32>>,
}

impl LinuxSystem {
    pub fn new(simulate_missing: bool) -> LinuxSystem {
        LinuxSystem {
            thermal: PathBuf::from(THERMAL_ZONE),
            simulate_missing,
            started: Instant::now(),
            override_temp: Mutex::new(None),
        }
    }

    /// Pins the CPU temperature the node reports (simulation only).
    pub fn set_cpu_temperature(&self, celsius: Option<f32>) {
        *self.override_temp.lock().unwrap_or_else(|e| e.into_inner()) = celsius;
    }
}

impl SystemInfo for LinuxSystem {
    fn cpu_temperature(&self) -> DeviceResult<f32> {
        if let Some(t) = *self.override_temp.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(t);
        }
        match std::fs::read_to_string(&self.thermal) {
            Ok(s) => s
                .trim()
                .parse::<f32>()
                .map(|milli| milli / 1000.0)
                .map_err(|e| DeviceError::Failed(format!("{}: {e}", self.thermal.display()))),
            Err(_) if self.simulate_missing => {
                let t = self.started.elapsed().as_secs_f32();
                Ok(42.0 + 3.0 * (t / 60.0).sin())
            }
            Err(e) => Err(DeviceError::Unavailable(format!(
                "{}: {e} (no SoC thermal zone on this machine)",
                self.thermal.display()
            ))),
        }
    }

    fn uptime_seconds(&self) -> u64 {
        std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .map_or_else(|| self.started.elapsed().as_secs(), |s| s as u64)
    }

    fn load_average(&self) -> (f32, f32, f32) {
        let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let mut it = text.split_whitespace().map(|v| v.parse::<f32>().unwrap_or(0.0));
        (
            it.next().unwrap_or(0.0),
            it.next().unwrap_or(0.0),
            it.next().unwrap_or(0.0),
        )
    }
}
