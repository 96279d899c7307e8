//! kubectl-like commands against the controller: apply, get, describe,
//! delete, rollout status.

use crate::client::Client;
use anyhow::{Context, bail};
use harvester_api::Digest;
use harvester_api::resources::is_local_path;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Reads `-f`: a file, a directory (its .yaml/.yml files, sorted), or `-`.
pub fn read_manifests(path: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        // Named for messages; relative images resolve against the working directory.
        return Ok(vec![(PathBuf::from("<stdin>"), s)]);
    }
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        return files
            .into_iter()
            .map(|f| {
                Ok((
                    f.clone(),
                    std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?,
                ))
            })
            .collect();
    }
    Ok(vec![(
        path.to_path_buf(),
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    )])
}

/// Uploads local components and pins their digests, so the controller
/// stores exactly the bytes this machine has.
async fn pin_local_images(client: &Client, file: &Path, text: &str) -> anyhow::Result<String> {
    use serde::Deserialize;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut out = String::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let mut value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            // Let the controller report syntax errors with line and column.
            Err(_) => return Ok(text.to_string()),
        };
        if value.is_null() {
            continue;
        }
        let is_plugin = value.get("kind").and_then(|k| k.as_str()) == Some("Plugin");
        let image = value
            .get("spec")
            .and_then(|s| s.get("image"))
            .and_then(|i| i.as_str())
            .map(str::to_string);
        if let (true, Some(image)) = (is_plugin, image)
            && is_local_path(&image)
        {
            let path = base.join(&image);
            let bytes = std::fs::read(&path).with_context(|| {
                format!(
                    "{} document {}: spec.image {image:?}: cannot read {}",
                    file.display(),
                    i + 1,
                    path.display()
                )
            })?;
            let digest = Digest::of(&bytes);
            client.put_blob(&digest.to_string(), bytes).await?;
            value["spec"]["digest"] = serde_yaml::Value::String(digest.to_string());
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&value)?);
    }
    Ok(out)
}

pub async fn apply(client: &Client, path: &Path) -> anyhow::Result<()> {
    let mut stream = String::new();
    for (file, text) in read_manifests(path)? {
        stream.push_str(&pin_local_images(client, &file, &text).await?);
        stream.push('\n');
    }
    let result = client.apply(stream).await?;
    for r in result["results"].as_array().cloned().unwrap_or_default() {
        let kind = r["kind"].as_str().unwrap_or_default().to_lowercase();
        let mut line = format!(
            "{kind}/{} {}",
            r["name"].as_str().unwrap_or_default(),
            r["action"].as_str().unwrap_or_default()
        );
        if kind == "plugin" {
            line.push_str(&format!(" (generation {}", r["generation"]));
            if let Some(d) = r["digest"].as_str() {
                line.push_str(&format!(", {}", &d[..d.len().min(19)]));
            }
            line.push(')');
        }
        println!("{line}");
    }
    Ok(())
}

fn plural(kind: &str) -> anyhow::Result<&'static str> {
    match kind {
        "plugin" | "plugins" => Ok("plugins"),
        "node" | "nodes" => Ok("nodes"),
        other => bail!("unknown resource type {other:?}: use plugins or nodes"),
    }
}

fn age(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let s = harvester_api::now_ms().saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn labels(v: &Value) -> String {
    let s: Vec<String> = v
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    if s.is_empty() { "<none>".into() } else { s.join(",") }
}

fn print_table(rows: Vec<Vec<String>>) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", cells.join("   ").trim_end());
    }
}

fn plugin_row(p: &Value, wide: bool) -> Vec<String> {
    let nodes = p["status"]["nodes"].as_object().cloned().unwrap_or_default();
    let generation = p["metadata"]["generation"].as_u64().unwrap_or(0);
    let running = nodes
        .values()
        .filter(|n| n["generation"].as_u64() == Some(generation) && n["phase"] == "Running")
        .count();
    let ready = condition(p, "Ready").map_or("Unknown", |c| c["status"].as_str().unwrap_or("Unknown"));
    let mut row = vec![
        p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
        generation.to_string(),
        ready.to_string(),
        format!("{running}/{}", nodes.len()),
        age(p["metadata"]["creationTimestamp"].as_u64().unwrap_or(0)),
    ];
    if wide {
        let digest = p["spec"]["digest"].as_str().unwrap_or("-");
        row.push(digest[..digest.len().min(19)].to_string());
        row.push(p["spec"]["image"].as_str().unwrap_or_default().to_string());
        row.push(labels(&p["spec"]["nodeSelector"]));
        row.push(nodes.keys().cloned().collect::<Vec<_>>().join(","));
    }
    row
}

