//! Who may call what. Every request is identified once, in its audience's
//! layer ([`super::Audience::guard`]): a bearer token, else the client
//! certificate of its connection. People's and operators' routes need the
//! admin; the node protocol needs a node certificate, and each node acts
//! only as itself ([`ThisNode`]) and fetches only what it was assigned
//! ([`may_fetch`]), as Kubernetes' Node authorizer has it.

use super::{Api, ApiError, Audience};
use crate::identity::Identity;
use crate::identity::listener::Peer;
use axum::extract::{ConnectInfo, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{Request, header};
use harvester_api::Digest;
use std::collections::HashMap;

/// Identifies the sender of `request` (the hub started without identities
/// treats everyone as the admin: plain HTTP on loopback, asked for).
pub(super) fn identify<B>(api: &Api, audience: Audience, request: &Request<B>) -> Result<Identity, ApiError> {
    let Some(ids) = &api.identities else {
        return Ok(Identity::Admin);
    };
    let cert = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .and_then(|c| c.0.cert.as_ref());
    // On the enrolment routes the bearer is a join token, read there.
    let bearer = match audience {
        Audience::Joining => None,
        _ => request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim()),
    };
    ids.identify(bearer, cert)
        .map_err(|r| ApiError::unauthorized(r.to_string()))
}

/// Whether `identity` may use `audience`'s route at `path` at all.
pub(super) fn admit(audience: Audience, identity: &Identity, path: &str) -> Result<(), ApiError> {
    let node_only = |name: &str| {
        ApiError::forbidden(format!(
            "node {name:?} may use only the node protocol; people and tools use the admin credential"
        ))
    };
    match (audience, identity) {
        (Audience::Joining | Audience::Dashboard, _) => Ok(()),
        (_, Identity::Admin) => Ok(()),
        (Audience::Operators, _) if path == "/healthz" => Ok(()),
        (_, Identity::Anonymous) => Err(ApiError::unauthorized(crate::identity::Refusal::Anonymous.to_string())),
        (
            Audience::Nodes,
            Identity::Node {
                name, expired: true, ..
            },
        ) => Err(ApiError::unauthorized(
            crate::identity::Refusal::Expired(name.clone()).to_string(),
        )),
        (Audience::Nodes, Identity::Node { .. }) => Ok(()),
        (Audience::People | Audience::Operators, Identity::Node { name, .. }) => Err(node_only(name)),
    }
}

fn identity_of(parts: &Parts) -> Result<&Identity, ApiError> {
    parts
        .extensions
        .get::<Identity>()
        .ok_or_else(|| ApiError::unauthorized(crate::identity::Refusal::Anonymous.to_string()))
}

/// The `{name}` of a node route, when the caller may act as that node:
/// the node itself, or the admin.
pub(crate) struct ThisNode(pub String);

impl FromRequestParts<Api> for ThisNode {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Api) -> Result<ThisNode, ApiError> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let name = params
            .get("name")
            .cloned()
            .ok_or_else(|| ApiError::bad_request("no node name in the path"))?;
        match identity_of(parts)? {
            Identity::Admin => Ok(ThisNode(name)),
            Identity::Node { name: me, .. } if *me == name => Ok(ThisNode(name)),
            Identity::Node { name: me, .. } => Err(ApiError::forbidden(format!(
                "node {me:?} may act only as itself, not as {name:?}"
            ))),
            Identity::Anonymous => Err(ApiError::unauthorized(crate::identity::Refusal::Anonymous.to_string())),
        }
    }
}

/// The caller, for handlers that decide by it.
pub(crate) struct Caller(pub Identity);

impl FromRequestParts<Api> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Api) -> Result<Caller, ApiError> {
        identity_of(parts).cloned().map(Caller)
    }
}

/// A node may download a component or compiled code only of a plugin it
/// is assigned now.
pub(crate) fn may_fetch(api: &Api, caller: &Identity, digest: &Digest) -> Result<(), ApiError> {
    match caller {
        Identity::Admin => Ok(()),
        Identity::Node { name, .. } if api.reconciler.assigned(name, digest) => Ok(()),
        Identity::Node { name, .. } => Err(ApiError::forbidden(format!(
            "node {name:?} is not assigned a plugin with digest {digest}"
        ))),
        Identity::Anonymous => Err(ApiError::unauthorized(crate::identity::Refusal::Anonymous.to_string())),
    }
}
