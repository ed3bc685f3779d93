//! The streaming server: an HTTP/1.1 listener (hyper) that serves only the
//! URLs the CRI's Exec, Attach and PortForward calls hand out. Each URL
//! carries a random single-use token that expires after `token_ttl_secs`;
//! an unknown, used or expired token gets 404. The connection is upgraded to
//! SPDY/3.1 or WebSocket, negotiated like kubelet's streaming server
//! (`X-Stream-Protocol-Version` for SPDY, `Sec-WebSocket-Protocol` for
//! WebSocket), and handed to the protocol layer, whose streams are wired to
//! the container (exec/attach through its shim) or the pod's ports.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::conns::{ConnLimits, ConnSlot, Conns};
use super::peer::PeerKey;
use super::{spdy, ws, Limits, PortConnector, StreamOpts};
use crate::tokens::{Tokens, TooManyInFlight};
use crate::{Backend, StreamingConfig};

/// Why the streaming server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding the streaming server to {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("reading {}: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the streaming server's TLS certificate and key: {0}")]
    Tls(#[from] tokio_rustls::rustls::Error),
}

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        opts: StreamOpts,
    },
    Attach {
        container_id: String,
        opts: StreamOpts,
    },
    PortForward {
        sandbox_id: String,
        /// The pod's network namespace; None for host-network pods.
        netns: Option<PathBuf>,
        ports: Vec<u16>,
    },
}

impl Pending {
    fn kind(&self) -> &'static str {
        match self {
            Pending::Exec { .. } => "exec",
            Pending::Attach { .. } => "attach",
            Pending::PortForward { .. } => "portforward",
        }
    }
}

pub struct StreamServer {
    base: String,
    addr: SocketAddr,
    tokens: Tokens,
    limits: Limits,
    backend: Arc<dyn Backend>,
}

type Reply = Response<Full<Bytes>>;

/// A reply; every one but the 101 closes the connection (a URL is single
/// use: nothing else is to come on it).
fn reply(code: StatusCode, msg: impl Into<String>) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())));
    *r.status_mut() = code;
    if code != StatusCode::SWITCHING_PROTOCOLS {
        r.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    r
}

/// Every value of a (possibly repeated, comma-separated) header.
fn header_values(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first of the server's protocols (in its order of preference) that
/// the client offered.
fn negotiate(server: &[&str], offered: &[String]) -> Option<String> {
    server
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .map(|p| p.to_string())
}

/// Connects to the pod's ports through the backend, one connection per
/// request of the client.
fn connector(backend: Arc<dyn Backend>, netns: Option<PathBuf>) -> PortConnector {
    Arc::new(move |port: u16| backend.connect(netns.clone(), port))
}

fn tls_acceptor(cfg: &StreamingConfig) -> Result<Option<tokio_rustls::TlsAcceptor>, StartError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    if cfg.tls_cert.as_os_str().is_empty() {
        return Ok(None);
    }
    let pem = |path: &PathBuf| {
        let path = path.clone();
        move |source| StartError::Pem { path, source }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.tls_cert)
        .map_err(pem(&cfg.tls_cert))?
        .collect::<Result<_, _>>()
        .map_err(pem(&cfg.tls_cert))?;
    let key = PrivateKeyDer::from_pem_file(&cfg.tls_key).map_err(pem(&cfg.tls_key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// The remote-command streams of an upgraded connection, by protocol.
async fn command_io<IO>(
    io: IO,
    proto: &str,
    websocket: bool,
    opts: StreamOpts,
    limits: Limits,
) -> Result<super::CommandIo, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if websocket {
        ws::remote_command(io, proto, opts, limits)
            .await
            .map_err(|e| e.to_string())
    } else {
        spdy::remote_command(io, proto, opts, limits)
            .await
            .map_err(|e| e.to_string())
    }
}

/// hyper's HTTP/1 settings for the streaming server: bounded headers. Keep-
/// alive stays on because hyper would otherwise add `close` to the 101's
/// `Connection: Upgrade`, which client-go refuses; error replies close the
/// connection themselves, and one kept open stays under the request deadline
/// until it presents a valid token.
fn http1_builder(cfg: &StreamingConfig) -> hyper::server::conn::http1::Builder {
    let header_bytes = cfg.max_request_header_bytes.max(1024);
    let mut b = hyper::server::conn::http1::Builder::new();
    b.max_header_size(header_bytes)
        .max_buf_size(header_bytes.max(8192))
        .max_headers(64)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(cfg.request_timeout_secs.max(1)));
    b
}

/// Reports connections closed or refused at the bounds: at most one
/// warning per interval, so that a flood does not flood the log too.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    reported: (u64, u64),
}

