//! Errors of the task service, each naming the task and the cause, with the
//! gRPC code a client should see.

use crate::error::Kind;
use crate::images::ImageError;
use crate::metadata::MetaError;
use crate::shim::ShimError;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{context}: {source}")]
    Shim {
        context: String,
        #[source]
        source: ShimError,
    },
    #[error("{context}: {source}")]
    Snapshot {
        context: String,
        #[source]
        source: snapshotter::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    #[error("{0}")]
    Internal(String),
}

impl TaskError {
    pub fn shim(context: impl Into<String>) -> impl FnOnce(ShimError) -> TaskError {
        let context = context.into();
        move |source| TaskError::Shim { context, source }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TaskError {
        let context = context.into();
        move |source| TaskError::Io { context, source }
    }

    /// The shim's connection broke (it died): its death settles the task.
    pub fn is_shim_gone(&self) -> bool {
        matches!(self, TaskError::Shim { source, .. } if source.is_connection())
    }

    /// The code family, from the one map in [`crate::error`] for typed causes.
    pub fn kind(&self) -> Kind {
        match self {
            TaskError::InvalidArgument(_) => Kind::InvalidArgument,
            TaskError::NotFound(_) => Kind::NotFound,
            TaskError::AlreadyExists(_) => Kind::AlreadyExists,
            TaskError::FailedPrecondition(_) => Kind::FailedPrecondition,
            TaskError::DeadlineExceeded(_) => Kind::DeadlineExceeded,
            TaskError::Image(e) => e.kind(),
            TaskError::Shim { source, .. } => Kind::from(source),
            TaskError::Snapshot { source, .. } => Kind::from(source),
            TaskError::Io { source, .. } => Kind::from(source),
            TaskError::Meta(e) => Kind::from(e),
            TaskError::Internal(_) => Kind::Internal,
        }
    }

    pub fn code(&self) -> tonic::Code {
        self.kind().code()
    }
}

impl From<TaskError> for tonic::Status {
    fn from(e: TaskError) -> tonic::Status {
        crate::error::status(e.kind(), &e.to_string())
    }
}

/// [`crate::error::blocking`] with this module's error, so callers need
/// not name it.
pub async fn blocking<T, F>(f: F) -> Result<T, TaskError>
where
    F: FnOnce() -> Result<T, TaskError> + Send + 'static,
    T: Send + 'static,
{
    crate::error::blocking(f).await
}

impl From<tokio::task::JoinError> for TaskError {
    fn from(e: tokio::task::JoinError) -> Self {
        TaskError::Internal(format!("blocking task failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled's own ENOSPC (a write or a flush of the log) is ResourceExhausted.
    #[test]
    fn a_full_metadata_disk_is_resource_exhausted() {
        for op in ["write", "flush"] {
            let e = TaskError::Meta(MetaError::Op {
                op,
                bucket: "tasks",
                source: sled::Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            });
            assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
        }
        // What sled hands out after the first failure: a clone of its stored
        // error, which keeps the kind and loses the errno.
        let stored = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let clone = std::io::Error::new(stored.kind(), format!("{stored:?}"));
        let e = TaskError::Meta(MetaError::Op {
            op: "flush",
            bucket: "*",
            source: sled::Error::Io(clone),
        });
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
        // The snapshotter's own metadata database, full.
        let e = TaskError::Snapshot {
            context: "preparing the rootfs of c".into(),
            source: snapshotter::Error::Metadata {
                context: "create snapshot".into(),
                source: Box::new(sled::Error::Io(std::io::Error::from_raw_os_error(
                    libc::ENOSPC,
                ))),
            },
        };
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    }
}
