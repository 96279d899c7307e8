//! Identities, end to end: a real controller over TLS, real nodelets that
//! enrol with join tokens, and requests as nobody, as the admin, as one
//! node or as another, each on its own TLS connection.

use crate::fleet::{Fleet, T, runs};
use crate::support::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A nodelet `name` of `fleet` enrolling with the token in `token`,
/// keeping its state in `data`.
fn nodelet(fleet: &Fleet, name: &str, token: &Path, data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_harvester"));
    c.args(["nodelet", "--name", name, "--sim-devices", "leds", "--allow-unsigned"])
        .args(["--controller", &format!("https://127.0.0.1:{}", fleet.port)])
        .arg("--join-token-file")
        .arg(token)
        .args(["--listen", "127.0.0.1:0", "--command-listen", "127.0.0.1:0", "--data"])
        .arg(data);
    c
}

/// A nodelet run to completion (it exits when it cannot enrol).
fn nodelet_once(fleet: &Fleet, name: &str, token: &Path) -> Output {
    let mut child = nodelet(fleet, name, token, &fleet.dir.path().join(name))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "nodelet {name} should have given up");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// Reads `watch` until its stream ends, within 5 s (else panics with
/// `open`): its last chunk arrives, or the connection closes (true).
fn stream_ends(watch: &mut TlsStream, open: &str) -> bool {
    use std::io::Read;
    watch.sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut buf, mut seen) = ([0u8; 4096], Vec::new());
    loop {
        match watch.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                // The last chunk: alone in this read, or after a chunk's end.
                let last = b"0\r\n\r\n";
                if seen.ends_with(last)
                    && (seen.len() == last.len() || seen[..seen.len() - last.len()].ends_with(b"\r\n"))
                {
                    return false;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("{open}: {:?}", String::from_utf8_lossy(&seen))
            }
            // Closed without TLS's goodbye, or reset: closed all the same.
            Err(_) => return true,
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(fleet: &Fleet, file: &str, text: &str) -> std::path::PathBuf {
    let p = fleet.dir.path().join(file);
    std::fs::write(&p, text).unwrap();
    p
}

/// Every route but /healthz needs a credential; a node certificate opens
/// only the node protocol, for that node, for what it was assigned.
#[test]
fn nobody_gets_in_without_an_identity_and_a_node_acts_only_as_itself() {
    let mut fleet = Fleet::new();
    let a = fleet.start_node("a", "role=a", "leds");
    fleet.start_node("b", "role=b", "leds");
    let probe = component("probe");
    let only_b = variant(&probe, "only-b");
    std::fs::write(fleet.dir.path().join("b.wasm"), &only_b).unwrap();
    fleet.apply(&fleet.plugin_yaml("pa", "role: a", "{gpio: {pins: [17]}}", "1"));
    let yaml = fleet.plugin_yaml("pb", "role: b", "{gpio: {pins: [18]}}", "1").replace(
        fleet.dir.path().join("probe.wasm").to_str().unwrap(),
        fleet.dir.path().join("b.wasm").to_str().unwrap(),
    );
    fleet.apply(&yaml);
    fleet.cli_ok(&["rollout", "status", "plugin/pa", "--timeout", "60s"]);
    fleet.cli_ok(&["rollout", "status", "plugin/pb", "--timeout", "60s"]);
    assert!(runs(a, "pa", 1));
    let b_digest = harvester_api::Digest::of(&only_b).to_string();
    let a_digest = harvester_api::Digest::of(&probe).to_string();

    let hub = fleet.hub();
    let nobody = hub.anonymous();
    let routes = [
        ("GET", "/api/v1alpha1/plugins".to_string()),
        ("GET", "/api/v1alpha1/nodes/a".to_string()),
        ("POST", "/api/v1alpha1/apply".to_string()),
        ("GET", "/api/v1alpha1/watch".to_string()),
        ("DELETE", "/api/v1alpha1/plugins/pa".to_string()),
        ("PUT", "/api/v1alpha1/nodes/a/register".to_string()),
        ("PUT", "/api/v1alpha1/nodes/a/status".to_string()),
        ("GET", "/api/v1alpha1/nodes/a/assignments".to_string()),
        ("POST", "/api/v1alpha1/nodes/a/live".to_string()),
        ("POST", "/api/v1alpha1/nodes/a/commands/1".to_string()),
        ("GET", format!("/api/v1alpha1/blobs/{a_digest}")),
        ("GET", format!("/api/v1alpha1/compiled/{a_digest}?target=x&engine=y")),
        ("GET", "/api/v1alpha1/logs".to_string()),
        ("POST", "/api/v1alpha1/plugins/pa/commands/gpio".to_string()),
        ("GET", "/metrics".to_string()),
        ("GET", "/api/v1alpha1/prometheus/targets".to_string()),
        ("GET", "/api/v1alpha1/tokens".to_string()),
        ("POST", "/api/v1alpha1/tokens".to_string()),
        ("POST", "/api/v1alpha1/nodes/a/revoke".to_string()),
        ("POST", "/api/v1alpha1/enrol".to_string()),
        ("POST", "/api/v1alpha1/nodes/a/certificate".to_string()),
    ];
    for (method, path) in &routes {
        let (code, body) = nobody.call(method, path, "{}");
        assert_eq!(code, 401, "{method} {path} without a credential: {body}");
        let (code, _) = hub.with_token(&"0".repeat(64)).call(method, path, "{}");
        assert_eq!(code, 401, "{method} {path} with a made-up token");
    }
    assert_eq!(nobody.call("GET", "/healthz", "").0, 200);
    assert_eq!(hub.call("GET", "/api/v1alpha1/plugins", "").0, 200);

    // Node a, by its certificate.
    let as_a = fleet.hub_as_node("a");
    assert_eq!(as_a.call("POST", "/api/v1alpha1/nodes/a/heartbeat", "").0, 204);
    for (method, path, body) in [
        ("PUT", "/api/v1alpha1/nodes/b/status", "{}"),
        ("PUT", "/api/v1alpha1/nodes/b/register", "{}"),
        ("POST", "/api/v1alpha1/nodes/b/heartbeat", ""),
        ("GET", "/api/v1alpha1/nodes/b/assignments", ""),
        ("POST", "/api/v1alpha1/nodes/b/live", "{}"),
        (
            "POST",
            "/api/v1alpha1/nodes/b/commands/1",
            "{\"ok\": true, \"message\": \"forged\"}",
        ),
        (
            "POST",
            "/api/v1alpha1/nodes/b/certificate",
            "{\"node\": \"b\", \"csr\": \"x\"}",
        ),
    ] {
        let (code, answer) = as_a.call(method, path, body);
        assert_eq!(code, 403, "node a: {method} {path}: {answer}");
        assert!(answer.contains("may act only as itself"), "{answer}");
    }
    let (code, answer) = as_a.call("GET", &format!("/api/v1alpha1/blobs/{b_digest}"), "");
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("not assigned"), "{answer}");
    let (code, _) = fleet
        .hub_as_node("b")
        .call("GET", &format!("/api/v1alpha1/blobs/{b_digest}"), "");
    assert_eq!(code, 200, "b may fetch what it runs");
    for (method, path) in [
        ("POST", "/api/v1alpha1/apply"),
        ("GET", "/api/v1alpha1/plugins"),
        ("GET", "/api/v1alpha1/logs"),
        ("POST", "/api/v1alpha1/tokens"),
        ("POST", "/api/v1alpha1/nodes/b/revoke"),
    ] {
        let (code, answer) = as_a.call(method, path, "{}");
        assert_eq!(code, 403, "node a: {method} {path}: {answer}");
    }

    // A certificate for "a" from another CA does not get past TLS.
    let other = tempfile::tempdir().unwrap();
    let (ca, _) = harvester_pki::Ca::load_or_create(other.path()).unwrap();
    let key = harvester_pki::NodeKey::generate().unwrap();
    let forged = ca
        .sign_node("a", &key.csr("a").unwrap(), Duration::from_secs(3600))
        .unwrap();
    let refused = hub
        .with_cert(&forged.pem, &key.pem())
        .try_raw("POST", "/api/v1alpha1/nodes/a/heartbeat", &[], b"");
    assert!(
        refused.as_ref().map_or(true, |(code, _, _)| *code >= 400),
        "{:?}",
        refused.map(|r| r.0)
    );
}

