//! `telemetry`: named readings, each a Prometheus series of the node and a
//! reading the hub receives. Names are capped per plugin, so a plugin cannot
//! grow the node's metrics without bound.

use super::HostState;
use crate::bindings::telemetry::Host;
use crate::events::{EventKind, LogLevel, LogSource};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Distinct reading names per plugin: each becomes a metric series.
pub const MAX_NAMES: usize = 64;

host_capability!(Telemetry, Telemetry, telemetry);

/// The names a plugin version emitted, each with its first unit and its
/// gauge: looking a series up by labels on every call would cost more than
/// the rest of the call.
#[derive(Default)]
pub(crate) struct Series(Mutex<BTreeMap<String, (String, prometheus::Gauge)>>);

fn valid(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Why a reading is refused, if it is.
fn check(name: &str, value: f64, unit: &str) -> Result<(), String> {
    if valid(name, 64) && valid(unit, 32) && value.is_finite() {
        return Ok(());
    }
    Err(format!(
        "telemetry {name:?} ({unit:?}) = {value} ignored: names and units are [a-z0-9_], values finite"
    ))
}

impl HostState {
    /// Sets the reading's gauge; refuses a name past the cap.
    fn record(&self, name: &str, value: f64, unit: &str) -> Result<(), String> {
        let metrics = &self.ctx.report.metrics;
        let mut names = self.ctx.telemetry.0.lock().unwrap_or_else(|e| e.into_inner());
        if !names.contains_key(name) && names.len() >= MAX_NAMES {
            return Err(format!(
                "telemetry {name:?} ignored: a plugin may emit at most {MAX_NAMES} distinct names"
            ));
        }
        let (known_unit, gauge) = names.entry(name.to_string()).or_insert_with(|| {
            let g = metrics.sensor.with_label_values(&[&self.ctx.plugin, name, unit]);
            (unit.to_string(), g)
        });
        if metrics.enabled() {
            if known_unit == unit {
                gauge.set(value);
            } else {
                // Same name, another unit: another series, looked up.
                metrics
                    .sensor
                    .with_label_values(&[&self.ctx.plugin, name, unit])
                    .set(value);
            }
        }
        Ok(())
    }
}

impl Host for HostState {
    fn emit(&mut self, name: String, value: f64, unit: String) {
        if let Err(e) = check(&name, value, &unit).and_then(|()| self.record(&name, value, &unit)) {
            self.ctx.log(LogLevel::Warn, LogSource::Node, e);
            return;
        }
        self.ctx
            .report
            .emit(&self.ctx.plugin, EventKind::Telemetry { name, value, unit });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_need_simple_names_and_finite_values() {
        assert_eq!(check("temperature", 21.5, "celsius"), Ok(()));
        assert!(check("Temperature", 1.0, "c").is_err());
        assert!(check("t", f64::NAN, "c").is_err());
        assert!(check("t", 1.0, "").is_err());
        assert!(check(&"x".repeat(65), 1.0, "c").is_err());
    }
}
