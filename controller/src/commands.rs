//! Plugin commands fanned out to the nodes that run the plugin, each over
//! the node's own outbound connection, answers gathered per node. Shared
//! by the API (`harvester exec`) and the dashboard's buzzer buttons.

use crate::live::Live;
use crate::store::{Kind, Store, StoreError};
use harvester_api::Phase;
use harvester_api::resources::Plugin;
use serde::Serialize;
use std::time::Duration;

/// How long a plugin command may take, there and back.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) use harvester_api::answers::NodeAnswer;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    pub plugin: String,
    pub command: String,
    pub results: Vec<NodeAnswer>,
}

impl Outcome {
    pub(crate) fn all_ok(&self) -> bool {
        self.results.iter().all(|r| r.ok)
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nowhere (or not on the node asked for) to run it.
    #[error("{0}")]
    NotRunning(String),
}

/// Runs `command` on every node where `plugin` is Running (or on `node` only).
pub(crate) async fn run(
    store: &Store,
    live: &Live,
    plugin: &str,
    command: &str,
    node: Option<&str>,
    args: Vec<(String, String)>,
) -> Result<Outcome, CommandError> {
    let Some(value) = store.get(Kind::Plugin, plugin)? else {
        return Err(StoreError::NotFound {
            kind: "Plugin",
            name: plugin.to_string(),
        }
        .into());
    };
    let p: Plugin = serde_json::from_value(value).map_err(StoreError::from)?;
    let running: Vec<String> = p
        .status
        .map(|s| {
            s.nodes
                .into_iter()
                .filter(|(_, n)| n.phase == Phase::Running)
                .map(|(name, _)| name)
                .collect()
        })
        .unwrap_or_default();
    let targets: Vec<String> = match node {
        Some(n) if running.iter().any(|r| r == n) => vec![n.to_string()],
        Some(n) => {
            return Err(CommandError::NotRunning(format!(
                "plugin {plugin} is not running on node {n}"
            )));
        }
        None => running,
    };
    if targets.is_empty() {
        return Err(CommandError::NotRunning(format!(
            "plugin {plugin} is not running on any node"
        )));
    }
    let calls = targets.iter().map(|n| {
        let args = args.clone();
        async move {
            let (ok, message) = match live.command(n, plugin, command, args, COMMAND_TIMEOUT).await {
                Ok(r) => (r.ok, r.message),
                Err(e) => (false, e.to_string()),
            };
            NodeAnswer {
                node: n.clone(),
                ok,
                message,
            }
        }
    });
    let outcome = Outcome {
        plugin: plugin.to_string(),
        command: command.to_string(),
        results: futures::future::join_all(calls).await,
    };
    tracing::info!(plugin, command, nodes = ?targets, ok = outcome.all_ok(), "plugin command");
    Ok(outcome)
}
