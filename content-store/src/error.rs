//! Typed errors. Every variant names the object (digest or ingest reference)
//! so the daemon can map it to a gRPC code with a useful message.

use std::io;
use std::path::PathBuf;

use crate::digest::Digest;

/// Errors returned by the content store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No committed blob with this digest.
    #[error("blob {digest} not found")]
    NotFound { digest: Digest },

    /// No in-progress ingest with this reference.
    #[error("ingest {reference:?} not found")]
    IngestNotFound { reference: String },

    /// The blob is already committed; there is nothing to write.
    #[error("blob {digest} already exists")]
    AlreadyExists { digest: Digest },

    /// Another writer holds the ingest for this reference.
    #[error("ingest {reference:?} is locked by another writer")]
    Locked { reference: String },

    /// The written bytes hash to something other than what was expected.
    #[error("ingest {reference:?}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        reference: String,
        expected: Digest,
        actual: Digest,
    },

    /// The written byte count differs from what was expected.
    #[error("ingest {reference:?}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        reference: String,
        expected: u64,
        actual: u64,
    },

    /// The blob is bigger than the caller is willing to read into memory.
    #[error("blob {digest} is {size} bytes, more than the limit of {max}")]
    TooLarge { digest: Digest, size: u64, max: u64 },

    /// A string that is not a valid `sha256:<hex>` digest.
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: &'static str },

    /// An I/O failure, with what was being done and on which path.
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// True for [`Error::NotFound`] and [`Error::IngestNotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. } | Error::IngestNotFound { .. })
    }

    pub(crate) fn io(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Self {
        Error::Io {
            context: context.into(),
            path: path.into(),
            source,
        }
    }
}

/// Result alias for content store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
