//! Errors of the image service, each naming the image and the cause, with the
//! gRPC code a client should see.

use crate::error::Kind;
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
    /// Still used by an image or a running pull: remove that first.
    #[error("{0}")]
    InUse(String),
    /// The outcome of a pull this caller joined (another caller started it):
    /// the kind and message it ended with.
    #[error("{message}")]
    Joined { kind: Kind, message: String },
    #[error("metadata: {0}")]
    Meta(#[from] crate::metadata::MetaError),
    #[error("{0}")]
    Internal(String),
}

impl ImageError {
    /// The code family, from the one map in [`crate::error`] for typed causes.
    pub fn kind(&self) -> Kind {
        match self {
            ImageError::InvalidArgument(_) => Kind::InvalidArgument,
            ImageError::NotFound(_) => Kind::NotFound,
            ImageError::Registry { source, .. } => Kind::from(source),
            ImageError::UnsupportedMediaType { .. } => Kind::FailedPrecondition,
            ImageError::BadImage { .. } => Kind::DataLoss,
            ImageError::NoSpace { .. } | ImageError::OverLimit { .. } => Kind::ResourceExhausted,
            ImageError::Content { source, .. } => Kind::from(source),
            ImageError::Snapshot { source, .. } => Kind::from(source),
            ImageError::Cancelled { .. } => Kind::Cancelled,
            ImageError::InUse(_) => Kind::FailedPrecondition,
            ImageError::Joined { kind, .. } => *kind,
            ImageError::Meta(e) => Kind::from(e),
            ImageError::Internal(_) => Kind::Internal,
        }
    }

    pub fn code(&self) -> tonic::Code {
        self.kind().code()
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
        crate::error::status(e.kind(), &e.to_string())
    }
}

/// A registry's answer, once for every path an image error takes.
impl From<&RegistryError> for Kind {
    fn from(e: &RegistryError) -> Kind {
        match e {
            RegistryError::Unauthorized { .. } => Kind::Unauthenticated,
            RegistryError::NotFound { .. } => Kind::NotFound,
            RegistryError::Timeout { .. } | RegistryError::TooSlow { .. } => Kind::DeadlineExceeded,
            RegistryError::Connect { .. } => Kind::Unavailable,
            RegistryError::Tls { .. } => Kind::FailedPrecondition,
            RegistryError::Config(_) => Kind::FailedPrecondition,
            // A document past its configured bound, like every limit.
            RegistryError::TokenTooLarge { .. } | RegistryError::TooLarge { .. } => {
                Kind::ResourceExhausted
            }
            RegistryError::Overlong { .. }
            | RegistryError::DigestMismatch { .. }
            | RegistryError::Protocol { .. } => Kind::DataLoss,
            RegistryError::Status { status, .. } if status.is_server_error() => Kind::Unavailable,
            RegistryError::Status { .. } => Kind::FailedPrecondition,
        }
    }
}

/// [`crate::error::blocking`] with this module's error, so callers need
/// not name it.
pub async fn blocking<T, F>(f: F) -> Result<T, ImageError>
where
    F: FnOnce() -> Result<T, ImageError> + Send + 'static,
    T: Send + 'static,
{
    crate::error::blocking(f).await
}

impl From<tokio::task::JoinError> for ImageError {
    fn from(e: tokio::task::JoinError) -> Self {
        ImageError::Internal(format!("blocking task failed: {e}"))
    }
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
