use crate::bindings::telemetry::Host;
use crate::events::{EventKind, LogLevel, LogSource};
use crate::sandbox::state::HostState;

/// Distinct reading names per plugin: each becomes a metric series.
pub const MAX_NAMES: usize = 64;

fn valid(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Host for HostState {
    fn emit(&mut self, name: String, value: f64, unit: String) {
        if !valid(&name, 64) || !valid(&unit, 32) || !value.is_finite() {
            self.ctx.log(
                LogLevel::Warn,
                LogSource::Node,
                format!(
                    "telemetry {name:?} ({unit:?}) = {value} ignored: names and units are [a-z0-9_], values finite"
                ),
            );
            return;
        }
        {
            let metrics = &self.ctx.report.metrics;
            let mut names = self.ctx.telemetry_names.lock().unwrap_or_else(|e| e.into_inner());
            if !names.contains_key(&name) && names.len() >= MAX_NAMES {
                drop(names);
                self.ctx.log(
                    LogLevel::Warn,
                    LogSource::Node,
                    format!("telemetry {name:?} ignored: a plugin may emit at most {MAX_NAMES} distinct names"),
                );
                return;
            }
            let (known_unit, gauge) = names.entry(name.clone()).or_insert_with(|| {
                let g = metrics.sensor.with_label_values(&[&self.ctx.plugin, &name, &unit]);
                (unit.clone(), g)
            });
            if metrics.enabled() {
                if *known_unit == unit {
                    gauge.set(value);
                } else {
                    // Same name, another unit: another series, looked up.
                    metrics
                        .sensor
                        .with_label_values(&[&self.ctx.plugin, &name, &unit])
                        .set(value);
                }
            }
        }
        self.ctx
            .report
            .emit(&self.ctx.plugin, EventKind::Telemetry { name, value, unit });
    }
}
