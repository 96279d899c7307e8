//! Plugins and Nodes for people and their tools: apply, get, list, update,
//! delete, watch; a plugin's recent events; uploads of local components.

use super::access::Caller;
use super::{Api, ApiError, ndjson};
use crate::apply;
use crate::metrics::StreamGuard;
use crate::store::{Kind, StoreError, Write};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use harvester_api::Digest;
use harvester_api::resources::{DocumentError, Node, Object, Plugin, parse_documents};
use harvester_api::selector::Selector;
use harvester_api::validation::deserialize_at;
use serde::Deserialize;
use serde_json::json;

/// Components are not small.
const BLOB_LIMIT: usize = 64 << 20;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1alpha1/apply", post(apply_documents))
        .route("/api/v1alpha1/watch", get(watch))
        .route(
            "/api/v1alpha1/blobs/{digest}",
            put(put_blob).layer(DefaultBodyLimit::max(BLOB_LIMIT)),
        )
        .route("/api/v1alpha1/{kind}", get(list))
        .route("/api/v1alpha1/{kind}/{name}", get(get_one).put(update).delete(delete))
        .route("/api/v1alpha1/plugins/{name}/events", get(plugin_events))
}

fn kind_of(plural: &str) -> Result<Kind, ApiError> {
    match plural {
        "plugins" => Ok(Kind::Plugin),
        "nodes" => Ok(Kind::Node),
        other => Err(ApiError::not_found(format!(
            "no resource type {other:?}; use plugins or nodes"
        ))),
    }
}

/// A multi-document apply: every document is parsed and validated, every
/// image resolved and every exclusive grant checked before anything is
/// written; then each is applied in order.
#[derive(Deserialize)]
struct ApplyQuery {
    /// `All`: validate, resolve and admit everything, store nothing (as
    /// Kubernetes's dryRun=All).
    #[serde(rename = "dryRun")]
    dry_run: Option<String>,
}

async fn apply_documents(
    State(api): State<Api>,
    Caller(caller): Caller,
    Query(q): Query<ApplyQuery>,
    body: String,
) -> Result<Response, ApiError> {
    let dry_run = match q.dry_run.as_deref() {
        None => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun={other:?}: the only dry run is All"
            )));
        }
    };
    let mut objects = match parse_documents(&body) {
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
        return Err(ApiError::bad_request("the manifest holds no documents"));
    }
    for (i, object) in objects.iter().enumerate() {
        if let Object::Node(n) = object {
            api.node_quota(&n.metadata.name)
                .and_then(|()| role_labels_by_admin(&api, &caller, n))
                .map_err(|e| e.at(&format!("document {}", i + 1)))?;
        }
    }
    // Resolve every image first: one that cannot be resolved applies nothing.
    for (i, object) in objects.iter_mut().enumerate() {
        if let Object::Plugin(p) = object
            && let Err(e) = apply::resolve(&api.store, &api.registry, p).await
        {
            return Err(document_error(&api, &format!("document {}", i + 1), e, &[]));
        }
    }
    if let Some((i, e)) = apply::refused_by_exclusive_grants(&api.store, &objects)? {
        return Err(document_error(&api, &format!("document {}", i + 1), e, &[]));
    }
    let mut results = Vec::new();
    for (i, object) in objects.into_iter().enumerate() {
        let place = format!("document {} ({} {})", i + 1, object.kind(), object.name());
        if dry_run {
            match apply::dry_run(&api.store, &api.registry, object, apply::LabelAuthority::of(&caller)).await {
                Ok(r) => results.push(r),
                Err(e) => return Err(document_error(&api, &place, e, &results)),
            }
            continue;
        }
        note_change(&api, &caller, &object);
        match apply::apply(&api.store, &api.registry, object, apply::LabelAuthority::of(&caller)).await {
            Ok(r) => {
                count_apply(&api, Ok(&r));
                results.push(r);
            }
            Err(e) => return Err(document_error(&api, &place, e, &results)),
        }
    }
    Ok(Json(json!({"results": results, "dryRun": dry_run})).into_response())
}

/// Refuses early (before any document is written) what the Node's write
/// would refuse: role labels changed by someone not an admin. The write
/// checks again against the Node as it is then.
fn role_labels_by_admin(api: &Api, caller: &crate::identity::Identity, node: &Node) -> Result<(), ApiError> {
    let current = api.store.get(Kind::Node, &node.metadata.name)?;
    Ok(apply::role_labels_allowed(
        current.as_ref(),
        node,
        apply::LabelAuthority::of(caller),
    )?)
}

/// Who is about to change a Plugin, for the revision the change makes.
fn note_change(api: &Api, caller: &crate::identity::Identity, object: &Object) {
    if let Object::Plugin(p) = object {
        let by = match caller {
            crate::identity::Identity::User { name, .. } => name.as_str(),
            _ => "",
        };
        api.reconciler.note_change(&p.metadata.name, by, None);
    }
}

/// The answer when one document of an apply fails: which one, why, and what
/// was applied before it.
fn document_error(api: &Api, place: &str, e: StoreError, applied: &[apply::Applied]) -> ApiError {
    count_apply(api, Err(&e));
    ApiError::from(e).at(place).with("applied", applied)
}

fn count_apply(api: &Api, result: Result<&apply::Applied, &StoreError>) {
    let outcome = match result {
        Ok(a) => a.action.as_str(),
        Err(StoreError::Invalid(_)) => "invalid",
        Err(StoreError::Conflict { .. }) => "conflict",
        Err(_) => "error",
    };
    api.metrics.apply_requests.with_label_values(&[outcome]).inc();
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(rename = "labelSelector")]
    label_selector: Option<String>,
}

