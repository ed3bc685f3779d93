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

/// Receives from an optional queue; a closed or absent queue never yields.
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Exec/attach over an already-upgraded connection (the caller has written
/// the `101` with `protocol` as `Sec-WebSocket-Protocol`). The returned
/// [`CommandIo`] is served by background tasks: channel 0 feeds `stdin`
/// (closed at the v5 close signal or when the client goes), channel 4
/// feeds `resize` (with a TTY), `stdout`/`stderr` become channel 1/2
/// messages. After `done`, the status goes out on channel 3 and the
/// connection is closed. `client_gone` fires when the client disconnects or
/// idles out (and also once the connection is over after `done`).
pub async fn remote_command<IO>(
    io: IO,
    protocol: &str,
    opts: StreamOpts,
    limits: Limits,
) -> Result<CommandIo, WsError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proto = remote_command_proto(protocol)?;
    let (sink, source) = open(io).await;

    let (stdin_tx, stdin_rx) = if opts.stdin {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (resize_tx, resize_rx) = if opts.tty {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (stdout_tx, stdout_rx) = if opts.stdout {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    // With a TTY the terminal merges stderr into stdout.
    let (stderr_tx, stderr_rx) = if opts.stderr && !opts.tty {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (done_tx, done_rx) = oneshot::channel();
    let (gone_tx, gone_rx) = oneshot::channel::<()>();

    let activity = Activity::new();
    // Cancelled when the reader stops (the client is gone or idle).
    let gone = CancellationToken::new();
    // Cancelled when the writer is done with the connection.
    let shutdown = CancellationToken::new();

    // kubelet opens the stream with an empty message on the lowest channel
    // the client will read, which tells clients the connection works.
    let hello = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    debug!(protocol, ?opts, "websocket remote command");

    tokio::spawn(
        {
            let (activity, gone, shutdown) = (activity.clone(), gone.clone(), shutdown.clone());
            async move {
                let writer = CommandWriter {
                    proto,
                    limits,
                    activity: &activity,
                    gone: &gone,
                };
                writer.run(sink, hello, stdout_rx, stderr_rx, done_rx).await;
                shutdown.cancel();
            }
        }
        .in_current_span(),
    );

    tokio::spawn(async move {
        let mut reader = CommandReader {
            proto,
            stdin: stdin_tx,
            resize: resize_tx,
            resize_buf: Vec::new(),
        };
        let mut rd = Reader {
            source,
            limits,
            activity,
            shutdown,
        };
        let end = loop {
            let handled = match rd.next().await {
                Ok(data) => rd.guard(reader.handle(data)).await,
                Err(end) => Err(end),
            };
            if let Err(end) = handled {
                break end;
            }
        };
        match end {
            ReadEnd::Idle => {
                warn!(idle_timeout = ?limits.idle_timeout, "exec/attach connection idle, closing")
            }
            ReadEnd::ClientGone => debug!("exec/attach client went away"),
            ReadEnd::Shutdown => {}
        }
        // stdin EOF and client_gone fire by dropping their senders here.
        drop(reader);
        drop(gone_tx);
        gone.cancel();
    }.in_current_span());

    Ok(CommandIo {
        stdin: stdin_rx,
        stdout: stdout_tx,
        stderr: stderr_tx,
        resize: resize_rx,
        done: done_tx,
        client_gone: gone_rx,
    })
}

struct CommandReader {
    proto: Proto,
    stdin: Option<mpsc::Sender<Bytes>>,
    resize: Option<mpsc::Sender<TermSize>>,
    /// Resize JSON is a stream of objects that need not align with
    /// messages (kubelet reads it with a JSON decoder).
    resize_buf: Vec<u8>,
}

impl CommandReader {
    async fn handle(&mut self, msg: Bytes) {
        match decode(self.proto.codec, self.proto.close_signal, msg) {
            Incoming::Junk(why) => debug!(why, "ignoring a malformed message"),
            Incoming::Close(STDIN) => {
                debug!("client closed stdin");
                self.stdin = None;
            }
            Incoming::Close(RESIZE) => self.resize = None,
            Incoming::Close(channel) => debug!(
                channel,
                "ignoring close of a channel the client does not write"
            ),
            Incoming::Data(STDIN, data) => {
                if data.is_empty() {
                    return;
                }
                if let Some(tx) = &self.stdin {
                    if tx.send(data).await.is_err() {
                        // The backend no longer reads stdin: drop the rest.
                        self.stdin = None;
                    }
                }
            }
            Incoming::Data(RESIZE, data) => self.resize(&data).await,
            Incoming::Data(channel, data) => {
                debug!(
                    channel,
                    len = data.len(),
                    "ignoring data on a channel the client may not write"
                );
            }
        }
    }

    async fn resize(&mut self, data: &[u8]) {
        let Some(tx) = &self.resize else {
            return;
        };
        self.resize_buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let consumed = {
            let mut it =
                serde_json::Deserializer::from_slice(&self.resize_buf).into_iter::<TermSize>();
            loop {
                match it.next() {
                    Some(Ok(size)) => sizes.push(size),
                    Some(Err(e)) if e.is_eof() => break it.byte_offset(),
                    Some(Err(e)) => {
                        debug!(error = %e, "ignoring a malformed resize");
                        break self.resize_buf.len();
                    }
                    None => break it.byte_offset(),
                }
            }
        };
        self.resize_buf.drain(..consumed);
        if self.resize_buf.len() > MAX_RESIZE_BUF {
            debug!("dropping an oversized partial resize");
            self.resize_buf.clear();
        }
        for size in sizes {
            if tx.send(size).await.is_err() {
                self.resize = None;
                return;
            }
        }
    }
}

struct CommandWriter<'a> {
    proto: Proto,
    limits: Limits,
    activity: &'a Activity,
    gone: &'a CancellationToken,
}

impl CommandWriter<'_> {
    async fn run<IO>(
        &self,
        mut sink: Sink<IO>,
        hello: u8,
        stdout: Option<mpsc::Receiver<Bytes>>,
        stderr: Option<mpsc::Receiver<Bytes>>,
        done: oneshot::Receiver<ExitStatus>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match self.pump(&mut sink, hello, stdout, stderr, done).await {
            Ok(Some(status)) => {
                if let Err(e) = self.finish(&mut sink, &status).await {
                    debug!(error = %e, "writing the exit status failed");
                    return;
                }
                close(sink, self.limits, self.activity, self.gone).await;
            }
            Ok(None) => {}
            Err(e) => debug!(error = %e, "writing to the exec/attach client failed"),
        }
    }

    /// Copies stdout/stderr to the client until the command is done
    /// (`Some(status)`) or the client is gone (`None`).
    async fn pump<IO>(
        &self,
        sink: &mut Sink<IO>,
        hello: u8,
        mut stdout: Option<mpsc::Receiver<Bytes>>,
        mut stderr: Option<mpsc::Receiver<Bytes>>,
        mut done: oneshot::Receiver<ExitStatus>,
    ) -> Result<Option<ExitStatus>, WsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let codec = self.proto.codec;
        self.send(sink, frame(codec, hello, &[])).await?;
        let status = loop {
            tokio::select! {
                biased;
                _ = self.gone.cancelled() => return Ok(None),
                d = recv_opt(&mut stdout) => match d {
                    Some(d) => self.send(sink, frame(codec, STDOUT, &d)).await?,
                    None => stdout = None,
                },
                d = recv_opt(&mut stderr) => match d {
                    Some(d) => self.send(sink, frame(codec, STDERR, &d)).await?,
                    None => stderr = None,
                },
                s = &mut done => break s.unwrap_or_else(|_| {
                    ExitStatus::Error("the command ended without an exit status".to_string())
                }),
            }
        };
        // Output the backend queued before reporting `done` is still in
        // the queues: it goes out before the status.
        for (channel, rx) in [(STDOUT, &mut stdout), (STDERR, &mut stderr)] {
            if let Some(rx) = rx {
                while let Ok(d) = rx.try_recv() {
                    self.send(sink, frame(codec, channel, &d)).await?;
                }
            }
        }
        Ok(Some(status))
    }

    async fn finish<IO>(&self, sink: &mut Sink<IO>, status: &ExitStatus) -> Result<(), WsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let body = match (self.proto.status, status) {
            (StatusFormat::Json, s) => status_json(s),
            (StatusFormat::Text, ExitStatus::Success) => return Ok(()),
            (StatusFormat::Text, s) => status_message(s),
        };
        self.send(sink, frame(self.proto.codec, ERROR, body.as_bytes()))
            .await
    }

    async fn send<IO>(&self, sink: &mut Sink<IO>, msg: Message) -> Result<(), WsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        send(sink, msg, self.limits, self.activity).await
    }
}

