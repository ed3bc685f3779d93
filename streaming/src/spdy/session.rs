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

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use super::frame::{
    Decoder, Encoder, Frame, FrameError, FrameHead, GoAwayStatus, Headers, RstStatus, FLAG_FIN,
    FLAG_UNIDIRECTIONAL, HEADER_LEN, SETTINGS_INITIAL_WINDOW_SIZE,
};
use super::SpdyError;

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

impl Stream {
    /// The next chunk the client sent; None at its FIN, on reset or when the
    /// session is over. Consuming data grants the client window again.
    pub async fn recv(&self) -> Option<Bytes> {
        enum Step {
            Chunk(Bytes, Vec<Frame>),
            End,
            Wait(Arc<Notify>),
        }
        loop {
            let step = {
                let mut st = self.shared.lock();
                let half_window = self.shared.cfg.stream_recv_window / 2;
                let closed = st.closed.is_some();
                match st.streams.get_mut(&self.id) {
                    None => Step::End,
                    Some(s) => match s.recv_buf.pop_front() {
                        Some(chunk) => {
                            s.recv_buffered -= chunk.len();
                            s.space.notify_one();
                            let n = chunk.len() as u32;
                            s.recv_unacked += n;
                            let mut updates = Vec::new();
                            if s.recv_unacked >= half_window && !s.remote_fin {
                                updates.push(Frame::WindowUpdate {
                                    stream_id: self.id,
                                    delta: std::mem::take(&mut s.recv_unacked),
                                });
                            }
                            st.session_recv_unacked += n;
                            updates.extend(session_update(&mut st, &self.shared.cfg));
                            Step::Chunk(chunk, updates)
                        }
                        None if s.remote_fin || s.reset || closed => Step::End,
                        None => Step::Wait(s.data_ready.clone()),
                    },
                }
            };
            match step {
                Step::Chunk(chunk, updates) => {
                    for u in updates {
                        // A closed session only means no more updates matter.
                        let _ = self.shared.send_ctl(u).await;
                    }
                    return Some(chunk);
                }
                Step::End => return None,
                // notify_one keeps a permit, so a wake-up between the unlock
                // and this await is not lost.
                Step::Wait(notify) => notify.notified().await,
            }
        }
    }

