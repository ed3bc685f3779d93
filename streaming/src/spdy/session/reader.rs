//! The reader task: decodes frames and dispatches them to streams and to
//! the session state (SYN_STREAM, DATA, WINDOW_UPDATE, SETTINGS, PING, ...).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, trace, warn};

use super::{
    session_update, FlowMode, IncomingStream, Shared, StreamState, WriteCmd, MAX_STREAMS,
    MAX_WINDOW,
};
use crate::spdy::frame::{
    Decoder, Frame, FrameHead, GoAwayStatus, RstStatus, FLAG_FIN, FLAG_UNIDIRECTIONAL, HEADER_LEN,
    SETTINGS_INITIAL_WINDOW_SIZE,
};
use crate::spdy::SpdyError;

pub(super) async fn reader<R>(
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
