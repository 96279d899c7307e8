//! The control plane, end to end: a real controller and real nodelets as
//! processes on loopback, driven with the real CLI.

use crate::support::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub const T: Duration = Duration::from_secs(60);

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The hub dashboard's port.
    pub dashboard: u16,
    controller: Option<Proc>,
    /// Extra arguments for the controller.
    controller_args: Vec<String>,
    nodes: Vec<(String, u16, Proc)>,
    probe: PathBuf,
    /// A join token with uses for every node the test starts.
    join_token: Option<PathBuf>,
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet::with_controller_args(&[])
    }

    pub fn with_controller_args(args: &[&str]) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe.wasm");
        std::fs::write(&probe, component("probe").as_slice()).unwrap();
        let mut f = Fleet {
            port: free_port(),
            dashboard: free_port(),
            dir,
            controller: None,
            controller_args: args.iter().map(|a| a.to_string()).collect(),
            nodes: Vec::new(),
            probe,
            join_token: None,
        };
        // Ports are picked free, then bound by the controller: a client
        // socket of another test may take one in between. A first start
        // that cannot listen starts over on other ports.
        for _ in 0..5 {
            if f.try_start_controller() {
                return f;
            }
            let _ = std::fs::remove_dir_all(f.dir.path().join("controller"));
            f.port = free_port();
            f.dashboard = free_port();
        }
        panic!("the controller never started: {}", f.controller_log());
    }

    fn controller_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }

    /// Starts the controller on the fleet's data and waits until it answers.
    pub fn start_controller(&mut self) {
        assert!(
            self.try_start_controller(),
            "the controller exited: {}",
            self.controller_log()
        );
    }

    /// Whether the controller came up (false: it exited, e.g. its port
    /// was taken).
    fn try_start_controller(&mut self) -> bool {
        let child = Command::new(env!("CARGO_BIN_EXE_harvester"))
            .args(["controller", "--data"])
            .arg(self.dir.path().join("controller"))
            .args(["--listen", &format!("127.0.0.1:{}", self.port), "--node-timeout", "3s"])
            .args(["--dashboard", &format!("127.0.0.1:{}", self.dashboard)])
            .args(["--timezone", "America/New_York"])
            .args(&self.controller_args)
            // The hub adds its admin to the local user's client
            // configuration on first start: this test's, not the machine's.
            .env("XDG_CONFIG_HOME", self.dir.path().join("config-home"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("controller.log")).unwrap())
            .spawn()
            .unwrap();
        self.controller = Some(Proc(child));
        let admin = self.dir.path().join("controller/admin.yaml");
        let mut exited = false;
        wait_until(T, "controller up", || {
            exited = self
                .controller
                .as_mut()
                .is_some_and(|c| c.0.try_wait().ok().flatten().is_some());
            exited
                || (admin.exists()
                    && self
                        .hub()
                        .try_raw("GET", "/healthz", &[], b"")
                        .is_ok_and(|r| r.0 == 200))
        });
        if exited {
            self.controller = None;
        }
        !exited
    }

    /// The hub's API as its admin.
    pub fn hub(&self) -> Hub {
        Hub::admin(self.port, &self.dir.path().join("controller"))
    }

    /// The dashboard, over TLS with the hub CA.
    pub fn dashboard_hub(&self) -> Hub {
        self.hub().anonymous().at(self.dashboard)
    }

    /// The API as node `name` (its certificate).
    pub fn hub_as_node(&self, name: &str) -> Hub {
        self.hub().as_node(&self.dir.path().join(name))
    }

    /// A new join token: `harvester token create` with these arguments.
    pub fn token(&self, args: &[&str]) -> String {
        let mut all = vec!["token", "create"];
        all.extend_from_slice(args);
        self.cli_ok(&all).trim().to_string()
    }

    /// The file holding the fleet's join token for the nodes it starts.
    fn join_token_file(&mut self) -> PathBuf {
        if let Some(f) = &self.join_token {
            return f.clone();
        }
        let file = self.dir.path().join("join-token");
        std::fs::write(&file, self.token(&["--uses", "100", "--ttl", "1h"])).unwrap();
        self.join_token = Some(file.clone());
        file
    }

    pub fn kill_controller(&mut self) {
        // Drop kills with SIGKILL and reaps.
        self.controller = None;
    }

    /// SIGKILLs the controller and starts it again on the same data.
    pub fn restart_controller(&mut self) {
        self.kill_controller();
        self.start_controller();
    }

    /// A node for local (unsigned) components uploaded through the controller.
    pub fn start_node(&mut self, name: &str, labels: &str, devices: &str) -> u16 {
        self.start_node_with(name, labels, devices, &["--allow-unsigned"])
    }

    pub fn start_node_with(&mut self, name: &str, labels: &str, devices: &str, extra: &[&str]) -> u16 {
        let port = free_port();
        // A board proposes its labels once; role labels come only from an
        // admin, through the join token.
        let token = if labels.contains(harvester_api::resources::NODE_ROLE_PREFIX) {
            let file = self.dir.path().join(format!("{name}.join-token"));
            if !file.exists() {
                std::fs::write(&file, self.token(&["--uses", "1", "--ttl", "1h", "--labels", labels])).unwrap();
            }
            file
        } else {
            self.join_token_file()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_harvester"))
            .args(["nodelet", "--name", name, "--labels", labels, "--sim-devices", devices])
            .args(extra)
            .args(["--controller", &format!("https://127.0.0.1:{}", self.port)])
            .arg("--join-token-file")
            .arg(&token)
            .args(["--command-listen", "127.0.0.1:0"])
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--heartbeat",
                "500ms",
                "--data",
            ])
            .arg(self.dir.path().join(name))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap();
        self.nodes.retain(|n| n.0 != name);
        self.nodes.push((name.to_string(), port, Proc(child)));
        wait_until(T, "nodelet up", || status(port).is_some());
        port
    }

    pub fn kill_node(&mut self, name: &str) {
        self.nodes.retain(|n| n.0 != name);
    }

    pub fn node_port_opt(&self, name: &str) -> Option<u16> {
        self.nodes.iter().find(|n| n.0 == name).map(|n| n.1)
    }

    pub fn node_port(&self, name: &str) -> u16 {
        self.nodes.iter().find(|n| n.0 == name).unwrap().1
    }

    pub fn controller_pid(&self) -> u32 {
        self.controller.as_ref().expect("a running controller").0.id()
    }

    pub fn node_pid(&self, name: &str) -> u32 {
        self.nodes.iter().find(|n| n.0 == name).unwrap().2.0.id()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_env(args, &[])
    }

    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.cli_command(args).envs(env.iter().copied()).output().unwrap()
    }

    /// The CLI started, not waited for: to watch what happens meanwhile.
    pub fn cli_spawn(&self, args: &[&str]) -> std::process::Child {
        self.cli_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_harvester"));
        c.args(args)
            .env("HARVESTER_CONFIG", self.dir.path().join("controller/admin.yaml"))
            .env_remove("HARVESTER_SERVER");
        c
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "harvester {args:?} failed: {stderr}");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// A Plugin manifest running the probe component.
    pub fn plugin_yaml(&self, name: &str, selector: &str, grants: &str, version: &str) -> String {
        format!(
            "apiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: {name}}}\nspec:\n  image: {}\n  nodeSelector: {{{selector}}}\n  grants: {grants}\n  config: {{VERSION: \"{version}\"}}\n  tickInterval: 100ms\n",
            self.probe.display()
        )
    }

    pub fn apply(&self, yaml: &str) -> String {
        let file = self.dir.path().join("manifest.yaml");
        std::fs::write(&file, yaml).unwrap();
        self.cli_ok(&["apply", "-f", file.to_str().unwrap()])
    }

    pub fn plugin(&self, name: &str) -> Value {
        serde_json::from_str(&self.cli_ok(&["get", "plugin", name, "-o", "json"])).unwrap()
    }
}

