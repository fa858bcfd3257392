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

/// The one mapping from an engine error to (HTTP status, gRPC code). Client mistakes are 4xx /
/// INVALID_ARGUMENT-like; the server's limits and states are 503 / UNAVAILABLE-like; only the
/// server's own faults are 500 / INTERNAL.
pub fn codes(e: &Error) -> (StatusCode, tonic::Code) {
    match e {
        Error::InvalidArgument(_) => (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument),
        Error::FailedPrecondition(_) => (StatusCode::BAD_REQUEST, tonic::Code::FailedPrecondition),
        Error::NotFound(_) => (StatusCode::NOT_FOUND, tonic::Code::NotFound),
        Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable),
        Error::Overloaded { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            tonic::Code::ResourceExhausted,
        ),
        Error::Cancelled(_) => (StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Cancelled),
        Error::DeadlineExceeded(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            tonic::Code::DeadlineExceeded,
        ),
        Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, tonic::Code::Internal),
    }
}

/// HTTP status for an engine error (see [`codes`]).
pub fn http_status(e: &Error) -> StatusCode {
    codes(e).0
}

/// gRPC status for an engine error (see [`codes`]).
pub fn grpc_status(e: &Error) -> tonic::Status {
    tonic::Status::new(codes(e).1, e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_error_kind_maps_to_one_http_status_and_one_grpc_code() {
        let m = || "m".to_string();
        let cases = [
            (
                Error::InvalidArgument(m()),
                400,
                tonic::Code::InvalidArgument,
            ),
            (
                Error::FailedPrecondition(m()),
                400,
                tonic::Code::FailedPrecondition,
            ),
            (Error::NotFound(m()), 404, tonic::Code::NotFound),
            (Error::Unavailable(m()), 503, tonic::Code::Unavailable),
            (
                Error::Overloaded {
                    message: m(),
                    retry_after_secs: 1,
                },
                503,
                tonic::Code::ResourceExhausted,
            ),
            (Error::Cancelled(m()), 503, tonic::Code::Cancelled),
            (
                Error::DeadlineExceeded(m()),
                503,
                tonic::Code::DeadlineExceeded,
            ),
            (Error::Internal(m()), 500, tonic::Code::Internal),
        ];
        for (e, http, grpc) in cases {
            assert_eq!(http_status(&e).as_u16(), http, "{e:?}");
            let st = grpc_status(&e);
            assert_eq!(st.code(), grpc, "{e:?}");
            assert_eq!(st.message(), "m");
        }
    }

    #[test]
    fn overload_answers_carry_retry_after_and_unread_bodies_close_the_connection() {
        let r = ApiError::from(Error::Overloaded {
            message: "full".into(),
            retry_after_secs: 2,
        })
        .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert!(r.headers().get(header::CONNECTION).is_none());
        let r = ApiError::new(StatusCode::REQUEST_TIMEOUT, "slow").into_response();
        assert_eq!(r.headers()[header::CONNECTION], "close");
    }
}
