//! The one error type of the HTTP boundary (CONTRACT §1.2).
//!
//! Every non-2xx answer is `{"status": <code>, "message": "<text>"}`. A 5xx
//! never carries internal detail: the cause chain goes to the log, the client
//! gets the contract's fixed text.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u64>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The HTTP status code again.
    #[schema(example = 400)]
    pub status: u16,
    #[schema(example = "Bad destination number format")]
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unauthorised() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Not Authorised")
    }

    /// A failure of ours: logged in full, answered with `public` only.
    pub fn internal(public: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "{public}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, public)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            status: self.status.as_u16(),
            message: self.message,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        response
    }
}

/// Store failures outside the trigger path (whose 500 has its own text).
impl From<herald_store::StoreError> for ApiError {
    fn from(e: herald_store::StoreError) -> Self {
        match e {
            herald_store::StoreError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, message)
            }
            // Handlers hold no leases; this is here for completeness.
            e @ herald_store::StoreError::LeaseLost => {
                ApiError::internal("Internal server error", e.to_string())
            }
            e @ herald_store::StoreError::Unreadable(_) => {
                ApiError::internal("Internal server error", e.to_string())
            }
            herald_store::StoreError::Internal(cause) => {
                ApiError::internal("Internal server error", format!("{cause:#}"))
            }
        }
    }
}
