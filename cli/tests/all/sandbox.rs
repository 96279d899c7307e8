//! Deny by default, and a misbehaving plugin never takes the node down.

use crate::support::*;
use harvester_nodelet::events::{EventKind, LogSource, Phase, TrapKind};
use harvester_nodelet::runtime::{CommandError, LoadError};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

#[test]
fn a_plugin_importing_an_ungranted_interface_is_refused() {
    let node = node();
    // The probe imports gpio; this manifest grants nothing.
    let err = node.runtime.apply(spec("probe", "probe", "{}", &[])).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::Imports { .. }), "{text}");
    assert!(
        text.contains("imports `harvester:plugin/gpio@0.1.0`, which its manifest does not grant")
            && text.contains("add `gpio` to its grants"),
        "{text}"
    );
    let status = node.runtime.plugin_status("probe").unwrap();
    assert_eq!(status.phase, Phase::Failed);
    assert!(status.last_error.unwrap().contains("gpio"));

    // The Python plugin imports gpio and leds; granting only gpio names leds.
    let err = node
        .runtime
        .apply(spec("hostile", "hostile", "gpio: {pins: [17]}", &[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("harvester:plugin/leds@0.1.0") && err.contains("hostile.wasm"),
        "{err}"
    );
    assert!(node.runtime.plugin_names().is_empty(), "nothing refused may run");
}

#[test]
fn a_call_outside_the_granted_scope_is_denied_logged_and_counted() {
    let node = node();
    node.runtime
        .apply(spec(
            "hostile",
            "hostile",
            "{gpio: {pins: [17]}, leds: {indices: [1]}}",
            &[],
        ))
        .unwrap();

    let answer = node.runtime.command("hostile", "pin", vec![]).unwrap();
    assert!(
        answer.contains("Denied") && answer.contains("GPIO18 is not granted (granted pins: [17])"),
        "{answer}"
    );
    assert!(
        node.sim.gpio.writes().iter().all(|w| w.pin != 18),
        "GPIO18 must never be touched"
    );

    let answer = node.runtime.command("hostile", "led", vec![]).unwrap();
    assert!(answer.contains("LED 5 is not granted (granted: [1])"), "{answer}");
    assert_eq!(node.sim.leds.frame_count(), 0);

    // Inside the scope the same calls work.
    assert_eq!(
        node.runtime.command("hostile", "granted-pin", vec![]).unwrap(),
        "wrote GPIO17"
    );
    assert!(node.sim.gpio.writes().iter().any(|w| w.pin == 17 && w.high));

    let status = node.runtime.plugin_status("hostile").unwrap();
    assert_eq!(status.denied_calls, 2);
    let metrics = node.runtime.metrics().render();
    assert!(
        metrics.contains(r#"harvester_plugin_denied_calls_total{capability="gpio",plugin="hostile"} 1"#),
        "{metrics}"
    );
    let denied: Vec<_> = node
        .events()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::Denied { .. }))
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    node.runtime.remove("hostile");
}

#[test]
fn an_infinite_loop_is_interrupted_at_the_call_deadline() {
    let node = node();
    node.runtime
        .apply(with_limits(
            spec("looper", "hostile", "{gpio: {pins: [17]}, leds: {indices: [1]}}", &[]),
            64,
            200,
        ))
        .unwrap();
    let started = Instant::now();
    let err = node.runtime.command("looper", "loop", vec![]).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, CommandError::Plugin(_)));
    assert!(
        err.to_string()
            .contains("ran past its call timeout of 200 ms and was interrupted"),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(3),
        "{took:?}"
    );
    node.wait_event(T, "timeout trap", |e| {
        matches!(
            e.kind,
            EventKind::Trapped {
                kind: TrapKind::Timeout,
                ..
            }
        )
    });
    // The instance is replaced and works again.
    node.wait_event(T, "restart", |e| matches!(e.kind, EventKind::Restarted { .. }));
    assert_eq!(
        node.runtime.command("looper", "granted-pin", vec![]).unwrap(),
        "wrote GPIO17"
    );
    assert_eq!(node.runtime.plugin_status("looper").unwrap().restarts, 1);
}

