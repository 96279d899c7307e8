//! `harvester get plugins|nodes|all [NAME] [-o wide|yaml|json|name|
//! jsonpath=...|custom-columns=...] [-l SELECTOR] [--show-labels]
//! [--sort-by PATH] [-w]`; `TYPE/NAME` and the short names `pl` and `no` too.

use super::jsonpath::{self, Path, Template};
use super::{Table, age, condition, labels, running_current, selector, short};
use crate::client::{Client, Kind};
use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use harvester_api::ConditionType;
use harvester_api::answers::Watched;
use harvester_api::ndjson::Ndjson;
use harvester_api::resources::{ConditionStatus, Node, ObjectMeta, Plugin};
use harvester_api::selector::Selector;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_util::codec::FramedRead;
use tokio_util::io::StreamReader;

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

/// The columns of a kind's table, and the extra ones of `-o wide`.
struct Columns<T> {
    kind: Kind,
    /// As the API names the kind: `Plugin`.
    title: &'static str,
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
    title: "Plugin",
    plural: "plugins",
    labelled: false,
    meta: |p| &p.metadata,
    header: &["NAME", "GENERATION", "READY", "NODES", "AGE"],
    wide: ["ARTIFACT", "IMAGE", "SELECTOR", "ON"],
    row: plugin_row,
};

const NODES: Columns<Node> = Columns {
    kind: Kind::Node,
    title: "Node",
    plural: "nodes",
    labelled: true,
    meta: |n| &n.metadata,
    header: &["NAME", "STATUS", "ROLES", "LABELS", "PLUGINS", "AGE"],
    wide: ["ARCH", "BACKEND", "DEVICES", "HEARTBEAT"],
    row: node_row,
};

/// How `get` prints: the command line's words.
pub struct Output<'a> {
    /// "", wide, yaml, json, name, jsonpath=TEMPLATE or custom-columns=SPEC.
    pub format: &'a str,
    pub show_labels: bool,
    /// A JSONPath to order the items by.
    pub sort_by: Option<&'a str>,
    /// After the list, print every change as it happens.
    pub watch: bool,
}

/// The parsed `-o`.
enum Format {
    Table { wide: bool },
    Yaml,
    Json,
    Name,
    JsonPath(Template),
    Columns(Vec<(String, Path)>),
}

impl Format {
    fn parse(s: &str) -> anyhow::Result<Format> {
        if let Some(t) = s.strip_prefix("jsonpath=") {
            return Ok(Format::JsonPath(Template::parse(t)?));
        }
        if let Some(c) = s.strip_prefix("custom-columns=") {
            return Ok(Format::Columns(jsonpath::columns(c)?));
        }
        Ok(match s {
            "" => Format::Table { wide: false },
            "wide" => Format::Table { wide: true },
            "yaml" => Format::Yaml,
            "json" => Format::Json,
            "name" => Format::Name,
            other => {
                bail!("-o {other}: use wide, yaml, json, name, jsonpath=TEMPLATE or custom-columns=HEADER:.path,...")
            }
        })
    }
}

/// An object as people read it: the API's JSON with times in RFC 3339.
fn readable<T: Serialize>(item: &T) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(item)?;
    harvester_api::time::to_rfc3339(&mut v);
    Ok(v)
}

fn print_document(value: &Value, format: &Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::JsonPath(t) => {
            use std::io::{IsTerminal, Write};
            let mut out = std::io::stdout().lock();
            let text = t.render(value);
            // Scripts get the values exactly; a terminal never obeys them.
            if out.is_terminal() {
                out.write_all(super::printable(&text).as_bytes())?;
            } else {
                out.write_all(text.as_bytes())?;
            }
            out.flush()?;
        }
        _ => print!("{}", serde_yaml::to_string(value)?),
    }
    Ok(())
}

