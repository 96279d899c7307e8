//! Code the hub compiled for a node's target, signed by the hub's key:
//! the body is the code streamed from disk, the headers carry the signed
//! statement of what it is.

use super::access::Caller;
use super::{Api, ApiError};
use crate::compile::CompileFailure;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use harvester_api::Digest;
use harvester_api::compiled::{SIGNATURE_HEADER, STATEMENT_HEADER};
use serde::Deserialize;

pub(super) fn routes() -> Router<Api> {
    Router::new().route("/api/v1alpha1/compiled/{artifact}", get(compiled))
}

#[derive(Deserialize)]
struct CompiledQuery {
    target: String,
    engine: String,
}

impl From<CompileFailure> for ApiError {
    fn from(e: CompileFailure) -> ApiError {
        let status = match &e {
            CompileFailure::Target(_) | CompileFailure::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            CompileFailure::EngineMismatch { .. } => StatusCode::CONFLICT,
            CompileFailure::Unknown(_) => StatusCode::NOT_FOUND,
            CompileFailure::Source { .. } => StatusCode::BAD_GATEWAY,
            CompileFailure::Io(_) => return ApiError::internal(e.reason(), e.to_string()),
        };
        ApiError::new(status, e.reason(), e.to_string())
    }
}

async fn compiled(
    State(api): State<Api>,
    Caller(caller): Caller,
    Path(artifact): Path<String>,
    Query(q): Query<CompiledQuery>,
) -> Result<Response, ApiError> {
    let requests = &api.metrics.compile_requests;
    let Some(compiler) = api.compiler.clone() else {
        requests.with_label_values(&["refused"]).inc();
        return Err(
            ApiError::not_found("this hub does not compile components for nodes (started with --no-compile)")
                .with("reason", "NotCompiling"),
        );
    };
    let artifact: Digest = artifact.parse().map_err(ApiError::bad_request)?;
    super::access::may_fetch(&api, &caller, &artifact)?;
    let code = match compiler
        .code_for(&api.store, &api.registry, artifact, &q.target, &q.engine)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            requests.with_label_values(&["refused"]).inc();
            tracing::warn!(%artifact, target = q.target, "not serving compiled code: {e}");
            return Err(e.into());
        }
    };
    match code.compiled_in {
        Some(took) => {
            requests.with_label_values(&["compiled"]).inc();
            api.metrics.compile_seconds.observe(took.as_secs_f64());
            if let Some(bytes) = code.peak_memory {
                api.metrics.compile_peak_memory.set(bytes as i64);
            }
        }
        None => requests.with_label_values(&["cached"]).inc(),
    }
    let file = tokio::fs::File::open(&code.path)
        .await
        .map_err(|e| ApiError::internal("Internal", format!("{}: {e}", code.path.display())))?;
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, code.size)
        .header(STATEMENT_HEADER, code.statement)
        .header(SIGNATURE_HEADER, code.signature)
        .body(Body::from_stream(tokio_util::io::ReaderStream::new(file)))
        .map_err(|e| ApiError::internal("Internal", e.to_string()))
}
