//! The hub's HTTP API (`/api/v1alpha1/...`), split by who calls it:
//!
//! - [`objects`]: people and their tools: apply, get, list, update,
//!   delete and watch Plugins and Nodes, plugin events, component uploads.
//! - [`nodes`]: the node protocol: register, status, heartbeat, the
//!   assignment stream, live reports, command answers, component downloads.
//! - [`ops`]: operating the fleet: logs, plugin commands, `/metrics`,
//!   Prometheus service discovery, `/healthz`.
//! - [`compiled`]: code the hub compiled for a node's target.
//! - [`enrol`]: boards enrol and renew their certificates; the admin's
//!   join tokens and node revocation.
//! - [`dashboard`]: the hub dashboard, on its own listener.
//!
//! Each audience is one router behind one layer ([`Audience::guard`]):
//! what is true of every request an audience makes is written there once:
//! who sent it and whether they may ([`access`]), and its count in
//! `harvester_hub_http_requests_total`. [`error`] is the one shape of an error answer
//! and [`ndjson`] the one way to stream.
//!
//! JSON in and out, YAML accepted for apply. Request bodies are
//! size-limited; malformed input gets 400 with the parser's line and
//! column; a stale update gets 409.

mod access;
mod compiled;
mod cross_site;
pub(crate) mod dashboard;
mod enrol;
mod error;
pub(crate) mod limits;
mod ndjson;
mod nodes;
mod objects;
mod ops;
mod rollout;

pub(crate) use error::ApiError;

use crate::identity::listener::Peer;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::reconciler::Reconciler;
use crate::store::{Kind, Store};
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
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
    /// The IANA time zone the hub shows times in (its `--timezone`).
    pub timezone: Arc<str>,
    /// The CA, join tokens, certificates, the admin credential. None: a
    /// hub on plain HTTP on loopback, where every caller is the admin.
    pub identities: Option<Arc<crate::identity::Identities>>,
    /// Requests, streams and Nodes each identity may take.
    pub limits: Arc<limits::Limits>,
    /// The hub's data folder, for backups.
    pub data: Arc<std::path::Path>,
}

/// Who a group of routes serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Audience {
    /// People and their tools: objects, events, uploads.
    People,
    /// Nodelets: the node protocol and compiled code.
    Nodes,
    /// Operating the fleet: logs, commands, metrics, service discovery.
    Operators,
    /// The dashboard page in a browser (its own listener).
    Dashboard,
    /// Boards enrolling or renewing: their credential is in the request.
    Joining,
}

impl Audience {
    pub(crate) const ALL: [Audience; 5] = [
        Audience::People,
        Audience::Nodes,
        Audience::Operators,
        Audience::Dashboard,
        Audience::Joining,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Audience::People => "people",
            Audience::Nodes => "nodes",
            Audience::Operators => "operators",
            Audience::Dashboard => "dashboard",
            Audience::Joining => "joining",
        }
    }

    /// Puts `routes` behind this audience's layer.
    pub(crate) fn serve<S: Clone + Send + Sync + 'static>(self, routes: Router<S>, api: &Api) -> Router<S> {
        routes.route_layer(middleware::from_fn_with_state((self, api.clone()), Audience::guard))
    }

    /// Every request of the audience passes here.
    async fn guard(State((audience, api)): State<(Audience, Api)>, mut request: Request, next: Next) -> Response {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let peer = request.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0.addr);
        let identified = access::identify(&api, audience, &request);
        let caller = identified.as_ref().ok().cloned();
        let mut counted = limits::key(caller.as_ref(), peer);
        // Without identities (plain HTTP on loopback, for development) every
        // caller is the same admin: nodes count each as the node its path
        // names, so a fleet of them is not one client.
        if api.identities.is_none()
            && audience == Audience::Nodes
            && let Some(node) = path
                .strip_prefix("/api/v1alpha1/nodes/")
                .and_then(|r| r.split('/').next())
        {
            counted = format!("node/{node}");
        }
        let admitted = api
            .limits
            .request(&counted)
            .and(identified)
            .and_then(|who| access::admit(audience, &who, &method, &path).map(|()| who));
        let response = match admitted {
            Ok(who) => {
                request.extensions_mut().insert(who);
                next.run(request).await
            }
            // Throttled callers are counted, not logged or audited one by
            // one: a flood must not turn into a flood of log lines.
            Err(e) if e.status() == axum::http::StatusCode::TOO_MANY_REQUESTS => e.into_response(),
            // Nor are callers without an identity: their refusals are
            // summed up in the audit trail.
            Err(e) if matches!(caller, None | Some(crate::identity::Identity::Anonymous)) => {
                tracing::debug!(?peer, path, "refused: {}", e.message());
                e.into_response()
            }
            Err(e) => {
                tracing::info!(?peer, path, "refused: {}", e.message());
                e.into_response()
            }
        };
        let status = response.status().as_u16();
        let class = match status {
            429 => "throttled",
            100..=399 => "ok",
            400..=499 => "client_error",
            _ => "server_error",
        };
        api.metrics
            .http_requests
            .with_label_values(&[audience.as_str(), class])
            .inc();
        if status != 429 {
            // Who acted: a handler that learnt it (signing in) says so.
            let who = response
                .extensions()
                .get::<crate::identity::Identity>()
                .cloned()
                .or(caller);
            audit(&api, audience, who, &method, &path, status, peer);
        }
        response
    }
}

