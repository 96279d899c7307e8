//! `telemetry`: named readings, each a Prometheus series of the node and a
//! reading the hub receives. Series (name and unit) are capped per plugin,
//! so a plugin cannot grow the node's metrics without bound, and go with it.

use super::HostState;
use crate::bindings::telemetry::Host;
use crate::events::{EventKind, LogLevel, LogSource};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Distinct series (name and unit) per plugin: each is a metric series.
pub const MAX_SERIES: usize = 64;

host_capability!(Telemetry, Telemetry, telemetry);

/// The series a plugin emitted, over all its versions, each with its
/// gauge: looking a series up by labels on every call would cost more than
/// the rest of the call. Removing the plugin removes them all.
#[derive(Default)]
pub(crate) struct Series(Mutex<BTreeMap<(String, String), prometheus::Gauge>>);

impl Series {
    /// Drops every series of `plugin` from the node's metrics.
    pub(crate) fn forget(&self, plugin: &str, metrics: &crate::metrics::Metrics) {
        let all = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for (name, unit) in all.keys() {
            let _ = metrics.sensor.remove_label_values(&[plugin, name, unit]);
        }
    }
}

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
    /// Sets the reading's gauge; refuses a series past the cap.
    fn record(&self, name: &str, value: f64, unit: &str) -> Result<(), String> {
        let metrics = &self.ctx.report.metrics;
        let mut series = self.ctx.shared.telemetry.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (name.to_string(), unit.to_string());
        let gauge = match series.get(&key) {
            Some(g) => g,
            None if series.len() >= MAX_SERIES => {
                return Err(format!(
                    "telemetry {name:?} ({unit:?}) ignored: a plugin may emit at most {MAX_SERIES} distinct names and units"
                ));
            }
            None => series
                .entry(key)
                .or_insert_with(|| metrics.sensor.with_label_values(&[&self.ctx.plugin, name, unit])),
        };
        if metrics.enabled() {
            gauge.set(value);
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
