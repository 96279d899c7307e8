//! The node protocol: a nodelet registers its Node, writes its status,
//! sends heartbeats, holds one outbound stream of assignments and
//! commands, pushes live reports, answers commands and downloads the
//! components it was assigned.

use super::access::{Caller, ThisNode, may_fetch};
use super::{Api, ApiError, ndjson};
use crate::apply::{LabelAuthority, node_update};
use crate::identity::Identity;
use crate::live::{Answered, Live};
use crate::metrics::StreamGuard;
use crate::store::{Kind, StoreError};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use harvester_api::Digest;
use harvester_api::identity::Role;
use harvester_api::live::{CommandResult, LiveReport, NodeMessage};
use harvester_api::resources::{Labels, Node, NodeStatusV1};
use std::sync::Arc;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1alpha1/nodes/{name}/register", put(register))
        .route("/api/v1alpha1/nodes/{name}/status", put(status))
        .route("/api/v1alpha1/nodes/{name}/heartbeat", post(heartbeat))
        .route("/api/v1alpha1/nodes/{name}/assignments", get(assignments))
        .route("/api/v1alpha1/nodes/{name}/live", post(live_report))
        .route("/api/v1alpha1/nodes/{name}/commands/{id}", post(command_result))
        .route("/api/v1alpha1/blobs/{digest}", get(get_blob))
}

/// A nodelet creates or refreshes its Node's status. Its labels are set at
/// its first registration, from its join token or, when the token has
/// none, from what the board proposes (role labels only from an admin);
/// after that only people change them (`harvester label`), so a board can
/// neither choose another board's plugins nor undo an admin's label.
async fn register(
    State(api): State<Api>,
    ThisNode(name): ThisNode,
    Caller(caller): Caller,
    Json(node): Json<Node>,
) -> Result<Response, ApiError> {
    if node.metadata.name != name {
        return Err(ApiError::bad_request(format!(
            "metadata.name must be {name:?}, as in the URL"
        )));
    }
    node.validate().map_err(|e| ApiError::invalid(e.to_string()))?;
    api.node_quota(&name)?;
    let proposed = node.metadata.labels.clone();
    let first = first_labels(&api, &caller, &name, &proposed);
    let (stored, _) = api
        .store
        .write(Kind::Node, &name, |cur| {
            let mut incoming = node.clone();
            incoming.metadata.labels = match cur {
                Some(c) => serde_json::from_value(c["metadata"]["labels"].clone()).unwrap_or_default(),
                None => first.clone(),
            };
            node_update(cur, &incoming, true, LabelAuthority::Admin)
        })
        .await?;
    api.reconciler.heartbeat(&name);
    let labels: Labels = stored
        .map(|s| serde_json::from_value(s["metadata"]["labels"].clone()).unwrap_or_default())
        .unwrap_or_default();
    let proposed_ignored = labels != proposed;
    if proposed_ignored {
        tracing::info!(
            node = name,
            "kept the node's labels; the ones it proposed differ and were set aside (people change a board's labels with harvester label)"
        );
    }
    Ok(Json(harvester_api::identity::Registered {
        labels,
        proposed_ignored,
    })
    .into_response())
}

