//! Typed errors. Each variant maps onto one gRPC status code in the daemon
//! (`NotFound`, `AlreadyExists`, `FailedPrecondition`, `InvalidArgument`,
//! `Internal` for `Io`/`Metadata`), and messages name the snapshot key.

use std::io;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors returned by snapshotters and mount helpers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No snapshot has this key.
    #[error("snapshot {key:?} not found")]
    NotFound { key: String },

    /// A snapshot (of any kind) already uses this key.
    #[error("snapshot {key:?} already exists")]
    AlreadyExists { key: String },

    /// The snapshot exists but is in the wrong state for the operation (e.g.
    /// removing a snapshot with children, committing a view).
    #[error("snapshot {key:?}: {reason}")]
    FailedPrecondition { key: String, reason: String },

    /// The request itself is malformed (empty key, unusable root path, ...).
    #[error("invalid argument: {reason}")]
    InvalidArgument { reason: String },

    /// A filesystem or mount operation failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The metadata database failed or holds a record it cannot decode. The
    /// underlying database type is boxed so it stays out of the public API.
    #[error("snapshot metadata: {context}: {source}")]
    Metadata {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Whether an I/O error means a full disk (or quota), by errno or by kind:
/// sled hands out clones of its stored error, which keep the kind and lose
/// the errno.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
}

impl Error {
    /// Whether the filesystem (or the metadata database on it) was full or over
    /// quota: the caller can make room and try again.
    pub fn is_no_space(&self) -> bool {
        let full = is_no_space;
        match self {
            Error::Io { source, .. } => full(source),
            Error::Metadata { source, .. } => {
                if let Some(sled::Error::Io(e)) = source.downcast_ref::<sled::Error>() {
                    full(e)
                } else {
                    source.downcast_ref::<io::Error>().is_some_and(full)
                }
            }
            _ => false,
        }
    }

    pub(crate) fn io(
        context: impl Into<String>,
        path: impl AsRef<Path>,
        source: io::Error,
    ) -> Self {
        Error::Io {
            context: context.into(),
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub(crate) fn metadata(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Metadata {
            context: context.into(),
            source: source.into(),
        }
    }

    pub(crate) fn not_found(key: &str) -> Self {
        Error::NotFound {
            key: key.to_string(),
        }
    }

    pub(crate) fn exists(key: &str) -> Self {
        Error::AlreadyExists {
            key: key.to_string(),
        }
    }

    pub(crate) fn precondition(key: &str, reason: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            reason: reason.into(),
        }
    }

    /// True for [`Error::NotFound`]; handy for idempotent removes.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

/// Attach a path and context to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(context, path, e))
    }
}
