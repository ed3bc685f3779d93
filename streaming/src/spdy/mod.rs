//! The SPDY/3.1 side of the streaming server, as kubectl and crictl speak it
//! (through client-go and spdystream): after the HTTP/1.1 upgrade the client
//! opens one SPDY stream per channel (`streamtype` header: error, stdin,
//! stdout, stderr, resize; or data/error pairs for port-forward) and the
//! server answers each with SYN_REPLY.
//!
//! What the HTTP layer must do before calling in here: answer the upgrade
//! request with `101 Switching Protocols`, `Connection: Upgrade`,
//! `Upgrade: SPDY/3.1` and `X-Stream-Protocol-Version: <negotiated>` (one of
//! [`REMOTE_COMMAND_PROTOCOLS`], or [`PORT_FORWARD_PROTOCOL`]), then hand the
//! upgraded connection to [`remote_command`] or [`port_forward`].

mod dictionary;
pub mod frame;
mod portforward;
mod remotecommand;
pub mod session;

pub use portforward::port_forward;
pub use remotecommand::remote_command;

/// The `Upgrade` header value of the 101 reply.
pub const UPGRADE_PROTOCOL: &str = "SPDY/3.1";

/// The remote-command (exec/attach) subprotocols, in server preference
/// order, as kubelet offers them over SPDY. `v5.channel.k8s.io` is
/// WebSocket-only in kubelet (for SPDY it equals v4); it is accepted by
/// [`remote_command`] but not offered.
pub const REMOTE_COMMAND_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// The port-forward subprotocol.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("SPDY framing: {0}")]
    Frame(frame::FrameError),
    #[error("unsupported stream protocol {0:?}")]
    UnsupportedProtocol(String),
    #[error("timed out waiting for the client to create streams (got {got} of {want})")]
    StreamCreationTimeout { got: usize, want: usize },
    #[error("the client closed the connection before creating its streams")]
    ClientGone,
    #[error("the SPDY session is closed")]
    SessionClosed,
    #[error("stream {0} was reset")]
    StreamReset(u32),
    #[error("stream {0} is already finished")]
    StreamFinished(u32),
    #[error("at least one of stdin, stdout and stderr is required")]
    NoStreams,
}

/// A connection number for log correlation.
fn next_conn_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn session_config(limits: &super::Limits) -> session::Config {
    session::Config {
        idle_timeout: limits.idle_timeout,
        ..session::Config::default()
    }
}
