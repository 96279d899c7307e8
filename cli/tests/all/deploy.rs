//! The board install: deploy/install lays out the binary, the systemd units
//! and the settings; systemd accepts the units; and the commands the units
//! run, with the shipped settings, start a real controller and nodelet.

use crate::support::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_harvester")
}

/// The unit's command line with the env file's arguments spliced in, as
/// systemd would run it (no shell quoting beyond the env file's quotes).
fn unit_command(unit: &str, env: &str) -> Vec<String> {
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let (var, value) = env
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| l.split_once('=').unwrap())
        .next()
        .expect("one setting");
    let value = value.trim_matches('"');
    exec.replace(&format!("${var}"), value)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn swap(args: &mut [String], flag: &str, value: &str) {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} in {args:?}"));
    args[i + 1] = value.to_string();
}

#[test]
fn the_install_lays_out_units_that_systemd_accepts_and_that_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for role in ["nodelet", "controller"] {
        let out = Command::new("bash")
            .arg(repo().join("deploy/install"))
            .args([role, "--binary", bin()])
            .env("DESTDIR", &root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for f in [
        "usr/local/bin/harvester",
        "etc/systemd/system/harvester-nodelet.service",
        "etc/systemd/system/harvester-controller.service",
        "etc/harvester/nodelet.env",
        "etc/harvester/controller.env",
        "usr/local/share/doc/harvester/WIRING.md",
    ] {
        assert!(root.join(f).is_file(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.join("usr/local/bin/harvester"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    // Settings someone edited survive a reinstall.
    std::fs::write(
        root.join("etc/harvester/nodelet.env"),
        "HARVESTER_NODELET_ARGS=\"--name edited\"\n",
    )
    .unwrap();
    let out = Command::new("bash")
        .arg(repo().join("deploy/install"))
        .args(["nodelet", "--binary", bin()])
        .env("DESTDIR", &root)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("keeping"));
    assert!(
        std::fs::read_to_string(root.join("etc/harvester/nodelet.env"))
            .unwrap()
            .contains("edited")
    );
    let out = Command::new("bash")
        .arg(repo().join("deploy/install"))
        .arg("hub")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // systemd's own check, with the binary where this test has it.
    if Path::new("/usr/bin/systemd-analyze").exists() {
        for role in ["nodelet", "controller"] {
            let unit = std::fs::read_to_string(repo().join(format!("deploy/harvester-{role}.service"))).unwrap();
            let file = dir.path().join(format!("harvester-{role}.service"));
            std::fs::write(&file, unit.replace("/usr/local/bin/harvester", bin())).unwrap();
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&file)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && err.trim().is_empty(), "{role}: {err}");
        }
    }

    // The units' commands with the shipped settings (ports and paths moved
    // into this test's folder) start a controller and a node that joins it.
    let read = |f: &str| std::fs::read_to_string(repo().join("deploy").join(f)).unwrap();
    let mut ctl = unit_command(&read("harvester-controller.service"), &read("controller.env"));
    let api = free_port();
    swap(&mut ctl, "--data", dir.path().join("controller").to_str().unwrap());
    swap(&mut ctl, "--listen", &format!("127.0.0.1:{api}"));
    swap(&mut ctl, "--dashboard", &format!("127.0.0.1:{}", free_port()));
    let _controller = Proc(
        Command::new(bin())
            .args(&ctl[1..])
            .env("XDG_CONFIG_HOME", dir.path().join("config-home"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let data = dir.path().join("controller");
    wait_until(Duration::from_secs(20), "controller up", || {
        data.join("admin.yaml").exists() && Hub::admin(api, &data).try_raw("GET", "/healthz", &[], b"").is_ok()
    });
    let hub = Hub::admin(api, &data);
    let token = Command::new(bin())
        .args(["token", "create", "--ttl", "10m"])
        .env("HARVESTER_CONFIG", data.join("admin.yaml"))
        .output()
        .unwrap();
    assert!(token.status.success(), "{}", String::from_utf8_lossy(&token.stderr));
    let token_file = dir.path().join("join-token");
    std::fs::write(&token_file, &token.stdout).unwrap();
    let key = dir.path().join("cosign");
    let out = Command::new(bin())
        .args(["keygen", "--output-key-prefix", key.to_str().unwrap()])
        .env("COSIGN_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut node = unit_command(&read("harvester-nodelet.service"), &read("nodelet.env"));
    let port = free_port();
    swap(&mut node, "--data", dir.path().join("node").to_str().unwrap());
    swap(&mut node, "--controller", &format!("https://127.0.0.1:{api}"));
    swap(&mut node, "--join-token-file", token_file.to_str().unwrap());
    swap(&mut node, "--command-listen", "127.0.0.1:0");
    swap(
        &mut node,
        "--trust-key",
        dir.path().join("cosign.pub").to_str().unwrap(),
    );
    swap(
        &mut node,
        "--trust-compiler",
        dir.path().join("controller/compiler.pub").to_str().unwrap(),
    );
    swap(&mut node, "--listen", &format!("127.0.0.1:{port}"));
    node.extend(["--name".to_string(), "board".to_string()]);
    let _node = Proc(
        Command::new(bin())
            .args(&node[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(20), "the node registered", || {
        let (code, body) = hub.call("GET", "/api/v1alpha1/nodes/board", "");
        code == 200 && body.contains("role")
    });
}
