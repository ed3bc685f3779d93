use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use super::auth::{parse_challenges, Credentials, TokenResponse};
use crate::hosts::RegistryHost;

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
            RegistryError::Timeout { .. } | RegistryError::Connect { .. } => true,
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
    pub fn new(connect_timeout: Duration, no_progress: Duration, max_manifest: u64) -> Self {
        RegistryClient {
            clients: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            connect_timeout,
            no_progress,
            max_manifest,
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
    // Registries put the reason in a small JSON body; never read a big one.
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() > 4096 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

impl Repository {
    fn scope(&self) -> String {
        format!("repository:{}:{}", self.path, self.actions)
    }

    /// Sends a request to one endpoint, answering an auth challenge once.
    async fn send(
        &self,
        ep: &Endpoint,
        method: Method,
        suffix: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let http = self.client.http(&ep.host, what)?;
        let host = ep.host.host.clone();
        let mut schemes = vec![ep.host.scheme.clone()];
        if ep.host.fallback_http && ep.host.scheme == "https" {
            schemes.push("http".into());
        }
        let mut last_err = None;
        'schemes: for scheme in schemes {
            let url = format!("{}{}", ep.base(&scheme), suffix);
            let token_key = (host.clone(), self.scope());
            let mut auth = self.cached_auth(&token_key);
            let mut body_once = body.clone();
            for attempt in 0..2 {
                let mut req = http.request(method.clone(), &url).headers(headers.clone());
                for (k, v) in &ep.host.header {
                    req = req.header(k.as_str(), v.as_str());
                }
                if let Some(a) = &auth {
                    req = req.header(AUTHORIZATION, a.as_str());
                }
                if let Some(b) = body_once.take() {
                    req = req.body(b);
                }
                debug!(%url, %method, "registry request");
                let sent = tokio::time::timeout(self.client.no_progress, req.send()).await;
                let resp = match sent {
                    Err(_) => {
                        last_err = Some(RegistryError::Timeout {
                            host: host.clone(),
                            what: what.into(),
                            secs: self.client.no_progress.as_secs(),
                        });
                        break;
                    }
                    Ok(Err(e)) => {
                        last_err = Some(connect_error(&host, what, &e, self.client.no_progress));
                        // The http fallback is for servers that do not speak TLS. One
                        // that does (it showed a certificate we rejected, or sent an
                        // alert) gets that error reported, not a plain-HTTP retry that
                        // its TLS port can only answer with a 400.
                        if server_speaks_tls(&e) {
                            break 'schemes;
                        }
                        break;
                    }
                    Ok(Ok(r)) => r,
                };
                if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                    let challenge = resp
                        .headers()
                        .get_all(reqwest::header::WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(parse_challenges)
                        .collect::<Vec<_>>();
                    match self
                        .answer_challenge(&http, &host, &challenge, what)
                        .await?
                    {
                        Some(a) => {
                            self.store_auth(&token_key, &a);
                            auth = Some(a);
                            body_once = body.clone();
                            continue;
                        }
                        None => {
                            let detail = error_detail(resp).await;
                            return Err(RegistryError::Unauthorized {
                                host,
                                what: what.into(),
                                detail,
                            });
                        }
                    }
                }
                if resp.status() == StatusCode::UNAUTHORIZED {
                    let detail = error_detail(resp).await;
                    return Err(RegistryError::Unauthorized {
                        host,
                        what: what.into(),
                        detail,
                    });
                }
                return Ok(resp);
            }
        }
        Err(last_err.unwrap_or_else(|| RegistryError::Protocol {
            what: what.into(),
            cause: "no request was sent".into(),
        }))
    }

    fn cached_auth(&self, key: &(String, String)) -> Option<String> {
        let tokens = self.client.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(key)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(t, _)| t.clone())
    }

    fn store_auth(&self, key: &(String, String), value: &str) {
        let mut tokens = self.client.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.insert(
            key.clone(),
            (value.to_string(), Instant::now() + Duration::from_secs(50)),
        );
    }

    /// Turns a 401 challenge into an Authorization header value, if we can.
    async fn answer_challenge(
        &self,
        http: &reqwest::Client,
        host: &str,
        challenges: &[super::auth::Challenge],
        what: &str,
    ) -> Result<Option<String>, RegistryError> {
        use base64_encode as b64;
        for c in challenges {
            match c.scheme.as_str() {
                "basic" => {
                    if self.creds.username.is_empty() {
                        return Ok(None);
                    }
                    let raw = format!("{}:{}", self.creds.username, self.creds.password);
                    return Ok(Some(format!("Basic {}", b64(raw.as_bytes()))));
                }
                "bearer" => {
                    let Some(realm) = c.params.get("realm") else {
                        continue;
                    };
                    let scope = c
                        .params
                        .get("scope")
                        .cloned()
                        .unwrap_or_else(|| self.scope());
                    let mut req = http.get(realm).query(&[("scope", scope.as_str())]);
                    if let Some(service) = c.params.get("service") {
                        req = req.query(&[("service", service.as_str())]);
                    }
                    if !self.creds.identity_token.is_empty() && self.creds.username.is_empty() {
                        // A ready bearer token supplied by the caller.
                        return Ok(Some(format!("Bearer {}", self.creds.identity_token)));
                    }
                    if !self.creds.username.is_empty() {
                        req = req.basic_auth(&self.creds.username, Some(&self.creds.password));
                    }
                    let resp = tokio::time::timeout(self.client.no_progress, req.send())
                        .await
                        .map_err(|_| RegistryError::Timeout {
                            host: host.into(),
                            what: format!("{what} (token from {realm})"),
                            secs: self.client.no_progress.as_secs(),
                        })?
                        .map_err(|e| connect_error(realm, what, &e, self.client.no_progress))?;
                    if !resp.status().is_success() {
                        let status = resp.status();
                        let detail = error_detail(resp).await;
                        return Err(RegistryError::Unauthorized {
                            host: host.into(),
                            what: what.into(),
                            detail: format!(": token server {realm} answered {status}{detail}"),
                        });
                    }
                    // Its own bound and its own error: a token endpoint that
                    // streams forever is not a large manifest, and one that
                    // trickles must not hold the pull past the timeout.
                    let token_what = format!("{what} (token from {realm})");
                    let read = read_limited(
                        resp,
                        MAX_TOKEN_RESPONSE,
                        &token_what,
                        host,
                        self.client.no_progress,
                        || RegistryError::TokenTooLarge {
                            what: what.into(),
                            realm: berth_sysutil::echo(realm),
                            limit: MAX_TOKEN_RESPONSE,
                        },
                    );
                    let body = tokio::time::timeout(self.client.no_progress, read)
                        .await
                        .map_err(|_| RegistryError::Timeout {
                            host: host.into(),
                            what: token_what.clone(),
                            secs: self.client.no_progress.as_secs(),
                        })??;
                    let tr: TokenResponse =
                        serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
                            what: what.into(),
                            cause: format!("bad token response from {realm}: {e}"),
                        })?;
                    return Ok(tr.bearer().map(|t| format!("Bearer {t}")));
                }
                _ => continue,
            }
        }
        Ok(None)
    }

    fn check_status(
        host: &str,
        what: &str,
        resp: reqwest::Response,
    ) -> impl std::future::Future<Output = Result<reqwest::Response, RegistryError>> {
        let host = host.to_string();
        let what = what.to_string();
        async move {
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == StatusCode::NOT_FOUND {
                return Err(RegistryError::NotFound { host, what });
            }
            let detail = error_detail(resp).await;
            Err(RegistryError::Status {
                host,
                what,
                status,
                detail,
            })
        }
    }

    /// Fetches a manifest or index by tag or digest. Returns the media type,
    /// the digest (verified when asked by digest) and the body. Tags are only
    /// resolved on hosts with the "resolve" capability.
    pub async fn get_manifest(
        &self,
        object: &str,
        what: &str,
    ) -> Result<(String, String, Bytes), RegistryError> {
        let by_digest = by_digest(object);
        let mut last = None;
        for ep in &self.endpoints {
            if !ep.host.can_fetch(by_digest) {
                continue;
            }
            match self.get_manifest_from(ep, object, what).await {
                Ok(r) => return Ok(r),
                Err(e) if e.try_next_host() => {
                    warn!(host = %ep.host.host, error = %e, "manifest fetch failed; trying next host");
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            RegistryError::Config(format!(
                "{what}: no configured host can {} it",
                if by_digest { "pull" } else { "resolve" }
            ))
        }))
    }

    async fn get_manifest_from(
        &self,
        ep: &Endpoint,
        object: &str,
        what: &str,
    ) -> Result<(String, String, Bytes), RegistryError> {
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT,
            HeaderValue::from_str(&crate::oci::MANIFEST_ACCEPT.join(", "))
                .map_err(|e| RegistryError::Config(e.to_string()))?,
        );
        let suffix = format!("/{}/manifests/{}", self.path, object);
        let resp = self.send(ep, Method::GET, &suffix, h, None, what).await?;
        let resp = Self::check_status(&ep.host.host, what, resp).await?;
        let header_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let limit = self.client.max_manifest;
        let body = read_limited(
            resp,
            limit,
            what,
            &ep.host.host,
            self.client.no_progress,
            || RegistryError::TooLarge {
                what: format!("{what}: manifest"),
                limit,
            },
        )
        .await?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if by_digest(object) && digest != object {
            return Err(RegistryError::DigestMismatch {
                what: format!("{what}: manifest"),
                expected: object.into(),
                actual: digest,
            });
        }
        // The document's own mediaType wins over the header (registries vary).
        let media_type = crate::oci::sniff_media_type(&body)
            .or(header_type)
            .ok_or_else(|| RegistryError::Protocol {
                what: what.into(),
                cause: "manifest is not a JSON document with a media type".into(),
            })?;
        Ok((media_type, digest, body))
    }

    /// Starts a blob download at `offset` (a Range request when non-zero).
    /// The caller verifies the digest while writing.
    pub async fn get_blob(
        &self,
        digest: &str,
        offset: u64,
        what: &str,
    ) -> Result<BlobBody, RegistryError> {
        let mut last = None;
        for ep in &self.endpoints {
            if !ep.host.can_fetch(true) {
                continue;
            }
            let mut h = HeaderMap::new();
            if offset > 0 {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                    h.insert(RANGE, v);
                }
            }
            let suffix = format!("/{}/blobs/{}", self.path, digest);
            let resp = match self.send(ep, Method::GET, &suffix, h, None, what).await {
                Ok(r) => r,
                Err(e) if e.try_next_host() => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let resp = match Self::check_status(&ep.host.host, what, resp).await {
                Ok(r) => r,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let partial = resp.status() == StatusCode::PARTIAL_CONTENT;
            let start = if partial { offset } else { 0 };
            let ranges = partial
                || resp
                    .headers()
                    .get(reqwest::header::ACCEPT_RANGES)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.split(',').any(|u| u.trim().eq_ignore_ascii_case("bytes")));
            let total = resp.content_length().map(|l| l + start);
            let host = ep.host.host.clone();
            let what_s = what.to_string();
            let no_progress = self.client.no_progress;
            let inner = resp.bytes_stream();
            let stream = futures::stream::unfold(
                (inner, host, what_s),
                move |(mut inner, host, what)| async move {
                    match tokio::time::timeout(no_progress, inner.next()).await {
                        Err(_) => Some((
                            Err(RegistryError::Timeout {
                                host: host.clone(),
                                what: what.clone(),
                                secs: no_progress.as_secs(),
                            }),
                            (inner, host, what),
                        )),
                        Ok(None) => None,
                        Ok(Some(Ok(b))) => Some((Ok(b), (inner, host, what))),
                        Ok(Some(Err(e))) => {
                            let err = connect_error(&host, &what, &e, no_progress);
                            Some((Err(err), (inner, host, what)))
                        }
                    }
                },
            );
            return Ok(BlobBody {
                offset: start,
                total,
                ranges,
                host: ep.host.host.clone(),
                stream: Box::pin(stream),
            });
        }
        Err(last.unwrap_or_else(|| {
            RegistryError::Config(format!("{what}: no configured host can pull it"))
        }))
    }

    /// The first endpoint allowed to push (the upstream server by default).
    fn push_endpoint(&self, what: &str) -> Result<&Endpoint, RegistryError> {
        self.endpoints
            .iter()
            .find(|e| e.host.can_push())
            .ok_or_else(|| RegistryError::Config(format!("{what}: no configured host allows push")))
    }

    pub async fn blob_exists(&self, digest: &str, what: &str) -> Result<bool, RegistryError> {
        let ep = self.push_endpoint(what)?;
        let suffix = format!("/{}/blobs/{}", self.path, digest);
        let resp = self
            .send(ep, Method::HEAD, &suffix, HeaderMap::new(), None, what)
            .await?;
        Ok(resp.status().is_success())
    }

    /// Uploads a blob in one monolithic PUT after opening an upload session.
    pub async fn put_blob(
        &self,
        digest: &str,
        size: u64,
        body: reqwest::Body,
        what: &str,
    ) -> Result<(), RegistryError> {
        let ep = self.push_endpoint(what)?;
        let suffix = format!("/{}/blobs/uploads/", self.path);
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::CONTENT_LENGTH, HeaderValue::from(0));
        let resp = self
            .send(ep, Method::POST, &suffix, h, Some(Bytes::new()), what)
            .await?;
        let resp = Self::check_status(&ep.host.host, what, resp).await?;
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Protocol {
                what: what.into(),
                cause: "upload session without a Location header".into(),
            })?
            .to_string();
        let sep = if location.contains('?') { '&' } else { '?' };
        let http = self.client.http(&ep.host, what)?;
        let url = if location.starts_with("http://") || location.starts_with("https://") {
            format!("{location}{sep}digest={digest}")
        } else {
            format!(
                "{}://{}{location}{sep}digest={digest}",
                ep.host.scheme, ep.host.host
            )
        };
        let mut req = http
            .put(&url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(body);
        if let Some(a) = self.cached_auth(&(ep.host.host.clone(), self.scope())) {
            req = req.header(AUTHORIZATION, a);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| connect_error(&ep.host.host, what, &e, self.client.no_progress))?;
        Self::check_status(&ep.host.host, what, resp).await?;
        Ok(())
    }

    pub async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        body: Bytes,
        what: &str,
    ) -> Result<(), RegistryError> {
        let ep = self.push_endpoint(what)?;
        let suffix = format!("/{}/manifests/{}", self.path, reference);
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|e| RegistryError::Protocol {
                what: what.into(),
                cause: format!("bad media type: {e}"),
            })?,
        );
        let resp = self
            .send(ep, Method::PUT, &suffix, h, Some(body), what)
            .await?;
        Self::check_status(&ep.host.host, what, resp).await?;
        Ok(())
    }
}

