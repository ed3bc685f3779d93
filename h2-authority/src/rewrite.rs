//! The client-to-server half of an HTTP/2 connection, frame by frame: every
//! header block is decoded with the client's HPACK state and re-encoded with
//! a table of our own, with an `:authority` that h2 would refuse replaced.
//! Everything else passes through byte for byte.

use bytes::{Buf, BufMut, BytesMut};

use crate::hpack::{self, Decoder};

/// The client connection preface (RFC 9113, 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a server may advertise, so frames of
/// this size are always accepted (RFC 9113, 6.5.2).
const MIN_MAX_FRAME_SIZE: usize = 16_384;
/// The HPACK table size h2 advertises by default (SETTINGS_HEADER_TABLE_SIZE):
/// the client's encoder may use up to this much, and so does ours.
const HEADER_TABLE_SIZE: usize = 4_096;

/// What replaces an `:authority` that is not a valid URI authority. It is
/// what current Go gRPC and kubelet send for a Unix socket themselves.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// Bounds on one header block, well above h2's own limits (hyper: a 16 KiB
/// header list, 16 KiB frames), so h2 keeps deciding what is too large for a
/// request; these only stop the rewriter itself from buffering without end.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Encoded bytes of one header block (HEADERS + CONTINUATION fragments).
    pub max_block_bytes: usize,
    /// Decoded size of one header list, counted as RFC 9113 does (name +
    /// value + 32 per field).
    pub max_list_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_block_bytes: 1 << 20,
            max_list_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RewriteError {
    #[error("header block on stream {stream} is larger than {limit} bytes")]
    BlockTooLarge { stream: u32, limit: usize },
    #[error("header list on stream {stream} is larger than {limit} bytes once decoded")]
    ListTooLarge { stream: u32, limit: usize },
    #[error("frame of type {frame_type:#x} on stream {stream} inside a header block of stream {block_stream}")]
    InterruptedBlock {
        frame_type: u8,
        stream: u32,
        block_stream: u32,
    },
    #[error("HEADERS frame on stream {stream}: {cause}")]
    BadHeadersFrame { stream: u32, cause: &'static str },
    #[error("header block on stream {stream} cannot be decoded: {cause}")]
    Hpack { stream: u32, cause: String },
}

enum State {
    /// Reading the connection preface; `usize` bytes of it seen so far.
    Preface(usize),
    /// At a frame boundary.
    FrameHeader,
    /// Passing this many more payload bytes of a frame through.
    Payload(usize),
    /// Not HTTP/2 with prior knowledge: everything passes untouched, and the
    /// server answers as it would without us.
    Transparent,
}

/// A header block being assembled from HEADERS and CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// Rewrites a client's byte stream. Feed it what the client sent with
/// [`Rewriter::process`]; between frames' payloads it may be bypassed (see
/// [`Rewriter::passthrough_len`]).
pub struct Rewriter {
    state: State,
    block: Option<Block>,
    decoder: Decoder,
    limits: Limits,
    rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter::new(Limits::default())
    }
}

impl Rewriter {
    pub fn new(limits: Limits) -> Rewriter {
        Rewriter {
            state: State::Preface(0),
            block: None,
            decoder: Decoder::new(HEADER_TABLE_SIZE),
            limits,
            rewritten: 0,
        }
    }

    /// How many authorities were replaced so far.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// How many of the next input bytes need no rewriting (the rest of a
    /// frame payload that is not a header block, or everything once the
    /// stream is known not to be HTTP/2). Bytes read straight into the
    /// caller's buffer must be reported with [`Rewriter::passed`].
    pub fn passthrough_len(&self) -> usize {
        match self.state {
            State::Payload(n) => n,
            State::Transparent => usize::MAX,
            _ => 0,
        }
    }

    pub fn passed(&mut self, n: usize) {
        if let State::Payload(left) = self.state {
            let left = left.saturating_sub(n);
            self.state = if left == 0 {
                State::FrameHeader
            } else {
                State::Payload(left)
            };
        }
    }

