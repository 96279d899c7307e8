//! Operating the fleet: recent and live log lines, plugin commands,
//! the hub's `/metrics`, Prometheus service discovery and `/healthz`.

use super::access::Caller;
use super::{Api, ApiError, ndjson};
use crate::live::LogFilter;
use crate::store::Kind;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1alpha1/prometheus/targets", get(prometheus_targets))
        .route("/api/v1alpha1/info", get(info))
        .route("/api/v1alpha1/plugins/{name}/commands/{command}", post(plugin_command))
        .route("/api/v1alpha1/logs", get(logs))
}

#[derive(Deserialize)]
struct CommandQuery {
    node: Option<String>,
}

/// Runs a plugin command on every node running the plugin (or on `node`),
/// over each node's own connection; the answers come back per node.
async fn plugin_command(
    State(api): State<Api>,
    Path((plugin, command)): Path<(String, String)>,
    Query(q): Query<CommandQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let args: Vec<(String, String)> = if body.is_empty() {
        Vec::new()
    } else {
        let map: std::collections::BTreeMap<String, String> = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("arguments must be a JSON object of strings: {e}")))?;
        map.into_iter().collect()
    };
    let outcome = crate::commands::run(&api.store, &api.live, &plugin, &command, q.node.as_deref(), args).await?;
    Ok(command_answer(&outcome))
}

/// 200 when every node ran it, 502 when any did not; the answers either way.
pub(super) fn command_answer(outcome: &crate::commands::Outcome) -> Response {
    let code = if outcome.all_ok() {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    (code, Json(outcome)).into_response()
}

#[derive(Deserialize)]
struct LogsQuery {
    node: Option<String>,
    plugin: Option<String>,
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// Recent log lines of a node or a plugin (NDJSON), then new ones with `follow`.
async fn logs(
    State(api): State<Api>,
    Caller(caller): Caller,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let filter = LogFilter {
        node: q.node,
        plugin: q.plugin,
    };
    if let Some(n) = &filter.node {
        api.must_exist(Kind::Node, n)?;
    }
    if let Some(p) = &filter.plugin {
        api.must_exist(Kind::Plugin, p)?;
    }
    let slot = api.limits.stream(&caller)?;
    // Subscribe first so no line falls between the backlog and the tail.
    let mut follow = q.follow.then(|| api.live.follow_logs());
    let backlog = api.live.logs(&filter, q.tail.unwrap_or(crate::live::LOG_WINDOW));
    Ok(ndjson::response(
        api.live.closing(),
        api.until_gone(&caller),
        slot,
        move |tx| async move {
            for line in backlog {
                if tx.send(ndjson::line(&line)).await.is_err() {
                    return;
                }
            }
            let Some(rx) = follow.as_mut() else { return };
            loop {
                let line = match tokio::time::timeout(ndjson::KEEPALIVE, rx.recv()).await {
                    Err(_) => ndjson::keepalive(),
                    Ok(Ok(l)) if filter.matches(&l) => ndjson::line(&l),
                    Ok(Ok(_)) => continue,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                        ndjson::line(&json!({"dropped": n}))
                    }
                    Ok(Err(_)) => return,
                };
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        },
    ))
}

async fn metrics(State(api): State<Api>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        api.metrics.render(),
    )
        .into_response()
}

/// Prometheus HTTP service discovery: every registered node that serves
/// metrics, as one target group each, labelled with its name. Node labels
/// come as `__meta_harvester_node_label_<key>` for relabelling.
/// What clients show the way the hub does: its time zone and version.
async fn info(State(api): State<Api>) -> Json<harvester_api::answers::HubInfo> {
    Json(harvester_api::answers::HubInfo {
        timezone: api.timezone.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

async fn prometheus_targets(State(api): State<Api>) -> Result<Response, ApiError> {
    let mut groups = Vec::new();
    for node in api.store.list_as::<harvester_api::resources::Node>(Kind::Node)? {
        // Stored before addresses were checked: never a scrape target.
        if node.status.address.is_empty() || harvester_api::resources::validate_address(&node.status.address).is_err() {
            continue;
        }
        let mut labels = serde_json::Map::new();
        labels.insert("node".into(), json!(node.metadata.name));
        labels.insert("__meta_harvester_node_backend".into(), json!(node.status.backend));
        labels.insert(
            "__meta_harvester_node_architecture".into(),
            json!(node.status.architecture),
        );
        for (k, v) in &node.metadata.labels {
            let key: String = k
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            labels.insert(format!("__meta_harvester_node_label_{key}"), json!(v));
        }
        groups.push(json!({"targets": [node.status.address], "labels": labels}));
    }
    Ok(Json(groups).into_response())
}
