//! Small helpers shared by the harnesses: digests, ports, polling, base64 and a
//! tiny blocking HTTP/1.1 client (enough to talk to a registry without extra deps).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The hex part of a `sha256:<hex>` digest (the input if it has no prefix).
pub fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, then release).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Polls `f` every few milliseconds until it returns `Ok(Some(v))`, an error, or the
/// deadline passes (then an error naming `what`). No fixed sleeps: the interval grows
/// from 5 ms to 100 ms.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(5);
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}

/// Standard base64 (with padding), for `Authorization: Basic`.
pub fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Standard base64 decoding (padding optional); `None` on invalid input.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    use base64::Engine;
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(&base64::alphabet::STANDARD, config)
        .decode(s)
        .ok()
}

/// `Authorization` header value for HTTP basic auth.
pub fn basic_auth(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{user}:{pass}").as_bytes())
    )
}

/// The Accept list a registry client must send to get any manifest kind back
/// (docker-registry 2.8 answers 404 for an OCI manifest without a matching Accept and
/// down-converts schema2 to schema1 when only schema1 is accepted).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased, in order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("response body is not JSON")
    }
}

/// One blocking HTTP/1.1 request with `Connection: close` to `addr` ("host:port").
/// `path` is the request target ("/v2/", "/v2/x/blobs/uploads/?digest=..").
/// Reads the whole response (Content-Length, chunked or until EOF; no body for HEAD).
pub fn http_request(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(&request_head(method, addr, path, headers, body))?;
    stream.write_all(body)?;
    stream.flush()?;
    read_response(method, path, BufReader::new(stream))
}

/// Like [`http_request`], but over TLS through `openssl s_client`, verifying the
/// server's chain against `ca_file` and its name (or IP SAN) against `addr`'s host.
/// A verification failure is an error carrying openssl's reason.
pub fn https_request(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    ca_file: &Path,
) -> Result<HttpResponse> {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let verify_name = if host.parse::<std::net::IpAddr>().is_ok() {
        "-verify_ip"
    } else {
        "-verify_hostname"
    };
    // -quiet: only the server's bytes on stdout, and stdin EOF does not end the
    // session (the server closes it after the response: `Connection: close`).
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-connect",
            addr,
        ])
        .arg("-CAfile")
        .arg(ca_file)
        .args([verify_name, host])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn openssl s_client")?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("openssl s_client without stdin"))?;
    let mut request = request_head(method, addr, path, headers, body);
    request.extend_from_slice(body);
    // Written from a thread so a server answering early cannot deadlock us; a write
    // error then shows up as a failed or short response.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&request);
    });
    let out = child
        .wait_with_output()
        .context("wait for openssl s_client")?;
    let _ = writer.join();
    if !out.status.success() && out.stdout.is_empty() {
        bail!(
            "{method} https://{addr}{path}: openssl s_client failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    read_response(method, path, BufReader::new(&out.stdout[..]))
}

/// Request line and headers (with a Content-Length when there is a body or the
/// method usually has one), ending in the blank line.
fn request_head(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let mut has_len = false;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("content-length") {
            has_len = true;
        }
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len && (!body.is_empty() || matches!(method, "PUT" | "POST" | "PATCH")) {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Parses one HTTP/1.1 response from `r`.
fn read_response(method: &str, path: &str, mut r: impl BufRead) -> Result<HttpResponse> {
    let mut line = String::new();
    r.read_line(&mut line)
        .with_context(|| format!("{method} {path}: reading status line"))?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: bad status line {line:?}"))?;
    let mut resp_headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("{method} {path}: connection closed in headers");
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            resp_headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut resp = HttpResponse {
        status,
        headers: resp_headers,
        body: Vec::new(),
    };
    if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size_str = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_str, 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            if size == 0 {
                // trailers until empty line
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = resp.body.len();
            resp.body.resize(start + size, 0);
            r.read_exact(&mut resp.body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().context("bad Content-Length")?;
        resp.body.resize(len, 0);
        r.read_exact(&mut resp.body)
            .with_context(|| format!("{method} {path}: short body (wanted {len})"))?;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// GET with the given headers.
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
    http_request("GET", addr, path, headers, &[])
}

/// Writes `data` to `path` (creating parent directories).
pub fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("mkdir {}", p.display()))?;
    }
    std::fs::write(path, data).with_context(|| format!("write {}", path.display()))
}

/// Unmounts (lazily) every mount point at or below `dir`, deepest first. Used before
/// removing a temp dir that a daemon may have mounted overlays or namespaces under, so
/// that removing the dir never walks into a mount.
pub fn unmount_below(dir: &Path) -> Result<()> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| Path::new(p).starts_with(&dir))
        .collect();
    // Deepest first; duplicates (stacked mounts) each need one umount.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let c = std::ffi::CString::new(p.as_bytes())?;
        // SAFETY: c is a valid NUL-terminated path.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
    Ok(())
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Spawns `cmd`, retrying briefly on ETXTBSY: an executable written just
/// before (the tests' stand-in scripts) can still be open for writing in a
/// child another thread forked and has not yet exec'd.
pub fn spawn(cmd: &mut Command) -> Result<std::process::Child> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            res => return res.with_context(|| format!("spawn {cmd:?}")),
        }
    }
}

/// A tool run's stdout, or an error carrying its arguments, status, output
/// and the tail of the log of the service it talked to (`service`).
pub fn stdout_if_ok(
    tool: &str,
    args: &[std::ffi::OsString],
    out: std::process::Output,
    log_tail: impl FnOnce() -> String,
    service: &str,
) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{tool} {args:?} failed ({}):\nstdout: {}\nstderr: {}\n{service} log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log_tail()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit status
/// (`None` if it had to be killed).
pub fn stop_child(
    mut child: std::process::Child,
    timeout: Duration,
) -> Result<Option<std::process::ExitStatus>> {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()?;
    Ok(None)
}

/// PIDs of processes (other than us) whose command line or cwd refers to `dir`.
pub fn processes_using(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        if cmdline.contains(&needle) || cwd.starts_with(dir) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills every process still using `dir` (shims, daemons a test left) and
/// lazily unmounts everything below it, so that removing it is safe.
pub fn sweep_dir(dir: &Path) {
    for pid in processes_using(dir) {
        // SAFETY: plain kill(2) of a pid; a pid that is gone just fails.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let _ = unmount_below(dir);
}

/// Blob digests (`sha256:<hex>`) in a berthd root's content store, sorted.
pub fn blob_files(root: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("content/blobs/sha256"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar", "user:pa$$"] {
            let e = base64_encode(s.as_bytes());
            assert_eq!(base64_decode(&e).unwrap(), s.as_bytes());
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn unmount_below_removes_nested_mounts() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = a.join("b");
        std::fs::create_dir_all(&a).unwrap();
        let mount = |p: &Path| {
            let st = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs"])
                .arg(p)
                .status()
                .unwrap();
            assert!(st.success());
        };
        mount(&a);
        std::fs::create_dir_all(&b).unwrap();
        mount(&b);
        let count = || {
            let canon = std::fs::canonicalize(d.path()).unwrap();
            let s = canon.to_string_lossy().into_owned();
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .matches(&s)
                .count()
        };
        assert_eq!(count(), 2);
        unmount_below(d.path()).unwrap();
        assert_eq!(count(), 0);
    }
}
