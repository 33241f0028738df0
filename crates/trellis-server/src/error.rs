//! API errors: an HTTP status, a Kubernetes-style reason, and a message that names the
//! offending field when there is one. Written as a `Status` object.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use trellis_store::StoreError;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `Unauthorized`, `Forbidden`,
    /// `BadRequest`, `ServiceUnavailable`, `InternalError`.
    pub reason: &'static str,
    /// What went wrong, naming the field.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }
    /// 404.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{what} not found"),
        )
    }
    /// 409, create of an existing object.
    pub fn already_exists(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{what} already exists"),
        )
    }
    /// 409, stale resourceVersion.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }
    /// 422, validation failure.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
    }
    /// 400, unreadable request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }
    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    }
    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// The `Status` object.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "trellis/v1",
            "kind": "Status",
            "status": "Failure",
            "code": self.status.as_u16(),
            "reason": self.reason,
            "message": self.message,
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ApiError::unavailable(format!("store unavailable: {m}")),
            StoreError::Conflict { key, .. } => ApiError::conflict(format!(
                "concurrent change to {key}; read it again and retry"
            )),
            e => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
