//! The task service's one error type, and its one conversion to a ttrpc status.
//!
//! Codes follow containerd-shim-runc-v2: NotFound for an unknown task or exec (and
//! for a signal to a process that already finished), AlreadyExists for a duplicate
//! id, FailedPrecondition for a verb the process's state does not allow,
//! InvalidArgument for a bad request. A runtime failure keeps the kind it was
//! classified as; one that is none of those is Unknown, as containerd's shim
//! answers for a failed runc command.

use ttrpc::Code;

use crate::runtime::{RuntimeError, RuntimeErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The task or process is in a state that does not allow the request.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The caller's connection went away.
    #[error("{0}")]
    Cancelled(String),
    /// The shim's own fault (files, stdio, pid files).
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
            Error::Cancelled(_) => Code::CANCELLED,
            Error::Internal(_) => Code::INTERNAL,
            Error::Runtime(e) => match e.kind {
                RuntimeErrorKind::NotFound => Code::NOT_FOUND,
                RuntimeErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
                RuntimeErrorKind::WrongState => Code::FAILED_PRECONDITION,
                RuntimeErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
                RuntimeErrorKind::Unavailable => Code::UNAVAILABLE,
                RuntimeErrorKind::Failed => Code::UNKNOWN,
            },
        }
    }

    /// An stdio setup failure: a bad URI is the caller's, anything else ours.
    pub fn stdio(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            Error::InvalidArgument(e.to_string())
        } else {
            Error::Internal(format!("stdio: {e}"))
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: Error) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn each_kind_has_its_code() {
        let cases = [
            (
                Error::NotFound("task \"a\" not found".into()),
                Code::NOT_FOUND,
            ),
            (Error::AlreadyExists("x".into()), Code::ALREADY_EXISTS),
            (
                Error::FailedPrecondition("x".into()),
                Code::FAILED_PRECONDITION,
            ),
            (Error::InvalidArgument("x".into()), Code::INVALID_ARGUMENT),
            (Error::Unimplemented("x".into()), Code::UNIMPLEMENTED),
            (Error::DeadlineExceeded("x".into()), Code::DEADLINE_EXCEEDED),
            (Error::Cancelled("x".into()), Code::CANCELLED),
            (Error::Internal("x".into()), Code::INTERNAL),
        ];
        for (e, code) in cases {
            assert_eq!(status(e).0, code);
        }
        let (code, msg) = status(Error::NotFound("task \"a\" not found".into()));
        assert_eq!(
            (code, msg.as_str()),
            (Code::NOT_FOUND, "task \"a\" not found")
        );
    }

    #[test]
    fn runtime_errors_keep_their_kind_on_the_wire() {
        let rt = |msg: &str| Error::from(RuntimeError::classify("runc x", msg, 1));
        assert_eq!(rt("container does not exist").code(), Code::NOT_FOUND);
        assert_eq!(
            rt("container with id exists: c").code(),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            rt("container not running").code(),
            Code::FAILED_PRECONDITION
        );
        assert_eq!(rt("unknown signal \"X\"").code(), Code::INVALID_ARGUMENT);
        assert_eq!(rt("exec format error").code(), Code::UNKNOWN);
        let e = RuntimeError::spawn("nope start", &std::io::ErrorKind::NotFound.into());
        assert_eq!(Error::from(e).code(), Code::UNAVAILABLE);
        let (_, msg) = status(rt("container not running"));
        assert_eq!(msg, "runc x: container not running");
    }

    #[test]
    fn stdio_errors() {
        let bad = std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad uri");
        assert_eq!(Error::stdio(bad).code(), Code::INVALID_ARGUMENT);
        let full = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(Error::stdio(full).code(), Code::INTERNAL);
    }
}
