//! A tiny, scriptable, misbehaving OCI registry on `std::net::TcpListener`.
//!
//! It serves one fixture image (busybox by default) under any repository name:
//! `GET|HEAD /v2/`, `/v2/<name>/manifests/<tag|digest>`, `/v2/<name>/blobs/<digest>`
//! (with `Range: bytes=N-[M]` support), and with [`Behavior::Unauthorized`] a working
//! bearer-token flow (`/token` on the same server). One [`Behavior`] breaks one part;
//! everything else is served correctly. Every request is recorded for assertions.
//! HTTP/1.1 keep-alive is supported (one thread per connection).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use serde_json::json;

use crate::fixtures::{self, Image};
use crate::util::{base64_decode, sha256_digest};

/// What the fake registry gets wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// Everything served correctly.
    Normal,
    /// Layer blobs are served with bytes that differ from their digest (same length; for
    /// gzip layers only the gzip header's MTIME field changes, so the data still
    /// decompresses fine and only a digest check can catch it).
    DigestMismatch,
    /// Every GET of a layer blob announces the full Content-Length but sends only half of
    /// it, then closes the connection.
    TruncatedBlob,
    /// Like `TruncatedBlob` for the first GET of each layer blob only; later GETs (with
    /// or without `Range`) are served correctly (to test resumed downloads).
    TruncatedBlobOnce,
    /// The manifest (by tag or its digest) is a valid JSON manifest larger than 9 MiB.
    HugeManifest,
    /// The manifest has `mediaType` and Content-Type `application/x-unknown`.
    UnknownMediaType,
    /// Manifest requests (GET and HEAD) answer this status with an errors body; a 401
    /// carries `WWW-Authenticate: Basic realm="fake-registry"`.
    Status(u16),
    /// Every request is read and then never answered (until the server is dropped).
    Hang,
    /// GETs of layer blobs send headers and half the body, then stall until drop.
    HangMidBlob,
    /// Like `HangMidBlob` for the first GET of each layer blob only.
    HangMidBlobOnce,
    /// Bearer auth: every /v2/ request without `Authorization: Bearer <token>` gets 401
    /// with `WWW-Authenticate: Bearer realm="http://ADDR/token",service="fake-registry",
    /// scope="repository:NAME:pull"`. `GET /token?...` hands out the token, requiring
    /// these basic-auth credentials if given (else anonymous).
    Unauthorized {
        credentials: Option<(String, String)>,
    },
}

/// Service name in the bearer challenge.
pub const TOKEN_SERVICE: &str = "fake-registry";
/// Size of the `HugeManifest` body is above this.
pub const HUGE_MANIFEST_MIN: usize = 9 * 1024 * 1024;

/// One request as received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Request target including the query string.
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    addr: String,
    behavior: Behavior,
    image: Image,
    token: String,
    blobs: HashMap<String, Vec<u8>>,
    /// digest -> media type, for every manifest of the image.
    manifests: HashMap<String, String>,
    layer_digests: HashSet<String>,
    requests: Mutex<Vec<RecordedRequest>>,
    broken_once: Mutex<HashSet<String>>,
    conns: Mutex<Vec<TcpStream>>,
    shutdown: Mutex<bool>,
    shutdown_cv: Condvar,
}

