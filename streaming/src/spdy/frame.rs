//! SPDY/3 framing (the frame layout SPDY/3.1 keeps unchanged): the 8-byte
//! frame header, the control frames, DATA frames, and the name/value header
//! blocks, which are zlib-compressed with one context per direction for the
//! whole session, preloaded with the SPDY/3 dictionary.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::SPDY3_DICTIONARY;

/// The protocol version carried in every control frame. SPDY/3.1 did not
/// change it: kubectl (spdystream) and node-spdy both send 3.
pub const VERSION: u16 = 3;

/// Frame header length (both kinds).
pub const HEADER_LEN: usize = 8;

/// Largest payload the 24-bit length field can describe.
pub const MAX_LENGTH: usize = (1 << 24) - 1;

/// Largest control frame payload we accept. Header blocks are tiny in this
/// protocol (a handful of headers per stream); anything bigger is an attack
/// on our memory, not a client.
pub const MAX_CONTROL_PAYLOAD: usize = 64 * 1024;

/// Largest DATA payload we accept. client-go writes 32 KiB at a time
/// (`io.Copy`), node-spdy at most 16 KiB per frame. A bigger frame would
/// overrun the receive windows we advertise anyway.
pub const MAX_DATA_PAYLOAD: usize = 1024 * 1024;

/// Largest decompressed header block: bounds what a zlib bomb can cost.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

/// SETTINGS id for the initial per-stream window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// RST_STREAM status codes (SPDY/3 section 2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RstStatus {
    ProtocolError = 1,
    InvalidStream = 2,
    RefusedStream = 3,
    UnsupportedVersion = 4,
    Cancel = 5,
    InternalError = 6,
    FlowControlError = 7,
    StreamInUse = 8,
    StreamAlreadyClosed = 9,
    FrameTooLarge = 11,
}

/// GOAWAY status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum GoAwayStatus {
    Ok = 0,
    ProtocolError = 1,
    InternalError = 2,
}

/// A header block: names are lowercase on the wire; several values of one
/// name are joined with NUL.
pub type Headers = Vec<(String, String)>;

/// Returns the first value of `name` (case-insensitive, as Go's
/// `http.Header.Get` would find it).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_id: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        /// (flags, id, value)
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame type we do not act on (e.g. CREDENTIAL); the spec
    /// says to ignore those.
    Unknown {
        frame_type: u16,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("frame too large: {kind} frame with {len} bytes")]
    TooLarge { kind: &'static str, len: usize },
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("stream id 0 in a {0} frame")]
    ZeroStreamId(&'static str),
    #[error("header block: {0}")]
    HeaderBlock(&'static str),
    #[error("header compression: {0}")]
    Compression(String),
}

/// The parsed 8-byte frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameHead {
    Control {
        frame_type: u16,
        flags: u8,
        len: usize,
    },
    Data {
        stream_id: u32,
        flags: u8,
        len: usize,
    },
}

impl FrameHead {
    /// Parses and bounds-checks a frame header, before any payload is read
    /// (so an oversized length never makes us allocate).
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<FrameHead, FrameError> {
        let first = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let flags = b[4];
        let len = u32::from_be_bytes([0, b[5], b[6], b[7]]) as usize;
        if first & 0x8000_0000 != 0 {
            let version = ((first >> 16) & 0x7fff) as u16;
            if version != VERSION {
                return Err(FrameError::Version(version));
            }
            if len > MAX_CONTROL_PAYLOAD {
                return Err(FrameError::TooLarge {
                    kind: "control",
                    len,
                });
            }
            Ok(FrameHead::Control {
                frame_type: (first & 0xffff) as u16,
                flags,
                len,
            })
        } else {
            if len > MAX_DATA_PAYLOAD {
                return Err(FrameError::TooLarge { kind: "data", len });
            }
            Ok(FrameHead::Data {
                stream_id: first & 0x7fff_ffff,
                flags,
                len,
            })
        }
    }

