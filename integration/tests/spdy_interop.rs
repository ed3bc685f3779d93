//! berthd's SPDY/3.1 streaming layer against an independent client:
//! node-spdy's transport (`spdy-transport` from npm, driven by
//! `tests/spdy/client.js`). A tiny hyper server in this process does the
//! HTTP upgrade (101 + `Upgrade: SPDY/3.1` + `X-Stream-Protocol-Version`)
//! and hands the connection to `remote_command` (echo backends) or
//! `port_forward` (to a local TCP echo server).
//!
//! Needs `node` and `npm` and the npm registry (once; the package is cached
//! under the target dir). Without them the tests skip with a message.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_streaming::spdy::{
    port_forward, remote_command, PORT_FORWARD_PROTOCOL, REMOTE_COMMAND_PROTOCOLS,
};
use berth_streaming::{ExitStatus, Limits, PortConnector, StreamOpts};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use integration::spdy_client::client_dir;

macro_rules! client_or_skip {
    () => {
        match client_dir() {
            Ok(d) => d,
            Err(e) => {
                berth_sysutil::testing::precondition_missing(
                    "spdy_interop",
                    &format!("the independent SPDY client (node + npm spdy-transport) is not available: {e}"),
                );
                return;
            }
        }
    };
}

/// What the server side saw, for the tests to check.
type Events = mpsc::UnboundedSender<String>;

struct Server {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<String>,
}

const BIG: usize = 20 * 1024 * 1024;

/// The 20 MiB the `big` backend writes: a cheap deterministic pattern.
fn big_chunk(i: usize) -> Vec<u8> {
    (0..32 * 1024)
        .map(|j| ((i * 31 + j * 7) % 251) as u8)
        .collect()
}

fn big_sha() -> String {
    let mut h = Sha256::new();
    for i in 0..BIG / (32 * 1024) {
        h.update(big_chunk(i));
    }
    hex::encode(h.finalize())
}

