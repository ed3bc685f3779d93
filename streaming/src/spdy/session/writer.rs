//! The writer task: control frames first, then stream frames in order.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::{Shared, WriteCmd};
use crate::spdy::frame::{Encoder, Frame};
use crate::spdy::SpdyError;

pub(super) async fn writer<W>(
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
