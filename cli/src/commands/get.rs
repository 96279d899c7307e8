//! `harvester get plugins|nodes [NAME] [-o wide|yaml|json] [-l SELECTOR]`.

use super::{Table, age, condition, labels, running_current, selector, short};
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
        row.push(selector(&p.spec.node_selector()));
        let on: Vec<&str> = p
            .status
            .iter()
            .flat_map(|s| s.nodes.keys().map(String::as_str))
            .collect();
        row.push(on.join(","));
    }
    row
}

/// As `kubectl get nodes` shows them: `<none>` for a node without one.
pub(super) fn roles(n: &Node) -> String {
    let roles = n.roles();
    if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    }
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
        roles(n),
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

/// The columns of a kind's table, and the extra ones of `-o wide`.
struct Columns<T> {
    plural: &'static str,
    header: &'static [&'static str],
    wide: [&'static str; 4],
    row: fn(&T, bool) -> Vec<String>,
}

const PLUGINS: Columns<Plugin> = Columns {
    plural: "plugins",
    header: &["NAME", "GENERATION", "READY", "NODES", "AGE"],
    wide: ["DIGEST", "IMAGE", "SELECTOR", "ON"],
    row: plugin_row,
};

const NODES: Columns<Node> = Columns {
    plural: "nodes",
    header: &["NAME", "STATUS", "ROLES", "LABELS", "PLUGINS", "AGE"],
    wide: ["ARCH", "BACKEND", "DEVICES", "HEARTBEAT"],
    row: node_row,
};

fn show<T: Serialize>(items: Vec<T>, one: bool, output: &str, columns: &Columns<T>) -> anyhow::Result<()> {
    if output == "yaml" || output == "json" {
        return print_structured(items, one, output);
    }
    if items.is_empty() {
        eprintln!("No {} found.", columns.plural);
        return Ok(());
    }
    let wide = output == "wide";
    let mut table = Table::with_header(columns.header);
    if wide {
        table.0[0].extend(columns.wide.iter().map(|h| h.to_string()));
    }
    for item in &items {
        table.row((columns.row)(item, wide));
    }
    table.print();
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
    // Checked here, before anything is sent: a typo is an error, not an
    // empty answer.
    if let Some(s) = selector {
        harvester_api::selector::Selector::parse(s).map_err(|e| anyhow::anyhow!("-l: {e}"))?;
    }
    match (kind, name) {
        (Kind::Plugin, Some(n)) => show(vec![client.plugin(n).await?], true, output, &PLUGINS),
        (Kind::Plugin, None) => show(client.plugins(selector).await?, false, output, &PLUGINS),
        (Kind::Node, Some(n)) => show(vec![client.node(n).await?], true, output, &NODES),
        (Kind::Node, None) => show(client.nodes(selector).await?, false, output, &NODES),
    }
}