    /// Consumes as much of `input` as can be handled now (a frame header or a
    /// header frame is handled only once whole) and appends what the server
    /// should read to `out`.
    pub fn process(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), RewriteError> {
        loop {
            if input.is_empty() {
                return Ok(());
            }
            match self.state {
                State::Transparent => {
                    out.put(input.split());
                }
                State::Preface(seen) => {
                    let want = &PREFACE[seen..];
                    let n = want.len().min(input.len());
                    if input[..n] != want[..n] {
                        // Not a preface: hand back what was held and step aside.
                        out.put_slice(&PREFACE[..seen]);
                        self.state = State::Transparent;
                        continue;
                    }
                    input.advance(n);
                    if seen + n == PREFACE.len() {
                        out.put_slice(PREFACE);
                        self.state = State::FrameHeader;
                    } else {
                        self.state = State::Preface(seen + n);
                    }
                }
                State::Payload(left) => {
                    let n = left.min(input.len());
                    out.put(input.split_to(n));
                    self.passed(n);
                }
                State::FrameHeader => {
                    if input.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let len = usize::from(input[0]) << 16
                        | usize::from(input[1]) << 8
                        | usize::from(input[2]);
                    let frame_type = input[3];
                    let flags = input[4];
                    let stream =
                        u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;
                    let header_frame =
                        frame_type == TYPE_HEADERS || frame_type == TYPE_CONTINUATION;
                    if let Some(block) = &self.block {
                        if frame_type != TYPE_CONTINUATION || stream != block.stream {
                            return Err(RewriteError::InterruptedBlock {
                                frame_type,
                                stream,
                                block_stream: block.stream,
                            });
                        }
                    }
                    if !header_frame || (frame_type == TYPE_CONTINUATION && self.block.is_none()) {
                        // A stray CONTINUATION is h2's to refuse.
                        out.put(input.split_to(FRAME_HEADER_LEN));
                        self.state = if len == 0 {
                            State::FrameHeader
                        } else {
                            State::Payload(len)
                        };
                        continue;
                    }
                    let held = self.block.as_ref().map_or(0, |b| b.fragment.len());
                    if held + len > self.limits.max_block_bytes + 5 + 256 {
                        return Err(RewriteError::BlockTooLarge {
                            stream,
                            limit: self.limits.max_block_bytes,
                        });
                    }
                    if input.len() < FRAME_HEADER_LEN + len {
                        input.reserve(FRAME_HEADER_LEN + len - input.len());
                        return Ok(());
                    }
                    input.advance(FRAME_HEADER_LEN);
                    let payload = input.split_to(len);
                    self.header_frame(frame_type, flags, stream, &payload)?;
                    if flags & FLAG_END_HEADERS != 0 {
                        self.finish_block(out)?;
                    }
                }
            }
        }
    }

