//! kubectl-like commands against the controller, one file per group, over
//! the typed [`Client`](crate::client::Client):
//!
//! - [`apply`]: `apply -f` (local components uploaded and pinned first).
//! - [`get`]: `get plugins|nodes [NAME]` as tables, YAML or JSON.
//! - [`describe`]: one object in detail, with conditions and events.
//! - [`delete`]: by name or by manifest.
//! - [`diff`]: what apply would change, as kubectl diff.
//! - [`rollout`]: `rollout status|history|undo|pause|resume|promote|abort`.
//! - [`live`]: `logs` and `exec`, through the hub.
//! - [`identity`]: join tokens and node revocation.
//!
//! The helpers here (tables, ages, labels, "current generation running")
//! are the one way every command shows them.

pub mod apply;
pub mod backup;
pub mod delete;
pub mod describe;
pub mod diff;
pub mod edit;
pub mod explain;
pub mod get;
pub mod identity;
pub mod jsonpath;
pub mod live;
pub mod rollout;

pub use apply::{apply, read_manifests};
pub use delete::delete;
pub use describe::describe;
pub use get::get;
pub use rollout::rollout_status;

/// `harvester version`: this client's, the hub's (unless `hub` is none),
/// and the engine hash: compiled code moves between a hub and nodes only
/// when theirs are the same.
pub async fn version(hub: Option<&crate::client::Client>) -> anyhow::Result<()> {
    println!("Client Version: {}", env!("CARGO_PKG_VERSION"));
    if let Some(client) = hub {
        let info = client.info().await?;
        println!("Server Version: {}", info.version);
    }
    let target = harvester_engine::config::host_target();
    let engine = harvester_engine::config::compiler_for(&target)?;
    println!(
        "Engine:         {} ({target}; code compiled for it loads only where the engine is the same)",
        harvester_engine::config::engine_hash(&engine)
    );
    Ok(())
}

use harvester_api::resources::{Condition, DocumentError, Labels, Plugin};

/// A manifest the client refuses before sending anything: every error on
/// its own line, as the hub's refusals.
fn invalid_manifest(errors: &[DocumentError], what: &str) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    anyhow::anyhow!("the manifest is not valid, {what}:\n  {}", lines.join("\n  "))
}
use harvester_api::{ConditionType, Phase};

/// Text from nodes and plugins as a terminal may show it: control
/// characters (escape sequences that would move the cursor, retitle the
/// window or hide what follows), C1 controls and bidirectional overrides
/// (which reorder what is read) are written out as `\u{1b}`; tabs stay.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        (c.is_control() && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `println!` for lines carrying text from nodes and plugins.
macro_rules! say {
    ($($t:tt)*) => {
        println!("{}", $crate::commands::printable(&format!($($t)*)))
    };
}
pub(crate) use say;

/// How long ago `ms` (milliseconds since the epoch) was, kubectl-style.
fn age(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    span(harvester_api::now_ms().saturating_sub(ms) / 1000)
}

/// Seconds in kubectl's words: `45s`, `12m`, `5h`, `3d`.
fn span(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `a=b,c=d`, or `<none>`.
fn labels(l: &Labels) -> String {
    if l.is_empty() {
        return "<none>".into();
    }
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// A node selector as `-l` would take it, or `<none>`.
fn selector(s: &harvester_api::selector::Selector) -> String {
    if s.is_empty() { "<none>".into() } else { s.to_string() }
}

/// A digest cut to `sha256:` and its first 12 hex digits, as tables show it.
fn short(digest: Option<&harvester_api::Digest>) -> String {
    match digest {
        Some(d) => {
            let s = d.to_string();
            s[..s.len().min(19)].to_string()
        }
        None => "-".into(),
    }
}

fn condition(conditions: &[Condition], kind: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.kind == kind)
}

/// How many of a plugin's nodes run its current generation, of how many
/// it is assigned to.
fn running_current(p: &Plugin) -> (usize, usize) {
    let generation = p.metadata.generation;
    let nodes = p.status.as_ref().map(|s| &s.nodes);
    let total = nodes.map_or(0, |n| n.len());
    let running = nodes.map_or(0, |n| {
        n.values()
            .filter(|n| n.generation == generation && n.phase == Phase::Running)
            .count()
    });
    (running, total)
}

/// Rows printed with aligned columns, three spaces apart.
struct Table(Vec<Vec<String>>);

impl Table {
    fn new<const N: usize>(header: [&str; N]) -> Table {
        Table::with_header(&header)
    }

    fn with_header(header: &[&str]) -> Table {
        Table(vec![header.iter().map(|h| h.to_string()).collect()])
    }

    fn row(&mut self, cells: Vec<String>) {
        self.0.push(cells);
    }

    fn print(&self) {
        print!("{}", self.render());
    }

    /// Each column's width: its widest cell.
    fn widths(&self) -> Vec<usize> {
        let columns = self.0.iter().map(Vec::len).max().unwrap_or(0);
        (0..columns)
            .map(|i| {
                self.0
                    .iter()
                    .map(|r| r.get(i).map_or(0, String::len))
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    fn render(&self) -> String {
        Table::render_with(&self.0, &self.widths())
    }

    /// Rows padded to `widths` (a watch's rows line up under the table it
    /// printed first; a longer cell just pushes its row out).
    fn render_with(rows: &[Vec<String>], widths: &[usize]) -> String {
        let mut out = String::new();
        for r in rows {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{:<w$}", printable(c), w = widths.get(i).copied().unwrap_or(0)))
                .collect();
            out.push_str(cells.join("   ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let mut t = Table::new(["NAME", "READY"]);
        t.row(vec!["dht22".into(), "True".into()]);
        t.row(vec!["a".into(), "False".into()]);
        assert_eq!(t.render(), "NAME    READY\ndht22   True\na       False\n");
    }

    #[test]
    fn escape_sequences_from_nodes_are_shown_not_obeyed() {
        assert_eq!(printable("plain text\twith a tab"), "plain text\twith a tab");
        assert_eq!(printable("\u{1b}]0;pwned\u{7}red"), "\\u{1b}]0;pwned\\u{7}red");
        assert_eq!(printable("line\nforged"), "line\\u{a}forged");
        assert_eq!(printable("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
        let mut t = Table::new(["NAME", "MESSAGE"]);
        t.row(vec!["a".into(), "\u{1b}[2J".into()]);
        assert!(!t.render().contains('\u{1b}'));
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = harvester_api::now_ms();
        assert_eq!(age(0), "-");
        assert_eq!(age(now - 5_000), "5s");
        assert_eq!(age(now - 600_000), "10m");
        assert_eq!(age(now - 3 * 86_400_000), "3d");
    }
}