#[test]
fn a_memory_bomb_is_stopped_at_the_cap() {
    let node = node();
    node.runtime
        .apply(with_limits(
            spec("bomb", "hostile", "{gpio: {pins: [17]}, leds: {indices: [1]}}", &[]),
            48,
            5000,
        ))
        .unwrap();
    let err = node.runtime.command("bomb", "bomb", vec![]).unwrap_err().to_string();
    assert!(err.contains("memory limit of 48Mi"), "{err}");
    let trap = node.wait_event(T, "memory trap", |e| {
        matches!(
            e.kind,
            EventKind::Trapped {
                kind: TrapKind::MemoryLimit,
                ..
            }
        )
    });
    assert_eq!(trap.plugin, "bomb");
    node.wait_event(T, "restart", |e| matches!(e.kind, EventKind::Restarted { .. }));
    let status = node.runtime.plugin_status("bomb").unwrap();
    assert!(status.memory_bytes <= 48 << 20, "{}", status.memory_bytes);
}

#[test]
fn traps_and_exceptions_leave_the_node_and_other_plugins_running() {
    let node = node();
    node.runtime
        .apply(with_tick(spec("probe", "probe", "gpio: {pins: [17]}", &[]), 50))
        .unwrap();
    node.runtime
        .apply(spec(
            "raiser",
            "hostile",
            "{gpio: {pins: [18]}, leds: {indices: [1]}}",
            &[("MODE", "raise")],
        ))
        .unwrap();

    // The raising plugin traps on every tick, is restarted with backoff and
    // ends up reported as crash-looping, with its traceback in the log.
    node.wait_event(T, "crash loop", |e| {
        e.plugin == "raiser" && matches!(e.kind, EventKind::CrashLoop { .. })
    });
    assert_eq!(
        node.runtime.plugin_status("raiser").unwrap().phase,
        Phase::CrashLoopBackOff
    );
    let traceback = node.events().into_iter().any(|e| {
        e.plugin == "raiser"
            && matches!(&e.kind, EventKind::Log { source: LogSource::Stderr, message, .. } if message.contains("ValueError: hostile plugin raised on purpose"))
    });
    assert!(traceback, "the Python traceback reaches the log");

    // A Rust panic is a trap too.
    let err = node.runtime.command("probe", "panic", vec![]).unwrap_err().to_string();
    assert!(err.contains("trapped"), "{err}");
    node.wait_event(T, "probe restart", |e| {
        e.plugin == "probe" && matches!(e.kind, EventKind::Restarted { .. })
    });

    // Meanwhile the probe keeps ticking.
    let before = node.runtime.plugin_status("probe").unwrap().ticks;
    wait_until(T, "probe ticks", || {
        node.runtime.plugin_status("probe").unwrap().ticks >= before + 5
    });
    assert_eq!(node.runtime.plugin_status("probe").unwrap().phase, Phase::Running);
}

#[test]
fn an_error_returned_by_tick_is_reported_without_a_restart() {
    let node = node();
    node.runtime
        .apply(spec(
            "grumpy",
            "hostile",
            "{gpio: {pins: [17]}, leds: {indices: [1]}}",
            &[("MODE", "err")],
        ))
        .unwrap();
    wait_until(T, "three failed ticks", || {
        node.events()
            .iter()
            .filter(|e| matches!(e.kind, EventKind::TickFailed { .. }))
            .count()
            >= 3
    });
    let status = node.runtime.plugin_status("grumpy").unwrap();
    assert_eq!((status.phase, status.restarts), (Phase::Running, 0));
    assert_eq!(
        status.last_error.as_deref(),
        Some("hostile plugin returned an error on purpose")
    );
}

fn sensor_series(node: &Node, plugin: &str) -> usize {
    let text = node.runtime.metrics().render();
    let prefix = format!("harvester_sensor_value{{plugin=\"{plugin}\"");
    text.lines().filter(|l| l.starts_with(&prefix)).count()
}