/// (generation, phase) of `plugin` as the node itself reports it.
pub fn on_node(port: u16, plugin: &str) -> Option<(u64, String)> {
    let s = status(port)?;
    s["plugins"].as_array()?.iter().find(|p| p["name"] == plugin).map(|p| {
        (
            p["generation"].as_u64().unwrap_or(0),
            p["phase"].as_str().unwrap_or_default().to_string(),
        )
    })
}

pub fn runs(port: u16, plugin: &str, generation: u64) -> bool {
    on_node(port, plugin) == Some((generation, "Running".to_string()))
}

#[test]
fn plugins_follow_selectors_and_hardware_and_roll_out_changes_and_deletes() {
    let mut fleet = Fleet::new();
    let pi4 = fleet.start_node("pi4", "role=sensor,board=pi4", "dht22,bme680,leds,buzzer");
    let hub = fleet.start_node_with(
        "hub",
        "node-role.harvester.dev/hub=",
        "leds",
        &["--plugin-memory", "100Mi"],
    );
    wait_until(T, "both nodes ready", || {
        fleet.cli_ok(&["get", "nodes"]).matches(" Ready ").count() == 2
    });

    // Heartbeats (every 500 ms here) renew a lease: the stored Node, and
    // its watchers, hear only of changes.
    let node_now = || -> (u64, u64) {
        let n: Value = serde_json::from_str(&fleet.cli_ok(&["get", "node", "pi4", "-o", "json"])).unwrap();
        let at = &n["status"]["lastHeartbeat"];
        let ms = at
            .as_u64()
            .unwrap_or_else(|| harvester_api::time::parse_rfc3339(at.as_str().unwrap()).unwrap());
        (n["metadata"]["resourceVersion"].as_u64().unwrap(), ms)
    };
    let mut steady = None;
    wait_until(T, "a steady node's object unchanged over 2 s of heartbeats", || {
        let (rv, beat) = node_now();
        std::thread::sleep(Duration::from_secs(2));
        let (rv2, beat2) = node_now();
        steady = Some((beat, beat2));
        rv == rv2
    });
    let (beat, beat2) = steady.unwrap();
    assert!(beat2 > beat, "the heartbeat moved on: {beat} then {beat2}");

    // Selected by label: only the sensor node.
    let out = fleet.apply(&fleet.plugin_yaml("probe", "role: sensor", "{gpio: {pins: [17]}}", "1"));
    assert!(out.contains("plugin/probe created (generation 1, sha256:"), "{out}");
    fleet.cli_ok(&["rollout", "status", "plugin/probe", "--timeout", "60s"]);
    assert!(runs(pi4, "probe", 1));
    assert_eq!(on_node(hub, "probe"), None);

    // Selected by hardware: the buzzer grant fits only the node with a buzzer.
    fleet.apply(&fleet.plugin_yaml("alarm", "", "{gpio: {pins: [27]}, buzzer: {}}", "1"));
    wait_until(T, "alarm on pi4", || runs(pi4, "alarm", 1));
    let alarm = fleet.plugin("alarm");
    assert_eq!(
        alarm["status"]["nodes"].as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["pi4"]
    );
    assert_eq!(on_node(hub, "alarm"), None);

    // A config change is a new generation, swapped in on the node; same process.
    let pid = fleet.node_pid("pi4");
    let out = fleet.apply(&fleet.plugin_yaml("probe", "role: sensor", "{gpio: {pins: [17]}}", "2"));
    assert!(out.contains("plugin/probe configured (generation 2"), "{out}");
    let out = fleet.cli_ok(&["rollout", "status", "plugin/probe"]);
    assert!(out.contains("generation 2 runs on 1/1 nodes"), "{out}");
    assert!(runs(pi4, "probe", 2));
    assert_eq!(fleet.node_pid("pi4"), pid);
    // Re-applying the same manifest changes nothing.
    let out = fleet.apply(&fleet.plugin_yaml("probe", "role: sensor", "{gpio: {pins: [17]}}", "2"));
    assert!(out.contains("plugin/probe unchanged (generation 2"), "{out}");

    // Status and conditions as `get` and `describe` show them.
    let table = fleet.cli_ok(&["get", "plugins", "-o", "wide"]);
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("probe") && l.contains(" True ") && l.contains("1/1")),
        "{table}"
    );
    let describe = fleet.cli_ok(&["describe", "plugin", "probe"]);
    assert!(
        describe.contains("AllNodesRunning") && describe.contains("pi4"),
        "{describe}"
    );
    // A local component carries no signature: the node runs it only because
    // of --allow-unsigned, and every status says so.
    assert!(describe.contains("UnsignedAllowed"), "{describe}");
    assert_eq!(fleet.plugin("probe")["status"]["nodes"]["pi4"]["reason"], "Unsigned");
    // The hub's board shows its role, as kubectl shows a node's.
    let nodes = fleet.cli_ok(&["get", "nodes"]);
    let header: Vec<&str> = nodes.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[..3], ["NAME", "STATUS", "ROLES"], "{nodes}");
    let role_of = |name: &str| {
        let line = nodes.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(2).unwrap().to_string()
    };
    assert_eq!(
        (role_of("hub"), role_of("pi4")),
        ("hub".into(), "<none>".into()),
        "{nodes}"
    );
    let described = fleet.cli_ok(&["describe", "node", "hub"]);
    assert!(described.contains("Roles:         hub"), "{described}");
    let labelled = fleet.cli_ok(&["get", "nodes", "-l", "node-role.harvester.dev/hub", "-o", "json"]);
    let v: Value = serde_json::from_str(&labelled).unwrap();
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hub"]);

    // Memory: a board gets no more plugin memory than it reports having.
    let hub_node: Value = serde_json::from_str(&fleet.cli_ok(&["get", "node", "hub", "-o", "json"])).unwrap();
    assert_eq!(hub_node["status"]["memory"]["allocatable"], "100Mi", "{hub_node}");
    let big = fleet.plugin_yaml("big", "", "{gpio: {pins: [5]}}", "1") + "  limits: {memory: 128Mi}\n";
    fleet.apply(&big);
    wait_until(T, "big on pi4", || runs(pi4, "big", 1));
    let plugin = fleet.plugin("big");
    let degraded = plugin["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap();
    assert_eq!(degraded["reason"], "InsufficientMemory", "{degraded}");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("node hub has 100Mi for plugins") && message.contains("asks for 128Mi"),
        "{message}"
    );
    assert_eq!(on_node(hub, "big"), None, "never placed where it does not fit");
    fleet.cli_ok(&["delete", "plugin", "big"]);

    // Delete: it stops on the node.
    let out = fleet.cli_ok(&["delete", "plugin", "probe"]);
    assert!(out.contains("plugin/probe deleted"));
    wait_until(T, "probe stopped", || on_node(pi4, "probe").is_none());
    assert!(runs(pi4, "alarm", 1), "other plugins are untouched");
    let missing = fleet.cli(&["get", "plugin", "probe"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("Plugin probe not found"));
}

