//! The engine's error type. Every variant says who is at fault, so front-ends can map it to one
//! HTTP status and one gRPC code in a single place.

/// An engine error with a message fit for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed or does not fit the model.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such model or version.
    #[error("{0}")]
    NotFound(String),
    /// The model or server cannot take requests now (not ready, unloading).
    #[error("{0}")]
    Unavailable(String),
    /// A bounded queue is full; retry later.
    #[error("{message}")]
    Overloaded {
        /// What was full.
        message: String,
        /// Suggested wait before retrying, in seconds.
        retry_after_secs: u32,
    },
    /// The operation is not allowed in the server's current mode.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request was cancelled or the server shut down before it ran.
    #[error("{0}")]
    Cancelled(String),
    /// The request waited in the queue past its timeout.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A fault inside the server or a backend.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

/// Result alias for engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
