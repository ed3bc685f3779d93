//! Valid examples for every target, built here at run time (see
//! [`crate::seeds_init`]). Each target's input format is described in its
//! own file; the seeds follow it.

use std::io::Write;

use berth_api::runtime::v1 as cri;
use berth_streaming::spdy::frame::{Encoder, Frame};
use bytes::BytesMut;
use prost::Message;
use tar::{EntryType, Header};

// ---------------------------------------------------------------- layer tars

/// Mode byte of `layer_apply`: bit 0 overlay whiteouts, bits 1-2
/// compression (0 plain, 1 gzip as given, 2 plain that the harness gzips,
/// 3 zstd as given), bit 3 preserve ownership, bit 4 allow devices.
pub const LAYER_OVERLAY: u8 = 1;
pub const LAYER_GZIP_RAW: u8 = 1 << 1;
pub const LAYER_GZIP_WRAP: u8 = 2 << 1;
pub const LAYER_ZSTD_RAW: u8 = 3 << 1;
pub const LAYER_OWNERS: u8 = 1 << 3;
pub const LAYER_DEVICES: u8 = 1 << 4;

struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    /// An entry with a raw (unchecked) name, so `..` and absolute names can
    /// be written, as an attacker would.
    fn raw(&mut self, name: &[u8], kind: EntryType, data: &[u8], f: impl FnOnce(&mut Header)) {
        let mut h = Header::new_gnu();
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_600_000_000);
        f(&mut h);
        h.set_cksum();
        self.0.append(&h, data).expect("tar append");
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Directory, b"", |_| {});
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Regular, data, |_| {});
        self
    }

    fn link(&mut self, name: &str, kind: EntryType, target: &str) -> &mut Self {
        self.raw(name.as_bytes(), kind, b"", |h| {
            h.set_link_name_literal(target.as_bytes())
                .expect("link name");
        });
        self
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            // "<len> <key>=<value>\n", len counting itself.
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        self.raw(b"././@PaxHeader", EntryType::XHeader, &body, |_| {});
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().expect("tar finish")
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn with_mode(mode: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(body);
    v
}

pub fn layer_apply() -> Vec<Vec<u8>> {
    let mut tars = Vec::new();

    // An ordinary layer: dirs, files, symlinks, a hardlink, a fifo.
    let mut t = Tar::new();
    t.dir("./")
        .dir("etc/")
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        .dir("bin/")
        .file("bin/busybox", b"\x7fELF fake")
        .link("bin/sh", EntryType::Symlink, "busybox")
        .link("bin/ls", EntryType::Link, "bin/busybox")
        .link("etc/mtab", EntryType::Symlink, "/proc/self/mounts")
        .link("lib64", EntryType::Symlink, "/lib");
    t.raw(b"run/fifo", EntryType::Fifo, b"", |_| {});
    tars.push(t.finish());

    // Whiteouts and an opaque directory over what the first layer made.
    let mut t = Tar::new();
    t.dir("etc/")
        .file("etc/.wh.passwd", b"")
        .dir("bin/")
        .file("bin/.wh..wh..opq", b"")
        .file("bin/new", b"new")
        .file(".wh.lib64", b"")
        .file("etc/.wh..wh.plnk", b"");
    tars.push(t.finish());

    // xattrs, a long name, modes, a device node.
    let mut t = Tar::new();
    t.pax(&[
        ("SCHILY.xattr.user.test", b"v"),
        ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02"),
        ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
    ]);
    t.file("xattr-file", b"x");
    let long = format!("{}/{}", "d".repeat(80), "f".repeat(80));
    t.pax(&[("path", long.as_bytes()), ("mtime", b"1600000000.5")]);
    t.file("placeholder", b"long");
    t.raw(b"suid", EntryType::Regular, b"#!/bin/sh\n", |h| {
        h.set_mode(0o4755)
    });
    t.raw(b"dev/null", EntryType::Char, b"", |h| {
        h.set_device_major(1).expect("major");
        h.set_device_minor(3).expect("minor");
    });
    tars.push(t.finish());

    // Escape attempts: each must stay inside the root.
    let mut t = Tar::new();
    t.file("../escape", b"out")
        .file("/abs/escape", b"out")
        .link("up", EntryType::Symlink, "../../..")
        .file("up/escape-through-symlink", b"out")
        .link("abs", EntryType::Symlink, "/")
        .file("abs/tmp/escape-through-abs", b"out")
        .link("hl", EntryType::Link, "../outside/canary")
        .link("hl2", EntryType::Link, "up/outside/canary")
        .link("loop", EntryType::Symlink, "loop")
        .file("loop/x", b"out")
        .link("dot", EntryType::Symlink, ".")
        .file("dot/dot/dot/inside", b"in");
    tars.push(t.finish());

    // A directory replaced by a file and back, a file replaced by a symlink.
    let mut t = Tar::new();
    t.dir("a/")
        .file("a/b", b"1")
        .file("a", b"now a file")
        .dir("a/")
        .file("c", b"c")
        .link("c", EntryType::Symlink, "/etc/shadow")
        .file(".wh.a", b"");
    tars.push(t.finish());

    let mut out = Vec::new();
    for t in &tars {
        out.push(with_mode(LAYER_OWNERS, t));
        out.push(with_mode(LAYER_OVERLAY | LAYER_OWNERS | LAYER_DEVICES, t));
        out.push(with_mode(LAYER_GZIP_RAW, &gzip(t)));
        out.push(with_mode(LAYER_GZIP_WRAP | LAYER_OVERLAY, t));
    }
    out.push(with_mode(
        LAYER_ZSTD_RAW,
        &zstd::encode_all(&tars[0][..], 1).expect("zstd"),
    ));
    out
}

// ----------------------------------------------------------- image documents

const D1: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";
const D2: &str = "sha256:2b2b2a0c4d29b0a6e9b2f8d1e8a7c6b5a4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9";
const D3: &str = "sha256:9d4a2f2c5c1b7e0f8e6d4c2b0a9f7e5d3c1b9a8f6e4d2c0b8a6f4e2d0c9b7a5f";

/// `image_json`'s first byte picks the wanted platform (and, for import,
/// the archive's base name); the rest is one JSON document.
pub fn image_json() -> Vec<Vec<u8>> {
    let docs = [
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D1}","size":525,"platform":{{"architecture":"amd64","os":"linux"}}}},
{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D2}","size":525,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D3}","size":566,"platform":{{"architecture":"unknown","os":"unknown"}},"annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}]}}"#
        ),
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{D1}","size":528,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}},
{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{D2}","size":528,"platform":{{"architecture":"amd64","os":"linux","os.version":"10.0"}}}}]}}"#
        ),
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":1470}},
"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":2065537}},
{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{D3}","size":100,"urls":["https://example.com/l"]}}]}}"#
        ),
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{D1}","size":1470}},
"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{D2}","size":1}},{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{D3}","size":2}}]}}"#
        ),
        // No mediaType: sniffed from the shape.
        format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[]}}"#
        ),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D1}","size":2,