fn node_row(n: &Value, wide: bool) -> Vec<String> {
    let ready = condition(n, "Ready").map_or("Unknown".to_string(), |c| {
        if c["status"] == "True" {
            "Ready".into()
        } else {
            "NotReady".into()
        }
    });
    let plugins = n["status"]["plugins"].as_object().map_or(0, |m| m.len());
    let mut row = vec![
        n["metadata"]["name"].as_str().unwrap_or_default().to_string(),
        ready,
        labels(&n["metadata"]["labels"]),
        plugins.to_string(),
        age(n["metadata"]["creationTimestamp"].as_u64().unwrap_or(0)),
    ];
    if wide {
        row.push(n["status"]["architecture"].as_str().unwrap_or_default().to_string());
        row.push(n["status"]["backend"].as_str().unwrap_or_default().to_string());
        row.push(
            n["status"]["devices"]
                .as_array()
                .map(|d| d.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
        );
        row.push(age(n["status"]["lastHeartbeat"].as_u64().unwrap_or(0)));
    }
    row
}

pub async fn get(
    client: &Client,
    kind: &str,
    name: Option<&str>,
    output: &str,
    selector: Option<&str>,
) -> anyhow::Result<()> {
    let plural = plural(kind)?;
    let items: Vec<Value> = match name {
        Some(n) => vec![client.get(&format!("{plural}/{n}")).await?],
        None => {
            let q = selector
                .map(|s| format!("?labelSelector={}", urlencode(s)))
                .unwrap_or_default();
            client.get(&format!("{plural}{q}")).await?["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    match output {
        "json" => {
            let v = if name.is_some() {
                items[0].clone()
            } else {
                serde_json::json!({"items": items})
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        "yaml" => {
            let v = if name.is_some() {
                items[0].clone()
            } else {
                serde_json::json!({"items": items})
            };
            print!("{}", serde_yaml::to_string(&v)?);
        }
        "" | "wide" => {
            let wide = output == "wide";
            if items.is_empty() {
                eprintln!("No {plural} found.");
                return Ok(());
            }
            let mut header: Vec<String> = if plural == "plugins" {
                vec!["NAME", "GENERATION", "READY", "NODES", "AGE"]
            } else {
                vec!["NAME", "STATUS", "LABELS", "PLUGINS", "AGE"]
            }
            .into_iter()
            .map(String::from)
            .collect();
            if wide {
                header.extend(
                    if plural == "plugins" {
                        vec!["DIGEST", "IMAGE", "SELECTOR", "ON"]
                    } else {
                        vec!["ARCH", "BACKEND", "DEVICES", "HEARTBEAT"]
                    }
                    .into_iter()
                    .map(String::from),
                );
            }
            let mut rows = vec![header];
            for i in &items {
                rows.push(if plural == "plugins" {
                    plugin_row(i, wide)
                } else {
                    node_row(i, wide)
                });
            }
            print_table(rows);
        }
        other => bail!("-o {other}: use wide, yaml or json"),
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn describe(client: &Client, kind: &str, name: &str) -> anyhow::Result<()> {
    let plural = plural(kind)?;
    let obj = client.get(&format!("{plural}/{name}")).await?;
    println!("Name:          {name}");
    println!("Labels:        {}", labels(&obj["metadata"]["labels"]));
    println!(
        "Created:       {} ago",
        age(obj["metadata"]["creationTimestamp"].as_u64().unwrap_or(0))
    );
    if plural == "plugins" {
        println!("Generation:    {}", obj["metadata"]["generation"]);
        println!("Image:         {}", obj["spec"]["image"].as_str().unwrap_or_default());
        println!("Digest:        {}", obj["spec"]["digest"].as_str().unwrap_or("-"));
        println!("Node selector: {}", labels(&obj["spec"]["nodeSelector"]));
        println!("Grants:        {}", serde_json::to_string(&obj["spec"]["grants"])?);
        println!("Config:        {}", labels(&obj["spec"]["config"]));
        println!(
            "Tick:          {}",
            obj["spec"]["tickInterval"].as_str().unwrap_or_default()
        );
        println!("Limits:        {}", serde_json::to_string(&obj["spec"]["limits"])?);
        println!("Nodes:");
        let mut rows = vec![
            ["NODE", "PHASE", "GENERATION", "DIGEST", "RESTARTS", "REASON", "MESSAGE"]
                .map(String::from)
                .to_vec(),
        ];
        for (n, s) in obj["status"]["nodes"].as_object().cloned().unwrap_or_default() {
            let digest = s["digest"].as_str().unwrap_or("-");
            rows.push(vec![
                format!("  {n}"),
                s["phase"].as_str().unwrap_or_default().into(),
                s["generation"].to_string(),
                digest[..digest.len().min(19)].to_string(),
                s["restarts"].to_string(),
                s["reason"].as_str().unwrap_or("").into(),
                s["message"].as_str().unwrap_or_default().into(),
            ]);
        }
        rows[0][0] = "  NODE".into();
        print_table(rows);
    } else {
        let s = &obj["status"];
        println!("Architecture:  {}", s["architecture"].as_str().unwrap_or_default());
        println!(
            "Hardware:      {} ({})",
            s["backend"].as_str().unwrap_or_default(),
            labels(&Value::Null).replace("<none>", &s["devices"].to_string())
        );
        println!("Address:       {}", s["address"].as_str().unwrap_or_default());
        let keys: Vec<&str> = s["trustedKeys"]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k.as_str()).collect())
            .unwrap_or_default();
        println!(
            "Trusts:        {}{}",
            if keys.is_empty() {
                "no key".to_string()
            } else {
                format!("keys {}", keys.join(", "))
            },
            if s["allowUnsigned"] == true {
                "; RUNS UNSIGNED COMPONENTS (--allow-unsigned)"
            } else {
                ""
            }
        );
        let e = &s["engine"];
        if e.is_object() {
            let how = match e["compile"].as_str().unwrap_or_default() {
                "hub" => "code compiled by the hub only",
                "auto" => "code compiled by the hub when it has a trusted key, else here",
                "local" => "compiles here",
                other => other,
            };
            println!(
                "Compile:       {how} ({}, engine {})",
                e["target"].as_str().unwrap_or_default(),
                e["hash"].as_str().unwrap_or_default()
            );
        }
        println!("Heartbeat:     {} ago", age(s["lastHeartbeat"].as_u64().unwrap_or(0)));
        println!("Plugins:");
        for (p, st) in s["plugins"].as_object().cloned().unwrap_or_default() {
            println!(
                "  {p}: {} generation {} {}",
                st["phase"].as_str().unwrap_or_default(),
                st["generation"],
                st["message"].as_str().unwrap_or_default()
            );
        }
    }
    print_conditions(&obj);
    if plural == "plugins" {
        println!("Events:");
        let events = client.get(&format!("plugins/{name}/events")).await?;
        let items = events["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            println!("  <none since the controller started>");
        }
        for e in items {
            println!(
                "  {:>5} ago  {}",
                age(e["time"].as_u64().unwrap_or(0)),
                e["message"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn print_conditions(obj: &Value) {
    println!("Conditions:");
    for c in obj["status"]["conditions"].as_array().cloned().unwrap_or_default() {
        println!(
            "  {:<12} {:<6} {:<18} {} ago  {}",
            c["type"].as_str().unwrap_or_default(),
            c["status"].as_str().unwrap_or_default(),
            c["reason"].as_str().unwrap_or_default(),
            age(c["lastTransitionTime"].as_u64().unwrap_or(0)),
            c["message"].as_str().unwrap_or_default()
        );
    }
}

pub async fn delete(
    client: &Client,
    kind: Option<&str>,
    name: Option<&str>,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    if let Some(file) = file {
        for (_, text) in read_manifests(file)? {
            let objects = harvester_api::resources::parse_documents(&text).map_err(|errs| {
                anyhow::anyhow!("{}", errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))
            })?;
            for o in objects {
                targets.push((plural(&o.kind().to_lowercase())?, o.name().to_string()));
            }
        }
    } else {
        let (Some(kind), Some(name)) = (kind, name) else {
            bail!("give TYPE NAME (delete plugin dht22) or -f FILE");
        };
        targets.push((plural(kind)?, name.to_string()));
    }
    for (plural, name) in targets {
        client.delete(&format!("{plural}/{name}")).await?;
        println!("{}/{name} deleted", plural.trim_end_matches('s'));
    }
    Ok(())
}

pub async fn rollout_status(client: &Client, target: &str, timeout: Duration) -> anyhow::Result<()> {
    let Some((kind, name)) = target.split_once('/') else {
        bail!("{target:?}: expected plugin/NAME");
    };
    if plural(kind)? != "plugins" {
        bail!("rollout status works on plugins");
    }
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let p = client.get(&format!("plugins/{name}")).await?;
        let generation = p["metadata"]["generation"].as_u64().unwrap_or(0);
        let observed = p["status"]["observedGeneration"].as_u64().unwrap_or(0);
        let nodes = p["status"]["nodes"].as_object().cloned().unwrap_or_default();
        let done = nodes
            .values()
            .filter(|n| n["generation"].as_u64() == Some(generation) && n["phase"] == "Running")
            .count();
        if observed == generation && !nodes.is_empty() && done == nodes.len() {
            println!(
                "plugin/{name}: generation {generation} runs on {done}/{} nodes",
                nodes.len()
            );
            return Ok(());
        }
        if let Some(c) = condition(&p, "Degraded")
            && c["status"] == "True"
            // Waiting helps with a node down or a registry away, not with these.
            && c["reason"] != "NodeNotReady"
            && c["reason"] != "PullFailed"
        {
            bail!(
                "plugin/{name} generation {generation} is failing: {}",
                c["message"].as_str().unwrap_or_default()
            );
        }
        let line = if nodes.is_empty() {
            format!("Waiting for plugin/{name}: no node matches it yet")
        } else {
            format!(
                "Waiting for plugin/{name}: {done} of {} nodes run generation {generation}",
                nodes.len()
            )
        };
        if line != last {
            println!("{line}");
            last = line;
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for plugin/{name} to roll out");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
