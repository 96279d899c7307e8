//! Registries a node should not have to trust: one on loopback that claims
//! absurd sizes, sends without end, stalls mid-answer or sends a huge
//! manifest. `verify` and a node refuse each by name, in bounded time, and
//! the node keeps its other plugins running without restarting.

use crate::fleet::{Fleet, T};
use crate::support::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The hostile registry: each repository misbehaves in its own way.
struct Hostile {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A valid wasm artifact manifest for `repo` (its title makes it unique).
fn image_manifest(repo: &str) -> Vec<u8> {
    harvester_registry::artifact::build(b"\0asm\x0d\0\x01\0", repo, "2026-01-01T00:00:00Z").manifest
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

/// Holds the connection open, sending nothing more, until the test ends.
fn stall(stop: &AtomicBool) {
    let until = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve(mut s: TcpStream, stop: &AtomicBool) {
    let mut line = String::new();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let parts: Vec<&str> = path.trim_start_matches("/v2/").split('/').collect();
    let json = [("Content-Type", "application/vnd.oci.image.manifest.v1+json".to_string())];
    match parts.as_slice() {
        [""] => respond(&mut s, "200 OK", &[], b"{}"),
        // A signature manifest naming one payload (its blob misbehaves).
        ["hugesig", "manifests", r] if r.starts_with("sha256-") => {
            let m = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", "0".repeat(64)), "size": 2},
                "layers": [{
                    "mediaType": harvester_registry::signing::SIGNATURE_LAYER_MEDIA_TYPE,
                    "digest": format!("sha256:{}", "a".repeat(64)),
                    "size": 300,
                    "annotations": {harvester_registry::signing::SIGNATURE_ANNOTATION: "MEUCIQ=="},
                }],
            });
            respond(&mut s, "200 OK", &json, m.to_string().as_bytes());
        }
        ["fatsig", "manifests", r] if r.starts_with("sha256-") => {
            let pad = "x".repeat(6 << 20);
            let m = format!("{{\"schemaVersion\":2,\"layers\":[],\"annotations\":{{\"pad\":\"{pad}\"}}}}");
            respond(&mut s, "200 OK", &json, m.as_bytes());
        }
        ["stallsig", "manifests", r] if r.starts_with("sha256-") => {
            respond(&mut s, "200 OK", &[("Content-Length", "500".into())], b"{\"schemaV");
            stall(stop);
        }
        [_, "manifests", r] if r.starts_with("sha256-") => respond(&mut s, "404 Not Found", &[], b"{}"),
        ["fatimage", "manifests", _] => {
            let pad = "x".repeat(6 << 20);
            respond(&mut s, "200 OK", &json, format!("{{\"pad\":\"{pad}\"}}").as_bytes());
        }
        [repo, "manifests", _] => respond(&mut s, "200 OK", &json, &image_manifest(repo)),
        ["hugesig" | "hugelen", "blobs", _] => {
            respond(&mut s, "200 OK", &[("Content-Length", "1000000000000000".into())], b"");
        }
        ["endless", "blobs", _] => {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n");
            let chunk = vec![0u8; 64 << 10];
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let head = format!("{:x}\r\n", chunk.len());
                if s.write_all(head.as_bytes()).is_err()
                    || s.write_all(&chunk).is_err()
                    || s.write_all(b"\r\n").is_err()
                {
                    return;
                }
            }
        }
        ["stall", "blobs", _] => {
            respond(&mut s, "200 OK", &[("Content-Length", "1000".into())], b"\0asm");
            stall(stop);
        }
        _ => respond(&mut s, "404 Not Found", &[], b"{}"),
    }
}

fn hostile_registry() -> Hostile {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut served = Vec::new();
        for conn in listener.incoming() {
            if flag.load(Ordering::SeqCst) || served.len() > 500 {
                break;
            }
            let Ok(conn) = conn else { continue };
            let flag = flag.clone();
            served.push(std::thread::spawn(move || serve(conn, &flag)));
        }
        for t in served {
            let _ = t.join();
        }
    });
    Hostile {
        port,
        stop,
        thread: Some(thread),
    }
}

