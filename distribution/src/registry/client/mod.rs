use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::StatusCode;

use super::auth::Credentials;
use crate::hosts::RegistryHost;

mod pull;
mod push;
mod send;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{what}: registry {host} refused the credentials (401 unauthorized){detail}")]
    Unauthorized {
        host: String,
        what: String,
        detail: String,
    },
    #[error("{what}: not found on registry {host}")]
    NotFound { host: String, what: String },
    #[error("{what}: registry {host} answered {status}{detail}")]
    Status {
        host: String,
        what: String,
        status: StatusCode,
        detail: String,
    },
    #[error("{what}: TLS handshake with registry {host} failed: {cause}")]
    Tls {
        host: String,
        what: String,
        cause: String,
    },
    #[error("{what}: cannot reach registry {host}: {cause}")]
    Connect {
        host: String,
        what: String,
        cause: String,
    },
    #[error("{what}: registry {host} made no progress for {secs}s")]
    Timeout {
        host: String,
        what: String,
        secs: u64,
    },
    /// Bytes keep coming, each just inside the no-progress window, but too
    /// few for the transfer ever to end in a reasonable time.
    #[error(
        "{what}: registry {host} sent {bytes} bytes in {secs}s, slower than the minimum of \
         {min_rate} bytes/s ([pull] min_transfer_rate)"
    )]
    TooSlow {
        host: String,
        what: String,
        bytes: u64,
        secs: u64,
        min_rate: u64,
    },
    #[error("{what}: larger than the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    /// The token server's answer is bigger than any token: it is refused
    /// rather than buffered (one that streams forever would fill memory).
    #[error("{what}: the token response from {realm} is larger than the limit of {limit} bytes")]
    TokenTooLarge {
        what: String,
        realm: String,
        limit: u64,
    },
    /// The registry sent more bytes than the descriptor declares: cut off
    /// there, nothing past the declared size is written.
    #[error("{what}: registry {host} sent more than the {declared} bytes its descriptor declares")]
    Overlong {
        host: String,
        what: String,
        declared: u64,
    },
    #[error("{what}: digest mismatch: expected {expected}, registry sent {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: {cause}")]
    Protocol { what: String, cause: String },
    #[error("invalid registry configuration: {0}")]
    Config(String),
}

impl RegistryError {
    /// Errors worth trying the next mirror for.
    fn try_next_host(&self) -> bool {
        !matches!(
            self,
            RegistryError::TooLarge { .. }
                | RegistryError::DigestMismatch { .. }
                | RegistryError::Overlong { .. }
        )
    }

    /// Errors a later attempt may not meet (a stall, a broken connection, a
    /// server error): worth keeping a partial download for.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Timeout { .. }
            | RegistryError::TooSlow { .. }
            | RegistryError::Connect { .. } => true,
            RegistryError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// One resolved host to talk to (a mirror or the upstream server).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: RegistryHost,
}

impl Endpoint {
    fn base(&self, scheme: &str) -> String {
        format!(
            "{scheme}://{}{}",
            self.host.host,
            self.host.path.trim_end_matches('/')
        )
    }
}

