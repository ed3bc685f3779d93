//! h2's own server behind the rewriter: a request with a socket path as its
//! authority is refused by h2 alone and served through [`AuthorityFix`].
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::time::Duration;

use h2_authority::AuthorityFix;
use loona_hpack::Encoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// What Go's gRPC sends for a unary call on a Unix socket: the path as the
/// authority, then one DATA frame that ends the stream.
fn go_style_requests(authority: &str, streams: &[u32]) -> Vec<u8> {
    let mut enc = Encoder::new();
    let mut bytes = PREFACE.to_vec();
    frame(&mut bytes, 0x4, 0, 0, &[]);
    for &stream in streams {
        let block = enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]);
        frame(&mut bytes, 0x1, 0x4, stream, &block);
        frame(&mut bytes, 0x0, 0x1, stream, b"\0\0\0\0\x04\x0a\x02v1");
    }
    bytes
}

/// Serves one connection with h2 and answers every request with 200 and its
/// authority and body in headers; returns the authorities seen.
async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(io: IO) -> Vec<String> {
    let mut conn = h2::server::handshake(io).await.unwrap();
    let mut seen = Vec::new();
    while let Some(req) = conn.accept().await {
        let Ok((req, mut respond)) = req else { break };
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut body = req.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = body.data().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(
            got, b"\0\0\0\0\x04\x0a\x02v1",
            "the DATA frame arrived intact"
        );
        seen.push(authority);
        let resp = http::Response::builder().status(200).body(()).unwrap();
        respond.send_response(resp, true).unwrap();
    }
    seen
}

/// Writes the client's bytes, then reads the server's frames until `want`
/// responses (HEADERS) or resets came back; returns (responses, resets).
async fn client(mut io: DuplexStream, bytes: Vec<u8>, want: usize) -> (usize, usize) {
    io.write_all(&bytes).await.unwrap();
    let (mut headers, mut resets) = (0, 0);
    let mut buf = Vec::new();
    while headers + resets < want {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), io.read(&mut chunk))
            .await
            .expect("server answers")
            .unwrap();
        assert!(n > 0, "server closed early");
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            match buf[3] {
                0x1 => headers += 1,
                0x3 => resets += 1,
                _ => {}
            }
            buf.drain(..9 + len);
        }
    }
    (headers, resets)
}

#[tokio::test]
async fn h2_alone_resets_a_path_authority() {
    let (c, s) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(serve(s));
    let (ok, reset) = client(c, go_style_requests("/run/berth/berth.sock", &[1]), 1).await;
    assert_eq!((ok, reset), (0, 1), "without the fix h2 refuses the stream");
    server.abort();
}

#[tokio::test]
async fn path_and_percent_authorities_are_served_through_the_fix() {
    for authority in ["/run/berth/berth.sock", "run%2Fberth%2Fberth.sock"] {
        let (c, s) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(serve(AuthorityFix::new(s)));
        let (ok, reset) = client(c, go_style_requests(authority, &[1, 3, 5]), 3).await;
        assert_eq!((ok, reset), (3, 0), "{authority}");
        server.abort();
    }
}

#[tokio::test]
async fn valid_authorities_reach_the_server_unchanged() {
    let (mut c, s) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(serve(AuthorityFix::new(s)));
    let bytes = go_style_requests("berth.local:1234", &[1]);
    c.write_all(&bytes).await.unwrap();
    let mut chunk = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read(&mut chunk)).await;
    // A GOAWAY-free close: the server sees the end of the client's stream.
    drop(c);
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, vec!["berth.local:1234".to_string()]);
}
