//! What flows between a node and the hub besides desired state: the node's
//! live report (log lines, readings, LED frame, buzzer activity) pushed up
//! about once a second, and commands the hub sends down the node's one
//! outbound connection.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How much a log line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The plugin's `log` import.
    Plugin,
    /// The plugin's WASI stdout.
    Stdout,
    /// The plugin's WASI stderr (Python tracebacks land here).
    Stderr,
    /// The node itself, about a plugin or not.
    Node,
}

impl LogSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LogSource::Plugin => "plugin",
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
            LogSource::Node => "node",
        }
    }
}

impl fmt::Display for LogSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One log line of a node or of one of its plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// Milliseconds since the Unix epoch, on the node's clock.
    pub at: u64,
    /// Filled in by the hub from the connection it arrived on.
    #[serde(default)]
    pub node: String,
    /// The plugin it is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    pub level: LogLevel,
    pub source: LogSource,
    pub message: String,
}

/// One telemetry value as a plugin emitted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveReading {
    pub plugin: String,
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub at: u64,
}

/// Something the node's buzzer did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuzzerActivity {
    pub at: u64,
    pub plugin: String,
    /// `short`, `triple`, `long`, `tone-on` or `tone-off`.
    pub action: String,
}

/// What a node pushes to the hub (`POST nodes/NAME/live`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveReport {
    #[serde(default)]
    pub logs: Vec<LogLine>,
    /// Lines lost on the node since its last report (its buffer is bounded).
    #[serde(default)]
    pub dropped_logs: u64,
    #[serde(default)]
    pub readings: Vec<LiveReading>,
    /// The LED strip's current frame as `#rrggbb`, when the node has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leds: Option<Vec<String>>,
    #[serde(default)]
    pub buzzer: Vec<BuzzerActivity>,
}

/// One line of `GET logs` besides keepalives: a log line, or how many
/// lines the hub skipped because the reader fell behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogStreamItem {
    Dropped { dropped: u64 },
    Line(LogLine),
}

/// A plugin command the hub forwards to a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    pub plugin: String,
    pub name: String,
    #[serde(default)]
    pub args: Vec<(String, String)>,
}

/// The node's answer to a [`Command`] (`POST nodes/NAME/commands/ID`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub ok: bool,
    /// The plugin's answer, or why the command did not run.
    pub message: String,
}

/// One line of a node's assignment stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NodeMessage {
    Command { command: Command },
    Assignments(crate::resources::Assignments),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Assignments;

    #[test]
    fn stream_lines_tell_commands_from_assignments() {
        let c = NodeMessage::Command {
            command: Command {
                id: 7,
                plugin: "buzzer".into(),
                name: "triple".into(),
                args: vec![],
            },
        };
        let line = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<NodeMessage>(&line).unwrap(), c);
        let a = NodeMessage::Assignments(Assignments {
            node: "pi4".into(),
            plugins: vec![],
        });
        let line = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<NodeMessage>(&line).unwrap(), a);
        // The hub writes the assignments' own JSON for this variant.
        let NodeMessage::Assignments(inner) = &a else {
            unreachable!()
        };
        assert_eq!(serde_json::to_string(inner).unwrap(), line);
    }
}
