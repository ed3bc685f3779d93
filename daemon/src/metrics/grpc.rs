//! A tower layer around the gRPC server that counts every call by service,
//! method and status code, and times it from arrival to the last byte of
//! the response (for a streaming call: the whole stream).
//!
//! The status is where gRPC puts it: in the response headers for an error
//! answered at once (trailers-only), else in the trailers at the end of the
//! body, so the body is wrapped and watched. A stream the client abandons
//! counts as `Canceled`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};

use super::global;

/// Label values longer than this are cut (a path is client input).
const MAX_LABEL_CHARS: usize = 128;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RpcMetricsLayer;

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct RpcMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin,
{
    type Response = http::Response<Observed<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let (service, method) = split_path(req.uri().path());
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let mut call = Call {
                service,
                method,
                start,
                code: None,
            };
            // Trailers-only: an error answered without a body.
            if let Some(code) = status_of(resp.headers()) {
                call.code = Some(code);
            }
            Ok(resp.map(|inner| Observed {
                inner,
                call: Some(call),
            }))
        })
    }
}

struct Call {
    service: String,
    method: String,
    start: Instant,
    code: Option<&'static str>,
}

impl Call {
    fn finish(self, fallback: &'static str) {
        global().observe_rpc(
            &self.service,
            &self.method,
            self.code.unwrap_or(fallback),
            self.start.elapsed().as_secs_f64(),
        );
    }
}

/// A response body that records its call once it ends.
pub(crate) struct Observed<B> {
    inner: B,
    call: Option<Call>,
}

impl<B: Body + Unpin> Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    if let Some(call) = self.call.as_mut() {
                        call.code = Some(code);
                    }
                }
            }
            // The server's side of the stream failed.
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.call.take() {
                    call.finish("Unknown");
                }
            }
            // The end: the status came in the headers or the trailers; a
            // body that ended with neither is what a client sees as Unknown.
            Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    call.finish("Unknown");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            // Dropped with its status known (a trailers-only answer, or
            // trailers read but the end never polled), or abandoned.
            call.finish("Canceled");
        }
    }
}

/// `/pkg.Service/Method` as (service, method), bounded.
fn split_path(path: &str) -> (String, String) {
    let cut = |s: &str| s.chars().take(MAX_LABEL_CHARS).collect::<String>();
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method)) if !service.is_empty() && !method.is_empty() => {
            (cut(service), cut(method))
        }
        _ => ("unknown".into(), "unknown".into()),
    }
}

/// The `grpc-status` header as Go's name for the code (go-grpc-prometheus's
/// label values).
fn status_of(headers: &http::HeaderMap) -> Option<&'static str> {
    let code: i32 = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(code_name(code))
}

fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_codes() {
        assert_eq!(
            split_path("/runtime.v1.RuntimeService/Version"),
            ("runtime.v1.RuntimeService".into(), "Version".into())
        );
        assert_eq!(split_path("/"), ("unknown".into(), "unknown".into()));
        assert_eq!(split_path("//x"), ("unknown".into(), "unknown".into()));
        let long = format!("/{}/{}", "s".repeat(1000), "m".repeat(1000));
        let (s, m) = split_path(&long);
        assert_eq!((s.len(), m.len()), (MAX_LABEL_CHARS, MAX_LABEL_CHARS));
        let mut h = http::HeaderMap::new();
        assert_eq!(status_of(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(status_of(&h), Some("NotFound"));
        h.insert("grpc-status", http::HeaderValue::from_static("99"));
        assert_eq!(status_of(&h), Some("Unknown"));
        h.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(status_of(&h), None);
    }
}
