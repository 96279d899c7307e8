//! Faults a fleet lives through: a hub lost and restored from a backup.

use crate::fleet::{Fleet, T, on_node, runs};
use crate::support::*;
use serde_json::Value;

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
    let out = fleet.cli_ok(&["controller", "backup", backup.to_str().unwrap()]);
    assert!(out.contains("backup of the hub at resourceVersion"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);

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
        let mode = std::fs::metadata(data.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    fleet.start_controller();

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
    wait_until(T, "DiskPressure over", || {
        disk_pressure(&fleet, "pi4") == Some(("False".into(), "EnoughDisk".into()))
    });
    wait_until(T, "c running once there is room", || runs(pi4, "c", 1));
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