/// Prints a kind's objects (one got by name, or a list) in `format`; the
/// column widths of the table, for the rows a watch adds.
fn show<T: Serialize>(
    items: Vec<T>,
    one: bool,
    out: &Output<'_>,
    format: &Format,
    sort: Option<&Path>,
    columns: &Columns<T>,
) -> anyhow::Result<Vec<usize>> {
    let mut rows: Vec<(T, Value)> = items
        .into_iter()
        .map(|i| readable(&i).map(|v| (i, v)))
        .collect::<anyhow::Result<_>>()?;
    if let Some(path) = sort {
        jsonpath::sort_by(&mut rows, path, |(_, v)| v);
    }
    match format {
        Format::Yaml | Format::Json | Format::JsonPath(_) => {
            let value = if one {
                rows.into_iter().next().map(|(_, v)| v).unwrap_or(Value::Null)
            } else {
                json!({"kind": "List", "items": rows.into_iter().map(|(_, v)| v).collect::<Vec<_>>()})
            };
            print_document(&value, format)?;
            return Ok(Vec::new());
        }
        Format::Name => {
            for (item, _) in &rows {
                println!("{}/{}", columns.kind.singular(), (columns.meta)(item).name);
            }
            return Ok(Vec::new());
        }
        Format::Table { .. } | Format::Columns(_) => {}
    }
    if rows.is_empty() && !out.watch {
        eprintln!("No {} found.", columns.plural);
        return Ok(Vec::new());
    }
    let mut table = Table::with_header(&[]);
    table.0[0] = header(format, out, columns);
    for (item, value) in &rows {
        table.row(row(item, value, format, out, columns));
    }
    table.print();
    Ok(table.widths())
}

fn header<T>(format: &Format, out: &Output<'_>, columns: &Columns<T>) -> Vec<String> {
    if let Format::Columns(spec) = format {
        return spec.iter().map(|(h, _)| h.clone()).collect();
    }
    let mut header: Vec<String> = columns.header.iter().map(|h| h.to_string()).collect();
    if matches!(format, Format::Table { wide: true }) {
        header.extend(columns.wide.iter().map(|h| h.to_string()));
    }
    if out.show_labels && !columns.labelled {
        header.push("LABELS".into());
    }
    header
}

fn row<T>(item: &T, value: &Value, format: &Format, out: &Output<'_>, columns: &Columns<T>) -> Vec<String> {
    if let Format::Columns(spec) = format {
        return spec.iter().map(|(_, p)| jsonpath::cell(p, value)).collect();
    }
    let mut row = (columns.row)(item, matches!(format, Format::Table { wide: true }));
    if out.show_labels && !columns.labelled {
        row.push(labels(&(columns.meta)(item).labels));
    }
    row
}

pub async fn get(
    client: &Client,
    kind: &str,
    name: Option<&str>,
    out: &Output<'_>,
    selector: Option<&str>,
) -> anyhow::Result<()> {
    let format = Format::parse(out.format)?;
    let sort = out
        .sort_by
        .map(|s| Path::parse(s).map_err(|e| anyhow::anyhow!("--sort-by: {e:#}")))
        .transpose()?;
    // Checked here, before anything is sent: a typo is an error, not an
    // empty answer.
    let parsed_selector = match selector {
        Some(s) => Some(Selector::parse(s).map_err(|e| anyhow::anyhow!("-l: {e}"))?),
        None => None,
    };
    if kind.eq_ignore_ascii_case("all") {
        if name.is_some() {
            bail!("get all lists every kind: give a TYPE to get one object");
        }
        if out.watch {
            bail!("get all -w: watch one type at a time (get plugins -w, get nodes -w)");
        }
        let (plugins, nodes) = tokio::try_join!(client.plugins(selector), client.nodes(selector))?;
        if let Format::Yaml | Format::Json | Format::JsonPath(_) = format {
            let mut items: Vec<Value> = Vec::new();
            for p in &plugins {
                items.push(readable(p)?);
            }
            for n in &nodes {
                items.push(readable(n)?);
            }
            if let Some(path) = &sort {
                jsonpath::sort_by(&mut items, path, |v| v);
            }
            return print_document(&json!({"kind": "List", "items": items}), &format);
        }
        show(plugins, false, out, &format, sort.as_ref(), &PLUGINS)?;
        if !matches!(format, Format::Name) {
            println!();
        }
        show(nodes, false, out, &format, sort.as_ref(), &NODES)?;
        return Ok(());
    }
    let (kind, name) = crate::client::Kind::target(kind, name)?;
    let watch = Watch {
        name: name.as_deref(),
        selector: parsed_selector.as_ref(),
        format: &format,
        out,
    };
    match kind {
        Kind::Plugin => watch.run(client, selector, sort.as_ref(), &PLUGINS).await,
        Kind::Node => watch.run(client, selector, sort.as_ref(), &NODES).await,
    }
}

