//! `harvester logs` and `harvester exec`: what the hub hears from the nodes,
//! and plugin commands sent through it.

use crate::client::Client;
use anyhow::{Context, bail};
use chrono::TimeZone;
use futures::{StreamExt, TryStreamExt};
use harvester_api::live::{LogLine, LogSource, LogStreamItem};
use harvester_api::ndjson::Ndjson;
use harvester_api::path_segment;
use tokio_util::codec::FramedRead;
use tokio_util::io::StreamReader;

/// Where timestamps are shown: a named IANA zone, else the machine's own.
#[derive(Debug, Clone, Copy)]
pub enum Zone {
    Named(chrono_tz::Tz),
    Local,
}

impl Zone {
    pub fn parse(name: Option<&str>) -> anyhow::Result<Zone> {
        match name {
            None => Ok(Zone::Local),
            Some(n) => n
                .parse::<chrono_tz::Tz>()
                .map(Zone::Named)
                .map_err(|_| anyhow::anyhow!("--timezone {n:?}: not an IANA time zone (like America/New_York or UTC)")),
        }
    }

    pub fn format(&self, ms: u64) -> String {
        let ms = ms as i64;
        const F: &str = "%Y-%m-%d %H:%M:%S%.3f %Z";
        match self {
            Zone::Named(tz) => tz.timestamp_millis_opt(ms).single().map(|t| t.format(F).to_string()),
            Zone::Local => chrono::Local
                .timestamp_millis_opt(ms)
                .single()
                .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f %z").to_string()),
        }
        .unwrap_or_else(|| ms.to_string())
    }
}

/// The hub's default zone: `TZ` when it names one, else the machine's, else UTC.
pub fn system_zone() -> String {
    if let Ok(tz) = std::env::var("TZ")
        && tz.parse::<chrono_tz::Tz>().is_ok()
    {
        return tz;
    }
    iana_time_zone::get_timezone()
        .ok()
        .filter(|z| z.parse::<chrono_tz::Tz>().is_ok())
        .unwrap_or_else(|| "UTC".into())
}

fn render(line: &LogLine, zone: Zone) -> String {
    let source = match (&line.plugin, line.source) {
        (Some(p), LogSource::Plugin | LogSource::Node) => format!("[{p}]"),
        (Some(p), s) => format!("[{p} {s}]"),
        (None, _) => "[nodelet]".into(),
    };
    format!(
        "{} {} {:<5} {source} {}",
        zone.format(line.at),
        line.node,
        line.level.as_str().to_uppercase(),
        line.message
    )
}

fn target(target: &str) -> anyhow::Result<(&'static str, &str)> {
    match target.split_once('/') {
        Some(("node" | "nodes", n)) if !n.is_empty() => Ok(("node", n)),
        Some(("plugin" | "plugins", n)) if !n.is_empty() => Ok(("plugin", n)),
        _ => bail!("{target:?}: expected node/NAME or plugin/NAME"),
    }
}

pub async fn logs(client: &Client, which: &str, follow: bool, tail: usize, zone: Zone) -> anyhow::Result<()> {
    let (kind, name) = target(which)?;
    let path = format!("logs?{kind}={}&tail={tail}&follow={follow}", path_segment(name));
    let resp = client.stream(&path).await?;
    let body = resp.bytes_stream().map_err(std::io::Error::other);
    let mut items = FramedRead::new(StreamReader::new(body), Ndjson::<LogStreamItem>::new());
    let mut out = std::io::stdout().lock();
    while let Some(item) = items.next().await {
        match item.context("the log stream from the hub broke off or sent a malformed line")? {
            LogStreamItem::Dropped { dropped } => eprintln!("({dropped} lines skipped: this terminal fell behind)"),
            LogStreamItem::Line(line) => {
                use std::io::Write;
                writeln!(out, "{}", super::printable(&render(&line, zone)))?;
                out.flush()?;
            }
        }
    }
    Ok(())
}

/// `exec plugin/NAME COMMAND [K=V...] [--node N]`: prints each node's answer.
pub async fn exec(
    client: &Client,
    which: &str,
    command: &str,
    args: &[String],
    node: Option<&str>,
) -> anyhow::Result<()> {
    let (kind, plugin) = target(which)?;
    if kind != "plugin" {
        bail!("{which:?}: commands go to plugins: plugin/NAME");
    }
    let mut map = std::collections::BTreeMap::new();
    for a in args {
        let (k, v) = a
            .split_once('=')
            .with_context(|| format!("{a:?}: arguments are KEY=VALUE"))?;
        map.insert(k.to_string(), v.to_string());
    }
    let (ok, answers) = client.exec(plugin, command, node, &map).await?;
    if answers.results.is_empty() {
        bail!("the command was not run");
    }
    for r in &answers.results {
        let mark = if r.ok { "" } else { "error: " };
        super::say!("{}: {mark}{}", r.node, r.message);
    }
    if !ok {
        bail!("the command failed on some nodes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_the_chosen_zone() {
        // 2026-07-01 16:00:00 UTC is noon in New York (EDT).
        let ms = 1_782_921_600_000;
        let ny = Zone::parse(Some("America/New_York")).unwrap();
        assert_eq!(ny.format(ms), "2026-07-01 12:00:00.000 EDT");
        let utc = Zone::parse(Some("UTC")).unwrap();
        assert_eq!(utc.format(ms), "2026-07-01 16:00:00.000 UTC");
        let err = Zone::parse(Some("Mars/Olympus")).unwrap_err().to_string();
        assert!(err.contains("Mars/Olympus"), "{err}");
    }

    #[test]
    fn targets_name_a_node_or_a_plugin() {
        assert_eq!(target("node/pi4").unwrap(), ("node", "pi4"));
        assert_eq!(target("plugin/dht22").unwrap(), ("plugin", "dht22"));
        assert!(target("pi4").is_err());
        assert!(target("node/").is_err());
    }
}