/// The audit trail of one answered request (not a throttled one: those
/// are counted, not logged or audited one by one).
///
/// Identified callers' writes and refusals are entries: people's on any
/// route (the node protocol's too), nodes' outside the node protocol (a
/// node's own reports are not), and a backup, a read that takes the keys.
/// A caller without an identity is an entry only for a board that
/// enrolled; its refusals are counted by source address and summed up
/// once a minute, so that whoever reaches the port cannot push people's
/// entries out of the trail.
fn audit(
    api: &Api,
    audience: Audience,
    who: Option<crate::identity::Identity>,
    method: &axum::http::Method,
    path: &str,
    status: u16,
    peer: Option<std::net::SocketAddr>,
) {
    use crate::identity::Identity;
    let Some(ids) = &api.identities else { return };
    let write = !matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD);
    let (user, role) = match who {
        Some(Identity::User { name, role, .. }) => (name, role.as_str().to_string()),
        Some(Identity::Node { .. }) if audience == Audience::Nodes => return,
        Some(Identity::Node { name, .. }) => (format!("node/{name}"), String::new()),
        Some(Identity::Anonymous) | None if status >= 400 => {
            api.metrics.audit_anonymous_refusals.inc();
            ids.audit().refused_anonymous(peer.map(|p| p.ip()));
            return;
        }
        // Only a join token gets a caller without an identity in.
        Some(Identity::Anonymous) | None if audience == Audience::Joining && write => {
            ("join-token".to_string(), String::new())
        }
        Some(Identity::Anonymous) | None => return,
    };
    if !write && !path.starts_with("/api/v1alpha1/backup") {
        return;
    }
    let outcome = match status {
        100..=399 => "ok",
        401 | 403 => "refused",
        400..=499 => "rejected",
        _ => "failed",
    };
    api.metrics.audit_events.with_label_values(&[outcome]).inc();
    let entry = harvester_api::identity::AuditEntry {
        time: harvester_api::now_ms(),
        user,
        role,
        action: format!("{method} {path}"),
        status,
        outcome: outcome.to_string(),
        source: peer.map(|p| p.to_string()).unwrap_or_default(),
    };
    if outcome == "refused" {
        ids.audit().refused(&entry);
    } else {
        ids.audit().record(&entry);
    }
}

/// The API on one listener: every audience's routes.
pub(crate) fn router(api: Api) -> Router {
    // Each audience's guard identifies the caller first (401 before 403),
    // then the request is checked for what another site's page could send.
    let checked = |routes| cross_site::checked(routes, &api);
    Router::new()
        .merge(Audience::People.serve(
            checked(objects::routes().merge(rollout::routes()).merge(enrol::people())),
            &api,
        ))
        .merge(Audience::Nodes.serve(checked(nodes::routes().merge(compiled::routes())), &api))
        .merge(Audience::Operators.serve(checked(ops::routes()), &api))
        .merge(Audience::Joining.serve(checked(enrol::joining()), &api))
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

    /// Refuses a Node that would be one more than --max-nodes (an existing
    /// one may always be written again).
    pub(crate) fn node_quota(&self, name: &str) -> Result<(), ApiError> {
        if self.store.get(Kind::Node, name)?.is_some() {
            return Ok(());
        }
        let max = self.limits.config.max_nodes;
        if self.store.list(Kind::Node)?.len() >= max {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "QuotaExceeded",
                format!("node {name}: the hub already keeps {max} nodes (--max-nodes); delete one first"),
            ));
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Method, StatusCode};
    use std::time::Duration;
    use tower::ServiceExt;

    fn api(dir: &std::path::Path) -> Api {
        let store = Arc::new(Store::open(dir).unwrap());
        let metrics = Arc::new(Metrics::new());
        Api {
            reconciler: Arc::new(
                Reconciler::new(
                    store.clone(),
                    metrics.clone(),
                    Duration::from_secs(15),
                    Duration::from_secs(60),
                )
                .unwrap(),
            ),
            store,
            registry: Arc::new(harvester_registry::Registry::new(Default::default())),
            live: Arc::new(Live::new(1 << 20)),
            metrics,
            compiler: None,
            identities: None,
            limits: Arc::new(limits::Limits::new(limits::ApiLimits::default())),
            timezone: "UTC".into(),
            data: dir.into(),
        }
    }

    async fn call(app: &Router, method: Method, uri: &str) -> StatusCode {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "localhost:3000")
            .header(harvester_api::cross_site::MARKER, "1")
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn every_request_passes_its_audiences_layer() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path());
        let metrics = api.metrics.clone();
        let app = router(api.clone());
        assert_eq!(call(&app, Method::GET, "/api/v1alpha1/plugins").await, StatusCode::OK);
        assert_eq!(
            call(&app, Method::GET, "/api/v1alpha1/plugins/nothing").await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&app, Method::POST, "/api/v1alpha1/nodes/ghost/heartbeat").await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&app, Method::GET, "/api/v1alpha1/compiled/sha256:00?target=x&engine=y").await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(call(&app, Method::GET, "/healthz").await, StatusCode::OK);
        let page = dashboard::router(api, "UTC".into(), vec!["localhost".into()]);
        assert_eq!(call(&page, Method::GET, "/api/state").await, StatusCode::OK);
        let count = |a: Audience, o: &str| metrics.http_requests.with_label_values(&[a.as_str(), o]).get();
        assert_eq!(
            (count(Audience::People, "ok"), count(Audience::People, "client_error")),
            (1, 1)
        );
        assert_eq!(count(Audience::Nodes, "client_error"), 2);
        assert_eq!(count(Audience::Operators, "ok"), 1);
        assert_eq!(count(Audience::Dashboard, "ok"), 1);
        assert!(
            metrics
                .render()
                .contains("harvester_hub_http_requests_total{audience=\"nodes\",outcome=\"client_error\"} 2")
        );
    }
}
