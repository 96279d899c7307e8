//! Control-plane benchmarks: `cargo bench -p harvester --bench control_plane`.
//!
//! 1. Apply latency (p50/p99) and throughput against a real controller.
//! 2. Apply-to-running: a config change until two real nodelet processes run
//!    the new generation.
//! 3. Scale: 1,000 simulated nodes (lightweight in-process clients of the
//!    real HTTP API: register, watch assignments, report status) and 100
//!    plugins; time for the whole fleet to converge after a change, and the
//!    controller's RSS.

mod common;
use common::*;

use harvester_api::Digest;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Proc {
    Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_harvester"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `pin`: plugins on one node may not share an output pin.
fn plugin_doc(name: &str, digest: &Digest, version: usize, selector: &str, pin: usize) -> String {
    format!(
        "apiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: {name}}}\nspec:\n  image: probe.wasm\n  digest: \"{digest}\"\n  nodeSelector: {{{selector}}}\n  grants: {{gpio: {{pins: [{pin}]}}}}\n  config: {{VERSION: \"{version}\"}}\n  tickInterval: 1s\n"
    )
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap()
        / 1024.0
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t.elapsed()
}

/// Starts a controller process on a free port; returns it and its API base URL.
async fn controller(http: &reqwest::Client, data: &Path, extra: &[&str]) -> (Proc, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "controller",
        "--data",
        data.to_str().unwrap(),
        "--listen",
        &listen,
        "--no-dashboard",
    ];
    args.extend_from_slice(extra);
    let ctl = spawn(&args);
    let base = format!("http://127.0.0.1:{port}/api/v1alpha1");
    wait_for("controller", Duration::from_secs(30), async || {
        http.get(format!("{base}/plugins")).send().await.is_ok()
    })
    .await;
    (ctl, base)
}

