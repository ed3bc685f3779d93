//! SPDY/3.1 frames as berthd's streaming server reads them: the 8-byte head
//! (`FrameHead::parse`, bounds before any allocation), the payload
//! (`Decoder::decode`), and header blocks inflated with the SPDY zlib
//! dictionary in one zlib stream across frames.
//!
//! Input: the client's byte stream. Frames are decoded in order until the
//! input ends or a frame is refused (a refused frame ends a real session
//! too). Each decoded frame is encoded again (`Encoder`, with its own zlib
//! stream) and decoded by a second decoder: it must come back the same,
//! header names lowercased as SPDY requires.
#![no_main]

use berth_fuzz::seeds;
use berth_streaming::spdy::frame::{
    Decoder, Encoder, Frame, FrameHead, HEADER_LEN, MAX_CONTROL_PAYLOAD, MAX_DATA_PAYLOAD,
    MAX_HEADER_BLOCK,
};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;

fn lower(frame: &Frame) -> Frame {
    let mut f = frame.clone();
    if let Frame::SynStream { headers, .. }
    | Frame::SynReply { headers, .. }
    | Frame::Headers { headers, .. } = &mut f
    {
        for (n, _) in headers.iter_mut() {
            *n = n.to_ascii_lowercase();
        }
    }
    f
}

fn header_bytes(frame: &Frame) -> usize {
    match frame {
        Frame::SynStream { headers, .. }
        | Frame::SynReply { headers, .. }
        | Frame::Headers { headers, .. } => headers
            .iter()
            .map(|(n, v)| 8 + n.len() + v.len())
            .sum::<usize>(),
        _ => 0,
    }
}

fuzz_target!(
    init: berth_fuzz::seeds_init("spdy_frames", seeds::spdy_frames),
    |data: &[u8]| {
        let mut dec = Decoder::new();
        let mut enc = Encoder::new();
        let mut dec2 = Decoder::new();
        let mut rest = data;
        while rest.len() >= HEADER_LEN {
            let head: [u8; HEADER_LEN] = rest[..HEADER_LEN].try_into().expect("8 bytes");
            let Ok(h) = FrameHead::parse(&head) else {
                return;
            };
            let len = h.payload_len();
            match h {
                FrameHead::Control { .. } => assert!(len <= MAX_CONTROL_PAYLOAD),
                FrameHead::Data { .. } => assert!(len <= MAX_DATA_PAYLOAD),
            }
            if rest.len() < HEADER_LEN + len {
                return;
            }
            let payload = Bytes::copy_from_slice(&rest[HEADER_LEN..HEADER_LEN + len]);
            rest = &rest[HEADER_LEN + len..];
            let Ok(frame) = dec.decode(h, payload) else {
                return;
            };
            assert!(header_bytes(&frame) <= 2 * MAX_HEADER_BLOCK);
            if matches!(frame, Frame::Unknown { .. }) {
                continue;
            }
            let mut out = BytesMut::new();
            enc.encode(&frame, &mut out).expect("a decoded frame encodes");
            let head2: [u8; HEADER_LEN] = out[..HEADER_LEN].try_into().expect("8 bytes");
            let Ok(h2) = FrameHead::parse(&head2) else {
                // Re-compressed headers can exceed the control frame limit.
                assert!(header_bytes(&frame) > 0, "{frame:?} re-encodes too large");
                return;
            };
            assert_eq!(h2.payload_len(), out.len() - HEADER_LEN);
            let again = dec2
                .decode(h2, out.split_off(HEADER_LEN).freeze())
                .expect("an encoded frame decodes");
            assert_eq!(again, lower(&frame));
        }
    }
);
