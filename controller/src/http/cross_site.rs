//! The hub's API refuses what a web page of another site could send
//! ([`harvester_api::cross_site`]): a write without a credential header, a
//! JSON/YAML body or the marker header; a foreign `Origin`; and, on a hub
//! without identities (plain HTTP on loopback, where everyone is the
//! admin), a `Host` other than a loopback name.

use super::{Api, ApiError};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use harvester_api::cross_site;

/// `routes`, each request checked first.
pub(super) fn checked<S: Clone + Send + Sync + 'static>(routes: Router<S>, api: &Api) -> Router<S> {
    routes.route_layer(middleware::from_fn_with_state(api.clone(), check))
}

async fn check(State(api): State<Api>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let seen = cross_site::Request {
        method: request.method().as_str(),
        host: text(header::HOST).or_else(|| request.uri().authority().map(|a| a.as_str())),
        origin: text(header::ORIGIN),
        content_type: text(header::CONTENT_TYPE),
        authorization: headers.contains_key(header::AUTHORIZATION),
        marker: headers.contains_key(cross_site::MARKER),
    };
    let loopback = cross_site::loopback_names();
    let (scheme, hosts) = match api.identities {
        Some(_) => ("https", None),
        None => ("http", Some(loopback.as_slice())),
    };
    if let Some(why) = cross_site::refusal(&seen, scheme, hosts) {
        tracing::info!(path = request.uri().path(), "refused: {why}");
        return ApiError::forbidden(why).into_response();
    }
    next.run(request).await
}