/// The `message` of the status JSON: what the unversioned protocols send.
fn status_message(s: &ExitStatus) -> String {
    serde_json::from_str::<serde_json::Value>(&status_json(s))
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Port-forward over an already-upgraded connection: connects to every
/// port in `ports` (in the order of the query, which fixes the channel
/// numbers) and pipes data both ways until every pod-side connection has
/// ended, then closes. A port that cannot be reached gets an error message
/// on its error channel; the others carry on. The client cannot half-close
/// a channel in this protocol: when it goes, the pod connections are
/// dropped.
pub async fn port_forward<IO>(
    io: IO,
    protocol: &str,
    ports: Vec<u16>,
    connector: PortConnector,
    limits: Limits,
) -> Result<(), WsError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let codec = port_forward_codec(protocol)?;
    if ports.is_empty() {
        return Err(WsError::NoPorts);
    }
    if ports.len() > MAX_PORTS {
        return Err(WsError::TooManyPorts(ports.len()));
    }
    let (sink, source) = open(io).await;
    debug!(protocol, ?ports, "websocket port-forward");

    let activity = Activity::new();
    let gone = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(QUEUE);

    // Every channel starts with its port number, before any data.
    let mut sink = sink;
    for (i, port) in ports.iter().enumerate() {
        let data_ch = channel_of(i);
        for ch in [data_ch, data_ch + 1] {
            sink.feed(frame(codec, ch, &port.to_le_bytes()))
                .await
                .map_err(|e| WsError::WebSocket(Box::new(e)))?;
        }
    }
    sink.flush()
        .await
        .map_err(|e| WsError::WebSocket(Box::new(e)))?;

    let writer = tokio::spawn(
        {
            let (activity, gone, shutdown) = (activity.clone(), gone.clone(), shutdown.clone());
            async move {
                let mut result = Ok(());
                loop {
                    tokio::select! {
                        biased;
                        _ = gone.cancelled() => break,
                        m = out_rx.recv() => match m {
                            Some(m) => {
                                if let Err(e) = send(&mut sink, m, limits, &activity).await {
                                    result = Err(e);
                                    break;
                                }
                            }
                            // Every port is done.
                            None => {
                                close(sink, limits, &activity, &gone).await;
                                break;
                            }
                        },
                    }
                }
                shutdown.cancel();
                result
            }
        }
        .in_current_span(),
    );

    let mut to_pod = Vec::with_capacity(ports.len());
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
        to_pod.push(tx);
        let fwd = PortPipe {
            port,
            data_ch: channel_of(i),
            codec,
            out: out_tx.clone(),
        };
        tasks.spawn(fwd.run(connector.clone(), rx).in_current_span());
    }
    // Only the port tasks hold senders now: the writer closes the
    // connection once they are all done.
    drop(out_tx);

    let reader = tokio::spawn(
        {
            let (activity, gone, shutdown) = (activity.clone(), gone.clone(), shutdown.clone());
            async move {
                let mut to_pod = to_pod;
                let mut rd = Reader {
                    source,
                    limits,
                    activity,
                    shutdown,
                };
                let end = loop {
                    let handled = match rd.next().await {
                        Ok(msg) => rd.guard(route_to_pod(codec, &mut to_pod, msg)).await,
                        Err(end) => Err(end),
                    };
                    if let Err(end) = handled {
                        break end;
                    }
                };
                gone.cancel();
                end
            }
        }
        .in_current_span(),
    );

    // The port tasks end with their pod connections, or all at once when
    // the client goes.
    loop {
        tokio::select! {
            biased;
            _ = gone.cancelled() => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
            t = tasks.join_next() => if t.is_none() { break },
        }
    }

    let write_result = writer.await.unwrap_or(Ok(()));
    let end = reader.await.unwrap_or(ReadEnd::ClientGone);
    match end {
        ReadEnd::Idle => Err(WsError::IdleTimeout(limits.idle_timeout)),
        _ => write_result,
    }
}