#[test]
fn invalid_manifests_are_rejected_whole_naming_the_document() {
    let fleet = Fleet::new();
    let good = fleet.plugin_yaml("good", "", "{gpio: {pins: [17]}}", "1");
    let bad = fleet.plugin_yaml("bad", "", "{gpio: {pins: [4, 41]}}", "1");
    let file = fleet.dir.path().join("two.yaml");
    std::fs::write(&file, format!("{good}---\n{bad}")).unwrap();
    let out = fleet.cli(&["apply", "-f", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("document 2 (Plugin bad): spec.grants.gpio.pins[1]: pin 41 is not a valid BCM GPIO (0-27)"),
        "{stderr}"
    );
    assert!(
        !fleet.cli(&["get", "plugin", "good"]).status.success(),
        "nothing was applied"
    );

    // Malformed YAML: 400 with the parser's line and column.
    let (code, body) = fleet
        .hub()
        .call("POST", "/api/v1alpha1/apply", "kind: Plugin\nmetadata: {name: [\n");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("line"), "{body}");
    // Unknown fields are rejected, not ignored.
    let typo = good.replace("nodeSelector", "nodeSelecter");
    std::fs::write(&file, typo).unwrap();
    let out = fleet.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `nodeSelecter`"));

    // A local path the CLI did not upload is refused: the hub never reads
    // a file from its own disk and never serves it back.
    let (code, body) = fleet.hub().call(
        "POST",
        "/api/v1alpha1/apply",
        "apiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {name: passwd}\nspec: {image: /etc/passwd}\n",
    );
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("spec.image \\\"/etc/passwd\\\"") && body.contains("harvester apply -f"),
        "{body}"
    );
    let digest = harvester_api::Digest::of(&std::fs::read("/etc/passwd").unwrap());
    let (code, _) = fleet.hub().call("GET", &format!("/api/v1alpha1/blobs/{digest}"), "");
    assert_eq!(code, 404, "the file was not stored");
}