impl RefusalLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn note(&mut self, conns: &Conns) {
        let n = conns.counts();
        if (n.evicted, n.refused) == self.reported
            || self.last.is_some_and(|t| t.elapsed() < Self::INTERVAL)
        {
            return;
        }
        let limits = conns.limits();
        warn!(
            closed_waiting = n.evicted - self.reported.0,
            refused = n.refused - self.reported.1,
            connections = n.live,
            waiting = n.pending,
            max_connections = limits.max_connections,
            max_pending_per_peer = limits.max_pending_per_peer,
            "streaming server at its connection bounds: closed the oldest connections still waiting for a request, refused new ones when only sessions were left"
        );
        self.reported = (n.evicted, n.refused);
        self.last = Some(Instant::now());
    }
}

/// One accepted connection, from accept to its request (and, through the
/// slot its session holds, to the end of that session).
struct Connection {
    server: Arc<StreamServer>,
    slot: Arc<ConnSlot>,
    http: Arc<hyper::server::conn::http1::Builder>,
}

impl Connection {
    /// Serves the connection until it ends, it is closed for a newer one
    /// while waiting, or its request deadline passes without a valid request.
    async fn serve(
        self,
        tcp: TcpStream,
        peer: PeerKey,
        tls: Option<tokio_rustls::TlsAcceptor>,
        mut evicted: oneshot::Receiver<()>,
        request_timeout: Duration,
    ) {
        let _ = tcp.set_nodelay(true);
        let deadline = tokio::time::Instant::now() + request_timeout;
        let slot = self.slot.clone();
        let work = async move {
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => self.http(TokioIo::new(s)).await,
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => Ok(()),
                    }
                }
                None => self.http(TokioIo::new(tcp)).await,
            }
        };
        tokio::pin!(work);
        let (mut waiting, mut timed) = (true, true);
        let why = loop {
            tokio::select! {
                r = &mut work => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "streaming connection ended with an error");
                    }
                    return;
                }
                ev = &mut evicted, if waiting => match ev {
                    Ok(()) => break "closed to make room for a newer connection",
                    // The sender goes when the connection turns active.
                    Err(_) => waiting = false,
                },
                _ = tokio::time::sleep_until(deadline), if timed => {
                    if slot.is_pending() {
                        break "no valid request before the request deadline";
                    }
                    timed = false;
                }
            }
        };
        debug!(%peer, reason = why, "closing streaming connection");
    }

    async fn http<IO>(self, io: TokioIo<IO>) -> hyper::Result<()>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection { server, slot, http } = self;
        let svc = hyper::service::service_fn(move |req| {
            let (server, slot) = (server.clone(), slot.clone());
            async move { Ok::<_, Infallible>(server.handle(req, slot)) }
        });
        http.serve_connection(io, svc).with_upgrades().await
    }
}

