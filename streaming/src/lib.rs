//! The CRI streaming path (`kubectl exec/attach/port-forward`, `crictl exec
//! -it`): the Exec, Attach and PortForward RPCs hand out a URL with a
//! single-use token; the client connects to the streaming server there and
//! upgrades to SPDY/3.1 or WebSocket. The protocol layers (`spdy`, `ws`)
//! turn a connection into the protocol-independent streams below; the
//! server (`server`) hands them to a [`Backend`] (berthd's task service),
//! which runs the command, attaches, or dials the pod's ports. Nothing here
//! knows containers: only the [`Backend`] trait does.

mod config;
pub mod conns;
mod peer;
pub mod server;
pub mod spdy;
pub mod tokens;
pub mod ws;

pub use config::StreamingConfig;
pub use server::{Pending, StreamServer};

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// A terminal size from the client (resize stream/channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// How a remote command ended, sent to the client on the error stream as a
/// `metav1.Status` (see [`status_json`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    /// The command exited with a non-zero code.
    ExitCode(i32),
    /// The command could not be run (or the attach failed).
    Error(String),
}

/// Which streams the client asked for (the URL's query: `stdin`, `stdout`,
/// `stderr`, `tty`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOpts {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The server's side of a remote command (exec or attach), whatever the
/// protocol. Channels are bounded: a slow client slows the command down
/// instead of making the daemon buffer without bound.
pub struct CommandIo {
    /// Bytes the client typed; the channel closes at the client's EOF.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    /// None with a TTY (stderr is merged into stdout).
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
    /// Send exactly once, when the command is over; the protocol layer
    /// writes the status, flushes and closes the connection.
    pub done: oneshot::Sender<ExitStatus>,
    /// Fires (the sender is dropped) when the client has gone away, so the
    /// command can be killed.
    pub client_gone: oneshot::Receiver<()>,
}

/// A connection to a port inside the pod, made on demand.
pub type PortStream = tokio::net::TcpStream;

/// A boxed future, as [`Backend`]'s methods return (the server holds the
/// backend as a trait object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the streaming server needs from the runtime behind it: run a command
/// in a container, attach to one, and dial a port in a pod.
pub trait Backend: Send + Sync + 'static {
    /// Runs `cmd` in the container with the client's streams; resolves when
    /// the command is over and its status was sent on `io.done`.
    fn exec(
        &self,
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        io: CommandIo,
    ) -> BoxFuture<'_, ()>;

    /// Attaches the client's streams to the container's main process.
    fn attach(&self, container_id: String, io: CommandIo) -> BoxFuture<'_, ()>;

    /// Opens a connection to `port` in the pod's network namespace (`netns`;
    /// None: the host's, for host-network pods). [`dial_loopback`] is how
    /// kubelet dials once inside it.
    fn connect(
        &self,
        netns: Option<PathBuf>,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<PortStream>>;
}

/// Connects to `port` on this network namespace's loopback, IPv4 first as
/// kubelet does. Blocking (at most 10 s per family): call it on a thread
/// that is inside the pod's network namespace.
pub fn dial_loopback(port: u16) -> std::io::Result<std::net::TcpStream> {
    let timeout = Duration::from_secs(10);
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let s = match std::net::TcpStream::connect_timeout(&v4, timeout) {
        Ok(s) => s,
        Err(e4) => {
            let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v6, timeout).map_err(|_| e4)?
        }
    };
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Opens a connection to `port` in the pod's network namespace.
pub type PortConnector = Arc<
    dyn Fn(u16) -> Pin<Box<dyn Future<Output = std::io::Result<PortStream>> + Send>> + Send + Sync,
>;

/// Limits every protocol layer applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A stream (connection) with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// How long the client may take to open the streams it announced.
    pub stream_creation_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: Duration::from_secs(4 * 3600),
            stream_creation_timeout: Duration::from_secs(30),
        }
    }
}

/// The `metav1.Status` JSON kubelet's streaming server sends on the error
/// stream: `{"status":"Success"}` or a `Failure` with reason
/// `NonZeroExitCode` and an `ExitCode` cause (what kubectl reads the exit
/// code from).
pub fn status_json(s: &ExitStatus) -> String {
    use serde_json::json;
    let v = match s {
        ExitStatus::Success => json!({"metadata": {}, "status": "Success"}),
        ExitStatus::ExitCode(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command, exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        ExitStatus::Error(msg) => json!({
            "metadata": {},
            "status": "Failure",
            "message": msg,
            "reason": "InternalError",
            "details": {"causes": [{"message": msg}]},
            "code": 500,
        }),
    };
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_what_kubectl_reads() {
        assert_eq!(
            status_json(&ExitStatus::Success),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let v: serde_json::Value =
            serde_json::from_str(&status_json(&ExitStatus::ExitCode(3))).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let t: TermSize = serde_json::from_str(r#"{"Width":80,"Height":24}"#).unwrap();
        assert_eq!(
            t,
            TermSize {
                width: 80,
                height: 24
            }
        );
    }
}
