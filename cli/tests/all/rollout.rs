//! Progressive rollouts with real processes: a hub and four nodelets running
//! the probe plugin, whose config can make a bad version (it traps after a
//! few ticks). What each node ran is read from the node's own `/status`
//! (every version it started, with when it was asked for it and when it ran),
//! not only from the hub's view.

use crate::fleet::{Fleet, T};
use crate::support::*;
use serde_json::Value;
use std::time::Duration;

const NODES: [&str; 4] = ["n1", "n2", "n3", "n4"];

fn manifest(f: &Fleet, version: &str, extra_config: &str, rollout: &str) -> String {
    format!(
        "apiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: probe}}\nspec:\n  image: {}\n  nodeSelector: {{fleet: rollout}}\n  grants: {{gpio: {{pins: [17]}}}}\n  config: {{VERSION: \"{version}\"{extra_config}}}\n  tickInterval: 100ms\n  rollout:\n{rollout}",
        f.dir.path().join("probe.wasm").display()
    )
}

fn start(f: &mut Fleet) -> Vec<u16> {
    NODES.iter().map(|n| f.start_node(n, "fleet=rollout", "")).collect()
}

fn rollout(f: &Fleet) -> Value {
    f.plugin("probe")["status"]["rollout"].clone()
}

fn wait_phase(f: &Fleet, phase: &str, within: Duration) -> Value {
    let mut last = Value::Null;
    wait_until(within, &format!("rollout {phase}"), || {
        last = rollout(f);
        last["phase"] == phase
    });
    last
}

