//! The CRI's typed error: what failed (the object: "container web", "pod
//! sandbox 3f2a...", "image busybox"), why (the cause, typed where it comes
//! from a typed error), and the gRPC code family (its [`Kind`]). The CRI's
//! methods return it; the gRPC service layers turn it into a `tonic::Status`
//! through [`crate::error::status`], the one conversion, which also bounds
//! and escapes the message.
//!
//! A typed cause brings its own kind (the map in [`crate::error`]), so a full
//! disk, a missing snapshot or a dead shim answers the same code whether it
//! surfaced through the image service, the task service or the CRI.

use std::fmt;

use crate::error::Kind;
use crate::images::ImageError;
use crate::metadata::MetaError;
use crate::tasks::TaskError;

use super::spec::SpecError;

pub type Result<T, E = CriError> = std::result::Result<T, E>;

/// Why a CRI call failed.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// Said in words: the CRI's own checks (the kind is the caller's).
    #[error("{0}")]
    Message(String),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Snapshot(#[from] snapshotter::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A CRI error its caller put in context ("removing its pause container").
    #[error(transparent)]
    Cri(Box<CriError>),
    /// Any other typed error (CNI, namespace pinning, a worker thread), kept
    /// as the source; its kind is the caller's.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl Cause {
    /// A typed error with no kind of its own in [`crate::error`].
    pub fn other(e: impl std::error::Error + Send + Sync + 'static) -> Cause {
        Cause::Other(Box::new(e))
    }
}

impl From<String> for Cause {
    fn from(s: String) -> Cause {
        Cause::Message(s)
    }
}

impl From<&str> for Cause {
    fn from(s: &str) -> Cause {
        Cause::Message(s.to_string())
    }
}

impl Cause {
    /// The kind a typed cause maps to; words alone are Internal unless the
    /// caller says otherwise.
    pub fn kind(&self) -> Kind {
        match self {
            Cause::Message(_) | Cause::Other(_) => Kind::Internal,
            Cause::Task(e) => e.kind(),
            Cause::Image(e) => e.kind(),
            Cause::Meta(e) => Kind::from(e),
            Cause::Snapshot(e) => Kind::from(e),
            Cause::Io(e) => Kind::from(e),
            Cause::Spec(e) => match e {
                SpecError::InvalidArgument(_) => Kind::InvalidArgument,
                SpecError::NotFound(_) => Kind::NotFound,
                SpecError::Internal(_) => Kind::Internal,
            },
            Cause::Cri(e) => e.kind,
        }
    }
}

/// A failed CRI call: `<object>: <cause>`, answered with `kind`'s code.
#[derive(Debug)]
pub struct CriError {
    kind: Kind,
    object: String,
    /// Boxed: the typed causes are large, and the error travels in every
    /// `Result` of the CRI.
    cause: Box<Cause>,
}

impl fmt::Display for CriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.object.is_empty() {
            write!(f, "{}", self.cause)
        } else {
            write!(f, "{}: {}", self.object, self.cause)
        }
    }
}

impl std::error::Error for CriError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.cause.as_ref())
    }
}

impl CriError {
    pub fn new(kind: Kind, object: impl Into<String>, cause: impl Into<Cause>) -> CriError {
        CriError {
            kind,
            object: object.into(),
            cause: Box::new(cause.into()),
        }
    }

    /// `object` failed because of a typed `cause`, with the code the cause
    /// maps to.
    pub fn of(object: impl Into<String>, cause: impl Into<Cause>) -> CriError {
        let cause = cause.into();
        CriError {
            kind: cause.kind(),
            object: object.into(),
            cause: Box::new(cause),
        }
    }

    /// A typed error as `object`'s failure, for `map_err`.
    pub fn with<E: Into<Cause>>(object: impl Into<String>) -> impl FnOnce(E) -> CriError {
        let object = object.into();
        move |e| CriError::of(object, e)
    }

    pub fn invalid(object: impl Into<String>, why: impl Into<Cause>) -> CriError {
        CriError::new(Kind::InvalidArgument, object, why)
    }

    /// `<object>: not found`.
    pub fn not_found(object: impl Into<String>) -> CriError {
        CriError::new(Kind::NotFound, object, "not found")
    }

    pub fn already_exists(object: impl Into<String>, why: impl Into<Cause>) -> CriError {
        CriError::new(Kind::AlreadyExists, object, why)
    }

    pub fn failed_precondition(object: impl Into<String>, why: impl Into<Cause>) -> CriError {
        CriError::new(Kind::FailedPrecondition, object, why)
    }

