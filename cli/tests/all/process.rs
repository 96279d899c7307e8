//! The real `harvester` binary, as a process on loopback.

use crate::support::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn harvester(args: &[&str], data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_harvester"));
    c.args(args).arg("--data").arg(data).env("HARVESTER_LOG", "info");
    c
}

fn plugin(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_default()
}

#[test]
fn standalone_nodelet_rejects_a_bad_manifest_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "plugins:\n- name: p\n  component: p.wasm\n  grants: {gpio: {pins: [4, 41]}}\n",
            "plugins[0].grants.gpio.pins[1]: pin 41 is not a valid BCM GPIO (0-27)",
        ),
        (
            "plugins:\n- name: p\n  component: p.wasm\n  grants:\n    camera: {}\n",
            "unknown field `camera`",
        ),
        ("plugins: [\n", "did not find expected"),
    ];
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let out = harvester(
            &[
                "nodelet",
                "--standalone",
                file.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--command-listen",
                "127.0.0.1:0",
            ],
            dir.path(),
        )
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("bad{i}.yaml")) && stderr.contains(expected),
            "{stderr}"
        );
    }
}

#[test]
fn standalone_nodelet_follows_manifest_and_component_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("probe.wasm"), component("probe").as_slice()).unwrap();
    let manifest = dir.path().join("node.yaml");
    let write_manifest = |version: &str| {
        std::fs::write(
            &manifest,
            format!(
                "plugins:\n- name: probe\n  component: probe.wasm\n  grants: {{gpio: {{pins: [17]}}}}\n  config: {{VERSION: \"{version}\"}}\n  tickInterval: 100ms\n"
            ),
        )
        .unwrap();
    };
    write_manifest("1");
    let port = free_port();
    let commands = free_port();
    let mut child = Proc(
        harvester(
            &[
                "nodelet",
                "--standalone",
                manifest.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--command-listen",
                &format!("127.0.0.1:{commands}"),
                "--poll",
                "100ms",
                "--name",
                "devbox",
            ],
            &dir.path().join("data"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let pid = child.0.id();
    let running_gen = |g: u64| {
        move || {
            status(port)
                .is_some_and(|s| plugin(&s, "probe")["phase"] == "Running" && plugin(&s, "probe")["generation"] == g)
        }
    };
    wait_until(T, "probe running", running_gen(1));
    assert_eq!(status(port).unwrap()["node"], "devbox");

    // A config edit swaps a new version in; same process.
    write_manifest("2");
    wait_until(T, "generation 2", running_gen(2));
    assert!(child.0.try_wait().unwrap().is_none());
    assert_eq!(child.0.id(), pid);

    // A broken component file: reported, the running version stays.
    std::fs::write(dir.path().join("probe.wasm"), b"not wasm").unwrap();
    wait_until(T, "load failure reported", || {
        status(port).is_some_and(|s| {
            plugin(&s, "probe")["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("probe.wasm") && e.contains("WebAssembly magic"))
        })
    });
    let s = status(port).unwrap();
    assert_eq!(
        (
            plugin(&s, "probe")["phase"].as_str(),
            plugin(&s, "probe")["generation"].as_u64()
        ),
        (Some("Running"), Some(2))
    );

    // A broken manifest: reported in the log, nothing stops.
    std::fs::write(&manifest, "plugins: [").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let ticks = plugin(&status(port).unwrap(), "probe")["ticks"].as_u64().unwrap();
    wait_until(T, "still ticking", || {
        plugin(&status(port).unwrap(), "probe")["ticks"].as_u64().unwrap() > ticks
    });

    // Commands reach the plugin on the loopback-only command listener;
    // unknown plugins get 404; the read-only listener runs no command.
    let (code, body) = http("POST", commands, "/plugins/probe/commands/ticks").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.trim().parse::<u64>().unwrap() > 0);
    assert_eq!(http("POST", commands, "/plugins/nope/commands/x").unwrap().0, 404);
    assert_eq!(http("POST", port, "/plugins/probe/commands/ticks").unwrap().0, 404);
    let (code, metrics) = http("GET", port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains(r#"harvester_plugin_generation{plugin="probe"} 2"#),
        "{metrics}"
    );

    // SIGTERM stops it cleanly.
    let started = Instant::now();
    unsafe_free_sigterm(pid);
    loop {
        if let Some(code) = child.0.try_wait().unwrap() {
            assert!(code.success(), "{code:?}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM to our own child by pid, through the `kill` command.
fn unsafe_free_sigterm(pid: u32) {
    let ok = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(ok.success());
}

/// `plugin build --cache` hands out the build made from the same sources
/// before instead of building again; other sources get their own build.
#[test]
fn a_plugin_build_is_reused_from_the_cache_for_the_same_sources() {
    let built = component("probe");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("probe.wasm");
    let run = |src: &Path, cache: &Path, out: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_harvester"))
            .args(["plugin", "build"])
            .arg(src)
            .arg("--cache")
            .arg(cache)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let said = run(&repo().join("cli/tests/plugins/probe"), &artifacts(), &out);
    assert!(said.contains("reused the build in"), "{said}");
    assert_eq!(std::fs::read(&out).unwrap(), *built);

    // A changed source is a new key: built, not reused.
    let copy = dir.path().join("probe-src");
    let status = Command::new("cp")
        .arg("-rL")
        .arg(repo().join("cli/tests/plugins/probe"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(copy.join("target"));
    let lib = copy.join("src/lib.rs");
    let text = std::fs::read_to_string(&lib).unwrap();
    // Unique per run: the shared cache outlives the test and must not
    // already hold this edit from an earlier run.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::fs::write(&lib, format!("{text}\n// changed {nonce}\n")).unwrap();
    let said = run(&copy, &artifacts(), &dir.path().join("changed.wasm"));
    assert!(said.contains("built into"), "{said}");
    assert!(dir.path().join("changed.wasm").exists());
}
