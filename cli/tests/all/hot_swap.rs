//! New versions swap in while the old one keeps ticking.

use crate::support::*;
use harvester_nodelet::Applied;
use harvester_nodelet::events::{EventKind, Phase};
use std::time::{Duration, SystemTime};

const T: Duration = Duration::from_secs(60);
const TICK_MS: u64 = 200;

/// Tick times of `plugin`, whichever version emitted them.
fn ticks(node: &Node, plugin: &str) -> Vec<(SystemTime, String)> {
    node.events()
        .into_iter()
        .filter(|e| e.plugin == plugin)
        .filter_map(|e| match &e.kind {
            EventKind::Telemetry { name, value, .. } if name == "tick" => Some((e.at, format!("probe v{value}"))),
            EventKind::Telemetry { name, .. } if name == "ticks" => Some((e.at, "python".to_string())),
            _ => None,
        })
        .collect()
}

#[test]
fn hot_swap_loses_no_tick() {
    // Built before the clock starts, so the swap below compiles while ticking.
    component("hostile");
    let node = node();
    let spec_v1 = with_tick(
        spec(
            "swapper",
            "probe",
            "{gpio: {pins: [17]}, leds: {indices: [1]}}",
            &[("VERSION", "1")],
        ),
        TICK_MS,
    );
    assert_eq!(
        node.runtime.apply(spec_v1.clone()).unwrap(),
        Applied::Started { generation: 1 }
    );
    wait_until(T, "v1 ticks", || ticks(&node, "swapper").len() >= 5);

    // A config-only change: a new instance, swapped in between two ticks.
    let mut spec_v2 = spec_v1.clone();
    spec_v2.run.config.insert("VERSION".into(), "2".into());
    assert_eq!(
        node.runtime.apply(spec_v2).unwrap(),
        Applied::Swapped {
            generation: 2,
            replaced: 1
        }
    );
    wait_until(T, "v2 ticks", || {
        ticks(&node, "swapper").iter().filter(|t| t.1 == "probe v2").count() >= 5
    });

    // A different component (Python) with the same name and grants.
    let python = with_tick(
        spec("swapper", "hostile", "{gpio: {pins: [17]}, leds: {indices: [1]}}", &[]),
        TICK_MS,
    );
    assert_eq!(
        node.runtime.apply(python).unwrap(),
        Applied::Swapped {
            generation: 3,
            replaced: 2
        }
    );
    wait_until(T, "python ticks", || {
        ticks(&node, "swapper").iter().filter(|t| t.1 == "python").count() >= 5
    });

    let all = ticks(&node, "swapper");
    let kinds: Vec<&str> = all.iter().map(|t| t.1.as_str()).collect();
    let mut order = kinds.clone();
    order.dedup();
    assert_eq!(
        order,
        ["probe v1", "probe v2", "python"],
        "versions in order, never interleaved"
    );
    let worst = all
        .windows(2)
        .map(|w| w[1].0.duration_since(w[0].0).unwrap_or_default())
        .max()
        .unwrap();
    assert!(
        worst < Duration::from_millis(TICK_MS * 19 / 10),
        "a tick went missing: largest gap {worst:?} at a {TICK_MS} ms interval"
    );
    let status = node.runtime.plugin_status("swapper").unwrap();
    assert_eq!(status.missed_ticks, 0);
    assert_eq!(status.ticks as usize, all.len(), "every tick that ran was seen");
    assert_eq!(
        (status.generation, status.phase, status.restarts),
        (3, Phase::Running, 0)
    );
}

#[test]
fn a_version_that_fails_init_leaves_the_old_one_running() {
    let node = node();
    let grants = "{gpio: {pins: [17]}, leds: {indices: [1]}}";
    node.runtime
        .apply(with_tick(spec("steady", "probe", grants, &[]), 50))
        .unwrap();
    let err = node
        .runtime
        .apply(spec("steady", "hostile", grants, &[("FAIL_INIT", "1")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("plugin steady (hostile.wasm): init returned an error: refusing to start: FAIL_INIT=1"),
        "{err}"
    );
    let status = node.runtime.plugin_status("steady").unwrap();
    assert_eq!((status.generation, status.phase), (1, Phase::Running));
    assert!(status.last_error.unwrap().contains("FAIL_INIT"));
    let before = status.ticks;
    wait_until(T, "old version ticks on", || {
        node.runtime.plugin_status("steady").unwrap().ticks > before + 3
    });
    // Applying the same spec again changes nothing.
    assert_eq!(
        node.runtime
            .apply(with_tick(spec("steady", "probe", grants, &[]), 50))
            .unwrap(),
        Applied::Unchanged { generation: 1 }
    );
}
