//! The showcase end to end, as a visitor sees it: a real registry, the hub
//! with its dashboard, three simulated boards (hub, pi4, pizero) trusting
//! one key, the showcase plugins pushed, signed and applied, and the page
//! driven in headless Chromium (cli/tests/browser/dashboard.mjs). Then the
//! hot-reload walk-through with `harvester dev`: HIGH_TEMP changes in the
//! plugin's source, LED 1 turns red on the page, the pi4 nodelet keeps its
//! process id. Also `harvester logs` and `harvester exec` through the hub.

use crate::fleet::{Fleet, runs};
use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PASSWORD: &str = "dashboard";
const ROLLOUT: &str = "240s";

fn harvester(fleet: &Fleet, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_harvester"))
        .args(args)
        .current_dir(fleet.dir.path())
        .env("COSIGN_PASSWORD", PASSWORD)
        .env("HARVESTER_CONFIG", fleet.dir.path().join("controller/admin.yaml"))
        .output()
        .unwrap()
}

fn harvester_ok(fleet: &Fleet, args: &[&str]) -> String {
    let out = harvester(fleet, args);
    assert!(
        out.status.success(),
        "harvester {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// playwright-core, installed by scripts/setup next to the test script.
fn browser_dir() -> PathBuf {
    let dir = repo().join("cli/tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir() && Path::new("/usr/bin/chromium").exists(),
        "the dashboard test needs Debian's chromium and npm's playwright-core: run scripts/setup"
    );
    dir
}

/// A copy of a plugin folder with its WIT dependency copied in, so the
/// test can edit it without touching the repository.
fn copy_plugin(name: &str, to: &Path) -> PathBuf {
    let dir = to.join(name);
    std::fs::create_dir_all(dir.join("wit/deps/harvester-plugin")).unwrap();
    let src = repo().join("plugins").join(name);
    std::fs::copy(src.join("app.py"), dir.join("app.py")).unwrap();
    std::fs::copy(src.join("wit/world.wit"), dir.join("wit/world.wit")).unwrap();
    for e in std::fs::read_dir(repo().join("wit")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.join("wit/deps/harvester-plugin").join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn node_status(port: u16) -> serde_json::Value {
    status(port).expect("the node answers /status")
}

#[test]
fn the_showcase_in_a_browser() {
    let browser = browser_dir();
    let mut fleet = Fleet::new();
    let registry = TestRegistry::start(&fleet.dir.path().join("registry"));
    let host = registry.host();
    harvester_ok(&fleet, &["keygen", "--output-key-prefix", "cosign"]);
    let key = fleet.dir.path().join("cosign.key");
    let public = fleet.dir.path().join("cosign.pub");

    let plugins = ["dht22", "bme680", "system", "netmon", "buzzer"];
    for p in plugins {
        let file = fleet.dir.path().join(format!("{p}.wasm"));
        std::fs::write(&file, component(p).as_slice()).unwrap();
        harvester_ok(
            &fleet,
            &[
                "push",
                file.to_str().unwrap(),
                &format!("{host}/plugins/{p}:1.0"),
                "--key",
                key.to_str().unwrap(),
            ],
        );
    }
    // As in the showcase: every board trusts the hub's compiler, which
    // compiles each component once for all of them.
    let compiler = fleet.dir.path().join("controller/compiler.pub");
    let trust = [
        "--trust-key",
        public.to_str().unwrap(),
        "--trust-compiler",
        compiler.to_str().unwrap(),
    ];
    fleet.start_node_with("hub", "node-role.harvester.dev/hub=", "", &trust);
    let pi4 = fleet.start_node_with("pi4", "role=sensor,board=pi4", "dht22,bme680,leds,buzzer", &trust);
    fleet.start_node_with("pizero", "role=netmon,board=pizero", "bme680", &trust);

    // The shipped manifests, pointed at this registry.
    let manifests = fleet.dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    for p in plugins {
        let text = std::fs::read_to_string(repo().join(format!("manifests/fleet/{p}.yaml"))).unwrap();
        std::fs::write(
            manifests.join(format!("{p}.yaml")),
            text.replace("127.0.0.1:5000", &host),
        )
        .unwrap();
    }
    harvester_ok(&fleet, &["apply", "-f", manifests.to_str().unwrap()]);
    for p in plugins {
        harvester_ok(
            &fleet,
            &["rollout", "status", &format!("plugin/{p}"), "--timeout", ROLLOUT],
        );
    }

    // Commands and logs through the hub, from the command line.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_harvester"))
        .args([
            "logs",
            "plugin/buzzer",
            "-f",
            "--tail",
            "0",
            "--timezone",
            "America/New_York",
        ])
        .env("HARVESTER_CONFIG", fleet.dir.path().join("controller/admin.yaml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let followed = lines_of(follow.stdout.take().unwrap());
    let follow = Proc(follow);
    std::thread::sleep(Duration::from_millis(500));
    let out = harvester_ok(&fleet, &["exec", "plugin/buzzer", "long"]);
    assert_eq!(out.trim(), "pi4: played long", "{out}");
    let line = wait_line(&followed, Duration::from_secs(15), |l| l.contains("played long"))
        .expect("`logs -f` shows the plugin's line as it happens");
    assert!(line.contains(" pi4 ") && line.contains("[buzzer]"), "{line}");
    assert!(
        line.contains(" EST ") || line.contains(" EDT "),
        "times in the asked zone: {line}"
    );
    drop(follow);
    let pi4_logs = harvester_ok(&fleet, &["logs", "node/pi4", "--tail", "500"]);
    assert!(
        pi4_logs.contains("[dht22]") && pi4_logs.contains("[nodelet]"),
        "{pi4_logs}"
    );
    assert!(
        pi4_logs.lines().all(|l| l.contains(" pi4 ")),
        "only pi4's lines: {pi4_logs}"
    );
    let err = harvester(&fleet, &["exec", "plugin/buzzer", "siren"]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stdout).contains("unknown command \"siren\""));
    let err = harvester(&fleet, &["logs", "node/nowhere"]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("nowhere"));

    // `harvester dev` on a copy of the dht22 plugin: its first rollout is
    // generation 2, built from source, pushed and signed.
    let dev_dir = copy_plugin("dht22", fleet.dir.path());
    let dev_log = fleet.dir.path().join("dev.log");
    let venv = repo().join(".venv/bin");
    let path = format!("{}:{}", venv.display(), std::env::var("PATH").unwrap_or_default());
    let dev = Proc(
        Command::new(env!("CARGO_BIN_EXE_harvester"))
            .args(["dev", dev_dir.to_str().unwrap(), "--key", key.to_str().unwrap()])
            .env("COSIGN_PASSWORD", PASSWORD)
            .env("HARVESTER_CONFIG", fleet.dir.path().join("controller/admin.yaml"))
            .env("PATH", path)
            .stdout(std::fs::File::create(&dev_log).unwrap())
            .stderr(std::fs::File::create(fleet.dir.path().join("dev.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let dev_output = || std::fs::read_to_string(&dev_log).unwrap_or_default();
    wait_until(Duration::from_secs(300), "harvester dev's first rollout", || {
        dev_output().contains("watching")
    });
    assert!(dev_output().contains("generation 2 is live"), "{}", dev_output());
    let pid = fleet.node_pid("pi4");

    // People with roles: the page signs in as each.
    let operator = harvester_ok(&fleet, &["user", "create", "visitor", "--role", "operator"])
        .trim()
        .to_string();
    let viewer = harvester_ok(&fleet, &["user", "create", "onlooker", "--role", "viewer"])
        .trim()
        .to_string();
    let out_dir = repo().join("target/test-output/dashboard");
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut script = Command::new("node")
        .arg(browser.join("dashboard.mjs"))
        .current_dir(&browser)
        .env("DASHBOARD_URL", format!("https://127.0.0.1:{}/", fleet.dashboard))
        .env("DASHBOARD_TOKEN", &operator)
        .env("DASHBOARD_VIEWER_TOKEN", &viewer)
        .env("DASHBOARD_CA_SPKI", {
            let ca = std::fs::read_to_string(fleet.dir.path().join("controller/pki/ca.crt")).unwrap();
            harvester_pki::spki_sha256_base64(&ca).unwrap()
        })
        .env("OUT_DIR", &out_dir)
        .env("RELOAD_TIMEOUT_MS", "300000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running node");
    let steps = lines_of(script.stdout.take().unwrap());
    let errors = lines_of(script.stderr.take().unwrap());
    let _script = Proc(script);

    let mut transcript = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut edited = false;
    let mut buzzed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = steps.recv_timeout(left) else {
            let err: Vec<String> = errors.try_iter().collect();
            panic!(
                "the browser script stopped or timed out:\n{}\n{}",
                transcript.join("\n"),
                err.join("\n")
            );
        };
        // Shown with --nocapture, as the steps happen.
        eprintln!("browser: {line}");
        transcript.push(line.clone());
        if line.starts_with("FAIL") {
            std::thread::sleep(Duration::from_millis(500));
            let more: Vec<String> = steps.try_iter().collect();
            panic!(
                "dashboard check failed:\n{}\n{}\ncontroller log:\n{}",
                transcript.join("\n"),
                more.join("\n"),
                std::fs::read_to_string(fleet.dir.path().join("controller.log")).unwrap_or_default()
            );
        }
        if line.starts_with("BUZZED") {
            // The simulated buzzer on pi4 recorded the pattern the page asked for.
            let played = node_status(pi4)["simulated_buzzer"].clone();
            assert!(
                played
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["action"]["pattern"] == "triple"),
                "{played}"
            );
            buzzed = true;
        }
        if let Some(rest) = line.strip_prefix("READY_FOR_RELOAD temperature=") {
            let t: f64 = rest.split_whitespace().next().unwrap().parse().unwrap();
            // Below the room: the alarm colour, whatever the simulated room does meanwhile.
            let high = (t - 2.5).floor();
            let app = dev_dir.join("app.py");
            let source = std::fs::read_to_string(&app).unwrap();
            assert!(source.contains("HIGH_TEMP = 30.0"));
            std::fs::write(
                &app,
                source.replace("HIGH_TEMP = 30.0", &format!("HIGH_TEMP = {high:.1}")),
            )
            .unwrap();
            edited = true;
        }
        if line == "OK" {
            break;
        }
    }
    assert!(buzzed && edited, "{}", transcript.join("\n"));
    assert!(out_dir.join("dashboard.png").is_file() && out_dir.join("dashboard-phone.png").is_file());

    // The change went through the registry, signed, as generation 3, and
    // the pi4 nodelet never restarted.
    wait_until(Duration::from_secs(30), "dev reports generation 3", || {
        dev_output().contains("generation 3 is live")
    });
    assert_eq!(fleet.node_pid("pi4"), pid);
    assert!(runs(pi4, "dht22", 3), "{}", node_status(pi4));
    let plugin = fleet.plugin("dht22");
    assert!(
        plugin["spec"]["image"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{host}/plugins/dht22@sha256:")),
        "{plugin}"
    );
    let verified = &plugin["status"]["conditions"];
    assert!(
        verified
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Verified" && c["status"] == "True"),
        "{verified}"
    );
    drop(dev);
}

fn wait_line(rx: &mpsc::Receiver<String>, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).ok()?;
        if pred(&line) {
            return Some(line);
        }
    }
}
