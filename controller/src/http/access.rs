//! Who may call what. Every request is identified once, in its audience's
//! layer ([`super::Audience::guard`]): a bearer token, else the client
//! certificate of its connection. People's and operators' routes need a
//! user whose role allows the request ([`required_role`]); the node
//! protocol needs a node certificate, and each node acts only as itself
//! ([`ThisNode`]) and fetches only what it was assigned ([`may_fetch`]), as
//! Kubernetes' Node authorizer has it.

use super::{Api, ApiError, Audience};
use crate::identity::Identity;
use crate::identity::listener::Peer;
use axum::extract::{ConnectInfo, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{Method, Request, header};
use harvester_api::Digest;
use harvester_api::identity::Role;
use std::collections::HashMap;

/// Identifies the sender of `request` (the hub started without identities
/// treats everyone as an admin: plain HTTP on loopback, asked for).
pub(super) fn identify<B>(api: &Api, audience: Audience, request: &Request<B>) -> Result<Identity, ApiError> {
    let Some(ids) = &api.identities else {
        return Ok(Identity::User {
            name: "anonymous".into(),
            role: Role::Admin,
            uid: String::new(),
        });
    };
    let cert = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .and_then(|c| c.0.cert.as_ref());
    // On the enrolment route the bearer is a join token, read there (a
    // certificate request may come from a person, who is who they are);
    // the dashboard has its own sessions.
    if audience == Audience::Dashboard {
        return Ok(super::dashboard::session_cookie(request.headers())
            .and_then(|id| ids.session(id))
            .unwrap_or(Identity::Anonymous));
    }
    let bearer = match audience {
        Audience::Joining if request.uri().path() == "/api/v1alpha1/enrol" => None,
        _ => bearer(request.headers()),
    };
    ids.identify(bearer, cert)
        .map_err(|r| ApiError::unauthorized(r.to_string()))
}

/// The token of an `Authorization: Bearer ...` header (a bare token too,
/// as before).
pub(super) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    Some(v.strip_prefix("Bearer ").unwrap_or(v).trim())
}

/// The role a person needs for `method` on `path` of `audience`; None
/// when the route is not for people at all (the node protocol).
pub(super) fn required_role(audience: Audience, method: &Method, path: &str) -> Option<Role> {
    let admin_only = [
        "/api/v1alpha1/tokens",
        "/api/v1alpha1/users",
        "/api/v1alpha1/audit",
        "/api/v1alpha1/backup",
    ]
    .iter()
    .any(|p| path.starts_with(p))
        || ends_node_access(method, path);
    if admin_only {
        return Some(Role::Admin);
    }
    match audience {
        Audience::People | Audience::Operators | Audience::Dashboard => {
            Some(if *method == Method::GET || *method == Method::HEAD {
                Role::Viewer
            } else {
                Role::Operator
            })
        }
        // Downloads and the node protocol: admins may look.
        Audience::Nodes => Some(Role::Admin),
        Audience::Joining => None,
    }
}

/// Whether a request ends a board's access: revoking it, or deleting its
/// Node (whose certificates are revoked with it). One rule for both
/// routes: an admin's act.
fn ends_node_access(method: &Method, path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/api/v1alpha1/nodes/") else {
        return false;
    };
    rest.ends_with("/revoke") || (*method == Method::DELETE && !rest.trim_end_matches('/').contains('/'))
}

/// Ending a board's access is an admin's act, checked again where it
/// happens (the revoke and the Node delete handlers), whatever spelling of
/// the path led there.
pub(crate) fn may_end_node_access(caller: &Identity, node: &str) -> Result<(), ApiError> {
    match caller {
        Identity::User { role: Role::Admin, .. } => Ok(()),
        Identity::User { name, role, .. } => Err(ApiError::forbidden(format!(
            "user {name:?} ({}) may not end node {node:?}'s access (delete or revoke it): that needs the admin role",
            role.as_str()
        ))
        .with("role", Role::Admin.as_str())),
        Identity::Node { name, .. } => Err(ApiError::forbidden(format!(
            "node {name:?} may not end node {node:?}'s access"
        ))),
        Identity::Anonymous => Err(ApiError::unauthorized(crate::identity::Refusal::Anonymous.to_string())),
    }
}

/// What a request needs, said in words for a 403.
fn what(method: &Method, path: &str) -> String {
    format!("{method} {path}")
}

/// Whether `identity` may use `audience`'s route at all: `method` on `path`.
pub(super) fn admit(audience: Audience, identity: &Identity, method: &Method, path: &str) -> Result<(), ApiError> {
    let anonymous = || ApiError::unauthorized(crate::identity::Refusal::Anonymous.to_string());
    // The dashboard's page, its assets and signing in are for anyone.
    let public_page =
        path == "/" || path.starts_with("/assets/") || path.starts_with("/favicon") || path == "/api/session";
    match (audience, identity) {
        (Audience::Joining, _) => Ok(()),
        (Audience::Dashboard, _) if public_page => Ok(()),
        (Audience::Operators, _) if path == "/healthz" => Ok(()),
        (_, Identity::Anonymous) => Err(anonymous()),
        (
            Audience::Nodes,
            Identity::Node {
                name, expired: true, ..
            },
        ) => Err(ApiError::unauthorized(
            crate::identity::Refusal::Expired(name.clone()).to_string(),
        )),
        (Audience::Nodes, Identity::Node { .. }) => Ok(()),
        (_, Identity::Node { name, .. }) => Err(ApiError::forbidden(format!(
            "node {name:?} may use only the node protocol; people and tools use a user's token"
        ))),
        (_, Identity::User { name, role, .. }) => {
            let needed = required_role(audience, method, path).unwrap_or(Role::Admin);
            if *role >= needed {
                Ok(())
            } else {
                Err(ApiError::forbidden(format!(
                    "user {name:?} ({}) may not {}: that needs the {} role",
                    role.as_str(),
                    what(method, path),
                    needed.as_str()
                ))
                .with("role", needed.as_str()))
            }
        }
    }
}

