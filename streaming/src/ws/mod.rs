//! The WebSocket flavour of the streaming protocols (what `kubectl` and the
//! API server speak when SPDY is not used): exec/attach over the
//! `*.channel.k8s.io` subprotocols and port-forward over `v4.channel.k8s.io`.
//!
//! Every message carries one channel: its first byte is the channel number
//! (binary subprotocols) or the channel number as an ASCII digit followed by
//! base64 of the payload (`base64.` subprotocols, text messages). Remote
//! commands use channels 0 stdin, 1 stdout, 2 stderr, 3 error (the final
//! status) and 4 resize; `v5.channel.k8s.io` adds a close signal, the
//! message `[255, channel]`, which is how a client says "stdin is at EOF"
//! without dropping the connection. Port-forward uses a pair of channels per
//! forwarded port (data `2*i`, error `2*i+1`), each announced by the port
//! number (u16, little-endian) as the first message on it.
//!
//! The caller (the streaming server) does the HTTP part: it checks the
//! request, picks the subprotocol with [`select_protocol`], answers `101`
//! with `Sec-WebSocket-Accept` from [`accept_key`], and hands the upgraded
//! connection to [`remote_command`] or [`port_forward`]. The background
//! tasks inherit the caller's span, so call them inside a span carrying the
//! container/exec/pod ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use super::{status_json, CommandIo, ExitStatus, Limits, PortConnector, StreamOpts, TermSize};

/// Exec/attach subprotocols, in the server's order of preference. `v5` is
/// the only one with a stdin close signal; the `v4` ones send the final
/// status as `metav1.Status` JSON; the unversioned ones (kubelet's "v1")
/// send only a failure's message text. There is no `v2`/`v3` for WebSocket
/// (those exist only for SPDY). A request with no `Sec-WebSocket-Protocol`
/// at all is served as `channel.k8s.io`, as kubelet does.
pub const REMOTE_COMMAND_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// Port-forward subprotocols: what kubelet's WebSocket port-forward accepts
/// (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, or none at all).
/// `v2.portforward.k8s.io`/`portforward.k8s.io` are SPDY-only names, and
/// `SPDY/3.1+portforward.k8s.io` (kubectl's tunnel to the API server) is
/// SPDY inside WebSocket, which the API server unwraps before a runtime
/// ever sees it.
pub const PORT_FORWARD_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];

