//! The controller's HTTP API (`/api/v1alpha1/...`), JSON in and out, YAML
//! accepted for apply. Request bodies are size-limited; malformed input gets
//! 400 with the parser's line and column; a stale update gets 409.

use crate::apply::{self, node_update};
use crate::live::{Live, LogFilter};
use crate::metrics::StreamGuard;
use crate::reconciler::Reconciler;
use crate::store::{Kind, Store, StoreError, Write};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use harvester_api::Digest;
use harvester_api::live::{CommandResult, LiveReport, NodeMessage};
use harvester_api::resources::{Node, NodeStatusV1, Object, Plugin, parse_documents, parse_selector, selector_matches};
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Manifests are small; components are not.
const MANIFEST_LIMIT: usize = 1 << 20;
const BLOB_LIMIT: usize = 64 << 20;
const KEEPALIVE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Api {
    pub store: Arc<Store>,
    pub reconciler: Arc<Reconciler>,
    /// Resolves OCI tags to digests at apply.
    pub registry: Arc<harvester_registry::Registry>,
    /// Logs, readings and commands in flight (memory only).
    pub live: Arc<Live>,
    /// Compiles components for nodes (none: nodes compile themselves).
    pub compiler: Option<Arc<crate::compile::Compiler>>,
}

pub struct ApiError(StatusCode, serde_json::Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let (code, reason) = match &e {
            StoreError::Conflict { .. } => (StatusCode::CONFLICT, "Conflict"),
            StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            StoreError::Gone { .. } => (StatusCode::GONE, "Expired"),
            StoreError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            StoreError::Sled(_) | StoreError::Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        };
        if code == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{e}");
        }
        ApiError(code, json!({"reason": reason, "message": e.to_string()}))
    }
}

fn bad_request(message: String) -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        json!({"reason": "BadRequest", "message": message}),
    )
}

fn kind_of(plural: &str) -> Result<Kind, ApiError> {
    match plural {
        "plugins" => Ok(Kind::Plugin),
        "nodes" => Ok(Kind::Node),
        other => Err(ApiError(
            StatusCode::NOT_FOUND,
            json!({"reason": "NotFound", "message": format!("no resource type {other:?}; use plugins or nodes")}),
        )),
    }
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1alpha1/prometheus/targets", get(prometheus_targets))
        .route("/api/v1alpha1/apply", post(apply_docs))
        .route("/api/v1alpha1/watch", get(watch))
        .route(
            "/api/v1alpha1/blobs/{digest}",
            put(put_blob).get(get_blob).layer(DefaultBodyLimit::max(BLOB_LIMIT)),
        )
        .route("/api/v1alpha1/{kind}", get(list))
        .route("/api/v1alpha1/{kind}/{name}", get(get_one).put(update).delete(delete))
        .route("/api/v1alpha1/plugins/{name}/events", get(plugin_events))
        .route("/api/v1alpha1/nodes/{name}/register", put(register))
        .route("/api/v1alpha1/nodes/{name}/status", put(node_status))
        .route("/api/v1alpha1/nodes/{name}/heartbeat", post(heartbeat))
        .route("/api/v1alpha1/nodes/{name}/assignments", get(assignments))
        .route("/api/v1alpha1/nodes/{name}/live", post(live_report))
        .route("/api/v1alpha1/nodes/{name}/commands/{id}", post(command_result))
        .route("/api/v1alpha1/plugins/{name}/commands/{command}", post(plugin_command))
        .route("/api/v1alpha1/logs", get(logs))
        .route("/api/v1alpha1/compiled/{artifact}", get(compiled))
        .layer(DefaultBodyLimit::max(MANIFEST_LIMIT))
        .with_state(api)
}

