//! The OCI runtime as the task state machine sees it: a trait (runc's CLI in
//! production, an in-memory fake in unit tests) and its typed errors.
//!
//! A runtime failure is classified once, where the command fails
//! ([`RuntimeError::classify`]), so that callers match on a kind instead of on
//! substrings, and the kind becomes a ttrpc code in one place (`crate::error`).

use std::path::Path;
use std::process::Stdio;

#[cfg(test)]
pub mod fake;

/// What went wrong, as far as a client can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeErrorKind {
    /// The runtime does not know the container.
    NotFound,
    /// A container with that id exists already.
    AlreadyExists,
    /// The container is not in a state that allows the operation (not running,
    /// stopped, paused, not paused).
    WrongState,
    /// The runtime rejected an argument (a signal, an id, a resources file).
    InvalidArgument,
    /// The runtime could not be run at all (binary missing, not executable).
    Unavailable,
    /// The runtime ran and failed for another reason (a bad spec, an exec that
    /// cannot find its binary, a kernel error).
    Failed,
}

/// A failed runtime command: its kind and the runtime's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct RuntimeError {
    pub kind: RuntimeErrorKind,
    pub msg: String,
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

impl RuntimeError {
    pub fn new(kind: RuntimeErrorKind, msg: impl Into<String>) -> Self {
        RuntimeError {
            kind,
            msg: msg.into(),
        }
    }

    /// The runtime binary could not be started.
    pub fn spawn(what: &str, e: &std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                RuntimeErrorKind::Unavailable
            }
            _ => RuntimeErrorKind::Failed,
        };
        RuntimeError::new(kind, format!("run {what}: {e}"))
    }

    /// Classifies a failed command from what runc (or crun) printed: `what` is the
    /// command (`runc start`), `msg` its error message (stderr, or the last error of
    /// its JSON log), `status` its exit status. The message is prefixed with `what`
    /// unless it already names it.
    pub fn classify(what: &str, msg: &str, status: u32) -> Self {
        let msg = msg.trim();
        let text = if msg.is_empty() {
            format!("{what}: exit status {status}")
        } else if msg.starts_with(what) {
            msg.to_string()
        } else {
            format!("{what}: {msg}")
        };
        RuntimeError::new(kind_of(msg), text)
    }

    /// The container is unknown to the runtime.
    pub fn is_not_found(&self) -> bool {
        self.kind == RuntimeErrorKind::NotFound
    }

    /// The container's init is not running (or the container is gone altogether).
    pub fn is_not_running(&self) -> bool {
        matches!(
            self.kind,
            RuntimeErrorKind::NotFound | RuntimeErrorKind::WrongState
        )
    }
}

/// The kind of a runtime error message. The patterns are runc's libcontainer errors
/// (`ErrNotExist`, `ErrExist`, `ErrNotRunning`, `ErrPaused`, ...), its CLI checks,
/// crun's equivalents, and the Go runtime's words for a signal to a dead process.
fn kind_of(msg: &str) -> RuntimeErrorKind {
    let m = msg.to_ascii_lowercase();
    let has = |pats: &[&str]| pats.iter().any(|p| m.contains(p));
    // crun's answer for an unknown container: its state file or directory is missing.
    if m.ends_with("no such file or directory")
        && (m.contains("/status`: ") || m.starts_with("cannot open directory"))
    {
        return RuntimeErrorKind::NotFound;
    }
    // Before "not found": `exec: "x": executable file not found in $PATH` is the
    // container's own fault, not an unknown container.
    if has(&["executable file not found", "no such file or directory"]) {
        return RuntimeErrorKind::Failed;
    }
    if has(&["container does not exist", "does not exist"]) {
        return RuntimeErrorKind::NotFound;
    }
    if has(&[
        "container with id exists",
        "container with given id already exists",
        "already exists",
    ]) {
        return RuntimeErrorKind::AlreadyExists;
    }
    if has(&[
        "container not running",
        "is not running",
        "process already finished",
        "no such process",
        "cannot start a container that has stopped",
        "cannot start an already running container",
        "cannot start a container in the",
        "cannot exec in a stopped container",
        "that is not stopped",
        "cannot exec in a paused container",
        "container paused",
        "container not paused",
        "container is paused",
        "container is not paused",
    ]) {
        return RuntimeErrorKind::WrongState;
    }
    if has(&[
        "unknown signal",
        "invalid signal",
        "invalid id format",
        "invalid container id format",
        "container id cannot be empty",
        "invalid argument",
    ]) {
        return RuntimeErrorKind::InvalidArgument;
    }
    RuntimeErrorKind::Failed
}

pub struct CreateOpts<'a> {
    pub bundle: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
}

pub struct ExecOpts<'a> {
    pub process_file: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    /// Where the runtime logs this exec's errors (one per exec: concurrent execs
    /// must not read each other's failures).
    pub log: &'a Path,
}

/// The container's stdio for `create`/`exec` (the runtime hands them to the process).
pub struct ProcStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

