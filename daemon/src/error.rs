//! The one map from a failure's cause to the gRPC code a client sees, and the
//! one place a message becomes a `tonic::Status` (issue 15).
//!
//! Each typed error of the libraries and services below the gRPC layers (the
//! content store, the snapshotter, the metadata DB, the shim client, plain
//! I/O) maps to a [`Kind`] here, once: the image service, the task service
//! and the CRI all ask this map, so the same cause yields the same code
//! whichever path it took.

use crate::metadata::MetaError;
use crate::shim::{RpcCode, ShimError};

/// The gRPC code family of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    /// A full disk, or a configured limit.
    ResourceExhausted,
    DeadlineExceeded,
    /// Retrying later may work (a shim or registry that is gone or busy).
    Unavailable,
    Unauthenticated,
    Unimplemented,
    Cancelled,
    /// Data that does not match what it claims (digest, size) or is corrupt.
    DataLoss,
    Internal,
}

impl Kind {
    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Kind::InvalidArgument => Code::InvalidArgument,
            Kind::NotFound => Code::NotFound,
            Kind::AlreadyExists => Code::AlreadyExists,
            Kind::FailedPrecondition => Code::FailedPrecondition,
            Kind::ResourceExhausted => Code::ResourceExhausted,
            Kind::DeadlineExceeded => Code::DeadlineExceeded,
            Kind::Unavailable => Code::Unavailable,
            Kind::Unauthenticated => Code::Unauthenticated,
            Kind::Unimplemented => Code::Unimplemented,
            Kind::Cancelled => Code::Cancelled,
            Kind::DataLoss => Code::DataLoss,
            Kind::Internal => Code::Internal,
        }
    }
}

/// The longest message a client is sent: it rides in an HTTP/2 header
/// (`grpc-message`), and a shim's or registry's error text has no bound of
/// its own.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// `message` as a client may see it: control characters escaped (a terminal
/// showing crictl's error must not obey them) and at most
/// [`MAX_MESSAGE_BYTES`], the full length named when cut.
pub fn bounded(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_BYTES));
    for c in message.chars() {
        if out.len() >= MAX_MESSAGE_BYTES {
            out.push_str(&format!("... ({} bytes)", message.len()));
            return out;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The one place a failure becomes a `tonic::Status`.
pub fn status(kind: Kind, message: &str) -> tonic::Status {
    tonic::Status::new(kind.code(), bounded(message))
}

/// A full disk (or quota) is ResourceExhausted; any other I/O failure is the
/// daemon's own problem.
impl From<&std::io::Error> for Kind {
    fn from(e: &std::io::Error) -> Kind {
        if snapshotter::is_no_space(e) {
            Kind::ResourceExhausted
        } else {
            Kind::Internal
        }
    }
}

impl From<&snapshotter::Error> for Kind {
    fn from(e: &snapshotter::Error) -> Kind {
        use snapshotter::Error as E;
        match e {
            E::NotFound { .. } => Kind::NotFound,
            E::AlreadyExists { .. } => Kind::AlreadyExists,
            E::FailedPrecondition { .. } => Kind::FailedPrecondition,
            E::InvalidArgument { .. } => Kind::InvalidArgument,
            e if e.is_no_space() => Kind::ResourceExhausted,
            // Io, Metadata, and whatever the snapshotter adds later.
            _ => Kind::Internal,
        }
    }
}

impl From<&content_store::Error> for Kind {
    fn from(e: &content_store::Error) -> Kind {
        use content_store::Error as E;
        match e {
            E::NotFound { .. } | E::IngestNotFound { .. } => Kind::NotFound,
            E::AlreadyExists { .. } => Kind::AlreadyExists,
            // Another writer has it: retry once it is done (containerd's answer).
            E::Locked { .. } => Kind::Unavailable,
            E::DigestMismatch { .. } | E::SizeMismatch { .. } => Kind::DataLoss,
            E::TooLarge { .. } => Kind::ResourceExhausted,
            E::InvalidDigest { .. } => Kind::InvalidArgument,
            E::Io { source, .. } => Kind::from(source),
        }
    }
}

impl From<&MetaError> for Kind {
    fn from(e: &MetaError) -> Kind {
        if e.is_no_space() {
            Kind::ResourceExhausted
        } else {
            Kind::Internal
        }
    }
}

impl From<RpcCode> for Kind {
    fn from(c: RpcCode) -> Kind {
        match c {
            RpcCode::NotFound => Kind::NotFound,
            RpcCode::AlreadyExists => Kind::AlreadyExists,
            RpcCode::FailedPrecondition => Kind::FailedPrecondition,
            RpcCode::InvalidArgument => Kind::InvalidArgument,
            RpcCode::DeadlineExceeded => Kind::DeadlineExceeded,
            RpcCode::Unavailable => Kind::Unavailable,
            RpcCode::Unimplemented => Kind::Unimplemented,
            RpcCode::Other(_) => Kind::Internal,
        }
    }
}

impl From<&ShimError> for Kind {
    fn from(e: &ShimError) -> Kind {
        match e {
            ShimError::Rpc { code, .. } => Kind::from(*code),
            ShimError::Timeout { .. } => Kind::DeadlineExceeded,
            // The shim is gone or going: a retry (after recovery) may work.
            ShimError::Transport { .. } | ShimError::Connect { .. } => Kind::Unavailable,
            // The shim binary is missing or does not start: the node's setup.
            ShimError::Binary(_) => Kind::FailedPrecondition,
            ShimError::Protocol { .. } => Kind::Internal,
        }
    }
}

/// Runs blocking work (disk, mounts, the metadata DB) off the async workers;
/// a panic in it is the caller's internal error.
pub(crate) async fn blocking<T, E, F>(f: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<tokio::task::JoinError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        crate::metadata::begin_unit();
        f()
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_bounded_and_escaped() {
        assert_eq!(bounded("pod p: not found"), "pod p: not found");
        assert_eq!(bounded("a\u{1b}[31mb\nc"), "a\\u{1b}[31mb\\nc");
        let long = "é".repeat(10_000);
        let b = bounded(&long);
        assert!(b.len() < MAX_MESSAGE_BYTES + 32, "{}", b.len());
        assert!(b.ends_with("... (20000 bytes)"), "{}", &b[b.len() - 40..]);
        let s = status(Kind::NotFound, "x\ty");
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message(), "x\\ty");
    }
}