#[tokio::main]
async fn main() {
    let venv = repo().join(".venv/bin/componentize-py");
    let py = if venv.exists() {
        venv
    } else {
        harvester::build::componentize_py()
    };
    let probe = harvester::build::build_cached(
        &repo().join("cli/tests/plugins/probe"),
        &repo().join("target/test-artifacts"),
        &py,
    )
    .unwrap();
    let bytes = std::fs::read(&probe).unwrap();
    let digest = Digest::of(&bytes);
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |a: &str, b: String, c: &str| {
        println!("{a:<62} {b:>16}   {c}");
        rows.push((a.into(), b, c.into()));
    };

    // 1. Apply latency and throughput.
    let (ctl, base) = controller(&http, &dir.path().join("c1"), &[]).await;
    http.put(format!("{base}/blobs/{digest}"))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let n = 400;
    let mut lat = Vec::new();
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let r = http
            .post(format!("{base}/apply"))
            .body(plugin_doc(&format!("p{i}"), &digest, 1, "none: none", 17))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        lat.push(t.elapsed());
    }
    let serial = n as f64 / started.elapsed().as_secs_f64();
    lat.sort();
    row(
        "apply latency, sequential (p50 / p99)",
        format!(
            "{:.2} / {:.2} ms",
            pct(&lat, 50).as_secs_f64() * 1e3,
            pct(&lat, 99).as_secs_f64() * 1e3
        ),
        "target p99 <= 20 ms",
    );
    row(
        "apply throughput, sequential",
        format!("{serial:.0} objects/s"),
        "each flushed before the reply",
    );
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (http, base, done) = (http.clone(), base.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let r = http
                    .post(format!("{base}/apply"))
                    .body(plugin_doc(&format!("c{w}-{i}"), &digest, 1, "none: none", 17))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    row(
        "apply throughput, 8 concurrent clients",
        format!(
            "{:.0} objects/s",
            done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
        ),
        "",
    );
    drop(ctl);

    // 2. Apply-to-running on two real nodelets.
    let (_ctl, base) = controller(&http, &dir.path().join("c2"), &[]).await;
    let server = base.trim_end_matches("/api/v1alpha1").to_string();
    let mut node_ports = Vec::new();
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let p = free_port();
        nodes.push(spawn(&[
            "nodelet",
            "--name",
            name,
            "--labels",
            "bench=yes",
            "--controller",
            &server,
            "--listen",
            &format!("127.0.0.1:{p}"),
            "--data",
            dir.path().join(name).to_str().unwrap(),
            // The component is uploaded through the controller, unsigned.
            "--allow-unsigned",
        ]));
        node_ports.push(p);
    }
    http.put(format!("{base}/blobs/{digest}"))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let runs_gen = |g: u64| {
        let http = http.clone();
        let ports = node_ports.clone();
        async move || {
            for p in &ports {
                let Ok(r) = http.get(format!("http://127.0.0.1:{p}/status")).send().await else {
                    return false;
                };
                let v: Value = r.json().await.unwrap_or(Value::Null);
                let ok = v["plugins"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|x| x["generation"] == g && x["phase"] == "Running"));
                if !ok {
                    return false;
                }
            }
            true
        }
    };
    http.post(format!("{base}/apply"))
        .body(plugin_doc("probe", &digest, 1, "bench: \"yes\"", 17))
        .send()
        .await
        .unwrap();
    wait_for("first rollout", Duration::from_secs(120), runs_gen(1)).await;
    let mut times = Vec::new();
    for v in 2..12u64 {
        let t = Instant::now();
        let r = http
            .post(format!("{base}/apply"))
            .body(plugin_doc("probe", &digest, v as usize, "bench: \"yes\"", 17))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        wait_for("rollout", Duration::from_secs(60), runs_gen(v)).await;
        times.push(t.elapsed());
    }
    times.sort();
    row(
        "apply-to-running, config change on 2 nodes (p50 / max)",
        format!(
            "{:.0} / {:.0} ms",
            pct(&times, 50).as_secs_f64() * 1e3,
            times.last().unwrap().as_secs_f64() * 1e3
        ),
        "target <= 300 ms",
    );
    drop(nodes);

    // 3. 1,000 simulated nodes, 100 plugins.
    let (ctl, base) = controller(&http, &dir.path().join("c3"), &["--node-timeout", "120s"]).await;
    http.put(format!("{base}/blobs/{digest}"))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    // Each plugin selects one of 10 node groups: 100 nodes x 10 plugins per group.
    let mut stream = String::new();
    for i in 0..100 {
        stream.push_str(&plugin_doc(
            &format!("f{i}"),
            &digest,
            1,
            &format!("group: g{}", i % 10),
            i / 10,
        ));
        stream.push_str("---\n");
    }
    http.post(format!("{base}/apply"))
        .body(stream.clone())
        .send()
        .await
        .unwrap();
    for n in 0..1000 {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(sim_node(http, base, format!("n{n}"), format!("g{}", n % 10)));
    }
    let converged = |g: u64| {
        let http = http.clone();
        let base = base.clone();
        async move || {
            let Ok(r) = http.get(format!("{base}/plugins")).send().await else {
                return false;
            };
            let v: Value = r.json().await.unwrap_or(Value::Null);
            v["items"].as_array().is_some_and(|items| {
                items.len() == 100
                    && items.iter().all(|p| {
                        let nodes = p["status"]["nodes"].as_object();
                        p["metadata"]["generation"] == g
                            && nodes.is_some_and(|n| {
                                n.len() == 100 && n.values().all(|x| x["generation"] == g && x["phase"] == "Running")
                            })
                    })
            })
        }
    };
    let first = wait_for("fleet converged", Duration::from_secs(300), converged(1)).await;
    row(
        "1,000 nodes x 100 plugins: first convergence",
        format!("{:.2} s", first.as_secs_f64()),
        "",
    );
    let t = Instant::now();
    http.post(format!("{base}/apply"))
        .body(stream.replace("VERSION: \"1\"", "VERSION: \"2\""))
        .send()
        .await
        .unwrap();
    wait_for("fleet converged again", Duration::from_secs(300), converged(2)).await;
    row(
        "1,000 nodes x 100 plugins: converge after changing all plugins",
        format!("{:.2} s", t.elapsed().as_secs_f64()),
        "target <= 5 s",
    );
    row(
        "controller RSS with 1,000 nodes watching",
        format!("{:.0} MB", rss_mb(ctl.0.id())),
        "target <= 200 MB",
    );

    // 4. Live reports: every node sends log lines (the hub keeps a window
    // per node within one memory budget) and a reading.
    let lines: Vec<Value> = (0..200)
        .map(|i| {
            json!({"at": i, "level": "info", "source": "plugin", "plugin": "f1",
                   "message": format!("line {i}: temperature 22.4 C, humidity 45 %, all is well here")})
        })
        .collect();
    let report = serde_json::to_vec(&json!({
        "logs": lines,
        "readings": [{"plugin": "f1", "name": "temperature", "value": 22.4, "unit": "celsius", "at": 1}],
    }))
    .unwrap();
    let mut times = Vec::new();
    for _round in 0..3 {
        use futures::StreamExt;
        let posts = (0..1000).map(|n| {
            let http = http.clone();
            let url = format!("{base}/nodes/n{n}/live");
            let body = report.clone();
            async move {
                let t = Instant::now();
                let r = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 204);
                t.elapsed()
            }
        });
        let mut done = futures::stream::iter(posts).buffer_unordered(32);
        while let Some(t) = done.next().await {
            times.push(t);
        }
    }
    times.sort();
    row(
        "live report, 200 log lines, from 1,000 nodes (p50 / p99)",
        format!(
            "{:.2} / {:.2} ms",
            pct(&times, 50).as_secs_f64() * 1e3,
            pct(&times, 99).as_secs_f64() * 1e3
        ),
        "32 in flight",
    );
    row(
        "controller RSS after 600,000 log lines from 1,000 nodes",
        format!("{:.0} MB", rss_mb(ctl.0.id())),
        "log windows share --log-memory 64Mi",
    );

    let mut md = String::from("| measurement | value | note |\n|---|---|---|\n");
    for (a, b, c) in &rows {
        md.push_str(&format!("| {a} | {b} | {c} |\n"));
    }
    std::fs::write(repo().join("target/bench-control-plane.md"), md).unwrap();
}

