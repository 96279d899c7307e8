//! Shared helpers: real components built from the repo's plugins (cached by
//! source hash), nodes with simulated hardware, and bounded waits.

use harvester_api::{DurationSpec, Grants, MemorySize};
use harvester_api::{Limits, RunSpec};
use harvester_nodelet::events::{Event, EventKind};
use harvester_nodelet::hardware::sim::{self, SimHandles, SimProfile};
use harvester_nodelet::runtime::RestartPolicy;
use harvester_nodelet::{PluginSpec, Runtime, RuntimeOptions};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::TryRecvError;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn artifacts() -> PathBuf {
    let dir = repo().join("target/plugin-builds");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn plugin_dir(name: &str) -> PathBuf {
    let showcase = repo().join("plugins").join(name);
    if showcase.is_dir() {
        showcase
    } else {
        repo().join("cli/tests/plugins").join(name)
    }
}

pub fn componentize_py() -> PathBuf {
    let venv = repo().join(".venv/bin/componentize-py");
    if std::env::var_os("HARVESTER_COMPONENTIZE_PY").is_none() && venv.exists() {
        venv
    } else {
        harvester::build::componentize_py()
    }
}

/// The component of plugin `name` (a showcase plugin or a test plugin),
/// built with `harvester plugin build`'s code and cached by source hash.
pub fn component(name: &str) -> Arc<Vec<u8>> {
    static BUILDS: OnceLock<Mutex<BTreeMap<String, Arc<Vec<u8>>>>> = OnceLock::new();
    let builds = BUILDS.get_or_init(Default::default);
    // One build at a time: each is CPU-heavy, and two cargo runs on one
    // plugin would fight over its target dir.
    let mut builds = builds.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = builds.get(name) {
        return b.clone();
    }
    let dir = plugin_dir(name);
    let out = harvester::build::build_cached(&dir, &artifacts(), &componentize_py())
        .unwrap_or_else(|e| panic!("building plugin {name}: {e:#}"));
    let bytes = Arc::new(std::fs::read(&out).unwrap());
    builds.insert(name.to_string(), bytes.clone());
    bytes
}

/// Where test nodes share compiled components, so each is compiled once per
/// run (tests about the cache itself use their own folder).
pub fn shared_data_dir() -> PathBuf {
    artifacts().join("node-data")
}

pub struct Node {
    pub runtime: Arc<Runtime>,
    pub sim: SimHandles,
    pub events: Mutex<Receiver<Event>>,
    pub seen: Mutex<Vec<Event>>,
}

pub fn fast_restarts() -> RestartPolicy {
    RestartPolicy {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(800),
        crash_loop_after: 3,
        healthy_after_ticks: 10,
    }
}

pub fn node() -> Node {
    node_with(&shared_data_dir(), SimProfile::default())
}

pub fn node_with(data_dir: &Path, profile: SimProfile) -> Node {
    let (hw, sim) = sim::build(&profile);
    let runtime = Arc::new(
        Runtime::new(
            RuntimeOptions {
                data_dir: data_dir.to_path_buf(),
                restart: fast_restarts(),
            },
            hw,
        )
        .unwrap(),
    );
    let events = Mutex::new(runtime.subscribe());
    Node {
        runtime,
        sim,
        events,
        seen: Mutex::new(Vec::new()),
    }
}

impl Node {
    /// Every event so far (collected from the broadcast channel).
    pub fn events(&self) -> Vec<Event> {
        let mut rx = self.events.lock().unwrap();
        let mut seen = self.seen.lock().unwrap();
        loop {
            match rx.try_recv() {
                Ok(e) => seen.push(e),
                Err(TryRecvError::Lagged(n)) => panic!("test fell {n} events behind"),
                Err(_) => break,
            }
        }
        seen.clone()
    }

    /// Waits until an event matches, failing the test after `timeout`.
    pub fn wait_event(&self, timeout: Duration, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            if Instant::now() > deadline {
                panic!(
                    "no event {what} within {timeout:?}; events: {:#?}",
                    self.events().iter().rev().take(15).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every value `plugin` emitted as `name`, with when.
    pub fn telemetry(&self, plugin: &str, name: &str) -> Vec<(SystemTime, f64)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::Telemetry { name: n, value, .. } if e.plugin == plugin && n == name => Some((e.at, value)),
                _ => None,
            })
            .collect()
    }

    /// The LED colour at `index` as `#rrggbb` on the simulated strip.
    pub fn led(&self, index: usize) -> String {
        self.sim.leds.current()[index].hex()
    }
}

/// Polls `cond` every 20 ms until it holds, failing after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn grants(yaml: &str) -> Grants {
    serde_yaml::from_str(yaml).unwrap()
}

