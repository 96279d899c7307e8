//! The hub dashboard: one page and its assets, all served from the binary
//! (no request leaves for the internet), a JSON snapshot of the fleet, a
//! server-sent event stream (the fleet every second, log lines as they
//! arrive) and the buzzer buttons' commands.
//!
//! It has its own listener (loopback by default) apart from the API. The
//! one write it accepts, a plugin command, needs a custom request header
//! and a matching Origin, so another site open in the same browser cannot
//! send it.

use super::{Api, ApiError};
use crate::store::Kind;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");
const ICON: &str = include_str!("dashboard/icon.svg");

/// How often the page gets the fleet's state.
const TICK: Duration = Duration::from_secs(1);

/// Commands the page may send: the buzzer's buttons.
const PAGE_COMMANDS: &[(&str, &[&str])] = &[("buzzer", &["short", "triple", "long", "tone-on", "tone-off"])];

#[derive(Clone)]
struct Page {
    api: Api,
    /// IANA zone the page shows times in.
    timezone: String,
}

pub(crate) fn router(api: Api, timezone: String) -> Router {
    let routes = Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/favicon.svg", get(|| async { asset("image/svg+xml", ICON) }))
        .route("/favicon.ico", get(|| async { asset("image/svg+xml", ICON) }))
        .route("/api/state", get(state))
        .route("/api/events", get(events))
        .route("/api/logs", get(logs))
        .route("/api/plugins/{plugin}/commands/{command}", post(command));
    super::Audience::Dashboard
        .serve(routes, &api)
        .with_state(Page { api, timezone })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct StateQuery {
    #[serde(default)]
    history: bool,
}

/// The whole fleet for the page: nodes with their live view, plugins with
/// their status, the time zone.
fn snapshot(page: &Page, history: bool) -> Result<serde_json::Value, ApiError> {
    let api = &page.api;
    let mut nodes: Vec<serde_json::Value> = api
        .store
        .list(Kind::Node)?
        .into_iter()
        .map(|n| api.with_heartbeat(Kind::Node, n))
        .collect();
    for n in &mut nodes {
        let Some(name) = n["metadata"]["name"].as_str().map(str::to_string) else {
            continue;
        };
        n["live"] = json!(api.live.view(&name, history));
        n["connected"] = json!(api.live.connected(&name));
    }
    let plugins = api.store.list(Kind::Plugin)?;
    Ok(json!({
        "timezone": page.timezone,
        "now": harvester_api::now_ms(),
        "resourceVersion": api.store.resource_version(),
        "nodes": nodes,
        "plugins": plugins,
    }))
}

async fn state(State(page): State<Page>, Query(q): Query<StateQuery>) -> Result<Response, ApiError> {
    let mut r = axum::Json(snapshot(&page, q.history)?).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `state` every second and `log` per line, until the page goes away or
/// the hub shuts down.
async fn events(State(page): State<Page>) -> Response {
    let mut logs = page.api.live.follow_logs();
    let mut closing = page.api.live.closing();
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let event = tokio::select! {
                _ = tick.tick() => match snapshot(&page, false) {
                    Ok(s) => Event::default().event("state").data(s.to_string()),
                    Err(_) => continue,
                },
                line = logs.recv() => match line {
                    Ok(l) => Event::default().event("log").data(json!(l).to_string()),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        Event::default().event("dropped").data(n.to_string())
                    }
                    Err(_) => return,
                },
                _ = closing.changed() => return,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

#[derive(Deserialize)]
struct LogsQuery {
    node: Option<String>,
    #[serde(default = "default_tail")]
    tail: usize,
}

fn default_tail() -> usize {
    500
}

async fn logs(State(page): State<Page>, Query(q): Query<LogsQuery>) -> Response {
    let filter = crate::live::LogFilter {
        node: q.node,
        plugin: None,
    };
    axum::Json(page.api.live.logs(&filter, q.tail)).into_response()
}

fn forbidden(message: &str) -> Response {
    ApiError::forbidden(message).into_response()
}

/// A buzzer button: forwarded by the hub to the nodes running the plugin.
async fn command(
    State(page): State<Page>,
    Path((plugin, command)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if headers.get("x-harvester").is_none() {
        return forbidden("commands need the X-Harvester header");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        // The hub's own page is served over TLS unless the hub runs plain.
        let scheme = if page.api.identities.is_some() { "https" } else { "http" };
        if origin.to_str().ok() != Some(&format!("{scheme}://{host}")) {
            return forbidden("commands are accepted from this dashboard's own page only");
        }
    }
    let allowed = PAGE_COMMANDS
        .iter()
        .any(|(p, cmds)| *p == plugin && cmds.contains(&command.as_str()));
    if !allowed {
        return forbidden(&format!("the dashboard does not send {command} to {plugin}"));
    }
    let api = &page.api;
    match crate::commands::run(&api.store, &api.live, &plugin, &command, None, Vec::new()).await {
        Ok(outcome) => super::ops::command_answer(&outcome),
        Err(e) => ApiError::from(e).into_response(),
    }
}