/// A simulated node: registers, watches its assignments, and reports each
/// assigned plugin as running the assigned generation, like a nodelet would.
async fn sim_node(http: reqwest::Client, base: String, name: String, group: String) {
    use futures::StreamExt;
    let node = json!({
        "apiVersion": "harvester.dev/v1alpha1", "kind": "Node",
        "metadata": {"name": name, "labels": {"group": group}},
        "status": {"architecture": "aarch64", "backend": "sim", "devices": ["gpio", "system"]}
    });
    loop {
        if http
            .put(format!("{base}/nodes/{name}/register"))
            .json(&node)
            .send()
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let Ok(resp) = http.get(format!("{base}/nodes/{name}/assignments")).send().await else {
            continue;
        };
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let v: Value = serde_json::from_slice(&line).unwrap_or(Value::Null);
                let Some(plugins) = v["plugins"].as_array() else {
                    continue;
                };
                let mut report = serde_json::Map::new();
                for p in plugins {
                    report.insert(
                        p["name"].as_str().unwrap().to_string(),
                        json!({"phase": "Running", "generation": p["generation"], "digest": p["digest"], "restarts": 0}),
                    );
                }
                let mut status = node["status"].clone();
                status["plugins"] = Value::Object(report);
                let _ = http
                    .put(format!("{base}/nodes/{name}/status"))
                    .json(&status)
                    .send()
                    .await;
            }
        }
    }
}