async fn apply_docs(State(api): State<Api>, body: String) -> Result<Response, ApiError> {
    let objects = match parse_documents(&body) {
        Ok(o) => o,
        Err(errors) => {
            let syntax = errors.iter().any(|e| e.kind.is_none() && e.message.contains("line"));
            let code = if syntax {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            return Ok((code, Json(json!({"reason": "Invalid", "errors": errors}))).into_response());
        }
    };
    if objects.is_empty() {
        return Err(bad_request("the manifest holds no documents".into()));
    }
    // Resolve every image first: one that cannot be resolved applies nothing.
    let mut objects = objects;
    for (i, object) in objects.iter_mut().enumerate() {
        if let Object::Plugin(p) = object
            && let Err(e) = apply::resolve(&api.store, &api.registry, p).await
        {
            return Ok(document_error(&api, format!("document {}", i + 1), e, &[]));
        }
    }
    if let Some((i, e)) = grant_clash(&api, &objects)? {
        return Ok(document_error(&api, format!("document {}", i + 1), e, &[]));
    }
    let mut results = Vec::new();
    for (i, object) in objects.into_iter().enumerate() {
        let (kind, name) = (object.kind(), object.name().to_string());
        match apply::apply(&api.store, &api.registry, object).await {
            Ok(r) => {
                count_apply(&api, Ok(&r));
                results.push(r);
            }
            Err(e) => {
                let doc = format!("document {} ({kind} {name})", i + 1);
                return Ok(document_error(&api, doc, e, &results));
            }
        }
    }
    Ok(Json(json!({"results": results})).into_response())
}

/// The first Plugin of `objects` that would share an output pin or an LED
/// with another plugin on a node registered now, and why. Nodes that
/// register later are guarded by the reconciler (condition GrantConflict).
fn grant_clash(api: &Api, objects: &[Object]) -> Result<Option<(usize, StoreError)>, ApiError> {
    // Only plugins holding an output pin or an LED can clash.
    let incoming: Vec<(usize, &Plugin)> = objects
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Object::Plugin(p) if p.spec.grants.holds_exclusive() => Some((i, p)),
            _ => None,
        })
        .collect();
    if incoming.is_empty() {
        return Ok(None);
    }
    let nodes: Vec<Node> = api
        .store
        .list(Kind::Node)?
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .map_err(StoreError::from)?;
    let placed = |p: &Plugin| -> Vec<&Node> { nodes.iter().filter(|n| crate::reconciler::places(p, n)).collect() };
    // Plugins that land on no node now cannot clash now; the reconciler
    // guards the nodes that come later. Most applies stop here.
    if incoming.iter().all(|(_, p)| placed(p).is_empty()) {
        return Ok(None);
    }
    let mut stored: Vec<Plugin> = Vec::new();
    for value in api.store.list(Kind::Plugin)? {
        let p: Plugin = serde_json::from_value(value).map_err(StoreError::from)?;
        if !incoming.iter().any(|(_, q)| q.metadata.name == p.metadata.name) {
            stored.push(p);
        }
    }
    for (k, (i, p)) in incoming.iter().enumerate() {
        let mine = placed(p);
        if mine.is_empty() {
            continue;
        }
        let earlier = incoming[..k].iter().map(|(_, q)| *q);
        for other in stored.iter().chain(earlier) {
            let Some(what) = p.spec.grants.clash(&other.spec.grants) else {
                continue;
            };
            if let Some(node) = mine.iter().find(|n| crate::reconciler::places(other, n)) {
                let message = format!(
                    "spec.grants: {what} is already granted to plugin {} on node {} (two plugins on one node may not share an output pin or an LED)",
                    other.metadata.name, node.metadata.name
                );
                return Ok(Some((*i, StoreError::Invalid(message))));
            }
        }
    }
    Ok(None)
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(rename = "labelSelector")]
    label_selector: Option<String>,
}

pub(crate) fn with_heartbeat(api: &Api, kind: Kind, mut obj: serde_json::Value) -> serde_json::Value {
    if kind == Kind::Node
        && let Some(name) = obj["metadata"]["name"].as_str()
        && let Some(at) = api.reconciler.last_heartbeat_ms(name)
    {
        obj["status"]["lastHeartbeat"] = json!(at);
    }
    obj
}

async fn list(
    State(api): State<Api>,
    Path(kind): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&kind)?;
    let selector = parse_selector(q.label_selector.as_deref().unwrap_or("")).map_err(bad_request)?;
    let rv = api.store.resource_version();
    let items: Vec<serde_json::Value> = api
        .store
        .list(kind)?
        .into_iter()
        .filter(|o| {
            let labels = serde_json::from_value(o["metadata"]["labels"].clone()).unwrap_or_default();
            selector_matches(&selector, &labels)
        })
        .map(|o| with_heartbeat(&api, kind, o))
        .collect();
    Ok(Json(json!({"resourceVersion": rv, "items": items})).into_response())
}

