//! `harvester get plugins|nodes|all [NAME] [-o wide|yaml|json|name] [-l SELECTOR]
//! [--show-labels]`; `TYPE/NAME` and the short names `pl` and `no` too.

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
    kind: Kind,
    plural: &'static str,
    /// Whether the table shows labels without --show-labels.
    labelled: bool,
    meta: fn(&T) -> &harvester_api::resources::ObjectMeta,
    header: &'static [&'static str],
    wide: [&'static str; 4],
    row: fn(&T, bool) -> Vec<String>,
}

const PLUGINS: Columns<Plugin> = Columns {
    kind: Kind::Plugin,
    plural: "plugins",
    labelled: false,
    meta: |p| &p.metadata,
    header: &["NAME", "GENERATION", "READY", "NODES", "AGE"],
    wide: ["DIGEST", "IMAGE", "SELECTOR", "ON"],
    row: plugin_row,
};

const NODES: Columns<Node> = Columns {
    kind: Kind::Node,
    plural: "nodes",
    labelled: true,
    meta: |n| &n.metadata,
    header: &["NAME", "STATUS", "ROLES", "LABELS", "PLUGINS", "AGE"],
    wide: ["ARCH", "BACKEND", "DEVICES", "HEARTBEAT"],
    row: node_row,
};

/// How `get` prints.
pub struct Output<'a> {
    /// "", wide, yaml, json or name.
    pub format: &'a str,
    pub show_labels: bool,
}

fn show<T: Serialize>(items: Vec<T>, one: bool, out: &Output<'_>, columns: &Columns<T>) -> anyhow::Result<()> {
    if out.format == "yaml" || out.format == "json" {
        return print_structured(items, one, out.format);
    }
    if out.format == "name" {
        for item in &items {
            println!("{}/{}", columns.kind.singular(), (columns.meta)(item).name);
        }
        return Ok(());
    }
    if items.is_empty() {
        eprintln!("No {} found.", columns.plural);
        return Ok(());
    }
    let wide = out.format == "wide";
    let extra_labels = out.show_labels && !columns.labelled;
    let mut table = Table::with_header(columns.header);
    if wide {
        table.0[0].extend(columns.wide.iter().map(|h| h.to_string()));
    }
    if extra_labels {
        table.0[0].push("LABELS".into());
    }
    for item in &items {
        let mut row = (columns.row)(item, wide);
        if extra_labels {
            row.push(labels(&(columns.meta)(item).labels));
        }
        table.row(row);
    }
    table.print();
    Ok(())
}

pub async fn get(
    client: &Client,
    kind: &str,
    name: Option<&str>,
    out: &Output<'_>,
    selector: Option<&str>,
) -> anyhow::Result<()> {
    if !["", "wide", "yaml", "json", "name"].contains(&out.format) {
        bail!("-o {}: use wide, yaml, json or name", out.format);
    }
    // Checked here, before anything is sent: a typo is an error, not an
    // empty answer.
    if let Some(s) = selector {
        harvester_api::selector::Selector::parse(s).map_err(|e| anyhow::anyhow!("-l: {e}"))?;
    }
    if kind.eq_ignore_ascii_case("all") {
        if name.is_some() {
            bail!("get all lists every kind: give a TYPE to get one object");
        }
        let (plugins, nodes) = tokio::try_join!(client.plugins(selector), client.nodes(selector))?;
        if out.format == "yaml" || out.format == "json" {
            #[derive(Serialize)]
            struct All {
                items: Vec<serde_json::Value>,
            }
            let mut items: Vec<serde_json::Value> = Vec::new();
            for p in plugins {
                items.push(serde_json::to_value(p)?);
            }
            for n in nodes {
                items.push(serde_json::to_value(n)?);
            }
            return print_structured(vec![All { items }], true, out.format);
        }
        show(plugins, false, out, &PLUGINS)?;
        if out.format != "name" {
            println!();
        }
        return show(nodes, false, out, &NODES);
    }
    let (kind, name) = crate::client::Kind::target(kind, name)?;
    match (kind, name) {
        (Kind::Plugin, Some(n)) => show(vec![client.plugin(&n).await?], true, out, &PLUGINS),
        (Kind::Plugin, None) => show(client.plugins(selector).await?, false, out, &PLUGINS),
        (Kind::Node, Some(n)) => show(vec![client.node(&n).await?], true, out, &NODES),
        (Kind::Node, None) => show(client.nodes(selector).await?, false, out, &NODES),
    }
}
