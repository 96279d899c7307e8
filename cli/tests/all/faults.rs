//! Faults a fleet lives through: a hub lost and restored from a backup.

use crate::fleet::{Fleet, T, on_node, runs};
use crate::support::*;
use serde_json::Value;
use std::time::Duration;

#[test]
fn a_hub_restored_from_its_backup_is_the_same_hub_to_its_nodes_and_people() {
    let mut fleet = Fleet::new();
    let pi4 = fleet.start_node("pi4", "role=sensor", "leds");
    fleet.apply(&fleet.plugin_yaml("probe", "role: sensor", "{gpio: {pins: [17]}}", "2"));
    wait_until(T, "probe running", || runs(pi4, "probe", 1));
    let printed = fleet.cli_ok(&["user", "create", "alice", "--role", "viewer"]);
    // What the API takes as a bearer token: the part after the CA's hash.
    let alice = printed.trim().rsplit_once("::").unwrap().1.to_string();
    let before: Value = serde_json::from_str(&fleet.cli_ok(&["get", "plugin", "probe", "-o", "json"])).unwrap();

    // A viewer may not take the hub's keys away.
    let (code, body) = fleet.hub().with_token(&alice).call("GET", "/api/v1alpha1/backup", "");
    assert_eq!(code, 403, "{body}");

    let backup = fleet.dir.path().join("hub.tar");
    // Another local user's files where a backup is written: a readable file
    // under the name a backup used to be written to first, and a link at
    // the backup's own name. Neither gets a byte of the hub's keys.
    use std::os::unix::fs::PermissionsExt;
    let planted = fleet.dir.path().join("hub.partial");
    std::fs::write(&planted, b"").unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
    let lure = fleet.dir.path().join("lure");
    std::fs::write(&lure, b"").unwrap();
    std::os::unix::fs::symlink(&lure, &backup).unwrap();
    let out = fleet.cli_ok(&["controller", "backup", backup.to_str().unwrap()]);
    assert!(out.contains("backup of the hub at resourceVersion"), "{out}");
    assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!std::fs::symlink_metadata(&backup).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&planted).unwrap(), b"", "the planted file got the backup");
    assert_eq!(std::fs::read(&lure).unwrap(), b"", "the link's target got the backup");

    // What the hub and the board keep is their user's only.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let hub_data = fleet.dir.path().join("controller");
    assert_eq!(mode(&hub_data), 0o700);
    for file in ["store/db", "store/conf", "admin.yaml", "pki/ca.key"] {
        assert_eq!(mode(&hub_data.join(file)), 0o600, "{file}");
    }
    let board = fleet.dir.path().join("pi4");
    assert_eq!(mode(&board), 0o700);
    assert_eq!(mode(&board.join("assignments.json")), 0o600);

    // The hub's machine is lost; its backup is restored on a new one.
    fleet.kill_controller();
    let data = fleet.dir.path().join("controller");
    std::fs::rename(&data, fleet.dir.path().join("lost")).unwrap();
    let junk = fleet.dir.path().join("junk.tar");
    std::fs::write(&junk, b"not a backup").unwrap();
    let err = fleet.cli(&[
        "controller",
        "restore",
        junk.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("is not a Harvester backup"));
    let lost = fleet.dir.path().join("lost");
    let err = fleet.cli(&[
        "controller",
        "restore",
        backup.to_str().unwrap(),
        "--data",
        lost.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("is not empty"),
        "never over a hub's data"
    );
    let _ = std::fs::remove_dir(&data);
    let out = fleet.cli_ok(&[
        "controller",
        "restore",
        backup.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(out.contains("pki/") && out.contains("admin.yaml"), "{out}");
    for key in ["pki/ca.key", "compiler.key"] {
        assert_eq!(mode(&data.join(key)), 0o600, "{key}");
    }
    // As an older install left data: a folder its group may enter, files
    // anyone may read. The hub mends it at start and says so.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(data.join("pki/ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    fleet.start_controller();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("pki/ca.key")), 0o600);
    let log = std::fs::read_to_string(fleet.dir.path().join("controller.log")).unwrap();
    assert!(log.contains("was mode 750, open to other users: now 0700"), "{log}");

    // The same objects at the same revision, the same users, and the node,
    // whose certificate the same CA signed, reports to it again.
    let after: Value = serde_json::from_str(&fleet.cli_ok(&["get", "plugin", "probe", "-o", "json"])).unwrap();
    let rv = |v: &Value| v["metadata"]["resourceVersion"].as_u64().unwrap();
    assert!(
        rv(&after) >= rv(&before),
        "the revision counter goes on from the backup's"
    );
    let meta = |v: &Value| {
        let mut m = v["metadata"].clone();
        m.as_object_mut().unwrap().remove("resourceVersion");
        m
    };
    assert_eq!(
        meta(&after),
        meta(&before),
        "the same object: uid, generation, creation time"
    );
    assert_eq!(after["spec"], before["spec"]);
    let users = fleet.cli_ok(&["user", "list"]);
    assert!(users.contains("alice"), "{users}");
    let (code, _) = fleet.hub().with_token(&alice).call("GET", "/api/v1alpha1/plugins", "");
    assert_eq!(code, 200, "her token still works");
    wait_until(T, "the node reports to the restored hub", || {
        fleet.plugin("probe")["status"]["nodes"]["pi4"]["phase"] == "Running"
    });
    assert!(runs(pi4, "probe", 1));
}

/// A small tmpfs for a test (it runs as root), unmounted when the test ends.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn disk_pressure(fleet: &Fleet, node: &str) -> Option<(String, String)> {
    let n: Value = serde_json::from_str(&fleet.cli_ok(&["get", "node", node, "-o", "json"])).unwrap();
    n["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "DiskPressure")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

#[test]
fn a_node_on_a_full_disk_keeps_running_applies_removals_and_config_changes_and_recovers() {
    let mut fleet = Fleet::new();
    let data = fleet.dir.path().join("pi4");
    let disk = Tmpfs::mount(&data, "8m");
    let pi4 = fleet.start_node("pi4", "", "leds");
    let two = fleet.plugin_yaml("a", "", "{gpio: {pins: [17]}}", "1")
        + "---\n"
        + &fleet.plugin_yaml("b", "", "{gpio: {pins: [18]}}", "1");
    fleet.apply(&two);
    wait_until(T, "a and b running", || runs(pi4, "a", 1) && runs(pi4, "b", 1));
    assert_eq!(
        disk_pressure(&fleet, "pi4"),
        Some(("False".into(), "EnoughDisk".into()))
    );

    // The card fills up.
    let fill = disk.0.join("fill");
    let out = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", fill.display()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left"),
        "the disk is full"
    );
    wait_until(T, "DiskPressure reported", || {
        disk_pressure(&fleet, "pi4") == Some(("True".into(), "LowOnDisk".into()))
    });
    let (_, metrics) = http("GET", pi4, "/metrics").unwrap();
    assert!(metrics.contains("harvester_node_disk_pressure 1"), "{metrics}");

    // A removal and a config change are applied all the same; a new
    // component cannot come in, and says why.
    fleet.cli_ok(&["delete", "plugin", "b"]);
    fleet.apply(&fleet.plugin_yaml("a", "", "{gpio: {pins: [17]}}", "2"));
    wait_until(T, "b removed, a at generation 2", || {
        on_node(pi4, "b").is_none() && runs(pi4, "a", 2)
    });
    let c = fleet.dir.path().join("c.wasm");
    std::fs::write(&c, variant(&component("probe"), "c")).unwrap();
    let probe = fleet.dir.path().join("probe.wasm");
    let yaml = fleet
        .plugin_yaml("c", "", "{gpio: {pins: [19]}}", "1")
        .replace(probe.to_str().unwrap(), c.to_str().unwrap());
    fleet.apply(&yaml);
    wait_until(T, "c refused for want of space", || {
        fleet.plugin("c")["status"]["nodes"]["pi4"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("No space left"))
    });
    assert!(runs(pi4, "a", 2), "what runs keeps running");

    // Space comes back: so does everything, by itself.
    std::fs::remove_file(&fill).unwrap();
    let freed = std::time::Instant::now();
    wait_until(T, "DiskPressure over", || {
        disk_pressure(&fleet, "pi4") == Some(("False".into(), "EnoughDisk".into()))
    });
    wait_until(T, "c running once there is room", || runs(pi4, "c", 1));
    eprintln!(
        "full disk: the new component ran {:?} after space was freed",
        freed.elapsed()
    );
    // The assignments it could not keep are on disk now.
    let kept: Value = serde_json::from_slice(&std::fs::read(data.join("assignments.json")).unwrap()).unwrap();
    let names: Vec<&str> = kept["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "c"]);
    fleet.kill_node("pi4");
}

/// Two network namespaces joined by a veth pair, made for one test and
/// deleted when it ends: a hub at 10.231.0.1, a board at 10.231.0.2.
struct Link {
    hub: String,
    board: String,
    board_end: String,
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Link {
    fn new() -> Link {
        let id = std::process::id() % 100_000;
        let l = Link {
            hub: format!("hvh{id}"),
            board: format!("hvb{id}"),
            board_end: format!("hvb{id}e"),
        };
        let hub_end = format!("hvh{id}e");
        ip(&["netns", "add", &l.hub]);
        ip(&["netns", "add", &l.board]);
        ip(&["link", "add", &hub_end, "type", "veth", "peer", "name", &l.board_end]);
        ip(&["link", "set", &hub_end, "netns", &l.hub]);
        ip(&["link", "set", &l.board_end, "netns", &l.board]);
        for (ns, dev, addr) in [
            (&l.hub, &hub_end, "10.231.0.1/24"),
            (&l.board, &l.board_end, "10.231.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        l
    }

    fn set_board_link(&self, up: bool) {
        ip(&[
            "-n",
            &self.board,
            "link",
            "set",
            &self.board_end,
            if up { "up" } else { "down" },
        ]);
    }

    /// `harvester ARGS` inside namespace `ns`.
    fn harvester(ns: &str) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_harvester")]);
        c
    }

    /// A GET of `url` from inside `ns`: the body, if it answered 2xx.
    fn get(ns: &str, url: &str) -> Option<String> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sf", "--max-time", "2", url])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.hub, &self.board] {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn a_partitioned_board_keeps_running_is_marked_not_ready_and_catches_up_when_the_link_heals() {
    let dir = tempfile::tempdir().unwrap();
    let link = Link::new();
    let hub_data = dir.path().join("hub");
    let config = hub_data.join("admin.yaml");
    let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
    let _hub = Proc(
        Link::harvester(&link.hub)
            .args(["controller", "--data", hub_data.to_str().unwrap()])
            .args([
                "--listen",
                "10.231.0.1:7000",
                "--tls-san",
                "10.231.0.1",
                "--no-dashboard",
            ])
            .args(["--node-timeout", "2s"])
            .env("XDG_CONFIG_HOME", dir.path().join("config-home"))
            .stdout(std::process::Stdio::null())
            .stderr(log("hub.log"))
            .spawn()
            .unwrap(),
    );
    let cli = |args: &[&str]| {
        let out = Link::harvester(&link.hub)
            .args(args)
            .env("HARVESTER_CONFIG", &config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "harvester {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    wait_until(T, "hub up", || {
        config.exists()
            && std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &link.hub,
                    "curl",
                    "-skf",
                    "https://10.231.0.1:7000/healthz",
                ])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    });
    let token = dir.path().join("join-token");
    std::fs::write(&token, cli(&["token", "create", "--uses", "1", "--ttl", "1h"]).trim()).unwrap();
    let _board = Proc(
        Link::harvester(&link.board)
            .args(["nodelet", "--name", "edge", "--sim-devices", "leds", "--allow-unsigned"])
            .args([
                "--controller",
                "https://10.231.0.1:7000",
                "--join-token-file",
                token.to_str().unwrap(),
            ])
            .args(["--data", dir.path().join("edge").to_str().unwrap()])
            .args([
                "--listen",
                "127.0.0.1:9101",
                "--command-listen",
                "127.0.0.1:0",
                "--heartbeat",
                "500ms",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log("edge.log"))
            .spawn()
            .unwrap(),
    );
    let probe = dir.path().join("probe.wasm");
    std::fs::write(&probe, component("probe").as_slice()).unwrap();
    let manifest = |version: &str| {
        let file = dir.path().join(format!("v{version}.yaml"));
        std::fs::write(
            &file,
            format!(
                "apiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: probe}}\nspec:\n  image: {}\n  grants: {{gpio: {{pins: [17]}}}}\n  config: {{VERSION: \"{version}\"}}\n  tickInterval: 100ms\n",
                probe.display()
            ),
        )
        .unwrap();
        file
    };
    let on_board = || -> Option<(u64, u64)> {
        let s: Value = serde_json::from_str(&Link::get(&link.board, "http://127.0.0.1:9101/status")?).ok()?;
        let p = s["plugins"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "probe" && p["phase"] == "Running")?;
        Some((p["generation"].as_u64()?, p["ticks"].as_u64()?))
    };
    let ready = || cli(&["get", "node", "edge"]).contains(" Ready ");
    cli(&["apply", "-f", manifest("1").to_str().unwrap()]);
    wait_until(T, "probe running on the board", || {
        on_board().is_some_and(|(g, _)| g == 1)
    });
    wait_until(T, "the board ready", ready);

    // The link is cut: the board keeps ticking, the hub marks it NotReady.
    link.set_board_link(false);
    let cut = std::time::Instant::now();
    wait_until(T, "NotReady within the lease", || {
        cli(&["get", "node", "edge"]).contains("NotReady")
    });
    let not_ready_after = cut.elapsed();
    let (_, before) = on_board().unwrap();
    wait_until(T, "ticking on while cut off", || {
        on_board().is_some_and(|(_, t)| t >= before + 10)
    });
    // A change made during the cut.
    cli(&["apply", "-f", manifest("2").to_str().unwrap()]);
    assert!(
        on_board().is_some_and(|(g, _)| g == 1),
        "nothing reaches a cut-off board"
    );

    // Healed: it reconnects and runs the change.
    link.set_board_link(true);
    let healed = std::time::Instant::now();
    wait_until(Duration::from_secs(90), "the change reaches the board", || {
        on_board().is_some_and(|(g, _)| g == 2)
    });
    let caught_up = healed.elapsed();
    wait_until(T, "the board ready again", ready);
    eprintln!(
        "partition: NotReady {not_ready_after:?} after the cut (--node-timeout 2s); the change applied during the cut ran {caught_up:?} after the link healed"
    );
}

/// The hub's open assignment streams: one per connected node.
fn connected(fleet: &Fleet) -> Option<u64> {
    let (code, body) = fleet
        .hub()
        .try_raw("GET", "/metrics", &[], b"")
        .ok()
        .map(|r| (r.0, r.2))?;
    (code == 200).then_some(())?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("harvester_watch_connections{kind=\"assignments\"} "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_hundred_boards_come_back_to_a_restarted_hub_spread_out_and_all_ready_within_two_leases() {
    use harvester_nodelet::node::{self, NodeConfig};
    const NODES: usize = 100;
    // The fleet's hub runs with --node-timeout 3s.
    let node_timeout = Duration::from_secs(3);
    let mut fleet = Fleet::new();
    let token = fleet.dir.path().join("herd-token");
    std::fs::write(&token, fleet.token(&["--uses", "100", "--ttl", "1h"])).unwrap();
    // The boards: real node agents, many in this one process (each its
    // own identity, data folder and connection), on simulated hardware.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for i in 0..NODES {
        let config = NodeConfig::simulated_follower(
            format!("herd-{i:03}"),
            fleet.dir.path().join(format!("herd-{i:03}")),
            format!("https://127.0.0.1:{}", fleet.port),
            token.clone(),
            Duration::from_secs(1),
        );
        let mut stopped = stopped.clone();
        runtime.spawn(async move {
            let _ = node::run(config, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
        });
    }
    let ready = |fleet: &Fleet| fleet.cli_ok(&["get", "nodes"]).matches(" Ready ").count();
    wait_until(Duration::from_secs(120), "all boards ready", || ready(&fleet) == NODES);
    wait_until(T, "all boards connected", || connected(&fleet) == Some(NODES as u64));

    // The hub dies and stays down long enough for every board's backoff to
    // reach its longest; then it comes back.
    fleet.kill_controller();
    std::thread::sleep(Duration::from_secs(8));
    fleet.start_controller();
    let started = std::time::Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(n) = connected(&fleet) {
            samples.push((started.elapsed(), n));
            if n == NODES as u64 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        samples.last().map(|s| s.1),
        Some(NODES as u64),
        "every board reconnected: {samples:?}"
    );
    // The most that came back within any one second.
    let peak = samples
        .iter()
        .map(|(t, n)| {
            let before = samples
                .iter()
                .rev()
                .find(|(u, _)| *u + Duration::from_secs(1) <= *t)
                .map_or(0, |s| s.1);
            n - before
        })
        .max()
        .unwrap();
    let all_back = samples.last().unwrap().0;
    eprintln!("herd: {NODES} boards reconnected over {all_back:?}, at most {peak} in one second");
    // Without jitter all would come back in the same instant.
    assert!(
        peak <= NODES as u64 * 3 / 4,
        "reconnections spread out: {peak} in one second; {samples:?}"
    );
    wait_until(2 * node_timeout, "all boards ready within two leases", || {
        ready(&fleet) == NODES
    });
    eprintln!("herd: all {NODES} Ready {:?} after the hub started", started.elapsed());
    let _ = stop.send(true);
    runtime.shutdown_timeout(Duration::from_secs(5));
}

#[test]
fn two_boards_in_one_process_each_post_only_their_own_log_lines() {
    use harvester_nodelet::node::{self, NodeConfig};
    use tracing::instrument::WithSubscriber;
    use tracing_subscriber::layer::SubscriberExt;
    const BOARDS: [&str; 2] = ["left", "right"];
    let fleet = Fleet::new();
    let token = fleet.dir.path().join("pair-token");
    std::fs::write(&token, fleet.token(&["--uses", "2", "--ttl", "1h"])).unwrap();
    // Their lines are tapped for the hub as the harvester binary taps its own.
    let tapped = tracing::Dispatch::new(tracing_subscriber::registry().with(harvester_nodelet::log_tap::LogTap));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for name in BOARDS {
        let config = NodeConfig::simulated_follower(
            name.into(),
            fleet.dir.path().join(name),
            format!("https://127.0.0.1:{}", fleet.port),
            token.clone(),
            Duration::from_secs(1),
        );
        let mut stopped = stopped.clone();
        let board = node::run(config, async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
        runtime.spawn(board.with_subscriber(tapped.clone()));
    }
    // Each board logs its name when it starts and when it enrols.
    // The lines the hub holds from a board (none before it enrols).
    let posted = |board: &str| {
        let out = fleet.cli(&["logs", &format!("node/{board}"), "--tail", "2000"]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let enrolled = |board: &str| format!("enrolled with the hub as node {board}:");
    wait_until(T, "both boards' enrolment lines at the hub", || {
        let all = posted("left") + &posted("right");
        BOARDS.iter().all(|b| all.contains(&enrolled(b)))
    });
    let _ = stop.send(true);
    runtime.shutdown_timeout(Duration::from_secs(5));
    for (board, other) in [("left", "right"), ("right", "left")] {
        let lines = posted(board);
        assert!(
            !lines.contains(&enrolled(other)) && !lines.contains(&format!("node={other} ")),
            "{board} posted a line of {other}:\n{lines}"
        );
        // Its start (logged before it enrolled) and its enrolment.
        assert!(
            lines.contains(&enrolled(board)) && lines.contains(&format!("hardware ready node={board} ")),
            "{board}'s own lines:\n{lines}"
        );
    }
}

/// Text with its terminal colours taken out.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split_whitespace().next().map(|v| v.trim_matches('"'))
}

/// What the client knows of one plugin after the storm: the last version
/// the hub acknowledged (none: no apply of it ever succeeded), and the
/// versions applied after it whose outcome the client never heard (the
/// apply failed: refused, or written with the answer lost).
#[derive(Debug, Default)]
struct Known {
    acknowledged: Option<usize>,
    unknown: Vec<usize>,
}

impl Known {
    /// Whether the hub holding version `v` (None: no such plugin) agrees
    /// with what the client was told: an acknowledged write is never lost,
    /// and only a write that was attempted may be there.
    fn allows(&self, v: Option<usize>) -> bool {
        match v {
            None => self.acknowledged.is_none(),
            Some(v) => self.acknowledged == Some(v) || self.unknown.contains(&v),
        }
    }
}

/// `harvester get plugin NAME -o json`: None when the hub has no such plugin.
fn plugin_if_any(fleet: &Fleet, name: &str) -> Option<Value> {
    let out = fleet.cli(&["get", "plugin", name, "-o", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains(&format!("Plugin {name} not found")) {
        return None;
    }
    assert!(
        out.status.success(),
        "harvester get plugin {name} -o json failed: {stderr}"
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// A random storm of applies, hub kills and restarts, node kills and a
/// registry going away, then the fleet healed: nothing acknowledged is lost
/// and every node runs only code whose signature it verified.
/// HARVESTER_CHAOS_SEED replays a run (every run prints its seed);
/// HARVESTER_CHAOS_SECONDS makes it longer or shorter (40 s by default).
/// The same seed takes the same actions; how many of them fit in the
/// time depends on the machine.
#[test]
fn chaos_kills_restarts_and_an_apply_storm_lose_nothing_and_run_only_verified_code() {
    use crate::signed::{keygen, push};
    let seed = std::env::var("HARVESTER_CHAOS_SEED").ok().map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        },
        |s| s.trim().parse().expect("HARVESTER_CHAOS_SEED is a number"),
    );
    eprintln!("chaos seed {seed} (HARVESTER_CHAOS_SEED={seed} replays it)");
    let mut rng = seed | 1;
    let mut next = move |n: u64| {
        // xorshift: enough to pick actions.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut fleet = Fleet::new();
    let mut registry = TestRegistry::start(&fleet.dir.path().join("registry"));
    let (key, public) = keygen(&fleet, "cosign");
    let probe = component("probe");
    let image = format!("{}/chaos/probe", registry.host());
    // Four signed versions; the layer each runs is its component's digest.
    let versions: Vec<(String, String)> = (0..4)
        .map(|v| {
            let bytes = variant(&probe, &format!("chaos{v}"));
            let digest = push(&fleet, &bytes, &format!("{image}:v{v}"), Some(&key));
            (digest, harvester_api::Digest::of(&bytes).to_string())
        })
        .collect();
    let trust = ["--trust-key", public.to_str().unwrap()];
    let nodes = ["c1", "c2", "c3"];
    let mut logs: std::collections::BTreeMap<&str, String> = Default::default();
    for n in nodes {
        fleet.start_node_with(n, "role=chaos", "leds", &trust);
    }
    let plugins = ["alpha", "beta", "gamma"];
    let manifest = |name: &str, v: usize| {
        let pin = 20 + plugins.iter().position(|p| *p == name).unwrap();
        format!(
            "apiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: {name}}}\nspec:\n  image: {image}:v{v}\n  digest: {}\n  nodeSelector: {{role: chaos}}\n  grants: {{gpio: {{pins: [{pin}]}}}}\n  tickInterval: 100ms\n",
            versions[v].0
        )
    };
    // Per plugin, what the client knows; a plugin never applied while the
    // hub was up has no entry (and must not exist).
    let mut known: std::collections::BTreeMap<&str, Known> = Default::default();
    let mut hub_up = true;
    let started = std::time::Instant::now();
    let mut actions = Vec::new();
    let length = std::env::var("HARVESTER_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(40), Duration::from_secs);
    while started.elapsed() < length {
        match next(20) {
            0..=9 => {
                let name = plugins[next(3) as usize];
                let v = next(4) as usize;
                if !hub_up {
                    // Nothing to send it to: not an attempt.
                    actions.push(format!("apply {name} v{v}: hub down, not sent"));
                } else {
                    let file = fleet.dir.path().join("chaos.yaml");
                    std::fs::write(&file, manifest(name, v)).unwrap();
                    let out = fleet.cli(&["apply", "-f", file.to_str().unwrap()]);
                    let entry = known.entry(name).or_default();
                    if out.status.success() {
                        *entry = Known {
                            acknowledged: Some(v),
                            unknown: Vec::new(),
                        };
                        actions.push(format!("apply {name} v{v}: acknowledged"));
                    } else {
                        entry.unknown.push(v);
                        let why = String::from_utf8_lossy(&out.stderr);
                        actions.push(format!("apply {name} v{v}: failed: {}", why.trim()));
                    }
                }
            }
            10..=12 => {
                if hub_up {
                    fleet.kill_controller();
                } else {
                    fleet.start_controller();
                }
                hub_up = !hub_up;
                actions.push(format!("hub up: {hub_up}"));
            }
            13..=16 => {
                let n = nodes[next(3) as usize];
                fleet.kill_node(n);
                // Read once it is dead: its last line is in, and the
                // next start empties the file.
                logs.entry(n)
                    .or_default()
                    .push_str(&std::fs::read_to_string(fleet.dir.path().join(format!("{n}.log"))).unwrap_or_default());
                if hub_up {
                    fleet.start_node_with(n, "role=chaos", "leds", &trust);
                    actions.push(format!("node {n} killed and started"));
                } else {
                    actions.push(format!("node {n} killed"));
                }
            }
            _ => {
                registry.stop();
                std::thread::sleep(Duration::from_millis(300 + next(1000)));
                registry.resume();
                actions.push("registry down for a while".into());
            }
        }
        std::thread::sleep(Duration::from_millis(100 + next(500)));
    }
    // Healed: everything up again.
    if !hub_up {
        fleet.start_controller();
    }
    for n in nodes {
        if fleet.node_port_opt(n).is_none() {
            fleet.start_node_with(n, "role=chaos", "leds", &trust);
        }
    }
    eprintln!("chaos: {} actions: {actions:#?}", actions.len());
    eprintln!("chaos: the client knows {known:?}");

    // Every acknowledged write is there (or one tried after it, whose
    // answer was lost); a plugin no apply ever succeeded for may be
    // missing; one never sent is missing.
    let mut expected = std::collections::BTreeMap::new();
    for name in plugins {
        let on_hub = plugin_if_any(&fleet, name).map(|p| {
            let digest = p["spec"]["digest"].as_str().unwrap().to_string();
            versions
                .iter()
                .position(|(d, _)| *d == digest)
                .unwrap_or_else(|| panic!("{name}: the hub has {digest}, which no apply sent"))
        });
        let k = known.get(name);
        assert!(
            k.map_or(on_hub.is_none(), |k| k.allows(on_hub)),
            "{name}: the hub has {}; the client knows {k:?} (seed {seed})",
            on_hub.map_or("no such plugin".to_string(), |v| format!("v{v}"))
        );
        if let Some(v) = on_hub {
            expected.insert(name, v);
        }
    }
    eprintln!("chaos: the hub has {expected:?}");
    // Every node runs exactly what the hub has, and nothing else. On a
    // timeout, say what differed last.
    let converged = |differs: &mut String| -> bool {
        differs.clear();
        let mut want = std::collections::BTreeMap::new();
        for (name, v) in &expected {
            let p = fleet.plugin(name);
            let generation = p["metadata"]["generation"].as_u64().unwrap();
            want.insert(*name, (generation, versions[*v].1.as_str()));
        }
        for n in nodes {
            let Some(s) = status(fleet.node_port(n)) else {
                differs.push_str(&format!("{n}: no status\n"));
                continue;
            };
            let on: Vec<Value> = s["plugins"].as_array().cloned().unwrap_or_default();
            for (name, (generation, component)) in &want {
                let x = on.iter().find(|x| x["name"] == *name);
                let runs = x.is_some_and(|x| {
                    x["phase"] == "Running"
                        && x["generation"].as_u64() == Some(*generation)
                        && x["componentDigest"] == *component
                });
                if !runs {
                    differs.push_str(&format!(
                        "{n}: {name} should run generation {generation} ({component}); it has {}\n",
                        x.map_or("nothing".to_string(), Value::to_string)
                    ));
                }
            }
            for x in &on {
                if !x["name"].as_str().is_some_and(|name| want.contains_key(name)) {
                    differs.push_str(&format!("{n}: runs {x}, which the hub does not have\n"));
                }
            }
        }
        differs.is_empty()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut differs = String::new();
    while !converged(&mut differs) {
        if std::time::Instant::now() > deadline {
            // What the nodes said went wrong, in this life and earlier ones.
            let mut said = String::new();
            for n in nodes {
                let mut text = logs.get(n).cloned().unwrap_or_default();
                text.push_str(&std::fs::read_to_string(fleet.dir.path().join(format!("{n}.log"))).unwrap_or_default());
                let text = plain(&text);
                let errors: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
                    .collect();
                said.push_str(&format!(
                    "{n}:\n{}\n",
                    errors[errors.len().saturating_sub(15)..].join("\n")
                ));
            }
            panic!("the nodes never ran what the hub has within 120 s (seed {seed}):\n{differs}\n{said}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Every instantiation on every node was of an artifact whose signature
    // that node verified with the trusted key.
    for n in nodes {
        let mut text = logs.remove(n).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(fleet.dir.path().join(format!("{n}.log"))).unwrap_or_default());
        let text = plain(&text);
        let verified: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| l.contains("signature verified"))
            .filter_map(|l| field(l, "artifact"))
            .collect();
        let mut started = 0;
        for line in text
            .lines()
            .filter(|l| l.contains(" started ") || l.contains("swapped in"))
        {
            let Some(component) = field(line, "component") else {
                continue;
            };
            started += 1;
            let (artifact, _) = versions
                .iter()
                .find(|(_, layer)| layer == component)
                .unwrap_or_else(|| panic!("{n} ran {component}, which no signed version is: {line}"));
            assert!(
                verified.contains(artifact.as_str()),
                "{n} ran {component} of {artifact} without having verified its signature (seed {seed})"
            );
        }
        // A node runs every plugin the hub has: it started one at least.
        assert!(
            expected.is_empty() || started > 0,
            "{n} started something (seed {seed})"
        );
    }

    // Nothing outlives the test.
    let dir = fleet.dir.path().to_path_buf();
    drop(registry);
    drop(fleet);
    let left = std::process::Command::new("pgrep")
        .args(["-f", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