pub fn spec(name: &str, plugin: &str, grants_yaml: &str, config: &[(&str, &str)]) -> PluginSpec {
    PluginSpec {
        name: name.to_string(),
        source: format!("{plugin}.wasm"),
        component: component(plugin).into(),
        run: RunSpec {
            grants: grants(grants_yaml),
            config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            tick_interval: DurationSpec(Duration::from_millis(100)),
            limits: Limits {
                memory: MemorySize::mebibytes(64),
                call_timeout: DurationSpec(Duration::from_millis(1000)),
                ..Limits::default()
            },
        },
        generation: None,
    }
}

pub fn with_tick(mut s: PluginSpec, ms: u64) -> PluginSpec {
    s.run.tick_interval = DurationSpec(Duration::from_millis(ms));
    s
}

pub fn with_limits(mut s: PluginSpec, memory_mib: u64, timeout_ms: u64) -> PluginSpec {
    s.run.limits = Limits {
        memory: MemorySize::mebibytes(memory_mib),
        call_timeout: DurationSpec(Duration::from_millis(timeout_ms)),
        ..Limits::default()
    };
    s
}

/// Flips one bit in the middle of every `.cwasm` file in `dir`: damage
/// wasmtime's own header check never sees.
pub fn damage_compiled_code(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            let mut code = std::fs::read(&path).unwrap();
            let mid = code.len() / 2;
            code[mid] ^= 0x01;
            std::fs::write(&path, code).unwrap();
        }
    }
}

/// Kills the process by pid when the test ends, however it ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A minimal HTTP/1.1 request to 127.0.0.1.
pub fn http(method: &str, port: u16, path: &str) -> Option<(u16, String)> {
    http_body(method, port, path, "")
}

