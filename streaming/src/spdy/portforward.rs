//! Port-forward over SPDY (`portforward.k8s.io`), as kubelet's
//! `portforward/httpstream.go` serves it: for every local connection the
//! client opens a pair of streams sharing a `requestid` header — `streamtype:
//! error` and `streamtype: data`, both with a `port` header. We connect to
//! the port in the pod and copy both ways with half-close; failures are
//! reported on the pair's error stream.

use bytes::Bytes;
use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::frame::{GoAwayStatus, RstStatus};
use super::session::{IncomingStream, Session, Stream};
use super::{next_conn_id, session_config, SpdyError};
use crate::{Limits, PortConnector};

/// Bytes read from the pod's port per DATA chunk.
const READ_CHUNK: usize = 32 * 1024;

#[derive(Default)]
struct Pair {
    port: u16,
    data: Option<Stream>,
    error: Option<Stream>,
    deadline: Option<tokio::time::Instant>,
}

/// Runs port-forwarding on an upgraded connection until it ends. Each
/// data/error stream pair the client opens is connected with
/// `connector(port)`; many pairs run concurrently.
pub async fn port_forward<IO>(
    io: IO,
    connector: PortConnector,
    limits: Limits,
) -> Result<(), SpdyError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = next_conn_id();
    let mut session = Session::start(io, session_config(&limits), conn);
    let mut pending: HashMap<String, Pair> = HashMap::new();
    // Dropping the set at the end aborts the forwards still running.
    let mut forwards = JoinSet::new();
    debug!(conn, "port-forward session started");
    loop {
        let next_deadline = pending.values().filter_map(|p| p.deadline).min();
        let incoming = tokio::select! {
            s = session.accept() => match s {
                Some(s) => s,
                None => break,
            },
            _ = sleep_until_opt(next_deadline) => {
                expire_pairs(&mut pending, conn).await;
                continue;
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => continue,
        };
        let Some((request_id, kind, port)) = validate(&incoming, conn) else {
            incoming.reject(RstStatus::ProtocolError).await;
            continue;
        };
        let stream = incoming.accept().await?;
        let pair = pending.entry(request_id.clone()).or_insert_with(|| Pair {
            port,
            deadline: Some(tokio::time::Instant::now() + limits.stream_creation_timeout),
            ..Pair::default()
        });
        let slot = if kind == Kind::Data {
            &mut pair.data
        } else {
            &mut pair.error
        };
        if slot.is_some() {
            let msg = format!(
                "error processing stream for request {request_id}: {} stream already assigned",
                kind.name()
            );
            warn!(conn, request = request_id, "{msg}");
            if let Some(e) = &pair.error {
                let _ = e.send(Bytes::from(msg)).await;
            }
            stream.reset(RstStatus::StreamInUse).await;
            continue;
        }
        *slot = Some(stream);
        if pair.data.is_some() && pair.error.is_some() {
            if let Some(Pair {
                port,
                data: Some(data),
                error: Some(error),
                ..
            }) = pending.remove(&request_id)
            {
                forwards.spawn(forward(
                    conn,
                    request_id,
                    port,
                    data,
                    error,
                    connector.clone(),
                ));
            }
        }
    }
    debug!(conn, "port-forward session ended");
    session.close(GoAwayStatus::Ok).await;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Error,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Data => "data",
            Kind::Error => "error",
        }
    }
}