"annotations":{{"io.containerd.image.name":"docker.io/library/busybox:1.36","org.opencontainers.image.ref.name":"1.36"}}}},
{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D2}","size":2,"annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}]}}"#
        ),
        format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"User":"1000:1000","Env":["PATH=/bin","A=b=c"],"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"WorkingDir":"/w","StopSignal":"SIGRTMIN+3"}},
"rootfs":{{"type":"layers","diff_ids":["{D1}","{D2}"]}},"history":[{{"created_by":"x"}}]}}"#
        ),
        r#"{"architecture":"arm64","variant":"v8","os":"linux","config":{"User":"nobody"},"rootfs":{"type":"layers","diff_ids":[]}}"#.to_string(),
        r#"[{"Config":"blobs/sha256/aa","RepoTags":["busybox:latest","x/y:1"],"Layers":["blobs/sha256/bb"]}]"#.to_string(),
    ];
    let mut out = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        out.push(with_mode(i as u8, d.as_bytes()));
    }
    out
}

// ---------------------------------------------------------------- references

pub fn reference() -> Vec<Vec<u8>> {
    [
        "busybox",
        "busybox:1.36",
        "library/busybox:latest",
        "docker.io/library/busybox",
        "index.docker.io/x",
        "user/img:v1.2-rc_3",
        "localhost/foo",
        "localhost:5000/a/b:c",
        "127.0.0.1:5000/x@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
        "[::1]:5000/a/b__c/d---e.f_g:V1",
        "quay.io/a/b:t@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
        "ghcr.io/o/r@sha512:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
        "Foo/bar",
        "foo_bar.com/x",
        "a.b-c.d:1234/p",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

// ---------------------------------------------------------------- hosts.toml

/// `hosts_toml`: the registry name, a newline, then the file.
pub fn hosts_toml() -> Vec<Vec<u8>> {
    let files = [
        r#"server = "https://registry-1.docker.io"

[host."https://public-mirror.example.com"]
  capabilities = ["pull"]
[host."https://docker-mirror.internal"]
  capabilities = ["pull", "resolve"]
  ca = "docker-mirror.crt"
"#,
        r#"server = "https://test-default.registry"
ca = "/etc/path/default"
[header]
  x-custom-1 = "custom header"

[host."https://mirror.registry"]
  capabilities = ["pull"]
  ca = "/etc/certs/mirror.pem"
  skip_verify = false
  [host."https://mirror.registry".header]
    x-custom-2 = ["value1", "value2"]

[host."https://test-1.registry"]
  capabilities = ["pull", "resolve", "push", "referrers"]
  ca = ["/etc/certs/test-1-ca.pem", "/etc/certs/special.pem"]
  client = [["/etc/certs/client.cert", "/etc/certs/client.key"],["/etc/certs/client.pem", ""]]

[host."https://noncompliantmirror.registry/v2/namespaceprefix"]
  capabilities = ["pull"]
  override_path = true

[host."https://dial-timeout.registry"]
  dial_timeout = "3s"
"#,
        r#"[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
"#,
        "server = \"http://plain:5000\"\n[host.\"https://x:443/v2/\"]\nclient = \"c.pem\"\n",
    ];
    let registries = [
        "docker.io",
        "127.0.0.1:5000",
        "[::1]:5000",
        "registry.example.com",
    ];
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        out.push(format!("{}\n{f}", registries[i % registries.len()]).into_bytes());
    }
    out
}

// ------------------------------------------------------------------- CRI log

/// `cri_log`: first byte even = a log file to read back (incrementally);
/// odd = a round trip through the shim's writer, the rest being ops
/// `[op, len, bytes...]` (op & 3: 0 stdout write, 1 stderr write, 2 flush
/// stdout's partial line, 3 flush stderr's), the line limit from the first
/// byte.
pub fn cri_log() -> Vec<Vec<u8>> {
    use crate::crilog::{format_record, Stream, Tag};
    use std::time::{Duration, UNIX_EPOCH};
    let t = UNIX_EPOCH + Duration::new(1_704_067_200, 123_456_789);
    let mut file = Vec::new();
    for (s, tag, c) in [
        (Stream::Stdout, Tag::Full, &b"hello world"[..]),
        (Stream::Stderr, Tag::Partial, b"part"),
        (Stream::Stderr, Tag::Full, b"ial"),
        (Stream::Stdout, Tag::Full, b""),
        (Stream::Stdout, Tag::Partial, b"no newline yet"),
    ] {
        file.extend_from_slice(&format_record(s, tag, c, t));
    }
    let mut out = vec![with_mode(0, &file)];
    out.push(with_mode(
        2,
        b"junk line\n2024 stdout F:x tagged\nT stderr P\ntrailing",
    ));
    let ops: Vec<u8> = [
        (0u8, &b"line one\nline "[..]),
        (1, b"err\r\n"),
        (0, b"two\n"),
        (2, b""),
        (0, b"prompt> "),
        (2, b""),
        (1, b"tail without newline"),
    ]
    .iter()
    .flat_map(|(op, d)| {
        let mut v = vec![*op, d.len() as u8];
        v.extend_from_slice(d);
        v
    })
    .collect();
    out.push(with_mode(1, &ops));
    out.push(with_mode(7, &ops));
    out
}

// ---------------------------------------------------------------------- SPDY

fn hdrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The frames a kubectl exec client sends: one SYN_STREAM per channel
/// (compressed headers in one zlib stream), stdin data, a resize.
fn exec_client_frames(tty: bool) -> Vec<u8> {
    let mut enc = Encoder::new();
    let mut out = BytesMut::new();
    let mut frames = vec![Frame::Settings {
        flags: 0,
        entries: vec![(0, 7, 262_144)],
    }];
    let mut kinds = vec!["error", "stdin", "stdout"];
    kinds.push(if tty { "resize" } else { "stderr" });
    for (i, kind) in kinds.iter().enumerate() {
        frames.push(Frame::SynStream {
            stream_id: 1 + 2 * i as u32,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: hdrs(&[("streamtype", kind)]),
        });
    }
    frames.push(Frame::Data {
        stream_id: 3,
        flags: 0,
        data: bytes::Bytes::from_static(b"echo hi\n"),
    });
    if tty {
        frames.push(Frame::Data {
            stream_id: 7,
            flags: 0,
            data: bytes::Bytes::from_static(br#"{"Width":80,"Height":24}{"Width":1,"#),
        });
    }
    frames.push(Frame::WindowUpdate {
        stream_id: 5,
        delta: 65536,
    });
    frames.push(Frame::Ping { id: 1 });
    frames.push(Frame::Data {
        stream_id: 3,
        flags: 1,
        data: bytes::Bytes::new(),
    });
    frames.push(Frame::RstStream {
        stream_id: 5,
        status: 5,
    });
    frames.push(Frame::GoAway {
        last_good_stream_id: 0,
        status: 0,
    });
    for f in &frames {
        enc.encode(f, &mut out).expect("encode");
    }
    out.to_vec()
}

fn port_forward_client_frames() -> Vec<u8> {
    let mut enc = Encoder::new();
    let mut out = BytesMut::new();
    for (id, kind) in [(1, "error"), (3, "data")] {
        let f = Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: hdrs(&[("streamtype", kind), ("port", "80"), ("requestid", "1")]),
        };
        enc.encode(&f, &mut out).expect("encode");
    }
    enc.encode(
        &Frame::Data {
            stream_id: 3,
            flags: 1,
            data: bytes::Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
        },
        &mut out,
    )
    .expect("encode");
    out.to_vec()
}

pub fn spdy_frames() -> Vec<Vec<u8>> {
    let mut out = vec![exec_client_frames(false), exec_client_frames(true)];
    out.push(port_forward_client_frames());
    // Server-side frames too (SYN_REPLY, HEADERS), uppercase header names.
    let mut enc = Encoder::new();
    let mut b = BytesMut::new();
    for f in [
        Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: hdrs(&[("Content-Type", "x"), ("multi", "a\0b")]),
        },
        Frame::Headers {
            stream_id: 1,
            flags: 1,
            headers: Vec::new(),
        },
    ] {
        enc.encode(&f, &mut b).expect("encode");
    }
    out.push(b.to_vec());
    out
}

