//! Pull limits against a hostile registry (issue 14, finding 6 and the token
//! part of finding 7): a blob declared over `pull.max_blob_bytes` or over the
//! free space is refused before a byte is fetched; a registry that sends more
//! than a descriptor declares is cut off; a cancelled pull, or one that failed
//! for good, leaves no partial download; a partial kept for a retry goes after
//! `gc.partial_ingest_keep_secs`; a token endpoint that streams forever gets an
//! error of its own.
//!
//! The registry here is scripted per test: one image whose single layer is
//! whatever the test declares, served as the test says.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use integration::cri::api;
use integration::daemon::{tail, Daemon};
use integration::util::wait_for;
use serde_json::json;

const TIB: u64 = 1 << 40;

/// How the layer blob (or the token endpoint) misbehaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layer {
    /// Zeros without end, under a Content-Length of 1 TiB (a lie).
    Endless,
    /// Zeros at about 2.5 MiB/s, with ranges, up to the declared size.
    Trickle,
    /// 16 bytes every 200 ms (80 B/s), with ranges: always inside the
    /// no-progress timeout, far below any useful rate.
    Drip,
    /// Half the declared size, then nothing until the server is dropped.
    HalfThenStall { ranges: bool },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Token {
    /// No auth.
    None,
    /// A bearer challenge whose token endpoint streams zeros forever (chunked).
    Endless,
    /// A bearer challenge whose token endpoint sends one byte per 100 ms.
    Trickle,
}

struct Shared {
    addr: String,
    layer: Layer,
    token: Token,
    layer_digest: String,
    layer_size: u64,
    config_digest: String,
    config: Vec<u8>,
    manifest: Vec<u8>,
    requests: Mutex<Vec<String>>,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

/// A one-image registry on a loopback port; stops (releasing every stalled
/// transfer) on drop.
struct Hostile {
    shared: Arc<Shared>,
}

fn sha256(data: &[u8]) -> String {
    integration::util::sha256_digest(data)
}

impl Hostile {
    fn start(layer_size: u64, layer: Layer, token: Token) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        // Its digest does not matter: no test gets as far as verifying it.
        let layer_digest = sha256(format!("layer of {layer_size} bytes, {layer:?}").as_bytes());
        let config = serde_json::to_vec(&json!({
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(b"diff")]},
            "config": {},
        }))?;
        let config_digest = sha256(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": layer_size,
            }],
        }))?;
        let shared = Arc::new(Shared {
            addr,
            layer,
            token,
            layer_digest,
            layer_size,
            config_digest,
            config,
            manifest,
            requests: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if let Ok(c) = conn.try_clone() {
                    s.conns.lock().unwrap_or_else(|e| e.into_inner()).push(c);
                }
                let s = s.clone();
                std::thread::spawn(move || {
                    // The clone kept for the drop holds the socket open: close
                    // it for real, or a client waits for more.
                    let closer = conn.try_clone();
                    let _ = serve(conn, &s);
                    if let Ok(c) = closer {
                        let _ = c.shutdown(Shutdown::Both);
                    }
                });
            }
        });
        Ok(Hostile { shared })
    }

    fn reference(&self) -> String {
        format!("{}/hostile/img:1", self.shared.addr)
    }

    fn layer_digest(&self) -> &str {
        &self.shared.layer_digest
    }

    fn layer_gets(&self) -> usize {
        let needle = format!("/blobs/{}", self.shared.layer_digest);
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.contains(&needle))
            .count()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for c in self
            .shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
        let _ = TcpStream::connect(&self.shared.addr);
    }
}

fn head(w: &mut TcpStream, status: &str, headers: &[(&str, String)]) -> std::io::Result<()> {
    let mut s = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    w.write_all(s.as_bytes())
}

fn respond(w: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    head(
        w,
        status,
        &[
            ("Content-Type", ctype.to_string()),
            ("Content-Length", body.len().to_string()),
        ],
    )?;
    w.write_all(body)
}