fn identity_of(parts: &Parts) -> Result<&Identity, ApiError> {
    parts
        .extensions
        .get::<Identity>()
        .ok_or_else(|| ApiError::unauthorized(crate::identity::Refusal::Anonymous.to_string()))
}

/// The `{name}` of a node route, when the caller may act as that node:
/// the node itself, or an admin.
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
            Identity::User { role: Role::Admin, .. } => Ok(ThisNode(name)),
            Identity::Node { name: me, .. } if *me == name => Ok(ThisNode(name)),
            Identity::Node { name: me, .. } => Err(ApiError::forbidden(format!(
                "node {me:?} may act only as itself, not as {name:?}"
            ))),
            Identity::User { name: user, .. } => Err(ApiError::forbidden(format!(
                "user {user:?} may not act as node {name:?}: that needs the admin role"
            ))),
            Identity::Anonymous => Err(ApiError::unauthorized(crate::identity::Refusal::Anonymous.to_string())),
        }
    }
}

/// The caller, for handlers that decide by it.
pub(crate) struct Caller(pub Identity);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        identity_of(parts).cloned().map(Caller)
    }
}

impl Api {
    /// Ends when the caller's access ends (a user deleted, a node revoked),
    /// for streams that outlive a request.
    pub(crate) fn until_gone(&self, who: &Identity) -> tokio_util::sync::CancellationToken {
        match &self.identities {
            Some(ids) => ids.until_gone(who),
            None => tokio_util::sync::CancellationToken::new(),
        }
    }
}

/// A node may download a component or compiled code only of a plugin it
/// is assigned now.
pub(crate) fn may_fetch(api: &Api, caller: &Identity, digest: &Digest) -> Result<(), ApiError> {
    match caller {
        Identity::User { role: Role::Admin, .. } => Ok(()),
        Identity::Node { name, .. } if api.reconciler.assigned(name, digest) => Ok(()),
        Identity::Node { name, .. } => Err(ApiError::forbidden(format!(
            "node {name:?} is not assigned a plugin with digest {digest}"
        ))),
        Identity::User { name, .. } => Err(ApiError::forbidden(format!(
            "user {name:?} may not download components: that needs the admin role"
        ))),
        Identity::Anonymous => Err(ApiError::unauthorized(crate::identity::Refusal::Anonymous.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_may_do_what_the_ones_before_it_may() {
        let r = |a, m: Method, p: &str| required_role(a, &m, p);
        assert_eq!(
            r(Audience::People, Method::GET, "/api/v1alpha1/plugins"),
            Some(Role::Viewer)
        );
        assert_eq!(
            r(Audience::People, Method::GET, "/api/v1alpha1/watch"),
            Some(Role::Viewer)
        );
        assert_eq!(
            r(Audience::Operators, Method::GET, "/api/v1alpha1/logs"),
            Some(Role::Viewer)
        );
        assert_eq!(
            r(Audience::People, Method::POST, "/api/v1alpha1/apply"),
            Some(Role::Operator)
        );
        assert_eq!(
            r(Audience::People, Method::DELETE, "/api/v1alpha1/plugins/p"),
            Some(Role::Operator)
        );
        assert_eq!(
            r(Audience::Operators, Method::POST, "/api/v1alpha1/plugins/b/commands/x"),
            Some(Role::Operator)
        );
        assert_eq!(
            r(Audience::People, Method::GET, "/api/v1alpha1/tokens"),
            Some(Role::Admin)
        );
        // Deleting a Node revokes it: admin only, like revoking.
        assert_eq!(
            r(Audience::People, Method::DELETE, "/api/v1alpha1/nodes/pi4"),
            Some(Role::Admin)
        );
        assert_eq!(
            r(Audience::People, Method::POST, "/api/v1alpha1/nodes/pi4/revoke"),
            Some(Role::Admin)
        );
        assert_eq!(
            r(Audience::People, Method::PUT, "/api/v1alpha1/nodes/pi4"),
            Some(Role::Operator)
        );
        assert_eq!(
            r(Audience::People, Method::GET, "/api/v1alpha1/nodes/pi4"),
            Some(Role::Viewer)
        );
        assert_eq!(
            r(Audience::People, Method::POST, "/api/v1alpha1/users"),
            Some(Role::Admin)
        );
        assert_eq!(
            r(Audience::People, Method::GET, "/api/v1alpha1/audit"),
            Some(Role::Admin)
        );
        assert_eq!(
            r(Audience::People, Method::GET, "/api/v1alpha1/backup"),
            Some(Role::Admin)
        );
        assert_eq!(
            r(Audience::People, Method::POST, "/api/v1alpha1/nodes/pi4/revoke"),
            Some(Role::Admin)
        );
        assert_eq!(
            r(Audience::Nodes, Method::GET, "/api/v1alpha1/blobs/x"),
            Some(Role::Admin)
        );
        let viewer = Identity::User {
            name: "v".into(),
            role: Role::Viewer,
            uid: String::new(),
        };
        let e = admit(Audience::People, &viewer, &Method::POST, "/api/v1alpha1/apply").unwrap_err();
        assert!(e.message().contains("needs the operator role"), "{}", e.message());
        assert!(admit(Audience::People, &viewer, &Method::GET, "/api/v1alpha1/plugins").is_ok());
    }
}
