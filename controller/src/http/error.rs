//! The one shape of an error answer: a status code and a JSON body with a
//! machine-readable `reason` and a `message` that says what was wrong,
//! where, and what to do.

use crate::store::StoreError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: Map<String, Value>,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, reason: &str, message: impl Into<String>) -> ApiError {
        let mut body = Map::new();
        body.insert("reason".into(), json!(reason));
        body.insert("message".into(), json!(message.into()));
        ApiError {
            status,
            body,
            retry_after: None,
        }
    }

    /// The request itself is malformed (400).
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// Well-formed but not acceptable (422).
    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub(crate) fn conflict(reason: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, reason, message)
    }

    /// No credential, or one the hub does not accept (401).
    pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// The hub's own fault (500): logged here, once.
    pub(crate) fn internal(reason: &str, message: impl Into<String>) -> ApiError {
        let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, reason, message);
        tracing::error!("{}", e.message());
        e
    }

    /// Says when to try again (a Retry-After header, in seconds).
    pub(crate) fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    /// Adds a field to the body (`applied`, `errors`...).
    pub(crate) fn with(mut self, key: &str, value: impl serde::Serialize) -> ApiError {
        self.body.insert(key.into(), json!(value));
        self
    }

    /// Says where it happened: `document 2 (Plugin a): <message>`.
    pub(crate) fn at(mut self, place: &str) -> ApiError {
        let message = format!("{place}: {}", self.message());
        self.body.insert("message".into(), json!(message));
        self
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn message(&self) -> &str {
        self.body.get("message").and_then(Value::as_str).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(Value::Object(self.body))).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(s));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let message = e.to_string();
        match e {
            StoreError::Conflict { .. } => ApiError::conflict("Conflict", message),
            StoreError::NotFound { .. } => ApiError::not_found(message),
            StoreError::Gone { .. } => ApiError::new(StatusCode::GONE, "Expired", message),
            StoreError::Invalid(_) => ApiError::invalid(message),
            StoreError::Forbidden(_) => ApiError::forbidden(message),
            // Nothing was written: a full disk is said as such, not as a
            // mystery 500.
            StoreError::Sled(sled::Error::Io(ref io)) if io.kind() == std::io::ErrorKind::StorageFull => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "InsufficientStorage",
                format!("the hub's disk is full; nothing was written: free space on it, then try again ({io})"),
            ),
            StoreError::Sled(_) | StoreError::Corrupt(_) | StoreError::Flush(_) | StoreError::Snapshot(_) => {
                ApiError::internal("InternalError", message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_what_the_client_can_do_about_them() {
        let cases = [
            (StoreError::Invalid("bad".into()), 422, "Invalid"),
            (StoreError::Forbidden("no".into()), 403, "Forbidden"),
            (
                StoreError::NotFound {
                    kind: "Plugin",
                    name: "x".into(),
                },
                404,
                "NotFound",
            ),
            (
                StoreError::Gone {
                    requested: 1,
                    oldest: 5,
                },
                410,
                "Expired",
            ),
            // A write that could not be made durable is the hub's fault.
            (
                StoreError::Flush("the flush task panicked".into()),
                500,
                "InternalError",
            ),
            (
                StoreError::Sled(sled::Error::Io(std::io::Error::from(std::io::ErrorKind::StorageFull))),
                507,
                "InsufficientStorage",
            ),
        ];
        for (e, code, reason) in cases {
            let e = ApiError::from(e);
            assert_eq!(e.status().as_u16(), code);
            assert_eq!(e.body["reason"], reason);
        }
        let e = ApiError::invalid("spec.image: empty")
            .at("document 2 (Plugin a)")
            .with("applied", [1]);
        assert_eq!(e.message(), "document 2 (Plugin a): spec.image: empty");
        assert_eq!(e.body["applied"], json!([1]));
    }
}
