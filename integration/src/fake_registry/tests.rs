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