#[test]
fn a_hostile_registry_is_refused_by_name_and_the_node_keeps_running() {
    let reg = hostile_registry();
    let mut f = Fleet::with_controller_args(&["--registry-timeout", "2s"]);
    let key = f.dir.path().join("cosign");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_harvester"))
        .args(["keygen", "--output-key-prefix", key.to_str().unwrap()])
        .env("COSIGN_PASSWORD", "pw")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = format!("{}.pub", key.display());

    // verify: each misbehaviour refused with what it was, quickly, no abort.
    for (repo, said) in [
        ("hugesig", "is 1000000000000000 bytes, over the limit of 1048576"),
        ("fatsig", "over the limit of 4194304"),
        ("stallsig", "timed out"),
        ("fatimage", "over the limit of 4194304"),
    ] {
        let started = Instant::now();
        let out = f.cli(&[
            "verify",
            &format!("127.0.0.1:{}/{repo}:1", reg.port),
            "--key",
            &public,
            "--registry-timeout",
            "1s",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{repo}: a clean refusal, not a crash: {err}"
        );
        assert!(err.contains(said), "{repo}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{repo} took {:?}",
            started.elapsed()
        );
    }

    // A node with a good plugin, then three images it cannot have.
    let port = f.start_node_with(
        "pi4",
        "role=sensor",
        "",
        &[
            "--allow-unsigned",
            "--registry-timeout",
            "1s",
            "--max-component-size",
            "4Mi",
        ],
    );
    f.apply(&f.plugin_yaml("good", "role: sensor", "{gpio: {pins: [17]}}", "1"));
    wait_until(T, "good running", || {
        crate::fleet::on_node(port, "good").is_some_and(|(_, phase)| phase == "Running")
    });
    let pid = f.node_pid("pi4");
    let mut manifest = String::new();
    for repo in ["endless", "hugelen", "stall"] {
        manifest.push_str(&format!(
            "---\napiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: {repo}}}\nspec:\n  image: 127.0.0.1:{}/{repo}:1\n  nodeSelector: {{role: sensor}}\n",
            reg.port
        ));
    }
    f.apply(&manifest);
    let reported = |name: &str| -> (String, String) {
        let p = f.plugin(name);
        let n = &p["status"]["nodes"]["pi4"];
        (
            n["reason"].as_str().unwrap_or("").to_string(),
            n["message"].as_str().unwrap_or("").to_string(),
        )
    };
    for (name, reason, said) in [
        ("endless", "TooLarge", "over the limit of 4194304"),
        ("hugelen", "TooLarge", "is 1000000000000000 bytes"),
        ("stall", "PullFailed", "timed out"),
    ] {
        wait_until(T, &format!("{name} refused with {reason}"), || {
            let (r, m) = reported(name);
            r == reason && m.contains(said)
        });
    }
    // The good plugin ran throughout, on the same process, never restarted.
    assert_eq!(f.node_pid("pi4"), pid);
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the node process never died"
    );
    let good = || -> serde_json::Value {
        status(port).unwrap()["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "good")
            .unwrap()
            .clone()
    };
    let now = good();
    assert_eq!(
        (now["phase"].as_str(), now["restarts"].as_u64()),
        (Some("Running"), Some(0))
    );
    let ticks = now["ticks"].as_u64().unwrap();
    wait_until(T, "good keeps ticking", || good()["ticks"].as_u64().unwrap() > ticks);
    drop(reg);
}

/// The largest the process has been, in KiB.
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn hostile_manifests_get_a_4xx_and_the_hub_memory_holds() {
    let f = Fleet::new();
    let hub = f.hub();
    // Warm the paths the bomb takes, so the peak below is the bomb's alone.
    let (code, _) = hub.call("POST", "/api/v1alpha1/apply", "kind: Plugin\nmetadata: {name: a}\n");
    assert_eq!(code, 422);
    let before = peak_kib(f.controller_pid());

    let mut bomb = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..12 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    bomb.push_str("kind: Plugin\n");
    assert!(bomb.len() < 4096, "a few KiB");
    let started = Instant::now();
    let (code, body) = hub.call("POST", "/api/v1alpha1/apply", &bomb);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("expands to more than 100000 values"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let absurd = f
        .plugin_yaml("absurd", "role: sensor", "{}", "1")
        .replace("tickInterval: 100ms", "tickInterval: 99999999999999999999h");
    let (code, body) = hub.call("POST", "/api/v1alpha1/apply", &absurd);
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("spec.tickInterval") && body.contains("too long"),
        "{body}"
    );
    let (code, body) = hub.call(
        "POST",
        "/api/v1alpha1/apply",
        &absurd.replace("99999999999999999999h", "48h"),
    );
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("spec.tickInterval: 48s is too long") || body.contains("at most 24h"),
        "{body}"
    );

    let after = peak_kib(f.controller_pid());
    assert!(
        after < before + 16 * 1024,
        "the hub's peak grew from {before} KiB to {after} KiB"
    );
    // And it still answers.
    assert_eq!(hub.call("GET", "/api/v1alpha1/plugins", "").0, 200);
}