    pub fn resource_exhausted(object: impl Into<String>, why: impl Into<Cause>) -> CriError {
        CriError::new(Kind::ResourceExhausted, object, why)
    }

    pub fn deadline_exceeded(object: impl Into<String>, why: impl Into<Cause>) -> CriError {
        CriError::new(Kind::DeadlineExceeded, object, why)
    }

    pub fn unavailable(object: impl Into<String>, why: impl Into<Cause>) -> CriError {
        CriError::new(Kind::Unavailable, object, why)
    }

    pub fn unimplemented(object: impl Into<String>, why: impl Into<Cause>) -> CriError {
        CriError::new(Kind::Unimplemented, object, why)
    }

    pub fn internal(object: impl Into<String>, why: impl Into<Cause>) -> CriError {
        CriError::new(Kind::Internal, object, why)
    }

    /// This error as the cause of a failure of `object` (same kind).
    pub fn context(self, object: impl Into<String>) -> CriError {
        CriError {
            kind: self.kind,
            object: object.into(),
            cause: Box::new(Cause::Cri(Box::new(self))),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn code(&self) -> tonic::Code {
        self.kind.code()
    }

    pub fn cause(&self) -> &Cause {
        &self.cause
    }
}

impl From<CriError> for tonic::Status {
    fn from(e: CriError) -> tonic::Status {
        crate::error::status(e.kind, &e.to_string())
    }
}

/// The typed errors of the services below: their messages already name the
/// object.
macro_rules! from_typed {
    ($($t:ty),*) => {$(
        impl From<$t> for CriError {
            fn from(e: $t) -> CriError {
                CriError::of(String::new(), e)
            }
        }
    )*};
}
from_typed!(TaskError, ImageError, MetaError, SpecError);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::{RpcCode, ShimError};
    use tonic::Code;

    fn io(errno: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno)
    }

    fn snap_io(errno: i32) -> snapshotter::Error {
        snapshotter::Error::Io {
            context: "applying".into(),
            path: "/x".into(),
            source: io(errno),
        }
    }

    fn content_io(errno: i32) -> content_store::Error {
        content_store::Error::Io {
            context: "writing".into(),
            path: "/x".into(),
            source: io(errno),
        }
    }

