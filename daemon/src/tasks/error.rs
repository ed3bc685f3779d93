//! Errors of the task service, each naming the task and the cause, with the
//! gRPC code a client should see.

use crate::images::ImageError;
use crate::metadata::MetaError;
use crate::shim::{RpcCode, ShimError};

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

    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            TaskError::InvalidArgument(_) => Code::InvalidArgument,
            TaskError::NotFound(_) => Code::NotFound,
            TaskError::AlreadyExists(_) => Code::AlreadyExists,
            TaskError::FailedPrecondition(_) => Code::FailedPrecondition,
            TaskError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            TaskError::Image(e) => e.code(),
            TaskError::Shim { source, .. } => match source {
                ShimError::Rpc { code, .. } => match code {
                    RpcCode::NotFound => Code::NotFound,
                    RpcCode::AlreadyExists => Code::AlreadyExists,
                    RpcCode::FailedPrecondition => Code::FailedPrecondition,
                    RpcCode::InvalidArgument => Code::InvalidArgument,
                    RpcCode::DeadlineExceeded => Code::DeadlineExceeded,
                    RpcCode::Unavailable => Code::Unavailable,
                    _ => Code::Internal,
                },
                ShimError::Timeout { .. } => Code::DeadlineExceeded,
                ShimError::Transport { .. } | ShimError::Connect { .. } => Code::Unavailable,
                ShimError::Binary(_) => Code::FailedPrecondition,
                ShimError::Protocol { .. } => Code::Internal,
            },
            TaskError::Snapshot { source, .. } => match source {
                snapshotter::Error::NotFound { .. } => Code::NotFound,
                snapshotter::Error::AlreadyExists { .. } => Code::AlreadyExists,
                e if e.is_no_space() => Code::ResourceExhausted,
                _ => Code::Internal,
            },
            TaskError::Meta(e) if e.is_no_space() => Code::ResourceExhausted,
            TaskError::Io { .. } | TaskError::Meta(_) | TaskError::Internal(_) => Code::Internal,
        }
    }
}

impl From<TaskError> for tonic::Status {
    fn from(e: TaskError) -> tonic::Status {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// Runs blocking work (disk, mounts, the metadata DB) off the async workers.
pub async fn blocking<T, F>(f: F) -> Result<T, TaskError>
where
    F: FnOnce() -> Result<T, TaskError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TaskError::Internal(format!("blocking task failed: {e}")))?
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