/// `skip_verify`, the CA files' contents, the client certificates' contents (cert
/// and key PEM).
type ClientKey = (bool, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Shared HTTP machinery: one reqwest client per TLS setup, one token cache.
pub struct RegistryClient {
    clients: Mutex<HashMap<ClientKey, reqwest::Client>>,
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
    pub connect_timeout: Duration,
    pub no_progress: Duration,
    /// Past the first `no_progress`, a transfer averaging fewer bytes a
    /// second than this fails (0: no minimum).
    pub min_rate: u64,
    pub max_manifest: u64,
}

/// One repository on a list of endpoints, with credentials: what a pull or a
/// push talks to.
#[derive(Clone)]
pub struct Repository {
    client: Arc<RegistryClient>,
    pub endpoints: Vec<Endpoint>,
    /// e.g. "library/busybox"
    pub path: String,
    creds: Credentials,
    /// "pull" or "pull,push"
    actions: &'static str,
}

/// A blob response: the byte stream and where it starts.
pub struct BlobBody {
    /// Offset of the first byte (0 unless a range was honoured).
    pub offset: u64,
    /// Total size when the registry says so.
    pub total: Option<u64>,
    /// The registry serves byte ranges (it answered one with 206, or said
    /// `Accept-Ranges: bytes`): a partial download can be resumed.
    pub ranges: bool,
    /// The host that answered, for errors.
    pub host: String,
    pub stream: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>,
}

impl RegistryClient {
    pub fn new(
        connect_timeout: Duration,
        no_progress: Duration,
        min_rate: u64,
        max_manifest: u64,
    ) -> Self {
        RegistryClient {
            clients: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            connect_timeout,
            no_progress,
            min_rate,
            max_manifest,
        }
    }

    /// The watch over one response body's transfer.
    fn pace(&self, host: &str, what: &str) -> Pace {
        Pace {
            host: host.to_string(),
            what: what.to_string(),
            started: Instant::now(),
            bytes: 0,
            no_progress: self.no_progress,
            min_rate: self.min_rate,
        }
    }

    /// The HTTP client for `host`'s TLS settings. Cached by the certificate files'
    /// contents, not their paths: hosts.toml is re-read for every pull, and a CA or
    /// client certificate replaced in place must take effect just as promptly.
    fn http(&self, host: &RegistryHost, what: &str) -> Result<reqwest::Client, RegistryError> {
        let config_err =
            |m: String| RegistryError::Config(format!("{what}: registry {}: {m}", host.host));
        let mut cas = Vec::with_capacity(host.ca.len());
        for ca in &host.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| config_err(format!("reading CA {}: {e}", ca.display())))?;
            cas.push(pem);
        }
        let mut identities = Vec::with_capacity(host.client.len());
        for (cert, key) in &host.client {
            let mut pem = std::fs::read(cert)
                .map_err(|e| config_err(format!("reading client cert {}: {e}", cert.display())))?;
            if let Some(key) = key {
                let k = std::fs::read(key).map_err(|e| {
                    config_err(format!("reading client key {}: {e}", key.display()))
                })?;
                pem.extend_from_slice(b"\n");
                pem.extend_from_slice(&k);
            }
            identities.push(pem);
        }
        let key: ClientKey = (host.skip_verify, cas, identities);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.no_progress)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .tls_danger_accept_invalid_certs(host.skip_verify);
        for (pem, ca) in key.1.iter().zip(&host.ca) {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| config_err(format!("CA {}: {e}", ca.display())))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        for (pem, (cert, _)) in key.2.iter().zip(&host.client) {
            let id = reqwest::Identity::from_pem(pem)
                .map_err(|e| config_err(format!("client cert {}: {e}", cert.display())))?;
            b = b.identity(id);
        }
        let c = b
            .build()
            .map_err(|e| config_err(format!("building HTTP client: {e}")))?;
        clients.insert(key, c.clone());
        Ok(c)
    }

    pub fn repository(
        self: &Arc<Self>,
        hosts: Vec<RegistryHost>,
        path: &str,
        creds: Credentials,
        push: bool,
    ) -> Repository {
        Repository {
            client: self.clone(),
            endpoints: hosts.into_iter().map(|host| Endpoint { host }).collect(),
            path: path.to_string(),
            creds,
            actions: if push { "pull,push" } else { "pull" },
        }
    }
}

fn connect_error(
    host: &str,
    what: &str,
    e: &reqwest::Error,
    no_progress: Duration,
) -> RegistryError {
    if e.is_timeout() {
        return RegistryError::Timeout {
            host: host.into(),
            what: what.into(),
            secs: no_progress.as_secs(),
        };
    }
    // reqwest's Display is terse; the source chain carries the real cause.
    let mut cause = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        cause = format!("{cause}: {s}");
        src = s.source();
    }
    // The registry was reached; its certificate (or TLS setup) was refused.
    if server_speaks_tls(e) {
        return RegistryError::Tls {
            host: host.into(),
            what: what.into(),
            cause,
        };
    }
    RegistryError::Connect {
        host: host.into(),
        what: what.into(),
        cause,
    }
}

