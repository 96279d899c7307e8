//! The habits kubectl users bring, against a real hub: TYPE/NAME and short
//! names everywhere, `get all`, `-o name`, `--show-labels`, `apply
//! --dry-run=server`, `diff`, `version`, shell completion; `get -w` across
//! a hub restart, jsonpath and custom columns, `--sort-by`, `label`,
//! `edit`, `explain`, RFC 3339 times and errors with field paths.

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
    assert!(String::from_utf8_lossy(&bad.stderr).contains("use wide, yaml, json, name, jsonpath="));

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

#[test]
fn watch_templates_labels_edit_and_errors_work_as_kubectl_users_expect() {
    let mut f = Fleet::new();
    f.start_node("pi4", "role=sensor", "");
    wait_until(T, "pi4 ready", || f.cli_ok(&["get", "nodes"]).contains(" Ready "));
    let probe = f.plugin_yaml("probe", "role: sensor", "{gpio: {pins: [17]}}", "1");
    f.apply(&probe);
    f.apply(&f.plugin_yaml("alpha", "role: sensor", "{}", "1"));

    // Templates, custom columns and sorting over the API's JSON.
    let names = f.cli_ok(&[
        "get",
        "plugins",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}:{.spec.grants.gpio.pins[0]}{\"\\n\"}{end}",
        "--sort-by=.metadata.name",
    ]);
    assert_eq!(names, "alpha:\nprobe:17\n");
    let columns = f.cli_ok(&[
        "get",
        "pl",
        "-o",
        "custom-columns=NAME:.metadata.name,PINS:.spec.grants.gpio.pins",
        "--sort-by={.metadata.name}",
    ]);
    let rows: Vec<Vec<&str>> = columns.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        [vec!["NAME", "PINS"], vec!["alpha", "<none>"], vec!["probe", "[17]"]]
    );
    let bad = f.cli(&["get", "pl", "-o", "jsonpath={.items[}"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a JSONPath"),
        "{bad:?}"
    );

    // Times read as RFC 3339, and what get prints applies back.
    let yaml = f.cli_ok(&["get", "plugin", "probe", "-o", "yaml"]);
    let created = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("creationTimestamp: "))
        .unwrap_or_else(|| panic!("{yaml}"));
    assert!(
        created.len() == 24 && created.ends_with('Z') && created.contains('T'),
        "{created}"
    );
    let file = f.dir.path().join("round-trip.yaml");
    std::fs::write(&file, &yaml).unwrap();
    assert!(
        f.cli_ok(&["apply", "-f", file.to_str().unwrap()])
            .contains("plugin/probe unchanged")
    );

    // Errors name the field path, one per line, type errors and unknown fields too.
    for (manifest, expected) in [
        (
            probe.replace("pins: [17]", "pins: [seventeen]"),
            "spec.grants.gpio.pins[0]: invalid type",
        ),
        (
            probe.replace("tickInterval", "tickIntervall"),
            "spec.tickIntervall: unknown field",
        ),
    ] {
        std::fs::write(&file, &manifest).unwrap();
        let out = f.cli(&["apply", "-f", file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("document 1 (Plugin probe): {expected}")), "{err}");
    }
    std::fs::write(
        &file,
        probe.replace("pins: [17]", "pins: [41, 42]").replace("100ms", "1ms"),
    )
    .unwrap();
    let out = f.cli(&["apply", "-f", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("  document 1")).collect();
    assert_eq!(lines.len(), 3, "one error per line: {err}");
    assert!(!err.contains("Unprocessable"), "no HTTP status in a refusal: {err}");

    // label: set, refuse to overwrite, overwrite, remove.
    assert_eq!(
        f.cli_ok(&["label", "plugin", "probe", "tier=edge"]),
        "plugin/probe labeled\n"
    );
    let refused = f.cli(&["label", "plugin/probe", "tier=core"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--overwrite"));
    f.cli_ok(&["label", "pl/probe", "tier=core", "--overwrite"]);
    assert_eq!(f.plugin("probe")["metadata"]["labels"]["tier"], "core");
    f.cli_ok(&["label", "node", "pi4", "zone=north"]);
    assert_eq!(f.cli_ok(&["get", "no", "-l", "zone=north", "-o", "name"]), "node/pi4\n");
    f.cli_ok(&["label", "plugin", "probe", "tier-"]);
    assert!(f.plugin("probe")["metadata"]["labels"].get("tier").is_none());
    assert_eq!(
        f.plugin("probe")["metadata"]["generation"],
        1,
        "labels are not a new revision"
    );

    // edit: an editor that changes the tick; then one that breaks it, twice.
    let editor = f.dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/tickInterval: 100ms/tickInterval: 200ms/' \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let edited = f.cli_with_env(
        &["edit", "plugin", "probe"],
        &[("HARVESTER_EDITOR", editor.to_str().unwrap())],
    );
    assert!(edited.status.success(), "{edited:?}");
    assert_eq!(f.plugin("probe")["spec"]["tickInterval"], "200ms");
    assert_eq!(f.plugin("probe")["metadata"]["generation"], 2);
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/tickInterval: 200ms/tickInterval: 1ms/' \"$1\"\n",
    )
    .unwrap();
    let refused = f.cli_with_env(
        &["edit", "plugin/probe"],
        &[("HARVESTER_EDITOR", editor.to_str().unwrap())],
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("spec.tickInterval: 1ms is too short"),
        "{err}"
    );
    assert!(err.contains("your changes are kept in"), "{err}");
    assert_eq!(f.plugin("probe")["spec"]["tickInterval"], "200ms", "nothing was stored");

    // get -w: the list, then each change, across a hub restart.
    let mut watch = Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_harvester"))
            .args([
                "get",
                "plugins",
                "probe",
                "-w",
                "-o",
                "custom-columns=NAME:.metadata.name,GEN:.metadata.generation",
            ])
            .env("HARVESTER_CONFIG", f.dir.path().join("controller/admin.yaml"))
            .env_remove("HARVESTER_SERVER")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rows = lines_of(watch.0.stdout.take().unwrap());
    let notes = lines_of(watch.0.stderr.take().unwrap());
    let mut seen = Vec::new();
    let saw = |generation: &str, seen: &mut Vec<String>| {
        wait_until(T, &format!("the watch prints generation {generation}"), || {
            seen.extend(rows.try_iter());
            seen.iter()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["probe", generation])
        })
    };
    saw("2", &mut seen);
    assert_eq!(seen[0].split_whitespace().collect::<Vec<_>>(), ["NAME", "GEN"]);
    f.apply(&probe.replace("VERSION: \"1\"", "VERSION: \"3\""));
    saw("3", &mut seen);
    // The hub goes away: the watch says so once and keeps trying.
    f.kill_controller();
    let mut said: Vec<String> = Vec::new();
    wait_until(T, "the watch notices the hub is gone", || {
        said.extend(notes.try_iter());
        said.iter().any(|l| l.contains("watch lost the hub"))
    });
    f.start_controller();
    f.apply(&probe.replace("VERSION: \"1\"", "VERSION: \"4\""));
    saw("4", &mut seen);
    wait_until(T, "the watch says it resumed", || {
        said.extend(notes.try_iter());
        said.iter().any(|l| l.contains("watch resumed from resourceVersion"))
    });
    assert_eq!(said.len(), 2, "one line each: {said:?}");
    assert!(
        seen.iter().all(|l| !l.contains("alpha")),
        "only the named object is watched: {seen:?}"
    );
    drop(watch);

    // What a plugin says (here: its init's error quoting its config) is
    // shown, never obeyed: escape sequences come out written as text.
    f.apply(&f.plugin_yaml("noisy", "role: sensor", "{gpio: {pins: [22]}}", "\\e]0;pwned\\a\\e[2J"));
    let mut shown = String::new();
    wait_until(T, "the noisy plugin's line in the logs", || {
        let out = f.cli(&["logs", "plugin/noisy", "--tail", "50"]);
        shown = String::from_utf8_lossy(&out.stdout).to_string();
        shown.contains("is not a number")
    });
    assert!(!shown.contains('\u{1b}') && !shown.contains('\u{7}'), "{shown:?}");
    assert!(
        shown.contains("VERSION=\\u{1b}]0;pwned\\u{7}\\u{1b}[2J is not a number"),
        "{shown}"
    );
    let described = f.cli_ok(&["describe", "plugin", "noisy"]);
    assert!(
        !described.contains('\u{1b}') && described.contains("\\u{1b}]0;pwned"),
        "{described}"
    );

    // explain: the fields the API reads, and what is not one.
    let explained = f.cli_ok(&["explain", "plugin.spec.grants"]);
    assert!(explained.contains("FIELD:    grants <Grants>") && explained.contains("  gpio\t<GpioGrant>"));
    let nope = f.cli(&["explain", "plugin.spec.grantz"]);
    assert!(String::from_utf8_lossy(&nope.stderr).contains("\"grantz\" does not exist in plugin.spec"));
    let schema: serde_json::Value = serde_json::from_str(&f.cli_ok(&["schema"])).unwrap();
    assert!(schema["definitions"]["Grants"]["properties"]["leds"].is_object());
}