async fn get_one(State(api): State<Api>, Path((kind, name)): Path<(String, String)>) -> Result<Response, ApiError> {
    let kind = kind_of(&kind)?;
    match api.store.get(kind, &name)? {
        Some(o) => Ok(Json(with_heartbeat(&api, kind, o)).into_response()),
        None => Err(StoreError::NotFound {
            kind: kind.as_str(),
            name,
        }
        .into()),
    }
}

/// A whole-object update with optimistic concurrency: the object's
/// metadata.resourceVersion must be the stored one.
async fn update(
    State(api): State<Api>,
    Path((kind, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = kind_of(&kind)?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("invalid JSON: {e}")))?;
    if value["metadata"]["name"].as_str() != Some(name.as_str()) {
        return Err(bad_request(format!("metadata.name must be {name:?}, as in the URL")));
    }
    if value["metadata"]["resourceVersion"].as_u64().unwrap_or(0) == 0 {
        return Err(bad_request(
            "metadata.resourceVersion is required for an update; use apply to create or overwrite".into(),
        ));
    }
    let object = match kind {
        Kind::Plugin => {
            let mut p: Plugin = serde_json::from_value(value).map_err(|e| bad_request(e.to_string()))?;
            p.status = None;
            p.validate().map_err(|e| {
                ApiError(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"reason": "Invalid", "message": e.to_string()}),
                )
            })?;
            Object::Plugin(p)
        }
        Kind::Node => {
            let n: Node = serde_json::from_value(value).map_err(|e| bad_request(e.to_string()))?;
            let sent = n.metadata.resource_version;
            let current = api.store.get(Kind::Node, &name)?.ok_or(StoreError::NotFound {
                kind: "Node",
                name: name.clone(),
            })?;
            let now = current["metadata"]["resourceVersion"].as_u64().unwrap_or(0);
            if now != sent {
                return Err(StoreError::Conflict {
                    kind: "Node",
                    name,
                    sent,
                    current: now,
                }
                .into());
            }
            Object::Node(n)
        }
    };
    let result = apply::apply(&api.store, &api.registry, object).await;
    count_apply(&api, result.as_ref());
    let result = result?;
    Ok(Json(json!(result)).into_response())
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(rename = "resourceVersion")]
    resource_version: Option<u64>,
}

async fn delete(
    State(api): State<Api>,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&kind)?;
    let expected = q.resource_version;
    api.store
        .write(kind, &name, |cur| {
            if let (Some(sent), Some(cur)) = (expected, cur) {
                let now = cur["metadata"]["resourceVersion"].as_u64().unwrap_or(0);
                if now != sent {
                    return Err(StoreError::Conflict {
                        kind: kind.as_str(),
                        name: name.clone(),
                        sent,
                        current: now,
                    });
                }
            }
            Ok(Write::Delete)
        })
        .await?;
    if kind == Kind::Node {
        api.live.forget(&name);
    }
    Ok(Json(json!({"kind": kind.as_str(), "name": name, "action": "deleted"})).into_response())
}

#[derive(Deserialize)]
struct WatchQuery {
    #[serde(rename = "resourceVersion", default)]
    resource_version: u64,
}

fn ndjson_line(v: &impl serde::Serialize) -> Result<Bytes, Infallible> {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    Ok(Bytes::from(line))
}