/// Did the request fail in a TLS handshake with a server that evidently speaks
/// TLS: it presented a certificate that was rejected, or sent a TLS alert?
/// (rustls: "invalid peer certificate: …", "received fatal alert: …".)
fn server_speaks_tls(e: &reqwest::Error) -> bool {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        let msg = s.to_string();
        if msg.contains("invalid peer certificate") || msg.contains("received fatal alert") {
            return true;
        }
        src = s.source();
    }
    false
}

async fn error_detail(resp: reqwest::Response) -> String {
    // Registries put the reason in a small JSON body; never read a big one,
    // nor wait long for one that trickles: the status is the error.
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            body.extend_from_slice(&chunk);
            if body.len() > 4096 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(ERROR_BODY_WAIT, read).await;
    detail_text(&body)
}

/// How long an error response's body is waited for.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(5);

/// At most 512 bytes of an error body for a message, control and invisible
/// characters escaped (a registry's terminal escapes or bidi overrides must
/// not reach a log or a reply as they are).
fn detail_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let mut out = String::from(": ");
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            // Controls, bidi overrides and other invisible characters
            // escaped; printable letters (é) kept.
            out.extend(c.escape_debug());
        }
    }
    out
}

/// Keeps a response body moving: each chunk must come within `no_progress`,
/// and from the end of the first `no_progress` on the body must average at
/// least `min_rate` bytes a second. Without the second rule a registry sending a
/// byte just inside each window could hold a pull for as long as it liked.
pub(super) struct Pace {
    host: String,
    what: String,
    started: Instant,
    bytes: u64,
    no_progress: Duration,
    min_rate: u64,
}

impl Pace {
    /// The body's next chunk, or `None` at its end.
    pub(super) async fn next<S>(&mut self, body: &mut S) -> Result<Option<Bytes>, RegistryError>
    where
        S: Stream<Item = reqwest::Result<Bytes>> + Unpin,
    {
        match tokio::time::timeout(self.no_progress, body.next()).await {
            Err(_) => Err(RegistryError::Timeout {
                host: self.host.clone(),
                what: self.what.clone(),
                secs: self.no_progress.as_secs(),
            }),
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(connect_error(&self.host, &self.what, &e, self.no_progress)),
            Ok(Some(Ok(chunk))) => {
                self.bytes += chunk.len() as u64;
                self.check(self.started.elapsed())?;
                Ok(Some(chunk))
            }
        }
    }

    fn check(&self, elapsed: Duration) -> Result<(), RegistryError> {
        if self.min_rate == 0 || elapsed <= self.no_progress {
            return Ok(());
        }
        // The first window is free (a slow start, a mirror fetching from
        // upstream before its first byte): the rate is owed for the rest.
        let owed = elapsed - self.no_progress;
        let needed = (self.min_rate as f64 * owed.as_secs_f64()) as u64;
        if self.bytes < needed {
            return Err(RegistryError::TooSlow {
                host: self.host.clone(),
                what: self.what.clone(),
                bytes: self.bytes,
                secs: elapsed.as_secs(),
                min_rate: self.min_rate,
            });
        }
        Ok(())
    }
}

/// Reads a response body up to `limit` bytes, failing with `too_large` rather
/// than buffering more (at once when its Content-Length says so).
async fn read_limited(
    resp: reqwest::Response,
    limit: u64,
    mut pace: Pace,
    too_large: impl Fn() -> RegistryError,
) -> Result<Bytes, RegistryError> {
    if resp.content_length().is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = pace.next(&mut body).await? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests;
