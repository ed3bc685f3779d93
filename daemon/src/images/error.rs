//! Errors of the image service, each naming the image and the cause, with the
//! gRPC code a client should see.

use snapshotter::is_no_space;

use berth_distribution::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("image {0}: not found")]
    NotFound(String),
    /// The registry error's own message already names the image.
    #[error("{source}")]
    Registry {
        image: String,
        #[source]
        source: RegistryError,
    },
    #[error("{image}: unsupported media type {media_type} for {what}")]
    UnsupportedMediaType {
        image: String,
        what: String,
        media_type: String,
    },
    #[error("{image}: {reason}")]
    BadImage { image: String, reason: String },
    /// The node's disk filled up while the image was written, or a blob
    /// cannot fit in what is free.
    #[error("{image}: {reason}")]
    NoSpace { image: String, reason: String },
    /// Larger than a configured limit: refused before it is fetched.
    #[error("{image}: {reason}")]
    OverLimit { image: String, reason: String },
    #[error("{image}: {source}")]
    Content {
        image: String,
        #[source]
        source: content_store::Error,
    },
    #[error("{image}: {source}")]
    Snapshot {
        image: String,
        #[source]
        source: snapshotter::Error,
    },
    #[error("{image}: pull cancelled")]
    Cancelled { image: String },
    #[error("metadata: {0}")]
    Meta(#[from] crate::metadata::MetaError),
    #[error("{0}")]
    Internal(String),
}

impl ImageError {
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ImageError::InvalidArgument(_) => Code::InvalidArgument,
            ImageError::NotFound(_) => Code::NotFound,
            ImageError::Registry { source, .. } => match source {
                RegistryError::Unauthorized { .. } => Code::Unauthenticated,
                RegistryError::NotFound { .. } => Code::NotFound,
                RegistryError::Timeout { .. } => Code::DeadlineExceeded,
                RegistryError::Connect { .. } => Code::Unavailable,
                RegistryError::Tls { .. } => Code::FailedPrecondition,
                RegistryError::Config(_) => Code::FailedPrecondition,
                // A document past its configured bound, like every limit.
                RegistryError::TokenTooLarge { .. } | RegistryError::TooLarge { .. } => {
                    Code::ResourceExhausted
                }
                RegistryError::Overlong { .. }
                | RegistryError::DigestMismatch { .. }
                | RegistryError::Protocol { .. } => Code::DataLoss,
                RegistryError::Status { status, .. } if status.is_server_error() => {
                    Code::Unavailable
                }
                RegistryError::Status { .. } => Code::FailedPrecondition,
            },
            ImageError::UnsupportedMediaType { .. } => Code::FailedPrecondition,
            ImageError::BadImage { .. } => Code::DataLoss,
            ImageError::NoSpace { .. } | ImageError::OverLimit { .. } => Code::ResourceExhausted,
            ImageError::Content { source, .. } => match source {
                content_store::Error::DigestMismatch { .. }
                | content_store::Error::SizeMismatch { .. } => Code::DataLoss,
                content_store::Error::NotFound { .. } => Code::NotFound,
                content_store::Error::InvalidDigest { .. } => Code::InvalidArgument,
                content_store::Error::Io { source, .. } if is_no_space(source) => {
                    Code::ResourceExhausted
                }
                _ => Code::Internal,
            },
            ImageError::Snapshot { source, .. } => match source {
                snapshotter::Error::NotFound { .. } => Code::NotFound,
                snapshotter::Error::AlreadyExists { .. } => Code::AlreadyExists,
                snapshotter::Error::FailedPrecondition { .. } => Code::FailedPrecondition,
                snapshotter::Error::InvalidArgument { .. } => Code::InvalidArgument,
                e if e.is_no_space() => Code::ResourceExhausted,
                _ => Code::Internal,
            },
            ImageError::Cancelled { .. } => Code::Cancelled,
            ImageError::Meta(e) if e.is_no_space() => Code::ResourceExhausted,
            ImageError::Meta(_) | ImageError::Internal(_) => Code::Internal,
        }
    }

    pub fn content(image: &str) -> impl FnOnce(content_store::Error) -> ImageError + '_ {
        move |source| ImageError::Content {
            image: image.to_string(),
            source,
        }
    }
}

impl From<ImageError> for tonic::Status {
    fn from(e: ImageError) -> tonic::Status {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// Runs blocking store work off the async workers.
pub async fn blocking<T, F>(f: F) -> Result<T, ImageError>
where
    F: FnOnce() -> Result<T, ImageError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Internal(format!("blocking task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_resource_exhausted() {
        let full = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = ImageError::Content {
            image: "busybox".into(),
            source: content_store::Error::Io {
                context: "writing".into(),
                path: "/x".into(),
                source: full(),
            },
        };
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        let e = ImageError::Snapshot {
            image: "busybox".into(),
            source: snapshotter::Error::Io {
                context: "applying".into(),
                path: "/x".into(),
                source: full(),
            },
        };
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        let e = ImageError::Content {
            image: "busybox".into(),
            source: content_store::Error::Io {
                context: "writing".into(),
                path: "/x".into(),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            },
        };
        assert_eq!(e.code(), tonic::Code::Internal);
    }

    #[test]
    fn limits_are_resource_exhausted_and_an_overlong_blob_data_loss() {
        let e = ImageError::OverLimit {
            image: "busybox".into(),
            reason: "blob sha256:x declares 2 bytes, more than pull.max_blob_bytes (1)".into(),
        };
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        let e = ImageError::Registry {
            image: "busybox".into(),
            source: RegistryError::TokenTooLarge {
                what: "busybox".into(),
                realm: "\"http://auth/token\"".into(),
                limit: 1 << 20,
            },
        };
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        let msg = e.to_string();
        assert!(
            msg.contains("token response from \"http://auth/token\"") && !msg.contains("manifest"),
            "{msg}"
        );
        let e = ImageError::Registry {
            image: "busybox".into(),
            source: RegistryError::Overlong {
                host: "r".into(),
                what: "busybox: blob sha256:x".into(),
                declared: 5,
            },
        };
        assert_eq!(e.code(), tonic::Code::DataLoss);
        assert!(e.to_string().contains("more than the 5 bytes"), "{e}");
        let e = ImageError::Registry {
            image: "busybox".into(),
            source: RegistryError::TooLarge {
                what: "busybox: manifest".into(),
                limit: 4 << 20,
            },
        };
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    }
}
