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
mod tests {
    use super::*;
    use crate::util::{basic_auth, http_get, http_request, MANIFEST_ACCEPT};
    use std::time::{Duration, Instant};

    fn get(addr: &str, path: &str) -> crate::util::HttpResponse {
        http_get(addr, path, &[("Accept", MANIFEST_ACCEPT)]).unwrap()
    }

    /// Reads a raw response until EOF or timeout: (bytes read, timed out?).
    fn raw_get(addr: &str, path: &str, timeout: Duration) -> (Vec<u8>, bool) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(timeout)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (out, false),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => return (out, true),
            }
        }
    }

    fn split_head(raw: &[u8]) -> (String, &[u8]) {
        let i = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8_lossy(&raw[..i]).into_owned(),
            &raw[i + 4..],
        )
    }

    #[test]
    fn normal_serves_valid_image_with_ranges() {
        let f = FakeRegistry::start(Behavior::Normal).unwrap();
        let img = f.image().clone();
        assert_eq!(get(f.addr(), "/v2/").status, 200);
        let m = get(f.addr(), "/v2/library/busybox/manifests/latest");
        assert_eq!(m.status, 200);
        assert_eq!(m.header("content-type"), Some(img.media_type.as_str()));
        assert_eq!(sha256_digest(&m.body), img.manifest_digest);
        let m2 = get(
            f.addr(),
            &format!("/v2/x/manifests/{}", img.manifest_digest),
        );
        assert_eq!(m2.body, m.body);
        assert_eq!(get(f.addr(), "/v2/x/manifests/nope").status, 404);
        let l = &img.layers[0];
        let b = get(f.addr(), &format!("/v2/x/blobs/{}", l.digest));
        assert_eq!(sha256_digest(&b.body), l.digest);
        let r = http_get(
            f.addr(),
            &format!("/v2/x/blobs/{}", l.digest),
            &[("Range", "bytes=10-")],
        )
        .unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(r.body, b.body[10..]);
        let h = http_request(
            "HEAD",
            f.addr(),
            &format!("/v2/x/blobs/{}", l.digest),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(
            h.header("content-length"),
            Some(l.size.to_string().as_str())
        );
        let reqs = f.requests_to("/blobs/");
        assert!(reqs.iter().any(|r| r.header("range") == Some("bytes=10-")));
        assert_eq!(f.requests()[0].method, "GET");

        // keep-alive: two requests on one connection
        let mut s = TcpStream::connect(f.addr()).unwrap();
        write!(s, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2);
    }

    #[test]
    fn serves_an_index() {
        let mp = fixtures::multiplatform().unwrap();
        let f = FakeRegistry::start_with(mp, Behavior::Normal).unwrap();
        let m = get(f.addr(), "/v2/m/manifests/latest");
        assert_eq!(m.header("content-type"), Some(fixtures::MT_OCI_INDEX));
        for pm in &mp.manifests {
            let r = get(f.addr(), &format!("/v2/m/manifests/{}", pm.digest));
            assert_eq!(r.status, 200);
            assert_eq!(sha256_digest(&r.body), pm.digest);
        }
    }

    #[test]
    fn digest_mismatch_still_decompresses() {
        let f = FakeRegistry::start(Behavior::DigestMismatch).unwrap();
        let l = f.image().layers[0].clone();
        let b = get(f.addr(), &format!("/v2/x/blobs/{}", l.digest));
        assert_eq!(b.body.len() as u64, l.size);
        assert_ne!(sha256_digest(&b.body), l.digest);
        let tar = fixtures::decompress_layer(&l.media_type, &b.body).unwrap();
        assert_eq!(sha256_digest(&tar), l.diff_id);
        // config is fine
        let c = get(
            f.addr(),
            &format!("/v2/x/blobs/{}", f.image().config_digest),
        );
        assert_eq!(sha256_digest(&c.body), f.image().config_digest);
    }

    #[test]
    fn truncated_blob() {
        let f = FakeRegistry::start(Behavior::TruncatedBlob).unwrap();
        let l = f.image().layers[0].clone();
        let path = format!("/v2/x/blobs/{}", l.digest);
        let (raw, timed_out) = raw_get(f.addr(), &path, Duration::from_secs(10));
        assert!(!timed_out, "closed, not hung");
        let (head, body) = split_head(&raw);
        assert!(head.contains(&format!("Content-Length: {}", l.size)));
        assert_eq!(body.len() as u64, l.size / 2);
        assert!(http_get(f.addr(), &path, &[]).is_err());

        let f = FakeRegistry::start(Behavior::TruncatedBlobOnce).unwrap();
        assert!(http_get(f.addr(), &path, &[]).is_err());
        let r = http_get(f.addr(), &path, &[("Range", "bytes=5-")]).unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(r.body.len() as u64, l.size - 5);
        assert_eq!(
            f.requests_to("/blobs/")[1].header("range"),
            Some("bytes=5-")
        );
    }

    #[test]
    fn huge_and_unknown_manifests() {
        let f = FakeRegistry::start(Behavior::HugeManifest).unwrap();
        let m = get(f.addr(), "/v2/x/manifests/latest");
        assert!(m.body.len() > HUGE_MANIFEST_MIN);
        assert!(m.json().is_ok());
        assert_eq!(
            m.header("docker-content-digest"),
            Some(sha256_digest(&m.body).as_str())
        );

        let f = FakeRegistry::start(Behavior::UnknownMediaType).unwrap();
        let m = get(f.addr(), "/v2/x/manifests/latest");
        assert_eq!(m.header("content-type"), Some("application/x-unknown"));
        assert_eq!(m.json().unwrap()["mediaType"], "application/x-unknown");
        let d = m.header("docker-content-digest").unwrap().to_string();
        assert_eq!(get(f.addr(), &format!("/v2/x/manifests/{d}")).body, m.body);
    }

    #[test]
    fn status_codes() {
        for code in [401u16, 404, 500] {
            let f = FakeRegistry::start(Behavior::Status(code)).unwrap();
            assert_eq!(get(f.addr(), "/v2/").status, 200);
            let m = get(f.addr(), "/v2/x/manifests/latest");
            assert_eq!(m.status, code);
            assert_eq!(m.header("www-authenticate").is_some(), code == 401);
            let h = http_request("HEAD", f.addr(), "/v2/x/manifests/latest", &[], &[]).unwrap();
            assert_eq!(h.status, code);
            // blobs still fine
            let l = &f.image().layers[0];
            assert_eq!(
                get(f.addr(), &format!("/v2/x/blobs/{}", l.digest)).status,
                200
            );
        }
    }

    #[test]
    fn hang_and_hang_mid_blob_release_on_drop() {
        let f = FakeRegistry::start(Behavior::Hang).unwrap();
        let (raw, timed_out) = raw_get(f.addr(), "/v2/", Duration::from_millis(300));
        assert!(timed_out && raw.is_empty());
        assert_eq!(f.requests().len(), 1);

        let f2 = FakeRegistry::start(Behavior::HangMidBlob).unwrap();
        let l = f2.image().layers[0].clone();
        let path = format!("/v2/x/blobs/{}", l.digest);
        let (raw, timed_out) = raw_get(f2.addr(), &path, Duration::from_millis(500));
        assert!(timed_out);
        let (_, body) = split_head(&raw);
        assert_eq!(body.len() as u64, l.size / 2);

        // Drop releases hung connections: a reader sees EOF quickly.
        let addr = f2.addr().to_string();
        let t = std::thread::spawn(move || raw_get(&addr, &path, Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        drop(f2);
        drop(f);
        let (_, timed_out) = t.join().unwrap();
        assert!(!timed_out);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn hang_mid_blob_once_then_resume() {
        let f = FakeRegistry::start(Behavior::HangMidBlobOnce).unwrap();
        let l = f.image().layers[0].clone();
        let path = format!("/v2/x/blobs/{}", l.digest);
        let (raw, timed_out) = raw_get(f.addr(), &path, Duration::from_millis(300));
        assert!(timed_out);
        let (_, got) = split_head(&raw);
        let r = http_get(
            f.addr(),
            &path,
            &[("Range", &format!("bytes={}-", got.len()))],
        )
        .unwrap();
        let mut all = got.to_vec();
        all.extend_from_slice(&r.body);
        assert_eq!(sha256_digest(&all), l.digest);
    }

    #[test]
    fn bearer_token_flow() {
        let f = FakeRegistry::start(Behavior::Unauthorized {
            credentials: Some(("bob".into(), "pw".into())),
        })
        .unwrap();
        let r = get(f.addr(), "/v2/library/busybox/manifests/latest");
        assert_eq!(r.status, 401);
        let ch = r.header("www-authenticate").unwrap().to_string();
        assert!(ch.starts_with("Bearer realm=\"http://127.0.0.1:"));
        assert!(ch.contains("scope=\"repository:library/busybox:pull\""));
        let realm = ch.split('"').nth(1).unwrap();
        let token_path = format!(
            "{}?service={TOKEN_SERVICE}&scope=repository:library/busybox:pull",
            realm.split_once(f.addr()).unwrap().1
        );
        assert_eq!(http_get(f.addr(), &token_path, &[]).unwrap().status, 401);
        let t = http_get(
            f.addr(),
            &token_path,
            &[("Authorization", &basic_auth("bob", "pw"))],
        )
        .unwrap();
        assert_eq!(t.status, 200);
        let tok = t.json().unwrap()["token"].as_str().unwrap().to_string();
        assert_eq!(tok, f.token());
        let bearer = format!("Bearer {tok}");
        let ok = http_get(
            f.addr(),
            "/v2/library/busybox/manifests/latest",
            &[("Accept", MANIFEST_ACCEPT), ("Authorization", &bearer)],
        )
        .unwrap();
        assert_eq!(ok.status, 200);
        assert_eq!(sha256_digest(&ok.body), f.image().manifest_digest);

        // anonymous token flow
        let f = FakeRegistry::start(Behavior::Unauthorized { credentials: None }).unwrap();
        let t = http_get(f.addr(), "/token?service=fake-registry", &[]).unwrap();
        assert_eq!(t.status, 200);
    }

    #[test]
    fn skopeo_pulls_through_bearer_auth() {
        // A real client (skopeo) copes with the fake registry and its token flow.
        let f = FakeRegistry::start(Behavior::Unauthorized {
            credentials: Some(("bob".into(), "pw".into())),
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                "--src-creds=bob:pw",
            ])
            .arg(format!("docker://{}", f.reference("library/busybox")))
            .arg(format!("oci:{}:latest", dir.path().display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let idx = std::fs::read_to_string(dir.path().join("index.json")).unwrap();
        assert!(idx.contains(&f.image().manifest_digest));
        assert!(f
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/token") && r.header("authorization").is_some()));
    }
}
