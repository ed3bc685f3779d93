use super::*;
use tokio::io::DuplexStream;

type Client = WebSocketStream<DuplexStream>;

async fn client_pair() -> (Client, DuplexStream) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let ws = WebSocketStream::from_raw_socket(c, Role::Client, None).await;
    (ws, s)
}

async fn start(protocol: &str, opts: StreamOpts) -> (Client, CommandIo) {
    let (ws, s) = client_pair().await;
    let cio = remote_command(s, protocol, opts, Limits::default())
        .await
        .unwrap();
    (ws, cio)
}

fn all() -> StreamOpts {
    StreamOpts {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    }
}

/// The next data message as (channel, payload); None at close/EOF.
async fn recv(ws: &mut Client) -> Option<(u8, Vec<u8>)> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("timed out waiting for a message");
        match m {
            Some(Ok(Message::Binary(b))) => return Some((b[0], b[1..].to_vec())),
            Some(Ok(Message::Text(t))) => {
                let b = t.as_bytes();
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&b[1..])
                    .unwrap();
                return Some((b[0] - b'0', data));
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Everything until the close, per channel.
async fn recv_all(ws: &mut Client) -> std::collections::BTreeMap<u8, Vec<u8>> {
    let mut out = std::collections::BTreeMap::<u8, Vec<u8>>::new();
    while let Some((ch, d)) = recv(ws).await {
        out.entry(ch).or_default().extend(d);
    }
    // Keep reading so tungstenite sends its close reply and the server
    // drops the connection.
    while let Some(Ok(_)) = ws.next().await {}
    out
}

async fn send(ws: &mut Client, ch: u8, data: &[u8]) {
    let mut b = vec![ch];
    b.extend_from_slice(data);
    ws.send(Message::Binary(b.into())).await.unwrap();
}

/// Echoes stdin to stdout until EOF, then reports `status`.
fn echo_backend(cio: CommandIo, status: ExitStatus) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut stdin = cio.stdin.unwrap();
        let stdout = cio.stdout.unwrap();
        while let Some(d) = stdin.recv().await {
            stdout.send(d).await.unwrap();
        }
        // Fails when the client closed first (v4: that is stdin's EOF).
        let _ = cio.done.send(status);
    })
}

