//! Turning failures into one line for stderr, and exit codes.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use tonic::{Code, Status};

/// Ends the program with `code` and no further message (what went wrong was
/// already printed, or the user interrupted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit(pub u8);

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl StdError for Exit {}

/// Exit status after Ctrl-C, as a shell reports a SIGINT death.
pub const INTERRUPTED: u8 = 130;
/// Exit status when stdout was closed under us, as a shell reports a SIGPIPE death.
pub const BROKEN_PIPE: u8 = 141;

/// What an error means to the user: a message for stderr (if any) and an exit code.
pub fn report(err: &anyhow::Error) -> (Option<String>, u8) {
    for cause in err.chain() {
        if let Some(exit) = cause.downcast_ref::<Exit>() {
            return (None, exit.0);
        }
        if let Some(e) = cause.downcast_ref::<io::Error>() {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return (None, BROKEN_PIPE);
            }
        }
    }
    (Some(render(err)), 1)
}

/// Joins the error chain with ": ", rendering gRPC statuses by their message
/// and dropping links that repeat what is already said.
pub fn render(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let part = match cause.downcast_ref::<Status>() {
            Some(status) => status_message(status),
            None => io_message(cause),
        };
        let part = part.trim();
        if part.is_empty() || out.contains(part) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(part);
    }
    out
}

/// The daemon's message names the object and the cause, so it stands alone;
/// the code is only a fallback when the message is empty.
pub fn status_message(status: &Status) -> String {
    let msg = status.message().trim();
    if !msg.is_empty() {
        return msg.to_string();
    }
    match status.code() {
        Code::Unimplemented => {
            "berthd does not support this request (is it older than berthctl?)".to_string()
        }
        Code::Unavailable => "berthd is unavailable".to_string(),
        code => code.description().to_string(),
    }
}

/// The message of the innermost error, e.g. "no such file or directory" for a
/// missing socket, without the transport layers wrapped around it.
pub fn root_cause_message(err: &(dyn StdError + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    io_message(cur)
}

/// Displays an error; io errors lose the "(os error N)" suffix and their
/// capital, so they read well in the middle of a sentence.
fn io_message(err: &(dyn StdError + 'static)) -> String {
    let text = err.to_string();
    if err.downcast_ref::<io::Error>().is_none() {
        return text;
    }
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        // Only lower a capital followed by lower case, so acronyms stay.
        Some(c) if c.is_uppercase() && chars.next().is_some_and(|n| n.is_lowercase()) => c
            .to_lowercase()
            .chain(text[c.len_utf8()..].chars())
            .collect(),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn status_renders_message_alone() {
        let err = anyhow::Error::new(Status::not_found(
            "image \"docker.io/library/nope:latest\" not found",
        ));
        assert_eq!(
            report(&err),
            (
                Some("image \"docker.io/library/nope:latest\" not found".into()),
                1
            )
        );
    }

    #[test]
    fn empty_status_message_falls_back_to_code() {
        let err = anyhow::Error::new(Status::unimplemented(""));
        assert!(render(&err).contains("does not support"));
        let err = anyhow::Error::new(Status::new(Code::PermissionDenied, ""));
        assert_eq!(render(&err), Code::PermissionDenied.description());
    }

    #[test]
    fn context_is_joined_and_io_cleaned() {
        let io = io::Error::from_raw_os_error(2);
        let err = anyhow::Error::new(io).context("cannot open out.tar");
        assert_eq!(
            render(&err),
            "cannot open out.tar: no such file or directory"
        );
    }

    #[test]
    fn repeated_links_are_dropped() {
        let err = anyhow::anyhow!("transport error").context("transport error");
        assert_eq!(render(&err), "transport error");
    }

    #[test]
    fn exit_and_broken_pipe_are_silent() {
        let err = anyhow::Error::new(Exit(INTERRUPTED));
        assert_eq!(report(&err), (None, 130));
        let err: anyhow::Error = Err::<(), _>(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("writing")
            .unwrap_err();
        assert_eq!(report(&err), (None, BROKEN_PIPE));
    }

    #[test]
    fn root_cause_is_innermost() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("transport error")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(io::Error::from_raw_os_error(111));
        assert_eq!(root_cause_message(&e), "connection refused");
        let e = Outer(io::Error::from_raw_os_error(13));
        assert_eq!(root_cause_message(&e), "permission denied");
    }
}
