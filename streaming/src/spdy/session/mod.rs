//! One SPDY/3.1 session on an upgraded connection, server side: the client
//! opens streams (odd ids), we reply, and DATA flows both ways under
//! per-stream and session flow control.
//!
//! Tasks: a reader (frames in, dispatch), a writer (frames out: control
//! frames first, stream frames in order) and an idle watchdog. Stream handles
//! talk to them through the shared state and two bounded queues, so nothing
//! here buffers without bound: incoming DATA beyond a stream's receive window
//! blocks the reader (TCP backpressure), outgoing DATA waits for send window
//! and for room in the writer's queue.
//!
//! Flow control and real clients: kubectl, crictl and every client-go user
//! speak SPDY through spdystream, which sends `Upgrade: SPDY/3.1` but
//! implements no flow control at all: it never sends SETTINGS or
//! WINDOW_UPDATE and ignores ours (kubelet's server, also spdystream, relies
//! on TCP backpressure alone). A SPDY/3.1 peer that does flow control
//! (node-spdy, browsers) announces itself with SETTINGS and/or WINDOW_UPDATE
//! frames. So the send windows are enforced from the start; if one runs dry
//! before the peer ever sent a flow-control frame, we wait a short grace for
//! one and then treat the peer as spdystream-like for the rest of the
//! session (TCP backpressure only). We always send WINDOW_UPDATEs as the
//! consumer drains what it received: harmless to spdystream, required by a
//! SPDY/3.1 sender.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::frame::{
    Frame, FrameError, GoAwayStatus, Headers, RstStatus, SETTINGS_INITIAL_WINDOW_SIZE,
};
use super::SpdyError;

mod reader;
mod stream;
mod writer;

use reader::reader;
use writer::writer;

/// SPDY/3.1's initial window, per stream and for the session.
pub const DEFAULT_WINDOW: u32 = 64 * 1024;
/// Largest DATA frame we send: small enough to interleave streams fairly.
const MAX_SEND_CHUNK: usize = 16 * 1024;
/// How long a sender whose window ran dry waits for a first flow-control
/// frame before concluding the peer does no flow control (spdystream).
const LEGACY_PEER_GRACE: Duration = Duration::from_millis(250);
/// After our GOAWAY, how long the peer gets to close the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Streams the client may have open at once; more are refused.
const MAX_STREAMS: usize = 1024;
/// Largest window a WINDOW_UPDATE may produce (31 bits).
const MAX_WINDOW: i64 = 0x7fff_ffff;

#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Closes the session when no frame moved for this long.
    pub idle_timeout: Duration,
    /// The per-stream receive window we advertise (SETTINGS) and the most
    /// we buffer per stream.
    pub stream_recv_window: u32,
    /// The session receive window we grant (WINDOW_UPDATE on stream 0).
    pub session_recv_window: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout: Duration::from_secs(4 * 3600),
            stream_recv_window: 256 * 1024,
            session_recv_window: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowMode {
    /// No flow-control frame seen yet: windows enforced, with the grace.
    Unknown,
    /// The peer sent SETTINGS or WINDOW_UPDATE: windows enforced.
    Enforced,
    /// The window ran dry and the peer never spoke flow control.
    Legacy,
}

enum WriteCmd {
    Frame(Frame),
    /// Flush and shut down the write side.
    Shutdown,
}

struct StreamState {
    send_window: i64,
    recv_buf: VecDeque<Bytes>,
    recv_buffered: usize,
    recv_unacked: u32,
    remote_fin: bool,
    local_fin: bool,
    reset: bool,
    /// Data, FIN or reset arrived (the consumer waits on it).
    data_ready: Arc<Notify>,
    /// The consumer freed buffer space (an overrunning reader waits on it).
    space: Arc<Notify>,
}

struct State {
    streams: HashMap<u32, StreamState>,
    session_send_window: i64,
    initial_send_window: i64,
    session_recv_unacked: u32,
    flow: FlowMode,
    last_client_id: u32,
    goaway_received: bool,
    /// Why the session is over, once it is.
    closed: Option<String>,
}