#[test]
fn accept_key_is_rfc6455() {
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn protocol_selection() {
    assert_eq!(
        select_protocol(
            ["v4.channel.k8s.io, v5.channel.k8s.io"],
            REMOTE_COMMAND_PROTOCOLS
        ),
        Some("v5.channel.k8s.io")
    );
    assert_eq!(
        select_protocol(
            ["base64.channel.k8s.io", "channel.k8s.io"],
            REMOTE_COMMAND_PROTOCOLS
        ),
        Some("channel.k8s.io")
    );
    assert_eq!(select_protocol([], REMOTE_COMMAND_PROTOCOLS), Some(""));
    assert_eq!(
        select_protocol(["v5.channel.k8s.io"], PORT_FORWARD_PROTOCOLS),
        None
    );
    assert_eq!(
        select_protocol(["v4.channel.k8s.io"], PORT_FORWARD_PROTOCOLS),
        Some("v4.channel.k8s.io")
    );
    for p in REMOTE_COMMAND_PROTOCOLS {
        remote_command_proto(p).unwrap();
    }
    for p in PORT_FORWARD_PROTOCOLS {
        port_forward_codec(p).unwrap();
    }
}

#[test]
fn ports_from_the_query() {
    assert_eq!(
        parse_ports(["80", "8080,443"]).unwrap(),
        vec![80, 8080, 443]
    );
    assert!(matches!(parse_ports([]), Err(WsError::NoPorts)));
    assert!(matches!(parse_ports(["0"]), Err(WsError::InvalidPort(_))));
    assert!(matches!(parse_ports(["x"]), Err(WsError::InvalidPort(_))));
    assert!(matches!(parse_ports([""]), Err(WsError::InvalidPort(_))));
    let many = vec!["1"; 128];
    assert!(matches!(parse_ports(many), Err(WsError::TooManyPorts(128))));
}

#[tokio::test]
async fn stdin_echo_then_success_status_v4() {
    let (mut ws, cio) = start("v4.channel.k8s.io", all()).await;
    let backend = echo_backend(cio, ExitStatus::Success);
    // The hello on stdout first.
    assert_eq!(recv(&mut ws).await, Some((STDOUT, vec![])));
    send(&mut ws, STDIN, b"hello\n").await;
    assert_eq!(recv(&mut ws).await, Some((STDOUT, b"hello\n".to_vec())));
    // v4 has no close signal: closing the connection is stdin's EOF.
    ws.close(None).await.unwrap();
    backend.await.unwrap();
}

#[tokio::test]
async fn exit_code_status_json_on_channel_3() {
    let (mut ws, cio) = start("v5.channel.k8s.io", all()).await;
    let backend = echo_backend(cio, ExitStatus::ExitCode(3));
    send(&mut ws, STDIN, b"bye").await;
    send(&mut ws, CLOSE, &[STDIN]).await;
    let out = recv_all(&mut ws).await;
    backend.await.unwrap();
    assert_eq!(out[&STDOUT], b"bye");
    let v: serde_json::Value = serde_json::from_slice(&out[&ERROR]).unwrap();
    assert_eq!(v["status"], "Failure");
    assert_eq!(v["reason"], "NonZeroExitCode");
    assert_eq!(v["details"]["causes"][0]["message"], "3");
}

#[tokio::test]
async fn v5_close_signal_is_stdin_eof_and_output_still_flows() {
    let (mut ws, cio) = start("v5.channel.k8s.io", all()).await;
    let backend = tokio::spawn(async move {
        let mut stdin = cio.stdin.unwrap();
        let mut n = 0;
        while let Some(d) = stdin.recv().await {
            n += d.len();
        }
        // stdin is at EOF but the connection is alive: output works.
        let stdout = cio.stdout.unwrap();
        stdout.send(Bytes::from(format!("{n}"))).await.unwrap();
        cio.done.send(ExitStatus::Success).unwrap();
    });
    send(&mut ws, STDIN, b"abc").await;
    send(&mut ws, STDIN, b"de").await;
    send(&mut ws, CLOSE, &[STDIN]).await;
    let out = recv_all(&mut ws).await;
    backend.await.unwrap();
    assert_eq!(out[&STDOUT], b"5");
    assert_eq!(
        out[&ERROR],
        br#"{"metadata":{},"status":"Success"}"#.to_vec()
    );
}

#[tokio::test]
async fn resize_reaches_the_backend() {
    let opts = StreamOpts { tty: true, ..all() };
    let (mut ws, mut cio) = start("v4.channel.k8s.io", opts).await;
    assert!(cio.stderr.is_none(), "a tty merges stderr");
    let mut resize = cio.resize.take().unwrap();
    send(&mut ws, RESIZE, br#"{"Width":80,"Height":24}"#).await;
    // Split across messages, and two in one.
    send(&mut ws, RESIZE, br#"{"Width":1"#).await;
    send(&mut ws, RESIZE, br#"00,"Height":50}{"Width":1,"Height":2}"#).await;
    // Junk is skipped, the next one still works.
    send(&mut ws, RESIZE, b"not json").await;
    send(&mut ws, RESIZE, br#"{"Width":7,"Height":8}"#).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(resize.recv().await.unwrap());
    }
    let ts = |width, height| TermSize { width, height };
    assert_eq!(got, vec![ts(80, 24), ts(100, 50), ts(1, 2), ts(7, 8)]);
}

#[tokio::test]
async fn large_stdout_arrives_whole_and_in_order() {
    let opts = StreamOpts {
        stdin: false,
        ..all()
    };
    let (mut ws, cio) = start("v4.channel.k8s.io", opts).await;
    assert!(cio.stdin.is_none());
    const TOTAL: usize = 16 << 20;
    tokio::spawn(async move {
        let stdout = cio.stdout.unwrap();
        let stderr = cio.stderr.unwrap();
        let mut sent = 0;
        let mut i = 0u8;
        while sent < TOTAL {
            let chunk: Vec<u8> = (0..65536)
                .map(|j| i.wrapping_add((j % 251) as u8))
                .collect();
            sent += chunk.len();
            stdout.send(Bytes::from(chunk)).await.unwrap();
            i = i.wrapping_add(1);
        }
        stderr.send(Bytes::from_static(b"warn")).await.unwrap();
        cio.done.send(ExitStatus::ExitCode(1)).unwrap();
    });
    let out = recv_all(&mut ws).await;
    let stdout = &out[&STDOUT];
    assert_eq!(stdout.len(), TOTAL);
    for (k, chunk) in stdout.chunks(65536).enumerate() {
        assert_eq!(chunk[0], k as u8);
        assert_eq!(chunk[1000], (k as u8).wrapping_add((1000 % 251) as u8));
    }
    assert_eq!(out[&STDERR], b"warn");
    assert!(!out[&ERROR].is_empty());
}

#[tokio::test]
async fn client_disconnect_fires_client_gone_and_stdin_eof() {
    let (ws, cio) = start("v4.channel.k8s.io", all()).await;
    drop(ws);
    let mut stdin = cio.stdin.unwrap();
    tokio::time::timeout(Duration::from_secs(5), cio.client_gone)
        .await
        .expect("client_gone did not fire")
        .unwrap_err();
    assert_eq!(stdin.recv().await, None);
    // Output to a gone client fails instead of blocking.
    let stdout = cio.stdout.unwrap();
    let mut failed = false;
    for _ in 0..(QUEUE + 2) {
        if stdout.send(Bytes::from_static(b"x")).await.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed);
}

#[tokio::test]
async fn idle_connection_is_closed() {
    let (mut ws, s) = client_pair().await;
    let limits = Limits {
        idle_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let cio = remote_command(s, "v4.channel.k8s.io", all(), limits)
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await, Some((STDOUT, vec![])));
    tokio::time::timeout(Duration::from_secs(5), cio.client_gone)
        .await
        .expect("idle timeout did not fire")
        .unwrap_err();
}

#[tokio::test]
async fn malformed_messages_are_ignored() {
    let (mut ws, cio) = start("v5.channel.k8s.io", all()).await;
    let backend = echo_backend(cio, ExitStatus::Success);
    ws.send(Message::Binary(Bytes::new())).await.unwrap();
    send(&mut ws, 9, b"unknown channel").await;
    send(&mut ws, STDOUT, b"client may not write stdout").await;
    send(&mut ws, CLOSE, &[]).await;
    send(&mut ws, CLOSE, &[1, 2]).await;
    send(&mut ws, CLOSE, &[77]).await;
    send(&mut ws, STDIN, b"").await;
    ws.send(Message::Text("0!!!".into())).await.unwrap();
    ws.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    send(&mut ws, STDIN, b"still alive").await;
    send(&mut ws, CLOSE, &[STDIN]).await;
    let out = recv_all(&mut ws).await;
    backend.await.unwrap();
    // The raw text message is taken as binary: channel '0' = 48.
    assert_eq!(out[&STDOUT], b"still alive");
}

#[tokio::test]
async fn unversioned_protocol_sends_only_failure_text() {
    let (mut ws, cio) = start("channel.k8s.io", all()).await;
    cio.done.send(ExitStatus::Success).unwrap();
    let out = recv_all(&mut ws).await;
    assert!(!out.contains_key(&ERROR));

    let (mut ws, cio) = start("", all()).await;
    cio.done.send(ExitStatus::ExitCode(2)).unwrap();
    let out = recv_all(&mut ws).await;
    let text = String::from_utf8(out[&ERROR].clone()).unwrap();
    assert!(text.contains("exit status 2"), "{text}");
}

#[tokio::test]
async fn base64_protocol_uses_text_messages() {
    let (mut ws, cio) = start("v4.base64.channel.k8s.io", all()).await;
    let backend = echo_backend(cio, ExitStatus::ExitCode(4));
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(first, Message::Text("1".into()));
    ws.send(Message::Text("0aGk=".into())).await.unwrap();
    assert_eq!(recv(&mut ws).await, Some((STDOUT, b"hi".to_vec())));
    ws.close(None).await.unwrap();
    backend.await.unwrap();
}

#[tokio::test]
async fn unknown_protocol_is_refused() {
    let (_ws, s) = client_pair().await;
    let r = remote_command(s, "v9.channel.k8s.io", all(), Limits::default()).await;
    assert!(matches!(r, Err(WsError::UnsupportedProtocol(_))));
}

async fn echo_server() -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        loop {
            let (mut c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                // Echo until the client half-closes, then say bye.
                let _ = w.write_all(b"<eof>").await;
            });
        }
    });
    (port, h)
}