impl StreamServer {
    /// Binds the listener and serves in the background.
    pub async fn start(
        cfg: &StreamingConfig,
        backend: Arc<dyn Backend>,
    ) -> Result<Arc<StreamServer>, StartError> {
        let tls = tls_acceptor(cfg)?;
        let listener =
            TcpListener::bind(&cfg.address)
                .await
                .map_err(|source| StartError::Bind {
                    address: cfg.address.clone(),
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            address: cfg.address.clone(),
            source,
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = Arc::new(StreamServer {
            base: format!("{scheme}://{addr}"),
            addr,
            tokens: Tokens::new(Duration::from_secs(cfg.token_ttl_secs.max(1))),
            limits: Limits {
                idle_timeout: Duration::from_secs(cfg.idle_timeout_secs.max(1)),
                stream_creation_timeout: Duration::from_secs(
                    cfg.stream_creation_timeout_secs.max(1),
                ),
            },
            backend,
        });
        info!(address = %server.base, "streaming server listening");
        let weak = Arc::downgrade(&server);
        let conns = Conns::new(ConnLimits {
            max_connections: cfg.max_connections,
            max_pending_per_peer: cfg.max_pending_per_peer,
        });
        let http = Arc::new(http1_builder(cfg));
        let request_timeout = Duration::from_secs(cfg.request_timeout_secs.max(1));
        tokio::spawn(async move {
            let mut refusals = RefusalLog::default();
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "streaming server accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(this) = weak.upgrade() else { return };
                // The socket's own address: the listener's may be 0.0.0.0.
                let local = tcp.local_addr().unwrap_or(addr);
                let key = PeerKey::of(peer, local);
                let admitted = conns.admit(key);
                refusals.note(&conns);
                // A refused socket is dropped, which closes it: the client
                // sees that at once rather than hang in the backlog.
                let Ok((slot, evicted)) = admitted else {
                    continue;
                };
                let conn = Connection {
                    server: this,
                    slot: Arc::new(slot),
                    http: http.clone(),
                };
                tokio::spawn(conn.serve(tcp, key, tls.clone(), evicted, request_timeout));
            }
        });
        Ok(server)
    }

    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// A URL for `p`, valid once, for the token TTL; refused while too many
    /// wait to be used.
    pub fn issue(&self, p: Pending) -> Result<String, TooManyInFlight> {
        let kind = p.kind();
        let token = self.tokens.issue(p)?;
        Ok(format!("{}/{kind}/{token}", self.base))
    }

    /// Takes a token out (single use); None if unknown or expired.
    fn take(&self, token: &str) -> Option<Pending> {
        self.tokens.take(token)
    }

    fn handle(self: &Arc<Self>, mut req: Request<Incoming>, slot: Arc<ConnSlot>) -> Reply {
        let path = req.uri().path().to_string();
        let mut parts = path.trim_start_matches('/').split('/');
        let (Some(kind), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
            return reply(StatusCode::NOT_FOUND, "not found");
        };
        let Some(pending) = self.take(token) else {
            return reply(StatusCode::NOT_FOUND, "unknown or expired streaming token");
        };
        if pending.kind() != kind {
            return reply(StatusCode::NOT_FOUND, "unknown or expired streaming token");
        }
        if !slot.activate() {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "the connection was closed to make room for others",
            );
        }
        let upgrade = req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let is_pf = matches!(pending, Pending::PortForward { .. });
        let mut resp = reply(StatusCode::SWITCHING_PROTOCOLS, "");
        let h = resp.headers_mut();
        h.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("Upgrade"),
        );
        let websocket = match upgrade.as_str() {
            "websocket" => {
                let offered = header_values(req.headers(), "sec-websocket-protocol");
                let server: &[&str] = if is_pf {
                    ws::PORT_FORWARD_PROTOCOLS
                } else {
                    ws::REMOTE_COMMAND_PROTOCOLS
                };
                // A client offering no protocol is served the unversioned
                // one, as kubelet does.
                let Some(proto) = ws::select_protocol(offered.iter().map(String::as_str), server)
                else {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        format!("unable to negotiate a WebSocket protocol: client offered {offered:?}, server supports {server:?}"),
                    );
                };
                let proto = proto.to_string();
                let Some(key) = req
                    .headers()
                    .get("sec-websocket-key")
                    .and_then(|v| v.to_str().ok())
                else {
                    return reply(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
                };
                let accept = ws::accept_key(key);
                h.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
                if let Ok(v) = http::HeaderValue::from_str(&accept) {
                    h.insert("sec-websocket-accept", v);
                }
                if !proto.is_empty() {
                    if let Ok(v) = http::HeaderValue::from_str(&proto) {
                        h.insert("sec-websocket-protocol", v);
                    }
                }
                Some(proto)
            }
            "spdy/3.1" => {
                let offered = header_values(req.headers(), "x-stream-protocol-version");
                let server: &[&str] = if is_pf {
                    &[spdy::PORT_FORWARD_PROTOCOL]
                } else {
                    spdy::REMOTE_COMMAND_PROTOCOLS
                };
                let Some(proto) = negotiate(server, &offered) else {
                    return reply(
                        StatusCode::FORBIDDEN,
                        format!("unable to negotiate a stream protocol: client offered {offered:?}, server supports {server:?}"),
                    );
                };
                h.insert(header::UPGRADE, http::HeaderValue::from_static("SPDY/3.1"));
                if let Ok(v) = http::HeaderValue::from_str(&proto) {
                    h.insert("x-stream-protocol-version", v);
                }
                return self.upgrade(&mut req, pending, proto, false, resp, slot);
            }
            _ => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "this URL needs an upgrade to SPDY/3.1 or websocket",
                )
            }
        };
        let proto = websocket.unwrap_or_default();
        self.upgrade(&mut req, pending, proto, true, resp, slot)
    }

    /// Answers 101 and, once hyper hands over the connection, runs the
    /// protocol and the backend on it.
    fn upgrade(
        self: &Arc<Self>,
        req: &mut Request<Incoming>,
        pending: Pending,
        proto: String,
        websocket: bool,
        resp: Reply,
        slot: Arc<ConnSlot>,
    ) -> Reply {
        let values: Vec<String> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.strip_prefix("port="))
            .map(str::to_string)
            .collect();
        let ports = if values.is_empty() {
            Vec::new()
        } else {
            match ws::parse_ports(values.iter().map(String::as_str)) {
                Ok(p) => p,
                Err(e) => return reply(StatusCode::BAD_REQUEST, e.to_string()),
            }
        };
        let on_upgrade = hyper::upgrade::on(req);
        let this = self.clone();
        tokio::spawn(async move {
            let io = match on_upgrade.await {
                Ok(u) => TokioIo::new(u),
                Err(e) => {
                    debug!(error = %e, "streaming upgrade failed");
                    return;
                }
            };
            debug!(kind = pending.kind(), protocol = %proto, websocket, "streaming session");
            this.run(io, pending, &proto, websocket, ports).await;
            // The session's end frees the connection's slot.
            drop(slot);
        });
        resp
    }

    async fn run<IO>(&self, io: IO, pending: Pending, proto: &str, websocket: bool, ports: Vec<u16>)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.limits;
        match pending {
            Pending::Exec {
                container_id,
                cmd,
                opts,
            } => {
                let cio = command_io(io, proto, websocket, opts, limits).await;
                match cio {
                    Ok(cio) => self.backend.exec(container_id, cmd, opts.tty, cio).await,
                    Err(e) => {
                        warn!(container = %container_id, error = %e, "exec stream set-up failed")
                    }
                }
            }
            Pending::Attach { container_id, opts } => {
                let cio = command_io(io, proto, websocket, opts, limits).await;
                match cio {
                    Ok(cio) => self.backend.attach(container_id, cio).await,
                    Err(e) => {
                        warn!(container = %container_id, error = %e, "attach stream set-up failed")
                    }
                }
            }
            Pending::PortForward {
                sandbox_id,
                netns,
                ports: asked,
            } => {
                let connector = connector(self.backend.clone(), netns);
                let r = if websocket {
                    let ports = if ports.is_empty() { asked } else { ports };
                    ws::port_forward(io, proto, ports, connector, limits)
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    spdy::port_forward(io, connector, limits)
                        .await
                        .map_err(|e| e.to_string())
                };
                if let Err(e) = r {
                    debug!(pod = %sandbox_id, error = %e, "port-forward session ended with an error");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_the_server_order() {
        let offered = vec![
            "v2.channel.k8s.io".to_string(),
            "v4.channel.k8s.io".to_string(),
        ];
        assert_eq!(
            negotiate(
                &[
                    "v4.channel.k8s.io",
                    "v3.channel.k8s.io",
                    "v2.channel.k8s.io"
                ],
                &offered
            ),
            Some("v4.channel.k8s.io".into())
        );
        assert_eq!(negotiate(&["v5.channel.k8s.io"], &offered), None);
        let mut h = HeaderMap::new();
        h.append(
            "x-stream-protocol-version",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        h.append(
            "x-stream-protocol-version",
            "v3.channel.k8s.io, v2.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(
            header_values(&h, "x-stream-protocol-version"),
            [
                "v4.channel.k8s.io",
                "v3.channel.k8s.io",
                "v2.channel.k8s.io"
            ]
        );
    }
}