/// The largest token server answer read (bytes): real ones are a few KiB.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

/// Tags cannot contain ':', digests always do.
fn by_digest(object: &str) -> bool {
    object.contains(':')
}

/// Reads a response body up to `limit` bytes, failing with `too_large` rather
/// than buffering more (at once when its Content-Length says so).
async fn read_limited(
    resp: reqwest::Response,
    limit: u64,
    what: &str,
    host: &str,
    no_progress: Duration,
    too_large: impl Fn() -> RegistryError,
) -> Result<Bytes, RegistryError> {
    if resp.content_length().is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    loop {
        let next = tokio::time::timeout(no_progress, stream.next())
            .await
            .map_err(|_| RegistryError::Timeout {
                host: host.into(),
                what: what.into(),
                secs: no_progress.as_secs(),
            })?;
        match next {
            None => break,
            Some(Ok(chunk)) => {
                if out.len() as u64 + chunk.len() as u64 > limit {
                    return Err(too_large());
                }
                out.extend_from_slice(&chunk);
            }
            Some(Err(e)) => return Err(connect_error(host, what, &e, no_progress)),
        }
    }
    Ok(Bytes::from(out))
}

/// Standard base64 (RFC 4648) for the Basic auth header; small enough not to
/// warrant a dependency.
fn base64_encode(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors from https requests to fake servers: answering the ClientHello in
    /// plain HTTP or hanging up do not show a TLS server (the http fallback
    /// applies); a TLS alert does.
    #[tokio::test]
    async fn tls_server_evidence() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn fail_with(answer: &'static [u8]) -> reqwest::Error {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                if let Ok((mut conn, _)) = listener.accept().await {
                    let mut buf = [0u8; 512];
                    let _ = conn.read(&mut buf).await;
                    let _ = conn.write_all(answer).await;
                }
            });
            reqwest::Client::new()
                .get(format!("https://{addr}/v2/"))
                .send()
                .await
                .unwrap_err()
        }
        let plain = fail_with(b"HTTP/1.0 400 Bad Request\r\n\r\nnot TLS\n").await;
        assert!(!server_speaks_tls(&plain), "{plain:?}");
        let hangup = fail_with(b"").await;
        assert!(!server_speaks_tls(&hangup), "{hangup:?}");
        // TLS 1.2 record: alert, fatal, handshake_failure.
        let alert = fail_with(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]).await;
        assert!(server_speaks_tls(&alert), "{alert:?}");
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"user:pass"), "dXNlcjpwYXNz");
    }
}