async fn start_server(echo_port: u16) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let tx = tx.clone();
                    async move { Ok::<_, Infallible>(handle(req, tx, echo_port)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Server { addr, events: rx }
}

/// The handshake the lead's server does: pick a protocol the client
/// offered, answer 101, then run the SPDY layer on the upgraded connection.
fn handle(mut req: Request<Incoming>, events: Events, echo_port: u16) -> Response<Empty<Bytes>> {
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let offered: Vec<String> = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_owned()))
        .collect();
    let supported: &[&str] = if path == "/portforward" {
        &[PORT_FORWARD_PROTOCOL]
    } else {
        REMOTE_COMMAND_PROTOCOLS
    };
    let Some(protocol) = supported
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .map(|p| p.to_string())
    else {
        return Response::builder()
            .status(StatusCode::FORBIDDEN)
            .body(Empty::new())
            .unwrap();
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let limits = Limits {
        idle_timeout: Duration::from_secs(30),
        stream_creation_timeout: Duration::from_secs(10),
    };
    let proto = protocol.clone();
    tokio::spawn(async move {
        let io = TokioIo::new(upgrade.await.unwrap());
        if path == "/portforward" {
            let connector: PortConnector = Arc::new(move |port| {
                Box::pin(async move {
                    assert_eq!(port, 4242, "the port header reaches the connector");
                    tokio::net::TcpStream::connect(("127.0.0.1", echo_port)).await
                })
            });
            let r = port_forward(io, connector, limits).await;
            let _ = events.send(format!("port_forward returned {r:?}"));
        } else {
            let flag = |k: &str| query.get(k).map(String::as_str) == Some("1");
            let opts = StreamOpts {
                stdin: flag("stdin"),
                stdout: flag("stdout"),
                stderr: flag("stderr"),
                tty: flag("tty"),
            };
            let mode = query.get("mode").cloned().unwrap_or_default();
            match remote_command(io, &proto, opts, limits).await {
                Ok(cmd) => backend(cmd, &mode, events).await,
                Err(e) => {
                    let _ = events.send(format!("remote_command failed: {e}"));
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", protocol)
        .body(Empty::new())
        .unwrap()
}

/// Stand-ins for a command in a container.
async fn backend(mut cmd: berth_streaming::CommandIo, mode: &str, events: Events) {
    match mode {
        "echo" => {
            let stdout = cmd.stdout.take().unwrap();
            if let Some(stderr) = cmd.stderr.take() {
                stderr
                    .send(Bytes::from_static(b"to stderr\n"))
                    .await
                    .unwrap();
            }
            let mut stdin = cmd.stdin.take().unwrap();
            while let Some(chunk) = stdin.recv().await {
                stdout.send(chunk).await.unwrap();
            }
            drop(stdout);
            cmd.done.send(ExitStatus::ExitCode(3)).unwrap();
        }
        "big" => {
            let stdout = cmd.stdout.take().unwrap();
            for i in 0..BIG / (32 * 1024) {
                stdout.send(Bytes::from(big_chunk(i))).await.unwrap();
            }
            drop(stdout);
            cmd.done.send(ExitStatus::Success).unwrap();
        }
        "resize" => {
            let stdout = cmd.stdout.take().unwrap();
            let mut resize = cmd.resize.take().unwrap();
            let mut seen = Vec::new();
            while seen.len() < 2 {
                let Some(s) = resize.recv().await else { break };
                seen.push(format!("{}x{}", s.width, s.height));
            }
            stdout.send(Bytes::from(seen.join(";"))).await.unwrap();
            drop(stdout);
            cmd.done.send(ExitStatus::Success).unwrap();
        }
        "gone" => {
            let r = tokio::time::timeout(Duration::from_secs(10), cmd.client_gone).await;
            let _ = events.send(format!("client_gone fired: {}", r.is_ok()));
        }
        other => panic!("unknown mode {other}"),
    }
}

async fn run_client(
    dir: &std::path::Path,
    addr: SocketAddr,
    path: &str,
    protocol: &str,
    scenario: &str,
    opts: serde_json::Value,
) -> serde_json::Value {
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg(dir.join("client.js"))
            .arg(addr.to_string())
            .arg(path)
            .arg(protocol)
            .arg(scenario)
            .arg(opts.to_string())
            .current_dir(dir)
            .output(),
    )
    .await
    .expect("client timed out")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

async fn echo_exec(protocol: &str) -> serde_json::Value {
    let dir = client_dir().unwrap();
    let server = start_server(0).await;
    run_client(
        &dir,
        server.addr,
        "/exec?stdin=1&stdout=1&stderr=1&mode=echo",
        protocol,
        "exec",
        serde_json::json!({
            "streams": ["error", "stdin", "stdout", "stderr"],
            "stdin": "hello over spdy\n",
        }),
    )
    .await
}

#[tokio::test]
async fn exec_echo_v4_reports_the_exit_code_as_status() {
    client_or_skip!();
    let r = echo_exec("v4.channel.k8s.io").await;
    assert_eq!(r["protocol"], "v4.channel.k8s.io");
    assert_eq!(r["stdout"]["text"], "hello over spdy\n");
    assert_eq!(r["stderr"]["text"], "to stderr\n");
    let status: serde_json::Value =
        serde_json::from_str(r["error"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
}

#[tokio::test]
async fn exec_echo_v3_and_v2_report_plain_text() {
    client_or_skip!();
    for p in ["v3.channel.k8s.io", "v2.channel.k8s.io"] {
        let r = echo_exec(p).await;
        assert_eq!(r["protocol"], p);
        assert_eq!(r["stdout"]["text"], "hello over spdy\n");
        assert_eq!(
            r["error"]["text"],
            "command terminated with non-zero exit code: error executing command, exit status 3"
        );
    }
}

#[tokio::test]
async fn exec_resize_events_are_delivered() {
    let dir = client_or_skip!();
    let server = start_server(0).await;
    let r = run_client(
        &dir,
        server.addr,
        "/exec?stdin=1&stdout=1&tty=1&mode=resize",
        "v4.channel.k8s.io",
        "exec",
        serde_json::json!({
            "streams": ["error", "stdin", "stdout", "resize"],
            "resize": [[80, 24], [100, 40]],
        }),
    )
    .await;
    assert_eq!(r["stdout"]["text"], "80x24;100x40");
    assert_eq!(r["error"]["text"], r#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test]
async fn exec_20_mib_stdout_under_flow_control() {
    let dir = client_or_skip!();
    let server = start_server(0).await;
    // The client advertises a 64 KiB window and does not read for a while:
    // node-spdy resets the stream if the server overruns it.
    let r = run_client(
        &dir,
        server.addr,
        "/exec?stdout=1&mode=big",
        "v4.channel.k8s.io",
        "exec",
        serde_json::json!({
            "streams": ["error", "stdout"],
            "pauseMs": 500,
            "windowSize": 65536,
        }),
    )
    .await;
    assert_eq!(r["stdout"]["len"], BIG);
    assert_eq!(r["stdout"]["sha256"], big_sha());
    assert_eq!(r["error"]["text"], r#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test]
async fn client_disconnect_fires_client_gone() {
    let dir = client_or_skip!();
    let mut server = start_server(0).await;
    run_client(
        &dir,
        server.addr,
        "/exec?stdin=1&stdout=1&mode=gone",
        "v4.channel.k8s.io",
        "gone",
        serde_json::json!({ "streams": ["error", "stdin", "stdout"] }),
    )
    .await;
    let ev = tokio::time::timeout(Duration::from_secs(15), server.events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, "client_gone fired: true");
}

/// A TCP echo server standing in for the pod's port.
async fn tcp_echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                // Half-close seen: echo done, close our side too.
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

async fn port_forward_run(conns: usize, size: usize) {
    let dir = client_dir().unwrap();
    let echo = tcp_echo().await;
    let server = start_server(echo).await;
    let r = run_client(
        &dir,
        server.addr,
        "/portforward",
        PORT_FORWARD_PROTOCOL,
        "pf",
        serde_json::json!({ "port": 4242, "conns": conns, "size": size }),
    )
    .await;
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), conns);
    for res in results {
        assert_eq!(res["len"], size, "{res}");
        assert_eq!(res["sent"], res["got"], "{res}");
        assert_eq!(res["error"], "", "{res}");
    }
}

#[tokio::test]
async fn port_forward_20_concurrent_connections() {
    client_or_skip!();
    port_forward_run(20, 512 * 1024).await;
}

#[tokio::test]
async fn port_forward_100_mib_intact() {
    client_or_skip!();
    port_forward_run(1, 100 * 1024 * 1024).await;
}