    pub fn payload_len(&self) -> usize {
        match self {
            FrameHead::Control { len, .. } | FrameHead::Data { len, .. } => *len,
        }
    }
}

/// Decodes frames of one direction; owns that direction's zlib context.
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Decoder {
            inflate: Decompress::new(true),
        }
    }

    /// Decodes one frame from its header and complete payload.
    pub fn decode(&mut self, head: FrameHead, mut p: Bytes) -> Result<Frame, FrameError> {
        let (frame_type, flags) = match head {
            FrameHead::Data {
                stream_id, flags, ..
            } => {
                if stream_id == 0 {
                    return Err(FrameError::ZeroStreamId("DATA"));
                }
                return Ok(Frame::Data {
                    stream_id,
                    flags,
                    data: p,
                });
            }
            FrameHead::Control {
                frame_type, flags, ..
            } => (frame_type, flags),
        };
        let need = |p: &Bytes, n: usize, what: &'static str| {
            if p.len() < n {
                Err(FrameError::Malformed(what))
            } else {
                Ok(())
            }
        };
        match frame_type {
            TYPE_SYN_STREAM => {
                need(&p, 10, "SYN_STREAM")?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let associated_id = p.get_u32() & 0x7fff_ffff;
                let priority = p.get_u8() >> 5;
                let _slot = p.get_u8();
                if stream_id == 0 {
                    return Err(FrameError::ZeroStreamId("SYN_STREAM"));
                }
                let headers = self.header_block(&p)?;
                Ok(Frame::SynStream {
                    stream_id,
                    associated_id,
                    priority,
                    flags,
                    headers,
                })
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                let what = if frame_type == TYPE_SYN_REPLY {
                    "SYN_REPLY"
                } else {
                    "HEADERS"
                };
                need(&p, 4, what)?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                if stream_id == 0 {
                    return Err(FrameError::ZeroStreamId(what));
                }
                let headers = self.header_block(&p)?;
                Ok(if frame_type == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                })
            }
            TYPE_RST_STREAM => {
                if p.len() != 8 {
                    return Err(FrameError::Malformed("RST_STREAM"));
                }
                Ok(Frame::RstStream {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                })
            }
            TYPE_SETTINGS => {
                need(&p, 4, "SETTINGS")?;
                let n = p.get_u32() as usize;
                if p.len() != n.checked_mul(8).ok_or(FrameError::Malformed("SETTINGS"))? {
                    return Err(FrameError::Malformed("SETTINGS"));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let fid = p.get_u32();
                    entries.push(((fid >> 24) as u8, fid & 0x00ff_ffff, p.get_u32()));
                }
                Ok(Frame::Settings { flags, entries })
            }
            TYPE_PING => {
                if p.len() != 4 {
                    return Err(FrameError::Malformed("PING"));
                }
                Ok(Frame::Ping { id: p.get_u32() })
            }
            TYPE_GOAWAY => {
                // SPDY/3 added the status word; accept its absence too.
                if p.len() != 8 && p.len() != 4 {
                    return Err(FrameError::Malformed("GOAWAY"));
                }
                let last_good_stream_id = p.get_u32() & 0x7fff_ffff;
                let status = if p.has_remaining() { p.get_u32() } else { 0 };
                Ok(Frame::GoAway {
                    last_good_stream_id,
                    status,
                })
            }
            TYPE_WINDOW_UPDATE => {
                if p.len() != 8 {
                    return Err(FrameError::Malformed("WINDOW_UPDATE"));
                }
                Ok(Frame::WindowUpdate {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    delta: p.get_u32() & 0x7fff_ffff,
                })
            }
            other => Ok(Frame::Unknown { frame_type: other }),
        }
    }

    /// Inflates and parses a name/value block. The zlib stream continues
    /// across frames, so a block that fails to inflate poisons the session
    /// (the caller must treat the error as fatal).
    fn header_block(&mut self, input: &[u8]) -> Result<Headers, FrameError> {
        let raw = self.inflate_block(input)?;
        parse_nv_block(&raw)
    }

    fn inflate_block(&mut self, mut input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out: Vec<u8> = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(FrameError::HeaderBlock(
                        "decompressed header block too large",
                    ));
                }
                out.reserve(out.len().max(256));
            }
            let before_in = self.inflate.total_in();
            let before_out = out.len();
            let res = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - before_in) as usize;
            input = &input[consumed..];
            match res {
                Ok(Status::Ok) | Ok(Status::BufError) => {
                    let produced = out.len() - before_out;
                    if input.is_empty() && out.len() < out.capacity() {
                        return Ok(out);
                    }
                    if consumed == 0 && produced == 0 && out.len() < out.capacity() {
                        return Err(FrameError::Compression("zlib made no progress".into()));
                    }
                }
                Ok(Status::StreamEnd) => {
                    // The peer ended its zlib stream: legal only if nothing
                    // follows, and no later block can be read. Take this one.
                    return Ok(out);
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(SPDY3_DICTIONARY)
                        .map_err(|e| FrameError::Compression(e.to_string()))?;
                }
                Err(e) => return Err(FrameError::Compression(e.to_string())),
            }
        }
    }
}

