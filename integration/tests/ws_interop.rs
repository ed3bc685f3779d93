//! The WebSocket streaming layer (`berth_streaming::ws`) against an
//! independent client: Debian's `python3-websocket` (the `websocket-client`
//! library; in the Makefile's TEST_PKGS, `make deps-test`). The scripts are
//! in `tests/ws/`. A tiny hyper 1 server in this process does the
//! WebSocket handshake itself and hands the upgraded connection to
//! `remote_command` (an echo backend) or `port_forward` (to a local HTTP
//! server standing in for the pod).
//!
//! Needs: /usr/bin/python3 with python3-websocket (Debian's python, not a
//! pyenv one, which lacks the package).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use berth_streaming::ws::{self, PORT_FORWARD_PROTOCOLS, REMOTE_COMMAND_PROTOCOLS};
use berth_streaming::{CommandIo, ExitStatus, Limits, PortConnector, StreamOpts};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PYTHON: &str = "/usr/bin/python3";

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ws")
        .join(name)
}

fn require_client() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import websocket"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{PYTHON} cannot import websocket: install python3-websocket (make deps-test)"
    );
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

fn bad(msg: &str) -> Response<Empty<Bytes>> {
    eprintln!("refusing: {msg}");
    let mut r = Response::new(Empty::new());
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

/// What the streaming server does: check the upgrade, pick the
/// subprotocol, answer 101, then run the protocol layer on the upgraded
/// connection.
async fn handle(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, hyper::Error> {
    let is_ws = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(bad("no Sec-WebSocket-Key"));
    };
    if !is_ws {
        return Ok(bad("not a websocket upgrade"));
    }
    let accept = ws::accept_key(key);
    let offered: Vec<String> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let q = query(&req);
    let path = req.uri().path().to_string();
    let supported = if path == "/portforward" {
        PORT_FORWARD_PROTOCOLS
    } else {
        REMOTE_COMMAND_PROTOCOLS
    };
    let Some(protocol) = ws::select_protocol(offered.iter().map(String::as_str), supported) else {
        return Ok(bad("no supported subprotocol"));
    };
    let ports = if path == "/portforward" {
        match ws::parse_ports(
            q.iter()
                .filter(|(k, _)| k == "port")
                .map(|(_, v)| v.as_str()),
        ) {
            Ok(p) => p,
            Err(e) => return Ok(bad(&e.to_string())),
        }
    } else {
        Vec::new()
    };

    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                eprintln!("upgrade failed: {e}");
                return;
            }
        };
        if path == "/portforward" {
            let connector: PortConnector = Arc::new(|port| {
                Box::pin(async move { tokio::net::TcpStream::connect(("127.0.0.1", port)).await })
            });
            if let Err(e) =
                ws::port_forward(io, protocol, ports, connector, Limits::default()).await
            {
                eprintln!("port_forward: {e}");
            }
        } else {
            let flag = |name: &str| {
                q.iter()
                    .any(|(k, v)| k == name && (v == "true" || v == "1"))
            };
            let opts = StreamOpts {
                stdin: flag("stdin"),
                stdout: flag("stdout"),
                stderr: flag("stderr"),
                tty: flag("tty"),
            };
            match ws::remote_command(io, protocol, opts, Limits::default()).await {
                Ok(cio) => echo_backend(cio).await,
                Err(e) => eprintln!("remote_command: {e}"),
            }
        }
    });

    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    if !protocol.is_empty() {
        h.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
    }
    Ok(resp)
}

