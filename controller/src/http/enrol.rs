//! Identities over the API: boards enrol with a join token and renew
//! their certificates; admins make and delete join tokens and users,
//! revoke nodes and read the audit trail; anyone signed in asks who they are.

use super::access::{Caller, ThisNode};
use super::{Api, ApiError};
use crate::identity::{EnrolError, Identities, Identity};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use harvester_api::identity::{
    CertificateAnswer, CertificateRequest, Revoked, TokenCreated, TokenRequest, UserCreated, UserRequest, WhoAmI,
};
use std::sync::Arc;
use std::time::Duration;

/// Routes that carry their own credential (a join token, or a node
/// certificate that may have expired).
pub(super) fn joining() -> Router<Api> {
    Router::new()
        .route("/api/v1alpha1/enrol", post(enrol))
        .route("/api/v1alpha1/nodes/{name}/certificate", post(renew))
}

/// People's (the admin role for all but `whoami`, see `access`).
pub(super) fn people() -> Router<Api> {
    Router::new()
        .route("/api/v1alpha1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1alpha1/tokens/{id}", delete(delete_token))
        .route("/api/v1alpha1/nodes/{name}/revoke", post(revoke))
        .route("/api/v1alpha1/users", get(list_users).post(create_user))
        .route("/api/v1alpha1/users/{name}", delete(delete_user))
        .route("/api/v1alpha1/audit", get(audit))
        .route("/api/v1alpha1/backup", get(backup))
        .route("/api/v1alpha1/whoami", get(whoami))
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
            EnrolError::Refused(r @ Refusal::UserExists(_)) => ApiError::conflict("UserExists", r.to_string()),
            EnrolError::Refused(r @ Refusal::NoUser(_)) => ApiError::not_found(r.to_string()),
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
    let credential = super::access::bearer(&headers)
        .map(str::to_string)
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
    // The certificate asking, checked again where the new one is signed.
    let serial = match caller {
        Identity::Node { serial, .. } => Some(serial),
        _ => None,
    };
    let ids = identities(&api)?.clone();
    let issued = tokio::task::spawn_blocking(move || ids.renew(&req.node, serial.as_deref(), &req.csr))
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
    if let Some(labels) = &req.labels {
        let mut errors = harvester_api::validation::ValidationErrors::default();
        harvester_api::resources::validate_labels(labels, "labels", &mut errors);
        errors.into_result().map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    let (token, info) = ids
        .create_token(ttl, req.uses, &req.description, req.labels.clone())
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

async fn revoke(
    State(api): State<Api>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    super::access::may_end_node_access(&caller, &name)?;
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

async fn create_user(State(api): State<Api>, Json(req): Json<UserRequest>) -> Result<Response, ApiError> {
    let (token, info) = identities(&api)?.create_user(&req.name, req.role)?;
    Ok((StatusCode::CREATED, Json(UserCreated { token, info })).into_response())
}

async fn list_users(State(api): State<Api>) -> Result<Response, ApiError> {
    Ok(Json(harvester_api::answers::List {
        resource_version: 0,
        items: identities(&api)?.users(),
    })
    .into_response())
}

async fn delete_user(State(api): State<Api>, Path(name): Path<String>) -> Result<Response, ApiError> {
    identities(&api)?
        .delete_user(&name)
        .map_err(|r| ApiError::from(EnrolError::Refused(r)))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn whoami(State(api): State<Api>, Caller(caller): Caller) -> Result<Response, ApiError> {
    identities(&api)?;
    match caller {
        Identity::User { name, role, .. } => Ok(Json(WhoAmI { user: name, role }).into_response()),
        _ => Err(ApiError::bad_request("whoami is for people; nodes know who they are")),
    }
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    /// Milliseconds since the epoch.
    #[serde(default)]
    since: u64,
    user: Option<String>,
    limit: Option<usize>,
}

/// The most an audit answer holds, newest last.
const AUDIT_PAGE: usize = 1000;

/// A backup of the hub (its store, CA and keys): a tar archive, streamed
/// from a file written while no write could happen.
async fn backup(State(api): State<Api>) -> Result<Response, ApiError> {
    let internal = |e: anyhow::Error| ApiError::internal("BackupFailed", format!("{e:#}"));
    let file = tempfile::tempfile_in(&*api.data)
        .map_err(|e| internal(anyhow::anyhow!("a file for the backup in the data folder: {e}")))?;
    let reading = file.try_clone().map_err(|e| internal(e.into()))?;
    let summary = crate::backup::write(&api.store, &api.data, file)
        .await
        .map_err(internal)?;
    tracing::info!(
        resource_version = summary.resource_version,
        records = summary.records,
        "backup taken"
    );
    let mut reading = tokio::fs::File::from_std(reading);
    tokio::io::AsyncSeekExt::rewind(&mut reading)
        .await
        .map_err(|e| internal(e.into()))?;
    let length = reading.metadata().await.map_err(|e| internal(e.into()))?.len();
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/x-tar".to_string()),
            (axum::http::header::CONTENT_LENGTH, length.to_string()),
            (
                axum::http::HeaderName::from_static("x-harvester-resource-version"),
                summary.resource_version.to_string(),
            ),
        ],
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(reading)),
    )
        .into_response())
}

async fn audit(
    State(api): State<Api>,
    axum::extract::Query(q): axum::extract::Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(AUDIT_PAGE).min(AUDIT_PAGE);
    let audit = identities(&api)?.audit();
    // Refusals counted since the last minute's summary are shown too.
    audit.summarise_refusals();
    let entries = audit.entries(q.since, q.user.as_deref(), limit);
    Ok(Json(harvester_api::answers::List {
        resource_version: 0,
        items: entries,
    })
    .into_response())
}