/// `spdy_session`: mode byte (bits 0-3 stdin/stdout/stderr/tty, bits 4-6
/// the protocol, bit 7 port-forward), then the client's bytes.
pub fn spdy_session() -> Vec<Vec<u8>> {
    vec![
        with_mode(0b0000_0111, &exec_client_frames(false)),
        with_mode(0b0000_1011, &exec_client_frames(true)),
        with_mode(0b0001_0111, &exec_client_frames(false)),
        with_mode(0b0011_0011, &exec_client_frames(false)),
        with_mode(0b1000_0000, &port_forward_client_frames()),
    ]
}

// ----------------------------------------------------------------- WebSocket

/// A masked client frame.
fn ws_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![(u8::from(fin) << 7) | opcode];
    let n = payload.len();
    if n < 126 {
        v.push(0x80 | n as u8);
    } else if n < 65536 {
        v.push(0x80 | 126);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        v.push(0x80 | 127);
        v.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

/// `ws_session`: the same mode byte as `spdy_session` (protocol from the
/// WebSocket lists), then the client's bytes.
pub fn ws_session() -> Vec<Vec<u8>> {
    let mut binary = Vec::new();
    binary.extend(ws_frame(true, 2, b"\x00echo hi\n"));
    binary.extend(ws_frame(true, 2, b"\x04{\"Width\":80,\"Height\":24}"));
    binary.extend(ws_frame(false, 2, b"\x00frag"));
    binary.extend(ws_frame(true, 0, b"mented"));
    binary.extend(ws_frame(true, 9, b"ping"));
    binary.extend(ws_frame(true, 2, b"\xff\x00"));
    binary.extend(ws_frame(true, 8, b"\x03\xe8bye"));
    let mut text = Vec::new();
    text.extend(ws_frame(true, 1, b"0ZWNobyBoaQo="));
    text.extend(ws_frame(true, 1, b"4eyJXaWR0aCI6MTAsIkhlaWdodCI6NX0="));
    text.extend(ws_frame(true, 1, b"0!!bad"));
    text.extend(ws_frame(true, 8, b""));
    let mut pf = Vec::new();
    pf.extend(ws_frame(true, 2, b"\x00GET / HTTP/1.0\r\n\r\n"));
    pf.extend(ws_frame(true, 2, b"\x02\x00\x01"));
    pf.extend(ws_frame(true, 8, b"\x03\xe8"));
    vec![
        with_mode(0b0000_0111, &binary), // v5, stdin+stdout+stderr
        with_mode(0b0000_1011, &binary), // v5, tty
        with_mode(0b0001_0111, &binary), // v4
        with_mode(0b0010_1011, &text),   // v4.base64, tty
        with_mode(0b0100_0110, &text),   // base64.channel.k8s.io
        with_mode(0b1000_0000, &pf),     // port-forward, binary
        with_mode(0b1001_0000, &text),   // port-forward, base64
    ]
}

// ------------------------------------------------------------ CRI requests

fn pod_config() -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "9f8e".into(),
            namespace: "default".into(),
            attempt: 1,
        }),
        hostname: "web-0".into(),
        log_directory: "/var/log/pods/default_web_9f8e".into(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        port_mappings: vec![cri::PortMapping {
            protocol: cri::Protocol::Udp as i32,
            container_port: 53,
            host_port: 5353,
            host_ip: "127.0.0.1".into(),
        }],
        labels: [("app".to_string(), "web".to_string())].into(),
        annotations: [("a".to_string(), "b".to_string())].into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/besteffort/pod9f8e".into(),
            sysctls: [(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            )]
            .into(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config() -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: "docker.io/library/busybox:latest".into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into()],
        args: vec!["-c".into(), "sleep 1".into()],
        working_dir: "/work".into(),
        envs: vec![cri::KeyValue {
            key: "A".into(),
            value: "1".into(),
        }],
        mounts: vec![cri::Mount {
            container_path: "/data".into(),
            host_path: "/tmp".into(),
            readonly: true,
            ..Default::default()
        }],
        devices: vec![cri::Device {
            container_path: "/dev/xnull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }],
        log_path: "app/0.log".into(),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 50_000,
                cpu_shares: 512,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: 999,
                cpuset_cpus: "0-1".into(),
                hugepage_limits: vec![cri::HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 0,
                }],
                unified: [("memory.high".to_string(), "max".to_string())].into(),
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    drop_capabilities: vec!["ALL".into()],
                    ..Default::default()
                }),
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                run_as_group: Some(cri::Int64Value { value: 1000 }),
                supplemental_groups: vec![44],
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                    ..Default::default()
                }),
                masked_paths: vec!["/proc/kcore".into()],
                readonly_paths: vec!["/proc/sys".into()],
                no_new_privs: true,
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// `cri_requests`: first byte picks the request type (0 RunPodSandbox,
/// 1 CreateContainer, 2 UpdateContainerResources, 3 Exec/Attach/
/// PortForward), the rest is its protobuf encoding.
pub fn cri_requests() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let run = cri::RunPodSandboxRequest {
        config: Some(pod_config()),
        runtime_handler: "runc".into(),
    };
    out.push(with_mode(0, &run.encode_to_vec()));
    let mut host = pod_config();
    host.linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .expect("security context")
        .namespace_options = Some(cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Node as i32,
        ipc: cri::NamespaceMode::Node as i32,
        ..Default::default()
    });
    host.dns_config = None;
    out.push(with_mode(
        0,
        &cri::RunPodSandboxRequest {
            config: Some(host),
            runtime_handler: String::new(),
        }
        .encode_to_vec(),
    ));
    let create = cri::CreateContainerRequest {
        pod_sandbox_id: "sb".into(),
        config: Some(container_config()),
        sandbox_config: Some(pod_config()),
    };
    out.push(with_mode(1, &create.encode_to_vec()));
    let mut user = container_config();
    let sc = user
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .expect("security context");
    sc.run_as_user = None;
    sc.run_as_username = "app".into();
    sc.privileged = true;
    sc.apparmor = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: "my-profile".into(),
    });
    out.push(with_mode(
        1,
        &cri::CreateContainerRequest {
            pod_sandbox_id: "sb".into(),
            config: Some(user),
            sandbox_config: Some(pod_config()),
        }
        .encode_to_vec(),
    ));
    let update = cri::UpdateContainerResourcesRequest {
        container_id: "c".into(),
        linux: container_config().linux.and_then(|l| l.resources),
        ..Default::default()
    };
    out.push(with_mode(2, &update.encode_to_vec()));
    let exec = cri::ExecRequest {
        container_id: "c".into(),
        cmd: vec!["sh".into()],
        tty: true,
        stdin: true,
        stdout: true,
        stderr: false,
        ..Default::default()
    };
    out.push(with_mode(3, &exec.encode_to_vec()));
    out
}