/// Checks the headers kubelet checks; returns (request id, kind, port).
fn validate(s: &IncomingStream, conn: u64) -> Option<(String, Kind, u16)> {
    let port = match s.header("port").map(str::parse::<u16>) {
        Some(Ok(p)) if p > 0 => p,
        other => {
            warn!(conn, stream = s.id, port = ?other, "port-forward stream without a valid port header");
            return None;
        }
    };
    let kind = match s.header("streamtype") {
        Some("data") => Kind::Data,
        Some("error") => Kind::Error,
        other => {
            warn!(conn, stream = s.id, kind = ?other, "port-forward stream with an invalid stream type");
            return None;
        }
    };
    let request_id = match s.header("requestid") {
        Some(id) if !id.is_empty() => id.to_owned(),
        // Old clients send no request id: kubelet pairs the error stream
        // with the data stream opened right after it (ids n and n + 2).
        _ => match kind {
            Kind::Error => s.id.to_string(),
            Kind::Data => s.id.saturating_sub(2).to_string(),
        },
    };
    Some((request_id, kind, port))
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Drops pairs whose second stream did not come in time, telling the
/// client on the error stream if it is there.
async fn expire_pairs(pending: &mut HashMap<String, Pair>, conn: u64) {
    let now = tokio::time::Instant::now();
    let expired: Vec<String> = pending
        .iter()
        .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
        .map(|(id, _)| id.clone())
        .collect();
    for id in expired {
        let Some(p) = pending.remove(&id) else {
            continue;
        };
        warn!(conn, request = id, "timed out waiting for the stream pair");
        if let Some(e) = &p.error {
            let msg = format!("(conn={conn}, request={id}) timed out waiting for streams");
            let _ = e.send(Bytes::from(msg)).await;
            let _ = e.finish().await;
        }
        if let Some(d) = &p.data {
            let _ = d.finish().await;
        }
    }
}

/// The error kubelet reports on the error stream (`portForwardErrResponse`).
fn error_response(port: u16, err: &std::io::Error) -> String {
    // A peer that reset or stopped reading is routine; anything else tells
    // the client to give up on the whole connection, as kubelet does.
    let routine = matches!(
        err.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
    );
    let mut v = serde_json::json!({
        "message": format!("error forwarding port {port} to pod: {err}"),
    });
    if !routine {
        v["closeConnection"] = serde_json::Value::Bool(true);
    }
    format!("{v}\n")
}

/// How long the client may go on sending once the pod has closed its side
/// (containerd's value).
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

async fn forward(
    conn: u64,
    request_id: String,
    port: u16,
    data: Stream,
    error: Stream,
    connector: PortConnector,
) {
    debug!(conn, request = request_id, port, "forwarding");
    let result = async {
        let tcp = connector(port).await?;
        let (mut rd, mut wr) = tcp.into_split();
        // Client -> pod; the client's FIN becomes our write shutdown.
        let up = async {
            while let Some(chunk) = data.recv().await {
                wr.write_all(&chunk).await?;
            }
            if data.is_reset() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "the client reset the stream",
                ));
            }
            wr.shutdown().await
        };
        // Pod -> client; the pod's EOF becomes our FIN.
        let down = async {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                let n = rd.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                if data.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    // The client is gone or reset the stream: nothing to
                    // report to it.
                    return Ok(());
                }
            }
            let _ = data.finish().await;
            Ok::<(), std::io::Error>(())
        };
        // Once the pod's side is over, the client's gets LINGER to finish
        // (containerd's value): client-go closes its local connection only
        // when the error stream ends, so a pod that closes after its
        // response (busybox httpd) would otherwise leave both sides waiting.
        // A client that is done sending still gets the whole response.
        tokio::pin!(up, down);
        let (u, d) = tokio::select! {
            u = &mut up => (u, down.await),
            d = &mut down => (tokio::time::timeout(LINGER, &mut up).await.unwrap_or(Ok(())), d),
        };
        let _ = data.finish().await;
        match (u, d) {
            (Err(e), _) if data.is_reset() => {
                debug!(conn, request = request_id, error = %e, "client reset the data stream");
                Ok(())
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
            _ => Ok(()),
        }
    }
    .await;
    if let Err(e) = result {
        warn!(conn, request = request_id, port, error = %e, "port-forward failed");
        let _ = error.send(Bytes::from(error_response(port, &e))).await;
        let _ = data.finish().await;
    }
    let _ = error.finish().await;
    debug!(conn, request = request_id, "forward done");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_match_kubelet() {
        let e = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let v: serde_json::Value = serde_json::from_str(&error_response(80, &e)).unwrap();
        assert_eq!(v["closeConnection"], true);
        assert!(v["message"].as_str().unwrap().contains("port 80"));
        let e = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let v: serde_json::Value = serde_json::from_str(&error_response(80, &e)).unwrap();
        assert!(v.get("closeConnection").is_none());
    }
}