    /// Sends `data`, waiting for send window (see the module docs) and for
    /// room in the writer's queue.
    pub async fn send(&self, mut data: Bytes) -> Result<(), SpdyError> {
        enum Next {
            Send(usize),
            Wait(Option<tokio::time::Instant>),
        }
        let mut epoch = self.shared.epoch.subscribe();
        let mut grace_deadline: Option<tokio::time::Instant> = None;
        while !data.is_empty() {
            epoch.borrow_and_update();
            let next = {
                let mut st = self.shared.lock();
                if st.closed.is_some() {
                    return Err(SpdyError::SessionClosed);
                }
                let flow = st.flow;
                let session_window = st.session_send_window;
                let s = st
                    .streams
                    .get_mut(&self.id)
                    .ok_or(SpdyError::StreamReset(self.id))?;
                if s.reset {
                    return Err(SpdyError::StreamReset(self.id));
                }
                if s.local_fin {
                    return Err(SpdyError::StreamFinished(self.id));
                }
                let avail = if flow == FlowMode::Legacy {
                    MAX_SEND_CHUNK as i64
                } else {
                    s.send_window.min(session_window)
                };
                if avail > 0 {
                    let n = data.len().min(MAX_SEND_CHUNK).min(avail as usize);
                    s.send_window -= n as i64;
                    st.session_send_window -= n as i64;
                    Next::Send(n)
                } else if flow == FlowMode::Unknown {
                    let now = tokio::time::Instant::now();
                    let deadline = *grace_deadline.get_or_insert(now + LEGACY_PEER_GRACE);
                    if now >= deadline {
                        debug!(
                            conn = self.shared.conn_id,
                            stream = self.id,
                            "peer sent no flow-control frame; relying on TCP backpressure"
                        );
                        st.flow = FlowMode::Legacy;
                        continue;
                    }
                    Next::Wait(Some(deadline))
                } else {
                    Next::Wait(None)
                }
            };
            match next {
                Next::Send(n) => {
                    let chunk = data.split_to(n);
                    self.shared
                        .send_data_queue(Frame::Data {
                            stream_id: self.id,
                            flags: 0,
                            data: chunk,
                        })
                        .await?;
                }
                Next::Wait(grace) => {
                    trace!(
                        conn = self.shared.conn_id,
                        stream = self.id,
                        "send window exhausted"
                    );
                    match grace {
                        Some(d) => {
                            let _ = tokio::time::timeout_at(d, epoch.changed()).await;
                        }
                        None => {
                            if epoch.changed().await.is_err() {
                                return Err(SpdyError::SessionClosed);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Half-closes our side (DATA with FIN). Idempotent.
    pub async fn finish(&self) -> Result<(), SpdyError> {
        {
            let mut st = self.shared.lock();
            match st.streams.get_mut(&self.id) {
                Some(s) if !s.local_fin && !s.reset => s.local_fin = true,
                _ => return Ok(()),
            }
        }
        self.shared
            .send_data_queue(Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            })
            .await
    }

    /// Aborts the stream (RST_STREAM).
    pub async fn reset(&self, status: RstStatus) {
        {
            let mut st = self.shared.lock();
            match st.streams.get_mut(&self.id) {
                Some(s) if !s.reset => {
                    s.reset = true;
                    s.data_ready.notify_one();
                    s.space.notify_one();
                }
                _ => return,
            }
        }
        self.shared.bump();
        let _ = self.shared.send_rst(self.id, status).await;
    }

    /// Whether the client reset the stream (or the session is over).
    pub fn is_reset(&self) -> bool {
        let st = self.shared.lock();
        st.closed.is_some() || st.streams.get(&self.id).is_none_or(|s| s.reset)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let Some(s) = st.streams.remove(&self.id) else {
            return;
        };
        // Whatever the client sent that nobody read still counts against
        // the session window: give it back.
        let unread = s.recv_buffered as u32;
        st.session_recv_unacked += unread;
        let update = session_update(&mut st, &self.shared.cfg);
        let closed = st.closed.is_some();
        drop(st);
        if closed {
            return;
        }
        if let Some(u) = update {
            let _ = self.shared.ctl_tx.try_send(WriteCmd::Frame(u));
        }
        // A stream we finished needs nothing more: the client's FIN (or the
        // GOAWAY) ends it.
        if !s.reset && !s.local_fin {
            // Dropped half-open: tell the client we are gone. Best effort,
            // Drop cannot wait for queue room.
            self.shared.try_send_rst(self.id, RstStatus::Cancel);
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

async fn writer<W>(
    shared: Arc<Shared>,
    mut wr: tokio::io::WriteHalf<W>,
    mut ctl_rx: mpsc::Receiver<WriteCmd>,
    mut data_rx: mpsc::Receiver<WriteCmd>,
    greeting: Vec<Frame>,
) where
    W: AsyncRead + AsyncWrite + Unpin,
{
    let mut enc = Encoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let result: Result<(), SpdyError> = async {
        for f in &greeting {
            enc.encode(f, &mut buf)?;
        }
        let mut shutdown = false;
        loop {
            if !buf.is_empty() {
                wr.write_all(&buf).await?;
                wr.flush().await?;
                buf.clear();
                shared.touch();
            }
            if shutdown {
                wr.shutdown().await?;
                return Ok(());
            }
            let cmd = tokio::select! {
                biased;
                _ = shared.closed.cancelled() => return Ok(()),
                c = ctl_rx.recv() => c,
                c = data_rx.recv() => c,
            };
            let Some(cmd) = cmd else { return Ok(()) };
            let mut next = Some(cmd);
            // Batch what is already queued into one write.
            while let Some(cmd) = next.take() {
                match cmd {
                    WriteCmd::Frame(f) => enc.encode(&f, &mut buf)?,
                    WriteCmd::Shutdown => {
                        shutdown = true;
                        break;
                    }
                }
                if buf.len() >= 64 * 1024 {
                    break;
                }
                next = ctl_rx.try_recv().ok().or_else(|| data_rx.try_recv().ok());
            }
        }
    }
    .await;
    if let Err(e) = result {
        debug!(conn = shared.conn_id, error = %e, "SPDY writer stopped");
        shared.mark_closed(&format!("write failed: {e}"), true);
    }
}

async fn reader<R>(
    shared: Arc<Shared>,
    mut rd: tokio::io::ReadHalf<R>,
    in_tx: mpsc::Sender<IncomingStream>,
) where
    R: AsyncRead + AsyncWrite + Unpin,
{
    let mut dec = Decoder::new();
    let result = tokio::select! {
        r = read_loop(&shared, &mut rd, &mut dec, &in_tx) => r,
        _ = shared.closed.cancelled() => return,
    };
    let reason = match &result {
        Ok(()) => "peer closed the connection".to_owned(),
        Err(e) => format!("{e}"),
    };
    if let Err(e) = &result {
        if matches!(e, SpdyError::Frame(_)) {
            warn!(conn = shared.conn_id, error = %e, "SPDY protocol error from peer");
            // Tell the peer why, best effort.
            let _ = shared.ctl_tx.try_send(WriteCmd::Frame(Frame::GoAway {
                last_good_stream_id: shared.lock().last_client_id,
                status: GoAwayStatus::ProtocolError as u32,
            }));
            let _ = shared.ctl_tx.try_send(WriteCmd::Shutdown);
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            debug!(conn = shared.conn_id, error = %e, "SPDY connection ended");
        }
    } else {
        debug!(conn = shared.conn_id, "SPDY peer closed the connection");
    }
    shared.mark_closed(&reason, true);
}

async fn read_loop<R>(
    shared: &Arc<Shared>,
    rd: &mut tokio::io::ReadHalf<R>,
    dec: &mut Decoder,
    in_tx: &mpsc::Sender<IncomingStream>,
) -> Result<(), SpdyError>
where
    R: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let mut h = [0u8; HEADER_LEN];
        match rd.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let head = FrameHead::parse(&h)?;
        let mut payload = BytesMut::zeroed(head.payload_len());
        rd.read_exact(&mut payload).await?;
        shared.touch();
        let frame = dec.decode(head, payload.freeze())?;
        trace!(conn = shared.conn_id, ?frame, "frame in");
        handle_frame(shared, frame, in_tx).await?;
    }
}

async fn handle_frame(
    shared: &Arc<Shared>,
    frame: Frame,
    in_tx: &mpsc::Sender<IncomingStream>,
) -> Result<(), SpdyError> {
    match frame {
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => {
            let refuse = {
                let mut st = shared.lock();
                if stream_id % 2 == 0 || stream_id <= st.last_client_id {
                    Some(RstStatus::ProtocolError)
                } else {
                    st.last_client_id = stream_id;
                    if st.goaway_received || st.streams.len() >= MAX_STREAMS {
                        Some(RstStatus::RefusedStream)
                    } else {
                        let fin = flags & (FLAG_FIN | FLAG_UNIDIRECTIONAL) != 0;
                        let initial = st.initial_send_window;
                        st.streams.insert(
                            stream_id,
                            StreamState {
                                send_window: initial,
                                recv_buf: VecDeque::new(),
                                recv_buffered: 0,
                                recv_unacked: 0,
                                remote_fin: fin,
                                local_fin: false,
                                reset: false,
                                data_ready: Arc::new(Notify::new()),
                                space: Arc::new(Notify::new()),
                            },
                        );
                        None
                    }
                }
            };
            if let Some(status) = refuse {
                debug!(
                    conn = shared.conn_id,
                    stream = stream_id,
                    ?status,
                    "refusing stream"
                );
                shared.send_rst(stream_id, status).await?;
                return Ok(());
            }
            debug!(
                conn = shared.conn_id,
                stream = stream_id,
                ?headers,
                "stream opened"
            );
            let incoming = IncomingStream {
                id: stream_id,
                headers,
                shared: shared.clone(),
                answered: false,
            };
            // Bounded: a client opening streams faster than they are
            // accepted waits (its frames wait in TCP).
            if in_tx.send(incoming).await.is_err() {
                // Nobody accepts any more; the IncomingStream's Drop refused it.
            }
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            let n = data.len();
            loop {
                let (space, update) = {
                    let mut st = shared.lock();
                    let limit = shared.cfg.stream_recv_window as usize;
                    match st.streams.get_mut(&stream_id) {
                        Some(s) if !s.reset && !s.remote_fin => {
                            if s.recv_buffered > 0 && s.recv_buffered + n > limit {
                                // The peer ignores our window (spdystream):
                                // stop reading until the consumer catches up.
                                (Some(s.space.clone()), None)
                            } else {
                                if n > 0 {
                                    s.recv_buffered += n;
                                    s.recv_buf.push_back(data.clone());
                                }
                                if flags & FLAG_FIN != 0 {
                                    s.remote_fin = true;
                                }
                                s.data_ready.notify_one();
                                (None, None)
                            }
                        }
                        _ => {
                            // Data for a stream we no longer track: drop it
                            // but give its bytes back to the session window.
                            st.session_recv_unacked += n as u32;
                            (None, session_update(&mut st, &shared.cfg))
                        }
                    }
                };
                if let Some(u) = update {
                    shared.send_ctl(u).await?;
                }
                match space {
                    Some(space) => {
                        tokio::select! {
                            _ = space.notified() => {}
                            _ = shared.closed.cancelled() => return Ok(()),
                        }
                    }
                    None => break,
                }
            }
        }
        Frame::RstStream { stream_id, status } => {
            debug!(
                conn = shared.conn_id,
                stream = stream_id,
                status,
                "client reset stream"
            );
            {
                let mut st = shared.lock();
                if let Some(s) = st.streams.get_mut(&stream_id) {
                    s.reset = true;
                    s.data_ready.notify_one();
                    s.space.notify_one();
                }
            }
            shared.bump();
        }
        Frame::Headers {
            stream_id, flags, ..
        } => {
            if flags & FLAG_FIN != 0 {
                let mut st = shared.lock();
                if let Some(s) = st.streams.get_mut(&stream_id) {
                    s.remote_fin = true;
                    s.data_ready.notify_one();
                }
            }
        }
        Frame::SynReply { stream_id, .. } => {
            // We never open streams: a reply is the client's confusion.
            debug!(
                conn = shared.conn_id,
                stream = stream_id,
                "ignoring SYN_REPLY"
            );
        }
        Frame::Settings { entries, .. } => {
            let mut st = shared.lock();
            st.flow = FlowMode::Enforced;
            for (_, id, value) in entries {
                if id == SETTINGS_INITIAL_WINDOW_SIZE {
                    let new = i64::from(value).min(MAX_WINDOW);
                    let delta = new - st.initial_send_window;
                    st.initial_send_window = new;
                    // SPDY/3.1 2.6.8: open streams' windows move by the delta.
                    for s in st.streams.values_mut() {
                        s.send_window += delta;
                    }
                }
            }
            drop(st);
            shared.bump();
        }
        Frame::WindowUpdate { stream_id, delta } => {
            {
                let mut st = shared.lock();
                if st.flow == FlowMode::Unknown {
                    st.flow = FlowMode::Enforced;
                }
                if stream_id == 0 {
                    st.session_send_window =
                        (st.session_send_window + i64::from(delta)).min(MAX_WINDOW);
                } else if let Some(s) = st.streams.get_mut(&stream_id) {
                    s.send_window = (s.send_window + i64::from(delta)).min(MAX_WINDOW);
                }
            }
            shared.bump();
        }
        Frame::Ping { id } => {
            // Odd ids are the client's: echo them. Even ones would be
            // replies to our pings, and we send none.
            if id % 2 == 1 {
                shared.send_ctl(Frame::Ping { id }).await?;
            }
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            debug!(
                conn = shared.conn_id,
                last_good_stream_id, status, "client sent GOAWAY"
            );
            shared.lock().goaway_received = true;
        }
        Frame::Unknown { frame_type } => {
            trace!(conn = shared.conn_id, frame_type, "ignoring control frame");
        }
    }
    Ok(())
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
mod tests {
    use super::*;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    /// A raw peer speaking frames at the session (built on our codec; the
    /// integration tests use an independent client).
    struct Peer {
        rd: ReadHalf<DuplexStream>,
        wr: WriteHalf<DuplexStream>,
        enc: Encoder,
        dec: Decoder,
    }

    impl Peer {
        async fn send(&mut self, f: Frame) {
            let mut b = BytesMut::new();
            self.enc.encode(&f, &mut b).unwrap();
            self.wr.write_all(&b).await.unwrap();
        }
        async fn next(&mut self, wait: Duration) -> Option<Frame> {
            let mut h = [0u8; HEADER_LEN];
            match tokio::time::timeout(wait, self.rd.read_exact(&mut h)).await {
                Ok(Ok(_)) => {}
                _ => return None,
            }
            let head = FrameHead::parse(&h).unwrap();
            let mut p = BytesMut::zeroed(head.payload_len());
            self.rd.read_exact(&mut p).await.unwrap();
            Some(self.dec.decode(head, p.freeze()).unwrap())
        }
        /// Reads frames until quiet, returning DATA bytes per stream and the
        /// other frames.
        async fn drain(&mut self, wait: Duration) -> (usize, Vec<Frame>) {
            let mut n = 0;
            let mut other = Vec::new();
            while let Some(f) = self.next(wait).await {
                match f {
                    Frame::Data { data, .. } => n += data.len(),
                    f => other.push(f),
                }
            }
            (n, other)
        }
    }

    fn setup() -> (Session, Peer) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let session = Session::start(a, Config::default(), 0);
        let (rd, wr) = tokio::io::split(b);
        (
            session,
            Peer {
                rd,
                wr,
                enc: Encoder::new(),
                dec: Decoder::new(),
            },
        )
    }

    fn syn(id: u32, kind: &str) -> Frame {
        Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), kind.into())],
        }
    }

    #[tokio::test]
    async fn sender_stalls_at_the_window_and_resumes_on_update() {
        let (mut session, mut peer) = setup();
        // An empty SETTINGS marks the peer as one that does flow control.
        peer.send(Frame::Settings {
            flags: 0,
            entries: vec![],
        })
        .await;
        peer.send(syn(1, "stdout")).await;
        let stream = session.accept().await.unwrap();
        assert_eq!(stream.header("StreamType"), Some("stdout"));
        let stream = stream.accept().await.unwrap();
        let total = 300 * 1024;
        let sender = tokio::spawn(async move {
            stream.send(Bytes::from(vec![7u8; total])).await.unwrap();
            stream.finish().await.unwrap();
            stream
        });
        let (got, other) = peer.drain(Duration::from_millis(500)).await;
        assert_eq!(got, 64 * 1024, "the sender must stop at the initial window");
        assert!(other
            .iter()
            .any(|f| matches!(f, Frame::SynReply { stream_id: 1, .. })));
        // Grant the stream more but not the session: still stalled.
        peer.send(Frame::WindowUpdate {
            stream_id: 1,
            delta: 1 << 20,
        })
        .await;
        let (more, _) = peer.drain(Duration::from_millis(300)).await;
        assert_eq!(more, 0, "the session window still blocks");
        peer.send(Frame::WindowUpdate {
            stream_id: 0,
            delta: 100 * 1024,
        })
        .await;
        let (more, _) = peer.drain(Duration::from_millis(300)).await;
        assert_eq!(more, 100 * 1024);
        peer.send(Frame::WindowUpdate {
            stream_id: 0,
            delta: 1 << 20,
        })
        .await;
        let (more, other) = peer.drain(Duration::from_millis(300)).await;
        assert_eq!(got + 100 * 1024 + more, total);
        assert!(other.is_empty(), "{other:?}");
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn a_peer_without_flow_control_gets_everything() {
        // spdystream (kubectl) never sends SETTINGS or WINDOW_UPDATE.
        let (mut session, mut peer) = setup();
        peer.send(syn(1, "stdout")).await;
        let stream = session.accept().await.unwrap().accept().await.unwrap();
        let total = 1 << 20;
        let sender = tokio::spawn(async move {
            stream.send(Bytes::from(vec![1u8; total])).await.unwrap();
            stream
        });
        let (got, _) = peer.drain(Duration::from_millis(1000)).await;
        assert_eq!(got, total);
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn receiver_grants_window_as_data_is_consumed() {
        let (mut session, mut peer) = setup();
        // The greeting: our stream window by SETTINGS, the session's by
        // WINDOW_UPDATE on stream 0.
        let s = peer.next(Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            s,
            Frame::Settings {
                flags: 0,
                entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 256 * 1024)]
            }
        );
        assert!(matches!(
            peer.next(Duration::from_secs(1)).await,
            Some(Frame::WindowUpdate { stream_id: 0, .. })
        ));
        peer.send(syn(1, "stdin")).await;
        let stream = session.accept().await.unwrap().accept().await.unwrap();
        let consumer = tokio::spawn(async move {
            let mut n = 0;
            while let Some(c) = stream.recv().await {
                n += c.len();
            }
            n
        });
        for _ in 0..16 {
            peer.send(Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from(vec![0u8; 16 * 1024]),
            })
            .await;
        }
        let (_, frames) = peer.drain(Duration::from_millis(300)).await;
        peer.send(Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: Bytes::new(),
        })
        .await;
        assert_eq!(consumer.await.unwrap(), 256 * 1024);
        let granted: u32 = frames
            .iter()
            .filter_map(|f| match f {
                Frame::WindowUpdate {
                    stream_id: 1,
                    delta,
                } => Some(*delta),
                _ => None,
            })
            .sum();
        assert!(granted >= 128 * 1024, "{frames:?}");
    }

    #[tokio::test]
    async fn ping_is_echoed_and_garbage_ends_the_session() {
        let (session, mut peer) = setup();
        peer.send(Frame::Ping { id: 5 }).await;
        let (_, frames) = peer.drain(Duration::from_millis(300)).await;
        assert!(frames.contains(&Frame::Ping { id: 5 }), "{frames:?}");
        // A control frame with SPDY version 2: a protocol error.
        peer.wr
            .write_all(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1])
            .await
            .unwrap();
        let (_, frames) = peer.drain(Duration::from_millis(500)).await;
        assert!(
            frames
                .iter()
                .any(|f| matches!(f, Frame::GoAway { status: 1, .. })),
            "{frames:?}"
        );
        tokio::time::timeout(
            Duration::from_secs(2),
            session.peer_gone_token().cancelled(),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn idle_sessions_close() {
        let (a, _b) = tokio::io::duplex(1024);
        let cfg = Config {
            idle_timeout: Duration::from_millis(200),
            ..Config::default()
        };
        let session = Session::start(a, cfg, 0);
        tokio::time::timeout(Duration::from_secs(2), session.closed_token().cancelled())
            .await
            .unwrap();
    }
}