fn connector() -> PortConnector {
    Arc::new(|port| {
        Box::pin(async move { tokio::net::TcpStream::connect(("127.0.0.1", port)).await })
    })
}

#[tokio::test]
async fn port_forward_pipes_and_reports_unreachable_ports() {
    let (port, _srv) = echo_server().await;
    // A port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (mut ws, s) = client_pair().await;
    let pf = tokio::spawn(port_forward(
        s,
        "v4.channel.k8s.io",
        vec![port, dead],
        connector(),
        Limits::default(),
    ));
    let mut prefixes = Vec::new();
    let mut dead_err = Vec::new();
    // Port announcements on all four channels (in order per channel),
    // then the dead port's error.
    while prefixes.len() < 4 || dead_err.is_empty() {
        let (ch, d) = recv(&mut ws).await.unwrap();
        if d.len() == 2 && !prefixes.iter().any(|(c, _)| *c == ch) {
            prefixes.push((ch, u16::from_le_bytes([d[0], d[1]])));
        } else {
            assert_eq!(ch, 3, "only the dead port's error channel speaks");
            dead_err = d;
        }
    }
    prefixes.sort();
    assert_eq!(prefixes, vec![(0, port), (1, port), (2, dead), (3, dead)]);
    let msg = String::from_utf8(dead_err).unwrap();
    assert!(
        msg.contains(&format!("error forwarding port {dead}")),
        "{msg}"
    );

    send(&mut ws, 0, b"ping").await;
    assert_eq!(recv(&mut ws).await, Some((0, b"ping".to_vec())));
    // Data for the dead port or an error channel is dropped.
    send(&mut ws, 2, b"nobody").await;
    send(&mut ws, 1, b"nobody").await;
    send(&mut ws, 0, b"pong").await;
    assert_eq!(recv(&mut ws).await, Some((0, b"pong".to_vec())));
    // The client leaving ends the forward.
    ws.close(None).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), pf)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test]