fn channel_of(port_index: usize) -> u8 {
    // parse_ports/port_forward cap the ports at MAX_PORTS, so 2*i+1 <= 253.
    u8::try_from(port_index * 2).unwrap_or(u8::MAX - 1)
}

/// Hands client data on a data channel to that port's pod connection.
async fn route_to_pod(codec: Codec, to_pod: &mut [mpsc::Sender<Bytes>], msg: Bytes) {
    match decode(codec, false, msg) {
        Incoming::Data(ch, data) if ch % 2 == 0 && usize::from(ch / 2) < to_pod.len() => {
            if data.is_empty() {
                return;
            }
            // An error means the pod side is already closed: drop the data.
            let _ = to_pod[usize::from(ch / 2)].send(data).await;
        }
        Incoming::Data(ch, data) => {
            debug!(
                channel = ch,
                len = data.len(),
                "ignoring data on a channel the client may not write"
            );
        }
        Incoming::Close(_) => {}
        Incoming::Junk(why) => debug!(why, "ignoring a malformed message"),
    }
}

/// One forwarded port: a pod connection piped to a channel pair.
struct PortPipe {
    port: u16,
    data_ch: u8,
    codec: Codec,
    out: mpsc::Sender<Message>,
}

impl PortPipe {
    async fn run(self, connector: PortConnector, mut from_client: mpsc::Receiver<Bytes>) {
        let stream = match connector(self.port).await {
            Ok(s) => s,
            Err(e) => {
                warn!(port = self.port, error = %e, "port-forward: connecting in the pod failed");
                self.error(&format!("error forwarding port {}: {e}", self.port))
                    .await;
                return;
            }
        };
        let (mut rd, mut wr) = stream.into_split();

        // client -> pod, half-closing the pod connection when the client
        // side ends.
        let upstream = async {
            while let Some(data) = from_client.recv().await {
                wr.write_all(&data).await?;
            }
            wr.shutdown().await
        };
        // pod -> client, until the pod closes its side.
        let downstream = async {
            let mut buf = vec![0u8; PORT_CHUNK];
            loop {
                let n = rd.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                if self
                    .out
                    .send(frame(self.codec, self.data_ch, &buf[..n]))
                    .await
                    .is_err()
                {
                    // The connection is closing; nobody reads any more.
                    return Ok(());
                }
            }
        };
        tokio::pin!(upstream, downstream);
        let mut upstream_done = false;
        let result = loop {
            tokio::select! {
                r = &mut downstream => break r,
                r = &mut upstream, if !upstream_done => {
                    upstream_done = true;
                    if let Err(e) = r {
                        break Err(e);
                    }
                }
            }
        };
        match result {
            Ok(()) => debug!(port = self.port, "port-forward connection ended"),
            Err(e) => {
                debug!(port = self.port, error = %e, "port-forward connection failed");
                self.error(&format!("error forwarding port {}: {e}", self.port))
                    .await;
            }
        }
    }

