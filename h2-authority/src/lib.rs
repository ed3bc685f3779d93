//! Any HTTP/2 `:authority` on a Unix socket.
//!
//! gRPC clients dialling a Unix socket send what they like as `:authority`:
//! Go's gRPC as vendored by kubelet and crictl sends the socket path
//! (`/run/berth/berth.sock`), grpc-python since 1.57 sends it %-encoded
//! without its leading slash (`run%2Fberth%2Fberth.sock`),
//! grpc-java the raw path. h2, under hyper and tonic, resets every such
//! stream with `PROTOCOL_ERROR` because the value is not a URI authority, and
//! has no switch for it (hyperium/h2#487). The authority means nothing on a
//! Unix socket, so [`AuthorityFix`] sits between the socket and the server
//! and replaces an authority h2 would refuse with `localhost` before h2 reads
//! it. Valid authorities, every other header and every other frame reach h2
//! unchanged, so h2 still checks everything else it checks.
//!
//! Header blocks are HPACK-compressed with per-connection state, so the
//! rewriter decodes every client header block with the client's table and
//! re-encodes it with its own (the server's decoder follows ours). DATA and
//! control frames are copied through without being buffered.

mod hpack;
mod rewrite;
mod tables;

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use rewrite::{Limits, RewriteError, Rewriter, REPLACEMENT_AUTHORITY};

/// How much is read from the socket at once when frames must be parsed.
const READ_CHUNK: usize = 16 * 1024;

/// A server-side connection whose client header blocks are rewritten on the
/// way in (see the crate docs). Writes go to the socket untouched.
pub struct AuthorityFix<IO> {
    io: IO,
    rewriter: Rewriter,
    /// Read from the socket, not yet processed (an incomplete frame).
    input: BytesMut,
    /// Processed, not yet handed to the server.
    out: BytesMut,
    eof: bool,
}

impl<IO> AuthorityFix<IO> {
    pub fn new(io: IO) -> Self {
        AuthorityFix::with_limits(io, Limits::default())
    }

    pub fn with_limits(io: IO, limits: Limits) -> Self {
        AuthorityFix {
            io,
            rewriter: Rewriter::new(limits),
            input: BytesMut::new(),
            out: BytesMut::new(),
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// How many requests had their authority replaced on this connection.
    pub fn rewritten(&self) -> u64 {
        self.rewriter.rewritten()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A truncated frame goes to the server as it came, which
                // then sees the same end of stream it would have seen.
                if this.input.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.out = this.input.split();
                continue;
            }
            let pass = this.rewriter.passthrough_len();
            if this.input.is_empty() && pass > 0 {
                // Frame payloads that need no rewriting are read straight
                // into the server's buffer: no copy of ours.
                let limit = pass.min(buf.remaining());
                let mut direct = buf.take(limit);
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut direct))?;
                let n = direct.filled().len();
                // SAFETY: `direct` views the first `limit` unfilled bytes of
                // `buf`, and the inner reader initialised (filled) `n` of them.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                this.rewriter.passed(n);
                return Poll::Ready(Ok(()));
            }
            this.input.reserve(READ_CHUNK);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.input
            ))?;
            if n == 0 {
                this.eof = true;
                continue;
            }
            this.rewriter
                .process(&mut this.input, &mut this.out)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// tonic's connection info (peer credentials on a Unix socket) is the
/// socket's.
impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<IO>
{
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