async fn port_forward_announces_many_ports() {
    // More ports than the outgoing queue holds: announcing them must
    // not wait for a writer that has not started.
    let (port, _srv) = echo_server().await;
    let ports = vec![port; 40];
    let (mut ws, s) = client_pair().await;
    let pf = tokio::spawn(port_forward(
        s,
        "v4.channel.k8s.io",
        ports,
        connector(),
        Limits::default(),
    ));
    for ch in 0..80u8 {
        assert_eq!(recv(&mut ws).await, Some((ch, port.to_le_bytes().to_vec())));
    }
    send(&mut ws, 78, b"last").await;
    assert_eq!(recv(&mut ws).await, Some((78, b"last".to_vec())));
    ws.close(None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), pf)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn port_forward_ends_when_the_pod_closes() {
    // A server that answers once and closes, like an HTTP/1.0 server.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut c, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).await.unwrap();
        c.write_all(&buf[..n]).await.unwrap();
        c.write_all(b" done").await.unwrap();
    });
    let (mut ws, s) = client_pair().await;
    let pf = tokio::spawn(port_forward(
        s,
        "v4.base64.channel.k8s.io",
        vec![port],
        connector(),
        Limits::default(),
    ));
    assert_eq!(recv(&mut ws).await, Some((0, port.to_le_bytes().to_vec())));
    assert_eq!(recv(&mut ws).await, Some((1, port.to_le_bytes().to_vec())));
    let mut s = String::from("0");
    base64::engine::general_purpose::STANDARD.encode_string(b"GET", &mut s);
    ws.send(Message::Text(s.into())).await.unwrap();
    let out = recv_all(&mut ws).await;
    assert_eq!(out[&0], b"GET done");
    tokio::time::timeout(Duration::from_secs(5), pf)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
