//! The hub dashboard: one page and its assets, all served from the binary
//! (no request leaves for the internet), a JSON snapshot of the fleet, a
//! server-sent event stream (the fleet every second, log lines as they
//! arrive) and the buzzer buttons' commands.
//!
//! It has its own listener (loopback by default) apart from the API, over
//! TLS. People sign in with their token (`POST /api/session`) and get an
//! HttpOnly, Secure, SameSite=Strict session cookie; the page needs the
//! viewer role, the buzzer buttons the operator role. Requests whose Host
//! is not one of the hub's names are refused (DNS rebinding), and every
//! write (signing in, a plugin command) needs a custom request header and
//! a matching Origin, so another site open in the same browser cannot send
//! one.

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
const SIGN_IN: &str = include_str!("dashboard/signin.html");
const SIGN_IN_SCRIPT: &str = include_str!("dashboard/signin.js");
/// The session cookie's name.
pub(crate) const COOKIE: &str = "harvester_session";
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

/// `hosts`: the names and addresses the hub is reached by; a request for
/// any other Host is refused.
pub(crate) fn router(api: Api, timezone: String, hosts: Vec<String>) -> Router {
    let routes = Router::new()
        .route("/", get(index))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/assets/signin.js",
            get(|| async { asset("text/javascript; charset=utf-8", SIGN_IN_SCRIPT) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/favicon.svg", get(|| async { asset("image/svg+xml", ICON) }))
        .route("/favicon.ico", get(|| async { asset("image/svg+xml", ICON) }))
        .route("/api/session", post(sign_in).delete(sign_out))
        .route("/api/state", get(state))
        .route("/api/events", get(events))
        .route("/api/logs", get(logs))
        .route("/api/plugins/{plugin}/commands/{command}", post(command));
    let hosts = std::sync::Arc::new(hosts);
    super::Audience::Dashboard
        .serve(routes, &api)
        .layer(axum::middleware::from_fn_with_state(hosts, known_host))
        .with_state(Page { api, timezone })
}

/// The host part of a Host header (`name`, `name:port`, `[v6]:port`).
fn host_of(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    value.rsplit_once(':').map_or(value, |(h, _)| h)
}

/// Refuses requests for a Host that is not one of the hub's names: a page
/// of another site whose name was made to point here (DNS rebinding) gets
/// nothing.
async fn known_host(
    State(hosts): State<std::sync::Arc<Vec<String>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(host_of)
        .unwrap_or("");
    if hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return next.run(request).await;
    }
    ApiError::new(
        axum::http::StatusCode::MISDIRECTED_REQUEST,
        "UnknownHost",
        format!("{host:?} is not a name of this hub (add it with --tls-san)"),
    )
    .into_response()
}

/// Where the page carries the state it is served with.
const INITIAL_STATE: &str = "<!-- initial state -->";

/// How many recent log lines the page is served with.
const PAGE_LOG_LINES: usize = 500;

/// The page, or the sign-in page for who has no session.
async fn index(State(page): State<Page>, super::access::Caller(caller): super::access::Caller) -> Response {
    match caller {
        crate::identity::Identity::User { name, role, .. } => {
            match page_with_state(&page, json!({"name": name, "role": role})) {
                Ok(r) => r,
                Err(e) => e.into_response(),
            }
        }
        _ => asset("text/html; charset=utf-8", SIGN_IN),
    }
}

/// The page with the fleet's state (history included) and its recent log
/// lines in it, so that its first paint shows the fleet rather than
/// placeholders, without waiting for a request.
fn page_with_state(page: &Page, user: serde_json::Value) -> Result<Response, ApiError> {
    let mut state = snapshot(page, true)?;
    state["user"] = user;
    let logs = page.api.live.logs(
        &crate::live::LogFilter {
            node: None,
            plugin: None,
        },
        PAGE_LOG_LINES,
    );
    // As JSON inside a script element, nothing may close the element:
    // every `<` is written as an escape.
    let data = json!({"state": state, "logs": logs})
        .to_string()
        .replace('<', "\\u003c");
    let html = INDEX.replacen(
        INITIAL_STATE,
        &format!("<script type=\"application/json\" id=\"initial\">{data}</script>"),
        1,
    );
    let mut r = asset("text/html; charset=utf-8", html);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(r)
}

/// A write from the page: the custom header, and the page's own Origin.
fn from_own_page(page: &Page, headers: &HeaderMap) -> Result<(), &'static str> {
    if headers.get("x-harvester").is_none() {
        return Err("writes need the X-Harvester header");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        // The hub's own page is served over TLS unless the hub runs plain.
        let scheme = if page.api.identities.is_some() { "https" } else { "http" };
        if origin.to_str().ok() != Some(&format!("{scheme}://{host}")) {
            return Err("writes are accepted from this dashboard's own page only");
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

/// Signs in with a user's token: a session cookie for 12 hours.
async fn sign_in(State(page): State<Page>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(why) = from_own_page(&page, &headers) {
        return forbidden(why);
    }
    let Some(ids) = &page.api.identities else {
        return ApiError::bad_request("this hub runs without identities: there is nothing to sign in to")
            .into_response();
    };
    let Ok(req) = serde_json::from_slice::<SignIn>(&body) else {
        return ApiError::bad_request("expected {\"token\": \"...\"}").into_response();
    };
    let token = req.token.trim();
    // A token as `user create` prints it carries the CA's hash in front.
    let credential = token.rsplit_once("::").map_or(token, |(_, c)| c);
    match ids.sign_in(credential) {
        Ok((id, crate::identity::Identity::User { name, role, uid })) => {
            let cookie = format!(
                "{COOKIE}={id}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
                crate::identity::SESSION_LIFETIME.as_secs()
            );
            let mut response = (
                [(header::SET_COOKIE, cookie)],
                axum::Json(json!({"user": &name, "role": role})),
            )
                .into_response();
            // The audit trail records the sign-in as the person's.
            response
                .extensions_mut()
                .insert(crate::identity::Identity::User { name, role, uid });
            response
        }
        Ok(_) | Err(_) => {
            ApiError::unauthorized("unknown token: sign in with a user's token (harvester user create)").into_response()
        }
    }
}

async fn sign_out(State(page): State<Page>, headers: HeaderMap) -> Response {
    if let Err(why) = from_own_page(&page, &headers) {
        return forbidden(why);
    }
    if let (Some(ids), Some(id)) = (&page.api.identities, session_cookie(&headers)) {
        ids.sign_out(id);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0"),
        )],
        axum::http::StatusCode::NO_CONTENT,
    )
        .into_response()
}

/// The session id the request's cookie carries.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

fn asset(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
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
        body.into(),
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

async fn state(
    State(page): State<Page>,
    super::access::Caller(caller): super::access::Caller,
    Query(q): Query<StateQuery>,
) -> Result<Response, ApiError> {
    let mut snapshot = snapshot(&page, q.history)?;
    if let crate::identity::Identity::User { name, role, .. } = caller {
        snapshot["user"] = json!({"name": name, "role": role});
    }
    let mut r = axum::Json(snapshot).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `state` every second and `log` per line, until the page goes away or
/// the hub shuts down.
async fn events(
    State(page): State<Page>,
    super::access::Caller(caller): super::access::Caller,
    headers: HeaderMap,
) -> Response {
    let slot = match page.api.limits.stream(&caller) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let mut logs = page.api.live.follow_logs();
    let mut closing = page.api.live.closing();
    // A deleted user's page stops getting anything at once.
    let gone = page.api.until_gone(&caller);
    // So does a page whose session ends: signed out (in another tab too),
    // or expired (checked at every tick).
    let session = page
        .api
        .identities
        .clone()
        .zip(session_cookie(&headers).map(str::to_string));
    let signed_out = match &session {
        Some((ids, id)) => ids.session_ended(id),
        None => tokio_util::sync::CancellationToken::new(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        let _slot = slot;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let event = tokio::select! {
                _ = tick.tick() => match snapshot(&page, false) {
                    _ if session.as_ref().is_some_and(|(ids, id)| ids.session(id).is_none()) => return,
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
                _ = gone.cancelled() => return,
                _ = signed_out.cancelled() => return,
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
    if let Err(why) = from_own_page(&page, &headers) {
        return forbidden(why);
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