/// The labels a board's Node starts with: its join token's when it has
/// some, else what it proposes; role labels (`node-role.harvester.dev/*`)
/// only from an admin (a token is an admin's; on a hub without identities
/// everyone is).
fn first_labels(api: &Api, caller: &Identity, node: &str, proposed: &Labels) -> Labels {
    let by_admin = matches!(caller, Identity::User { role: Role::Admin, .. });
    if by_admin {
        return proposed.clone();
    }
    match api.identities.as_ref().and_then(|ids| ids.labels_at_enrolment(node)) {
        Some(Some(from_token)) => from_token,
        _ => proposed
            .iter()
            .filter(|(k, _)| !k.starts_with(harvester_api::resources::NODE_ROLE_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// The status subresource: written by the node itself.
async fn status(
    State(api): State<Api>,
    ThisNode(name): ThisNode,
    Json(status): Json<NodeStatusV1>,
) -> Result<Response, ApiError> {
    harvester_api::resources::validate_address(&status.address)
        .map_err(|e| ApiError::invalid(format!("status.address: {e}")))?;
    api.store
        .write_observed(Kind::Node, &name, |cur| {
            let Some(cur) = cur else {
                return Err(StoreError::NotFound {
                    kind: "Node",
                    name: name.clone(),
                });
            };
            let node: Node = serde_json::from_value(cur.clone())?;
            let incoming = Node {
                status: status.clone(),
                ..node
            };
            node_update(Some(cur), &incoming, true, LabelAuthority::Admin)
        })
        .await?;
    api.reconciler.heartbeat(&name);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn heartbeat(State(api): State<Api>, ThisNode(name): ThisNode) -> Result<Response, ApiError> {
    api.must_exist(Kind::Node, &name)?;
    api.reconciler.heartbeat(&name);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The node's one outbound watch: its full assignments now and after every
/// change, and commands for its plugins, one JSON per line, with keepalives.
async fn assignments(
    State(api): State<Api>,
    ThisNode(name): ThisNode,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    // Without identities every caller is the same admin: the stream counts
    // as the node's own.
    let counted = match api.identities {
        Some(_) => caller.clone(),
        None => crate::identity::Identity::Node {
            name: name.clone(),
            serial: String::new(),
            expired: false,
        },
    };
    let slot = api.limits.stream(&counted)?;
    let mut rx = api.reconciler.watch_assignments(&name);
    // Revoking or deleting the node ends the stream at once.
    let gone = api.until_gone(&caller);
    let metrics = api.metrics.clone();
    let live = api.live.clone();
    let (token, mut commands) = live.link(&name);
    Ok(ndjson::response(api.live.closing(), gone, slot, move |tx| async move {
        let _open = StreamGuard::new(&metrics, "assignments");
        let _link = Unlink(live, name, token);
        // An untagged NodeMessage::Assignments is the assignments' own JSON:
        // written from the shared value, not a copy per node.
        let first = ndjson::line(&*rx.borrow_and_update());
        if tx.send(first).await.is_err() {
            return;
        }
        loop {
            let line = tokio::select! {
                changed = rx.changed() => match changed {
                    Ok(()) => ndjson::line(&*rx.borrow_and_update()),
                    Err(_) => return,
                },
                Some(command) = commands.recv() => ndjson::line(&NodeMessage::Command { command }),
                _ = tokio::time::sleep(ndjson::KEEPALIVE) => ndjson::keepalive(),
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    }))
}

/// Drops a node's command link when its stream ends.
struct Unlink(Arc<Live>, String, u64);

impl Drop for Unlink {
    fn drop(&mut self) {
        self.0.unlink(&self.1, self.2);
    }
}

/// A node's live report: log lines, readings, LED frame, buzzer activity.
async fn live_report(
    State(api): State<Api>,
    ThisNode(name): ThisNode,
    Json(report): Json<LiveReport>,
) -> Result<Response, ApiError> {
    api.must_exist(Kind::Node, &name)?;
    api.live.report(&name, report, harvester_api::now_ms());
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn command_result(
    State(api): State<Api>,
    ThisNode(name): ThisNode,
    Path((_, id)): Path<(String, u64)>,
    Json(result): Json<CommandResult>,
) -> Result<Response, ApiError> {
    match api.live.answer(&name, id, result) {
        Answered::Delivered => Ok(StatusCode::NO_CONTENT.into_response()),
        // Whoever asked gave up waiting.
        Answered::Gone => Ok(StatusCode::GONE.into_response()),
        Answered::NotSentTo => Err(ApiError::forbidden(format!(
            "command {id} was not sent to node {name:?}"
        ))),
    }
}

/// A component uploaded to the hub, by digest.
async fn get_blob(
    State(api): State<Api>,
    Caller(caller): Caller,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    let digest: Digest = digest.parse().map_err(ApiError::bad_request)?;
    may_fetch(&api, &caller, &digest)?;
    match api.store.get_blob(&digest)? {
        Some(bytes) => Ok(([(header::CONTENT_TYPE, "application/wasm")], Body::from(bytes.to_vec())).into_response()),
        None => Err(ApiError::not_found(format!("no blob {digest}"))),
    }
}
