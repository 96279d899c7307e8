//! Control-plane benchmarks: `cargo bench -p harvester --bench control_plane`.
//!
//! 1. Apply latency (p50/p99) and throughput against a real controller;
//!    and a well-behaved client's apply latency while another identity
//!    floods the hub, side by side with it idle.
//! 2. Apply-to-running: a config change until two real nodelet processes run
//!    the new generation.
//! 3. Scale: 1,000 simulated nodes (lightweight in-process clients of the
//!    real HTTP API: register, watch assignments, report status) and 100
//!    plugins; time for the whole fleet to converge after a change, and the
//!    controller's RSS.
//!
//! 1 and 3 run twice from the same build: over TLS with identities (each
//! simulated node enrolled with a join token and holding its own
//! certificate; people's requests with the admin's bearer token), and over
//! plain HTTP on loopback without identities, side by side.

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
            // Hubs add their admin to the local user's client configuration.
            .env("XDG_CONFIG_HOME", std::env::temp_dir().join("harvester-bench-config"))
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tls,
    Plain,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Tls => "TLS",
            Mode::Plain => "plain",
        }
    }
}

/// The header the hub wants on writes from its own clients.
fn marker() -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(harvester_api::cross_site::MARKER, "1".parse().unwrap());
    h
}

/// A client builder sending [`marker`].
fn marked() -> reqwest::ClientBuilder {
    reqwest::Client::builder().default_headers(marker())
}

/// A controller process and how to reach it as its admin.
struct Hub {
    proc: Proc,
    /// `https://127.0.0.1:PORT/api/v1alpha1` (or `http://`).
    base: String,
    /// The admin's client (bearer token, hub CA), or a plain one.
    http: reqwest::Client,
    /// The hub CA (TLS only).
    ca: Option<String>,
    /// A join token with a use for every simulated node (TLS only).
    token: Option<harvester_pki::JoinToken>,
}

/// `n` applies of new plugins named `prefix0...`, one after another: each
/// one's latency, sorted.
async fn sequential_applies(
    http: &reqwest::Client,
    base: &str,
    digest: &Digest,
    prefix: &str,
    n: usize,
) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = http
            .post(format!("{base}/apply"))
            .body(plugin_doc(&format!("{prefix}{i}"), digest, 1, "none: none", 17))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

/// Starts a controller process on a free port.
async fn controller(mode: Mode, data: &Path, extra: &[&str]) -> Hub {
    controller_at(mode, data, extra, free_port()).await
}