    async fn error(&self, msg: &str) {
        let _ = self
            .out
            .send(frame(self.codec, self.data_ch + 1, msg.as_bytes()))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    type Client = WebSocketStream<DuplexStream>;

    async fn client_pair() -> (Client, DuplexStream) {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let ws = WebSocketStream::from_raw_socket(c, Role::Client, None).await;
        (ws, s)
    }

    async fn start(protocol: &str, opts: StreamOpts) -> (Client, CommandIo) {
        let (ws, s) = client_pair().await;
        let cio = remote_command(s, protocol, opts, Limits::default())
            .await
            .unwrap();
        (ws, cio)
    }

    fn all() -> StreamOpts {
        StreamOpts {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        }
    }

    /// The next data message as (channel, payload); None at close/EOF.
    async fn recv(ws: &mut Client) -> Option<(u8, Vec<u8>)> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("timed out waiting for a message");
            match m {
                Some(Ok(Message::Binary(b))) => return Some((b[0], b[1..].to_vec())),
                Some(Ok(Message::Text(t))) => {
                    let b = t.as_bytes();
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(&b[1..])
                        .unwrap();
                    return Some((b[0] - b'0', data));
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Everything until the close, per channel.
    async fn recv_all(ws: &mut Client) -> std::collections::BTreeMap<u8, Vec<u8>> {
        let mut out = std::collections::BTreeMap::<u8, Vec<u8>>::new();
        while let Some((ch, d)) = recv(ws).await {
            out.entry(ch).or_default().extend(d);
        }
        // Keep reading so tungstenite sends its close reply and the server
        // drops the connection.
        while let Some(Ok(_)) = ws.next().await {}
        out
    }

    async fn send(ws: &mut Client, ch: u8, data: &[u8]) {
        let mut b = vec![ch];
        b.extend_from_slice(data);
        ws.send(Message::Binary(b.into())).await.unwrap();
    }

    /// Echoes stdin to stdout until EOF, then reports `status`.
    fn echo_backend(cio: CommandIo, status: ExitStatus) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut stdin = cio.stdin.unwrap();
            let stdout = cio.stdout.unwrap();
            while let Some(d) = stdin.recv().await {
                stdout.send(d).await.unwrap();
            }
            // Fails when the client closed first (v4: that is stdin's EOF).
            let _ = cio.done.send(status);
        })
    }