async fn list(
    State(api): State<Api>,
    Path(kind): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&kind)?;
    let selector = Selector::parse(q.label_selector.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("labelSelector: {e}")))?;
    let rv = api.store.resource_version();
    let items: Vec<serde_json::Value> = api
        .store
        .list(kind)?
        .into_iter()
        .filter(|o| {
            let labels = serde_json::from_value(o["metadata"]["labels"].clone()).unwrap_or_default();
            selector.matches(&labels)
        })
        .map(|o| api.with_heartbeat(kind, o))
        .collect();
    Ok(Json(json!({"resourceVersion": rv, "items": items})).into_response())
}

async fn get_one(State(api): State<Api>, Path((kind, name)): Path<(String, String)>) -> Result<Response, ApiError> {
    let kind = kind_of(&kind)?;
    match api.store.get(kind, &name)? {
        Some(o) => Ok(Json(api.with_heartbeat(kind, o)).into_response()),
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
    Caller(caller): Caller,
    Path((kind, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = kind_of(&kind)?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    if value["metadata"]["name"].as_str() != Some(name.as_str()) {
        return Err(ApiError::bad_request(format!(
            "metadata.name must be {name:?}, as in the URL"
        )));
    }
    if value["metadata"]["resourceVersion"].as_u64().unwrap_or(0) == 0 {
        return Err(ApiError::bad_request(
            "metadata.resourceVersion is required for an update; use apply to create or overwrite",
        ));
    }
    // Refused as apply refuses a document: one error per field, each with its path.
    let refuse = |errors: Vec<harvester_api::FieldError>| {
        let errors: Vec<DocumentError> = errors
            .into_iter()
            .map(|e| DocumentError {
                document: 0,
                kind: Some(kind.as_str().to_string()),
                name: Some(name.clone()),
                message: e.to_string(),
            })
            .collect();
        ApiError::invalid("the object is not valid").with("errors", errors)
    };
    let object = match kind {
        Kind::Plugin => {
            let mut p: Plugin = deserialize_at(value, "").map_err(|e| refuse(vec![e]))?;
            p.status = None;
            p.validate().map_err(|e| refuse(e.0))?;
            Object::Plugin(p)
        }
        Kind::Node => {
            let n: Node = deserialize_at(value, "").map_err(|e| refuse(vec![e]))?;
            n.validate().map_err(|e| refuse(e.0))?;
            role_labels_by_admin(&api, &caller, &n)?;
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
    note_change(&api, &caller, &object);
    let result = apply::apply(&api.store, &api.registry, object, apply::LabelAuthority::of(&caller)).await;
    count_apply(&api, result.as_ref());
    Ok(Json(json!(result?)).into_response())
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(rename = "resourceVersion")]
    resource_version: Option<u64>,
}

async fn delete(
    State(api): State<Api>,
    Caller(caller): Caller,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&kind)?;
    if kind == Kind::Node {
        super::access::may_end_node_access(&caller, &name)?;
    }
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
    if kind == Kind::Plugin {
        api.reconciler.forget(&name)?;
    }
    if kind == Kind::Node {
        api.live.forget(&name);
        // A deleted node's certificates die with it.
        if let Some(ids) = &api.identities {
            ids.revoke(&name)
                .map_err(|e| ApiError::internal("IdentityStore", e.to_string()))?;
        }
    }
    Ok(Json(json!({"kind": kind.as_str(), "name": name, "action": "deleted"})).into_response())
}

#[derive(Deserialize)]
struct WatchQuery {
    #[serde(rename = "resourceVersion", default)]
    resource_version: u64,
}

/// Every change after `resourceVersion`, then live ones, one JSON per line.
async fn watch(
    State(api): State<Api>,
    Caller(caller): Caller,
    Query(q): Query<WatchQuery>,
) -> Result<Response, ApiError> {
    let slot = api.limits.stream(&caller)?;
    // Subscribe before reading the backlog so nothing falls in between.
    let mut live = api.store.subscribe();
    let backlog = api.store.events_since(q.resource_version)?;
    let mut last = backlog.last().map_or(q.resource_version, |e| e.resource_version);
    let metrics = api.metrics.clone();
    Ok(ndjson::response(
        api.live.closing(),
        api.until_gone(&caller),
        slot,
        move |tx| async move {
            let _open = StreamGuard::new(&metrics, "watch");
            for ev in backlog {
                if tx.send(ndjson::line(&ev)).await.is_err() {
                    return;
                }
            }
            loop {
                let next = tokio::time::timeout(ndjson::KEEPALIVE, live.recv()).await;
                let line = match next {
                    Err(_) => ndjson::keepalive(),
                    Ok(Ok(ev)) if ev.resource_version <= last => continue,
                    Ok(Ok(ev)) => {
                        last = ev.resource_version;
                        ndjson::line(&ev)
                    }
                    // Fell behind the live buffer: end the stream; the client
                    // resumes from its last resourceVersion and loses nothing.
                    Ok(Err(_)) => return,
                };
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        },
    ))
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

/// `harvester apply` uploads a local component before the Plugin naming it.
async fn put_blob(State(api): State<Api>, Path(digest): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let digest: Digest = digest.parse().map_err(ApiError::bad_request)?;
    api.store.put_blob(&digest, &body).await?;
    Ok((StatusCode::CREATED, Json(json!({"digest": digest}))).into_response())
}