impl Shared {
    fn is_shutdown(&self) -> bool {
        *self.shutdown.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until the server is dropped.
    fn wait_shutdown(&self) {
        let mut g = self.shutdown.lock().unwrap_or_else(|e| e.into_inner());
        while !*g {
            g = self.shutdown_cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A running fake registry; stops (closing all connections, releasing hung ones) on drop.
pub struct FakeRegistry {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FakeRegistry {
    /// Serves the busybox fixture with `behavior`.
    pub fn start(behavior: Behavior) -> Result<Self> {
        Self::start_with(fixtures::busybox()?, behavior)
    }

    /// Serves `image` (any fixture, also an index) with `behavior`.
    pub fn start_with(image: &Image, behavior: Behavior) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind fake registry")?;
        let addr = listener.local_addr()?.to_string();
        let mut blobs = HashMap::new();
        for d in image.all_blobs()? {
            let data = image.blob(&d)?;
            blobs.insert(d, data);
        }
        let mut manifests = HashMap::new();
        manifests.insert(image.manifest_digest.clone(), image.media_type.clone());
        let mut layer_digests: HashSet<String> =
            image.layers.iter().map(|l| l.digest.clone()).collect();
        for m in &image.manifests {
            manifests.insert(m.digest.clone(), m.media_type.clone());
            layer_digests.extend(m.layers.iter().map(|l| l.digest.clone()));
        }
        let shared = Arc::new(Shared {
            addr,
            behavior,
            image: image.clone(),
            token: format!("fake-token-{}", std::process::id()),
            blobs,
            manifests,
            layer_digests,
            requests: Mutex::new(Vec::new()),
            broken_once: Mutex::new(HashSet::new()),
            conns: Mutex::new(Vec::new()),
            shutdown: Mutex::new(false),
            shutdown_cv: Condvar::new(),
        });
        let s2 = shared.clone();
        let accept = std::thread::Builder::new()
            .name("fake-registry".into())
            .spawn(move || accept_loop(listener, s2))?;
        Ok(Self {
            shared,
            accept: Some(accept),
        })
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// "127.0.0.1:PORT/NAME:TAG" for the served image's tag.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{}:{}", self.shared.addr, name, self.shared.image.tag)
    }

    /// The image being served.
    pub fn image(&self) -> &Image {
        &self.shared.image
    }

    /// The bearer token `/token` hands out (for `Behavior::Unauthorized`).
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// All requests received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests whose path contains `needle`.
    pub fn requests_to(&self, needle: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains(needle))
            .collect()
    }

    pub fn clear_requests(&self) {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        *self
            .shared
            .shutdown
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.shutdown_cv.notify_all();
        for c in self
            .shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.shared.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.is_shutdown() {
            break;
        }
        let Ok(stream) = stream else { continue };
        if let Ok(c) = stream.try_clone() {
            shared
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(c);
        }
        let s = shared.clone();
        let _ = std::thread::Builder::new()
            .name("fake-registry-conn".into())
            .spawn(move || {
                let _ = serve_conn(stream, &s);
            });
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(r: &mut impl BufRead) -> Result<Option<Request>> {
    // Not HTTP (e.g. a TLS ClientHello from a client trying https first): close at
    // once so the client falls back to plain HTTP instead of waiting for a timeout.
    match r.fill_buf()?.first() {
        None => return Ok(None),
        Some(b) if !b.is_ascii_uppercase() => return Ok(None),
        Some(_) => {}
    }
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let req = Request {
        method,
        path,
        headers,
    };
    // Discard a request body.
    if let Some(n) = req
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::io::copy(&mut r.take(n), &mut std::io::sink())?;
    }
    Ok(Some(req))
}

/// What to do after writing a response.
enum After {
    KeepAlive,
    Close,
}

fn serve_conn(stream: TcpStream, shared: &Shared) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    while let Some(req) = read_request(&mut reader)? {
        shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(RecordedRequest {
                method: req.method.clone(),
                path: req.path.clone(),
                headers: req.headers.clone(),
            });
        if shared.behavior == Behavior::Hang {
            shared.wait_shutdown();
            return Ok(());
        }
        let close_requested = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        match route(&req, shared, &mut w)? {
            After::Close => break,
            After::KeepAlive if close_requested => break,
            After::KeepAlive => {}
        }
    }
    let _ = w.shutdown(Shutdown::Both);
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn write_head(
    w: &mut impl Write,
    status: u16,
    headers: &[(&str, String)],
    len: usize,
) -> Result<()> {
    let mut s = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    s.push_str("Docker-Distribution-API-Version: registry/2.0\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str(&format!("Content-Length: {len}\r\n\r\n"));
    w.write_all(s.as_bytes())?;
    Ok(())
}

fn respond(
    w: &mut impl Write,
    req: &Request,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<After> {
    write_head(w, status, headers, body.len())?;
    if req.method != "HEAD" {
        w.write_all(body)?;
    }
    w.flush()?;
    Ok(After::KeepAlive)
}

fn error(
    w: &mut impl Write,
    req: &Request,
    status: u16,
    code: &str,
    extra: &[(&str, String)],
) -> Result<After> {
    let body = serde_json::to_vec(&json!({
        "errors": [{"code": code, "message": format!("fake registry: {code}"), "detail": null}]
    }))?;
    let mut h = vec![("Content-Type", "application/json".to_string())];
    h.extend(extra.iter().cloned());
    respond(w, req, status, &h, &body)
}

fn route(req: &Request, shared: &Shared, w: &mut TcpStream) -> Result<After> {
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));

    if let Behavior::Unauthorized { credentials } = &shared.behavior {
        if path == "/token" {
            return token(req, shared, credentials.as_ref(), w);
        }
        let expected = format!("Bearer {}", shared.token);
        if req.header("authorization") != Some(expected.as_str()) {
            let repo = path
                .strip_prefix("/v2/")
                .and_then(|p| p.rsplit_once("/manifests/").or(p.rsplit_once("/blobs/")))
                .map(|(name, _)| name.to_string());
            let mut challenge = format!(
                "Bearer realm=\"http://{}/token\",service=\"{TOKEN_SERVICE}\"",
                shared.addr
            );
            if let Some(r) = repo {
                challenge.push_str(&format!(",scope=\"repository:{r}:pull\""));
            }
            return error(
                w,
                req,
                401,
                "UNAUTHORIZED",
                &[("WWW-Authenticate", challenge)],
            );
        }
    }
    let _ = query;

    if req.method != "GET" && req.method != "HEAD" {
        return error(w, req, 405, "UNSUPPORTED", &[]);
    }
    if path == "/v2/" || path == "/v2" {
        return respond(
            w,
            req,
            200,
            &[("Content-Type", "application/json".into())],
            b"{}",
        );
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return error(w, req, 404, "NOT_FOUND", &[]);
    };
    if let Some((_name, reference)) = rest.rsplit_once("/manifests/") {
        return manifest(req, shared, reference, w);
    }
    if let Some((_name, digest)) = rest.rsplit_once("/blobs/") {
        return blob(req, shared, digest, w);
    }
    error(w, req, 404, "NOT_FOUND", &[])
}

fn token(
    req: &Request,
    shared: &Shared,
    credentials: Option<&(String, String)>,
    w: &mut TcpStream,
) -> Result<After> {
    if let Some((user, pass)) = credentials {
        let ok = req
            .header("authorization")
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64_decode(b.trim()))
            .is_some_and(|d| d == format!("{user}:{pass}").as_bytes());
        if !ok {
            return error(
                w,
                req,
                401,
                "UNAUTHORIZED",
                &[(
                    "WWW-Authenticate",
                    format!("Basic realm=\"{TOKEN_SERVICE}\""),
                )],
            );
        }
    }
    let body = serde_json::to_vec(&json!({
        "token": shared.token,
        "access_token": shared.token,
        "expires_in": 300,
        "issued_at": "1970-01-01T00:00:00Z",
    }))?;
    respond(
        w,
        req,
        200,
        &[("Content-Type", "application/json".into())],
        &body,
    )
}

fn manifest(req: &Request, shared: &Shared, reference: &str, w: &mut TcpStream) -> Result<After> {
    if let Behavior::Status(code) = shared.behavior {
        let extra = if code == 401 {
            vec![(
                "WWW-Authenticate",
                format!("Basic realm=\"{TOKEN_SERVICE}\""),
            )]
        } else {
            vec![]
        };
        let c = match code {
            401 => "UNAUTHORIZED",
            403 => "DENIED",
            404 => "MANIFEST_UNKNOWN",
            429 => "TOOMANYREQUESTS",
            _ => "UNKNOWN",
        };
        return error(w, req, code, c, &extra);
    }
    let img = &shared.image;
    let digest = if reference == img.tag {
        img.manifest_digest.clone()
    } else if shared.manifests.contains_key(reference) {
        reference.to_string()
    } else if (shared.behavior == Behavior::HugeManifest && reference == huge_manifest(shared)?.0)
        || (shared.behavior == Behavior::UnknownMediaType
            && reference == unknown_manifest(shared)?.0)
    {
        img.manifest_digest.clone()
    } else {
        return error(w, req, 404, "MANIFEST_UNKNOWN", &[]);
    };
    let top = digest == img.manifest_digest;
    let (digest, media_type, body) = match &shared.behavior {
        Behavior::HugeManifest if top => {
            let (d, b) = huge_manifest(shared)?;
            (d, img.media_type.clone(), b)
        }
        Behavior::UnknownMediaType if top => {
            let (d, b) = unknown_manifest(shared)?;
            (d, "application/x-unknown".to_string(), b)
        }
        _ => {
            let mt = shared.manifests.get(&digest).cloned().unwrap_or_default();
            let body = shared.blobs.get(&digest).cloned().unwrap_or_default();
            (digest, mt, body)
        }
    };
    respond(
        w,
        req,
        200,
        &[
            ("Content-Type", media_type),
            ("Docker-Content-Digest", digest),
        ],
        &body,
    )
}

/// The top-level manifest padded with a big annotation to more than 9 MiB.
fn huge_manifest(shared: &Shared) -> Result<(String, Vec<u8>)> {
    let mut v: serde_json::Value = serde_json::from_slice(
        shared
            .blobs
            .get(&shared.image.manifest_digest)
            .map(Vec::as_slice)
            .unwrap_or(b"{}"),
    )?;
    v["annotations"] = json!({"org.berth.test.padding": "x".repeat(HUGE_MANIFEST_MIN + 1)});
    let b = serde_json::to_vec(&v)?;
    Ok((sha256_digest(&b), b))
}

fn unknown_manifest(shared: &Shared) -> Result<(String, Vec<u8>)> {
    let mut v: serde_json::Value = serde_json::from_slice(
        shared
            .blobs
            .get(&shared.image.manifest_digest)
            .map(Vec::as_slice)
            .unwrap_or(b"{}"),
    )?;
    v["mediaType"] = json!("application/x-unknown");
    let b = serde_json::to_vec_pretty(&v)?;
    Ok((sha256_digest(&b), b))
}

/// Parses `bytes=N-` / `bytes=N-M` into a half-open range within `len`.
fn parse_range(h: &str, len: usize) -> Option<(usize, usize)> {
    let spec = h.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: usize = a.trim().parse().ok()?;
    let end = if b.trim().is_empty() {
        len
    } else {
        b.trim().parse::<usize>().ok()?.saturating_add(1).min(len)
    };
    (start < end).then_some((start, end))
}

fn blob(req: &Request, shared: &Shared, digest: &str, w: &mut TcpStream) -> Result<After> {
    let Some(orig) = shared.blobs.get(digest) else {
        return error(w, req, 404, "BLOB_UNKNOWN", &[]);
    };
    let is_layer = shared.layer_digests.contains(digest);
    let mut data = std::borrow::Cow::Borrowed(orig.as_slice());
    if shared.behavior == Behavior::DigestMismatch && is_layer {
        let mut d = orig.clone();
        if d.len() > 8 && d[0] == 0x1f && d[1] == 0x8b {
            d[4] ^= 0x5a; // gzip MTIME: ignored by decoders
        } else if let Some(last) = d.last_mut() {
            *last ^= 0x01;
        }
        data = std::borrow::Cow::Owned(d);
    }
    let len = data.len();
    let (status, start, end) = match req.header("range") {
        Some(r) => match parse_range(r, len) {
            Some((s, e)) => (206, s, e),
            None => {
                return error(
                    w,
                    req,
                    416,
                    "RANGE_INVALID",
                    &[("Content-Range", format!("bytes */{len}"))],
                )
            }
        },
        None => (200, 0, len),
    };
    let mut headers = vec![
        ("Content-Type", "application/octet-stream".to_string()),
        ("Docker-Content-Digest", digest.to_string()),
        ("Accept-Ranges", "bytes".to_string()),
    ];
    if status == 206 {
        headers.push(("Content-Range", format!("bytes {start}-{}/{len}", end - 1)));
    }
    let body = &data[start..end];

    let broken = req.method == "GET" && is_layer && {
        match shared.behavior {
            Behavior::TruncatedBlob | Behavior::HangMidBlob => true,
            Behavior::TruncatedBlobOnce | Behavior::HangMidBlobOnce => shared
                .broken_once
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(digest.to_string()),
            _ => false,
        }
    };
    if !broken {
        return respond(w, req, status, &headers, body);
    }
    write_head(w, status, &headers, body.len())?;
    w.write_all(&body[..body.len() / 2])?;
    w.flush()?;
    match shared.behavior {
        Behavior::HangMidBlob | Behavior::HangMidBlobOnce => {
            shared.wait_shutdown();
        }
        _ => {}
    }
    let _ = w.shutdown(Shutdown::Both);
    Ok(After::Close)
}

#[cfg(test)]
mod tests;
