//! `scripts/showcase` as a newcomer runs it: what it says while it works,
//! the fleet it brings up, what it leaves in the terminal, and that Ctrl-C
//! stops everything it started. It runs in a network namespace of its own
//! (a user namespace makes one without privileges), so its fixed ports
//! (5000, 7000, 3000, 9101-9113) meet nothing else on this machine.

use crate::support::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The network namespace a process is in (the inode of its handle).
fn netns(pid: u32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

/// Every process in network namespace `ns`.
fn in_netns(ns: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| netns(*pid).as_deref() == Some(ns))
        .collect()
}

/// Kills by process id whatever the showcase left in its namespace.
struct Namespace(Option<std::path::PathBuf>);

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Some(ns) = &self.0 {
            for pid in in_netns(ns) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

#[test]
fn the_showcase_script_brings_up_the_fleet_saying_what_it_does_and_ctrl_c_stops_it() {
    // Built here first, so the script reuses the builds rather than racing
    // another test's build of the same plugin.
    for p in ["dht22", "bme680", "system", "netmon", "buzzer"] {
        component(p);
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("showcase");
    let mut child = Command::new("unshare")
        .args(["--net", "--map-root-user", "bash", "-c"])
        .arg("ip link set lo up && exec bash scripts/showcase")
        .current_dir(repo())
        .env("HARVESTER_BIN", env!("CARGO_BIN_EXE_harvester"))
        .env("HARVESTER_SHOWCASE_STATE", &state)
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                repo().join(".venv/bin").display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .env_remove("HARVESTER_CONFIG")
        .env_remove("HARVESTER_CONTEXT")
        .env_remove("HARVESTER_SERVER")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let pid = child.id();
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    // Namespaced as soon as bash runs: the namespace is read once it is.
    let mut guard = Namespace(None);
    let own = netns(std::process::id());
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut printed: Vec<String> = Vec::new();
    let done = |printed: &[String]| printed.iter().any(|l| l.contains("Ctrl-C stops everything."));
    while !done(&printed) {
        if guard.0.is_none() {
            guard.0 = netns(pid).filter(|ns| Some(ns) != own.as_ref());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match out.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => printed.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {}
            Err(_) => {
                let errors: Vec<String> = err.try_iter().collect();
                panic!(
                    "the showcase stopped or took over 300 s:\n{}\nstderr:\n{}",
                    printed.join("\n"),
                    errors.join("\n")
                );
            }
        }
    }
    let errors: Vec<String> = err.try_iter().collect();
    let transcript = format!("{}\nstderr:\n{}", printed.join("\n"), errors.join("\n"));

    // It says what it does, in order, before each step.
    let said: Vec<&str> = printed.iter().filter_map(|l| l.split("showcase:").nth(1)).collect();
    let steps = [
        "building the plugins",
        "the processes' logs go to",
        "starting a registry on 127.0.0.1:5000",
        "starting the hub and three simulated boards",
    ];
    let mut at = 0;
    for step in steps {
        at += said[at..]
            .iter()
            .position(|s| s.contains(step))
            .unwrap_or_else(|| panic!("the showcase says {step:?} in order:\n{transcript}"))
            + 1;
    }

    // The fleet runs: every plugin ready, three boards, the hub's in its role.
    let row = |name: &str| {
        printed
            .iter()
            .rev()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{transcript}"))
            .clone()
    };
    for plugin in ["dht22", "bme680", "system", "buzzer", "netmon"] {
        assert!(row(plugin).contains(" True "), "{plugin} ready:\n{transcript}");
    }
    for node in ["hub", "pi4", "pizero"] {
        assert!(row(node).contains(" Ready "), "{node} ready:\n{transcript}");
    }
    assert_eq!(row("hub").split_whitespace().nth(2), Some("hub"), "{transcript}");
    let runs = printed.iter().position(|l| l.starts_with("The fleet runs.")).unwrap();
    let hints = printed[runs..].join("\n");
    for hint in [
        "https://127.0.0.1:3000/",
        "logs node/pi4 -f",
        "exec plugin/buzzer triple",
        "dev plugins/dht22",
    ] {
        assert!(hints.contains(hint), "the hints say {hint:?}:\n{hints}");
    }

    // The processes log to files, not over the script's messages.
    for line in printed.iter().chain(&errors) {
        assert!(
            !line.contains(" INFO ") && !line.contains(" WARN ") && !line.contains("level="),
            "a process's log line in the terminal: {line}\n{transcript}"
        );
    }
    for log in ["registry", "controller", "hub", "pi4", "pizero"] {
        let text = std::fs::read_to_string(state.join(format!("logs/{log}.log"))).unwrap_or_default();
        assert!(!text.is_empty(), "{log}.log has the {log}'s lines");
    }
    assert!(
        std::fs::read_to_string(state.join("logs/pi4.log"))
            .unwrap()
            .contains("dht22"),
        "the pi4 log has its plugins' lines"
    );

    // Ctrl-C: the script stops everything it started, by itself.
    let ns = guard.0.clone().expect("the showcase ran in its own network namespace");
    assert!(in_netns(&ns).len() >= 6, "registry, hub, three boards and the script");
    let _ = Command::new("kill").args(["-INT", &pid.to_string()]).status();
    wait_until(Duration::from_secs(30), "the showcase stopped", || {
        child.try_wait().unwrap().is_some()
    });
    wait_until(Duration::from_secs(5), "nothing left of it", || {
        in_netns(&ns).is_empty()
    });
}
