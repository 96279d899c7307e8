//! Signed-plugin benchmarks: `cargo bench -p harvester --bench registry`.
//!
//! Against a real docker-registry on loopback (started with `registry/start`):
//! 1. push + sign of the Rust (probe) and the Python (dht22) component;
//! 2. verify + pull into an empty local store;
//! 3. apply-to-running of a new digest on two real nodelet processes that
//!    trust the key, split into verify, pull and compile as the nodes' own
//!    metrics measure them; the rest is the controller, the watch, the
//!    instantiation, `init` and the swap;
//! 4. the same for two small boards (`--compile hub`) running two Python
//!    plugins, as a Pi Zero 2W does: the hub compiles, the boards fetch its
//!    signed code; and the boards' peak memory over all of it.
//!
//! Results go to stdout and `target/bench-registry.md`.

mod common;
use common::*;

use harvester_registry::{BlobStore, Registry, RegistryOptions, SigningKey, TrustedKey, parse_reference};
use serde_json::Value;
use std::time::{Duration, Instant};

struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(program: &str, args: &[&str]) -> Proc {
    Proc(
        std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `base` with a custom section appended: a distinct, valid component.
fn variant(base: &[u8], tag: &str) -> Vec<u8> {
    let name = b"harvester-bench";
    let mut out = base.to_vec();
    out.push(0);
    out.push((1 + name.len() + tag.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(tag.as_bytes());
    out
}

/// A `/proc/PID/status` figure, in bytes.
fn proc_bytes(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Applies the manifest `doc` through the controller's API.
async fn apply(http: &reqwest::Client, server: &str, doc: String) {
    let resp = http
        .post(format!("{server}/api/v1alpha1/apply"))
        .header(harvester_api::cross_site::MARKER, "1")
        .body(doc)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
}

/// Whether every node in `ports` runs `name` at `generation`.
async fn all_running(http: &reqwest::Client, ports: &[u16], name: &str, generation: u64) -> bool {
    for p in ports {
        let Ok(r) = http.get(format!("http://127.0.0.1:{p}/status")).send().await else {
            return false;
        };
        let v: Value = r.json().await.unwrap_or(Value::Null);
        let ok = v["plugins"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|x| x["name"] == name && x["generation"] == generation && x["phase"] == "Running")
        });
        if !ok {
            return false;
        }
    }
    true
}

/// Sum of a histogram's `_sum` series with this label, from a node's /metrics.
async fn metric_sum(http: &reqwest::Client, port: u16, series: &str) -> f64 {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

const STEPS: [(&str, &str); 3] = [
    (
        "verify",
        "harvester_artifact_fetch_duration_seconds_sum{step=\"verify\"}",
    ),
    ("pull", "harvester_artifact_fetch_duration_seconds_sum{step=\"pull\"}"),
    (
        "compile",
        "harvester_component_load_duration_seconds_sum{outcome=\"compiled\"}",
    ),
];

#[tokio::main]
async fn main() {
    let venv = repo().join(".venv/bin/componentize-py");
    let py = if venv.exists() {
        venv
    } else {
        harvester::build::componentize_py()
    };
    let artifacts = repo().join("target/plugin-builds");
    let build =
        |dir: &str| std::fs::read(harvester::build::build_cached(&repo().join(dir), &artifacts, &py).unwrap()).unwrap();
    let components = [
        ("Rust (probe)", build("cli/tests/plugins/probe")),
        ("Python (dht22)", build("plugins/dht22")),
    ];
    let small_board_plugins = [
        (
            "bme680",
            build("plugins/bme680"),
            "{bme680: {address: 0x77}, leds: {indices: [2]}}",
            "{}",
        ),
        (
            "netmon",
            build("plugins/netmon"),
            "{net: {hosts: [127.0.0.1]}}",
            "{HOSTS: \"127.0.0.1\"}",
        ),
    ];

    let dir = tempfile::tempdir().unwrap();
    let reg_port = free_port();
    let host = format!("127.0.0.1:{reg_port}");
    let _registry = spawn(
        "bash",
        &[
            repo().join("registry/start").to_str().unwrap(),
            dir.path().join("registry").to_str().unwrap(),
            &host,
        ],
    );
    let http = reqwest::Client::new();
    wait_for("registry", Duration::from_secs(20), async || {
        http.get(format!("http://{host}/v2/")).send().await.is_ok()
    })
    .await;
    let (private, public) = harvester_registry::generate_key_pair(b"bench").unwrap();
    std::fs::write(dir.path().join("cosign.key"), private.as_bytes()).unwrap();
    std::fs::write(dir.path().join("cosign.pub"), &public).unwrap();
    let key = SigningKey::load(&dir.path().join("cosign.key"), b"bench").unwrap();
    let trusted = TrustedKey::load(&dir.path().join("cosign.pub")).unwrap();
    let registry = Registry::new(RegistryOptions::default());
    let hidden = indicatif::ProgressBar::hidden();

    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |a: &str, b: String, c: &str| {
        println!("{a:<58} {b:>24}   {c}");
        rows.push((a.into(), b, c.into()));
    };

    // 1 and 2: push + sign, then verify + pull into an empty store.
    for (kind, bytes) in &components {
        let (mut push, mut fetch) = (Vec::new(), Vec::new());
        for i in 0..5 {
            let r = parse_reference(&format!(
                "{host}/bench/{}:{i}",
                kind.split(' ').next().unwrap().to_lowercase()
            ))
            .unwrap();
            let bytes = variant(bytes, &format!("push-{i}"));
            let t = Instant::now();
            let pushed = registry.push(&r, &bytes, "bench.wasm", &hidden).await.unwrap();
            registry.sign(&r, &pushed.digest, &key).await.unwrap();
            push.push(t.elapsed());

            let store = BlobStore::new(dir.path().join(format!("store-{kind}-{i}")));
            let t = Instant::now();
            registry
                .verify(&r, &pushed.digest, std::slice::from_ref(&trusted))
                .await
                .unwrap();
            let got = registry.pull(&r, &pushed.digest, &store, &hidden).await.unwrap();
            fetch.push(t.elapsed());
            assert_eq!(got, bytes);
        }
        let mb = bytes.len() as f64 / 1e6;
        row(
            &format!("push + sign, {kind}, {mb:.1} MB (median of 5)"),
            ms(median(push)),
            "",
        );
        row(
            &format!("verify + pull, {kind} (median of 5)"),
            ms(median(fetch)),
            "empty local store",
        );
    }

    // 3. Apply-to-running on two nodes.
    let ctl_port = free_port();
    let bin = env!("CARGO_BIN_EXE_harvester");
    let ctl = spawn(
        bin,
        &[
            "controller",
            "--data",
            dir.path().join("controller").to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{ctl_port}"),
            "--no-dashboard",
            // What is measured here is the registry path; the control
            // plane over TLS is control_plane's.
            "--insecure-plain-http",
        ],
    );
    let server = format!("http://127.0.0.1:{ctl_port}");
    wait_for("controller", Duration::from_secs(30), async || {
        http.get(format!("{server}/healthz")).send().await.is_ok()
    })
    .await;
    let mut nodes = Vec::new();
    let mut ports = Vec::new();
    for name in ["a", "b"] {
        let p = free_port();
        nodes.push(spawn(
            bin,
            &[
                "nodelet",
                "--name",
                name,
                "--labels",
                "bench=yes",
                "--sim-devices",
                "dht22,leds",
                "--controller",
                &server,
                "--listen",
                &format!("127.0.0.1:{p}"),
                "--command-listen",
                "127.0.0.1:0",
                "--data",
                dir.path().join(name).to_str().unwrap(),
                "--trust-key",
                dir.path().join("cosign.pub").to_str().unwrap(),
            ],
        ));
        ports.push(p);
    }
    for p in &ports {
        wait_for("nodelet", Duration::from_secs(30), async || {
            http.get(format!("http://127.0.0.1:{p}/status")).send().await.is_ok()
        })
        .await;
    }
    let plans = [
        (
            "Rust (probe)",
            "probe",
            "{gpio: {pins: [17]}}",
            "{VERSION: \"1\"}",
            5,
            "target 1 s",
        ),
        (
            "Python (dht22)",
            "dht22",
            "{dht22: {pin: 4}, leds: {indices: [1]}}",
            "{HIGH_TEMP: \"30\"}",
            2,
            "target 6 s",
        ),
    ];
    for ((kind, bytes), (_, name, grants, config, rounds, target)) in components.iter().zip(plans) {
        let mut totals = Vec::new();
        let mut steps = [0.0f64; 3];
        for i in 0..rounds {
            let image = format!("{host}/fleet/{name}:{i}");
            let r = parse_reference(&image).unwrap();
            let pushed = registry
                .push(&r, &variant(bytes, &format!("rollout-{i}")), "bench.wasm", &hidden)
                .await
                .unwrap();
            registry.sign(&r, &pushed.digest, &key).await.unwrap();
            let mut before = [0.0f64; 3];
            for p in &ports {
                for (s, (_, series)) in STEPS.iter().enumerate() {
                    before[s] += metric_sum(&http, *p, series).await;
                }
            }
            let doc = format!(
                "apiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: {name}}}\nspec:\n  image: {image}\n  nodeSelector: {{bench: \"yes\"}}\n  grants: {grants}\n  config: {config}\n  tickInterval: 1s\n"
            );
            let t = Instant::now();
            apply(&http, &server, doc).await;
            let generation = (i + 1) as u64;
            wait_for("rollout", Duration::from_secs(120), async || {
                all_running(&http, &ports, name, generation).await
            })
            .await;
            totals.push(t.elapsed());
            for p in &ports {
                for (s, (_, series)) in STEPS.iter().enumerate() {
                    steps[s] += metric_sum(&http, *p, series).await;
                }
            }
            for (s, b) in before.iter().enumerate() {
                steps[s] -= b;
            }
        }
        // Per node and round.
        let per = (rounds * ports.len()) as f64;
        let split = STEPS
            .iter()
            .zip(steps)
            .map(|((n, _), v)| format!("{n} {:.0}", v / per * 1e3))
            .collect::<Vec<_>>()
            .join(" / ");
        row(
            &format!("apply to running on 2 nodes, {kind} (median of {rounds})"),
            ms(median(totals)),
            target,
        );
        row(
            &format!("  per node: {} ms", STEPS.map(|s| s.0).join(" / ")),
            split,
            "new digest: compiled each time",
        );
    }

    // 4. Small boards: code from the hub only.
    let hub_key = dir.path().join("controller/compiler.pub");
    let mut small = Vec::new();
    for name in ["zero1", "zero2"] {
        let p = free_port();
        let proc = spawn(
            bin,
            &[
                "nodelet",
                "--name",
                name,
                "--labels",
                "small=yes",
                "--sim-devices",
                "bme680,leds",
                "--controller",
                &server,
                "--listen",
                &format!("127.0.0.1:{p}"),
                "--command-listen",
                "127.0.0.1:0",
                "--data",
                dir.path().join(name).to_str().unwrap(),
                "--trust-key",
                dir.path().join("cosign.pub").to_str().unwrap(),
                "--trust-compiler",
                hub_key.to_str().unwrap(),
                "--compile",
                "hub",
            ],
        );
        wait_for("small nodelet", Duration::from_secs(30), async || {
            http.get(format!("http://127.0.0.1:{p}/status")).send().await.is_ok()
        })
        .await;
        small.push((proc, p));
    }
    let small_ports: Vec<u16> = small.iter().map(|s| s.1).collect();
    let running = async |name: &str, generation: u64| all_running(&http, &small_ports, name, generation).await;
    // The new version changes a colour in the plugin's source, as an edit
    // would: a different script and heap snapshot, the same interpreter.
    let edited = dir.path().join("edited/bme680");
    std::fs::create_dir_all(edited.parent().unwrap()).unwrap();
    let copied = std::process::Command::new("cp")
        .args([
            "-rL",
            repo().join("plugins/bme680").to_str().unwrap(),
            edited.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(copied.success());
    let _ = std::fs::remove_file(edited.join("bme680.wasm"));
    let source = std::fs::read_to_string(edited.join("app.py")).unwrap();
    assert!(source.contains("YELLOW = Rgb(255, 200, 0)"));
    std::fs::write(
        edited.join("app.py"),
        source.replace("YELLOW = Rgb(255, 200, 0)", "YELLOW = Rgb(255, 210, 0)"),
    )
    .unwrap();
    let edited_bytes = std::fs::read(harvester::build::build_cached(&edited, &artifacts, &py).unwrap()).unwrap();
    let rollout = async |round: u64, edited: &[u8]| -> Duration {
        let mut doc = String::new();
        for (name, bytes, grants, config) in &small_board_plugins {
            // Round 0 starts both plugins; later rounds roll out an edited
            // bme680.
            let bytes: &[u8] = match (round, *name) {
                (0, _) => bytes,
                (_, "bme680") => edited,
                _ => continue,
            };
            let image = format!("{host}/small/{name}:{round}");
            let r = parse_reference(&image).unwrap();
            let pushed = registry.push(&r, bytes, "bench.wasm", &hidden).await.unwrap();
            registry.sign(&r, &pushed.digest, &key).await.unwrap();
            doc.push_str(&format!(
                "---\napiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: {name}}}\nspec:\n  image: {image}\n  nodeSelector: {{small: \"yes\"}}\n  grants: {grants}\n  config: {config}\n  tickInterval: 1s\n"
            ));
        }
        let t = Instant::now();
        apply(&http, &server, doc).await;
        wait_for("small-board rollout", Duration::from_secs(300), async || {
            running("bme680", round + 1).await && running("netmon", 1).await
        })
        .await;
        t.elapsed()
    };
    let hub_compile = async || metric_sum(&http, ctl_port, "harvester_hub_compile_duration_seconds_sum").await;
    let first = rollout(0, &[]).await;
    let compiled_first = hub_compile().await;
    let fetch_before = {
        let mut sum = 0.0;
        for p in &small_ports {
            sum += metric_sum(
                &http,
                *p,
                "harvester_artifact_fetch_duration_seconds_sum{step=\"hub-code\"}",
            )
            .await;
        }
        sum
    };
    let second = rollout(1, &edited_bytes).await;
    let compiled_second = hub_compile().await - compiled_first;
    let mut fetch = -fetch_before;
    let mut compiled_on_board = 0.0;
    for p in &small_ports {
        fetch += metric_sum(
            &http,
            *p,
            "harvester_artifact_fetch_duration_seconds_sum{step=\"hub-code\"}",
        )
        .await;
        compiled_on_board += metric_sum(&http, *p, "harvester_component_compiles_total").await;
    }
    assert_eq!(compiled_on_board, 0.0, "a --compile hub board ran the compiler");
    let (mut rss, mut peak) = (0u64, 0u64);
    for (proc, _) in &small {
        rss = rss.max(proc_bytes(proc.0.id(), "VmRSS:"));
        peak = peak.max(proc_bytes(proc.0.id(), "VmHWM:"));
    }
    // The hub's memory through ten more versions, each compiled anew.
    let recompiles = 10;
    for i in 0..recompiles {
        rollout(2 + i, &variant(&edited_bytes, &format!("recompile-{i}"))).await;
    }
    let compiles = metric_sum(
        &http,
        ctl_port,
        "harvester_hub_compile_requests_total{result=\"compiled\"}",
    )
    .await;
    assert_eq!(compiles, 2.0 + 1.0 + recompiles as f64, "each version compiled once");
    let child_peak = metric_sum(&http, ctl_port, "harvester_hub_compile_peak_memory_bytes").await;
    let hub_rss = proc_bytes(ctl.0.id(), "VmRSS:");
    let hub_peak = proc_bytes(ctl.0.id(), "VmHWM:");
    drop(small);
    row(
        "small boards (--compile hub): bme680 + netmon, Python, to running on 2 nodes",
        ms(first),
        &format!("the hub compiles each once: {:.1} s", compiled_first),
    );
    row(
        "small boards: roll out an edited bme680 to running on 2 nodes",
        ms(second),
        &format!(
            "hub compile {:.1} s (functions reused from the first); per node, waiting for it and fetching the code {:.0} ms",
            compiled_second,
            fetch / small_ports.len() as f64 * 1e3
        ),
    );
    row(
        "small board nodelet peak RSS over both (2 Python plugins)",
        format!("{:.1} MB", peak as f64 / 1e6),
        "target < 100 MB",
    );
    row(
        "small board nodelet RSS afterwards",
        format!("{:.1} MB", rss as f64 / 1e6),
        "",
    );
    row(
        &format!("hub RSS after {recompiles} more recompiles (steady)"),
        format!("{:.1} MB", hub_rss as f64 / 1e6),
        "target <= 150 MB",
    );
    row(
        "hub peak RSS over all of them",
        format!("{:.1} MB", hub_peak as f64 / 1e6),
        "target <= 300 MB",
    );
    row(
        "a compile's own peak (its child process, gone after)",
        format!("{:.1} MB", child_peak / 1e6),
        "",
    );

    let mut md = String::from("| measurement | result | note |\n|---|---|---|\n");
    for (a, b, c) in &rows {
        md.push_str(&format!("| {a} | {b} | {c} |\n"));
    }
    std::fs::write(repo().join("target/bench-registry.md"), md).unwrap();
}
