//! Plays buzzer patterns on command: the hub dashboard's buttons send
//! `short`, `triple`, `long`, `tone-on` or `tone-off` to this plugin.

wit_bindgen::generate!({
    path: "wit",
    world: "buzzer-plugin",
    generate_all,
});

use exports::harvester::plugin::lifecycle::Guest;
use harvester::plugin::buzzer::{self, Pattern};
use harvester::plugin::log::{self, Level};
use harvester::plugin::telemetry;
use harvester::plugin::types::HwError;
use std::sync::atomic::{AtomicU64, Ordering};

static PLAYED: AtomicU64 = AtomicU64::new(0);

struct Buzzer;

fn describe(e: HwError) -> String {
    match e {
        HwError::Denied(m) => format!("denied: {m}"),
        HwError::Unavailable(m) => format!("unavailable: {m}"),
        HwError::Failed(m) => format!("failed: {m}"),
    }
}

impl Guest for Buzzer {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        log::log(Level::Info, "buzzer ready: short, triple, long, tone-on, tone-off");
        Ok(())
    }

    fn tick() -> Result<(), String> {
        telemetry::emit("patterns_played", PLAYED.load(Ordering::Relaxed) as f64, "count");
        Ok(())
    }

    fn on_command(name: String, args: Vec<(String, String)>) -> Result<String, String> {
        // `beep pattern=triple` and plain `triple` mean the same thing.
        let name = match name.as_str() {
            "beep" => args
                .iter()
                .find(|(k, _)| k == "pattern")
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| "short".to_string()),
            _ => name,
        };
        let result = match name.as_str() {
            "short" => buzzer::beep(Pattern::Short),
            "triple" => buzzer::beep(Pattern::Triple),
            "long" => buzzer::beep(Pattern::Long),
            "tone-on" => buzzer::tone(true),
            "tone-off" => buzzer::tone(false),
            other => {
                return Err(format!(
                    "unknown command {other:?}; use short, triple, long, tone-on or tone-off"
                ));
            }
        };
        result.map_err(describe)?;
        PLAYED.fetch_add(1, Ordering::Relaxed);
        log::log(Level::Info, &format!("played {name}"));
        Ok(format!("played {name}"))
    }
}

export!(Buzzer);