/// The OCI runtime's verbs on one container. `create` and `exec` write the new
/// process's pid into the pid file they are given.
pub trait OciRuntime: Send + Sync {
    fn create(&self, id: &str, opts: &CreateOpts, stdio: ProcStdio) -> Result<()>;
    fn start(&self, id: &str) -> Result<()>;
    /// Signals the init process (`all`: every process of the container).
    fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()>;
    fn delete(&self, id: &str, force: bool) -> Result<()>;
    fn exec(&self, id: &str, opts: &ExecOpts, stdio: ProcStdio) -> Result<()>;
    /// Applies an OCI `LinuxResources` JSON file.
    fn update(&self, id: &str, resources_file: &Path) -> Result<()>;
    fn pause(&self, id: &str) -> Result<()>;
    fn resume(&self, id: &str) -> Result<()>;
    /// Pids of every process in the container.
    fn ps(&self, id: &str) -> Result<Vec<u32>>;
    /// Signals one process the runtime started (an exec: `runc kill` only reaches
    /// init). ESRCH is `WrongState` (the process already finished).
    fn signal(&self, pid: u32, signal: i32) -> Result<()> {
        let sig = nix::sys::signal::Signal::try_from(signal).map_err(|_| {
            RuntimeError::new(
                RuntimeErrorKind::InvalidArgument,
                format!("invalid signal {signal}"),
            )
        })?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => Err(RuntimeError::new(
                RuntimeErrorKind::WrongState,
                format!("pid {pid}: process already finished"),
            )),
            Err(e) => Err(RuntimeError::new(
                RuntimeErrorKind::Failed,
                format!("kill pid {pid}: {e}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RuntimeErrorKind::*;

    /// Messages as runc 1.1.5 (Debian 12) and crun 1.8 print them, collected by
    /// driving them through each state; plus older runc's wording.
    #[test]
    fn real_runtime_messages_are_classified() {
        let cases: &[(&str, RuntimeErrorKind)] = &[
            ("container does not exist", NotFound),
            ("exec failed: container does not exist", NotFound),
            ("container `c1` does not exist", NotFound),
            (
                "error opening file `/run/berth/runc/k8s.io/c1/status`: No such file or directory",
                NotFound,
            ),
            (
                "cannot open directory '/run/berth/runc/k8s.io/c1': No such file or directory",
                NotFound,
            ),
            (
                "runc create failed: container with given ID already exists",
                AlreadyExists,
            ),
            ("container with id exists: c1", AlreadyExists),
            ("container not running", WrongState),
            ("container not paused", WrongState),
            ("cannot start an already running container", WrongState),
            ("cannot start a container that has stopped", WrongState),
            ("cannot start a container in the paused state", WrongState),
            (
                "cannot delete container c1 that is not stopped: running",
                WrongState,
            ),
            (
                "exec failed: cannot exec in a paused container (use --ignore-paused to override)",
                WrongState,
            ),
            (
                "exec failed: cannot exec in a stopped container",
                WrongState,
            ),
            ("os: process already finished", WrongState),
            ("kill container: No such process", WrongState),
            ("container `c1` is not running", WrongState),
            ("unknown signal \"SIGFOO\"", InvalidArgument),
            ("invalid container ID format", InvalidArgument),
            (
                "runc create failed: unable to start container process: exec: \"nope\": \
                 executable file not found in $PATH",
                Failed,
            ),
            (
                "runc create failed: unable to start container process: error during container \
                 init: error mounting \"cgroup\" to rootfs at \"/sys/fs/cgroup\": stat \
                 /sys/fs/cgroup/cpu/c1: no such file or directory",
                Failed,
            ),
            (
                "cgroups in hybrid mode not supported, drop all controllers from cgroupv2",
                Failed,
            ),
            ("", Failed),
        ];
        for (msg, kind) in cases {
            let e = RuntimeError::classify("runc start", msg, 1);
            assert_eq!(e.kind, *kind, "{msg:?}");
        }
    }

    #[test]
    fn messages_name_the_command_once() {
        let e = RuntimeError::classify("runc kill", "container not running", 1);
        assert_eq!(e.to_string(), "runc kill: container not running");
        let e = RuntimeError::classify("runc kill", "runc kill: container not running", 1);
        assert_eq!(e.to_string(), "runc kill: container not running");
        let e = RuntimeError::classify("runc delete", " \n", 2);
        assert_eq!(e.to_string(), "runc delete: exit status 2");
        assert!(e.kind == Failed && !e.is_not_running());
    }

    #[test]
    fn spawn_failures() {
        let nf = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(RuntimeError::spawn("nope create", &nf).kind, Unavailable);
        let other = std::io::Error::other("boom");
        assert_eq!(RuntimeError::spawn("runc create", &other).kind, Failed);
    }

    #[test]
    fn signalling_a_pid_that_cannot_exist() {
        struct Nop;
        impl OciRuntime for Nop {
            fn create(&self, _: &str, _: &CreateOpts, _: ProcStdio) -> Result<()> {
                Ok(())
            }
            fn start(&self, _: &str) -> Result<()> {
                Ok(())
            }
            fn kill(&self, _: &str, _: u32, _: bool) -> Result<()> {
                Ok(())
            }
            fn delete(&self, _: &str, _: bool) -> Result<()> {
                Ok(())
            }
            fn exec(&self, _: &str, _: &ExecOpts, _: ProcStdio) -> Result<()> {
                Ok(())
            }
            fn update(&self, _: &str, _: &Path) -> Result<()> {
                Ok(())
            }
            fn pause(&self, _: &str) -> Result<()> {
                Ok(())
            }
            fn resume(&self, _: &str) -> Result<()> {
                Ok(())
            }
            fn ps(&self, _: &str) -> Result<Vec<u32>> {
                Ok(vec![])
            }
        }
        // Above the kernel's PID_MAX_LIMIT (2^22): never a live process.
        let e = Nop.signal(5_000_000, libc::SIGTERM).unwrap_err();
        assert_eq!(e.kind, WrongState);
        assert_eq!(
            Nop.signal(5_000_000, 999).unwrap_err().kind,
            InvalidArgument
        );
    }
}