#[test]
fn a_stale_update_gets_409_and_changes_nothing() {
    let fleet = Fleet::new();
    fleet.apply(&fleet.plugin_yaml("p", "", "{gpio: {pins: [17]}}", "1"));
    let old = fleet.plugin("p");
    fleet.apply(&fleet.plugin_yaml("p", "", "{gpio: {pins: [17]}}", "2"));
    let mut stale = old.clone();
    stale["spec"]["config"]["VERSION"] = "3".into();
    let (code, body) = fleet.hub().call("PUT", "/api/v1alpha1/plugins/p", &stale.to_string());
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("was changed by someone else"), "{body}");
    let now = fleet.plugin("p");
    assert_eq!(now["spec"]["config"]["VERSION"], "2");
    assert_eq!(now["metadata"]["generation"], 2);

    // With the current resourceVersion the same update goes through.
    let mut fresh = now.clone();
    fresh["spec"]["config"]["VERSION"] = "3".into();
    let (code, body) = fleet.hub().call("PUT", "/api/v1alpha1/plugins/p", &fresh.to_string());
    assert_eq!(code, 200, "{body}");
    assert_eq!(fleet.plugin("p")["metadata"]["generation"], 3);
}

/// Reads NDJSON watch events from a raw connection until `done` says so.
fn read_events(hub: &Hub, from: u64, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    use std::io::{BufRead, BufReader};
    let mut s = hub.connect().unwrap();
    hub.send(
        &mut s,
        "GET",
        &format!("/api/v1alpha1/watch?resourceVersion={from}"),
        &[],
        b"",
    );
    let mut events = Vec::new();
    for line in BufReader::new(s).lines() {
        let line = line.unwrap();
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v.get("resourceVersion").is_some()
        {
            let stop = done(&v);
            events.push(v);
            if stop {
                break;
            }
        }
    }
    // The connection drops here, mid-stream.
    events
}

