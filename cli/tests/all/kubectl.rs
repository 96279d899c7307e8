//! The habits kubectl users bring, against a real hub: TYPE/NAME and short
//! names everywhere, `get all`, `-o name`, `--show-labels`, `apply
//! --dry-run=server`, `version` and shell completion.

use crate::fleet::{Fleet, T};
use crate::support::*;

#[test]
fn kubectl_names_and_output_forms_work_as_kubectl_users_expect() {
    let mut f = Fleet::new();
    f.start_node("pi4", "role=sensor", "");
    wait_until(T, "pi4 ready", || f.cli_ok(&["get", "nodes"]).contains(" Ready "));
    let manifest = f
        .plugin_yaml("probe", "role: sensor", "{gpio: {pins: [17]}}", "1")
        .replace(
            "metadata: {name: probe}",
            "metadata: {name: probe, labels: {app: climate}}",
        );

    // A server dry run: checked like an apply, nothing stored.
    let file = f.dir.path().join("dry.yaml");
    std::fs::write(&file, &manifest).unwrap();
    let dry = f.cli_ok(&["apply", "-f", file.to_str().unwrap(), "--dry-run=server"]);
    assert!(
        dry.starts_with("plugin/probe created (generation 1") && dry.contains("(server dry run)"),
        "{dry}"
    );
    let missing = f.cli(&["get", "plugin", "probe"]);
    assert!(!missing.status.success(), "nothing was stored");
    std::fs::write(&file, manifest.replace("pins: [17]", "pins: [41]")).unwrap();
    let refused = f.cli(&["apply", "-f", file.to_str().unwrap(), "--dry-run=server"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("pin 41"),
        "a dry run validates"
    );
    let refused = f.cli(&["apply", "-f", file.to_str().unwrap(), "--dry-run=client"]);
    assert!(!refused.status.success());

    f.apply(&manifest);
    std::fs::write(&file, manifest.replace("VERSION: \"1\"", "VERSION: \"2\"")).unwrap();
    let dry = f.cli_ok(&["apply", "-f", file.to_str().unwrap(), "--dry-run=server"]);
    assert!(dry.starts_with("plugin/probe configured (generation 2"), "{dry}");
    assert_eq!(f.plugin("probe")["metadata"]["generation"], 1, "still generation 1");
    std::fs::write(&file, &manifest).unwrap();
    let dry = f.cli_ok(&["apply", "-f", file.to_str().unwrap(), "--dry-run=server"]);
    assert!(dry.starts_with("plugin/probe unchanged"), "{dry}");

    // diff: exit 0 with nothing to show, 1 with the change, 2 on an error.
    let same = f.cli(&["diff", "-f", file.to_str().unwrap()]);
    assert_eq!((same.status.code(), same.stdout.len()), (Some(0), 0), "{same:?}");
    std::fs::write(&file, manifest.replace("VERSION: \"1\"", "VERSION: \"2\"")).unwrap();
    let changed = f.cli(&["diff", "-f", file.to_str().unwrap()]);
    let shown = String::from_utf8_lossy(&changed.stdout);
    assert_eq!(changed.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("--- plugin/probe (live)") && shown.contains("+++ plugin/probe (applied)"),
        "{shown}"
    );
    let minus: Vec<&str> = shown
        .lines()
        .filter(|l| l.starts_with('-') && !l.starts_with("---"))
        .collect();
    let plus: Vec<&str> = shown
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .collect();
    assert!(
        minus.len() == 1 && minus[0].contains("VERSION") && minus[0].contains('1'),
        "{shown}"
    );
    assert!(
        plus.len() == 1 && plus[0].contains("VERSION") && plus[0].contains('2'),
        "{shown}"
    );
    assert_eq!(f.plugin("probe")["metadata"]["generation"], 1, "diff applies nothing");
    std::fs::write(&file, manifest.replace("pins: [17]", "pins: [41]")).unwrap();
    let error = f.cli(&["diff", "-f", file.to_str().unwrap()]);
    assert_eq!(error.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&error.stderr).contains("pin 41"));

    // TYPE/NAME and short names: the same object every way.
    let plain = f.cli_ok(&["get", "plugin", "probe", "-o", "name"]);
    assert_eq!(plain, "plugin/probe\n");
    for args in [
        &["get", "plugin/probe", "-o", "name"][..],
        &["get", "pl", "probe", "-o", "name"],
        &["get", "PL/probe", "-o", "name"],
    ] {
        assert_eq!(f.cli_ok(args), plain, "{args:?}");
    }
    assert_eq!(f.cli_ok(&["get", "no", "-o", "name"]), "node/pi4\n");
    let described = f.cli_ok(&["describe", "plugin/probe"]);
    assert!(described.starts_with("Name:          probe"), "{described}");
    let both = f.cli(&["get", "plugin/probe", "probe"]);
    assert!(String::from_utf8_lossy(&both.stderr).contains("not both"));
    let bad = f.cli(&["get", "pods"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown resource type \"pods\""));
    let bad = f.cli(&["get", "plugins", "-o", "toml"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("use wide, yaml, json or name"));

    // get all: every kind, as tables, names or one list.
    let all = f.cli_ok(&["get", "all", "-o", "name"]);
    assert_eq!(all, "plugin/probe\nnode/pi4\n");
    let tables = f.cli_ok(&["get", "all"]);
    let headers: Vec<&str> = tables.lines().filter(|l| l.starts_with("NAME")).collect();
    assert_eq!(headers.len(), 2, "{tables}");
    let list: serde_json::Value = serde_json::from_str(&f.cli_ok(&["get", "all", "-o", "json"])).unwrap();
    let kinds: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["Plugin", "Node"]);

    // --show-labels adds a LABELS column to the plugins' table.
    let labelled = f.cli_ok(&["get", "plugins", "--show-labels"]);
    let header: Vec<&str> = labelled.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header.last(), Some(&"LABELS"), "{labelled}");
    assert!(labelled.lines().nth(1).unwrap().ends_with("app=climate"), "{labelled}");

    // delete by TYPE/NAME.
    assert_eq!(f.cli_ok(&["delete", "plugin/probe"]), "plugin/probe deleted\n");

    // version: the client's, the hub's and the engine's.
    let v = f.cli_ok(&["version"]);
    assert!(
        v.contains("Client Version: ") && v.contains("Server Version: ") && v.contains("Engine:"),
        "{v}"
    );
    let engine = v
        .lines()
        .find(|l| l.starts_with("Engine:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let node: serde_json::Value = serde_json::from_str(&f.cli_ok(&["get", "node", "pi4", "-o", "json"])).unwrap();
    assert_eq!(
        node["status"]["engine"]["hash"], engine,
        "the hub's nodes on this machine share the engine"
    );
    let offline = f.cli_ok(&["version", "--client", "--server", "https://127.0.0.1:9"]);
    assert!(!offline.contains("Server Version"), "{offline}");

    // Completion scripts that know the commands.
    for shell in ["bash", "zsh", "fish"] {
        let script = f.cli_ok(&["completion", shell]);
        assert!(script.contains("rollout") && script.contains("harvester"), "{shell}");
    }
}
