//! Exec and attach over SPDY (`channel.k8s.io` v1 to v4), as kubelet's
//! `remotecommand/httpstream.go` serves them: the client opens an error
//! stream plus one stream per requested channel (and `resize` with a TTY from
//! v3 on); the exit status goes on the error stream — a `metav1.Status` JSON
//! from v4 on, the bare error text (nothing on success) before.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::frame::{GoAwayStatus, RstStatus};
use super::session::{Session, Stream};
use super::{next_conn_id, session_config, SpdyError};
use crate::{status_json, CommandIo, ExitStatus, Limits, StreamOpts, TermSize};

/// Chunks queued per channel between the protocol and the command: with
/// 32 KiB reads that is at most ~512 KiB per direction.
const CHANNEL_CAP: usize = 16;
/// The resize stream is a sequence of small JSON objects: anything longer
/// than this without a complete object is garbage.
const MAX_RESIZE_PENDING: usize = 4096;
/// How long flushing stdout/stderr and the status may take once the
/// command is done, before the connection is dropped anyway.
const DONE_FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    V1,
    V2,
    V3,
    V4,
}

fn parse_version(protocol: &str) -> Result<Version, SpdyError> {
    match protocol {
        // v5 only adds a CLOSE signal for WebSocket; over SPDY it is v4.
        "v5.channel.k8s.io" | "v4.channel.k8s.io" => Ok(Version::V4),
        "v3.channel.k8s.io" => Ok(Version::V3),
        "v2.channel.k8s.io" => Ok(Version::V2),
        // kubelet falls back to v1 when the client negotiated nothing.
        "channel.k8s.io" | "" => Ok(Version::V1),
        other => Err(SpdyError::UnsupportedProtocol(other.to_owned())),
    }
}

#[derive(Default)]
struct Streams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

/// Runs the SPDY side of an exec/attach on an upgraded connection: accepts
/// the client's streams (SYN_REPLY), waits at most
/// `limits.stream_creation_timeout` for those `opts` and the protocol
/// version imply, then returns the [`CommandIo`] whose channels background
/// tasks pump (bounded both ways, under SPDY flow control).
///
/// Send `done` after the last stdout/stderr chunk was handed over (chunks
/// still queued then are flushed first; later ones are dropped): the status
/// is written on the error stream, every stream is finished, then GOAWAY and
/// the connection closes. `client_gone` fires if the client goes away (or the
/// connection idles out) first.
pub async fn remote_command<IO>(
    io: IO,
    protocol: &str,
    opts: StreamOpts,
    limits: Limits,
) -> Result<CommandIo, SpdyError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let version = parse_version(protocol)?;
    let mut opts = opts;
    if opts.tty {
        // As kubelet: a TTY merges stderr into stdout.
        opts.stderr = false;
    }
    if !opts.stdin && !opts.stdout && !opts.stderr {
        return Err(SpdyError::NoStreams);
    }
    let conn = next_conn_id();
    let mut session = Session::start(io, session_config(&limits), conn);
    let want_resize = opts.tty && version >= Version::V3;
    let want = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(want_resize);
    debug!(conn, protocol, ?opts, want, "waiting for SPDY streams");

    let mut streams = Streams::default();
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + limits.stream_creation_timeout;
    while got < want {
        let incoming = match tokio::time::timeout_at(deadline, session.accept()).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(SpdyError::ClientGone),
            Err(_) => {
                warn!(conn, got, want, "client did not create its streams in time");
                session.close(GoAwayStatus::Ok).await;
                return Err(SpdyError::StreamCreationTimeout { got, want });
            }
        };
        let kind = incoming.header("streamtype").unwrap_or("").to_owned();
        let slot = match kind.as_str() {
            "error" => Some(&mut streams.error),
            "stdin" if opts.stdin => Some(&mut streams.stdin),
            "stdout" if opts.stdout => Some(&mut streams.stdout),
            "stderr" if opts.stderr => Some(&mut streams.stderr),
            "resize" if want_resize => Some(&mut streams.resize),
            _ => None,
        };
        match slot {
            Some(slot) if slot.is_none() => {
                *slot = Some(incoming.accept().await?);
                got += 1;
            }
            _ => {
                debug!(
                    conn,
                    stream = incoming.id,
                    kind,
                    "refusing unexpected stream"
                );
                incoming.reject(RstStatus::RefusedStream).await;
            }
        }
    }
    debug!(conn, "all streams created");

    let finish = CancellationToken::new();
    let closed = session.closed_token();

    let stdin = streams.stdin.map(|s| {
        let (tx, rx) = mpsc::channel(CHANNEL_CAP);
        tokio::spawn(pump_in(s, tx, version == Version::V1));
        rx
    });
    let mut out_tasks = Vec::new();
    let mut out = |s: Option<Stream>| {
        s.map(|s| {
            let (tx, rx) = mpsc::channel(CHANNEL_CAP);
            out_tasks.push(tokio::spawn(pump_out(s, rx, finish.clone())));
            tx
        })
    };
    let stdout = out(streams.stdout);
    let stderr = out(streams.stderr);
    let resize = streams.resize.map(|s| {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(pump_resize(s, tx, conn));
        rx
    });
    let Some(error_stream) = streams.error else {
        // `want` counts the error stream, so it is there.
        return Err(SpdyError::SessionClosed);
    };

    let (done_tx, done_rx) = oneshot::channel();
    let (gone_tx, gone_rx) = oneshot::channel();
    tokio::spawn(async move {
        let peer_gone = session.peer_gone_token();
        tokio::select! {
            status = done_rx => {
                let status = status.unwrap_or_else(|_| {
                    ExitStatus::Error("the command ended without a status".into())
                });
                debug!(conn, ?status, "command done; writing status");
                let flush = finish_command(&error_stream, version, &status, finish, out_tasks);
                if tokio::time::timeout(DONE_FLUSH_TIMEOUT, flush).await.is_err() {
                    warn!(conn, "client did not take the output in time; closing");
                }
                drop(error_stream);
                session.close(GoAwayStatus::Ok).await;
                drop(gone_tx);
            }
            _ = peer_gone.cancelled() => {
                debug!(conn, "client went away");
                drop(gone_tx);
                finish.cancel();
                session.abort("client went away");
            }
        }
        drop(closed);
    });

    Ok(CommandIo {
        stdin,
        stdout,
        stderr,
        resize,
        done: done_tx,
        client_gone: gone_rx,
    })
}