fn parse_nv_block(mut b: &[u8]) -> Result<Headers, FrameError> {
    fn take_u32(b: &mut &[u8]) -> Result<u32, FrameError> {
        if b.len() < 4 {
            return Err(FrameError::HeaderBlock("truncated"));
        }
        Ok(b.get_u32())
    }
    fn take_str(b: &mut &[u8]) -> Result<String, FrameError> {
        let n = take_u32(b)? as usize;
        if b.len() < n {
            return Err(FrameError::HeaderBlock("truncated"));
        }
        let s = std::str::from_utf8(&b[..n])
            .map_err(|_| FrameError::HeaderBlock("not UTF-8"))?
            .to_owned();
        b.advance(n);
        Ok(s)
    }
    let count = take_u32(&mut b)? as usize;
    // Each pair needs at least 8 bytes: a count beyond that is a lie.
    if count > b.len() / 8 {
        return Err(FrameError::HeaderBlock("pair count exceeds block"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take_str(&mut b)?;
        if name.is_empty() {
            return Err(FrameError::HeaderBlock("empty header name"));
        }
        let value = take_str(&mut b)?;
        headers.push((name, value));
    }
    Ok(headers)
}

/// Encodes frames of one direction; owns that direction's zlib context.
pub struct Encoder {
    deflate: Compress,
    dictionary_set: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        Encoder {
            deflate: Compress::new(Compression::default(), true),
            dictionary_set: false,
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), FrameError> {
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_LENGTH {
                    return Err(FrameError::TooLarge {
                        kind: "data",
                        len: data.len(),
                    });
                }
                out.put_u32(stream_id & 0x7fff_ffff);
                put_flags_len(out, *flags, data.len());
                out.extend_from_slice(data);
                Ok(())
            }
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                flags,
                headers,
            } => {
                let block = self.header_block(headers)?;
                let mut p = BytesMut::with_capacity(10 + block.len());
                p.put_u32(*stream_id & 0x7fff_ffff);
                p.put_u32(*associated_id & 0x7fff_ffff);
                p.put_u8((priority & 0x7) << 5);
                p.put_u8(0);
                p.extend_from_slice(&block);
                put_control(out, TYPE_SYN_STREAM, *flags, &p)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let t = if matches!(frame, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                let block = self.header_block(headers)?;
                let mut p = BytesMut::with_capacity(4 + block.len());
                p.put_u32(*stream_id & 0x7fff_ffff);
                p.extend_from_slice(&block);
                put_control(out, t, *flags, &p)
            }
            Frame::RstStream { stream_id, status } => {
                let mut p = BytesMut::with_capacity(8);
                p.put_u32(*stream_id & 0x7fff_ffff);
                p.put_u32(*status);
                put_control(out, TYPE_RST_STREAM, 0, &p)
            }
            Frame::Settings { flags, entries } => {
                let mut p = BytesMut::with_capacity(4 + 8 * entries.len());
                p.put_u32(entries.len() as u32);
                for (f, id, v) in entries {
                    p.put_u32((u32::from(*f) << 24) | (id & 0x00ff_ffff));
                    p.put_u32(*v);
                }
                put_control(out, TYPE_SETTINGS, *flags, &p)
            }
            Frame::Ping { id } => put_control(out, TYPE_PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut p = BytesMut::with_capacity(8);
                p.put_u32(last_good_stream_id & 0x7fff_ffff);
                p.put_u32(*status);
                put_control(out, TYPE_GOAWAY, 0, &p)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = BytesMut::with_capacity(8);
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_u32(delta & 0x7fff_ffff);
                put_control(out, TYPE_WINDOW_UPDATE, 0, &p)
            }
            Frame::Unknown { .. } => Err(FrameError::Malformed("unknown frame cannot be sent")),
        }
    }

    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, FrameError> {
        let mut raw = BytesMut::new();
        raw.put_u32(headers.len() as u32);
        for (n, v) in headers {
            // SPDY requires lowercase names; spdystream rejects others.
            let n = n.to_ascii_lowercase();
            raw.put_u32(n.len() as u32);
            raw.extend_from_slice(n.as_bytes());
            raw.put_u32(v.len() as u32);
            raw.extend_from_slice(v.as_bytes());
        }
        if !self.dictionary_set {
            self.deflate
                .set_dictionary(SPDY3_DICTIONARY)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            self.dictionary_set = true;
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input: &[u8] = &raw;
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let before_in = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            input = &input[(self.deflate.total_in() - before_in) as usize..];
            // The sync flush is complete once all input is taken and zlib
            // stopped short of filling the buffer.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn put_flags_len(out: &mut BytesMut, flags: u8, len: usize) {
    out.put_u8(flags);
    out.put_u8((len >> 16) as u8);
    out.put_u16(len as u16);
}

fn put_control(out: &mut BytesMut, t: u16, flags: u8, payload: &[u8]) -> Result<(), FrameError> {
    if payload.len() > MAX_LENGTH {
        return Err(FrameError::TooLarge {
            kind: "control",
            len: payload.len(),
        });
    }
    out.put_u16(0x8000 | VERSION);
    out.put_u16(t);
    put_flags_len(out, flags, payload.len());
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits an encoded buffer into frames again.
    fn decode_all(dec: &mut Decoder, mut buf: Bytes) -> Result<Vec<Frame>, FrameError> {
        let mut frames = Vec::new();
        while !buf.is_empty() {
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&buf[..HEADER_LEN]);
            let head = FrameHead::parse(&h)?;
            buf.advance(HEADER_LEN);
            let p = buf.split_to(head.payload_len());
            frames.push(dec.decode(head, p)?);
        }
        Ok(frames)
    }

    fn hdrs(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn round_trip_all_frames_with_one_zlib_context() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 0,
                flags: 0,
                headers: hdrs(&[("streamtype", "error")]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_id: 0,
                priority: 7,
                flags: FLAG_FIN,
                headers: hdrs(&[("streamtype", "stdin"), ("x-multi", "a\0b")]),
            },
            Frame::SynReply {
                stream_id: 3,
                flags: 0,
                headers: hdrs(&[(":status", "200")]),
            },
            Frame::Headers {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: hdrs(&[]),
            },
            Frame::RstStream {
                stream_id: 5,
                status: RstStatus::Cancel as u32,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20), (1, 4, 100)],
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good_stream_id: 9,
                status: GoAwayStatus::Ok as u32,
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 12345,
            },
            Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello"),
            },
            // The same headers again: the shared zlib context now
            // back-references the earlier block.
            Frame::SynStream {
                stream_id: 11,
                associated_id: 0,
                priority: 0,
                flags: 0,
                headers: hdrs(&[("streamtype", "error")]),
            },
        ];
        let mut enc = Encoder::new();
        let mut buf = BytesMut::new();
        let mut sizes = Vec::new();
        for f in &frames {
            let before = buf.len();
            enc.encode(f, &mut buf).unwrap();
            sizes.push(buf.len() - before);
        }
        // The repeated header block compresses better the second time,
        // which only happens if the context really spans frames.
        assert!(sizes[10] < sizes[0], "{sizes:?}");
        let mut dec = Decoder::new();
        assert_eq!(decode_all(&mut dec, buf.freeze()).unwrap(), frames);
    }

    #[test]
    fn a_fresh_decoder_cannot_read_a_continued_context() {
        let mut enc = Encoder::new();
        let mut buf = BytesMut::new();
        let f = Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: hdrs(&[("a", "b")]),
        };
        enc.encode(&f, &mut buf).unwrap();
        let first_len = buf.len();
        enc.encode(&f, &mut buf).unwrap();
        let mut buf = buf.freeze();
        buf.advance(first_len);
        // Decoding the second block without the first must fail cleanly.
        assert!(decode_all(&mut Decoder::new(), buf).is_err());
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let mut dec = Decoder::new();
        let ctl = |t: u16, payload: &[u8]| {
            let mut b = BytesMut::new();
            put_control(&mut b, t, 0, payload).unwrap();
            b.freeze()
        };
        for (t, p) in [
            (TYPE_SYN_STREAM, &b"\x00\x00\x00\x01"[..]),
            (
                TYPE_SYN_STREAM,
                &b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00garbage"[..],
            ),
            (
                TYPE_SYN_STREAM,
                &b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"[..],
            ),
            (TYPE_SYN_REPLY, &b"\x00\x00"[..]),
            (TYPE_RST_STREAM, &b"\x00\x00\x00\x01"[..]),
            (TYPE_SETTINGS, &b"\xff\xff\xff\xff"[..]),
            (TYPE_SETTINGS, &b"\x00\x00\x00\x02\x00\x00\x00\x07"[..]),
            (TYPE_PING, &b""[..]),
            (TYPE_GOAWAY, &b"\x00"[..]),
            (TYPE_WINDOW_UPDATE, &b"\x00\x00\x00\x01"[..]),
        ] {
            let r = decode_all(&mut dec, ctl(t, p));
            assert!(r.is_err(), "type {t} payload {p:?} gave {r:?}");
            dec = Decoder::new();
        }
        // Wrong version, oversized lengths, DATA on stream 0.
        assert!(matches!(
            FrameHead::parse(&[0x80, 2, 0, 1, 0, 0, 0, 0]),
            Err(FrameError::Version(2))
        ));
        assert!(FrameHead::parse(&[0x80, 3, 0, 1, 0, 0xff, 0xff, 0xff]).is_err());
        assert!(FrameHead::parse(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff]).is_err());
        let head = FrameHead::parse(&[0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert!(dec.decode(head, Bytes::new()).is_err());
        // A header block whose pair count lies.
        let mut raw = BytesMut::new();
        raw.put_u32(1000);
        assert!(parse_nv_block(&raw).is_err());
        // A header block whose name length runs past the end.
        let mut raw = BytesMut::new();
        raw.put_u32(1);
        raw.put_u32(100);
        raw.put_u32(0);
        assert!(parse_nv_block(&raw).is_err());
    }

    #[test]
    fn unknown_control_frames_are_ignored() {
        let mut b = BytesMut::new();
        put_control(&mut b, 10, 0, b"credential").unwrap();
        let frames = decode_all(&mut Decoder::new(), b.freeze()).unwrap();
        assert_eq!(frames, vec![Frame::Unknown { frame_type: 10 }]);
    }

    #[test]
    fn header_lookup_is_case_insensitive() {
        let h = hdrs(&[("streamtype", "data"), ("port", "80\x0081")]);
        assert_eq!(header(&h, "streamType"), Some("data"));
        assert_eq!(header(&h, "Port"), Some("80"));
        assert_eq!(header(&h, "requestID"), None);
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(SPDY3_DICTIONARY.len(), 1423);
        assert_eq!(&SPDY3_DICTIONARY[..11], b"\x00\x00\x00\x07options");
    }
}