/// Starts a controller process on `port`.
async fn controller_at(mode: Mode, data: &Path, extra: &[&str], port: u16) -> Hub {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "controller",
        "--data",
        data.to_str().unwrap(),
        "--listen",
        &listen,
        "--no-dashboard",
    ];
    if mode == Mode::Plain {
        args.push("--insecure-plain-http");
    }
    args.extend_from_slice(extra);
    let proc = spawn(&args);
    let (scheme, http, ca) = match mode {
        Mode::Plain => ("http", marked().build().unwrap(), None),
        Mode::Tls => {
            let file = data.join("admin.yaml");
            let t = Instant::now();
            while !file.exists() {
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "the controller wrote no admin.yaml"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let config: harvester_api::identity::ClientConfig =
                serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            let c = config.context(None).unwrap().clone();
            let tls = harvester_pki::tls::client_config(&c.certificate_authority_data, None).unwrap();
            let mut auth = marker();
            auth.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", c.token).parse().unwrap(),
            );
            let http = reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .default_headers(auth)
                .build()
                .unwrap();
            ("https", http, Some(c.certificate_authority_data))
        }
    };
    let base = format!("{scheme}://127.0.0.1:{port}/api/v1alpha1");
    wait_for("controller", Duration::from_secs(30), async || {
        http.get(format!("{base}/plugins"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let token = match mode {
        Mode::Plain => None,
        Mode::Tls => {
            let r: Value = http
                .post(format!("{base}/tokens"))
                .json(&json!({"ttlSeconds": 3600, "uses": 2000}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            Some(r["token"].as_str().unwrap().parse().unwrap())
        }
    };
    Hub {
        proc,
        base,
        http,
        ca,
        token,
    }
}

impl Hub {
    /// A client for simulated node `name`: enrolled with its own key and
    /// certificate over TLS; a plain client otherwise.
    async fn node_client(&self, name: &str) -> reqwest::Client {
        let (Some(ca), Some(token)) = (&self.ca, &self.token) else {
            return marked().build().unwrap();
        };
        let key = harvester_pki::NodeKey::generate().unwrap();
        let anonymous = marked()
            .tls_backend_preconfigured(harvester_pki::tls::client_config(ca, None).unwrap())
            .build()
            .unwrap();
        let answer: harvester_api::identity::CertificateAnswer = anonymous
            .post(format!("{}/enrol", self.base))
            .bearer_auth(token.credential())
            .json(&json!({"node": name, "csr": key.csr(name).unwrap()}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        let tls = harvester_pki::tls::client_config(ca, Some((&answer.certificate, &key.pem()))).unwrap();
        marked().tls_backend_preconfigured(tls).build().unwrap()
    }
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
        &repo().join("target/plugin-builds"),
        &py,
    )
    .unwrap();
    let bytes = std::fs::read(&probe).unwrap();
    let digest = Digest::of(&bytes);
    let dir = tempfile::tempdir().unwrap();
    harvester_pki::install_provider();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |a: &str, b: String, c: &str| {
        println!("{a:<62} {b:>16}   {c}");
        rows.push((a.into(), b, c.into()));
    };

    // 1. Apply latency and throughput.
    for mode in [Mode::Tls, Mode::Plain] {
        let m = mode.label();
        let hub = controller(mode, &dir.path().join(format!("c1-{m}")), &[]).await;
        let (http, base) = (hub.http.clone(), hub.base.clone());
        http.put(format!("{base}/blobs/{digest}"))
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        let n = 400;
        let started = Instant::now();
        let lat = sequential_applies(&http, &base, &digest, "p", n).await;
        let serial = n as f64 / started.elapsed().as_secs_f64();
        row(
            &format!("apply latency, sequential (p50 / p99), {m}"),
            format!(
                "{:.2} / {:.2} ms",
                pct(&lat, 50).as_secs_f64() * 1e3,
                pct(&lat, 99).as_secs_f64() * 1e3
            ),
            "target p99 <= 20 ms",
        );
        row(
            &format!("apply throughput, sequential, {m}"),
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
            &format!("apply throughput, 8 concurrent clients, {m}"),
            format!(
                "{:.0} objects/s",
                done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
            ),
            "",
        );
    }

    // 1b. Apply latency for a well-behaved client, idle and while another
    // identity floods the hub: 800 connections that never finish their TLS
    // handshake and 8 loops of requests as fast as they go.
    {
        let hub = controller(Mode::Tls, &dir.path().join("c1-abuse"), &[]).await;
        let (http, base) = (hub.http.clone(), hub.base.clone());
        http.put(format!("{base}/blobs/{digest}"))
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        let idle = sequential_applies(&http, &base, &digest, "idle", 300).await;
        let created: harvester_api::identity::UserCreated = http
            .post(format!("{base}/users"))
            .json(&json!({"name": "flood", "role": "viewer"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let flood = reqwest::Client::builder()
            .tls_backend_preconfigured(harvester_pki::tls::client_config(hub.ca.as_ref().unwrap(), None).unwrap())
            .build()
            .unwrap();
        let addr = base
            .trim_start_matches("https://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let mut silent = Vec::new();
        for _ in 0..800 {
            silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
        let (sent, throttled) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut loops = Vec::new();
        for _ in 0..8 {
            let (flood, base, token) = (flood.clone(), base.clone(), created.token.clone());
            let (sent, throttled, stop) = (sent.clone(), throttled.clone(), stop.clone());
            loops.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(r) = flood.get(format!("{base}/plugins")).bearer_auth(&token).send().await {
                        sent.fetch_add(1, Ordering::Relaxed);
                        if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                            throttled.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let abused = sequential_applies(&http, &base, &digest, "abused", 300).await;
        let flood_rate = sent.load(Ordering::Relaxed) as f64 / (started.elapsed().as_secs_f64() + 0.5);
        stop.store(true, Ordering::Relaxed);
        for l in loops {
            let _ = l.await;
        }
        drop(silent);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        row(
            "apply p50 / p99, idle (one client, 300 applies)",
            format!("{:.2} / {:.2} ms", ms(pct(&idle, 50)), ms(pct(&idle, 99))),
            "",
        );
        row(
            "apply p50 / p99, under a flood from another identity",
            format!("{:.2} / {:.2} ms", ms(pct(&abused, 50)), ms(pct(&abused, 99))),
            &format!(
                "target p99 <= 2x idle; the flood: 800 silent connections + {flood_rate:.0} requests/s, {} throttled (429)",
                throttled.load(Ordering::Relaxed)
            ),
        );
    }

    // 2. Apply-to-running on two real nodelets.
    let hub2 = controller(Mode::Tls, &dir.path().join("c2"), &[]).await;
    let (http, base) = (hub2.http.clone(), hub2.base.clone());
    let server = base.trim_end_matches("/api/v1alpha1").to_string();
    let token_file = dir.path().join("join-token");
    std::fs::write(&token_file, hub2.token.as_ref().unwrap().to_string()).unwrap();
    let plain = reqwest::Client::new();
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
            "--join-token-file",
            token_file.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{p}"),
            "--command-listen",
            "127.0.0.1:0",
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
        let http = plain.clone();
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
    drop(hub2);

    // 3. 1,000 simulated nodes, 100 plugins.
    let mut rss = Vec::new();
    for mode in [Mode::Tls, Mode::Plain] {
        let m = mode.label();
        let hub = controller(mode, &dir.path().join(format!("c3-{m}")), &["--node-timeout", "120s"]).await;
        let (http, base) = (hub.http.clone(), hub.base.clone());
        let started = Instant::now();
        let mut clients = Vec::new();
        for n in 0..1000 {
            clients.push(hub.node_client(&format!("n{n}")).await);
        }
        if mode == Mode::Tls {
            row(
                "1,000 nodes enrolled, one after another (each its key, CSR, certificate)",
                format!("{:.2} s", started.elapsed().as_secs_f64()),
                "",
            );
        }
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
        let mut sims = Vec::new();
        for (n, client) in clients.iter().enumerate() {
            sims.push(tokio::spawn(sim_node(
                client.clone(),
                base.clone(),
                format!("n{n}"),
                format!("g{}", n % 10),
            )));
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
                                    n.len() == 100
                                        && n.values().all(|x| x["generation"] == g && x["phase"] == "Running")
                                })
                        })
                })
            }
        };
        let first = wait_for("fleet converged", Duration::from_secs(300), converged(1)).await;
        row(
            &format!("1,000 nodes x 100 plugins: first convergence, {m}"),
            format!("{:.2} s", first.as_secs_f64()),
            "",
        );
        let passes = async || {
            let url = format!("{}/metrics", base.trim_end_matches("/api/v1alpha1"));
            let text = http.get(url).send().await.unwrap().text().await.unwrap();
            let get = |s: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(s).and_then(|v| v.trim().parse::<f64>().ok()))
                    .unwrap_or(0.0)
            };
            (
                get("harvester_reconcile_duration_seconds_sum"),
                get("harvester_reconcile_duration_seconds_count"),
            )
        };
        let per_pass = |a: (f64, f64), b: (f64, f64)| (b.0 - a.0) / (b.1 - a.1).max(1.0) * 1e3;
        let t = Instant::now();
        let before = passes().await;
        http.post(format!("{base}/apply"))
            .body(stream.replace("VERSION: \"1\"", "VERSION: \"2\""))
            .send()
            .await
            .unwrap();
        wait_for("fleet converged again", Duration::from_secs(300), converged(2)).await;
        let all_at_once = per_pass(before, passes().await);
        row(
            &format!("1,000 nodes x 100 plugins: converge after changing all plugins, {m}"),
            format!("{:.2} s", t.elapsed().as_secs_f64()),
            &format!("target <= 5 s; AllAtOnce, {all_at_once:.1} ms per reconcile pass"),
        );
        // Measured before the Rolling rollout below, alike in both modes.
        let watching = rss_mb(hub.proc.0.id());
        rss.push(watching);
        row(
            &format!("controller RSS with 1,000 nodes watching, {m}"),
            format!("{watching:.0} MB"),
            "target <= 200 MB",
        );
        if mode == Mode::Plain {
            // The same change as a Rolling rollout: 10% of each plugin's
            // 100 nodes at a time, each healthy for 1 s before the next.
            let rolling = stream.replace(
                "  tickInterval: 1s\n",
                "  tickInterval: 1s\n  rollout: {strategy: Rolling, maxUnavailable: 10%, health: {minReady: 1s}}\n",
            );
            // The revision before must have rolled out completely (10 s
            // healthy by default) to be the one to go back to.
            wait_for("revision 2 complete", Duration::from_secs(120), async || {
                let Ok(r) = http.get(format!("{base}/plugins")).send().await else {
                    return false;
                };
                let v: Value = r.json().await.unwrap_or(Value::Null);
                v["items"]
                    .as_array()
                    .is_some_and(|items| items.iter().all(|p| p["status"]["rollout"]["phase"] == "Complete"))
            })
            .await;
            let t = Instant::now();
            let before = passes().await;
            http.post(format!("{base}/apply"))
                .body(rolling.replace("VERSION: \"1\"", "VERSION: \"3\""))
                .send()
                .await
                .unwrap();
            wait_for("rolling rollout done", Duration::from_secs(300), converged(3)).await;
            row(
                "1,000 nodes x 100 plugins: a Rolling rollout (maxUnavailable 10%, minReady 1s)",
                format!("{:.2} s", t.elapsed().as_secs_f64()),
                &format!(
                    "ten waves of 10 nodes per plugin; {:.1} ms per reconcile pass",
                    per_pass(before, passes().await)
                ),
            );
            row(
                "controller RSS after the Rolling rollout, plain",
                format!("{:.0} MB", rss_mb(hub.proc.0.id())),
                "",
            );
        }

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
                let http = clients[n].clone();
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
            &format!("live report, 200 log lines, from 1,000 nodes (p50 / p99), {m}"),
            format!(
                "{:.2} / {:.2} ms",
                pct(&times, 50).as_secs_f64() * 1e3,
                pct(&times, 99).as_secs_f64() * 1e3
            ),
            "32 in flight",
        );
        row(
            &format!("controller RSS after 600,000 log lines from 1,000 nodes, {m}"),
            format!("{:.0} MB", rss_mb(hub.proc.0.id())),
            "log windows share --log-memory 64Mi",
        );
        for s in sims {
            s.abort();
        }
        drop(clients);
        drop(hub);
    }
    row(
        "memory TLS and identities add, 1,000 nodes watching",
        format!("{:.0} MB", rss[0] - rss[1]),
        "target <= 40 MB",
    );

    // 5. A hub restart under 1,000 real node agents (in this process, each
    // with its own identity, data folder and connections).
    {
        const NODES: usize = 1000;
        let data = dir.path().join("herd");
        let port = free_port();
        let hub = controller_at(Mode::Tls, &data, &[], port).await;
        let token: Value = hub
            .http
            .post(format!("{}/tokens", hub.base))
            .json(&json!({"ttlSeconds": 3600, "uses": NODES}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token_file = dir.path().join("herd-token");
        std::fs::write(&token_file, token["token"].as_str().unwrap()).unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        for i in 0..NODES {
            use harvester_nodelet::node::{self, NodeConfig};
            let config = NodeConfig::simulated_follower(
                format!("herd-{i:04}"),
                dir.path().join(format!("herd-{i:04}")),
                format!("https://127.0.0.1:{port}"),
                token_file.clone(),
                Duration::from_secs(3),
            );
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let _ = node::run(config, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
            });
        }
        let connected = async |hub_http: &reqwest::Client, base: &str| -> Option<usize> {
            let text = hub_http
                .get(base.replace("/api/v1alpha1", "/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("harvester_watch_connections{kind=\"assignments\"} "))
                .and_then(|v| v.trim().parse().ok())
        };
        let ready = async |hub_http: &reqwest::Client, base: &str| -> usize {
            let Ok(r) = hub_http.get(format!("{base}/nodes")).send().await else {
                return 0;
            };
            let list: Value = r.json().await.unwrap_or(Value::Null);
            list["items"].as_array().map_or(0, |items| {
                items
                    .iter()
                    .filter(|n| {
                        n["status"]["conditions"]
                            .as_array()
                            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                    })
                    .count()
            })
        };
        let (http, base) = (hub.http.clone(), hub.base.clone());
        wait_for(
            "1,000 agents enrolled and ready",
            Duration::from_secs(600),
            async || ready(&http, &base).await == NODES,
        )
        .await;
        row(
            "1,000 real node agents: enrolled and Ready",
            format!("{:.1} s", started.elapsed().as_secs_f64()),
            "one process, TLS, each its own certificate",
        );
        drop(hub);
        tokio::time::sleep(Duration::from_secs(8)).await;
        let hub = controller_at(Mode::Tls, &data, &[], port).await;
        let back = Instant::now();
        let mut samples: Vec<(Duration, usize)> = Vec::new();
        while back.elapsed() < Duration::from_secs(120) {
            if let Some(n) = connected(&http, &base).await {
                samples.push((back.elapsed(), n));
                if n == NODES {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let all_back = samples.last().map(|s| s.0).unwrap_or_default();
        let peak = samples
            .iter()
            .map(|(t, n)| {
                let before = samples
                    .iter()
                    .rev()
                    .find(|(u, _)| *u + Duration::from_secs(1) <= *t)
                    .map_or(0, |s| s.1);
                n.saturating_sub(before)
            })
            .max()
            .unwrap_or(0);
        wait_for("all Ready again", Duration::from_secs(120), async || {
            ready(&http, &base).await == NODES
        })
        .await;
        row(
            "hub SIGKILLed under 1,000 agents, back after 8 s: reconnected",
            format!("{:.1} s", all_back.as_secs_f64()),
            &format!(
                "{} of 1,000 reconnected; at most {peak} in one second (full jitter)",
                samples.last().map_or(0, |s| s.1)
            ),
        );
        row(
            "  ... all Ready again",
            format!("{:.1} s", back.elapsed().as_secs_f64()),
            "target <= 2 x --node-timeout (30 s)",
        );
        let _ = stop.send(true);
        drop(hub);
    }

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
