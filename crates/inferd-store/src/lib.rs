//! Model repositories on object storage.
//!
//! inferd serves a repository from `s3://`, `gs://` or `az://` by keeping a local copy in step
//! with it (the engine then serves that folder exactly as a local repository, poll mode
//! included), and `inferd pull` copies one to disk ahead of the server (an init container,
//! preloading to local SSD). Every version folder arrives whole or not at all.
//!
//! - [`plan`]: what a sync must do, decided without I/O.
//! - [`source`]: opening a URL as a store; listing and downloading.
//! - [`mirror`]: carrying out a plan on a local folder, atomically per version.

pub mod mirror;
pub mod plan;
pub mod source;

pub use mirror::{Mirror, Progress, Silent, SyncReport};
pub use source::{Remote, is_remote};

/// What can go wrong reading a repository from object storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL cannot name a repository.
    #[error("bad repository URL '{url}': {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The store refused or could not be reached.
    #[error("{url}: {}", describe(cause))]
    Store {
        /// The repository URL.
        url: String,
        /// The store's error (not a `source`: its text already holds its whole chain, which
        /// `{:#}` would print again at every level).
        cause: object_store::Error,
    },
    /// A local file could not be written or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An object arrived but failed its check (size, pinned sha256).
    #[error("{key}: {reason}")]
    Check {
        /// The object's key under the repository.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// A model asked for by name is not in the store.
    #[error("{url}: no model '{model}' in the repository")]
    NoModel {
        /// The repository URL.
        url: String,
        /// The model.
        model: String,
    },
}

/// One line for a store error: the request that failed and the innermost cause, with an S3/Azure
/// XML error body reduced to its code and message.
fn describe(e: &object_store::Error) -> String {
    let full = e.to_string();
    let request = full.rfind("Error performing ").and_then(|i| {
        let rest = &full[i + "Error performing ".len()..];
        let end = rest.find(" in ")?;
        let req = &rest[..end];
        req.contains("://").then(|| req.to_string())
    });
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let mut cause = root.to_string();
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let i = cause.find(&open)? + open.len();
        let j = cause[i..].find(&format!("</{t}>"))? + i;
        Some(cause[i..j].to_string())
    };
    if let (Some(code), msg) = (tag("Code"), tag("Message")) {
        let status = cause.split(": <").next().unwrap_or_default().to_string();
        cause = format!("{status}: {code}: {}", msg.unwrap_or_default());
    }
    match request {
        Some(r) => format!("{r}: {cause}"),
        None => cause,
    }
}