#[test]
fn join_tokens_expire_run_out_and_only_open_a_hub_with_their_ca() {
    let fleet = Fleet::new();
    // One use: the first board enrols, the second is refused.
    let once = write(&fleet, "once", &fleet.token(&["--uses", "1"]));
    let mut first = Proc(
        nodelet(&fleet, "first", &once, &fleet.dir.path().join("first"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(T, "first enrolled", || {
        fleet.cli(&["get", "node", "first"]).status.success()
    });
    let key_mode = std::fs::metadata(fleet.dir.path().join("first/pki/node.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key_mode.permissions().mode() & 0o777, 0o600);
    let out = nodelet_once(&fleet, "second", &once);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is used up"), "{}", stderr(&out));
    assert!(
        !fleet.cli(&["get", "node", "second"]).status.success(),
        "nothing stored"
    );

    // Past its TTL.
    let brief = write(&fleet, "brief", &fleet.token(&["--ttl", "1s"]));
    std::thread::sleep(Duration::from_millis(1500));
    let out = nodelet_once(&fleet, "late", &brief);
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    // A token whose secret is wrong, and text that is no token.
    let good = fleet.token(&[]);
    let (head, secret) = good.rsplit_once('.').unwrap();
    let flipped = if secret.starts_with('0') { "1" } else { "0" };
    let wrong = write(&fleet, "wrong", &format!("{head}.{flipped}{}", &secret[1..]));
    let out = nodelet_once(&fleet, "guess", &wrong);
    assert!(stderr(&out).contains("unknown token"), "{}", stderr(&out));
    let junk = write(&fleet, "junk-token", "hello");
    let out = nodelet_once(&fleet, "junk", &junk);
    assert!(stderr(&out).contains("not a join token"), "{}", stderr(&out));

    // A token of another hub: this hub does not present that CA, so the
    // board sends nothing and refuses.
    let elsewhere = Fleet::new();
    let foreign = write(&fleet, "foreign", &elsewhere.token(&[]));
    let out = nodelet_once(&fleet, "stray", &foreign);
    assert!(
        stderr(&out).contains("does not present the CA this join token names"),
        "{}",
        stderr(&out)
    );
    assert!(!fleet.cli(&["get", "node", "stray"]).status.success());

    // A name with a working certificate is not enrolled again.
    let more = write(&fleet, "more", &fleet.token(&["--uses", "2"]));
    let twin = fleet.dir.path().join("twin");
    std::fs::create_dir_all(&twin).unwrap();
    let out = nodelet(&fleet, "first", &more, &twin).output().unwrap();
    assert!(stderr(&out).contains("enrolled already"), "{}", stderr(&out));
    assert!(first.0.try_wait().unwrap().is_none(), "the real one runs on");
    first.0.kill().unwrap();
    let tokens = fleet.cli_ok(&["token", "list"]);
    assert!(
        tokens.contains("USES LEFT") && !tokens.contains(&good[good.len() - 64..]),
        "{tokens}"
    );
}

/// Revoked: refused at once, its open watch closed, its plugins running on.
/// Renewed: before expiry, without a restart.
#[test]
fn a_revoked_node_is_cut_off_at_once_and_certificates_renew_by_themselves() {
    let mut fleet = Fleet::with_controller_args(&["--node-cert-ttl", "6s"]);
    let pi4 = fleet.start_node("pi4", "role=sensor", "leds");
    fleet.apply(&fleet.plugin_yaml("probe", "role: sensor", "{gpio: {pins: [17]}}", "1"));
    fleet.cli_ok(&["rollout", "status", "plugin/probe", "--timeout", "60s"]);
    let pid = fleet.node_pid("pi4");
    let serial = || {
        let pem = std::fs::read_to_string(fleet.dir.path().join("pi4/pki/node.crt")).unwrap();
        harvester_pki::CertInfo::of_pem(&pem).unwrap()
    };
    let first = serial();
    // Renewed at two thirds of 6 s, again and again; the node stays Ready
    // past its first certificate's expiry.
    wait_until(Duration::from_secs(30), "two renewals", || {
        let now = serial();
        now.serial != first.serial && now.not_after >= first.not_after + Duration::from_secs(6)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(std::time::SystemTime::now() > first.not_after);
    let node = fleet.cli_ok(&["get", "node", "pi4"]);
    assert!(node.contains("Ready") && !node.contains("NotReady"), "{node}");
    assert_eq!(fleet.node_pid("pi4"), pid, "no restart");

    // An open watch, as the node.
    let as_pi4 = fleet.hub_as_node("pi4");
    let mut watch = as_pi4.connect().unwrap();
    as_pi4.send(&mut watch, "GET", "/api/v1alpha1/nodes/pi4/assignments", &[], b"");
    let mut buf = [0u8; 4096];
    use std::io::Read;
    assert!(watch.read(&mut buf).unwrap() > 0, "the stream starts");

    let out = fleet.cli_ok(&["node", "revoke", "pi4"]);
    assert!(out.contains("revoked"), "{out}");
    // The stream ends at once, not at the next keepalive: its last chunk
    // arrives (or the connection closes).
    let closed = stream_ends(&mut watch, "the watch stays open after the revocation");
    // The same connection, if still open, carries no more of its requests.
    if !closed {
        as_pi4.send(&mut watch, "POST", "/api/v1alpha1/nodes/pi4/heartbeat", &[], b"");
        let mut answer = Vec::new();
        // The head and the JSON error body.
        while !answer.ends_with(b"}") {
            match watch.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains("revoked"), "{answer}");
    }
    let (code, body) = fleet
        .hub_as_node("pi4")
        .call("POST", "/api/v1alpha1/nodes/pi4/heartbeat", "");
    assert_eq!(code, 401);
    assert!(body.contains("revoked"), "{body}");
    wait_until(T, "the hub sees it gone", || {
        fleet.cli_ok(&["get", "node", "pi4"]).contains("NotReady")
    });
    assert!(runs(pi4, "probe", 1), "the board keeps running its plugins");
    assert!(
        std::fs::read_to_string(fleet.dir.path().join("pi4.log"))
            .unwrap()
            .contains("was revoked")
    );
}

/// What must stay on loopback is refused anywhere else, before anything
/// listens.
#[test]
fn plain_http_and_plugin_commands_stay_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_harvester"))
            .args(args)
            .output()
            .unwrap()
    };
    let data = dir.path().join("hub");
    let out = run(&[
        "controller",
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
        "--no-dashboard",
        "--insecure-plain-http",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("plain HTTP is for loopback only"),
        "{}",
        stderr(&out)
    );
    let manifest = dir.path().join("node.yaml");
    std::fs::write(&manifest, "plugins: []\n").unwrap();
    let out = run(&[
        "nodelet",
        "--standalone",
        manifest.to_str().unwrap(),
        "--data",
        dir.path().join("node").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--command-listen",
        "0.0.0.0:0",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("loopback only"), "{}", stderr(&out));
}

/// The CLI as a person with their own client configuration (a config
/// home of their own, no HARVESTER_CONFIG).
fn as_person(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harvester"))
        .args(args)
        .env("XDG_CONFIG_HOME", home)
        .env_remove("HARVESTER_CONFIG")
        .env_remove("HARVESTER_SERVER")
        .env_remove("HARVESTER_CONTEXT")
        .output()
        .unwrap()
}

/// Makes user `name` on `fleet`'s hub and logs in as them from `home`:
/// (the token file, what login said).
fn login(
    fleet: &Fleet,
    home: &Path,
    name: &str,
    role: &str,
    server: &str,
    extra: &[&str],
) -> (std::path::PathBuf, String) {
    let token = fleet.cli_ok(&["user", "create", name, "--role", role]);
    let file = home.with_extension(format!("{}.token", fleet.port));
    std::fs::write(&file, token).unwrap();
    let mut args = vec!["login", server, "--token-file", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let said = ok(as_person(home, &args));
    (file, said)
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Users with roles, each from their own client configuration, several
/// hubs as contexts, deletion that takes effect at once, and the audit
/// trail of it all.
#[test]
fn people_act_by_their_role_from_their_own_configuration_and_are_audited() {
    let mut fleet = Fleet::new();
    fleet.start_node("pi4", "role=sensor", "leds");
    fleet.apply(&fleet.plugin_yaml("probe", "role: sensor", "{gpio: {pins: [17]}}", "1"));
    fleet.cli_ok(&["rollout", "status", "plugin/probe", "--timeout", "60s"]);
    let server = format!("https://127.0.0.1:{}", fleet.port);
    let alice_home = fleet.dir.path().join("alice");
    let bob_home = fleet.dir.path().join("bob");

    // The hub's first start gave the user who started it an admin context.
    let starter = fleet.dir.path().join("config-home");
    assert_eq!(ok(as_person(&starter, &["whoami"])).trim(), "admin (admin)");

    // No configuration yet: one line saying what to do.
    let out = as_person(&alice_home, &["get", "plugins"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("harvester login"), "{}", stderr(&out));
    let out = as_person(&alice_home, &["get", "plugins", "--config", "/nonexistent/config.yaml"]);
    assert!(stderr(&out).contains("cannot read the client configuration /nonexistent/config.yaml"));
    let junk = write(&fleet, "junk.yaml", "server: [\n");
    let out = as_person(&alice_home, &["get", "plugins", "--config", junk.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("not a Harvester client configuration"),
        "{}",
        stderr(&out)
    );

    // A viewer: logs in with the token, reads, may not write.
    let (alice, said) = login(&fleet, &alice_home, "alice", "viewer", &server, &[]);
    assert!(said.contains("as alice (viewer)"), "{said}");
    let file = alice_home.join("harvester/config.yaml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(ok(as_person(&alice_home, &["get", "plugins"])).contains("probe"));
    let manifest = write(
        &fleet,
        "alice.yaml",
        &fleet.plugin_yaml("mine", "role: sensor", "{gpio: {pins: [18]}}", "1"),
    );
    for args in [
        vec!["apply", "-f", manifest.to_str().unwrap()],
        vec!["delete", "plugin", "probe"],
        vec!["exec", "plugin/probe", "gpio"],
    ] {
        let out = as_person(&alice_home, &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("needs the operator role"),
            "{args:?}: {}",
            stderr(&out)
        );
    }

    // An operator writes, but may not make users, nor end a board's access:
    // deleting its Node revokes it, so that is the admin's, as revoking is,
    // however the path is spelled.
    let (bob, _) = login(&fleet, &bob_home, "bob", "operator", &server, &[]);
    ok(as_person(&bob_home, &["apply", "-f", manifest.to_str().unwrap()]));
    let out = as_person(&bob_home, &["user", "create", "mallory", "--role", "admin"]);
    assert!(stderr(&out).contains("needs the admin role"), "{}", stderr(&out));
    for args in [["delete", "node", "pi4"], ["node", "revoke", "pi4"]] {
        let out = as_person(&bob_home, &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("needs the admin role"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let bob_credential = std::fs::read_to_string(&bob)
        .unwrap()
        .trim()
        .rsplit_once("::")
        .unwrap()
        .1
        .to_string();
    let (code, body) = fleet
        .hub()
        .with_token(&bob_credential)
        .call("DELETE", "/api/v1alpha1/%6Eodes/pi4", "");
    assert_eq!(code, 403, "{body}");
    let node = fleet.cli_ok(&["get", "node", "pi4"]);
    assert!(node.contains("Ready") && !node.contains("NotReady"), "{node}");
    let (code, _) = fleet
        .hub_as_node("pi4")
        .call("POST", "/api/v1alpha1/nodes/pi4/heartbeat", "");
    assert_eq!(code, 204, "the board's certificate still works");

    // Two hubs as two contexts.
    let other = Fleet::new();
    let there = format!("https://127.0.0.1:{}", other.port);
    login(
        &other,
        &alice_home,
        "alice",
        "viewer",
        &there,
        &["--context", "greenhouse"],
    );
    let out = as_person(&alice_home, &["get", "plugins"]);
    assert!(
        stderr(&out).contains("No plugins found"),
        "now on the other hub: {}",
        stderr(&out)
    );
    let contexts = ok(as_person(&alice_home, &["config", "get-contexts"]));
    assert!(
        contexts.contains("* ") && contexts.contains("greenhouse") && contexts.contains(&server),
        "{contexts}"
    );
    ok(as_person(
        &alice_home,
        &["config", "use-context", &format!("alice@127.0.0.1:{}", fleet.port)],
    ));
    assert!(ok(as_person(&alice_home, &["get", "plugins"])).contains("probe"));
    let out = as_person(&alice_home, &["get", "plugins", "--context", "greenhouse"]);
    assert!(
        out.status.success() && stderr(&out).contains("No plugins found"),
        "{}",
        stderr(&out)
    );
    let out = as_person(&alice_home, &["get", "plugins", "--context", "nowhere"]);
    assert!(stderr(&out).contains("no context \"nowhere\""), "{}", stderr(&out));

    // Deleting a user ends its open watch and its next request.
    let credential = std::fs::read_to_string(&alice)
        .unwrap()
        .trim()
        .rsplit_once("::")
        .unwrap()
        .1
        .to_string();
    let as_alice = fleet.hub().with_token(&credential);
    let mut watch = as_alice.connect().unwrap();
    as_alice.send(&mut watch, "GET", "/api/v1alpha1/watch", &[], b"");
    let mut buf = [0u8; 4096];
    use std::io::Read;
    assert!(watch.read(&mut buf).unwrap() > 0, "the watch starts");
    fleet.cli_ok(&["user", "delete", "alice"]);
    stream_ends(&mut watch, "the deleted user's watch stays open");
    let out = as_person(&alice_home, &["get", "plugins"]);
    assert!(stderr(&out).contains("unknown token"), "{}", stderr(&out));

    // A dashboard session: its live page ends when it signs out, and a
    // session of a deleted user does not come back with a new user of the
    // same name.
    let page = fleet.dashboard_hub();
    let sign_in = |token: &str| -> String {
        let credential = token.trim().rsplit_once("::").unwrap().1;
        let (code, head, body) = page.raw(
            "POST",
            "/api/session",
            &[("X-Harvester", "1"), ("Content-Type", "application/json")],
            format!("{{\"token\": \"{credential}\"}}").as_bytes(),
        );
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let cookie = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("set-cookie:")
                    .then(|| l[11..].trim().to_string())
            })
            .unwrap();
        cookie.split(';').next().unwrap().to_string()
    };
    let state = |cookie: &str| page.raw("GET", "/api/state", &[("Cookie", cookie)], b"").0;
    let carol = sign_in(&fleet.cli_ok(&["user", "create", "carol", "--role", "viewer"]));
    assert_eq!(state(&carol), 200);
    let mut events = page.connect().unwrap();
    page.send(&mut events, "GET", "/api/events", &[("Cookie", &carol)], b"");
    assert!(events.read(&mut buf).unwrap() > 0, "the live page starts");
    let (code, _, _) = page.raw(
        "DELETE",
        "/api/session",
        &[("X-Harvester", "1"), ("Cookie", &carol)],
        b"",
    );
    assert_eq!(code, 204);
    stream_ends(&mut events, "the live page stays open after signing out");
    assert_eq!(state(&carol), 401);

    let dave = sign_in(&fleet.cli_ok(&["user", "create", "dave", "--role", "viewer"]));
    assert_eq!(state(&dave), 200);
    fleet.cli_ok(&["user", "delete", "dave"]);
    fleet.cli_ok(&["user", "create", "dave", "--role", "admin"]);
    assert_eq!(state(&dave), 401, "the old session is not the new dave's");

    // Who did what: the audit trail, for admins.
    let trail = fleet.cli_ok(&["audit", "--user", "bob"]);
    assert!(
        trail.contains("POST /api/v1alpha1/apply") && trail.contains("operator"),
        "{trail}"
    );
    assert!(
        trail.contains("POST /api/v1alpha1/users") && trail.contains("refused"),
        "{trail}"
    );
    let all = fleet.cli_ok(&["audit", "--since", "1h"]);
    assert!(
        all.contains("DELETE /api/v1alpha1/users/alice") && all.contains("admin"),
        "{all}"
    );
    assert!(all.contains("alice") && all.contains("127.0.0.1:"), "{all}");
    let out = as_person(&bob_home, &["audit"]);
    assert!(stderr(&out).contains("needs the admin role"), "{}", stderr(&out));

    // Logging out forgets the credential.
    ok(as_person(&bob_home, &["logout"]));
    let out = as_person(&bob_home, &["get", "plugins"]);
    assert!(stderr(&out).contains("no current context"), "{}", stderr(&out));
}

/// A web page of any site can make a browser on the hub's or a board's
/// machine send simple requests to loopback: a hub without identities
/// (where everyone is the admin) and a board's command listener refuse
/// them, and whatever comes through another name.
#[test]
fn pages_of_other_sites_can_neither_write_to_a_plain_hub_nor_press_a_boards_buttons() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, commands) = (free_port(), free_port());
    let _hub = Proc(
        Command::new(env!("CARGO_BIN_EXE_harvester"))
            .args(["controller", "--data"])
            .arg(dir.path().join("hub"))
            .args([
                "--listen",
                &format!("127.0.0.1:{hub}"),
                "--no-dashboard",
                "--insecure-plain-http",
            ])
            .stderr(std::fs::File::create(dir.path().join("hub.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let manifest = dir.path().join("node.yaml");
    std::fs::write(&manifest, "plugins: []\n").unwrap();
    let _node = Proc(
        Command::new(env!("CARGO_BIN_EXE_harvester"))
            .args(["nodelet", "--standalone"])
            .arg(&manifest)
            .arg("--data")
            .arg(dir.path().join("node"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--command-listen",
                &format!("127.0.0.1:{commands}"),
            ])
            .stderr(std::fs::File::create(dir.path().join("node.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until(T, "hub and board up", || {
        http("GET", hub, "/healthz").is_some_and(|r| r.0 == 200)
            && std::net::TcpStream::connect(("127.0.0.1", commands)).is_ok()
    });
    // A request as a browser sends it: any Host and headers.
    let send = |port: u16, method: &str, path: &str, host: &str, headers: &[(&str, &str)], body: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        s.write_all(format!("{head}\r\n{body}").as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let code: u16 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        (code, out)
    };
    let here = format!("127.0.0.1:{hub}");
    let plugin = format!(
        "apiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: planted}}\nspec:\n  image: {}\n",
        dir.path().join("x.wasm").display()
    );
    let page = [("Origin", "https://evil.example"), ("Content-Type", "text/plain")];
    for (headers, what) in [
        (&page[..], "a page's fetch with its Origin"),
        (&page[1..], "a simple POST without an Origin"),
        (
            &[("Origin", "https://evil.example"), ("Content-Type", "application/yaml")][..],
            "a foreign Origin",
        ),
    ] {
        let (code, out) = send(hub, "POST", "/api/v1alpha1/apply", &here, headers, &plugin);
        assert_eq!(code, 403, "{what}: {out}");
    }
    let (code, out) = send(
        hub,
        "GET",
        "/api/v1alpha1/plugins",
        &format!("evil.example:{hub}"),
        &[],
        "",
    );
    assert_eq!(code, 403, "a rebound name: {out}");
    assert!(out.contains("not a name of this server"), "{out}");
    assert_eq!(send(hub, "GET", "/api/v1alpha1/plugins/planted", &here, &[], "").0, 404);
    // What the CLI sends passes (the plugin's file is missing: refused for that, not for its origin).
    let (code, out) = send(
        hub,
        "POST",
        "/api/v1alpha1/apply",
        &here,
        &[("X-Harvester", "1")],
        &plugin,
    );
    assert!(code != 403 && out.contains("x.wasm"), "{out}");

    let press = "/plugins/buzzer/commands/long";
    let board = format!("127.0.0.1:{commands}");
    for (host, headers) in [
        (board.as_str(), &[][..]),
        (
            board.as_str(),
            &[("Origin", "https://evil.example"), ("X-Harvester", "1")][..],
        ),
        ("evil.example", &[("X-Harvester", "1")][..]),
    ] {
        let (code, out) = send(commands, "POST", press, host, headers, "");
        assert_eq!(code, 403, "{host} {headers:?}: {out}");
    }
    let (code, out) = send(commands, "POST", press, &board, &[("X-Harvester", "1")], "");
    assert_eq!(code, 404, "a command from this machine's tools reaches the node: {out}");

    // A node's address is HOST:PORT, never a URL for Prometheus to fetch.
    let evil = r#"{"apiVersion":"harvester.dev/v1alpha1","kind":"Node","metadata":{"name":"evil"},"status":{"address":"169.254.169.254:80/latest/meta-data?"}}"#;
    let (code, out) = send(
        hub,
        "PUT",
        "/api/v1alpha1/nodes/evil/register",
        &here,
        &[("Content-Type", "application/json")],
        evil,
    );
    assert_eq!(code, 422, "{out}");
    assert!(out.contains("status.address"), "{out}");

    // The CLI sends a token over plain HTTP only to this machine.
    std::fs::write(
        dir.path().join("remote.yaml"),
        "current-context: c\ncontexts:\n- name: c\n  server: http://hub.example:7000\n  certificate-authority-data: x\n  token: alice.secret\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_harvester"))
        .args(["get", "plugins", "--config"])
        .arg(dir.path().join("remote.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("in clear"), "{}", stderr(&out));
}

/// `n` POSTs to `path` without a credential over `connections` kept-alive
/// connections at once, each answered before the next batch is sent;
/// their statuses, counted.
fn flood(
    hub: &crate::support::Hub,
    path: &str,
    n: usize,
    connections: usize,
) -> std::collections::BTreeMap<u16, usize> {
    use std::io::{BufRead, Read};
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (hub, path) = (hub.clone(), path.to_string());
            std::thread::spawn(move || {
                let mut statuses = std::collections::BTreeMap::new();
                let mut s = hub.connect().unwrap();
                let mut left = n / connections;
                while left > 0 {
                    let batch = left.min(100);
                    for _ in 0..batch {
                        hub.send(&mut s, "POST", &path, &[], b"");
                    }
                    let mut r = std::io::BufReader::new(&mut s);
                    for _ in 0..batch {
                        let (mut status, mut length) = (0u16, 0usize);
                        let mut line = String::new();
                        loop {
                            line.clear();
                            r.read_line(&mut line).unwrap();
                            let l = line.trim_end().to_ascii_lowercase();
                            if l.is_empty() {
                                break;
                            } else if let Some(code) = l.strip_prefix("http/1.1 ") {
                                status = code[..3].parse().unwrap();
                            } else if let Some(v) = l.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0u8; length];
                        r.read_exact(&mut body).unwrap();
                        *statuses.entry(status).or_insert(0) += 1;
                    }
                    left -= batch;
                }
                statuses
            })
        })
        .collect();
    let mut all = std::collections::BTreeMap::new();
    for t in threads {
        for (status, count) in t.join().unwrap() {
            *all.entry(status).or_insert(0) += count;
        }
    }
    all
}

/// Whoever reaches the port cannot wipe the audit trail: refusals of
/// callers without an identity are counted by source and summed up, not
/// recorded one by one, so people's entries stay; and what people do
/// through the node protocol, a backup, a dashboard sign-in and a
/// certificate request are each recorded under the person who did it.
#[test]
fn a_flood_without_an_identity_cannot_push_peoples_entries_out_of_the_audit_trail() {
    let fleet = Fleet::new();
    let hub = fleet.hub();
    let token = fleet.cli_ok(&["user", "create", "vera", "--role", "viewer"]);
    let credential = token.trim().rsplit_once("::").unwrap().1.to_string();
    let vera = hub.with_token(&credential);
    let (code, body) = vera.call("POST", "/api/v1alpha1/apply", "");
    assert_eq!(code, 403, "{body}");

    // More than the 10,000 entries the trail once held, in a second or so:
    // refused, or throttled beyond the rate limit's burst of 10,000.
    let statuses = flood(&hub.anonymous(), "/api/v1alpha1/apply", 12_000, 4);
    let refused = statuses.get(&401).copied().unwrap_or(0);
    assert!(refused >= 10_000, "{statuses:?}");
    assert_eq!(
        refused + statuses.get(&429).copied().unwrap_or(0),
        12_000,
        "{statuses:?}"
    );

    // People through the node protocol: a viewer refused, the admin acting
    // as a node (there is none by that name).
    let (code, _) = vera.call("POST", "/api/v1alpha1/nodes/pi4/heartbeat", "");
    assert_eq!(code, 403);
    let (code, _) = hub.call("POST", "/api/v1alpha1/nodes/ghost/heartbeat", "");
    assert_eq!(code, 404);
    // A viewer asking for a board's certificate is refused as herself.
    let (code, body) = vera.call(
        "POST",
        "/api/v1alpha1/nodes/pi4/certificate",
        r#"{"node": "pi4", "csr": "-"}"#,
    );
    assert_eq!(code, 403, "{body}");
    // A backup takes the hub's keys: a read that is recorded.
    let (code, _, _) = hub.raw("GET", "/api/v1alpha1/backup", &[], b"");
    assert_eq!(code, 200);
    // A dashboard sign-in is the person's.
    let (code, _, body) = fleet.dashboard_hub().raw(
        "POST",
        "/api/session",
        &[("X-Harvester", "1"), ("Content-Type", "application/json")],
        format!("{{\"token\": \"{credential}\"}}").as_bytes(),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));

    let trail = fleet.cli_ok(&["audit", "--since", "1h"]);
    let lines: Vec<&str> = trail.lines().collect();
    let has = |user: &str, action: &str, outcome: &str| {
        lines.iter().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.get(1) == Some(&user) && l.contains(&format!(" {action} ")) && cells.contains(&outcome)
        })
    };
    assert!(has("vera", "POST /api/v1alpha1/apply", "refused"), "{trail}");
    assert!(
        has("vera", "POST /api/v1alpha1/nodes/pi4/heartbeat", "refused"),
        "{trail}"
    );
    assert!(
        has("admin", "POST /api/v1alpha1/nodes/ghost/heartbeat", "rejected"),
        "{trail}"
    );
    assert!(
        has("vera", "POST /api/v1alpha1/nodes/pi4/certificate", "refused"),
        "{trail}"
    );
    assert!(has("admin", "GET /api/v1alpha1/backup", "ok"), "{trail}");
    assert!(has("vera", "POST /api/session", "ok"), "{trail}");
    let anonymous: Vec<&&str> = lines.iter().filter(|l| l.contains(" anonymous ")).collect();
    assert_eq!(anonymous.len(), 1, "one summary, not an entry a request: {trail}");
    assert!(
        anonymous[0].contains(&format!(
            "refused {refused} requests without an identity from 1 address (top: 127.0.0.1 x{refused})"
        )),
        "{trail}"
    );
    let (_, metrics) = hub.call("GET", "/metrics", "");
    assert!(
        metrics.contains(&format!("harvester_hub_audit_anonymous_refusals_total {refused}")),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("audit"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A board's labels decide which plugins (and their config) it gets: they
/// come from its join token, or its own proposal once; after that only
/// people change them, and role labels only an admin.
#[test]
fn a_boards_labels_are_its_tokens_or_its_first_proposal_then_only_peoples() {
    let mut fleet = Fleet::new();
    let labels = |fleet: &Fleet, name: &str| -> String {
        let out = fleet.cli_ok(&["get", "node", name, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut l: Vec<String> = v["metadata"]["labels"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap())).collect())
            .unwrap_or_default();
        l.sort();
        l.join(",")
    };

    // A token with labels: the board's own proposal is set aside.
    let token = write(
        &fleet,
        "pi4.token",
        &fleet.token(&["--uses", "1", "--ttl", "1h", "--labels", "role=sensor,board=pi4"]),
    );
    let listed = fleet.cli_ok(&["token", "list"]);
    assert!(listed.contains("board=pi4,role=sensor"), "{listed}");
    let _pi4 = Proc(
        nodelet(&fleet, "pi4", &token, &fleet.dir.path().join("pi4"))
            .args(["--labels", "role=evil,node-role.harvester.dev/hub="])
            .stderr(std::fs::File::create(fleet.dir.path().join("pi4.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until(T, "pi4 registered", || {
        fleet.cli(&["get", "node", "pi4"]).status.success()
    });
    assert_eq!(labels(&fleet, "pi4"), "board=pi4,role=sensor");
    wait_until(T, "pi4 told", || {
        std::fs::read_to_string(fleet.dir.path().join("pi4.log"))
            .unwrap()
            .contains("set aside")
    });

    // A token without: the board proposes once, role labels left out.
    let token = write(&fleet, "pi6.token", &fleet.token(&["--uses", "1", "--ttl", "1h"]));
    let _pi6 = Proc(
        nodelet(&fleet, "pi6", &token, &fleet.dir.path().join("pi6"))
            .args(["--labels", "role=lab,node-role.harvester.dev/hub="])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(T, "pi6 registered", || {
        fleet.cli(&["get", "node", "pi6"]).status.success()
    });
    assert_eq!(labels(&fleet, "pi6"), "role=lab");
    fleet.start_node("pi5", "role=lab", "leds");
    wait_until(T, "pi5 registered", || {
        fleet.cli(&["get", "node", "pi5"]).status.success()
    });
    assert_eq!(labels(&fleet, "pi5"), "role=lab");
    // Restarted proposing another board's labels: nothing changes.
    fleet.kill_node("pi5");
    fleet.start_node("pi5", "board=pi4,role=sensor", "leds");
    wait_until(T, "pi5 registered again", || {
        std::fs::read_to_string(fleet.dir.path().join("pi5.log"))
            .unwrap()
            .contains("set aside")
    });
    assert_eq!(labels(&fleet, "pi5"), "role=lab");

    // People change them: an operator any label but a role, an admin a
    // role too; a board's restart keeps what they set.
    let server = format!("https://127.0.0.1:{}", fleet.port);
    let home = fleet.dir.path().join("olga");
    login(&fleet, &home, "olga", "operator", &server, &[]);
    ok(as_person(&home, &["label", "node", "pi5", "zone=north"]));
    let out = as_person(&home, &["label", "node", "pi5", "node-role.harvester.dev/hub="]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("only an admin"), "{}", stderr(&out));
    fleet.cli_ok(&["label", "node", "pi5", "node-role.harvester.dev/hub="]);
    fleet.kill_node("pi5");
    fleet.start_node("pi5", "role=lab", "leds");
    wait_until(T, "pi5 back", || {
        std::fs::read_to_string(fleet.dir.path().join("pi5.log"))
            .unwrap()
            .contains("set aside")
    });
    assert_eq!(
        labels(&fleet, "pi5"),
        "node-role.harvester.dev/hub=,role=lab,zone=north"
    );
}