/// The generations a node started the probe at, in order.
fn started(port: u16) -> Vec<u64> {
    let s = status(port).unwrap();
    let Some(p) = s["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "probe") else {
        return Vec::new();
    };
    p["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["generation"].as_u64().unwrap())
        .collect()
}

/// Each node's (asked for, running) times of `generation`.
fn swap_of(port: u16, generation: u64) -> Option<(u64, u64)> {
    let s = status(port)?;
    let p = s["plugins"].as_array()?.iter().find(|p| p["name"] == "probe")?.clone();
    p["versions"]
        .as_array()?
        .iter()
        .find(|v| v["generation"] == generation)
        .map(|v| (v["requested"].as_u64().unwrap(), v["running"].as_u64().unwrap()))
}

fn hub_metric(f: &Fleet, series: &str) -> f64 {
    let (_, body) = f.hub().call("GET", "/metrics", "");
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// `rollout status`, watched while it waits: until each node held the
/// health rules for minReady the revision can still go back, so the Plugin
/// must not say Ready or Complete, and the command must not end, before the
/// rollout is complete.
fn follow_until_complete(f: &Fleet) {
    let mut status = f.cli_spawn(&["rollout", "status", "plugin/probe", "--timeout", "60s"]);
    let mut seen_waiting = false;
    while status.try_wait().unwrap().is_none() {
        let p = f.plugin("probe");
        let phase = p["status"]["rollout"]["phase"].clone();
        if phase != "Complete" {
            let conditions = p["status"]["conditions"].as_array().unwrap();
            let of = |kind: &str| conditions.iter().find(|c| c["type"] == kind).cloned().unwrap();
            let (ready, progressing) = (of("Ready"), of("Progressing"));
            assert!(
                ready["status"] == "False" && progressing["reason"] != "Complete",
                "the rollout is {phase} yet the Plugin says {ready} and {progressing}"
            );
            let all_run = p["status"]["nodes"]
                .as_object()
                .unwrap()
                .values()
                .all(|n| n["generation"] == p["metadata"]["generation"] && n["phase"] == "Running");
            seen_waiting |= all_run;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = status.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("generation 3 runs on 4/4 nodes"), "{stdout}");
    assert!(
        stdout.contains("to be healthy for 2s"),
        "it said what it waited for: {stdout}"
    );
    // Once it returned, the rollout is over: complete, not rolling out.
    assert_eq!(rollout(f)["phase"], "Complete");
    let history = f.cli_ok(&["rollout", "history", "plugin/probe"]);
    assert!(!history.contains("rolling out"), "{history}");
    assert!(seen_waiting, "every node ran it a while before it was complete");
}

const CANARY: &str = "    strategy: Canary\n    steps: [{nodes: 1}, {pause: {}}, {percent: 100}]\n    health: {minReady: 2s}\n    progressDeadline: 60s\n";

#[test]
fn a_bad_canary_reaches_one_node_and_goes_back_a_good_one_waits_for_promote_and_undo_returns() {
    let mut f = Fleet::new();
    let ports = start(&mut f);
    // The first revision has nothing to protect: every node at once.
    f.apply(&manifest(&f, "1", "", CANARY));
    f.cli_ok(&["rollout", "status", "plugin/probe", "--timeout", "60s"]);
    wait_phase(&f, "Complete", T);

    // A version that traps on its fourth tick: one node gets it, fails,
    // and is back on revision 1; no other node ever ran it.
    f.apply(&manifest(&f, "2", ", TRAP_AFTER: \"3\"", CANARY));
    let r = wait_phase(&f, "Aborted", T);
    assert_eq!(r["reason"], "HealthCheckFailed", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("revision 2 failed on n1"),
        "{r}"
    );
    let out = f.cli(&["rollout", "status", "plugin/probe", "--timeout", "10s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("was rolled back to revision 1"),
        "{err}"
    );
    wait_until(T, "n1 back on generation 1", || started(ports[0]).last() == Some(&1));
    assert_eq!(started(ports[0]), [1, 2, 1], "n1 ran the canary, then went back");
    for (n, port) in NODES.iter().zip(&ports).skip(1) {
        assert_eq!(started(*port), [1], "{n} never ran revision 2");
    }
    let p = f.plugin("probe");
    let rolled_back = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "RolledBack")
        .cloned()
        .unwrap();
    assert_eq!(
        (rolled_back["status"].as_str(), rolled_back["reason"].as_str()),
        (Some("True"), Some("HealthCheckFailed"))
    );
    let describe = f.cli_ok(&["describe", "plugin", "probe"]);
    assert!(
        describe.contains("aborted, every node back on revision 1"),
        "{describe}"
    );
    assert_eq!(
        hub_metric(
            &f,
            "harvester_rollbacks_total{plugin=\"probe\",reason=\"HealthCheckFailed\"}"
        ),
        1.0
    );

    // A good version: the canary, then a pause until promoted, then the rest.
    f.apply(&manifest(&f, "3", "", CANARY));
    let r = wait_phase(&f, "Paused", T);
    assert_eq!(
        (r["reason"].as_str(), r["step"].as_u64()),
        (Some("PauseStep"), Some(1)),
        "{r}"
    );
    assert_eq!(started(ports[0]).last(), Some(&3));
    for port in &ports[1..] {
        assert_eq!(
            started(*port).last(),
            Some(&1),
            "only the canary runs revision 3 while paused"
        );
    }
    let said = f.cli_ok(&["rollout", "promote", "plugin/probe"]);
    assert!(said.contains("revision 3: promoted"), "{said}");
    follow_until_complete(&f);
    for port in &ports {
        assert_eq!(started(*port).last(), Some(&3));
    }

    // History, then undo to revision 1: a new revision that runs it again.
    let history = f.cli_ok(&["rollout", "history", "plugin/probe"]);
    let line = |n: &str| {
        history
            .lines()
            .find(|l| l.starts_with(n))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("2 ").contains("config TRAP_AFTER=3,VERSION=2") && line("2 ").contains("rolled back"),
        "{history}"
    );
    assert!(
        line("3 (running)").contains("rolled out") && line("3").contains("admin"),
        "{history}"
    );
    let said = f.cli_ok(&["rollout", "undo", "plugin/probe", "--to-revision", "1"]);
    assert!(said.contains("rolled back to revision 1"), "{said}");
    wait_phase(&f, "Paused", T);
    f.cli_ok(&["rollout", "promote", "plugin/probe"]);
    wait_phase(&f, "Complete", T);
    for port in &ports {
        let s = status(*port).unwrap();
        let p = s["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "probe")
            .unwrap()
            .clone();
        assert_eq!(p["telemetry"]["tick"]["value"], 1.0, "VERSION 1 runs again");
    }
    let history = f.cli_ok(&["rollout", "history", "plugin/probe"]);
    assert!(
        history
            .lines()
            .any(|l| l.starts_with("4 (running)") && l.contains("undo to revision 1")),
        "{history}"
    );
    let e = f.cli(&["rollout", "undo", "plugin/probe", "--to-revision", "9"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("has no revision 9"));
    // Without a number: the revision before, revision 3 here.
    let said = f.cli_ok(&["rollout", "undo", "plugin/probe"]);
    assert!(said.contains("rolled back to revision 3"), "{said}");
    wait_phase(&f, "Paused", T);
    f.cli_ok(&["rollout", "promote", "plugin/probe"]);
    wait_phase(&f, "Complete", T);
    let history = f.cli_ok(&["rollout", "history", "plugin/probe"]);
    assert!(
        history
            .lines()
            .any(|l| l.starts_with("5 (running)") && l.contains("undo to revision 3")),
        "{history}"
    );

    // Someone pauses, resumes, then aborts a rollout at its pause step.
    f.apply(&manifest(&f, "6", "", CANARY));
    wait_phase(&f, "Paused", T);
    f.cli_ok(&["rollout", "pause", "plugin/probe"]);
    let r = wait_phase(&f, "Paused", T);
    wait_until(T, "paused by someone", || rollout(&f)["reason"] == "PausedByUser");
    assert_eq!(r["revision"], 6);
    f.cli_ok(&["rollout", "resume", "plugin/probe"]);
    wait_until(T, "back at its pause step", || rollout(&f)["reason"] == "PauseStep");
    let said = f.cli_ok(&["rollout", "abort", "plugin/probe"]);
    assert!(said.contains("revision 6: aborted"), "{said}");
    let r = wait_phase(&f, "Aborted", T);
    assert_eq!(
        (r["reason"].as_str(), r["message"].as_str()),
        (Some("AbortedByUser"), Some("aborted by admin"))
    );
    let canary = started(ports[0]);
    wait_until(T, "the canary back on revision 5", || {
        started(ports[0]).len() > canary.len() || canary.ends_with(&[5])
    });
    assert_eq!(started(ports[0]).last(), Some(&5), "{:?}", started(ports[0]));
    let e = f.cli(&["rollout", "resume", "plugin/probe"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("revision 6 is aborted: nothing to resume"));
}

#[test]
fn rolling_updates_one_node_at_a_time_resumes_after_a_hub_kill_and_an_offline_node_hits_the_deadline() {
    let mut f = Fleet::new();
    let ports = start(&mut f);
    let rolling =
        "    strategy: Rolling\n    maxUnavailable: 1\n    health: {minReady: 2s}\n    progressDeadline: 8s\n";
    f.apply(&manifest(&f, "1", "", rolling));
    f.cli_ok(&["rollout", "status", "plugin/probe", "--timeout", "60s"]);
    wait_phase(&f, "Complete", T);

    // Halfway through, the hub is SIGKILLed and started again.
    f.apply(&manifest(&f, "2", "", rolling));
    let on_2 = |ports: &[u16]| ports.iter().filter(|p| started(**p).last() == Some(&2)).count();
    wait_until(T, "two nodes on revision 2", || on_2(&ports) >= 2);
    f.restart_controller();
    f.cli_ok(&["rollout", "status", "plugin/probe", "--timeout", "60s"]);
    assert_eq!(rollout(&f)["phase"], "Complete", "rollout status waits for it");
    let mut swaps: Vec<(u64, u64)> = ports.iter().map(|p| swap_of(*p, 2).unwrap()).collect();
    for (port, n) in ports.iter().zip(NODES) {
        assert_eq!(started(*port), [1, 2], "{n} went once to revision 2, never back");
    }
    swaps.sort();
    for w in swaps.windows(2) {
        assert!(w[1].0 >= w[0].1, "one node at a time: {swaps:?}");
    }

    // A bad version, and the hub gone right after the first node got it:
    // the node judges it by the rules it was sent and goes back alone.
    f.apply(&manifest(&f, "3", ", TRAP_AFTER: \"10\"", rolling));
    wait_until(T, "n1 on revision 3", || started(ports[0]).last() == Some(&3));
    f.kill_controller();
    let deadline = std::time::Instant::now() + T;
    while !started(ports[0]).ends_with(&[3, 2]) {
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(f.dir.path().join("n1.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "n1 did not go back to revision 2 without the hub: {:?}\n{}",
                started(ports[0]),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for port in &ports[1..] {
        assert_eq!(started(*port), [1, 2], "only n1 ever ran revision 3");
    }
    f.restart_controller();
    let r = wait_phase(&f, "Aborted", T);
    assert_eq!(r["reason"], "HealthCheckFailed", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("failed on n1: restarted"),
        "{r}"
    );
    let log = std::fs::read_to_string(f.dir.path().join("n1.log")).unwrap();
    assert!(
        log.contains("revision 3 failed its health rules here, going back"),
        "the node judged it itself"
    );

    // Ticks that fail more often than the rules allow, judged on the node.
    let strict = rolling.replace(
        "health: {minReady: 2s}",
        "health: {minReady: 2s, maxTickErrorRate: 0.2}",
    );
    f.apply(&manifest(&f, "5", ", FAIL_TICKS: \"yes\"", &strict));
    let r = wait_phase(&f, "Aborted", T);
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("ticks failed (health.maxTickErrorRate 0.2)"),
        "{r}"
    );
    wait_until(T, "n1 back on generation 2", || started(ports[0]).last() == Some(&2));

    // A node that goes offline before its turn: the deadline decides.
    f.kill_node("n3");
    f.apply(&manifest(&f, "4", "", rolling));
    let r = wait_phase(&f, "Aborted", Duration::from_secs(45));
    assert_eq!(r["reason"], "ProgressDeadlineExceeded", "{r}");
    assert!(r["message"].as_str().unwrap().contains("no progress for 8s"), "{r}");
    for (i, port) in ports.iter().enumerate().filter(|(i, _)| *i != 2) {
        wait_until(T, "back on generation 2", || started(*port).last() == Some(&2));
        assert!(!started(*port).is_empty(), "{}", NODES[i]);
    }
}
