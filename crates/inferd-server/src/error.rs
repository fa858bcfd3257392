//! One mapping from an engine error to an HTTP status and a gRPC status, and the HTTP error body
//! `{"error": "..."}` that KServe clients expect.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use inferd_core::Error;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Message for the client.
    pub message: String,
    /// Seconds to wait before retrying, for overload answers.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// A 400 with this message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A 503 with `Retry-After: 1`: the server is at a limit; retry shortly.
    pub fn overloaded(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            retry_after: Some(1),
        }
    }

    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// HTTP status for an engine error.
pub fn http_status(e: &Error) -> StatusCode {
    match e {
        Error::InvalidArgument(_) | Error::FailedPrecondition(_) => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Unavailable(_)
        | Error::Overloaded { .. }
        | Error::Cancelled(_)
        | Error::DeadlineExceeded(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// gRPC status for an engine error.
pub fn grpc_status(e: &Error) -> tonic::Status {
    let msg = e.to_string();
    match e {
        Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
        Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
        Error::NotFound(_) => tonic::Status::not_found(msg),
        Error::Unavailable(_) => tonic::Status::unavailable(msg),
        Error::Overloaded { .. } => tonic::Status::resource_exhausted(msg),
        Error::Cancelled(_) => tonic::Status::cancelled(msg),
        Error::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(msg),
        Error::Internal(_) => tonic::Status::internal(msg),
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let retry_after = match &e {
            Error::Overloaded {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        ApiError {
            status: http_status(&e),
            message: e.to_string(),
            retry_after,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, "{}", self.message);
        } else {
            tracing::debug!(status = %self.status, "{}", self.message);
        }
        let body =
            serde_json::to_vec(&serde_json::json!({ "error": self.message })).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // The body was not (fully) read: the connection cannot carry another request.
        if matches!(
            self.status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
        ) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
