//! Just enough HPACK (RFC 7541) for the rewriter: a decoder that follows the
//! client's dynamic table, and an encoder that never uses one (so the
//! server's table stays empty and cannot disagree with ours).

use std::collections::VecDeque;

use crate::tables::{HUFFMAN_CODES, STATIC_TABLE};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HpackError {
    #[error("truncated header block")]
    Truncated,
    #[error("integer overflow")]
    Overflow,
    #[error("index {0} is not in the table")]
    BadIndex(usize),
    #[error("table size update to {size} above the limit {limit}")]
    TableSize { size: usize, limit: usize },
    #[error("table size update after a header field")]
    LateSizeUpdate,
    #[error("bad Huffman code")]
    Huffman,
}

/// The decoding side of one connection's header compression.
pub struct Decoder {
    /// Newest first.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE as the server advertised it.
    limit: usize,
    huffman: Huffman,
}

impl Decoder {
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
            huffman: Huffman::new(),
        }
    }

    /// Decodes one whole header block, calling `field` for each field.
    pub fn decode(
        &mut self,
        mut block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut first = true;
        while let Some(&b) = block.first() {
            if b & 0x80 != 0 {
                let index = integer(&mut block, 7)?;
                let (n, v) = self.get(index)?;
                field(n, v);
            } else if b & 0xe0 == 0x20 {
                if !first {
                    return Err(HpackError::LateSizeUpdate);
                }
                let size = integer(&mut block, 5)?;
                if size > self.limit {
                    return Err(HpackError::TableSize {
                        size,
                        limit: self.limit,
                    });
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                let (prefix, indexing) = if b & 0x40 != 0 { (6, true) } else { (4, false) };
                let index = integer(&mut block, prefix)?;
                let name = if index == 0 {
                    self.string(&mut block)?
                } else {
                    self.get(index)?.0.to_vec()
                };
                let value = self.string(&mut block)?;
                field(&name, &value);
                if indexing {
                    self.insert(name, value);
                }
            }
            first = false;
        }
        Ok(())
    }

    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            1..=61 => {
                let (n, v) = STATIC_TABLE[index - 1];
                Ok((n.as_bytes(), v.as_bytes()))
            }
            _ => self
                .table
                .get(index.wrapping_sub(62))
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + 32;
        self.evict(size);
        if size <= self.max_size {
            self.size += size;
            self.table.push_front((name, value));
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit (or the table
    /// is empty).
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }

    fn string(&self, block: &mut &[u8]) -> Result<Vec<u8>, HpackError> {
        let huffman = block.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = integer(block, 7)?;
        if len > block.len() {
            return Err(HpackError::Truncated);
        }
        let (raw, rest) = block.split_at(len);
        *block = rest;
        if huffman {
            self.huffman.decode(raw)
        } else {
            Ok(raw.to_vec())
        }
    }
}

/// An integer with an `n`-bit prefix (RFC 7541, 5.1); the prefix byte's
/// other bits are ignored.
fn integer(block: &mut &[u8], n: u8) -> Result<usize, HpackError> {
    let (&first, mut rest) = block.split_first().ok_or(HpackError::Truncated)?;
    let max = (1usize << n) - 1;
    let mut value = usize::from(first) & max;
    if value == max {
        let mut shift = 0u32;
        loop {
            let (&b, tail) = rest.split_first().ok_or(HpackError::Truncated)?;
            rest = tail;
            if shift > 28 {
                return Err(HpackError::Overflow);
            }
            value += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    *block = rest;
    Ok(value)
}

/// Canonical Huffman decoding: the RFC's code assigns consecutive codes to
/// the symbols of each length, so a code of length `l` is a symbol iff it
/// lies in `first[l] .. first[l] + count[l]`.
struct Huffman {
    first: [u32; 31],
    count: [u32; 31],
    /// Index into `symbols` of each length's first symbol.
    offset: [usize; 31],
    symbols: Vec<u16>,
}

impl Huffman {
    fn new() -> Huffman {
        let mut order: Vec<u16> = (0..=256).collect();
        order.sort_by_key(|&s| {
            let (code, len) = HUFFMAN_CODES[usize::from(s)];
            (len, code)
        });
        let mut h = Huffman {
            first: [0; 31],
            count: [0; 31],
            offset: [0; 31],
            symbols: order.clone(),
        };
        for (i, &s) in order.iter().enumerate() {
            let (code, len) = HUFFMAN_CODES[usize::from(s)];
            let l = usize::from(len);
            if h.count[l] == 0 {
                h.first[l] = code;
                h.offset[l] = i;
            }
            h.count[l] += 1;
        }
        h
    }

    fn decode(&self, raw: &[u8]) -> Result<Vec<u8>, HpackError> {
        let mut out = Vec::with_capacity(raw.len() * 8 / 5);
        let (mut code, mut len) = (0u32, 0usize);
        for &byte in raw {
            for bit in (0..8).rev() {
                code = (code << 1) | u32::from((byte >> bit) & 1);
                len += 1;
                if len >= 31 {
                    return Err(HpackError::Huffman);
                }
                let i = code.wrapping_sub(self.first[len]);
                if self.count[len] > 0 && code >= self.first[len] && i < self.count[len] {
                    let sym = self.symbols[self.offset[len] + i as usize];
                    // EOS inside a string is an error (RFC 7541, 5.2).
                    out.push(u8::try_from(sym).map_err(|_| HpackError::Huffman)?);
                    code = 0;
                    len = 0;
                }
            }
        }
        // Padding: at most 7 bits, all ones (a prefix of EOS).
        if len > 7 || code != (1u32 << len) - 1 {
            return Err(HpackError::Huffman);
        }
        Ok(out)
    }
}

/// Encodes `fields` as literals without indexing (names by static index
/// where the static table has them), never touching a dynamic table.
pub fn encode<'a>(fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>, out: &mut Vec<u8>) {
    for (name, value) in fields {
        match STATIC_TABLE.iter().position(|(n, _)| n.as_bytes() == name) {
            Some(i) => put_integer(out, 0x00, 4, i + 1),
            None => {
                out.push(0x00);
                put_string(out, name);
            }
        }
        put_string(out, value);
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_integer(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

fn put_integer(out: &mut Vec<u8>, flags: u8, n: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ))
        })
        .unwrap();
        out
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// RFC 7541 C.4: three requests with Huffman coding sharing a table.
    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        let mut d = Decoder::new(4096);
        let r1 = decode_all(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"));
        assert_eq!(
            r1,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        let r2 = decode_all(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf"));
        assert_eq!(
            r2.last().unwrap(),
            &("cache-control".into(), "no-cache".into())
        );
        assert_eq!(r2[3], (":authority".into(), "www.example.com".into()));
        let r3 = decode_all(
            &mut d,
            &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
        );
        assert_eq!(
            r3,
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.size, 164);
    }

    /// RFC 7541 C.5: responses with evictions in a 256-byte table.
    #[test]
    fn rfc7541_c5_evictions() {
        let mut d = Decoder::new(256);
        decode_all(
            &mut d,
            &hex("4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
        );
        assert_eq!(d.size, 222);
        let r2 = decode_all(&mut d, &hex("4803 3330 37c1 c0bf"));
        assert_eq!(r2[0], (":status".into(), "307".into()));
        assert_eq!(d.size, 222);
        assert_eq!(d.table.len(), 4);
    }

    #[test]
    fn every_huffman_symbol_round_trips() {
        let h = Huffman::new();
        for sym in 0u16..256 {
            let (code, len) = HUFFMAN_CODES[usize::from(sym)];
            // Left-align the code and pad with ones to a whole byte.
            let pad = (8 - u32::from(len) % 8) % 8;
            let bits = (u64::from(code) << pad) | ((1u64 << pad) - 1);
            let nbytes = (u32::from(len) + pad) / 8;
            let bytes: Vec<u8> = (0..nbytes).rev().map(|i| (bits >> (8 * i)) as u8).collect();
            assert_eq!(h.decode(&bytes), Ok(vec![sym as u8]), "symbol {sym}");
        }
        // Padding longer than 7 bits, or not all ones, is an error.
        assert_eq!(h.decode(&[0xff, 0xff]), Err(HpackError::Huffman));
        assert_eq!(h.decode(&[0x00]), Err(HpackError::Huffman));
    }

    #[test]
    fn encoded_blocks_decode_to_the_same_fields() {
        let fields = [
            (":method", "POST"),
            (":authority", "localhost"),
            ("x-custom", "a"),
            ("x-long", &*"v".repeat(300)),
        ];
        let mut out = Vec::new();
        encode(
            fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            &mut out,
        );
        let mut d = Decoder::new(4096);
        assert_eq!(decode_all(&mut d, &out), pairs(&fields));
        assert!(d.table.is_empty(), "nothing indexed");
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let mut d = Decoder::new(4096);
        let mut f = |_: &[u8], _: &[u8]| {};
        assert_eq!(d.decode(&[0x80], &mut f), Err(HpackError::BadIndex(0)));
        assert_eq!(d.decode(&[0xbe], &mut f), Err(HpackError::BadIndex(62)));
        assert_eq!(
            d.decode(&[0x41, 0x05, b'a'], &mut f),
            Err(HpackError::Truncated)
        );
        assert_eq!(
            d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], &mut f),
            Err(HpackError::Overflow)
        );
        assert_eq!(
            d.decode(&[0x3f, 0xe2, 0x1f], &mut f),
            Err(HpackError::TableSize {
                size: 4097,
                limit: 4096
            })
        );
        assert_eq!(
            d.decode(&[0x82, 0x20], &mut f),
            Err(HpackError::LateSizeUpdate)
        );
    }
}