    #[test]
    fn accept_key_is_rfc6455() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn protocol_selection() {
        assert_eq!(
            select_protocol(
                ["v4.channel.k8s.io, v5.channel.k8s.io"],
                REMOTE_COMMAND_PROTOCOLS
            ),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(
            select_protocol(
                ["base64.channel.k8s.io", "channel.k8s.io"],
                REMOTE_COMMAND_PROTOCOLS
            ),
            Some("channel.k8s.io")
        );
        assert_eq!(select_protocol([], REMOTE_COMMAND_PROTOCOLS), Some(""));
        assert_eq!(
            select_protocol(["v5.channel.k8s.io"], PORT_FORWARD_PROTOCOLS),
            None
        );
        assert_eq!(
            select_protocol(["v4.channel.k8s.io"], PORT_FORWARD_PROTOCOLS),
            Some("v4.channel.k8s.io")
        );
        for p in REMOTE_COMMAND_PROTOCOLS {
            remote_command_proto(p).unwrap();
        }
        for p in PORT_FORWARD_PROTOCOLS {
            port_forward_codec(p).unwrap();
        }
    }

    #[test]
    fn ports_from_the_query() {
        assert_eq!(
            parse_ports(["80", "8080,443"]).unwrap(),
            vec![80, 8080, 443]
        );
        assert!(matches!(parse_ports([]), Err(WsError::NoPorts)));
        assert!(matches!(parse_ports(["0"]), Err(WsError::InvalidPort(_))));
        assert!(matches!(parse_ports(["x"]), Err(WsError::InvalidPort(_))));
        assert!(matches!(parse_ports([""]), Err(WsError::InvalidPort(_))));
        let many = vec!["1"; 128];
        assert!(matches!(parse_ports(many), Err(WsError::TooManyPorts(128))));
    }

    #[tokio::test]
    async fn stdin_echo_then_success_status_v4() {
        let (mut ws, cio) = start("v4.channel.k8s.io", all()).await;
        let backend = echo_backend(cio, ExitStatus::Success);
        // The hello on stdout first.
        assert_eq!(recv(&mut ws).await, Some((STDOUT, vec![])));
        send(&mut ws, STDIN, b"hello\n").await;
        assert_eq!(recv(&mut ws).await, Some((STDOUT, b"hello\n".to_vec())));
        // v4 has no close signal: closing the connection is stdin's EOF.
        ws.close(None).await.unwrap();
        backend.await.unwrap();
    }

    #[tokio::test]
    async fn exit_code_status_json_on_channel_3() {
        let (mut ws, cio) = start("v5.channel.k8s.io", all()).await;
        let backend = echo_backend(cio, ExitStatus::ExitCode(3));
        send(&mut ws, STDIN, b"bye").await;
        send(&mut ws, CLOSE, &[STDIN]).await;
        let out = recv_all(&mut ws).await;
        backend.await.unwrap();
        assert_eq!(out[&STDOUT], b"bye");
        let v: serde_json::Value = serde_json::from_slice(&out[&ERROR]).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
    }

    #[tokio::test]
    async fn v5_close_signal_is_stdin_eof_and_output_still_flows() {
        let (mut ws, cio) = start("v5.channel.k8s.io", all()).await;
        let backend = tokio::spawn(async move {
            let mut stdin = cio.stdin.unwrap();
            let mut n = 0;
            while let Some(d) = stdin.recv().await {
                n += d.len();
            }
            // stdin is at EOF but the connection is alive: output works.
            let stdout = cio.stdout.unwrap();
            stdout.send(Bytes::from(format!("{n}"))).await.unwrap();
            cio.done.send(ExitStatus::Success).unwrap();
        });
        send(&mut ws, STDIN, b"abc").await;
        send(&mut ws, STDIN, b"de").await;
        send(&mut ws, CLOSE, &[STDIN]).await;
        let out = recv_all(&mut ws).await;
        backend.await.unwrap();
        assert_eq!(out[&STDOUT], b"5");
        assert_eq!(
            out[&ERROR],
            br#"{"metadata":{},"status":"Success"}"#.to_vec()
        );
    }

    #[tokio::test]
    async fn resize_reaches_the_backend() {
        let opts = StreamOpts { tty: true, ..all() };
        let (mut ws, mut cio) = start("v4.channel.k8s.io", opts).await;
        assert!(cio.stderr.is_none(), "a tty merges stderr");
        let mut resize = cio.resize.take().unwrap();
        send(&mut ws, RESIZE, br#"{"Width":80,"Height":24}"#).await;
        // Split across messages, and two in one.
        send(&mut ws, RESIZE, br#"{"Width":1"#).await;
        send(&mut ws, RESIZE, br#"00,"Height":50}{"Width":1,"Height":2}"#).await;
        // Junk is skipped, the next one still works.
        send(&mut ws, RESIZE, b"not json").await;
        send(&mut ws, RESIZE, br#"{"Width":7,"Height":8}"#).await;
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(resize.recv().await.unwrap());
        }
        let ts = |width, height| TermSize { width, height };
        assert_eq!(got, vec![ts(80, 24), ts(100, 50), ts(1, 2), ts(7, 8)]);
    }

    #[tokio::test]
    async fn large_stdout_arrives_whole_and_in_order() {
        let opts = StreamOpts {
            stdin: false,
            ..all()
        };
        let (mut ws, cio) = start("v4.channel.k8s.io", opts).await;
        assert!(cio.stdin.is_none());
        const TOTAL: usize = 16 << 20;
        tokio::spawn(async move {
            let stdout = cio.stdout.unwrap();
            let stderr = cio.stderr.unwrap();
            let mut sent = 0;
            let mut i = 0u8;
            while sent < TOTAL {
                let chunk: Vec<u8> = (0..65536)
                    .map(|j| i.wrapping_add((j % 251) as u8))
                    .collect();
                sent += chunk.len();
                stdout.send(Bytes::from(chunk)).await.unwrap();
                i = i.wrapping_add(1);
            }
            stderr.send(Bytes::from_static(b"warn")).await.unwrap();
            cio.done.send(ExitStatus::ExitCode(1)).unwrap();
        });
        let out = recv_all(&mut ws).await;
        let stdout = &out[&STDOUT];
        assert_eq!(stdout.len(), TOTAL);
        for (k, chunk) in stdout.chunks(65536).enumerate() {
            assert_eq!(chunk[0], k as u8);
            assert_eq!(chunk[1000], (k as u8).wrapping_add((1000 % 251) as u8));
        }
        assert_eq!(out[&STDERR], b"warn");
        assert!(!out[&ERROR].is_empty());
    }

    #[tokio::test]
    async fn client_disconnect_fires_client_gone_and_stdin_eof() {
        let (ws, cio) = start("v4.channel.k8s.io", all()).await;
        drop(ws);
        let mut stdin = cio.stdin.unwrap();
        tokio::time::timeout(Duration::from_secs(5), cio.client_gone)
            .await
            .expect("client_gone did not fire")
            .unwrap_err();
        assert_eq!(stdin.recv().await, None);
        // Output to a gone client fails instead of blocking.
        let stdout = cio.stdout.unwrap();
        let mut failed = false;
        for _ in 0..(QUEUE + 2) {
            if stdout.send(Bytes::from_static(b"x")).await.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }

    #[tokio::test]
    async fn idle_connection_is_closed() {
        let (mut ws, s) = client_pair().await;
        let limits = Limits {
            idle_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let cio = remote_command(s, "v4.channel.k8s.io", all(), limits)
            .await
            .unwrap();
        assert_eq!(recv(&mut ws).await, Some((STDOUT, vec![])));
        tokio::time::timeout(Duration::from_secs(5), cio.client_gone)
            .await
            .expect("idle timeout did not fire")
            .unwrap_err();
    }

    #[tokio::test]
    async fn malformed_messages_are_ignored() {
        let (mut ws, cio) = start("v5.channel.k8s.io", all()).await;
        let backend = echo_backend(cio, ExitStatus::Success);
        ws.send(Message::Binary(Bytes::new())).await.unwrap();
        send(&mut ws, 9, b"unknown channel").await;
        send(&mut ws, STDOUT, b"client may not write stdout").await;
        send(&mut ws, CLOSE, &[]).await;
        send(&mut ws, CLOSE, &[1, 2]).await;
        send(&mut ws, CLOSE, &[77]).await;
        send(&mut ws, STDIN, b"").await;
        ws.send(Message::Text("0!!!".into())).await.unwrap();
        ws.send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        send(&mut ws, STDIN, b"still alive").await;
        send(&mut ws, CLOSE, &[STDIN]).await;
        let out = recv_all(&mut ws).await;
        backend.await.unwrap();
        // The raw text message is taken as binary: channel '0' = 48.
        assert_eq!(out[&STDOUT], b"still alive");
    }

    #[tokio::test]
    async fn unversioned_protocol_sends_only_failure_text() {
        let (mut ws, cio) = start("channel.k8s.io", all()).await;
        cio.done.send(ExitStatus::Success).unwrap();
        let out = recv_all(&mut ws).await;
        assert!(!out.contains_key(&ERROR));

        let (mut ws, cio) = start("", all()).await;
        cio.done.send(ExitStatus::ExitCode(2)).unwrap();
        let out = recv_all(&mut ws).await;
        let text = String::from_utf8(out[&ERROR].clone()).unwrap();
        assert!(text.contains("exit status 2"), "{text}");
    }

    #[tokio::test]
    async fn base64_protocol_uses_text_messages() {
        let (mut ws, cio) = start("v4.base64.channel.k8s.io", all()).await;
        let backend = echo_backend(cio, ExitStatus::ExitCode(4));
        let first = ws.next().await.unwrap().unwrap();
        assert_eq!(first, Message::Text("1".into()));
        ws.send(Message::Text("0aGk=".into())).await.unwrap();
        assert_eq!(recv(&mut ws).await, Some((STDOUT, b"hi".to_vec())));
        ws.close(None).await.unwrap();
        backend.await.unwrap();
    }

    #[tokio::test]
    async fn unknown_protocol_is_refused() {
        let (_ws, s) = client_pair().await;
        let r = remote_command(s, "v9.channel.k8s.io", all(), Limits::default()).await;
        assert!(matches!(r, Err(WsError::UnsupportedProtocol(_))));
    }

    async fn echo_server() -> (u16, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = c.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    // Echo until the client half-closes, then say bye.
                    let _ = w.write_all(b"<eof>").await;
                });
            }
        });
        (port, h)
    }

    fn connector() -> PortConnector {
        Arc::new(|port| {
            Box::pin(async move { tokio::net::TcpStream::connect(("127.0.0.1", port)).await })
        })
    }

    #[tokio::test]
    async fn port_forward_pipes_and_reports_unreachable_ports() {
        let (port, _srv) = echo_server().await;
        // A port nobody listens on.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (mut ws, s) = client_pair().await;
        let pf = tokio::spawn(port_forward(
            s,
            "v4.channel.k8s.io",
            vec![port, dead],
            connector(),
            Limits::default(),
        ));
        let mut prefixes = Vec::new();
        let mut dead_err = Vec::new();
        // Port announcements on all four channels (in order per channel),
        // then the dead port's error.
        while prefixes.len() < 4 || dead_err.is_empty() {
            let (ch, d) = recv(&mut ws).await.unwrap();
            if d.len() == 2 && !prefixes.iter().any(|(c, _)| *c == ch) {
                prefixes.push((ch, u16::from_le_bytes([d[0], d[1]])));
            } else {
                assert_eq!(ch, 3, "only the dead port's error channel speaks");
                dead_err = d;
            }
        }
        prefixes.sort();
        assert_eq!(prefixes, vec![(0, port), (1, port), (2, dead), (3, dead)]);
        let msg = String::from_utf8(dead_err).unwrap();
        assert!(
            msg.contains(&format!("error forwarding port {dead}")),
            "{msg}"
        );

        send(&mut ws, 0, b"ping").await;
        assert_eq!(recv(&mut ws).await, Some((0, b"ping".to_vec())));
        // Data for the dead port or an error channel is dropped.
        send(&mut ws, 2, b"nobody").await;
        send(&mut ws, 1, b"nobody").await;
        send(&mut ws, 0, b"pong").await;
        assert_eq!(recv(&mut ws).await, Some((0, b"pong".to_vec())));
        // The client leaving ends the forward.
        ws.close(None).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), pf)
            .await
            .unwrap()
            .unwrap();
        assert!(r.is_ok(), "{r:?}");
    }

    #[tokio::test]
    async fn port_forward_announces_many_ports() {
        // More ports than the outgoing queue holds: announcing them must
        // not wait for a writer that has not started.
        let (port, _srv) = echo_server().await;
        let ports = vec![port; 40];
        let (mut ws, s) = client_pair().await;
        let pf = tokio::spawn(port_forward(
            s,
            "v4.channel.k8s.io",
            ports,
            connector(),
            Limits::default(),
        ));
        for ch in 0..80u8 {
            assert_eq!(recv(&mut ws).await, Some((ch, port.to_le_bytes().to_vec())));
        }
        send(&mut ws, 78, b"last").await;
        assert_eq!(recv(&mut ws).await, Some((78, b"last".to_vec())));
        ws.close(None).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), pf)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn port_forward_ends_when_the_pod_closes() {
        // A server that answers once and closes, like an HTTP/1.0 server.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).await.unwrap();
            c.write_all(&buf[..n]).await.unwrap();
            c.write_all(b" done").await.unwrap();
        });
        let (mut ws, s) = client_pair().await;
        let pf = tokio::spawn(port_forward(
            s,
            "v4.base64.channel.k8s.io",
            vec![port],
            connector(),
            Limits::default(),
        ));
        assert_eq!(recv(&mut ws).await, Some((0, port.to_le_bytes().to_vec())));
        assert_eq!(recv(&mut ws).await, Some((1, port.to_le_bytes().to_vec())));
        let mut s = String::from("0");
        base64::engine::general_purpose::STANDARD.encode_string(b"GET", &mut s);
        ws.send(Message::Text(s.into())).await.unwrap();
        let out = recv_all(&mut ws).await;
        assert_eq!(out[&0], b"GET done");
        tokio::time::timeout(Duration::from_secs(5), pf)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
