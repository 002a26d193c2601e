//! The one place errors become HTTP answers.
//!
//! Every error answer is JSON: `{"error": "<kind>", "message": "..."}` (plus
//! `check` for refused signatures). Internal details are logged, not sent.

use crate::store::StoreError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// The request (its body) did not arrive in time.
    #[error("{0}")]
    Timeout(String),
    #[error("{message}")]
    Unauthorized {
        check: &'static str,
        message: String,
    },
    #[error("missing or wrong admin token")]
    AdminToken,
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

/// A store failure is ours, not the client's: logged, answered 500.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, body) = match &self {
            ApiError::NotFound(_) => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": message}),
            ),
            ApiError::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_request", "message": message}),
            ),
            ApiError::Conflict(_) => (
                StatusCode::CONFLICT,
                json!({"error": "conflict", "message": message}),
            ),
            ApiError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "too_large", "message": message}),
            ),
            ApiError::Timeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "timeout", "message": message}),
            ),
            ApiError::Unauthorized { check, .. } => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "invalid_signature", "check": check, "message": message}),
            ),
            ApiError::AdminToken => {
                let mut r = (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "unauthorized", "message": message})),
                )
                    .into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return r;
            }
            ApiError::Unavailable(_) => {
                let mut r = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"error": "unavailable", "message": message})),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
                return r;
            }
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal", "message": message}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}