#[test]
fn a_plugin_is_held_to_its_cpu_share_tables_buffers_series_lines_and_commands_by_name() {
    let node = node();
    // CPU: 30 ms of work every 50 ms is 600m; the budget is 100m.
    let mut hog = with_tick(spec("hog", "probe", "gpio: {pins: [17]}", &[("BURN_MS", "30")]), 50);
    hog.run.limits.cpu = harvester_api::CpuShare(100);
    node.runtime.apply(hog).unwrap();
    let neighbour = with_tick(spec("neighbour", "probe", "gpio: {pins: [18]}", &[]), 100);
    node.runtime.apply(neighbour).unwrap();
    wait_until(T, "the hog throttled", || {
        node.runtime.plugin_status("hog").unwrap().throttled_ticks >= 10
    });
    let hog = node.runtime.plugin_status("hog").unwrap();
    let why = hog.cpu_limited().expect("reported as over its CPU budget");
    assert!(why.contains("CPU budget of 100m"), "{why}");
    let metrics = node.runtime.metrics().render();
    assert!(
        !metrics.contains(r#"harvester_plugin_throttled_total{plugin="hog"} 0"#)
            && metrics.contains(r#"harvester_plugin_throttled_total{plugin="hog"}"#),
        "{metrics}"
    );
    let n = node.runtime.plugin_status("neighbour").unwrap();
    assert!(n.ticks >= 10, "{n:?}");
    assert_eq!(
        (n.missed_ticks, n.throttled_ticks),
        (0, 0),
        "the neighbour keeps its rate"
    );
    assert!(n.cpu_limited().is_none());

    // Resources and host buffers: stopped, by name.
    node.runtime
        .apply(spec("greedy", "probe", "gpio: {pins: [27]}", &[]))
        .unwrap();
    let err = node
        .runtime
        .command("greedy", "resources", vec![])
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds 4096 WASI resources"), "{err}");
    node.wait_event(T, "restart", |e| {
        e.plugin == "greedy" && matches!(e.kind, EventKind::Restarted { .. })
    });
    let err = node
        .runtime
        .command("greedy", "random", vec![])
        .unwrap_err()
        .to_string();
    assert!(err.contains("asked the host for a buffer over its limit"), "{err}");
    let metrics = node.runtime.metrics().render();
    assert!(
        metrics.contains(r#"harvester_plugin_traps_total{kind="resource-limit",plugin="greedy"} 2"#),
        "{metrics}"
    );
    node.wait_event(T, "restart", |e| {
        e.plugin == "greedy" && matches!(e.kind, EventKind::Restarted { attempt: 2 })
    });

    // A log flood: cut, said once, counted; before anything else fills the budget.
    let events_before = node.events().len();
    node.runtime
        .command("greedy", "log", vec![("n".into(), "10000".into())])
        .unwrap();
    let metrics = node.runtime.metrics().render();
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"harvester_plugin_log_lines_dropped_total{plugin="greedy"} "#))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(dropped >= 9000, "{dropped}");
    let said: Vec<_> = node.events()[events_before..]
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Log { source: LogSource::Node, message, .. } if message.contains("further lines are dropped")))
        .cloned()
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");

    // Series: 10,000 names and units leave at most 64 (the probe's own two
    // among them), and they go with the plugin. (The warnings about the
    // others are lines over the budget too.)
    let answer = node
        .runtime
        .command("greedy", "telemetry", vec![("n".into(), "10000".into())])
        .unwrap();
    assert_eq!(answer, "10000");
    assert_eq!(sensor_series(&node, "greedy"), 64);

    // Commands: a bounded queue, with a clear "busy".
    let busy: Vec<String> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..12)
            .map(|_| s.spawn(|| node.runtime.command("greedy", "spin", vec![])))
            .collect();
        calls
            .into_iter()
            .filter_map(|c| match c.join().unwrap() {
                Err(e @ CommandError::Busy(_)) => Some(e.to_string()),
                _ => None,
            })
            .collect()
    });
    assert!(busy.len() >= 4, "{busy:?}");
    assert!(
        busy[0].contains("is busy: 8 commands already wait for it"),
        "{}",
        busy[0]
    );

    assert!(node.runtime.remove("greedy"));
    assert_eq!(sensor_series(&node, "greedy"), 0, "a removed plugin's series go");
}
