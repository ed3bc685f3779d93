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
