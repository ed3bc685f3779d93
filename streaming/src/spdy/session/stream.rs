//! Stream handles: reading (granting receive window as data is consumed),
//! writing under the send window, half-close and reset.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::{debug, trace};

use super::{session_update, FlowMode, Stream, WriteCmd, LEGACY_PEER_GRACE, MAX_SEND_CHUNK};
use crate::spdy::frame::{Frame, RstStatus, FLAG_FIN};
use crate::spdy::SpdyError;

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
