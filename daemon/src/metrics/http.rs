//! The Prometheus endpoint: `GET /metrics` over HTTP/1.1 on
//! `[metrics] address`, answering the Prometheus text format. At most
//! `max_connections` scrapes at once, a request's headers must arrive
//! within seconds, and a connection serves one request at a time: a scraper
//! that misbehaves costs a bounded amount.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::{global, Metrics};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Sets the gauges that describe current state (pods, shims, ...) just
/// before a scrape is encoded. Runs on a blocking thread.
pub(crate) type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics address {address:?} is not host:port: {source}")]
    Address {
        address: String,
        source: std::net::AddrParseError,
    },
    #[error("binding the metrics endpoint on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the endpoint and serves it in the background; returns the bound
/// address (port 0 picks one).
pub(crate) async fn serve(
    address: &str,
    max_connections: usize,
    refresh: Refresh,
) -> Result<SocketAddr, MetricsError> {
    let addr: SocketAddr = address.parse().map_err(|source| MetricsError::Address {
        address: address.to_string(),
        source,
    })?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind {
            address: addr,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| MetricsError::Bind {
        address: addr,
        source,
    })?;
    info!(address = %bound, "metrics endpoint serving");
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            // Waiting for a slot before accepting leaves the rest in the
            // kernel's backlog.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "metrics endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let refresh = refresh.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let svc = hyper::service::service_fn(move |req| answer(req, refresh.clone()));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .max_buf_size(64 << 10)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                // An idle keep-alive connection must not hold a slot forever.
                match tokio::time::timeout(Duration::from_secs(300), conn).await {
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics connection"),
                    Err(_) => tracing::debug!(%peer, "metrics connection closed after 300 s"),
                    Ok(Ok(())) => {}
                }
            });
        }
    });
    Ok(bound)
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    refresh: Refresh,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "not found: try /metrics\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n"));
    }
    let text = tokio::task::spawn_blocking(move || global().scrape(|m| refresh(m))).await;
    Ok(match text {
        Ok(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(CONTENT_TYPE),
            );
            r
        }
        Err(e) => {
            warn!(error = %e, "collecting metrics failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "collecting metrics failed\n",
            )
        }
    })
}
