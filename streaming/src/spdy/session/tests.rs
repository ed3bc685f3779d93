use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

use super::*;
use crate::spdy::frame::{Decoder, Encoder, FrameHead, FLAG_FIN, HEADER_LEN};

/// A raw peer speaking frames at the session (built on our codec; the
/// integration tests use an independent client).
struct Peer {
    rd: ReadHalf<DuplexStream>,
    wr: WriteHalf<DuplexStream>,
    enc: Encoder,
    dec: Decoder,
}

impl Peer {
    async fn send(&mut self, f: Frame) {
        let mut b = BytesMut::new();
        self.enc.encode(&f, &mut b).unwrap();
        self.wr.write_all(&b).await.unwrap();
    }
    async fn next(&mut self, wait: Duration) -> Option<Frame> {
        let mut h = [0u8; HEADER_LEN];
        match tokio::time::timeout(wait, self.rd.read_exact(&mut h)).await {
            Ok(Ok(_)) => {}
            _ => return None,
        }
        let head = FrameHead::parse(&h).unwrap();
        let mut p = BytesMut::zeroed(head.payload_len());
        self.rd.read_exact(&mut p).await.unwrap();
        Some(self.dec.decode(head, p.freeze()).unwrap())
    }
    /// Reads frames until quiet, returning DATA bytes per stream and the
    /// other frames.
    async fn drain(&mut self, wait: Duration) -> (usize, Vec<Frame>) {
        let mut n = 0;
        let mut other = Vec::new();
        while let Some(f) = self.next(wait).await {
            match f {
                Frame::Data { data, .. } => n += data.len(),
                f => other.push(f),
            }
        }
        (n, other)
    }
}

fn setup() -> (Session, Peer) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let session = Session::start(a, Config::default(), 0);
    let (rd, wr) = tokio::io::split(b);
    (
        session,
        Peer {
            rd,
            wr,
            enc: Encoder::new(),
            dec: Decoder::new(),
        },
    )
}

fn syn(id: u32, kind: &str) -> Frame {
    Frame::SynStream {
        stream_id: id,
        associated_id: 0,
        priority: 0,
        flags: 0,
        headers: vec![("streamtype".into(), kind.into())],
    }
}

#[tokio::test]
async fn sender_stalls_at_the_window_and_resumes_on_update() {
    let (mut session, mut peer) = setup();
    // An empty SETTINGS marks the peer as one that does flow control.
    peer.send(Frame::Settings {
        flags: 0,
        entries: vec![],
    })
    .await;
    peer.send(syn(1, "stdout")).await;
    let stream = session.accept().await.unwrap();
    assert_eq!(stream.header("StreamType"), Some("stdout"));
    let stream = stream.accept().await.unwrap();
    let total = 300 * 1024;
    let sender = tokio::spawn(async move {
        stream.send(Bytes::from(vec![7u8; total])).await.unwrap();
        stream.finish().await.unwrap();
        stream
    });
    let (got, other) = peer.drain(Duration::from_millis(500)).await;
    assert_eq!(got, 64 * 1024, "the sender must stop at the initial window");
    assert!(other
        .iter()
        .any(|f| matches!(f, Frame::SynReply { stream_id: 1, .. })));
    // Grant the stream more but not the session: still stalled.
    peer.send(Frame::WindowUpdate {
        stream_id: 1,
        delta: 1 << 20,
    })
    .await;
    let (more, _) = peer.drain(Duration::from_millis(300)).await;
    assert_eq!(more, 0, "the session window still blocks");
    peer.send(Frame::WindowUpdate {
        stream_id: 0,
        delta: 100 * 1024,
    })
    .await;
    let (more, _) = peer.drain(Duration::from_millis(300)).await;
    assert_eq!(more, 100 * 1024);
    peer.send(Frame::WindowUpdate {
        stream_id: 0,
        delta: 1 << 20,
    })
    .await;
    let (more, other) = peer.drain(Duration::from_millis(300)).await;
    assert_eq!(got + 100 * 1024 + more, total);
    assert!(other.is_empty(), "{other:?}");
    sender.await.unwrap();
}

#[tokio::test]
async fn a_peer_without_flow_control_gets_everything() {
    // spdystream (kubectl) never sends SETTINGS or WINDOW_UPDATE.
    let (mut session, mut peer) = setup();
    peer.send(syn(1, "stdout")).await;
    let stream = session.accept().await.unwrap().accept().await.unwrap();
    let total = 1 << 20;
    let sender = tokio::spawn(async move {
        stream.send(Bytes::from(vec![1u8; total])).await.unwrap();
        stream
    });
    let (got, _) = peer.drain(Duration::from_millis(1000)).await;
    assert_eq!(got, total);
    sender.await.unwrap();
}

#[tokio::test]
async fn receiver_grants_window_as_data_is_consumed() {
    let (mut session, mut peer) = setup();
    // The greeting: our stream window by SETTINGS, the session's by
    // WINDOW_UPDATE on stream 0.
    let s = peer.next(Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        s,
        Frame::Settings {
            flags: 0,
            entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 256 * 1024)]
        }
    );
    assert!(matches!(
        peer.next(Duration::from_secs(1)).await,
        Some(Frame::WindowUpdate { stream_id: 0, .. })
    ));
    peer.send(syn(1, "stdin")).await;
    let stream = session.accept().await.unwrap().accept().await.unwrap();
    let consumer = tokio::spawn(async move {
        let mut n = 0;
        while let Some(c) = stream.recv().await {
            n += c.len();
        }
        n
    });
    for _ in 0..16 {
        peer.send(Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::from(vec![0u8; 16 * 1024]),
        })
        .await;
    }
    let (_, frames) = peer.drain(Duration::from_millis(300)).await;
    peer.send(Frame::Data {
        stream_id: 1,
        flags: FLAG_FIN,
        data: Bytes::new(),
    })
    .await;
    assert_eq!(consumer.await.unwrap(), 256 * 1024);
    let granted: u32 = frames
        .iter()
        .filter_map(|f| match f {
            Frame::WindowUpdate {
                stream_id: 1,
                delta,
            } => Some(*delta),
            _ => None,
        })
        .sum();
    assert!(granted >= 128 * 1024, "{frames:?}");
}

#[tokio::test]
async fn ping_is_echoed_and_garbage_ends_the_session() {
    let (session, mut peer) = setup();
    peer.send(Frame::Ping { id: 5 }).await;
    let (_, frames) = peer.drain(Duration::from_millis(300)).await;
    assert!(frames.contains(&Frame::Ping { id: 5 }), "{frames:?}");
    // A control frame with SPDY version 2: a protocol error.
    peer.wr
        .write_all(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1])
        .await
        .unwrap();
    let (_, frames) = peer.drain(Duration::from_millis(500)).await;
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::GoAway { status: 1, .. })),
        "{frames:?}"
    );
    tokio::time::timeout(
        Duration::from_secs(2),
        session.peer_gone_token().cancelled(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn idle_sessions_close() {
    let (a, _b) = tokio::io::duplex(1024);
    let cfg = Config {
        idle_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let session = Session::start(a, cfg, 0);
    tokio::time::timeout(Duration::from_secs(2), session.closed_token().cancelled())
        .await
        .unwrap();
}