#[test]
fn a_watch_resumed_after_a_dropped_connection_misses_no_event() {
    let fleet = Fleet::new();
    for i in 0..3 {
        fleet.apply(&fleet.plugin_yaml(&format!("w{i}"), "", "{gpio: {pins: [17]}}", "1"));
    }
    let added = |name: &'static str| move |e: &Value| e["type"] == "ADDED" && e["object"]["metadata"]["name"] == name;
    let first = read_events(&fleet.hub(), 0, added("w1"));
    let last = first.last().unwrap()["resourceVersion"].as_u64().unwrap();
    // Changes made while nobody watches.
    for i in 3..6 {
        fleet.apply(&fleet.plugin_yaml(&format!("w{i}"), "", "{gpio: {pins: [17]}}", "1"));
    }
    let rest = read_events(&fleet.hub(), last, added("w5"));
    let rvs: Vec<u64> = first
        .iter()
        .chain(&rest)
        .map(|e| e["resourceVersion"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (rvs[0]..rvs[0] + rvs.len() as u64).collect();
    assert_eq!(rvs, expected, "every revision exactly once, in order");
    let created: Vec<&str> = first
        .iter()
        .chain(&rest)
        .filter(|e| e["type"] == "ADDED")
        .filter_map(|e| e["object"]["metadata"]["name"].as_str())
        .collect();
    assert_eq!(created, ["w0", "w1", "w2", "w3", "w4", "w5"]);
}

fn count_running(port: u16) -> usize {
    status(port).map_or(0, |s| {
        s["plugins"]
            .as_array()
            .map_or(0, |ps| ps.iter().filter(|p| p["phase"] == "Running").count())
    })
}

#[test]
fn everything_converges_after_sigkill_of_the_controller_and_the_nodelets() {
    let mut fleet = Fleet::new();
    let mut pi4 = fleet.start_node("pi4", "role=sensor", "leds");

    // A stream of applies, the controller killed in the middle of it.
    let mut acknowledged = Vec::new();
    for i in 0..12 {
        if i == 8 {
            fleet.kill_controller();
        }
        let file = fleet.dir.path().join(format!("k{i}.yaml"));
        std::fs::write(
            &file,
            // One pin each: plugins on one node may not share one.
            fleet.plugin_yaml(&format!("k{i}"), "", &format!("{{gpio: {{pins: [{}]}}}}", 5 + i), "1"),
        )
        .unwrap();
        if fleet.cli(&["apply", "-f", file.to_str().unwrap()]).status.success() {
            acknowledged.push(format!("k{i}"));
        }
    }
    assert_eq!(acknowledged.len(), 8);

    // The node keeps running what it had while the controller is down, and
    // after its own SIGKILL and restart it runs it again from disk.
    wait_until(T, "node ran its assignments before the kill", || {
        count_running(pi4) >= 1
    });
    let before = count_running(pi4);
    fleet.kill_node("pi4");
    pi4 = fleet.start_node("pi4", "role=sensor", "leds");
    wait_until(T, "node runs its last assignments offline", || {
        count_running(pi4) >= before
    });

    fleet.start_controller();
    for name in &acknowledged {
        assert!(
            fleet.cli(&["get", "plugin", name]).status.success(),
            "{name} was acknowledged but is gone"
        );
    }
    wait_until(T, "node converges on every acknowledged plugin", || {
        count_running(pi4) == acknowledged.len()
    });
    for name in &acknowledged {
        fleet.cli_ok(&["rollout", "status", &format!("plugin/{name}"), "--timeout", "30s"]);
    }
    let port = fleet.node_port("pi4");
    assert_eq!(port, pi4);
}

#[test]
fn a_node_that_stops_reporting_is_marked_not_ready_and_keeps_its_plugins() {
    let mut fleet = Fleet::new();
    fleet.start_node("edge", "role=sensor", "leds");
    fleet.apply(&fleet.plugin_yaml("p", "role: sensor", "{gpio: {pins: [17]}}", "1"));
    fleet.cli_ok(&["rollout", "status", "plugin/p"]);
    // Its plugin emits telemetry every 100 ms; heartbeats must go on regardless.
    std::thread::sleep(Duration::from_secs(4));
    let nodes = fleet.cli_ok(&["get", "nodes"]);
    assert!(nodes.contains(" Ready ") && !nodes.contains("NotReady"), "{nodes}");
    fleet.kill_node("edge");
    wait_until(T, "edge NotReady", || {
        fleet.cli_ok(&["get", "nodes"]).contains("NotReady")
    });
    let p = fleet.plugin("p");
    assert!(
        p["status"]["nodes"]["edge"].is_object(),
        "the assignment stays put: {p}"
    );
    let degraded = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("NodeNotReady"))
    );
    // Back again: Ready, and the plugin is still there.
    let port = fleet.start_node("edge", "role=sensor", "leds");
    wait_until(T, "edge Ready again", || {
        !fleet.cli_ok(&["get", "nodes"]).contains("NotReady")
    });
    wait_until(T, "plugin running", || runs(port, "p", 1));
}

