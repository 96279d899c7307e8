//! `harvester get plugins|nodes [NAME] [-o wide|yaml|json] [-l SELECTOR]`.

use super::{Table, age, condition, labels, running_current, short};
use crate::client::{Client, Kind};
use anyhow::bail;
use harvester_api::ConditionType;
use harvester_api::resources::{ConditionStatus, Node, Plugin};
use serde::Serialize;

fn plugin_row(p: &Plugin, wide: bool) -> Vec<String> {
    let (running, total) = running_current(p);
    let conditions = p.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    let ready = condition(conditions, ConditionType::Ready).map_or("Unknown", |c| c.status.as_str());
    let mut row = vec![
        p.metadata.name.clone(),
        p.metadata.generation.to_string(),
        ready.to_string(),
        format!("{running}/{total}"),
        age(p.metadata.creation_timestamp),
    ];
    if wide {
        row.push(short(p.spec.digest.as_ref()));
        row.push(p.spec.image.clone());
        row.push(labels(&p.spec.node_selector));
        let on: Vec<&str> = p
            .status
            .iter()
            .flat_map(|s| s.nodes.keys().map(String::as_str))
            .collect();
        row.push(on.join(","));
    }
    row
}

fn node_row(n: &Node, wide: bool) -> Vec<String> {
    let ready = match condition(&n.status.conditions, ConditionType::Ready) {
        None => "Unknown",
        Some(c) if c.status == ConditionStatus::True => "Ready",
        Some(_) => "NotReady",
    };
    let mut row = vec![
        n.metadata.name.clone(),
        ready.to_string(),
        labels(&n.metadata.labels),
        n.status.plugins.len().to_string(),
        age(n.metadata.creation_timestamp),
    ];
    if wide {
        row.push(n.status.architecture.clone());
        row.push(n.status.backend.clone());
        row.push(n.status.devices.join(","));
        row.push(age(n.status.last_heartbeat));
    }
    row
}

/// One object as itself, several as `{"items": [...]}`.
fn print_structured<T: Serialize>(items: Vec<T>, one: bool, output: &str) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct Items<T> {
        items: Vec<T>,
    }
    let value = if one {
        serde_json::to_value(items.into_iter().next())?
    } else {
        serde_json::to_value(Items { items })?
    };
    match output {
        "json" => println!("{}", serde_json::to_string_pretty(&value)?),
        _ => print!("{}", serde_yaml::to_string(&value)?),
    }
    Ok(())
}

pub async fn get(
    client: &Client,
    kind: &str,
    name: Option<&str>,
    output: &str,
    selector: Option<&str>,
) -> anyhow::Result<()> {
    let kind = Kind::parse(kind)?;
    if !["", "wide", "yaml", "json"].contains(&output) {
        bail!("-o {output}: use wide, yaml or json");
    }
    let wide = output == "wide";
    match kind {
        Kind::Plugin => {
            let items = match name {
                Some(n) => vec![client.plugin(n).await?],
                None => client.plugins(selector).await?,
            };
            if output == "yaml" || output == "json" {
                return print_structured(items, name.is_some(), output);
            }
            if items.is_empty() {
                eprintln!("No plugins found.");
                return Ok(());
            }
            let mut table = if wide {
                Table::new([
                    "NAME",
                    "GENERATION",
                    "READY",
                    "NODES",
                    "AGE",
                    "DIGEST",
                    "IMAGE",
                    "SELECTOR",
                    "ON",
                ])
            } else {
                Table::new(["NAME", "GENERATION", "READY", "NODES", "AGE"])
            };
            for p in &items {
                table.row(plugin_row(p, wide));
            }
            table.print();
        }
        Kind::Node => {
            let items = match name {
                Some(n) => vec![client.node(n).await?],
                None => client.nodes(selector).await?,
            };
            if output == "yaml" || output == "json" {
                return print_structured(items, name.is_some(), output);
            }
            if items.is_empty() {
                eprintln!("No nodes found.");
                return Ok(());
            }
            let mut table = if wide {
                Table::new([
                    "NAME",
                    "STATUS",
                    "LABELS",
                    "PLUGINS",
                    "AGE",
                    "ARCH",
                    "BACKEND",
                    "DEVICES",
                    "HEARTBEAT",
                ])
            } else {
                Table::new(["NAME", "STATUS", "LABELS", "PLUGINS", "AGE"])
            };
            for n in &items {
                table.row(node_row(n, wide));
            }
            table.print();
        }
    }
    Ok(())
}