struct Shared {
    cfg: Config,
    state: Mutex<State>,
    /// Bumped whenever send windows grow, streams reset or the session ends.
    epoch: watch::Sender<u64>,
    ctl_tx: mpsc::Sender<WriteCmd>,
    data_tx: mpsc::Sender<WriteCmd>,
    /// Cancelled when the connection is over (either side).
    closed: CancellationToken,
    /// Cancelled when the peer went away or the session failed before we
    /// closed it ourselves.
    peer_gone: CancellationToken,
    last_activity: Mutex<Instant>,
    conn_id: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug elsewhere; the
        // state itself stays consistent enough to shut down.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn bump(&self) {
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    /// Marks the session over and wakes everyone waiting on it.
    fn mark_closed(&self, reason: &str, peer_gone: bool) {
        {
            let mut st = self.lock();
            if st.closed.is_none() {
                st.closed = Some(reason.to_owned());
            }
            for s in st.streams.values() {
                s.data_ready.notify_one();
                s.space.notify_one();
            }
        }
        if peer_gone {
            self.peer_gone.cancel();
        }
        self.closed.cancel();
        self.bump();
    }

    async fn send_ctl(&self, f: Frame) -> Result<(), SpdyError> {
        self.ctl_tx
            .send(WriteCmd::Frame(f))
            .await
            .map_err(|_| SpdyError::SessionClosed)
    }

    async fn send_data_queue(&self, f: Frame) -> Result<(), SpdyError> {
        self.data_tx
            .send(WriteCmd::Frame(f))
            .await
            .map_err(|_| SpdyError::SessionClosed)
    }

    /// Resets a stream, in order with its data.
    async fn send_rst(&self, stream_id: u32, status: RstStatus) -> Result<(), SpdyError> {
        self.send_data_queue(Frame::RstStream {
            stream_id,
            status: status as u32,
        })
        .await
    }

    /// Resets a stream if the queue has room (from Drop, which cannot wait).
    fn try_send_rst(&self, stream_id: u32, status: RstStatus) {
        let _ = self.data_tx.try_send(WriteCmd::Frame(Frame::RstStream {
            stream_id,
            status: status as u32,
        }));
    }
}

/// A running session. Dropping it does not stop the tasks: call
/// [`Session::close`].
pub struct Session {
    shared: Arc<Shared>,
    incoming: mpsc::Receiver<IncomingStream>,
}

/// A stream the client opened, not yet answered.
pub struct IncomingStream {
    pub id: u32,
    pub headers: Headers,
    shared: Arc<Shared>,
    answered: bool,
}

/// An accepted stream.
pub struct Stream {
    pub id: u32,
    shared: Arc<Shared>,
}