/// Whether the peer has closed `s` (it reads as ended or reset), waiting
/// up to `within` for it to.
fn closed_by_peer(s: &mut impl std::io::Read, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if Instant::now() > deadline {
                    return false;
                }
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn connections_that_never_finish_do_not_stop_the_hub_and_are_closed() {
    let f = Fleet::with_controller_args(&["--handshake-timeout", "5s", "--header-timeout", "5s"]);
    let hub = f.hub();
    // 200 that finish the TLS handshake and never finish their request's
    // headers, then 800 that never send a TLS hello.
    let mut partial: Vec<_> = (0..200)
        .map(|_| {
            let mut s = hub.connect().unwrap();
            s.write_all(b"GET /api/v1alpha1/plugins HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .unwrap();
            s.flush().unwrap();
            s
        })
        .collect();
    let mut silent: Vec<TcpStream> = (0..800)
        .map(|_| TcpStream::connect(("127.0.0.1", f.port)).unwrap())
        .collect();
    // Others are answered while those are still held open: nobody waits
    // behind them.
    let (code, _) = hub.call("GET", "/api/v1alpha1/plugins", "");
    assert_eq!(code, 200);
    let last = silent.last_mut().unwrap();
    last.set_nonblocking(true).unwrap();
    assert!(
        !closed_by_peer(last, Duration::ZERO),
        "still open when the others were answered"
    );
    last.set_nonblocking(false).unwrap();
    assert_eq!(f.cli_ok(&["get", "plugins", "-o", "name"]), "");
    // Then the hub closes every one of them.
    for s in silent.iter_mut() {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        assert!(closed_by_peer(s, T), "a silent connection the hub never closed");
    }
    for s in partial.iter_mut() {
        s.sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        assert!(
            closed_by_peer(s, T),
            "a connection with unfinished headers the hub never closed"
        );
    }
    assert_eq!(hub.call("GET", "/api/v1alpha1/plugins", "").0, 200);
}

#[test]
fn each_identity_is_held_to_its_rate_its_streams_and_the_node_quota() {
    let f = Fleet::with_controller_args(&[
        "--rate-limit",
        "1",
        "--rate-burst",
        "20",
        "--max-streams",
        "2",
        "--max-nodes",
        "1",
    ]);
    let token = f.cli_ok(&["user", "create", "flood", "--role", "viewer"]);
    let credential = token.trim().rsplit_once("::").unwrap().1.to_string();
    let flood = f.hub().with_token(&credential);

    // Past its burst, one identity gets 429 with Retry-After; others do not notice.
    let mut throttled = None;
    for _ in 0..40 {
        let (code, head, body) = flood.raw("GET", "/api/v1alpha1/plugins", &[], b"");
        if code == 429 {
            throttled = Some((head, String::from_utf8_lossy(&body).to_string()));
            break;
        }
        assert_eq!(code, 200);
    }
    let (head, body) = throttled.expect("a flood is throttled");
    assert!(head.to_ascii_lowercase().contains("retry-after: "), "{head}");
    assert!(
        body.contains("TooManyRequests") && body.contains("user/flood"),
        "{body}"
    );
    assert_eq!(
        f.hub().call("GET", "/api/v1alpha1/plugins", "").0,
        200,
        "the admin has its own budget"
    );

    // Two open watches per identity; the third waits for one to close.
    let admin = f.hub();
    let open = |hub: &crate::support::Hub| {
        let mut s = hub.connect().unwrap();
        hub.send(&mut s, "GET", "/api/v1alpha1/watch", &[], b"");
        let mut buf = [0u8; 1024];
        let n = std::io::Read::read(&mut s, &mut buf).unwrap();
        (s, String::from_utf8_lossy(&buf[..n]).to_string())
    };
    let (first, said) = open(&admin);
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    let (_second, said) = open(&admin);
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    let (_third, said) = open(&admin);
    assert!(
        said.starts_with("HTTP/1.1 429") && said.contains("TooManyStreams"),
        "{said}"
    );
    drop(first);
    wait_until(T, "a watch slot freed by a closed watch", || {
        open(&admin).1.starts_with("HTTP/1.1 200")
    });

    // One Node kept at most: another is refused by name.
    let node = |name: &str| format!("apiVersion: harvester.dev/v1alpha1\nkind: Node\nmetadata: {{name: {name}}}\n");
    assert_eq!(admin.call("POST", "/api/v1alpha1/apply", &node("n1")).0, 200);
    let (code, body) = admin.call("POST", "/api/v1alpha1/apply", &node("n2"));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("QuotaExceeded") && body.contains("--max-nodes"), "{body}");
    assert_eq!(
        admin.call("POST", "/api/v1alpha1/apply", &node("n1")).0,
        200,
        "an existing one may be written again"
    );
}