    fn header_frame(
        &mut self,
        frame_type: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> Result<(), RewriteError> {
        let bad = |cause| RewriteError::BadHeadersFrame { stream, cause };
        let mut fragment = payload;
        if frame_type == TYPE_HEADERS {
            let mut pad = 0;
            if flags & FLAG_PADDED != 0 {
                let (&p, rest) = fragment
                    .split_first()
                    .ok_or_else(|| bad("PADDED without a pad length"))?;
                pad = usize::from(p);
                fragment = rest;
            }
            let mut priority = None;
            if flags & FLAG_PRIORITY != 0 {
                if fragment.len() < 5 {
                    return Err(bad("PRIORITY without its 5 bytes"));
                }
                let (p, rest) = fragment.split_at(5);
                priority = Some([p[0], p[1], p[2], p[3], p[4]]);
                fragment = rest;
            }
            if pad > fragment.len() {
                return Err(bad("padding longer than the payload"));
            }
            fragment = &fragment[..fragment.len() - pad];
            self.block = Some(Block {
                stream,
                end_stream: flags & FLAG_END_STREAM != 0,
                priority,
                fragment: Vec::new(),
            });
        }
        if let Some(block) = &mut self.block {
            if block.fragment.len() + fragment.len() > self.limits.max_block_bytes {
                return Err(RewriteError::BlockTooLarge {
                    stream,
                    limit: self.limits.max_block_bytes,
                });
            }
            block.fragment.extend_from_slice(fragment);
        }
        Ok(())
    }

    /// Decodes the whole block, fixes `:authority`, and writes it back out as
    /// HEADERS (+ CONTINUATION) frames.
    fn finish_block(&mut self, out: &mut BytesMut) -> Result<(), RewriteError> {
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let stream = block.stream;
        let mut encoded = Vec::with_capacity(block.fragment.len() * 2 + 16);
        if let Some(p) = block.priority {
            encoded.extend_from_slice(&p);
        }
        let mut list_bytes = 0usize;
        let mut too_large = false;
        let mut rewritten = false;
        let limit = self.limits.max_list_bytes;
        self.decoder
            .decode(&block.fragment, |name, value| {
                list_bytes += name.len() + value.len() + 32;
                if list_bytes > limit {
                    too_large = true;
                    return;
                }
                let value =
                    if name == b":authority" && http::uri::Authority::try_from(value).is_err() {
                        rewritten = true;
                        REPLACEMENT_AUTHORITY
                    } else {
                        value
                    };
                hpack::encode([(name, value)], &mut encoded);
            })
            .map_err(|e| RewriteError::Hpack {
                stream,
                cause: e.to_string(),
            })?;
        if too_large {
            return Err(RewriteError::ListTooLarge { stream, limit });
        }
        if rewritten {
            self.rewritten += 1;
        }
        let mut flags = 0;
        if block.end_stream {
            flags |= FLAG_END_STREAM;
        }
        if block.priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        let mut frame_type = TYPE_HEADERS;
        let mut rest = &encoded[..];
        loop {
            let n = rest.len().min(MIN_MAX_FRAME_SIZE);
            let (chunk, tail) = rest.split_at(n);
            if tail.is_empty() {
                flags |= FLAG_END_HEADERS;
            }
            put_frame_header(out, n, frame_type, flags, stream);
            out.put_slice(chunk);
            if tail.is_empty() {
                return Ok(());
            }
            rest = tail;
            frame_type = TYPE_CONTINUATION;
            flags = 0;
        }
    }
}

fn put_frame_header(out: &mut BytesMut, len: usize, frame_type: u8, flags: u8, stream: u32) {
    out.put_slice(&(len as u32).to_be_bytes()[1..]);
    out.put_u8(frame_type);
    out.put_u8(flags);
    out.put_u32(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Encoder;

    /// A client's side of a connection: its own HPACK encoder, raw frames.
    pub(crate) struct Client {
        enc: Encoder<'static>,
        pub bytes: Vec<u8>,
    }

    impl Client {
        pub fn new() -> Client {
            let mut bytes = PREFACE.to_vec();
            frame(&mut bytes, 0x4, 0, 0, &[]); // empty SETTINGS
            Client {
                enc: Encoder::new(),
                bytes,
            }
        }

        pub fn headers(&mut self, stream: u32, fields: &[(&str, &str)], flags: u8) {
            let block = self
                .enc
                .encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
            frame(
                &mut self.bytes,
                TYPE_HEADERS,
                flags | FLAG_END_HEADERS,
                stream,
                &block,
            );
        }
    }

    pub(crate) fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.push(ty);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// The frames in `bytes` after the preface: (type, flags, stream, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE));
        let mut rest = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    /// Runs `input` through a rewriter in pieces of `step` bytes, using the
    /// pass-through path as the connection wrapper does.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, Rewriter) {
        let mut rw = Rewriter::default();
        let mut out = BytesMut::new();
        let mut pending = BytesMut::new();
        for chunk in input.chunks(step) {
            let mut chunk = chunk;
            if pending.is_empty() {
                let pass = rw.passthrough_len().min(chunk.len());
                out.extend_from_slice(&chunk[..pass]);
                rw.passed(pass);
                chunk = &chunk[pass..];
            }
            pending.extend_from_slice(chunk);
            rw.process(&mut pending, &mut out).unwrap();
        }
        assert!(pending.is_empty(), "bytes left over: {pending:?}");
        (out.to_vec(), rw)
    }

    fn decoded_blocks(out: &[u8]) -> Vec<Vec<(String, String)>> {
        let mut dec = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        for (ty, flags, _, payload) in frames(out) {
            if ty == TYPE_HEADERS || ty == TYPE_CONTINUATION {
                let mut p = &payload[..];
                if ty == TYPE_HEADERS && flags & FLAG_PRIORITY != 0 {
                    p = &p[5..];
                }
                block.extend_from_slice(p);
                if flags & FLAG_END_HEADERS != 0 {
                    let fields = dec.decode(&block).unwrap();
                    blocks.push(
                        fields
                            .into_iter()
                            .map(|(n, v)| {
                                (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                            })
                            .collect(),
                    );
                    block.clear();
                }
            }
        }
        blocks
    }

    fn request(authority: &str) -> Vec<(&'static str, String)> {
        vec![
            (":method", "POST".into()),
            (":scheme", "http".into()),
            (":path", "/runtime.v1.RuntimeService/Version".into()),
            (":authority", authority.into()),
            ("content-type", "application/grpc".into()),
            ("te", "trailers".into()),
        ]
    }

    fn send(c: &mut Client, stream: u32, fields: &[(&'static str, String)]) {
        let f: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        c.headers(stream, &f, 0);
    }

    #[test]
    fn invalid_authorities_become_localhost_in_every_split() {
        let mut c = Client::new();
        send(&mut c, 1, &request("/run/berth/berth.sock"));
        frame(
            &mut c.bytes,
            0x0,
            FLAG_END_STREAM,
            1,
            b"\0\0\0\0\x02\x0a\x00",
        );
        // The second request reuses the client's dynamic table entries.
        send(&mut c, 3, &request("/run/berth/berth.sock"));
        send(&mut c, 5, &request("run%2Fberth%2Fberth.sock"));
        send(&mut c, 7, &request("localhost:1234"));
        for step in [1, 2, 7, 9, 10, 64, c.bytes.len()] {
            let (out, rw) = run(&c.bytes, step);
            let blocks = decoded_blocks(&out);
            assert_eq!(blocks.len(), 4);
            let authority = |b: &Vec<(String, String)>| {
                b.iter().find(|(n, _)| n == ":authority").unwrap().1.clone()
            };
            assert_eq!(authority(&blocks[0]), "localhost");
            assert_eq!(authority(&blocks[1]), "localhost");
            assert_eq!(authority(&blocks[2]), "localhost");
            assert_eq!(
                authority(&blocks[3]),
                "localhost:1234",
                "a valid authority is kept"
            );
            assert_eq!(rw.rewritten(), 3);
            for b in &blocks {
                assert_eq!(b[0], (":method".into(), "POST".into()));
                assert_eq!(
                    b[2],
                    (":path".into(), "/runtime.v1.RuntimeService/Version".into())
                );
                assert_eq!(b.len(), 6, "no field lost or added");
            }
            // The DATA frame is untouched.
            let data: Vec<_> = frames(&out).into_iter().filter(|f| f.0 == 0).collect();
            assert_eq!(
                data,
                vec![(0, FLAG_END_STREAM, 1, b"\0\0\0\0\x02\x0a\x00".to_vec())]
            );
        }
    }

    #[test]
    fn huffman_coded_and_padded_blocks_with_priority_and_continuation() {
        // RFC 7541 C.4.1: a Huffman-coded request; ":authority: www.example.com".
        let block1 = hex("828684418cf1e3c2e5f23a6ba0ab90f4ff");
        let mut bytes = PREFACE.to_vec();
        // HEADERS, PADDED + PRIORITY, first half; CONTINUATION with the rest.
        let (a, b) = block1.split_at(5);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 15]); // priority
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        frame(
            &mut bytes,
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            1,
            &payload,
        );
        frame(&mut bytes, TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b);
        let (out, rw) = run(&bytes, 3);
        let f = frames(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].1, FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS);
        assert_eq!(&f[0].3[..5], &[0, 0, 0, 0, 15]);
        let blocks = decoded_blocks(&out);
        assert_eq!(
            blocks[0],
            vec![
                (":method".into(), "GET".into()),
                (":scheme".into(), "http".into()),
                (":path".into(), "/".into()),
                (":authority".into(), "www.example.com".into()),
            ]
        );
        assert_eq!(rw.rewritten(), 0);
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let mut c = Client::new();
        let big = "x".repeat(40_000);
        let mut fields = request("/s.sock");
        fields.push(("x-big", big.clone()));
        send(&mut c, 1, &fields);
        let (out, _) = run(&c.bytes, 4096);
        let f: Vec<_> = frames(&out).into_iter().filter(|f| f.0 != 0x4).collect();
        assert!(f.len() >= 3);
        assert!(f.iter().all(|f| f.3.len() <= MIN_MAX_FRAME_SIZE));
        assert_eq!(f[0].0, TYPE_HEADERS);
        assert!(f[1..].iter().all(|f| f.0 == TYPE_CONTINUATION));
        assert_eq!(decoded_blocks(&out)[0].last().unwrap().1, big);
    }

    #[test]
    fn bounds_and_broken_input_are_errors() {
        let mut rw = Rewriter::new(Limits {
            max_block_bytes: 100,
            max_list_bytes: 1_000,
        });
        let mut c = Client::new();
        send(&mut c, 1, &[("x-a", "y".repeat(200))]);
        let err = rw
            .process(&mut BytesMut::from(&c.bytes[..]), &mut BytesMut::new())
            .unwrap_err();
        assert_eq!(
            err,
            RewriteError::BlockTooLarge {
                stream: 1,
                limit: 100
            }
        );

        // A small block that expands past the list bound: one 3 KiB entry
        // referenced over and over.
        let mut rw = Rewriter::new(Limits {
            max_block_bytes: 10_000,
            max_list_bytes: 20_000,
        });
        let mut c = Client::new();
        send(&mut c, 1, &[("x-a", "y".repeat(3_000))]);
        let mut block = Vec::new();
        block.resize(50, 0x80 | 62); // indexed: the dynamic entry
        frame(&mut c.bytes, TYPE_HEADERS, FLAG_END_HEADERS, 3, &block);
        let err = rw
            .process(&mut BytesMut::from(&c.bytes[..]), &mut BytesMut::new())
            .unwrap_err();
        assert_eq!(
            err,
            RewriteError::ListTooLarge {
                stream: 3,
                limit: 20_000
            }
        );

        // Garbage HPACK, and a block interrupted by another frame.
        let mut bytes = PREFACE.to_vec();
        frame(
            &mut bytes,
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        );
        let err =
            Rewriter::default().process(&mut BytesMut::from(&bytes[..]), &mut BytesMut::new());
        assert!(
            matches!(err, Err(RewriteError::Hpack { stream: 1, .. })),
            "{err:?}"
        );
        let mut bytes = PREFACE.to_vec();
        frame(&mut bytes, TYPE_HEADERS, 0, 1, &[0x82]);
        frame(&mut bytes, 0x0, 0, 1, b"x");
        let err =
            Rewriter::default().process(&mut BytesMut::from(&bytes[..]), &mut BytesMut::new());
        assert!(
            matches!(err, Err(RewriteError::InterruptedBlock { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn not_http2_passes_untouched() {
        let input = b"GET / HTTP/1.1\r\nHost: /run/x.sock\r\n\r\n";
        let (out, _) = run(input, 5);
        assert_eq!(out, input);
        let input = b"PRI * HTTP/2.0\r\nxx";
        let mut rw = Rewriter::default();
        let mut out = BytesMut::new();
        rw.process(&mut BytesMut::from(&input[..]), &mut out)
            .unwrap();
        assert_eq!(&out[..], &input[..]);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
