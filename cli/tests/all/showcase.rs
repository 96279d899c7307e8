//! The showcase plugins drive the LED status rules on the simulated strip.

use crate::support::*;
use harvester_nodelet::events::EventKind;
use harvester_nodelet::hardware::BuzzerPattern;
use harvester_nodelet::hardware::sim::{BuzzerAction, SimProfile};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const RED: &str = "#ff0000";
const GREEN: &str = "#00ff00";
const BLUE: &str = "#0000ff";
const ORANGE: &str = "#ff7800";
const YELLOW: &str = "#ffc800";
const PURPLE: &str = "#8000ff";

fn wait_led(node: &Node, index: usize, colour: &str, why: &str) {
    wait_until(T, &format!("LED {index} {colour} ({why})"), || {
        node.led(index) == colour
    });
}

#[test]
fn dht22_turns_led1_red_above_high_temp_and_green_when_it_is_lowered() {
    let node = node();
    let grants = "{dht22: {pin: 4}, leds: {indices: [1]}}";
    let base = with_tick(spec("dht22", "dht22", grants, &[]), 50);
    node.sim.world.set_temperature(Some(31.0));
    node.runtime.apply(base.clone()).unwrap();
    wait_led(&node, 1, RED, "31 C is above the default HIGH_TEMP of 30");
    node.sim.world.set_temperature(Some(22.0));
    wait_led(&node, 1, GREEN, "22 C");
    node.sim.world.set_temperature(Some(12.0));
    wait_led(&node, 1, BLUE, "12 C");
    node.sim.world.set_temperature(Some(27.0));
    wait_led(&node, 1, ORANGE, "27 C");

    // Lower HIGH_TEMP through config alone: swapped in, no rebuild.
    let mut lowered = base.clone();
    lowered.run.config.insert("HIGH_TEMP".into(), "20.0".into());
    node.runtime.apply(lowered).unwrap();
    node.sim.world.set_temperature(Some(22.0));
    wait_led(&node, 1, RED, "22 C is above a HIGH_TEMP of 20");
    node.sim.world.set_temperature(Some(18.0));
    wait_led(&node, 1, GREEN, "18 C is under it again");

    let temps = node.telemetry("dht22", "temperature");
    assert!(temps.iter().any(|t| (t.1 - 22.0).abs() < 0.01));
    assert!(
        node.runtime
            .metrics()
            .render()
            .contains(r#"harvester_sensor_value{plugin="dht22",sensor="high_temp",unit="celsius"} 20"#)
    );
}

#[test]
fn bme680_shows_purple_while_calibrating_then_the_iaq_colour() {
    let node = node_with(
        &shared_data_dir(),
        SimProfile {
            bme680_burn_in: 5,
            ..SimProfile::default()
        },
    );
    node.sim.world.set_gas_resistance(Some(150_000.0));
    node.sim.world.set_humidity(Some(40.0));
    node.runtime
        .apply(with_tick(
            spec("bme680", "bme680", "{bme680: {}, leds: {indices: [2]}}", &[]),
            50,
        ))
        .unwrap();
    wait_led(&node, 2, PURPLE, "burn-in");
    wait_led(&node, 2, GREEN, "clean air once calibrated");
    node.sim.world.set_gas_resistance(Some(20_000.0));
    wait_led(&node, 2, RED, "polluted air");
    let iaq = node.telemetry("bme680", "iaq");
    assert!(iaq.last().unwrap().1 > 200.0, "{iaq:?}");
}

#[test]
fn system_plugin_colours_led0_by_cpu_temperature() {
    let node = node();
    node.sim.system.set_cpu_temperature(Some(45.0));
    node.runtime
        .apply(with_tick(
            spec("system", "system", "{system: {}, leds: {indices: [0]}}", &[]),
            50,
        ))
        .unwrap();
    wait_led(&node, 0, GREEN, "45 C");
    node.sim.system.set_cpu_temperature(Some(60.0));
    wait_led(&node, 0, YELLOW, "60 C");
    node.sim.system.set_cpu_temperature(Some(75.0));
    wait_led(&node, 0, RED, "75 C");
    // The other LEDs belong to nobody and stay dark.
    assert!(node.sim.leds.current()[1..].iter().all(|c| c.hex() == "#000000"));
}

#[test]
fn netmon_pings_granted_hosts_and_is_denied_the_rest() {
    let node = node();
    // "localhost" is not granted: it is refused before any packet leaves.
    node.runtime
        .apply(with_tick(
            spec(
                "netmon",
                "netmon",
                "net: {hosts: [127.0.0.1]}",
                &[("HOSTS", "127.0.0.1,localhost")],
            ),
            200,
        ))
        .unwrap();
    wait_until(T, "reachability of both hosts", || {
        !node.telemetry("netmon", "up_127_0_0_1").is_empty() && !node.telemetry("netmon", "up_localhost").is_empty()
    });
    assert_eq!(node.telemetry("netmon", "up_localhost")[0].1, 0.0);
    let denied = node.events().into_iter().any(|e| {
        matches!(&e.kind, EventKind::Denied { message, .. } if message.contains("host \"localhost\" is not granted"))
    });
    assert!(denied);
    // Loopback answers ICMP when this process may send it (root or
    // ping_group_range); either way the plugin gets a clear reading.
    let up = node.telemetry("netmon", "up_127_0_0_1")[0].1;
    if up == 1.0 {
        assert!(!node.telemetry("netmon", "rtt_127_0_0_1").is_empty());
    } else {
        let why = node
            .events()
            .into_iter()
            .any(|e| matches!(&e.kind, EventKind::Log { message, .. } if message.contains("127.0.0.1 is unreachable")));
        assert!(why);
    }
}

#[test]
fn the_rust_buzzer_plugin_plays_commanded_patterns() {
    let node = node();
    node.runtime.apply(spec("buzzer", "buzzer", "buzzer: {}", &[])).unwrap();
    assert_eq!(
        node.runtime.command("buzzer", "triple", vec![]).unwrap(),
        "played triple"
    );
    assert_eq!(
        node.runtime
            .command("buzzer", "beep", vec![("pattern".into(), "long".into())])
            .unwrap(),
        "played long"
    );
    let err = node.runtime.command("buzzer", "siren", vec![]).unwrap_err().to_string();
    assert!(err.contains("unknown command \"siren\""), "{err}");
    let played: Vec<BuzzerAction> = node.sim.buzzer.events().into_iter().map(|e| e.action).collect();
    assert_eq!(
        played,
        vec![
            BuzzerAction::Pattern(BuzzerPattern::Triple),
            BuzzerAction::Pattern(BuzzerPattern::Long)
        ]
    );

    // A plugin that goes away with its tone on leaves the buzzer silent.
    node.runtime.command("buzzer", "tone-on", vec![]).unwrap();
    assert_eq!(
        node.sim.buzzer.events().last().map(|e| e.action.clone()),
        Some(BuzzerAction::Tone(true))
    );
    assert!(node.runtime.remove("buzzer"));
    wait_until(Duration::from_secs(10), "the buzzer silenced", || {
        node.sim.buzzer.events().last().map(|e| e.action.clone()) == Some(BuzzerAction::Tone(false))
    });
}
