//! What the hub's API answers besides objects, typed for its clients (the
//! CLI) and its own handlers alike.

use crate::digest::Digest;
use crate::resources::DocumentError;
use serde::{Deserialize, Serialize};

/// A list of objects (`GET plugins`, `GET nodes`), as of a store revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    #[serde(default)]
    pub resource_version: u64,
    pub items: Vec<T>,
}

/// What `apply` did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyAction {
    Created,
    Configured,
    Unchanged,
}

impl ApplyAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyAction::Created => "created",
            ApplyAction::Configured => "configured",
            ApplyAction::Unchanged => "unchanged",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedObject {
    pub kind: String,
    pub name: String,
    pub action: ApplyAction,
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
}

/// `POST apply`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub results: Vec<AppliedObject>,
    /// Nothing was stored: what an apply would have done.
    #[serde(default, rename = "dryRun")]
    pub dry_run: bool,
}

/// One event of a plugin (`GET plugins/NAME/events`), for `describe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEvent {
    /// Milliseconds since the Unix epoch.
    pub time: u64,
    pub message: String,
}

/// One node's answer to a plugin command sent through the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAnswer {
    pub node: String,
    pub ok: bool,
    pub message: String,
}

/// `POST plugins/NAME/commands/COMMAND`'s answer (also with 502 when a
/// node failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandAnswers {
    #[serde(default)]
    pub plugin: String,
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub results: Vec<NodeAnswer>,
}

/// The body of every error answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// For a rejected manifest: every document that was wrong.
    #[serde(default)]
    pub errors: Vec<DocumentError>,
}

/// `GET /api/v1alpha1/info`: what clients show the way the hub does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubInfo {
    /// The IANA time zone the dashboard shows times in; `harvester logs`
    /// uses it too unless given `--timezone`.
    pub timezone: String,
    pub version: String,
}

/// One line of `GET watch`: a change to an object, after the store
/// revision a client last saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Watched {
    pub resource_version: u64,
    /// ADDED, MODIFIED or DELETED.
    #[serde(rename = "type")]
    pub event: String,
    /// Plugin or Node.
    pub kind: String,
    pub object: serde_json::Value,
}
