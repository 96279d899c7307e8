//! The hub's HTTP API (`/api/v1alpha1/...`), split by who calls it:
//!
//! - [`objects`]: people and their tools: apply, get, list, update,
//!   delete and watch Plugins and Nodes, plugin events, component uploads.
//! - [`nodes`]: the node protocol: register, status, heartbeat, the
//!   assignment stream, live reports, command answers, component downloads.
//! - [`ops`]: operating the fleet: logs, plugin commands, `/metrics`,
//!   Prometheus service discovery, `/healthz`.
//! - [`compiled`]: code the hub compiled for a node's target.
//! - [`dashboard`]: the hub dashboard, on its own listener.
//!
//! Each audience is one router, so what guards an audience (who may call
//! it) is one layer on that router, in [`router`]. [`error`] is the one
//! shape of an error answer and [`ndjson`] the one way to stream.
//!
//! JSON in and out, YAML accepted for apply. Request bodies are
//! size-limited; malformed input gets 400 with the parser's line and
//! column; a stale update gets 409.

mod compiled;
pub(crate) mod dashboard;
mod error;
mod ndjson;
mod nodes;
mod objects;
mod ops;

pub(crate) use error::ApiError;

use crate::live::Live;
use crate::metrics::Metrics;
use crate::reconciler::Reconciler;
use crate::store::{Kind, Store};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use std::sync::Arc;

/// Manifests, statuses and reports are small; components have their own limit.
const REQUEST_LIMIT: usize = 1 << 20;

/// What every handler may use, handed in by the composition root.
#[derive(Clone)]
pub(crate) struct Api {
    pub store: Arc<Store>,
    pub reconciler: Arc<Reconciler>,
    /// Resolves OCI tags to digests at apply, fetches artifacts to compile.
    pub registry: Arc<harvester_registry::Registry>,
    /// Logs, readings and commands in flight (memory only).
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
    /// Compiles components for nodes (none: nodes compile themselves).
    pub compiler: Option<Arc<crate::compile::Compiler>>,
}

/// The API on one listener: every audience's routes.
pub(crate) fn router(api: Api) -> Router {
    Router::new()
        .merge(objects::routes())
        .merge(nodes::routes())
        .merge(ops::routes())
        .merge(compiled::routes())
        .layer(DefaultBodyLimit::max(REQUEST_LIMIT))
        .with_state(api)
}

impl Api {
    /// A stored object as clients see it: a Node carries the time of its
    /// last heartbeat, which lives in memory, not in the store.
    pub(crate) fn with_heartbeat(&self, kind: Kind, mut obj: serde_json::Value) -> serde_json::Value {
        if kind == Kind::Node
            && let Some(name) = obj["metadata"]["name"].as_str()
            && let Some(at) = self.reconciler.last_heartbeat_ms(name)
        {
            obj["status"]["lastHeartbeat"] = serde_json::json!(at);
        }
        obj
    }

    /// 404 naming the object unless it exists.
    pub(crate) fn must_exist(&self, kind: Kind, name: &str) -> Result<(), ApiError> {
        if self.store.get(kind, name)?.is_none() {
            return Err(crate::store::StoreError::NotFound {
                kind: kind.as_str(),
                name: name.to_string(),
            }
            .into());
        }
        Ok(())
    }
}

impl From<crate::commands::CommandError> for ApiError {
    fn from(e: crate::commands::CommandError) -> ApiError {
        match e {
            crate::commands::CommandError::Store(e) => e.into(),
            crate::commands::CommandError::NotRunning(m) => ApiError::conflict("NotRunning", m),
        }
    }
}