/// A stand-in for a shell: echoes stdin to stdout, reports resizes on
/// stdout, and ends with the code of an "exit N" line (success at EOF).
async fn echo_backend(mut cio: CommandIo) {
    let mut stdin = cio.stdin.take();
    let mut resize = cio.resize.take();
    let Some(stdout) = cio.stdout.take() else {
        let _ = cio.done.send(ExitStatus::Error("no stdout".into()));
        return;
    };
    let mut line = Vec::new();
    let status = loop {
        tokio::select! {
            d = async { match &mut stdin { Some(s) => s.recv().await, None => None } } => {
                let Some(d) = d else { break ExitStatus::Success };
                if stdout.send(d.clone()).await.is_err() {
                    return;
                }
                line.extend_from_slice(&d);
                if let Some(code) = exit_line(&mut line) {
                    break if code == 0 { ExitStatus::Success } else { ExitStatus::ExitCode(code) };
                }
            }
            Some(size) = async { match &mut resize { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                let msg = format!("resize {}x{}\n", size.width, size.height);
                if stdout.send(Bytes::from(msg)).await.is_err() {
                    return;
                }
            }
            _ = &mut cio.client_gone => return,
        }
    };
    drop(stdout);
    let _ = cio.done.send(status);
}

/// Consumes complete lines; the code of the first "exit N" among them.
fn exit_line(buf: &mut Vec<u8>) -> Option<i32> {
    while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=nl).collect();
        let line = String::from_utf8_lossy(&line);
        if let Some(code) = line.trim().strip_prefix("exit ") {
            return code.trim().parse().ok();
        }
    }
    None
}

async fn serve() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .with_upgrades();
                if let Err(e) = conn.await {
                    eprintln!("http: {e}");
                }
            });
        }
    });
    addr
}

/// An HTTP/1.0 server answering every request with a fixed page, then
/// closing: the "pod".
async fn pod_http() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "hello from the pod\n";
                let resp = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

async fn run_py(args: Vec<String>) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(PYTHON)
            .args(&args)
            .output()
            .expect("run python3")
    })
    .await
    .expect("join");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn exec(addr: SocketAddr, protocol: &str, mode: &str) -> Value {
    let url = format!("ws://{addr}/exec?stdin=true&stdout=true&tty=true");
    let (ok, out, err) = tokio::time::timeout(
        Duration::from_secs(60),
        run_py(vec![
            script("exec.py").display().to_string(),
            url,
            protocol.to_string(),
            mode.to_string(),
        ]),
    )
    .await
    .expect("exec.py timed out");
    assert!(ok, "exec.py {protocol} {mode} failed: {err}\n{out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad output {out:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websocket_client_exec_v4_v5() {
    require_client();
    let addr = serve().await;
    let mut seen = HashMap::new();
    for protocol in ["v4.channel.k8s.io", "v5.channel.k8s.io"] {
        // Exit 0: a Success status.
        let v = exec(addr, protocol, "exit:0").await;
        assert_eq!(v["protocol"], protocol);
        let stdout = v["stdout"].as_str().unwrap_or_default();
        assert!(stdout.starts_with("hello\nresize 120x40\nexit 0\n"), "{v}");
        assert_eq!(v["status"]["status"], "Success", "{v}");

        // Non-zero: kubectl's exit code from the status causes.
        let v = exec(addr, protocol, "exit:3").await;
        assert_eq!(v["status"]["status"], "Failure", "{v}");
        assert_eq!(v["status"]["reason"], "NonZeroExitCode", "{v}");
        assert_eq!(
            v["status"]["details"]["causes"][0]["reason"], "ExitCode",
            "{v}"
        );
        assert_eq!(v["status"]["details"]["causes"][0]["message"], "3", "{v}");
        seen.insert(protocol, true);
    }
    // v5 only: stdin EOF by the close signal, the connection stays up for
    // the output and the status.
    let v = exec(addr, "v5.channel.k8s.io", "eof").await;
    assert_eq!(v["stdout"], "abc", "{v}");
    assert_eq!(v["status"]["status"], "Success", "{v}");
    assert_eq!(seen.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websocket_client_port_forward() {
    require_client();
    let addr = serve().await;
    let port = pod_http().await;
    let url = format!("ws://{addr}/portforward?port={port}");
    let (ok, out, err) = tokio::time::timeout(
        Duration::from_secs(60),
        run_py(vec![
            script("portforward.py").display().to_string(),
            url,
            port.to_string(),
        ]),
    )
    .await
    .expect("portforward.py timed out");
    assert!(ok, "portforward.py failed: {err}\n{out}");
    assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nhello from the pod\n"), "{out}");
}