/// At most this many ports per connection: a port needs two channel ids
/// and a channel id is one byte.
pub const MAX_PORTS: usize = 127;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` half-closes `channel`.
const CLOSE: u8 = 255;

/// Queue depth of every channel between the protocol layer and the
/// backend: enough to keep a pipe busy, small enough that a stalled side
/// stops the other instead of piling data up in the daemon.
const QUEUE: usize = 16;
/// A single message may not be larger than this (a stdin chunk, a resize,
/// a port-forward chunk: clients send at most a few tens of KiB).
const MAX_MESSAGE: usize = 4 << 20;
/// How long to wait for the client's answer to our close frame before
/// dropping the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Read size for pod -> client port-forward data.
const PORT_CHUNK: usize = 32 * 1024;
/// A resize message bigger than this is not a terminal size.
const MAX_RESIZE_BUF: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("unsupported WebSocket subprotocol {0:?}")]
    UnsupportedProtocol(String),
    #[error("no port to forward")]
    NoPorts,
    #[error("{0} ports requested, at most {MAX_PORTS} per connection")]
    TooManyPorts(usize),
    #[error("invalid port {0:?}")]
    InvalidPort(String),
    #[error("the client sent nothing and read nothing for {0:?}")]
    IdleTimeout(Duration),
    #[error("websocket: {0}")]
    WebSocket(#[from] Box<tungstenite::Error>),
}

/// The value for `Sec-WebSocket-Accept` from the client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    tungstenite::handshake::derive_accept_key(key.trim().as_bytes())
}

/// Picks the subprotocol for the `101` from the client's
/// `Sec-WebSocket-Protocol` header values (each may be a comma-separated
/// list): the first of `supported` the client offered. `Some("")` when the
/// client offered none (serve it, and send no `Sec-WebSocket-Protocol`);
/// `None` when it offered only unsupported ones (refuse, 400).
pub fn select_protocol<'a>(
    offered: impl IntoIterator<Item = &'a str>,
    supported: &[&'static str],
) -> Option<&'static str> {
    let offered: Vec<&str> = offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Some("");
    }
    supported
        .iter()
        .find(|s| offered.iter().any(|o| o == *s))
        .copied()
}

/// Parses the `port` query values of a port-forward URL (each may be a
/// comma-separated list, as kubelet accepts). Do it before the upgrade, so
/// a bad request gets a 400 instead of a WebSocket that closes at once.
pub fn parse_ports<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Vec<u16>, WsError> {
    let mut ports = Vec::new();
    for value in values {
        for p in value.split(',') {
            match p.trim().parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(WsError::InvalidPort(p.to_string())),
            }
        }
    }
    if ports.is_empty() {
        return Err(WsError::NoPorts);
    }
    if ports.len() > MAX_PORTS {
        return Err(WsError::TooManyPorts(ports.len()));
    }
    Ok(ports)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Binary,
    Base64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusFormat {
    /// Unversioned: nothing on success, the message text on failure.
    Text,
    /// v4/v5: `metav1.Status` JSON.
    Json,
}

#[derive(Debug, Clone, Copy)]
struct Proto {
    codec: Codec,
    status: StatusFormat,
    /// `[255, channel]` half-closes a channel (v5 only).
    close_signal: bool,
}

fn remote_command_proto(protocol: &str) -> Result<Proto, WsError> {
    let (codec, status, close_signal) = match protocol {
        "v5.channel.k8s.io" => (Codec::Binary, StatusFormat::Json, true),
        "v4.channel.k8s.io" => (Codec::Binary, StatusFormat::Json, false),
        "v4.base64.channel.k8s.io" => (Codec::Base64, StatusFormat::Json, false),
        "" | "channel.k8s.io" => (Codec::Binary, StatusFormat::Text, false),
        "base64.channel.k8s.io" => (Codec::Base64, StatusFormat::Text, false),
        other => return Err(WsError::UnsupportedProtocol(other.to_string())),
    };
    Ok(Proto {
        codec,
        status,
        close_signal,
    })
}

fn port_forward_codec(protocol: &str) -> Result<Codec, WsError> {
    match protocol {
        "" | "v4.channel.k8s.io" => Ok(Codec::Binary),
        "v4.base64.channel.k8s.io" => Ok(Codec::Base64),
        other => Err(WsError::UnsupportedProtocol(other.to_string())),
    }
}

/// One outgoing message on `channel`.
fn frame(codec: Codec, channel: u8, data: &[u8]) -> Message {
    match codec {
        Codec::Binary => {
            let mut b = BytesMut::with_capacity(data.len() + 1);
            b.put_u8(channel);
            b.extend_from_slice(data);
            Message::Binary(b.freeze())
        }
        Codec::Base64 => {
            let mut s = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            s.push(char::from(b'0'.wrapping_add(channel)));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::Text(s.into())
        }
    }
}

/// What a data message from the client says.
#[derive(Debug, PartialEq, Eq)]
enum Incoming {
    Data(u8, Bytes),
    /// v5 close signal for a channel.
    Close(u8),
    /// Not usable (empty, bad base64, malformed close signal): ignored, as
    /// kubelet ignores it.
    Junk(&'static str),
}

fn decode(codec: Codec, close_signal: bool, msg: Bytes) -> Incoming {
    let Some(&first) = msg.first() else {
        return Incoming::Junk("empty message");
    };
    if close_signal && first == CLOSE {
        return match msg.get(1) {
            Some(&ch) if msg.len() == 2 => Incoming::Close(ch),
            _ => Incoming::Junk("close signal must name exactly one channel"),
        };
    }
    match codec {
        Codec::Binary => Incoming::Data(first, msg.slice(1..)),
        Codec::Base64 => match base64::engine::general_purpose::STANDARD.decode(&msg[1..]) {
            Ok(data) => Incoming::Data(first.wrapping_sub(b'0'), Bytes::from(data)),
            Err(_) => Incoming::Junk("invalid base64"),
        },
    }
}

/// The last time anything crossed the connection, for the idle timeout
/// (like kubelet, both reads and writes count).
#[derive(Clone)]
struct Activity {
    base: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn deadline(&self, idle: Duration) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }
}

type Sink<IO> = SplitSink<WebSocketStream<IO>, Message>;
type Source<IO> = SplitStream<WebSocketStream<IO>>;

async fn open<IO>(io: IO) -> (Sink<IO>, Source<IO>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config))
        .await
        .split()
}

/// Why the reading side stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    /// Close frame, EOF or a broken connection.
    ClientGone,
    Idle,
    /// The writing side is done with the connection.
    Shutdown,
}

/// The reading half of a connection with the idle timeout applied.
/// Pings are answered by tungstenite while reading.
struct Reader<IO> {
    source: Source<IO>,
    limits: Limits,
    activity: Activity,
    shutdown: CancellationToken,
}

impl<IO> Reader<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// The next data message (text or binary), or why there is none.
    async fn next(&mut self) -> Result<Bytes, ReadEnd> {
        loop {
            let deadline = self.activity.deadline(self.limits.idle_timeout);
            let msg = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Err(ReadEnd::Shutdown),
                m = self.source.next() => m,
                _ = tokio::time::sleep_until(deadline) => {
                    // A write may have moved the deadline while we slept.
                    if self.activity.deadline(self.limits.idle_timeout) <= Instant::now() {
                        return Err(ReadEnd::Idle);
                    }
                    continue;
                }
            };
            self.activity.touch();
            match msg {
                None => return Err(ReadEnd::ClientGone),
                Some(Err(e)) => {
                    debug!(error = %e, "websocket read ended");
                    return Err(ReadEnd::ClientGone);
                }
                Some(Ok(Message::Close(_))) => return Err(ReadEnd::ClientGone),
                Some(Ok(Message::Binary(b))) => return Ok(b),
                Some(Ok(Message::Text(t))) => return Ok(Bytes::from(t)),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }

    /// Runs `work` unless the writer ends the connection first: handling a
    /// message may block on a full queue (backpressure).
    async fn guard(&self, work: impl std::future::Future<Output = ()>) -> Result<(), ReadEnd> {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Err(ReadEnd::Shutdown),
            () = work => Ok(()),
        }
    }
}

/// Sends one message, giving up after the idle timeout (a client that
/// reads nothing for that long is as good as gone).
async fn send<IO>(
    sink: &mut Sink<IO>,
    msg: Message,
    limits: Limits,
    activity: &Activity,
) -> Result<(), WsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(limits.idle_timeout, sink.send(msg)).await {
        Ok(Ok(())) => {
            activity.touch();
            Ok(())
        }
        Ok(Err(e)) => Err(WsError::WebSocket(Box::new(e))),
        Err(_) => Err(WsError::IdleTimeout(limits.idle_timeout)),
    }
}

/// Sends our close frame and waits (bounded) for the client's, so the
/// final messages are not lost to a reset.
async fn close<IO>(
    mut sink: Sink<IO>,
    limits: Limits,
    activity: &Activity,
    gone: &CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    if let Err(e) = send(&mut sink, Message::Close(Some(frame)), limits, activity).await {
        debug!(error = %e, "sending the close frame failed");
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, gone.cancelled()).await;
}

mod exec;
mod portforward;
#[cfg(test)]
mod tests;

pub use exec::remote_command;
pub use portforward::port_forward;