/// Commands and logs through the hub, and what the hub refuses: unknown
/// plugins and nodes, a node that is gone, and dashboard writes that do not
/// come from the dashboard's own page.
#[test]
fn commands_and_logs_travel_through_the_hub_and_bad_requests_are_refused() {
    let mut fleet = Fleet::new();
    let pi4 = fleet.start_node("pi4", "role=sensor", "leds");
    fleet.apply(&fleet.plugin_yaml("probe", "role: sensor", "{gpio: {pins: [17]}}", "1"));
    fleet.cli_ok(&["rollout", "status", "plugin/probe", "--timeout", "60s"]);
    assert!(runs(pi4, "probe", 1));

    // A command runs in the plugin on the node and the answer comes back.
    let out = fleet.cli_ok(&["exec", "plugin/probe", "gpio"]);
    assert_eq!(out.trim(), "pi4: wrote GPIO17");
    let out = fleet.cli_ok(&["exec", "plugin/probe", "ticks", "--node", "pi4"]);
    assert!(
        out.trim().strip_prefix("pi4: ").unwrap().parse::<u64>().is_ok(),
        "{out}"
    );
    let api = fleet.hub();
    let (code, _, body) = api.raw("POST", "/api/v1alpha1/plugins/nope/commands/x", &[], b"");
    assert_eq!(code, 404, "{}", String::from_utf8_lossy(&body));
    let (code, _, body) = api.raw("POST", "/api/v1alpha1/plugins/probe/commands/x?node=hub", &[], b"");
    assert_eq!(code, 409);
    assert!(String::from_utf8_lossy(&body).contains("not running on node hub"));
    let (code, _, body) = api.raw("POST", "/api/v1alpha1/plugins/probe/commands/x", &[], b"[1]");
    assert_eq!(code, 400);
    assert!(String::from_utf8_lossy(&body).contains("arguments must be a JSON object"));
    let (code, _, _) = api.raw(
        "POST",
        "/api/v1alpha1/nodes/ghost/live",
        &[("content-type", "application/json")],
        b"{}",
    );
    assert_eq!(code, 404, "reports from unregistered nodes are refused");

    // The node's lines and its plugin's, with the plugin named.
    wait_until(T, "probe lines at the hub", || {
        fleet
            .cli_ok(&["logs", "plugin/probe", "--timezone", "UTC"])
            .contains("[probe]")
    });
    let lines = fleet.cli_ok(&["logs", "node/pi4", "--timezone", "UTC"]);
    assert!(lines.contains("[nodelet]") && lines.contains(" UTC pi4 "), "{lines}");
    // Without --timezone, the hub's zone (its --timezone), as its dashboard.
    let lines = fleet.cli_ok(&["logs", "node/pi4", "--tail", "3"]);
    assert!(lines.contains(" EST pi4 ") || lines.contains(" EDT pi4 "), "{lines}");
    let out = fleet.cli(&["logs", "node/ghost"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ghost"));
    let out = fleet.cli(&["logs", "pi4"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected node/NAME or plugin/NAME"));

    // The dashboard: its own assets with a strict policy; a sign-in page
    // for who has no session; only its own names as Host; writes only from
    // its own page, only the buzzer's commands, only for operators.
    let dash = fleet.dashboard_hub();
    let (code, head, body) = dash.raw("GET", "/", &[], b"");
    assert_eq!(code, 200);
    assert!(
        head.to_lowercase()
            .contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(String::from_utf8_lossy(&body).contains("/assets/signin.js"));
    assert_eq!(dash.raw("GET", "/api/state", &[], b"").0, 401, "no session");
    let (code, _, body) = dash.raw("GET", "/", &[("Host", "evil.example:3000")], b"");
    assert_eq!(code, 421, "a foreign Host (DNS rebinding)");
    assert!(String::from_utf8_lossy(&body).contains("not a name of this hub"));
    let own = format!("https://127.0.0.1:{}", dash.port);
    let page = [
        ("X-Harvester", "1"),
        ("Origin", own.as_str()),
        ("Content-Type", "application/json"),
    ];
    let sign_in = |token: &str| {
        let body = serde_json::json!({ "token": token }).to_string();
        let (code, head, answer) = dash.raw("POST", "/api/session", &page, body.as_bytes());
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&answer));
        let cookie = head
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .expect("a session cookie")
            .to_string();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("Secure") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        cookie.split(';').next().unwrap().to_string()
    };
    let body = serde_json::json!({ "token": format!("nobody.{}", "0".repeat(64)) }).to_string();
    assert_eq!(dash.raw("POST", "/api/session", &page, body.as_bytes()).0, 401);
    let body = serde_json::json!({ "token": "x" }).to_string();
    assert_eq!(
        dash.raw(
            "POST",
            "/api/session",
            &[("Content-Type", "application/json")],
            body.as_bytes()
        )
        .0,
        403,
        "signing in needs the page's header too"
    );
    let viewer = fleet.cli_ok(&["user", "create", "looker", "--role", "viewer"]);
    let looker = sign_in(viewer.trim());
    let (code, _, body) = dash.raw(
        "POST",
        "/api/plugins/buzzer/commands/short",
        &[("X-Harvester", "1"), ("Origin", &own), ("Cookie", &looker)],
        b"",
    );
    assert_eq!(code, 403, "a viewer");
    assert!(String::from_utf8_lossy(&body).contains("needs the operator role"));
    let operator = fleet.cli_ok(&["user", "create", "presser", "--role", "operator"]);
    let presser = sign_in(operator.trim());
    let (code, _, _) = dash.raw(
        "POST",
        "/api/plugins/buzzer/commands/short",
        &[("Cookie", &presser)],
        b"",
    );
    assert_eq!(code, 403, "no page header");
    let (code, _, _) = dash.raw(
        "POST",
        "/api/plugins/buzzer/commands/short",
        &[
            ("X-Harvester", "1"),
            ("Origin", "https://evil.example"),
            ("Cookie", &presser),
        ],
        b"",
    );
    assert_eq!(code, 403, "another site's page");
    let (code, _, body) = dash.raw(
        "POST",
        "/api/plugins/probe/commands/gpio",
        &[("X-Harvester", "1"), ("Origin", &own), ("Cookie", &presser)],
        b"",
    );
    assert_eq!(code, 403, "not a dashboard command");
    assert!(String::from_utf8_lossy(&body).contains("does not send"));
    let (code, _, body) = dash.raw("GET", "/api/logs?node=pi4&tail=5", &[("Cookie", &looker)], b"");
    assert_eq!(code, 200);
    let lines: Value = serde_json::from_slice(&body).unwrap();
    assert!(!lines.as_array().unwrap().is_empty() && lines.as_array().unwrap().len() <= 5);
    // Deleting the user ends its session at once.
    fleet.cli_ok(&["user", "delete", "looker"]);
    assert_eq!(dash.raw("GET", "/api/state", &[("Cookie", &looker)], b"").0, 401);

    // A node that is gone does not answer; the hub says so within its
    // deadline instead of hanging (a killed node's stream is noticed on the
    // next write, so the first command may wait out the 5 s).
    fleet.kill_node("pi4");
    let out = fleet.cli(&["exec", "plugin/probe", "gpio"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("not connected") || said.contains("did not answer within 5s"),
        "{said}"
    );
}

/// Two plugins on one node may not share an output pin or an LED: refused
/// at apply when a node both would run on exists, and held back by the
/// reconciler (the older plugin keeps it) when such a node appears later.
#[test]
fn plugins_may_not_share_a_pin_or_an_led_on_a_node() {
    let mut fleet = Fleet::new();
    let pi4 = fleet.start_node("pi4", "role=sensor", "leds");
    fleet.apply(&fleet.plugin_yaml(
        "first",
        "role: sensor",
        "{gpio: {pins: [5]}, leds: {indices: [1, 2]}}",
        "1",
    ));
    fleet.cli_ok(&["rollout", "status", "plugin/first", "--timeout", "60s"]);

    let file = fleet.dir.path().join("clash.yaml");
    std::fs::write(
        &file,
        fleet.plugin_yaml("second", "", "{gpio: {pins: [6]}, leds: {indices: [2]}}", "1"),
    )
    .unwrap();
    let out = fleet.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("LED 2 is already granted to plugin first on node pi4"),
        "{err}"
    );
    let out = fleet.cli(&["get", "plugin", "second"]);
    assert!(!out.status.success(), "nothing was applied");
    std::fs::write(
        &file,
        fleet.plugin_yaml("pins", "", "{gpio: {pins: [17]}}", "1")
            + "---\n"
            + &fleet.plugin_yaml("pins2", "", "{gpio: {pins: [17, 27]}}", "1"),
    )
    .unwrap();
    let out = fleet.cli(&["apply", "-f", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("GPIO pin 17 is already granted to plugin pins on node pi4"),
        "{err}"
    );

    // No node for them yet: both are accepted; the node that comes later
    // runs the older one, and the newer one says why it does not run there.
    fleet.apply(&fleet.plugin_yaml("older", "role: lab", "{gpio: {pins: [20]}, leds: {indices: [5]}}", "1"));
    fleet.apply(&fleet.plugin_yaml(
        "newer",
        "role: lab",
        "{gpio: {pins: [21]}, leds: {indices: [5, 6]}}",
        "1",
    ));
    let lab = fleet.start_node("lab", "role=lab", "leds");
    wait_until(T, "older runs on lab", || runs(lab, "older", 1));
    wait_until(T, "newer reports the conflict", || {
        let p = fleet.plugin("newer");
        p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == "Degraded"
                    && c["reason"] == "GrantConflict"
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("LED 5 is already granted to plugin older on node lab"))
            })
        })
    });
    assert_eq!(on_node(lab, "newer"), None);
    assert!(runs(pi4, "first", 1));
}