/// Flushes stdout/stderr, writes the status on the error stream and
/// finishes it.
async fn finish_command(
    error_stream: &Stream,
    version: Version,
    status: &ExitStatus,
    finish: CancellationToken,
    out_tasks: Vec<JoinHandle<()>>,
) {
    finish.cancel();
    for t in out_tasks {
        let _ = t.await;
    }
    let body = if version >= Version::V4 {
        Some(status_json(status))
    } else {
        // v1-v3: the error's text, nothing on success (kubelet writes
        // `StatusError.Error()`, i.e. the Status message).
        status_text(status)
    };
    if let Some(body) = body {
        if let Err(e) = error_stream.send(Bytes::from(body)).await {
            debug!(stream = error_stream.id, error = %e, "could not write the status");
        }
    }
    let _ = error_stream.finish().await;
}

/// The plain-text form of a status for protocol versions before v4.
fn status_text(status: &ExitStatus) -> Option<String> {
    if *status == ExitStatus::Success {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&status_json(status)).ok()?;
    Some(v.get("message")?.as_str()?.to_owned())
}

/// Client -> command (stdin). Keeps draining after the command stopped
/// reading, so an unread stdin cannot stall the session's reader.
async fn pump_in(stream: Stream, tx: mpsc::Sender<Bytes>, half_close_now: bool) {
    if half_close_now {
        // v1 kubelets close the server side of stdin at once; keep that.
        let _ = stream.finish().await;
    }
    let mut tx = Some(tx);
    while let Some(chunk) = stream.recv().await {
        if let Some(t) = &tx {
            if t.send(chunk).await.is_err() {
                tx = None;
            }
        }
    }
    // Dropping tx is the command's EOF.
}

/// Command -> client (stdout/stderr). On `finish`, takes what is still
/// queued, sends it and FIN.
async fn pump_out(stream: Stream, mut rx: mpsc::Receiver<Bytes>, finish: CancellationToken) {
    loop {
        let chunk = tokio::select! {
            biased;
            c = rx.recv() => c,
            _ = finish.cancelled() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(chunk) = chunk else { break };
        if let Err(e) = stream.send(chunk).await {
            debug!(stream = stream.id, error = %e, "output stream gone");
            // Dropping rx makes the command's sends fail instead of block.
            return;
        }
    }
    let _ = stream.finish().await;
}

/// Resize events: a sequence of `{"Width":W,"Height":H}` JSON objects.
async fn pump_resize(stream: Stream, tx: mpsc::Sender<TermSize>, conn: u64) {
    let mut buf: Vec<u8> = Vec::new();
    let mut tx = Some(tx);
    while let Some(chunk) = stream.recv().await {
        if tx.is_none() {
            continue;
        }
        buf.extend_from_slice(&chunk);
        let mut sizes = Vec::new();
        let mut bad = false;
        let consumed = {
            let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<TermSize>();
            loop {
                match it.next() {
                    Some(Ok(size)) => sizes.push(size),
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        warn!(conn, error = %e, "bad resize event; ignoring further resizes");
                        bad = true;
                        break;
                    }
                    None => break,
                }
            }
            it.byte_offset()
        };
        buf.drain(..consumed);
        for size in sizes {
            if let Some(t) = &tx {
                if t.send(size).await.is_err() {
                    tx = None;
                }
            }
        }
        if bad || buf.len() > MAX_RESIZE_PENDING {
            tx = None;
            buf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("v4.channel.k8s.io").unwrap(), Version::V4);
        assert_eq!(parse_version("v5.channel.k8s.io").unwrap(), Version::V4);
        assert_eq!(parse_version("channel.k8s.io").unwrap(), Version::V1);
        assert_eq!(parse_version("").unwrap(), Version::V1);
        assert!(parse_version("v9.channel.k8s.io").is_err());
        for p in super::super::REMOTE_COMMAND_PROTOCOLS {
            assert!(parse_version(p).is_ok());
        }
    }

    #[test]
    fn plain_status_text() {
        assert_eq!(status_text(&ExitStatus::Success), None);
        assert_eq!(
            status_text(&ExitStatus::ExitCode(3)).unwrap(),
            "command terminated with non-zero exit code: error executing command, exit status 3"
        );
        assert_eq!(
            status_text(&ExitStatus::Error("boom".into())).unwrap(),
            "boom"
        );
    }
}
