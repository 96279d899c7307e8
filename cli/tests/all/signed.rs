//! Signed plugins from a real OCI registry: the real `harvester` binary
//! pushes and signs, a real docker-registry on loopback stores, a real
//! controller resolves tags, and real nodelets verify before running.
//! Third-party clients (skopeo, PyPI's oras) read and write the same layout.

use crate::fleet::{Fleet, T, on_node, runs};
use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PASSWORD: &str = "correct horse";

/// The real CLI with the key password in the environment, as cosign takes it.
pub(crate) fn harvester(fleet: &Fleet, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_harvester"))
        .args(args)
        .current_dir(fleet.dir.path())
        .env("COSIGN_PASSWORD", PASSWORD)
        .env("HARVESTER_CONFIG", fleet.dir.path().join("controller/admin.yaml"))
        .env("DOCKER_CONFIG", fleet.dir.path().join("docker-config"))
        .output()
        .unwrap()
}

pub(crate) fn harvester_ok(fleet: &Fleet, args: &[&str]) -> String {
    let out = harvester(fleet, args);
    assert!(
        out.status.success(),
        "harvester {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn harvester_err(fleet: &Fleet, args: &[&str]) -> String {
    let out = harvester(fleet, args);
    assert!(!out.status.success(), "harvester {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `PREFIX.key` and `PREFIX.pub` in the fleet's folder.
pub(crate) fn keygen(fleet: &Fleet, prefix: &str) -> (PathBuf, PathBuf) {
    harvester_ok(fleet, &["keygen", "--output-key-prefix", prefix]);
    (
        fleet.dir.path().join(format!("{prefix}.key")),
        fleet.dir.path().join(format!("{prefix}.pub")),
    )
}

/// Writes `bytes` as a component file and pushes it; returns the digest.
pub(crate) fn push(fleet: &Fleet, bytes: &[u8], target: &str, key: Option<&Path>) -> String {
    let file = fleet
        .dir
        .path()
        .join(format!("{}.wasm", target.replace(['/', ':', '.'], "_")));
    std::fs::write(&file, bytes).unwrap();
    let mut args = vec!["push", file.to_str().unwrap(), target];
    if let Some(k) = key {
        args.extend(["--key", k.to_str().unwrap()]);
    }
    let out = harvester_ok(fleet, &args);
    let digest = out
        .split_whitespace()
        .find_map(|w| w.split_once('@').map(|(_, d)| d.to_string()))
        .unwrap_or_else(|| panic!("no digest in push output: {out}"));
    assert!(digest.starts_with("sha256:"), "{out}");
    digest
}

pub(crate) fn plugin_yaml(name: &str, image: &str, digest: Option<&str>) -> String {
    let pinned = digest.map(|d| format!("  digest: {d}\n")).unwrap_or_default();
    // Plugins on one node may not share an output pin: one each.
    let gpio = match name {
        "good" => 5,
        "unsigned" => 6,
        "mallory" => 7,
        "copied" => 8,
        "tampered" => 9,
        "theirs" => 11,
        "missing" => 12,
        _ => 13,
    };
    format!(
        "apiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: {name}}}\nspec:\n  image: {image}\n{pinned}  nodeSelector: {{role: sensor}}\n  grants: {{gpio: {{pins: [{gpio}]}}}}\n  config: {{VERSION: \"1\"}}\n  tickInterval: 100ms\n"
    )
}

/// What a node reports about `plugin`: (generation, phase, reason, digest).
fn node_view(fleet: &Fleet, node: &str, plugin: &str) -> Option<(u64, String, String, String)> {
    let p = fleet.plugin(plugin);
    let n = &p["status"]["nodes"][node];
    n.is_object().then(|| {
        (
            n["generation"].as_u64().unwrap_or(0),
            n["phase"].as_str().unwrap_or("").to_string(),
            n["reason"].as_str().unwrap_or("").to_string(),
            n["digest"].as_str().unwrap_or("").to_string(),
        )
    })
}

fn refusals(port: u16, plugin: &str, reason: &str) -> u64 {
    let (_, body) = http("GET", port, "/metrics").unwrap();
    let series = format!("harvester_signature_refusals_total{{plugin=\"{plugin}\",reason=\"{reason}\"}}");
    body.lines()
        .find_map(|l| l.strip_prefix(&series).map(|v| v.trim().parse::<u64>().unwrap()))
        .unwrap_or(0)
}

fn ticks(port: u16, plugin: &str) -> u64 {
    let s = status(port).unwrap();
    s["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == plugin)
        .unwrap()["ticks"]
        .as_u64()
        .unwrap()
}

fn condition(plugin: &Value, kind: &str) -> (String, String) {
    let c = plugin["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap();
    (
        c["status"].as_str().unwrap().to_string(),
        c["reason"].as_str().unwrap().to_string(),
    )
}

struct Setup {
    fleet: Fleet,
    registry: TestRegistry,
    key: PathBuf,
    public: PathBuf,
    nodes: Vec<(&'static str, u16)>,
}

/// A registry, a controller and two nodelets trusting one key.
fn setup() -> Setup {
    let mut fleet = Fleet::new();
    if std::env::var_os("HARVESTER_TEST_KEEP").is_some() {
        fleet.dir.disable_cleanup(true);
        eprintln!("fleet folder: {}", fleet.dir.path().display());
    }
    let registry = TestRegistry::start(&fleet.dir.path().join("registry"));
    let (key, public) = keygen(&fleet, "cosign");
    // Swept every second: what runs, what is assigned and what an attempt
    // fetches right now must survive it.
    let trust = ["--trust-key", public.to_str().unwrap(), "--collect-every", "1s"];
    let a = fleet.start_node_with("a", "role=sensor", "leds", &trust);
    let b = fleet.start_node_with("b", "role=sensor", "leds", &trust);
    Setup {
        fleet,
        registry,
        key,
        public,
        nodes: vec![("a", a), ("b", b)],
    }
}

#[test]
fn signed_images_run_everywhere_and_unsigned_wrongly_signed_moved_or_tampered_ones_never_do() {
    let s = setup();
    let f = &s.fleet;
    let host = s.registry.host();
    let probe = component("probe");

    // Signed: pushed, signed, verified by the CLI, applied, run on both nodes.
    let good = format!("{host}/plugins/probe:1.0");
    let d1 = push(f, &variant(&probe, "v1"), &good, Some(&s.key));
    let out = harvester_ok(f, &["verify", &good, "--key", s.public.to_str().unwrap()]);
    assert!(out.contains(&d1) && out.contains("Verified"), "{out}");
    f.apply(&plugin_yaml("good", &good, None));
    for (_, port) in &s.nodes {
        wait_until(T, "signed plugin running", || runs(*port, "good", 1));
    }
    wait_until(T, "status reported", || {
        s.nodes
            .iter()
            .all(|(n, _)| node_view(f, n, "good").is_some_and(|v| v.1 == "Running" && v.3 == d1))
    });
    let p = f.plugin("good");
    assert_eq!(p["spec"]["digest"], d1.as_str(), "the tag was resolved at apply");
    let wide = f.cli_ok(&["get", "plugins", "-o", "wide"]);
    assert!(wide.contains(&d1[..19]), "{wide}");

    // Unsigned and signed by an untrusted key: refused on both nodes, counted.
    let unsigned = format!("{host}/plugins/unsigned:1.0");
    push(f, &variant(&probe, "unsigned"), &unsigned, None);
    let (mallory, _) = keygen(f, "mallory");
    let other = format!("{host}/plugins/mallory:1.0");
    push(f, &variant(&probe, "mallory"), &other, Some(&mallory));
    let err = harvester_err(f, &["verify", &other, "--key", s.public.to_str().unwrap()]);
    assert!(err.contains("none of its 1 signature(s)"), "{err}");
    f.apply(&(plugin_yaml("unsigned", &unsigned, None) + "---\n" + &plugin_yaml("mallory", &other, None)));
    for (name, reason) in [("unsigned", "unsigned"), ("mallory", "untrusted")] {
        wait_until(T, "refusal reported", || {
            s.nodes
                .iter()
                .all(|(n, _)| node_view(f, n, name).is_some_and(|v| v.1 == "Failed" && v.2 == "SignatureInvalid"))
        });
        for (_, port) in &s.nodes {
            assert!(on_node(*port, name).is_none(), "{name} must not run");
            assert_eq!(refusals(*port, name, reason), 1, "{name}");
        }
        assert_eq!(
            condition(&f.plugin(name), "Degraded"),
            ("True".into(), "SignatureInvalid".into())
        );
    }
    let err = harvester_err(f, &["rollout", "status", "plugin/unsigned", "--timeout", "30s"]);
    assert!(err.contains("is not signed"), "{err}");

    // The tag moves to an unsigned image: nothing changes until re-applied...
    let (_, port_a) = s.nodes[0];
    push(f, &variant(&probe, "moved"), &good, None);
    let before = ticks(port_a, "good");
    wait_until(T, "ticking on", || ticks(port_a, "good") > before + 10);
    assert_eq!(f.plugin("good")["metadata"]["generation"], 1);
    assert!(runs(port_a, "good", 1));
    // ...and then it is refused while the signed version keeps running.
    f.apply(&plugin_yaml("good", &good, None));
    assert_eq!(f.plugin("good")["metadata"]["generation"], 2);
    wait_until(T, "refusal of the moved tag", || {
        s.nodes
            .iter()
            .all(|(n, _)| node_view(f, n, "good").is_some_and(|v| v.2 == "SignatureInvalid"))
    });
    for (n, port) in &s.nodes {
        let v = node_view(f, n, "good").unwrap();
        assert_eq!((v.0, v.1.as_str(), v.3.as_str()), (1, "Running", d1.as_str()), "{n}");
        let t = ticks(*port, "good");
        wait_until(T, "old version ticking", || ticks(*port, "good") > t + 5);
        assert_eq!(refusals(*port, "good", "unsigned"), 1);
    }
    assert_eq!(condition(&f.plugin("good"), "Degraded").1, "SignatureInvalid");

    // A trusted signature copied, with the artifact, into another repository.
    let copy = format!("{host}/evil/probe:1.0");
    copy_with_signature(&s.registry, "plugins/probe", &d1, "evil/probe", "1.0");
    let err = harvester_err(f, &["verify", &copy, "--key", s.public.to_str().unwrap()]);
    assert!(err.contains("copied from elsewhere"), "{err}");
    f.apply(&plugin_yaml("copied", &copy, None));
    wait_until(T, "copied signature refused", || {
        s.nodes
            .iter()
            .all(|(n, _)| node_view(f, n, "copied").is_some_and(|v| v.1 == "Failed" && v.2 == "SignatureInvalid"))
    });
    assert_eq!(refusals(port_a, "copied", "identity_mismatch"), 1);

    // Signed, but its bytes changed in the registry's storage.
    let tampered = format!("{host}/plugins/tampered:1.0");
    let bytes = variant(&probe, "tampered");
    push(f, &bytes, &tampered, Some(&s.key));
    let layer = format!("sha256:{}", harvester_api::Digest::of(&bytes).hex());
    let file = s.registry.blob_file(&layer);
    let mut data = std::fs::read(&file).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&file, data).unwrap();
    f.apply(&plugin_yaml("tampered", &tampered, None));
    wait_until(T, "tampered bytes refused", || {
        s.nodes
            .iter()
            .all(|(n, _)| node_view(f, n, "tampered").is_some_and(|v| v.1 == "Failed" && v.2 == "DigestMismatch"))
    });
    assert_eq!(refusals(port_a, "tampered", "digest_mismatch"), 1);

    // `harvester pull` verifies, then writes the exact bytes.
    let out_file = f.dir.path().join("pulled.wasm");
    let pinned = format!("{host}/plugins/probe@{d1}");
    let public = s.public.to_str().unwrap();
    harvester_ok(f, &["pull", &pinned, "--key", public, "-o", out_file.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out_file).unwrap(), variant(&probe, "v1"));
    let err = harvester_err(f, &["pull", &good, "--key", public, "-o", "moved.wasm"]);
    assert!(err.contains("is not signed"), "{err}");
    assert!(!f.dir.path().join("moved.wasm").exists());

    // Two keys: a second signature keeps the first.
    let (second, second_pub) = keygen(f, "second");
    harvester_ok(f, &["sign", &other, "--key", second.to_str().unwrap()]);
    harvester_ok(f, &["verify", &other, "--key", second_pub.to_str().unwrap()]);
    let mallory_pub = mallory.with_extension("pub");
    harvester_ok(f, &["verify", &other, "--key", mallory_pub.to_str().unwrap()]);

    // Deleted, with the plugin whose copied image has the same digest: the
    // manifest, component, signature record and compiled code leave the
    // board's disk; a plugin still assigned keeps its manifest.
    let data = f.dir.path().join("a");
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    let v1_layer = harvester_api::Digest::of(&variant(&probe, "v1")).hex();
    let tampered_manifest = data
        .join("blobs/sha256")
        .join(hex(f.plugin("tampered")["spec"]["digest"].as_str().unwrap()));
    let files_of_v1 = || {
        let compiled = std::fs::read_dir(data.join("compiled"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(&v1_layer))
            .count();
        [
            data.join("blobs/sha256").join(hex(&d1)).exists(),
            data.join("blobs/sha256").join(&v1_layer).exists(),
            data.join("verified").join(format!("{}.json", hex(&d1))).exists(),
            compiled > 0,
        ]
    };
    assert_eq!(files_of_v1(), [true; 4], "what runs is kept");
    assert!(tampered_manifest.exists());
    f.cli_ok(&["delete", "plugin", "good"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(files_of_v1(), [true; 4], "what another assignment names is kept");
    f.cli_ok(&["delete", "plugin", "copied"]);
    wait_until(T, "the deleted plugins' files swept", || files_of_v1() == [false; 4]);
    assert!(tampered_manifest.exists(), "an assigned artifact's manifest is kept");
}

/// Copies a manifest and its cosign signature manifest into another
/// repository of the same registry, blobs mounted across.
fn copy_with_signature(reg: &TestRegistry, from: &str, digest: &str, to: &str, tag: &str) {
    let sig_tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    for (src_ref, dst_ref) in [(digest.to_string(), tag.to_string()), (sig_tag.clone(), sig_tag)] {
        let accept = ("Accept", "application/vnd.oci.image.manifest.v1+json");
        let (code, _, manifest) = http_raw(
            "GET",
            reg.port,
            &format!("/v2/{from}/manifests/{src_ref}"),
            &[accept],
            b"",
        );
        assert_eq!(code, 200);
        let m: Value = serde_json::from_slice(&manifest).unwrap();
        let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_string()];
        blobs.extend(
            m["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_string()),
        );
        for b in blobs {
            let (code, _, _) = http_raw(
                "POST",
                reg.port,
                &format!("/v2/{to}/blobs/uploads/?mount={b}&from={from}"),
                &[],
                b"",
            );
            assert_eq!(code, 201, "mounting {b}");
        }
        let ct = ("Content-Type", "application/vnd.oci.image.manifest.v1+json");
        let (code, _, body) = http_raw(
            "PUT",
            reg.port,
            &format!("/v2/{to}/manifests/{dst_ref}"),
            &[ct],
            &manifest,
        );
        assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    }
}

#[test]
fn a_registry_outage_mid_rollout_keeps_the_old_version_and_a_damaged_local_copy_is_pulled_again() {
    let mut s = setup();
    let host = s.registry.host();
    let probe = component("probe");
    let image = format!("{host}/plugins/probe:1");
    let v1 = push(&s.fleet, &variant(&probe, "outage-v1"), &image, Some(&s.key));
    s.fleet.apply(&plugin_yaml("p", &image, None));
    for (_, port) in &s.nodes {
        wait_until(T, "v1 running", || runs(*port, "p", 1));
    }

    // v2 is pushed, then the registry goes away; the rollout is applied
    // pinned by digest (the controller needs no registry for that).
    let v2 = push(
        &s.fleet,
        &variant(&probe, "outage-v2"),
        &format!("{host}/plugins/probe:2"),
        Some(&s.key),
    );
    s.registry.stop();
    s.fleet
        .apply(&plugin_yaml("p", &format!("{host}/plugins/probe:2"), Some(&v2)));
    wait_until(T, "pull failures reported", || {
        s.nodes
            .iter()
            .all(|(n, _)| node_view(&s.fleet, n, "p").is_some_and(|v| v.2 == "PullFailed"))
    });
    for (n, port) in &s.nodes {
        let v = node_view(&s.fleet, n, "p").unwrap();
        assert_eq!((v.0, v.1.as_str(), v.3.as_str()), (1, "Running", v1.as_str()), "{n}");
        let t = ticks(*port, "p");
        wait_until(T, "v1 still ticking", || ticks(*port, "p") > t + 5);
    }
    // The registry returns: both nodes pick v2 up by themselves.
    s.registry.resume();
    for (_, port) in &s.nodes {
        wait_until(Duration::from_secs(90), "v2 running after the outage", || {
            runs(*port, "p", 2)
        });
    }
    wait_until(T, "v2 reported", || {
        s.nodes
            .iter()
            .all(|(n, _)| node_view(&s.fleet, n, "p").is_some_and(|v| v.3 == v2 && v.2.is_empty()))
    });

    // A bit flips in node a's copy of the component while it is down: the
    // restarted node notices, pulls it again, and runs the right bytes.
    let layer = harvester_api::Digest::of(&variant(&probe, "outage-v2"));
    let local = s.fleet.dir.path().join("a/blobs/sha256").join(layer.hex());
    assert!(local.exists(), "{}", local.display());
    s.fleet.kill_node("a");
    let mut data = std::fs::read(&local).unwrap();
    data[100] ^= 1;
    std::fs::write(&local, &data).unwrap();
    let trust = ["--trust-key", s.public.to_str().unwrap()];
    let port = s.fleet.start_node_with("a", "role=sensor", "leds", &trust);
    wait_until(T, "v2 running again", || runs(port, "p", 2));
    assert_eq!(harvester_api::Digest::of(&std::fs::read(&local).unwrap()), layer);
}

#[test]
fn oras_and_skopeo_read_our_artifacts_and_an_oras_pushed_one_runs_once_signed() {
    let mut s = setup();
    let f = &s.fleet;
    let host = s.registry.host();
    let rust = component("probe");
    let ours = format!("{host}/plugins/ours:1");
    push(f, &rust, &ours, Some(&s.key));

    // skopeo sees a CNCF wasm artifact.
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{ours}")])
        .output()
        .expect("skopeo is installed by scripts/setup");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m["config"]["mediaType"], "application/vnd.wasm.config.v0+json");
    assert_eq!(m["layers"][0]["mediaType"], "application/wasm");

    // oras pulls our component byte for byte, by its title.
    let pulled = f.dir.path().join("oras-pull");
    oras(&format!("c.pull(target='{ours}', outdir='{}')", pulled.display()));
    let title = m["layers"][0]["annotations"]["org.opencontainers.image.title"]
        .as_str()
        .unwrap();
    assert_eq!(std::fs::read(pulled.join(title)).unwrap(), rust.as_slice());

    // oras pushes a component in the wasm layout; we sign it and run it.
    let dir = f.dir.path().join("oras-push");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("probe.wasm"), variant(&rust, "oras")).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"architecture":"wasm","os":"wasip2"}"#).unwrap();
    let theirs = format!("{host}/plugins/theirs:1");
    oras(&format!(
        "import os; os.chdir('{}'); c.push(target='{theirs}', files=['probe.wasm:application/wasm'], manifest_config='config.json:application/vnd.wasm.config.v0+json')",
        dir.display()
    ));
    f.apply(&plugin_yaml("theirs", &theirs, None));
    let (_, port) = s.nodes[0];
    wait_until(T, "unsigned oras artifact refused", || {
        node_view(f, "a", "theirs").is_some_and(|v| v.2 == "SignatureInvalid")
    });
    harvester_ok(f, &["sign", &theirs, "--key", s.key.to_str().unwrap()]);
    // The node retries by itself and finds the new signature.
    wait_until(Duration::from_secs(90), "oras artifact running once signed", || {
        runs(port, "theirs", 1)
    });

    // Mistakes get one clear line each, and change nothing.
    let text = f.dir.path().join("notes.wasm");
    std::fs::write(&text, "not wasm").unwrap();
    let err = harvester_err(f, &["push", text.to_str().unwrap(), &format!("{host}/plugins/bad:1")]);
    assert!(err.contains("not a WebAssembly file"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_harvester"))
        .args(["sign", &ours, "--key", s.key.to_str().unwrap()])
        .env("COSIGN_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong password"));
    let err = harvester_err(f, &["verify", &ours, "--key", s.key.to_str().unwrap()]);
    assert!(err.contains("not a cosign public key"), "{err}");
    let err = harvester_err(f, &["keygen"]);
    assert!(err.contains("refusing to overwrite"), "{err}");
    let missing = format!("{host}/plugins/missing:1");
    let file = f.dir.path().join("m.yaml");
    std::fs::write(&file, plugin_yaml("missing", &missing, None)).unwrap();
    let err = String::from_utf8_lossy(&f.cli(&["apply", "-f", file.to_str().unwrap()]).stderr).to_string();
    assert!(err.contains("no such image") && err.contains("missing"), "{err}");
    s.registry.stop();
    let err = String::from_utf8_lossy(&f.cli(&["apply", "-f", file.to_str().unwrap()]).stderr).to_string();
    assert!(err.contains("cannot resolve"), "{err}");
    assert!(f.cli_ok(&["get", "plugins"]).lines().all(|l| !l.starts_with("missing")));
}

fn oras(code: &str) {
    let python = repo().join(".venv/bin/python");
    let out = Command::new(&python)
        .args([
            "-c",
            &format!("import oras.client; c = oras.client.OrasClient(insecure=True); {code}"),
        ])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup installs oras)", python.display()));
    assert!(
        out.status.success(),
        "oras: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_registry_that_wants_credentials_gets_them_from_the_docker_config() {
    let fleet = Fleet::new();
    let dir = fleet.dir.path();
    // A bcrypt htpasswd entry (low cost: the registry checks it on every request).
    let out = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt; print('alice:' + crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
    let port = free_port();
    std::fs::write(
        dir.join("registry.yml"),
        format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\nauth: {{htpasswd: {{realm: harvester, path: {}}}}}\n",
            dir.join("registry-data").display(),
            dir.join("htpasswd").display()
        ),
    )
    .unwrap();
    let _registry = Proc(
        Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("registry.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(T, "registry up", || {
        http("GET", port, "/v2/").is_some_and(|r| r.0 == 401)
    });
    let (key, public) = keygen(&fleet, "cosign");
    let target = format!("127.0.0.1:{port}/plugins/probe:1");
    let file = dir.join("probe.wasm");
    std::fs::write(&file, component("probe").as_slice()).unwrap();
    let push = ["push", file.to_str().unwrap(), &target, "--key", key.to_str().unwrap()];

    // Without credentials: one clear line saying what to do.
    let err = harvester_err(&fleet, &push);
    assert!(
        err.contains("refused the credentials") && err.contains("config.json"),
        "{err}"
    );

    // With them in the docker config (what `docker login` writes).
    let config = dir.join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.json"),
        r#"{"auths": {"http://127.0.0.1:PORT": {"auth": "YWxpY2U6czNjcmV0"}}}"#.replace("PORT", &port.to_string()),
    )
    .unwrap();
    harvester_ok(&fleet, &push);
    let out = harvester_ok(&fleet, &["verify", &target, "--key", public.to_str().unwrap()]);
    assert!(out.contains("Verified"), "{out}");
}

fn metric(port: u16, series: &str) -> f64 {
    let (_, body) = http("GET", port, "/metrics").unwrap();
    find_metric(&body, series)
}

fn hub_metric(hub: &Hub, series: &str) -> f64 {
    let (_, body) = hub.call("GET", "/metrics", "");
    find_metric(&body, series)
}

fn proc_status_bytes(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

fn find_metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

#[test]
fn small_boards_run_python_plugins_from_code_the_hub_compiled_and_refuse_code_they_cannot_trust() {
    let s = setup();
    let mut f = s.fleet;
    let host = s.registry.host();
    let hub_key = f.dir.path().join("controller/compiler.pub");
    assert!(hub_key.exists(), "the hub makes its compile key on first start");

    // A node that may only run code from the hub needs the hub's key.
    let out = harvester(
        &f,
        &["nodelet", "--controller", "http://127.0.0.1:9", "--compile", "hub"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--trust-compiler"), "{err}");

    let trust = ["--trust-key", s.public.to_str().unwrap()];
    let hub_only = |compiler: &std::path::Path| {
        vec![
            trust[0].to_string(),
            trust[1].to_string(),
            "--trust-compiler".to_string(),
            compiler.to_str().unwrap().to_string(),
            "--compile".to_string(),
            "hub".to_string(),
        ]
    };
    let args = hub_only(&hub_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let zero = f.start_node_with("zero", "role=small", "dht22,leds", &args);
    let zero2 = f.start_node_with("zero2", "role=small", "dht22,leds", &args);
    // This one trusts some other hub's key.
    let (_, stranger) = keygen(&f, "stranger");
    let args = hub_only(&stranger);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let wary = f.start_node_with("wary", "role=small", "dht22,leds", &args);

    let image = format!("{host}/plugins/dht22:1.0");
    let digest = push(&f, &component("dht22"), &image, Some(&s.key));
    f.apply(&format!(
        "apiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: dht22}}\nspec:\n  image: {image}\n  nodeSelector: {{role: small}}\n  grants: {{dht22: {{pin: 4}}, leds: {{indices: [1]}}}}\n  tickInterval: 200ms\n"
    ));
    for port in [zero, zero2] {
        wait_until(Duration::from_secs(180), "dht22 running from the hub's code", || {
            runs(port, "dht22", 1)
        });
        assert_eq!(
            metric(port, "harvester_component_compiles_total"),
            0.0,
            "the board compiled nothing"
        );
        assert_eq!(metric(port, "harvester_component_cache_hits_total"), 1.0);
    }
    wait_until(T, "ticks with readings", || ticks(zero, "dht22") >= 2);
    assert_eq!(
        hub_metric(&f.hub(), "harvester_hub_compile_requests_total{result=\"compiled\"}"),
        1.0,
        "the hub compiles an artifact once for all nodes of a target"
    );
    // It compiled in a process of its own, whose memory went back when it
    // ended: the hub itself never grew to what the compile took.
    let compile_peak = hub_metric(&f.hub(), "harvester_hub_compile_peak_memory_bytes");
    let hub_peak = proc_status_bytes(f.controller_pid(), "VmHWM:");
    assert!(
        compile_peak > 2.0 * hub_peak as f64,
        "the compile's peak ({compile_peak} bytes) is the child's, not the hub's ({hub_peak} bytes)"
    );
    let node: Value = serde_json::from_str(&f.cli_ok(&["get", "node", "zero", "-o", "json"])).unwrap();
    let engine = &node["status"]["engine"];
    assert_eq!(engine["compile"], "hub", "{node}");
    assert_eq!(
        engine["target"],
        format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
    );

    // Code signed by a key the node does not trust is never loaded.
    wait_until(T, "the wary node refuses", || {
        node_view(&f, "wary", "dht22").is_some_and(|v| v.2 == "CompiledCodeRefused")
    });
    let p = f.plugin("dht22");
    let message = p["status"]["nodes"]["wary"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("not signed by a compiler key this node trusts"),
        "{message}"
    );
    assert!(on_node(wary, "dht22").is_none(), "nothing runs on the wary node");
    assert_eq!(refusals(wary, "dht22", "compiled_code"), 1);
    assert_eq!(metric(wary, "harvester_component_compiles_total"), 0.0);
    assert!(
        std::fs::read_dir(f.dir.path().join("wary/compiled"))
            .unwrap()
            .next()
            .is_none(),
        "no refused code is kept"
    );

    // Requests the hub refuses, each saying why.
    let path =
        |target: &str, engine: &str, d: &str| format!("/api/v1alpha1/compiled/{d}?target={target}&engine={engine}");
    let ours = engine["hash"].as_str().unwrap().to_string();
    let hub = f.hub();
    let (code, body) = hub.call("GET", &path("riscv64gc-unknown-linux-gnu", &ours, &digest), "");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("aarch64-unknown-linux-gnu"), "{body}");
    let (code, body) = hub.call(
        "GET",
        &path(engine["target"].as_str().unwrap(), "0123456789abcdef", &digest),
        "",
    );
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("different Harvester versions"), "{body}");
    let unknown = format!("sha256:{}", "ab".repeat(32));
    let (code, body) = hub.call("GET", &path(engine["target"].as_str().unwrap(), &ours, &unknown), "");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no Plugin on this hub runs artifact"), "{body}");

    // The hub's cached code damaged on disk: never served, compiled again
    // (its function cache makes that quick) and what it serves is what it
    // signed.
    let target = engine["target"].as_str().unwrap().to_string();
    damage_compiled_code(&f.dir.path().join("controller/compiled"));
    f.restart_controller();
    let (code, headers, body) = f.hub().raw("GET", &path(&target, &ours, &digest), &[], b"");
    assert_eq!(code, 200, "{headers}");
    let statement = headers
        .lines()
        .find_map(|l| l.strip_prefix("harvester-compiled-statement: "))
        .unwrap_or_else(|| panic!("{headers}"));
    let statement: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, statement.trim()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        statement["code"],
        harvester_api::Digest::of(&body).to_string(),
        "the code served is the code signed"
    );
    assert_eq!(
        hub_metric(&f.hub(), "harvester_hub_compile_requests_total{result=\"compiled\"}"),
        1.0,
        "compiled again after the restart"
    );

    // Without the hub, a restarted board runs the same code from its cache.
    f.kill_controller();
    f.kill_node("zero");
    let args = hub_only(&hub_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let zero = f.start_node_with("zero", "role=small", "dht22,leds", &args);
    wait_until(T, "dht22 running again without the hub", || runs(zero, "dht22", 1));
    assert_eq!(metric(zero, "harvester_component_compiles_total"), 0.0);
}