impl Session {
    /// Starts the session tasks on `io` (already upgraded).
    pub fn start<IO>(io: IO, cfg: Config, conn_id: u64) -> Session
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (ctl_tx, ctl_rx) = mpsc::channel(64);
        let (data_tx, data_rx) = mpsc::channel(64);
        let (in_tx, in_rx) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State {
                streams: HashMap::new(),
                session_send_window: i64::from(DEFAULT_WINDOW),
                initial_send_window: i64::from(DEFAULT_WINDOW),
                session_recv_unacked: 0,
                flow: FlowMode::Unknown,
                last_client_id: 0,
                goaway_received: false,
                closed: None,
            }),
            epoch: watch::channel(0).0,
            ctl_tx,
            data_tx,
            closed: CancellationToken::new(),
            peer_gone: CancellationToken::new(),
            last_activity: Mutex::new(Instant::now()),
            conn_id,
        });
        // Our receive windows: the per-stream one by SETTINGS, the session
        // one by a WINDOW_UPDATE on stream 0 (its initial size is fixed).
        let mut greeting = vec![Frame::Settings {
            flags: 0,
            entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, cfg.stream_recv_window)],
        }];
        if cfg.session_recv_window > DEFAULT_WINDOW {
            greeting.push(Frame::WindowUpdate {
                stream_id: 0,
                delta: cfg.session_recv_window - DEFAULT_WINDOW,
            });
        }
        tokio::spawn(writer(shared.clone(), wr, ctl_rx, data_rx, greeting));
        tokio::spawn(reader(shared.clone(), rd, in_tx));
        tokio::spawn(watchdog(shared.clone()));
        Session {
            shared,
            incoming: in_rx,
        }
    }

    /// The next stream the client opens; None once the session is over.
    pub async fn accept(&mut self) -> Option<IncomingStream> {
        tokio::select! {
            s = self.incoming.recv() => s,
            _ = self.shared.closed.cancelled() => None,
        }
    }

    /// Resolves when the connection is over, whoever ended it.
    pub fn closed_token(&self) -> CancellationToken {
        self.shared.closed.clone()
    }

    /// Resolves when the peer went away (or the session failed) before we
    /// closed it.
    pub fn peer_gone_token(&self) -> CancellationToken {
        self.shared.peer_gone.clone()
    }

    /// Ends the session: GOAWAY after every frame already queued, then the
    /// write side is shut down; the connection is dropped when the peer
    /// closes its side or after a grace period.
    pub async fn close(&self, status: GoAwayStatus) {
        let last = self.shared.lock().last_client_id;
        let _ = self
            .shared
            .send_data_queue(Frame::GoAway {
                last_good_stream_id: last,
                status: status as u32,
            })
            .await;
        let _ = self.shared.data_tx.send(WriteCmd::Shutdown).await;
        if tokio::time::timeout(CLOSE_GRACE, self.shared.closed.cancelled())
            .await
            .is_err()
        {
            debug!(
                conn = self.shared.conn_id,
                "peer did not close after GOAWAY; dropping the connection"
            );
        }
        self.shared.mark_closed("closed by server", false);
    }

    /// Ends the session at once (no GOAWAY).
    pub fn abort(&self, reason: &str) {
        self.shared.mark_closed(reason, false);
    }
}

impl IncomingStream {
    /// Whether the client opened the stream half-closed (FIN or
    /// unidirectional on SYN_STREAM).
    pub fn header(&self, name: &str) -> Option<&str> {
        super::frame::header(&self.headers, name)
    }

    /// Replies SYN_REPLY and returns the stream. The reply carries
    /// `:status`/`:version` because SPDY/3.1 clients such as node-spdy reset a
    /// stream whose reply lacks `:status`; spdystream ignores reply headers.
    pub async fn accept(mut self) -> Result<Stream, SpdyError> {
        self.answered = true;
        self.shared
            .send_data_queue(Frame::SynReply {
                stream_id: self.id,
                flags: 0,
                headers: vec![
                    (":status".into(), "200".into()),
                    (":version".into(), "HTTP/1.1".into()),
                ],
            })
            .await?;
        Ok(Stream {
            id: self.id,
            shared: self.shared.clone(),
        })
    }

    /// Refuses the stream with RST_STREAM.
    pub async fn reject(mut self, status: RstStatus) {
        self.answered = true;
        self.shared.lock().streams.remove(&self.id);
        let _ = self.shared.send_rst(self.id, status).await;
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if !self.answered {
            self.shared.lock().streams.remove(&self.id);
            self.shared.try_send_rst(self.id, RstStatus::RefusedStream);
        }
    }
}

/// The session WINDOW_UPDATE due once half the session window was consumed.
fn session_update(st: &mut State, cfg: &Config) -> Option<Frame> {
    let half = cfg.session_recv_window.max(DEFAULT_WINDOW) / 2;
    (st.session_recv_unacked >= half).then(|| Frame::WindowUpdate {
        stream_id: 0,
        delta: std::mem::take(&mut st.session_recv_unacked),
    })
}

async fn watchdog(shared: Arc<Shared>) {
    let idle = shared.cfg.idle_timeout;
    loop {
        let last = *shared
            .last_activity
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let deadline = last + idle;
        if Instant::now() >= deadline {
            debug!(
                conn = shared.conn_id,
                ?idle,
                "SPDY connection idle; closing"
            );
            shared.mark_closed("idle timeout", true);
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = shared.closed.cancelled() => return,
        }
    }
}

impl From<FrameError> for SpdyError {
    fn from(e: FrameError) -> Self {
        SpdyError::Frame(e)
    }
}

#[cfg(test)]
mod tests;