/// A minimal HTTP/1.1 request with a JSON body to 127.0.0.1.
pub fn http_body(method: &str, port: u16, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

pub fn status(port: u16) -> Option<serde_json::Value> {
    let (code, body) = http("GET", port, "/status")?;
    (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

/// A real CNCF distribution registry (Debian's docker-registry) on loopback,
/// started with the repository's own `registry/start` script.
pub struct TestRegistry {
    pub port: u16,
    pub dir: PathBuf,
    proc: Option<Proc>,
}

impl TestRegistry {
    pub fn start(dir: &Path) -> TestRegistry {
        let mut r = TestRegistry {
            port: free_port(),
            dir: dir.to_path_buf(),
            proc: None,
        };
        r.resume();
        r
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it again, same port and data.
    pub fn resume(&mut self) {
        let child = std::process::Command::new("bash")
            .arg(repo().join("registry/start"))
            .arg(&self.dir)
            .arg(self.host())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("running registry/start (is docker-registry installed? scripts/setup installs it)");
        self.proc = Some(Proc(child));
        let port = self.port;
        wait_until(Duration::from_secs(20), "registry up", || {
            http("GET", port, "/v2/").is_some_and(|r| r.0 == 200)
        });
    }

    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// An HTTP/1.1 request to 127.0.0.1 with any content type and a binary body.
pub fn http_raw(method: &str, port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, out[split + 4..].to_vec())
}

/// `base` with a custom section appended: a valid, distinct component, so
/// tests get their own digests without sharing blobs.
pub fn variant(base: &[u8], tag: &str) -> Vec<u8> {
    let name = b"harvester-test";
    let payload_len = 1 + name.len() + tag.len();
    assert!(payload_len < 128 && name.len() < 128);
    let mut out = base.to_vec();
    out.push(0);
    out.push(payload_len as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(tag.as_bytes());
    out
}

/// A hub on 127.0.0.1 over TLS, trusting its CA, as the admin (bearer
/// token), as a node (its certificate), or as nobody.
#[derive(Clone)]
pub struct Hub {
    pub port: u16,
    ca: String,
    token: Option<String>,
    cert: Option<(String, String)>,
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl Hub {
    /// The admin, from the client configuration the hub wrote in `data`.
    pub fn admin(port: u16, data: &Path) -> Hub {
        let text = std::fs::read_to_string(data.join("admin.yaml")).unwrap();
        let config: harvester_api::identity::ClientConfig = serde_yaml::from_str(&text).unwrap();
        let c = config.context(None).unwrap().clone();
        Hub {
            port,
            ca: c.certificate_authority_data,
            token: Some(c.token),
            cert: None,
        }
    }

    /// The same hub's CA on another port (the dashboard's).
    pub fn at(&self, port: u16) -> Hub {
        Hub { port, ..self.clone() }
    }

    /// No credential at all.
    pub fn anonymous(&self) -> Hub {
        Hub {
            token: None,
            cert: None,
            ..self.clone()
        }
    }

    pub fn with_token(&self, token: &str) -> Hub {
        Hub {
            token: Some(token.to_string()),
            cert: None,
            ..self.clone()
        }
    }

    /// The node whose data directory is `node_data`, by its certificate.
    pub fn as_node(&self, node_data: &Path) -> Hub {
        let read = |f: &str| std::fs::read_to_string(node_data.join("pki").join(f)).unwrap();
        self.with_cert(&read("node.crt"), &read("node.key"))
    }

    pub fn with_cert(&self, cert: &str, key: &str) -> Hub {
        Hub {
            token: None,
            cert: Some((cert.to_string(), key.to_string())),
            ..self.clone()
        }
    }

    /// A TLS connection, handshake done (an error when the hub refuses it).
    pub fn connect(&self) -> Result<TlsStream, String> {
        let identity = self.cert.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
        let config = harvester_pki::tls::client_config(&self.ca, identity).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
        let sock = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut s = rustls::StreamOwned::new(conn, sock);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
        }
        Ok(s)
    }

    /// Writes a request's head and body; the answer is for the caller to read.
    pub fn send(&self, s: &mut TlsStream, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut head = format!("{method} {path} HTTP/1.1\r\nContent-Length: {}\r\n", body.len());
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: 127.0.0.1:{}\r\n", self.port));
        }
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        s.flush().unwrap();
    }

    /// One request on its own connection: (status, head, body), or why the
    /// connection failed.
    pub fn try_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, String, Vec<u8>), String> {
        let mut s = self.connect()?;
        let mut all = headers.to_vec();
        all.push(("Connection", "close"));
        self.send(&mut s, method, path, &all, body);
        let mut out = Vec::new();
        let mut buf = [0u8; 16 << 10];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                // A peer that closes without close_notify: what came is all.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) if out.is_empty() => return Err(e.to_string()),
                Err(_) => break,
            }
        }
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("no HTTP answer: {:?}", String::from_utf8_lossy(&out)))?;
        let head = String::from_utf8_lossy(&out[..split]).to_string();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut body = out[split + 4..].to_vec();
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        Ok((status, head, body))
    }

    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
        self.try_raw(method, path, headers, body).unwrap()
    }

    /// A request with a JSON (or YAML) body: (status, body).
    pub fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let (code, _, body) = self.raw(method, path, &[("Content-Type", "application/json")], body.as_bytes());
        (code, String::from_utf8_lossy(&body).into_owned())
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 || data.len() < end + 2 + size {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[(end + 4 + size).min(data.len())..];
    }
    out
}

/// The lines of `r`, as they come, from a thread of their own.
pub fn lines_of(r: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
