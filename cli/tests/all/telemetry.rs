//! Metrics as a real Prometheus sees them: it finds the nodes through the
//! controller's HTTP service discovery, scrapes them and the controller, and
//! every query of every panel of every dashboard under `grafana/` returns
//! data, so the dashboards cannot rot.

use crate::fleet::{Fleet, T};
use crate::support::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The showcase manifest for `name`, running the component built from the repo.
fn manifest(fleet: &Fleet, name: &str) -> String {
    let file = fleet.dir.path().join(format!("{name}.wasm"));
    std::fs::write(&file, component(name).as_slice()).unwrap();
    let text = std::fs::read_to_string(repo().join(format!("manifests/fleet/{name}.yaml"))).unwrap();
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("image:") {
                format!("  image: {}", file.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn promtool(args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by scripts/setup (Debian package prometheus)");
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An instant query. HTTP/1.0, so a large answer is not chunked.
fn query(port: u16, expr: &str) -> Vec<Value> {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return Vec::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let path = format!("/api/v1/query?query={}", urlencode(expr));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return Vec::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn urlencode(s: &str) -> String {
    harvester_api::path_segment(s)
}

/// A panel query as Grafana would send it with "All" selected.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("${node}", ".*")
        .replace("$node", ".*")
        .replace("${plugin}", ".*")
        .replace("$plugin", ".*")
}

#[test]
fn prometheus_finds_every_node_and_every_dashboard_panel_has_data() {
    let mut fleet = Fleet::new();
    fleet.start_node_with(
        "pi4",
        "role=sensor,board=pi4",
        "dht22,bme680,leds",
        &["--allow-unsigned"],
    );
    fleet.start_node_with("hub", "role=netmon", "leds", &["--allow-unsigned"]);
    let docs: Vec<String> = ["dht22", "bme680", "system", "netmon"]
        .iter()
        .map(|n| manifest(&fleet, n))
        .collect();
    fleet.apply(&docs.join("\n---\n"));
    for p in ["dht22", "bme680", "system", "netmon"] {
        fleet.cli_ok(&["rollout", "status", &format!("plugin/{p}"), "--timeout", "240s"]);
    }

    // The expositions and the shipped config pass promtool's lint.
    // Running is not yet ticked: the first reading follows the first tick.
    let mut node_metrics = String::new();
    wait_until(T, "dht22's first reading in the node's metrics", || {
        node_metrics = http("GET", fleet.node_port("pi4"), "/metrics").unwrap().1;
        node_metrics.contains("harvester_sensor_value{plugin=\"dht22\",sensor=\"temperature\"")
    });
    promtool(&["check", "metrics"], Some(&node_metrics));
    let hub = fleet.hub();
    let (_, hub_metrics) = hub.call("GET", "/metrics", "");
    assert!(
        hub_metrics.contains("harvester_nodes{condition=\"Ready\"} 2"),
        "{hub_metrics}"
    );
    promtool(&["check", "metrics"], Some(&hub_metrics));
    let shipped = repo().join("grafana/prometheus.yml");

    // Service discovery names both nodes.
    let (code, sd) = hub.call("GET", "/api/v1alpha1/prometheus/targets", "");
    assert_eq!(code, 200);
    let groups: Vec<Value> = serde_json::from_str(&sd).unwrap();
    let mut names: Vec<&str> = groups.iter().map(|g| g["labels"]["node"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["hub", "pi4"]);

    // The shipped config, pointed at this controller, scraping every second.
    let ctl = format!("127.0.0.1:{}", fleet.port);
    let dir = fleet.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    // The CA and a viewer's token file where the shipped config expects them.
    let viewer = fleet.cli_ok(&["user", "create", "prometheus", "--role", "viewer"]);
    let credential = viewer.trim().rsplit_once("::").unwrap().1;
    std::fs::write(dir.join("harvester.token"), credential).unwrap();
    std::fs::copy(
        fleet.dir.path().join("controller/pki/ca.crt"),
        dir.join("harvester-ca.crt"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&shipped)
        .unwrap()
        .replace("/etc/prometheus/", &format!("{}/", dir.display()));
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    config["global"]["scrape_interval"] = "1s".into();
    for job in config["scrape_configs"].as_sequence_mut().unwrap() {
        if let Some(sc) = job.get_mut("static_configs") {
            sc[0]["targets"] = serde_yaml::to_value([&ctl]).unwrap();
        }
        if let Some(sd) = job.get_mut("http_sd_configs") {
            let url = sd[0]["url"].as_str().unwrap().replace("127.0.0.1:7000", &ctl);
            sd[0]["url"] = url.into();
            sd[0]["refresh_interval"] = "1s".into();
        }
    }
    std::fs::write(dir.join("prometheus.yml"), serde_yaml::to_string(&config).unwrap()).unwrap();
    promtool(&["check", "config", dir.join("prometheus.yml").to_str().unwrap()], None);
    let port = free_port();
    let _prometheus = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until(T, "both nodes and the hub scraped", || {
        query(port, "up == 1").len() == 3
    });
    let scraped: Vec<String> = query(port, "up{job=\"harvester-nodes\"}")
        .iter()
        .map(|r| r["metric"]["node"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(scraped.len(), 2, "{scraped:?}");

    // Every query of every panel returns data.
    let mut checked = 0;
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(repo().join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = substitute(target["expr"].as_str().unwrap());
                checked += 1;
                // Rates need two samples; give a new series a few scrapes.
                let deadline = Instant::now() + Duration::from_secs(20);
                while query(port, &expr).is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(250));
                }
                if query(port, &expr).is_empty() {
                    let bare = expr
                        .split('(')
                        .next_back()
                        .unwrap_or("")
                        .split(['{', '['])
                        .next()
                        .unwrap_or("");
                    missing.push(format!(
                        "{} / {}: {expr} (series of {bare}: {:?})",
                        path.file_name().unwrap().to_string_lossy(),
                        panel["title"],
                        query(port, &format!("count by (node) ({bare})"))
                    ));
                }
            }
        }
        // Template variables resolve to the nodes and plugins.
        for var in dashboard["templating"]["list"].as_array().unwrap() {
            if var["type"] == "query" {
                let q = var["query"]["query"].as_str().unwrap();
                let metric = q
                    .trim_start_matches("label_values(")
                    .rsplit_once(',')
                    .unwrap()
                    .0
                    .to_string();
                assert!(
                    !query(port, &substitute(&metric)).is_empty(),
                    "variable {}: {q}",
                    var["name"]
                );
            }
        }
    }
    assert!(checked >= 30, "only {checked} panel queries found");
    assert!(
        missing.is_empty(),
        "panel queries without data:\n{}",
        missing.join("\n")
    );
}