    /// Each cause, the code it must yield, and the error it arrives as on
    /// each path: through the image service, the task service, and the CRI
    /// (directly, and wrapping the service's error). Every path must agree.
    #[test]
    fn each_cause_has_one_code_on_every_path() {
        let snapshot_cases: Vec<(fn() -> snapshotter::Error, Code)> = vec![
            (
                || snapshotter::Error::NotFound { key: "k".into() },
                Code::NotFound,
            ),
            (
                || snapshotter::Error::AlreadyExists { key: "k".into() },
                Code::AlreadyExists,
            ),
            (
                || snapshotter::Error::FailedPrecondition {
                    key: "k".into(),
                    reason: "has children".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                || snapshotter::Error::InvalidArgument {
                    reason: "empty key".into(),
                },
                Code::InvalidArgument,
            ),
            (|| snap_io(libc::ENOSPC), Code::ResourceExhausted),
            (|| snap_io(libc::EIO), Code::Internal),
        ];
        for (make, want) in snapshot_cases {
            let paths = [
                ("direct", Kind::from(&make()).code()),
                (
                    "images",
                    tonic::Status::from(ImageError::Snapshot {
                        image: "busybox".into(),
                        source: make(),
                    })
                    .code(),
                ),
                (
                    "tasks",
                    tonic::Status::from(TaskError::Snapshot {
                        context: "preparing the rootfs of c".into(),
                        source: make(),
                    })
                    .code(),
                ),
                (
                    "cri",
                    tonic::Status::from(CriError::of("container c", make())).code(),
                ),
                (
                    "cri(tasks)",
                    tonic::Status::from(CriError::from(TaskError::Snapshot {
                        context: "c".into(),
                        source: make(),
                    }))
                    .code(),
                ),
                (
                    "cri(tasks(images))",
                    tonic::Status::from(CriError::from(TaskError::Image(ImageError::Snapshot {
                        image: "busybox".into(),
                        source: make(),
                    })))
                    .code(),
                ),
            ];
            for (path, got) in paths {
                assert_eq!(got, want, "{} through {path}", make());
            }
        }

        let content_cases: Vec<(fn() -> content_store::Error, Code)> = vec![
            (
                || content_store::Error::InvalidDigest {
                    input: "x".into(),
                    reason: "no algorithm",
                },
                Code::InvalidArgument,
            ),
            (
                || content_store::Error::Locked {
                    reference: "r".into(),
                },
                Code::Unavailable,
            ),
            (|| content_io(libc::ENOSPC), Code::ResourceExhausted),
            (|| content_io(libc::EDQUOT), Code::ResourceExhausted),
            (|| content_io(libc::EIO), Code::Internal),
        ];
        for (make, want) in content_cases {
            let image = || ImageError::Content {
                image: "busybox".into(),
                source: make(),
            };
            let paths = [
                ("direct", Kind::from(&make()).code()),
                ("images", tonic::Status::from(image()).code()),
                (
                    "tasks(images)",
                    tonic::Status::from(TaskError::Image(image())).code(),
                ),
                (
                    "cri(images)",
                    tonic::Status::from(CriError::from(image())).code(),
                ),
            ];
            for (path, got) in paths {
                assert_eq!(got, want, "{} through {path}", make());
            }
        }

        let shim_cases: Vec<(fn() -> ShimError, Code)> = vec![
            (
                || ShimError::Rpc {
                    method: "Start",
                    code: RpcCode::NotFound,
                    message: "no such task".into(),
                },
                Code::NotFound,
            ),
            (
                || ShimError::Rpc {
                    method: "Create",
                    code: RpcCode::Other(2),
                    message: "runc create failed".into(),
                },
                Code::Internal,
            ),
            (
                || ShimError::Timeout {
                    method: "Kill",
                    timeout: std::time::Duration::from_secs(5),
                },
                Code::DeadlineExceeded,
            ),
            (
                || ShimError::Transport {
                    method: "Wait",
                    message: "closed".into(),
                },
                Code::Unavailable,
            ),
            (
                || ShimError::Binary("berth-shim not found".into()),
                Code::FailedPrecondition,
            ),
        ];
        for (make, want) in shim_cases {
            let task = || TaskError::shim("starting container c")(make());
            let paths = [
                ("direct", Kind::from(&make()).code()),
                ("tasks", tonic::Status::from(task()).code()),
                (
                    "cri(tasks)",
                    tonic::Status::from(CriError::from(task())).code(),
                ),
                (
                    "cri(context)",
                    tonic::Status::from(CriError::from(task()).context("pod p")).code(),
                ),
            ];
            for (path, got) in paths {
                assert_eq!(got, want, "{} through {path}", make());
            }
        }

        // Plain I/O and the metadata DB: a full disk is ResourceExhausted.
        let meta_full = || MetaError::Op {
            op: "write",
            bucket: "tasks",
            source: sled::Error::Io(io(libc::ENOSPC)),
        };
        let paths = [
            ("direct", Kind::from(&meta_full()).code()),
            (
                "images",
                tonic::Status::from(ImageError::Meta(meta_full())).code(),
            ),
            (
                "tasks",
                tonic::Status::from(TaskError::Meta(meta_full())).code(),
            ),
            (
                "cri",
                tonic::Status::from(CriError::from(meta_full())).code(),
            ),
            (
                "tasks(io)",
                tonic::Status::from(TaskError::io("writing the log of c")(io(libc::ENOSPC))).code(),
            ),
            (
                "cri(io)",
                tonic::Status::from(CriError::of("pod p", io(libc::ENOSPC))).code(),
            ),
        ];
        for (path, got) in paths {
            assert_eq!(got, Code::ResourceExhausted, "a full disk through {path}");
        }
    }

    #[test]
    fn messages_name_the_object_and_the_cause() {
        let e = CriError::of(
            "container web",
            snapshotter::Error::NotFound { key: "k".into() },
        );
        assert_eq!(e.to_string(), "container web: snapshot \"k\" not found");
        let e = CriError::not_found("pod sandbox 3f2a");
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.to_string(), "pod sandbox 3f2a: not found");
        let e = CriError::failed_precondition("container web", "pod sandbox p is not ready")
            .context("StartContainer");
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(
            e.to_string(),
            "StartContainer: container web: pod sandbox p is not ready"
        );
        // A typed error with no kind of its own keeps its type and takes the
        // caller's kind.
        let e = CriError::failed_precondition(
            "pod p: setting up its network",
            Cause::other(io(libc::EHOSTUNREACH)),
        );
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(
            matches!(e.cause(), Cause::Other(b) if b.downcast_ref::<std::io::Error>().is_some()),
            "{e:?}"
        );
        // Words alone are Internal only when the caller says so.
        assert_eq!(CriError::of("x", "boom").code(), Code::Internal);
        let s = tonic::Status::from(CriError::invalid("container \u{1b}[31m", "bad"));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(!s.message().contains('\u{1b}'), "{}", s.message());
    }
}