/// `get TYPE [NAME]`, then with `-w` every change to what it printed, from
/// the store revision of the list on: after a dropped connection or a hub
/// restart it resumes from the last change it printed, so nothing is missed
/// or printed twice.
struct Watch<'a> {
    name: Option<&'a str>,
    selector: Option<&'a Selector>,
    format: &'a Format,
    out: &'a Output<'a>,
}

impl Watch<'_> {
    async fn run<T: Serialize + DeserializeOwned>(
        &self,
        client: &Client,
        selector: Option<&str>,
        sort: Option<&Path>,
        columns: &Columns<T>,
    ) -> anyhow::Result<()> {
        let (items, mut version) = match self.name {
            Some(n) if !self.out.watch => (vec![client.object::<T>(columns.kind, n).await?], 0),
            Some(n) => {
                let list = client.list::<T>(columns.kind, None).await?;
                let one: Vec<T> = list.items.into_iter().filter(|i| (columns.meta)(i).name == n).collect();
                if one.is_empty() {
                    bail!("{} {n} not found", columns.title);
                }
                (one, list.resource_version)
            }
            None => {
                let list = client.list::<T>(columns.kind, selector).await?;
                (list.items, list.resource_version)
            }
        };
        let mut widths = show(items, self.name.is_some(), self.out, self.format, sort, columns)?;
        if !self.out.watch {
            return Ok(());
        }
        let mut lost = false;
        let mut backoff = RECONNECT_MIN;
        loop {
            match client.watch(version).await {
                Ok(Some(resp)) => {
                    if lost {
                        eprintln!("(watch resumed from resourceVersion {version})");
                        lost = false;
                    }
                    backoff = RECONNECT_MIN;
                    let body = resp.bytes_stream().map_err(std::io::Error::other);
                    let mut lines = FramedRead::new(StreamReader::new(body), Ndjson::<Watched>::new());
                    while let Some(Ok(event)) = lines.next().await {
                        version = event.resource_version;
                        if event.kind != columns.title {
                            continue;
                        }
                        let item: T = serde_json::from_value(event.object)
                            .context("the hub sent an object this client cannot read")?;
                        if !self.wanted((columns.meta)(&item)) {
                            continue;
                        }
                        self.print(&item, &mut widths, columns)?;
                    }
                }
                // Older than the hub keeps: list again and go on from there.
                Ok(None) => {
                    let list = client.list::<T>(columns.kind, selector).await?;
                    version = list.resource_version;
                    for item in list.items.iter().filter(|i| self.wanted((columns.meta)(i))) {
                        self.print(item, &mut widths, columns)?;
                    }
                    continue;
                }
                Err(e) => {
                    if !lost {
                        eprintln!("(watch lost the hub: {e:#}; retrying)");
                        lost = true;
                    }
                }
            }
            // Full jitter: many watchers of a restarted hub come back spread out.
            let wait = harvester_api::jitter(backoff);
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }

    fn wanted(&self, meta: &ObjectMeta) -> bool {
        self.name.is_none_or(|n| meta.name == n) && self.selector.is_none_or(|s| s.matches(&meta.labels))
    }

    fn print<T: Serialize>(&self, item: &T, widths: &mut Vec<usize>, columns: &Columns<T>) -> anyhow::Result<()> {
        use std::io::Write;
        let value = readable(item)?;
        match self.format {
            Format::Name => println!("{}/{}", columns.kind.singular(), (columns.meta)(item).name),
            Format::Yaml => print!("---\n{}", serde_yaml::to_string(&value)?),
            Format::Json | Format::JsonPath(_) => print_document(&value, self.format)?,
            Format::Table { .. } | Format::Columns(_) => {
                let cells = row(item, &value, self.format, self.out, columns);
                if widths.is_empty() {
                    // Nothing was listed: the header comes with the first row.
                    let mut table = Table::with_header(&[]);
                    table.0[0] = header(self.format, self.out, columns);
                    table.row(cells.clone());
                    *widths = table.widths();
                    print!("{}", Table::render_with(&table.0[..1], widths));
                }
                print!("{}", Table::render_with(&[cells], widths));
            }
        }
        std::io::stdout().flush()?;
        Ok(())
    }
}

const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
