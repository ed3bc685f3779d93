//! What the rewriter costs per request: sequential unary-style requests over
//! a Unix socket pair to h2's own server, with and without [`AuthorityFix`],
//! in alternating rounds; prints median latencies.
//!
//! `cargo run --release -p h2-authority --example overhead [-- REQUESTS ROUNDS]`
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::time::{Duration, Instant};

use bytes::Bytes;
use h2_authority::AuthorityFix;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;

async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(io: IO) {
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        tokio::spawn(async move {
            let mut body = req.into_body();
            while let Some(chunk) = body.data().await {
                let Ok(chunk) = chunk else { return };
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let resp = http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(())
                .expect("static response");
            if let Ok(mut send) = respond.send_response(resp, false) {
                let _ = send.send_data(Bytes::from_static(b"\0\0\0\0\x02\x0a\x00"), false);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let _ = send.send_trailers(trailers);
            }
        });
    }
}

/// Runs `n` sequential requests on one connection; returns per-request times.
async fn round(fix: bool, n: usize) -> Vec<Duration> {
    let (client_io, server_io) = UnixStream::pair().expect("socketpair");
    let server = if fix {
        tokio::spawn(serve(AuthorityFix::new(server_io)))
    } else {
        tokio::spawn(serve(server_io))
    };
    let (mut client, conn) = h2::client::handshake(client_io).await.expect("handshake");
    tokio::spawn(conn);
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let req = http::Request::builder()
            .method("POST")
            .uri("http://localhost/runtime.v1.RuntimeService/ListPodSandbox")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "grpc-go/1.58.3")
            .header("grpc-timeout", "119999m")
            .body(())
            .expect("static request");
        let start = Instant::now();
        client = client.ready().await.expect("ready");
        let (resp, mut send) = client.send_request(req, false).expect("send");
        send.send_data(Bytes::from_static(b"\0\0\0\0\x00"), true)
            .expect("data");
        let resp = resp.await.expect("response");
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("body");
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let _ = body.trailers().await;
        times.push(start.elapsed());
    }
    drop(client);
    server.abort();
    times
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(7);
    let (mut plain, mut fixed) = (Vec::new(), Vec::new());
    round(false, 200).await; // warm-up
    round(true, 200).await;
    for _ in 0..rounds {
        plain.push(median(round(false, n).await));
        fixed.push(median(round(true, n).await));
    }
    let (p, f) = (median(plain), median(fixed));
    println!("sequential requests over a Unix socket pair to h2's server ({rounds} rounds of {n}, medians)");
    println!("| server connection | median per request | ratio |");
    println!("| --- | --- | --- |");
    println!("| plain | {:.1} µs | 1.00 |", p.as_secs_f64() * 1e6);
    println!(
        "| AuthorityFix | {:.1} µs | {:.2} |",
        f.as_secs_f64() * 1e6,
        f.as_secs_f64() / p.as_secs_f64()
    );
}
