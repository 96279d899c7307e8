//! The node's local HTTP endpoints. Read-only on `--listen` (loopback by
//! default): `GET /status` (plugins, hardware, LED frame), `GET /metrics`
//! (Prometheus), `GET /healthz`. Plugin commands on their own listener,
//! loopback only (`--command-listen`): `POST /plugins/{name}/commands/{command}`.

use crate::metrics::Metrics;
use crate::runtime::{CommandError, Runtime};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone)]
struct App {
    node: String,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    sim_buzzer: Option<Arc<crate::hardware::sim::SimBuzzer>>,
}

#[derive(Serialize)]
struct NodeStatus {
    node: String,
    hardware: crate::hardware::Inventory,
    leds: Vec<String>,
    plugins: Vec<crate::events::PluginStatus>,
    compiles: u64,
    cache_hits: u64,
    /// What the simulated buzzer was asked to play, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    simulated_buzzer: Option<Vec<crate::hardware::sim::BuzzerEvent>>,
}

/// `sim_buzzer`: a simulated buzzer whose record `/status` shows.
pub(crate) fn router(
    node: String,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    sim_buzzer: Option<Arc<crate::hardware::sim::SimBuzzer>>,
) -> Router {
    in_node(
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/status", get(status))
            .route("/metrics", get(exposition))
            .with_state(App {
                node,
                runtime,
                metrics,
                sim_buzzer,
            }),
    )
}

/// Handles each request as part of the node serving it: the server runs
/// each connection in a task of its own, which would not know the node.
fn in_node(router: Router) -> Router {
    let node = crate::log_tap::LogContext::current();
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| node.bind(next.run(req)),
    ))
}

/// The plugin command endpoint, for the loopback-only listener. A page of
/// any site could make a browser on this machine post to it, so what such
/// a page could send is refused ([`harvester_api::cross_site`]).
pub(crate) fn command_router(runtime: Arc<Runtime>) -> Router {
    in_node(
        Router::new()
            .route("/plugins/{name}/commands/{command}", post(command))
            .with_state(runtime)
            .layer(axum::middleware::from_fn(not_from_another_site)),
    )
}

async fn not_from_another_site(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let seen = harvester_api::cross_site::Request {
        method: request.method().as_str(),
        host: text(header::HOST),
        origin: text(header::ORIGIN),
        content_type: text(header::CONTENT_TYPE),
        authorization: headers.contains_key(header::AUTHORIZATION),
        marker: headers.contains_key(harvester_api::cross_site::MARKER),
    };
    let loopback = harvester_api::cross_site::loopback_names();
    match harvester_api::cross_site::refusal(&seen, "http", Some(&loopback)) {
        Some(why) => (StatusCode::FORBIDDEN, why + "\n").into_response(),
        None => next.run(request).await,
    }
}

async fn status(State(app): State<App>) -> Json<NodeStatus> {
    Json(NodeStatus {
        node: app.node.clone(),
        hardware: app.runtime.hardware().inventory(),
        leds: app.runtime.led_frame().iter().map(|c| c.hex()).collect(),
        plugins: app.runtime.status(),
        compiles: app.runtime.cache().compiles(),
        cache_hits: app.runtime.cache().hits(),
        simulated_buzzer: app.sim_buzzer.as_ref().map(|b| b.events()),
    })
}

async fn exposition(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.render_with(&app.runtime.status()),
    )
        .into_response()
}

async fn command(
    State(rt): State<Arc<Runtime>>,
    Path((name, command)): Path<(String, String)>,
    Query(args): Query<BTreeMap<String, String>>,
) -> Response {
    let args: Vec<(String, String)> = args.into_iter().collect();
    let result = crate::log_tap::spawn_blocking(move || rt.command(&name, &command, args)).await;
    match result {
        Ok(Ok(answer)) => (StatusCode::OK, answer + "\n").into_response(),
        Ok(Err(e @ CommandError::NoSuchPlugin(_))) => (StatusCode::NOT_FOUND, e.to_string() + "\n").into_response(),
        Ok(Err(e @ CommandError::Plugin(_))) => {
            (StatusCode::UNPROCESSABLE_ENTITY, e.to_string() + "\n").into_response()
        }
        Ok(Err(e @ CommandError::Busy(_))) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, "1")],
            e.to_string() + "\n",
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string() + "\n").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