/// Every change after `resourceVersion`, then live ones, one JSON per line.
async fn watch(State(api): State<Api>, Query(q): Query<WatchQuery>) -> Result<Response, ApiError> {
    // Subscribe before reading the backlog so nothing falls in between.
    let mut live = api.store.subscribe();
    let backlog = api.store.events_since(q.resource_version)?;
    let mut last = backlog.last().map_or(q.resource_version, |e| e.resource_version);
    let metrics = api.reconciler.metrics().clone();
    let stream = async_stream(api.live.closing(), move |tx| async move {
        let _open = StreamGuard::new(&metrics, "watch");
        for ev in backlog {
            if tx.send(ndjson_line(&ev)).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::time::timeout(KEEPALIVE, live.recv()).await;
            let line = match next {
                Err(_) => Ok(Bytes::from_static(b"{}\n")),
                Ok(Ok(ev)) if ev.resource_version <= last => continue,
                Ok(Ok(ev)) => {
                    last = ev.resource_version;
                    ndjson_line(&ev)
                }
                // Fell behind the live buffer: end the stream; the client
                // resumes from its last resourceVersion and loses nothing.
                Ok(Err(_)) => return,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    Ok(ndjson_response(stream))
}

fn ndjson_response(stream: impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A stream fed by a task; the task stops when the client goes away, the
/// stream ends when the hub shuts down.
fn async_stream<F, Fut>(
    closing: tokio::sync::watch::Receiver<bool>,
    f: F,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures::stream::unfold((rx, closing), |(mut rx, mut closing)| async move {
        let item = tokio::select! {
            item = rx.recv() => item,
            _ = closing.wait_for(|c| *c) => None,
        };
        item.map(|item| (item, (rx, closing)))
    })
}

async fn put_blob(State(api): State<Api>, Path(digest): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let digest: Digest = digest.parse().map_err(bad_request)?;
    api.store.put_blob(&digest, &body).await?;
    Ok((StatusCode::CREATED, Json(json!({"digest": digest}))).into_response())
}

async fn get_blob(State(api): State<Api>, Path(digest): Path<String>) -> Result<Response, ApiError> {
    let digest: Digest = digest.parse().map_err(bad_request)?;
    match api.store.get_blob(&digest)? {
        Some(bytes) => Ok(([(header::CONTENT_TYPE, "application/wasm")], Body::from(bytes.to_vec())).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            json!({"reason": "NotFound", "message": format!("no blob {digest}")}),
        )),
    }
}

async fn plugin_events(State(api): State<Api>, Path(name): Path<String>) -> Json<serde_json::Value> {
    let items: Vec<_> = api
        .reconciler
        .events_of(&name)
        .into_iter()
        .map(|(at, message)| json!({"time": at, "message": message}))
        .collect();
    Json(json!({"items": items}))
}

/// A nodelet creates or refreshes its Node: labels and status.
async fn register(
    State(api): State<Api>,
    Path(name): Path<String>,
    Json(node): Json<Node>,
) -> Result<Response, ApiError> {
    if node.metadata.name != name {
        return Err(bad_request(format!("metadata.name must be {name:?}, as in the URL")));
    }
    node.validate().map_err(|e| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"reason": "Invalid", "message": e.to_string()}),
        )
    })?;
    api.store
        .write(Kind::Node, &name, |cur| node_update(cur, &node, true))
        .await?;
    api.reconciler.heartbeat(&name);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The status subresource: written by the node itself.
async fn node_status(
    State(api): State<Api>,
    Path(name): Path<String>,
    Json(status): Json<NodeStatusV1>,
) -> Result<Response, ApiError> {
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
            node_update(Some(cur), &incoming, true)
        })
        .await?;
    api.reconciler.heartbeat(&name);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn heartbeat(State(api): State<Api>, Path(name): Path<String>) -> Result<Response, ApiError> {
    if api.store.get(Kind::Node, &name)?.is_none() {
        return Err(StoreError::NotFound { kind: "Node", name }.into());
    }
    api.reconciler.heartbeat(&name);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The node's one outbound watch: its full assignments now and after every
/// change, and commands for its plugins, one JSON per line, with keepalives.
async fn assignments(State(api): State<Api>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let mut rx = api.reconciler.watch_assignments(&name);
    let metrics = api.reconciler.metrics().clone();
    let live = api.live.clone();
    let (token, mut commands) = live.link(&name);
    let stream = async_stream(api.live.closing(), move |tx| async move {
        let _open = StreamGuard::new(&metrics, "assignments");
        let _link = Unlink(live, name, token);
        let first = NodeMessage::Assignments(rx.borrow_and_update().clone());
        if tx.send(ndjson_line(&first)).await.is_err() {
            return;
        }
        loop {
            let line = tokio::select! {
                changed = rx.changed() => match changed {
                    Ok(()) => ndjson_line(&NodeMessage::Assignments(rx.borrow_and_update().clone())),
                    Err(_) => return,
                },
                Some(command) = commands.recv() => ndjson_line(&NodeMessage::Command { command }),
                _ = tokio::time::sleep(KEEPALIVE) => Ok(Bytes::from_static(b"{}\n")),
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    Ok(ndjson_response(stream))
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
    Path(name): Path<String>,
    Json(report): Json<LiveReport>,
) -> Result<Response, ApiError> {
    if api.store.get(Kind::Node, &name)?.is_none() {
        return Err(StoreError::NotFound { kind: "Node", name }.into());
    }
    api.live.report(&name, report, crate::now_ms());
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn command_result(
    State(api): State<Api>,
    Path((_name, id)): Path<(String, u64)>,
    Json(result): Json<CommandResult>,
) -> Response {
    if api.live.answer(id, result) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        // Whoever asked gave up waiting.
        StatusCode::GONE.into_response()
    }
}

#[derive(Deserialize)]
struct CommandQuery {
    node: Option<String>,
}

/// How long a plugin command may take, there and back.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

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
            .map_err(|e| bad_request(format!("arguments must be a JSON object of strings: {e}")))?;
        map.into_iter().collect()
    };
    let (code, body) = run_command(&api, &plugin, &command, q.node.as_deref(), args).await?;
    Ok((code, Json(body)).into_response())
}

/// Shared by the API and the dashboard.
pub async fn run_command(
    api: &Api,
    plugin: &str,
    command: &str,
    node: Option<&str>,
    args: Vec<(String, String)>,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    let Some(value) = api.store.get(Kind::Plugin, plugin)? else {
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
                .filter(|(_, n)| n.phase == "Running")
                .map(|(name, _)| name)
                .collect()
        })
        .unwrap_or_default();
    let targets: Vec<String> = match node {
        Some(n) if running.iter().any(|r| r == n) => vec![n.to_string()],
        Some(n) => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                json!({"reason": "NotRunning", "message": format!("plugin {plugin} is not running on node {n}")}),
            ));
        }
        None => running,
    };
    if targets.is_empty() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            json!({"reason": "NotRunning", "message": format!("plugin {plugin} is not running on any node")}),
        ));
    }
    let calls = targets.iter().map(|n| {
        let args = args.clone();
        async move {
            let r = api.live.command(n, plugin, command, args, COMMAND_TIMEOUT).await;
            match r {
                Ok(r) => json!({"node": n, "ok": r.ok, "message": r.message}),
                Err(e) => json!({"node": n, "ok": false, "message": e.to_string()}),
            }
        }
    });
    let results = futures::future::join_all(calls).await;
    let all_ok = results.iter().all(|r| r["ok"] == json!(true));
    tracing::info!(plugin, command, nodes = ?targets, ok = all_ok, "plugin command");
    let code = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    Ok((code, json!({"plugin": plugin, "command": command, "results": results})))
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
async fn logs(State(api): State<Api>, Query(q): Query<LogsQuery>) -> Result<Response, ApiError> {
    let filter = LogFilter {
        node: q.node,
        plugin: q.plugin,
    };
    if let Some(n) = &filter.node
        && api.store.get(Kind::Node, n)?.is_none()
    {
        return Err(StoreError::NotFound {
            kind: "Node",
            name: n.clone(),
        }
        .into());
    }
    if let Some(p) = &filter.plugin
        && api.store.get(Kind::Plugin, p)?.is_none()
    {
        return Err(StoreError::NotFound {
            kind: "Plugin",
            name: p.clone(),
        }
        .into());
    }
    // Subscribe first so no line falls between the backlog and the tail.
    let mut follow = q.follow.then(|| api.live.follow_logs());
    let backlog = api.live.logs(&filter, q.tail.unwrap_or(crate::live::LOG_WINDOW));
    let stream = async_stream(api.live.closing(), move |tx| async move {
        for line in backlog {
            if tx.send(ndjson_line(&line)).await.is_err() {
                return;
            }
        }
        let Some(rx) = follow.as_mut() else { return };
        loop {
            let line = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
                Err(_) => Ok(Bytes::from_static(b"{}\n")),
                Ok(Ok(l)) if filter.matches(&l) => ndjson_line(&l),
                Ok(Ok(_)) => continue,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => ndjson_line(&json!({"dropped": n})),
                Ok(Err(_)) => return,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    Ok(ndjson_response(stream))
}

/// The answer when one document of an apply fails: which one, why, and what
/// was applied before it.
fn document_error(api: &Api, document: String, e: StoreError, applied: &[apply::Applied]) -> Response {
    count_apply(api, Err(&e));
    let ApiError(code, body) = e.into();
    let message = format!("{document}: {}", body["message"].as_str().unwrap_or_default());
    (
        code,
        Json(json!({"reason": body["reason"], "message": message, "applied": applied})),
    )
        .into_response()
}

fn count_apply(api: &Api, result: Result<&apply::Applied, &StoreError>) {
    let outcome = match result {
        Ok(a) => match a.action {
            apply::Action::Created => "created",
            apply::Action::Configured => "configured",
            apply::Action::Unchanged => "unchanged",
        },
        Err(StoreError::Invalid(_)) => "invalid",
        Err(StoreError::Conflict { .. }) => "conflict",
        Err(_) => "error",
    };
    api.reconciler
        .metrics()
        .apply_requests
        .with_label_values(&[outcome])
        .inc();
}

async fn metrics(State(api): State<Api>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        api.reconciler.metrics().render(),
    )
        .into_response()
}

/// Prometheus HTTP service discovery: every registered node that serves
/// metrics, as one target group each, labelled with its name. Node labels
/// come as `__meta_harvester_node_label_<key>` for relabelling.
async fn prometheus_targets(State(api): State<Api>) -> Result<Response, ApiError> {
    let mut groups = Vec::new();
    for value in api.store.list(Kind::Node)? {
        let node: harvester_api::resources::Node = serde_json::from_value(value).map_err(StoreError::from)?;
        if node.status.address.is_empty() {
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

#[derive(Deserialize)]
struct CompiledQuery {
    target: String,
    engine: String,
}

/// Code compiled by the hub for a node's target, signed by the hub's key.
async fn compiled(
    State(api): State<Api>,
    Path(artifact): Path<String>,
    Query(q): Query<CompiledQuery>,
) -> Result<Response, ApiError> {
    use harvester_api::compiled::{SIGNATURE_HEADER, STATEMENT_HEADER};
    let requests = &api.reconciler.metrics().compile_requests;
    let Some(compiler) = api.compiler.clone() else {
        requests.with_label_values(&["refused"]).inc();
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            json!({"reason": "NotCompiling", "message": "this hub does not compile components for nodes (started with --no-compile)"}),
        ));
    };
    let artifact: Digest = artifact.parse().map_err(bad_request)?;
    let code = match compiler
        .code_for(&api.store, &api.registry, artifact, &q.target, &q.engine)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            requests.with_label_values(&["refused"]).inc();
            tracing::warn!(%artifact, target = q.target, "not serving compiled code: {e}");
            let code = match &e {
                crate::compile::CompileFailure::Target(_) | crate::compile::CompileFailure::Invalid { .. } => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                crate::compile::CompileFailure::EngineMismatch { .. } => StatusCode::CONFLICT,
                crate::compile::CompileFailure::Unknown(_) => StatusCode::NOT_FOUND,
                crate::compile::CompileFailure::Source { .. } => StatusCode::BAD_GATEWAY,
                crate::compile::CompileFailure::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return Err(ApiError(code, json!({"reason": e.reason(), "message": e.to_string()})));
        }
    };
    let metrics = api.reconciler.metrics();
    match code.compiled_in {
        Some(took) => {
            metrics.compile_requests.with_label_values(&["compiled"]).inc();
            metrics.compile_seconds.observe(took.as_secs_f64());
        }
        None => metrics.compile_requests.with_label_values(&["cached"]).inc(),
    }
    let file = tokio::fs::File::open(&code.path).await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"reason": "Internal", "message": e.to_string()}),
        )
    })?;
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
        .header(axum::http::header::CONTENT_LENGTH, code.size)
        .header(STATEMENT_HEADER, code.statement)
        .header(SIGNATURE_HEADER, code.signature)
        .body(axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file)))
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"reason": "Internal", "message": e.to_string()}),
            )
        })
}