/// Label selectors as kubectl users type them, against a real hub: every
/// form, the refusals, and a Plugin placed by `nodeAffinity`.
#[test]
fn selectors_answer_as_kubectl_users_expect() {
    let mut fleet = Fleet::new();
    fleet.start_node("pi4", "board=pi4", "leds");
    let zero = fleet.start_node("zero", "board=pizero", "leds");
    let doc = |name: &str, labels: &str, extra: &str| {
        fleet
            .plugin_yaml(name, "", "{gpio: {pins: [17]}}", "1")
            .replace(
                &format!("metadata: {{name: {name}}}"),
                &format!("metadata: {{name: {name}, labels: {{{labels}}}}}"),
            )
            .replace("  nodeSelector: {}\n", extra)
    };
    let none = "  nodeSelector: {board: none}\n";
    let mut all = vec![
        doc("dht22", "app: climate, tier: edge", none),
        doc("bme680", "app: climate", none),
        doc("system", "app: climate", none),
        doc("lights", "app: lights", none),
        doc("plain", "", none),
    ];
    all.push(doc(
        "notpi4",
        "app: probe",
        "  nodeAffinity:\n    matchExpressions:\n    - {key: board, operator: NotIn, values: [pi4]}\n    - {key: board, operator: Exists}\n",
    ));
    fleet.apply(&all.join("---\n"));
    let names = |selector: &str| {
        let out = fleet.cli_ok(&["get", "plugins", "-l", selector, "-o", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let mut names: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names.join(" ")
    };
    assert_eq!(names("app=climate"), "bme680 dht22 system");
    assert_eq!(names("app==climate"), "bme680 dht22 system");
    assert_eq!(names("app!=climate"), "lights notpi4 plain");
    assert_eq!(names("app in (lights, probe)"), "lights notpi4");
    assert_eq!(names("app notin (climate,probe)"), "lights plain");
    assert_eq!(names("tier"), "dht22");
    assert_eq!(names("!app"), "plain");
    assert_eq!(names("app=climate,!tier"), "bme680 system");
    for bad in ["app!", "app in climate", "app in (climate", "=x", "app=a=b"] {
        let out = fleet.cli(&["get", "plugins", "-l", bad]);
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("label selector") && err.contains(bad), "{bad}: {err}");
    }
    // The API refuses what it cannot read, naming it.
    let (code, body) = fleet
        .hub()
        .call("GET", "/api/v1alpha1/plugins?labelSelector=app%21", "");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("labelSelector") && body.contains("app!"), "{body}");
    // nodeAffinity: anywhere but on a pi4.
    fleet.cli_ok(&["rollout", "status", "plugin/notpi4", "--timeout", "60s"]);
    assert!(runs(zero, "notpi4", 1));
    let p = fleet.plugin("notpi4");
    let on: Vec<&String> = p["status"]["nodes"].as_object().unwrap().keys().collect();
    assert_eq!(on, ["zero"]);
    let wide = fleet.cli_ok(&["get", "plugin", "notpi4", "-o", "wide"]);
    assert!(wide.contains("board notin (pi4),board"), "{wide}");
}
