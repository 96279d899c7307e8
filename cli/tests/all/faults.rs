//! Faults a fleet lives through: a hub lost and restored from a backup.

use crate::fleet::{Fleet, T, runs};
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
