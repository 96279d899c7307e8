//! Bad components and manifests get one clear message naming the file and
//! the problem, and everything else keeps running.

use crate::support::*;
use harvester_nodelet::PluginSpec;
use harvester_nodelet::events::Phase;
use std::time::Duration;

fn raw(name: &str, bytes: &[u8]) -> PluginSpec {
    let mut s = spec(name, "probe", "gpio: {pins: [17]}", &[]);
    s.component = bytes.to_vec().into();
    s.source = format!("/plugins/{name}.wasm");
    s
}

#[test]
fn files_that_are_not_components_are_refused_by_name() {
    let node = node();
    node.runtime
        .apply(with_tick(spec("good", "probe", "gpio: {pins: [17]}", &[]), 50))
        .unwrap();

    let err = node
        .runtime
        .apply(raw("text", b"hello, world"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("plugin text (/plugins/text.wasm)")
            && err.contains("does not start with the WebAssembly magic bytes"),
        "{err}"
    );
    let err = node
        .runtime
        .apply(raw("core", b"\0asm\x01\0\0\0"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("a core WebAssembly module, not a component"), "{err}");
    let err = node.runtime.apply(raw("empty", b"")).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
    let mut truncated = component("probe").to_vec();
    truncated.truncate(truncated.len() / 2);
    let err = node
        .runtime
        .apply(raw("truncated", &truncated))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("plugin truncated (/plugins/truncated.wasm): not a WebAssembly component"),
        "{err}"
    );

    let good = node.runtime.plugin_status("good").unwrap();
    assert_eq!(good.phase, Phase::Running);
    assert_eq!(node.runtime.plugin_status("text").unwrap().phase, Phase::Failed);
}

#[test]
fn a_component_built_for_another_world_is_refused() {
    let node = node();
    let mut s = spec("alien", "alien", "{}", &[]);
    s.source = "alien.wasm".into();
    let err = node.runtime.apply(s).unwrap_err().to_string();
    assert!(
        err.contains("plugin alien (alien.wasm): the component does not fit the harvester:plugin contract")
            && err.contains("lifecycle"),
        "{err}"
    );
}

#[test]
fn a_plugin_that_raises_on_init_is_reported_and_others_keep_running() {
    let node = node();
    node.runtime
        .apply(with_tick(spec("good", "probe", "gpio: {pins: [17]}", &[]), 50))
        .unwrap();
    let err = node
        .runtime
        .apply(spec(
            "fails",
            "hostile",
            "{gpio: {pins: [18]}, leds: {indices: [1]}}",
            &[("FAIL_INIT", "1")],
        ))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("plugin fails (hostile.wasm): init returned an error: refusing to start: FAIL_INIT=1"),
        "{err}"
    );
    assert_eq!(node.runtime.plugin_status("fails").unwrap().phase, Phase::Failed);
    let before = node.runtime.plugin_status("good").unwrap().ticks;
    wait_until(Duration::from_secs(10), "good keeps ticking", || {
        node.runtime.plugin_status("good").unwrap().ticks > before + 3
    });
}

/// `--hardware rpi` off a Pi stops at once and says what to do; bad pin
/// settings are named; `auto` falls back to simulated devices and says so.
#[test]
fn real_hardware_off_a_pi_is_refused_plainly() {
    if std::fs::read_to_string("/proc/device-tree/model").is_ok_and(|m| m.contains("Raspberry Pi")) {
        return; // On a Pi this machine has the real thing.
    }
    let dir = tempfile::tempdir().unwrap();
    let manifest = repo().join("manifests/standalone-pi4.yaml");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_harvester"))
            .args(["nodelet", "--standalone", manifest.to_str().unwrap(), "--data"])
            .arg(dir.path())
            .args(["--command-listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--hardware", "rpi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--hardware rpi: this is not a Raspberry Pi") && err.contains("--hardware sim"),
        "{err}"
    );
    let out = run(&["--hardware", "rpi", "--buzzer-pin", "40"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("a BCM pin number 0-27, or none"));

    let port = free_port();
    let mut node = Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_harvester"))
            .args(["nodelet", "--standalone", manifest.to_str().unwrap(), "--data"])
            .arg(dir.path())
            .args(["--hardware", "auto", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--command-listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(30), "node up", || status(port).is_some());
    assert_eq!(status(port).unwrap()["hardware"]["backend"], "sim");
    let stderr = node.0.stderr.take().unwrap();
    drop(node);
    let mut log = String::new();
    use std::io::Read;
    std::io::BufReader::new(stderr).read_to_string(&mut log).unwrap();
    assert!(log.contains("not a Raspberry Pi: simulated devices"), "{log}");
}
