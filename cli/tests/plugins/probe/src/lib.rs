//! Emits `tick` = its VERSION config on every tick, so tests can count ticks
//! across a hot swap; panics on the `panic` command; spins on `spin`.
//! Config switches make a bad version for rollout tests: `FAIL_INIT=yes`
//! fails `init`, `TRAP_AFTER=N` panics on every tick after the Nth,
//! `FAIL_TICKS=yes` returns an error from every tick. Budgets:
//! `BURN_MS=N` keeps the CPU busy for N ms in every tick; the `resources`
//! command holds WASI pollables until the host says no, `random` asks the
//! host for 1 GiB of random bytes, `telemetry` emits N distinct names
//! and units, `log` writes N lines.

wit_bindgen::generate!({
    path: "wit",
    world: "probe-plugin",
    generate_all,
});

use exports::harvester::plugin::lifecycle::Guest;
use harvester::plugin::{config, gpio, log, telemetry};
use std::sync::atomic::{AtomicU64, Ordering};

static VERSION: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);
/// 0: never.
static TRAP_AFTER: AtomicU64 = AtomicU64::new(0);
static FAIL_TICKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static BURN_MS: AtomicU64 = AtomicU64::new(0);

struct Probe;

impl Guest for Probe {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        let v = config::get("VERSION").unwrap_or_else(|| "1".into());
        VERSION.store(v.parse().map_err(|_| format!("VERSION={v} is not a number"))?, Ordering::Relaxed);
        if config::get("FAIL_INIT").is_some_and(|f| f == "yes") {
            return Err(format!("probe version {v} fails init (FAIL_INIT=yes)"));
        }
        FAIL_TICKS.store(config::get("FAIL_TICKS").is_some_and(|f| f == "yes"), Ordering::Relaxed);
        if let Some(ms) = config::get("BURN_MS") {
            BURN_MS.store(ms.parse().map_err(|_| format!("BURN_MS={ms} is not a number"))?, Ordering::Relaxed);
        }
        if let Some(n) = config::get("TRAP_AFTER") {
            TRAP_AFTER.store(n.parse().map_err(|_| format!("TRAP_AFTER={n} is not a number"))?, Ordering::Relaxed);
        }
        log::log(log::Level::Info, &format!("probe version {v} ready"));
        Ok(())
    }

    fn tick() -> Result<(), String> {
        let n = TICKS.fetch_add(1, Ordering::Relaxed) + 1;
        let trap_after = TRAP_AFTER.load(Ordering::Relaxed);
        if trap_after > 0 && n > trap_after {
            panic!("probe traps after {trap_after} ticks (TRAP_AFTER)");
        }
        let burn = BURN_MS.load(Ordering::Relaxed);
        if burn > 0 {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(burn);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        telemetry::emit("tick", VERSION.load(Ordering::Relaxed) as f64, "version");
        telemetry::emit("count", n as f64, "count");
        if FAIL_TICKS.load(Ordering::Relaxed) {
            return Err("this tick fails on purpose (FAIL_TICKS)".into());
        }
        Ok(())
    }

    fn on_command(name: String, args: Vec<(String, String)>) -> Result<String, String> {
        match name.as_str() {
            "panic" => panic!("probe panicked on request"),
            "spin" => loop {
                std::hint::spin_loop();
            },
            "gpio" => {
                gpio::write(17, true).map_err(|e| format!("{e:?}"))?;
                Ok("wrote GPIO17".into())
            }
            "ticks" => Ok(TICKS.load(Ordering::Relaxed).to_string()),
            // Host-call cost benchmarks: N calls of one cheap import.
            "config-calls" | "gpio-calls" => {
                let n: u32 = args
                    .iter()
                    .find(|(k, _)| k == "n")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                for _ in 0..n {
                    if name == "config-calls" {
                        std::hint::black_box(config::get("VERSION"));
                    } else {
                        std::hint::black_box(gpio::read(17).ok());
                    }
                }
                Ok(n.to_string())
            }
            "resources" => {
                let mut held = Vec::new();
                loop {
                    held.push(wasi::clocks::monotonic_clock::subscribe_duration(1_000_000_000));
                    if held.len() % 1000 == 0 {
                        log::log(log::Level::Info, &format!("holding {} pollables", held.len()));
                    }
                }
            }
            "random" => Ok(wasi::random::random::get_random_bytes(1 << 30).len().to_string()),
            "telemetry" | "log" => {
                let n: u32 = args
                    .iter()
                    .find(|(k, _)| k == "n")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                for i in 0..n {
                    if name == "telemetry" {
                        telemetry::emit(&format!("name_{i}"), 1.0, &format!("unit_{i}"));
                    } else {
                        log::log(log::Level::Info, &format!("line {i}"));
                    }
                }
                Ok(n.to_string())
            }
            other => Err(format!("unknown command {other}")),
        }
    }
}

export!(Probe);
