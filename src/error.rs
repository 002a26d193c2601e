//! The one place errors become HTTP answers.
//!
//! Every error answer is JSON: `{"error": "<kind>", "message": "..."}` (plus
//! `check` for refused signatures). Internal details are logged, not sent.

use crate::store::StoreError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// The JSON body of every error answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `not_found`, `bad_request`, `conflict`, `too_large`, `timeout`,
    /// `invalid_signature`, `unauthorized`, `unavailable` or `internal`.
    pub error: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// For `invalid_signature`: the failed check (`signature_mismatch`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<&'static str>,
}

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

fn body(error: &'static str, message: String) -> ErrorBody {
    ErrorBody {
        error,
        message,
        check: None,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, body) = match &self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, body("not_found", message)),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, body("bad_request", message)),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, body("conflict", message)),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, body("too_large", message)),
            ApiError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, body("timeout", message)),
            ApiError::Unauthorized { check, .. } => (
                StatusCode::UNAUTHORIZED,
                ErrorBody {
                    check: Some(*check),
                    ..body("invalid_signature", message)
                },
            ),
            ApiError::AdminToken => {
                let mut r = (
                    StatusCode::UNAUTHORIZED,
                    Json(body("unauthorized", message)),
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
                    Json(body("unavailable", message)),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
                return r;
            }
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, body("internal", message))
            }
        };
        (status, Json(body)).into_response()
    }
}
