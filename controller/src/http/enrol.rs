//! Identities over the API: boards enrol with a join token and renew
//! their certificates; the admin makes and deletes join tokens and
//! revokes nodes.

use super::access::{Caller, ThisNode};
use super::{Api, ApiError};
use crate::identity::{EnrolError, Identities, Identity};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use harvester_api::identity::{CertificateAnswer, CertificateRequest, Revoked, TokenCreated, TokenRequest};
use std::sync::Arc;
use std::time::Duration;

/// Routes that carry their own credential (a join token, or a node
/// certificate that may have expired).
pub(super) fn joining() -> Router<Api> {
    Router::new()
        .route("/api/v1alpha1/enrol", post(enrol))
        .route("/api/v1alpha1/nodes/{name}/certificate", post(renew))
}

/// The admin's.
pub(super) fn admin() -> Router<Api> {
    Router::new()
        .route("/api/v1alpha1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1alpha1/tokens/{id}", delete(delete_token))
        .route("/api/v1alpha1/nodes/{name}/revoke", post(revoke))
}

fn identities(api: &Api) -> Result<&Arc<Identities>, ApiError> {
    api.identities.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "NoIdentities",
            "this hub runs without identities (plain HTTP on loopback): there is nothing to enrol or revoke",
        )
    })
}

impl From<EnrolError> for ApiError {
    fn from(e: EnrolError) -> ApiError {
        use crate::identity::Refusal;
        match e {
            EnrolError::Request(m) => ApiError::invalid(m),
            EnrolError::Refused(r @ Refusal::Enrolled(_)) => ApiError::conflict("Enrolled", r.to_string()),
            EnrolError::Refused(r @ Refusal::Store(_)) => ApiError::internal("IdentityStore", r.to_string()),
            EnrolError::Refused(r) => ApiError::unauthorized(r.to_string()),
        }
    }
}

fn answer(api: &Api, issued: harvester_pki::Issued) -> Result<Response, ApiError> {
    let ids = identities(api)?;
    Ok(Json(CertificateAnswer {
        certificate: issued.pem,
        ca: ids.ca().cert_pem().to_string(),
        not_after: harvester_pki::unix_ms(issued.not_after),
    })
    .into_response())
}

async fn enrol(State(api): State<Api>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let ids = identities(&api)?.clone();
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| ApiError::unauthorized("enrolling needs a join token (harvester token create)"))?;
    // The credential first: who cannot enrol learns nothing about the body.
    ids.check_join_token(&credential)
        .map_err(|r| ApiError::from(EnrolError::Refused(r)))?;
    let req: CertificateRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the enrolment request: {e}")))?;
    let issued = tokio::task::spawn_blocking(move || ids.enrol(&credential, &req.node, &req.csr))
        .await
        .map_err(|e| ApiError::internal("Enrol", e.to_string()))??;
    answer(&api, issued)
}

/// A node renews its own certificate, also within the grace after expiry.
async fn renew(
    State(api): State<Api>,
    node: ThisNode,
    Caller(caller): Caller,
    Json(req): Json<CertificateRequest>,
) -> Result<Response, ApiError> {
    if req.node != node.0 {
        return Err(ApiError::bad_request(format!(
            "node must be {:?}, as in the URL",
            node.0
        )));
    }
    if caller == Identity::Anonymous {
        return Err(ApiError::unauthorized("renewing needs the node's certificate"));
    }
    let ids = identities(&api)?.clone();
    let issued = tokio::task::spawn_blocking(move || ids.renew(&req.node, &req.csr))
        .await
        .map_err(|e| ApiError::internal("Renew", e.to_string()))??;
    answer(&api, issued)
}

/// The longest a join token may live: a board enrols within days, not years.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);

async fn create_token(State(api): State<Api>, Json(req): Json<TokenRequest>) -> Result<Response, ApiError> {
    let ids = identities(&api)?;
    let ttl = Duration::from_secs(req.ttl_seconds);
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(ApiError::invalid("ttlSeconds: between 1 second and 30 days"));
    }
    if req.uses == 0 {
        return Err(ApiError::invalid("uses: at least 1"));
    }
    let (token, info) = ids
        .create_token(ttl, req.uses, &req.description)
        .map_err(|e| ApiError::internal("IdentityStore", e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            token: token.to_string(),
            info,
        }),
    )
        .into_response())
}

async fn list_tokens(State(api): State<Api>) -> Result<Response, ApiError> {
    let tokens = identities(&api)?
        .tokens()
        .map_err(|e| ApiError::internal("IdentityStore", e.to_string()))?;
    Ok(Json(harvester_api::answers::List {
        resource_version: 0,
        items: tokens,
    })
    .into_response())
}

async fn delete_token(State(api): State<Api>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let gone = identities(&api)?
        .delete_token(&id)
        .map_err(|e| ApiError::internal("IdentityStore", e.to_string()))?;
    if !gone {
        return Err(ApiError::not_found(format!("no join token {id}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn revoke(State(api): State<Api>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let certificates = identities(&api)?
        .revoke(&name)
        .map_err(|e| ApiError::internal("IdentityStore", e.to_string()))?;
    if certificates == 0 && api.store.get(crate::store::Kind::Node, &name)?.is_none() {
        return Err(ApiError::not_found(format!(
            "no node {name:?} and no certificate for it"
        )));
    }
    Ok(Json(Revoked {
        node: name,
        certificates,
    })
    .into_response())
}
