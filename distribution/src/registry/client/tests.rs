use super::*;

/// Errors from https requests to fake servers: answering the ClientHello in
/// plain HTTP or hanging up do not show a TLS server (the http fallback
/// applies); a TLS alert does.
#[tokio::test]
async fn tls_server_evidence() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn fail_with(answer: &'static [u8]) -> reqwest::Error {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(answer).await;
            }
        });
        reqwest::Client::new()
            .get(format!("https://{addr}/v2/"))
            .send()
            .await
            .unwrap_err()
    }
    let plain = fail_with(b"HTTP/1.0 400 Bad Request\r\n\r\nnot TLS\n").await;
    assert!(!server_speaks_tls(&plain), "{plain:?}");
    let hangup = fail_with(b"").await;
    assert!(!server_speaks_tls(&hangup), "{hangup:?}");
    // TLS 1.2 record: alert, fatal, handshake_failure.
    let alert = fail_with(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]).await;
    assert!(server_speaks_tls(&alert), "{alert:?}");
}

fn pace(no_progress: Duration, min_rate: u64) -> Pace {
    RegistryClient::new(Duration::from_secs(1), no_progress, min_rate, 1 << 20)
        .pace("reg.example", "blob sha256:ab")
}

#[test]
fn the_minimum_rate_applies_after_the_first_window() {
    let mut p = pace(Duration::from_secs(30), 4096);
    p.bytes = 10;
    // Inside the first window anything goes (a slow start, a proxy that
    // buffers).
    assert!(p.check(Duration::from_secs(29)).is_ok());
    // From its end on the rate is owed: 10 bytes for 10 s is too few.
    let e = p.check(Duration::from_secs(40)).unwrap_err();
    assert!(e.is_transient());
    let msg = e.to_string();
    assert!(
        msg.contains("reg.example")
            && msg.contains("10 bytes in 40s")
            && msg.contains("min_transfer_rate"),
        "{msg}"
    );
    // A first byte late in the window, then twice the minimum: fine.
    p.bytes = 10 * 2 * 4096;
    assert!(p.check(Duration::from_secs(40)).is_ok());
    // 0: no minimum.
    let mut off = pace(Duration::from_secs(30), 0);
    off.bytes = 1;
    assert!(off.check(Duration::from_secs(3600)).is_ok());
}

/// A body that sends a few bytes inside every window fails once its average
/// falls below the minimum; one that stops sending fails on the window.
#[tokio::test]
async fn a_dripping_body_fails_and_a_stalled_one_times_out() {
    let drip = futures::stream::unfold(0u32, |n| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Some((
            Ok::<_, reqwest::Error>(Bytes::from_static(&[0u8; 8])),
            n + 1,
        ))
    });
    let mut drip = Box::pin(drip);
    let mut p = pace(Duration::from_millis(300), 1024);
    let mut chunks = 0;
    let read = async {
        loop {
            match p.next(&mut drip).await {
                Ok(Some(_)) => chunks += 1,
                Ok(None) => panic!("the drip ended"),
                Err(e) => break e,
            }
        }
    };
    // Without the rate rule the drip would go on for ever.
    let err = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the dripping body was not stopped");
    assert!(matches!(err, RegistryError::TooSlow { .. }), "{err}");
    // Every chunk inside the first 300 ms passed.
    assert!(chunks >= 3, "{chunks}");

    let mut stalled = Box::pin(futures::stream::pending::<reqwest::Result<Bytes>>());
    let mut p = pace(Duration::from_millis(300), 1024);
    let err = p.next(&mut stalled).await.unwrap_err();
    assert!(matches!(err, RegistryError::Timeout { .. }), "{err}");
}

#[test]
fn an_error_body_is_bounded_and_escaped() {
    assert_eq!(detail_text(b"  "), "");
    assert_eq!(
        detail_text(br#"{"errors":[{"code":"DENIED"}]}"#),
        r#": {"errors":[{"code":"DENIED"}]}"#
    );
    let evil = detail_text(b"no\x1b[2J\nway");
    assert_eq!(evil, ": no\\u{1b}[2J\\nway");
    let bidi = detail_text("caf\u{e9} \u{202e}txt.exe".as_bytes());
    assert_eq!(bidi, ": caf\u{e9} \\u{202e}txt.exe");
    assert!(detail_text(&[b'x'; 10_000]).len() <= 514);
}