/// Writes zeros until `limit` bytes, the client leaves or the server stops,
/// sleeping `pause` between 64 KiB chunks; `chunked` frames them as HTTP chunks.
fn zeros(w: &mut TcpStream, s: &Shared, limit: u64, pause: Duration, chunked: bool) {
    let chunk = vec![0u8; 64 << 10];
    let mut sent = 0u64;
    while sent < limit && !s.stop.load(Ordering::SeqCst) {
        let n = chunk.len().min((limit - sent) as usize);
        let res = if chunked {
            w.write_all(format!("{n:x}\r\n").as_bytes())
                .and_then(|_| w.write_all(&chunk[..n]))
                .and_then(|_| w.write_all(b"\r\n"))
        } else {
            w.write_all(&chunk[..n])
        };
        if res.is_err() {
            return;
        }
        sent += n as u64;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

/// A 200 for a blob of `len` bytes from a registry that serves ranges.
fn blob_head(w: &mut TcpStream, len: u64) -> std::io::Result<()> {
    head(
        w,
        "200 OK",
        &[
            ("Content-Type", "application/octet-stream".into()),
            ("Content-Length", len.to_string()),
            ("Accept-Ranges", "bytes".into()),
        ],
    )
}

fn stall(s: &Shared) {
    while !s.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve(conn: TcpStream, s: &Shared) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    // A TLS ClientHello (berthd tries https first): close, it falls back to http.
    if !r.fill_buf()?.first().is_some_and(u8::is_ascii_uppercase) {
        return Ok(());
    }
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut auth = false;
    let mut range = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        auth |= lower.starts_with("authorization: bearer");
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            range = v.trim().trim_end_matches('-').parse::<u64>().ok();
        }
    }
    s.requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(line.trim().to_string());

    if path.starts_with("/token") {
        head(
            &mut w,
            "200 OK",
            &[
                ("Content-Type", "application/json".into()),
                ("Transfer-Encoding", "chunked".into()),
            ],
        )?;
        match s.token {
            Token::Trickle => {
                while !s.stop.load(Ordering::SeqCst) {
                    w.write_all(b"1\r\n \r\n")?;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            _ => zeros(&mut w, s, u64::MAX, Duration::ZERO, true),
        }
        return Ok(());
    }
    if s.token != Token::None && !auth && path != "/v2/" {
        let challenge = format!(
            "Bearer realm=\"http://{}/token\",service=\"hostile\"",
            s.addr
        );
        head(
            &mut w,
            "401 Unauthorized",
            &[
                ("WWW-Authenticate", challenge),
                ("Content-Length", "0".into()),
            ],
        )?;
        return Ok(());
    }
    if path == "/v2/" {
        return respond(&mut w, "200 OK", "application/json", b"{}");
    }
    if path.contains("/manifests/") {
        return respond(
            &mut w,
            "200 OK",
            "application/vnd.oci.image.manifest.v1+json",
            &s.manifest,
        );
    }
    if path.ends_with(&s.config_digest) {
        return respond(&mut w, "200 OK", "application/octet-stream", &s.config);
    }
    if !path.ends_with(&s.layer_digest) {
        return respond(&mut w, "404 Not Found", "application/json", b"{}");
    }
    let size = s.layer_size;
    match s.layer {
        Layer::Endless => {
            blob_head(&mut w, TIB)?;
            zeros(&mut w, s, u64::MAX, Duration::ZERO, false);
        }
        Layer::Trickle => {
            blob_head(&mut w, size)?;
            zeros(&mut w, s, size, Duration::from_millis(25), false);
        }
        Layer::Drip => {
            blob_head(&mut w, size)?;
            while !s.stop.load(Ordering::SeqCst) {
                w.write_all(&[0u8; 16])?;
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Layer::HalfThenStall { ranges } => {
            let start = if ranges { range.unwrap_or(0) } else { 0 };
            let mut headers = vec![
                ("Content-Type", "application/octet-stream".to_string()),
                ("Content-Length", (size - start).to_string()),
            ];
            let status = if ranges && start > 0 {
                headers.push((
                    "Content-Range",
                    format!("bytes {start}-{}/{size}", size - 1),
                ));
                "206 Partial Content"
            } else {
                "200 OK"
            };
            if ranges {
                headers.push(("Accept-Ranges", "bytes".into()));
            }
            head(&mut w, status, &headers)?;
            zeros(&mut w, s, (size - start) / 2, Duration::ZERO, false);
            w.flush()?;
            stall(s);
        }
    }
    Ok(())
}

/// A CRI PullImage; `deadline` is the client's own (a cancel when it passes).
fn cri_pull(d: &Daemon, image: &str, deadline: Duration) -> Result<Result<String, tonic::Status>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut c = integration::cri::image_client(d).await?;
        let mut req = tonic::Request::new(api::PullImageRequest {
            image: Some(api::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        });
        req.set_timeout(deadline);
        Ok(
            match tokio::time::timeout(deadline + Duration::from_secs(5), c.pull_image(req)).await {
                Ok(res) => res.map(|r| r.into_inner().image_ref),
                Err(_) => Err(tonic::Status::deadline_exceeded("client-side timeout")),
            },
        )
    })
}

/// The ingest directories under berthd's content store: (ref, data bytes).
fn ingests(root: &Path) -> Vec<(String, u64)> {
    let dir = root.join("content/ingest");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    let r = std::fs::read_to_string(p.join("ref")).unwrap_or_default();
                    let len = std::fs::metadata(p.join("data")).map_or(0, |m| m.len());
                    (r, len)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn layer_ingest(root: &Path, digest: &str) -> Option<u64> {
    ingests(root)
        .into_iter()
        .find(|(r, _)| r.ends_with(digest))
        .map(|(_, len)| len)
}

/// Fails a pull that should have failed, with its status.
fn pull_fails(d: &Daemon, reg: &Hostile, deadline: Duration) -> Result<tonic::Status> {
    match cri_pull(d, &reg.reference(), deadline)? {
        Ok(r) => anyhow::bail!("the pull succeeded: {r}"),
        Err(s) => Ok(s),
    }
}

#[test]
fn a_blob_over_max_blob_bytes_is_refused_before_a_byte_is_fetched() -> Result<()> {
    // The default limit (64 GiB) against the finding's 1 TB blob.
    let d = Daemon::start()?;
    let reg = Hostile::start(TIB, Layer::Endless, Token::None)?;
    let st = pull_fails(&d, &reg, Duration::from_secs(60))?;
    ensure!(st.code() == tonic::Code::ResourceExhausted, "{st:?}");
    let msg = st.message();
    ensure!(
        msg.contains(reg.layer_digest())
            && msg.contains(&TIB.to_string())
            && msg.contains("pull.max_blob_bytes")
            && msg.contains(&(64u64 << 30).to_string()),
        "the error names the blob, its size and the limit: {msg}"
    );
    ensure!(reg.layer_gets() == 0, "the layer was requested");
    ensure!(
        layer_ingest(&d.root(), reg.layer_digest()).is_none(),
        "{:?}",
        ingests(&d.root())
    );

    // A configured limit.
    let d = Daemon::start_with_config("[pull]\nmax_blob_bytes = 1048576\n")?;
    let reg = Hostile::start(2 << 20, Layer::Endless, Token::None)?;
    let st = pull_fails(&d, &reg, Duration::from_secs(60))?;
    ensure!(st.code() == tonic::Code::ResourceExhausted, "{st:?}");
    ensure!(st.message().contains("(1048576)"), "{}", st.message());
    ensure!(reg.layer_gets() == 0, "the layer was requested");
    ensure!(layer_ingest(&d.root(), reg.layer_digest()).is_none());
    Ok(())
}

/// A config (or manifest) whose descriptor declares more than its bound is
/// refused before it is fetched, with ResourceExhausted like every limit.
#[test]
fn a_config_declared_over_max_config_bytes_is_resource_exhausted() -> Result<()> {
    let d = Daemon::start_with_config("[pull]\nmax_config_bytes = 16\n")?;
    let reg = Hostile::start(1 << 20, Layer::Endless, Token::None)?;
    let st = pull_fails(&d, &reg, Duration::from_secs(60))?;
    ensure!(st.code() == tonic::Code::ResourceExhausted, "{st:?}");
    ensure!(
        st.message().contains("pull.max_config_bytes"),
        "the error names the limit: {}",
        st.message()
    );
    ensure!(reg.layer_gets() == 0, "the layer was requested");
    Ok(())
}

#[test]
fn a_blob_larger_than_the_free_space_is_refused_before_a_byte_is_fetched() -> Result<()> {
    let mut d = Daemon::start()?;
    d.stop()?;
    let root: PathBuf = d.root();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "berth-pull-limits"])
        .arg(&root)
        .output()?;
    ensure!(out.status.success(), "mount tmpfs: {out:?}");
    let result = (|| {
        d.restart()?;
        // Under the blob limit, over the 64 MiB filesystem.
        let reg = Hostile::start(512 << 20, Layer::Trickle, Token::None)?;
        let st = pull_fails(&d, &reg, Duration::from_secs(60))?;
        ensure!(st.code() == tonic::Code::ResourceExhausted, "{st:?}");
        let msg = st.message();
        ensure!(
            msg.contains(reg.layer_digest())
                && msg.contains(&(512u64 << 20).to_string())
                && msg.contains("free"),
            "the error names the blob, the need and what is free: {msg}"
        );
        ensure!(reg.layer_gets() == 0, "the layer was requested");
        ensure!(
            layer_ingest(&root, reg.layer_digest()).is_none(),
            "{:?}",
            ingests(&root)
        );
        Ok(())
    })();
    let _ = d.stop();
    let _ = Command::new("umount").arg("-l").arg(&root).status();
    result
}

#[test]
fn a_registry_sending_more_than_declared_is_cut_off_and_its_ingest_removed() -> Result<()> {
    let d = Daemon::start()?;
    // Declared 1 MiB; Content-Length says 1 TiB; the bytes never end.
    let declared = 1u64 << 20;
    let reg = Hostile::start(declared, Layer::Endless, Token::None)?;
    let st = pull_fails(&d, &reg, Duration::from_secs(60))?;
    ensure!(st.code() == tonic::Code::DataLoss, "{st:?}");
    ensure!(
        st.message().contains(reg.layer_digest())
            && st
                .message()
                .contains(&format!("more than the {declared} bytes")),
        "{}",
        st.message()
    );
    // Not retried: more bytes than declared will not get better.
    ensure!(reg.layer_gets() == 1, "{} GETs", reg.layer_gets());
    let root = d.root();
    wait_for("the ingest to go", Duration::from_secs(10), || {
        Ok(layer_ingest(&root, reg.layer_digest())
            .is_none()
            .then_some(()))
    })
    .with_context(|| format!("{:?}", ingests(&root)))?;
    Ok(())
}

#[test]
fn a_cancelled_pull_leaves_no_partial_download() -> Result<()> {
    let d = Daemon::start()?;
    // 256 MiB at ~2.5 MiB/s from a registry that serves ranges: the client
    // gives up long before the end.
    let reg = Hostile::start(256 << 20, Layer::Trickle, Token::None)?;
    let root = d.root();
    let digest = reg.layer_digest().to_string();
    let t0 = Instant::now();
    let st = pull_fails(&d, &reg, Duration::from_secs(4))?;
    ensure!(
        matches!(
            st.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{st:?}"
    );
    ensure!(
        reg.layer_gets() >= 1,
        "the layer was never requested: {st:?}\n{}",
        tail(&d.log(), 40)
    );
    let log = d.log();
    wait_for(
        "the daemon to cancel the pull",
        Duration::from_secs(10),
        || Ok(d.log().contains("pull cancelled").then_some(())),
    )
    .with_context(|| tail(&log, 30))?;
    wait_for(
        "the partial download to be removed",
        Duration::from_secs(10),
        || Ok(layer_ingest(&root, &digest).is_none().then_some(())),
    )
    .with_context(|| format!("{:?} after {:?}", ingests(&root), t0.elapsed()))?;
    d.ctl_ok(["version"])?;
    Ok(())
}

#[test]
fn a_failed_pull_keeps_a_resumable_partial_only_for_the_keep_window() -> Result<()> {
    let d = Daemon::start_with_config(
        "[pull]\nno_progress_timeout_secs = 1\nconnect_timeout_secs = 2\n\
         [gc]\npartial_ingest_keep_secs = 4\n",
    )?;
    let root = d.root();

    // A registry that serves ranges: the stall may pass, the partial is kept...
    let reg = Hostile::start(4 << 20, Layer::HalfThenStall { ranges: true }, Token::None)?;
    let st = pull_fails(&d, &reg, Duration::from_secs(60))?;
    ensure!(st.code() == tonic::Code::DeadlineExceeded, "{st:?}");
    let kept = layer_ingest(&root, reg.layer_digest());
    ensure!(
        kept.is_some_and(|n| n > 0),
        "no partial kept for a retry: {:?}",
        ingests(&root)
    );
    // ...and swept once no retry came within gc.partial_ingest_keep_secs
    // (the sweep logs each one just after removing it).
    let t0 = Instant::now();
    wait_for(
        "the kept partial to be swept and the sweep logged",
        Duration::from_secs(20),
        || {
            let gone = layer_ingest(&root, reg.layer_digest()).is_none();
            let logged = d
                .log()
                .contains("removed a partial download no retry came for");
            Ok((gone && logged).then_some(()))
        },
    )
    .with_context(|| format!("{:?}\n{}", ingests(&root), tail(&d.log(), 20)))?;
    ensure!(
        t0.elapsed() >= Duration::from_secs(1),
        "swept before the keep window"
    );
    drop(reg);

    // A registry without ranges: nothing to resume, removed with the failure.
    let reg = Hostile::start(4 << 20, Layer::HalfThenStall { ranges: false }, Token::None)?;
    let st = pull_fails(&d, &reg, Duration::from_secs(60))?;
    ensure!(st.code() == tonic::Code::DeadlineExceeded, "{st:?}");
    ensure!(
        layer_ingest(&root, reg.layer_digest()).is_none(),
        "a partial nobody can resume was kept: {:?}",
        ingests(&root)
    );
    Ok(())
}

#[test]
fn a_layer_that_drips_fails_on_the_minimum_rate() -> Result<()> {
    // Each 16 bytes come well inside the 3 s no-progress timeout; at 80 B/s
    // the 1 MiB layer would take 3.6 hours.
    let d = Daemon::start_with_config("[pull]\nno_progress_timeout_secs = 3\n")?;
    let reg = Hostile::start(1 << 20, Layer::Drip, Token::None)?;
    let t0 = Instant::now();
    let st = pull_fails(&d, &reg, Duration::from_secs(120))?;
    ensure!(st.code() == tonic::Code::DeadlineExceeded, "{st:?}");
    let msg = st.message();
    ensure!(
        msg.contains(reg.layer_digest())
            && msg.contains("slower than the minimum of 4096 bytes/s")
            && msg.contains("min_transfer_rate"),
        "the error names the blob, the rate and the key: {msg}"
    );
    ensure!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
    Ok(())
}

#[test]
fn a_token_endpoint_that_streams_forever_gets_its_own_error() -> Result<()> {
    let d = Daemon::start_with_config("[pull]\nno_progress_timeout_secs = 3\n")?;
    let reg = Hostile::start(1 << 20, Layer::Endless, Token::Endless)?;
    let realm = format!("http://{}/token", reg.shared.addr);
    let st = pull_fails(&d, &reg, Duration::from_secs(60))?;
    ensure!(st.code() == tonic::Code::ResourceExhausted, "{st:?}");
    let msg = st.message();
    ensure!(
        msg.contains(&format!("token response from \"{realm}\""))
            && msg.contains("larger than the limit")
            && !msg.contains("manifest"),
        "{msg}"
    );

    // One that trickles a byte at a time never reaches the bound: the read as
    // a whole is bounded in time.
    let reg = Hostile::start(1 << 20, Layer::Endless, Token::Trickle)?;
    let t0 = Instant::now();
    let st = pull_fails(&d, &reg, Duration::from_secs(60))?;
    ensure!(st.code() == tonic::Code::DeadlineExceeded, "{st:?}");
    ensure!(
        st.message().contains("token from") && t0.elapsed() < Duration::from_secs(30),
        "{} after {:?}",
        st.message(),
        t0.elapsed()
    );
    Ok(())
}
