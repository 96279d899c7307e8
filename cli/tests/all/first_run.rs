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

/// `scripts/showcase` running in a network namespace of its own, its
/// state in `state`.
struct Showcase {
    child: std::process::Child,
    out: std::sync::mpsc::Receiver<String>,
    err: std::sync::mpsc::Receiver<String>,
    /// Kills what is left in its namespace when the test ends.
    guard: Namespace,
    /// What it printed so far.
    printed: Vec<String>,
}

impl Showcase {
    fn start(dir: &Path, state: &Path) -> Showcase {
        let mut child = Command::new("unshare")
            .args(["--net", "--map-root-user", "bash", "-c"])
            .arg("ip link set lo up && exec bash scripts/showcase")
            .current_dir(repo())
            .env("HARVESTER_BIN", env!("CARGO_BIN_EXE_harvester"))
            .env("HARVESTER_SHOWCASE_STATE", state)
            .env("XDG_CONFIG_HOME", dir.join("config"))
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
        let out = lines_of(child.stdout.take().unwrap());
        let err = lines_of(child.stderr.take().unwrap());
        Showcase {
            child,
            out,
            err,
            guard: Namespace(None),
            printed: Vec::new(),
        }
    }

    /// Reads what it prints until a line contains `line`; fails with its
    /// transcript if it stops first or takes over `within`.
    fn until(&mut self, line: &str, within: Duration) {
        let pid = self.child.id();
        // Namespaced as soon as bash runs: the namespace is read once it is.
        let own = netns(std::process::id());
        let deadline = Instant::now() + within;
        while !self.printed.iter().any(|l| l.contains(line)) {
            if self.guard.0.is_none() {
                self.guard.0 = netns(pid).filter(|ns| Some(ns) != own.as_ref());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok(l) => self.printed.push(l),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {}
                Err(_) => {
                    // Its last words on stderr may trail its stdout.
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "the showcase stopped or took over {within:?} before printing {line:?}:\n{}",
                        self.transcript()
                    );
                }
            }
        }
    }

    fn transcript(&self) -> String {
        let errors: Vec<String> = self.err.try_iter().collect();
        format!("{}\nstderr:\n{}", self.printed.join("\n"), errors.join("\n"))
    }

    /// Ctrl-C: the script stops everything it started, by itself.
    fn interrupt(mut self) {
        let ns = self
            .guard
            .0
            .clone()
            .expect("the showcase ran in its own network namespace");
        assert!(in_netns(&ns).len() >= 6, "registry, hub, three boards and the script");
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        wait_until(Duration::from_secs(30), "the showcase stopped", || {
            self.child.try_wait().unwrap().is_some()
        });
        wait_until(Duration::from_secs(5), "nothing left of it", || {
            in_netns(&ns).is_empty()
        });
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
    let began = Instant::now();
    let mut showcase = Showcase::start(dir.path(), &state);
    showcase.until("Ctrl-C stops everything.", Duration::from_secs(300));
    let printed = showcase.printed.clone();
    let errors: Vec<String> = showcase.err.try_iter().collect();
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
    showcase.interrupt();
    eprintln!("showcase: the first run came up and stopped in {:?}", began.elapsed());
    let began = Instant::now();

    // A second run over the first one's state (its keys, hub and boards
    // are there before the hub listens) comes up too.
    let mut again = Showcase::start(dir.path(), &state);
    again.until("Ctrl-C stops everything.", Duration::from_secs(120));
    again.interrupt();
    eprintln!("showcase: the second run came up and stopped in {:?}", began.elapsed());
}
