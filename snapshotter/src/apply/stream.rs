//! Decompression plus a hashing, size-limiting reader over the uncompressed
//! tar stream.

use std::cell::{Cell, RefCell};
use std::io::{self, BufReader, Read};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

/// Input buffer in front of the decompressor (the compressed blob).
const INPUT_BUFFER: usize = 256 << 10;

/// Upper bound on the bytes the tar reader may consume between two entries:
/// the header block(s), GNU long name / long link data, PAX extended headers
/// and GNU sparse maps, all of which the `tar` crate buffers in memory. Go's
/// archive/tar caps each of those at 1 MiB; this leaves room for all of them.
pub(crate) const METADATA_BUDGET: u64 = 4 << 20;

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (single or multi-member).
    Gzip,
    /// zstd (one or more frames).
    Zstd,
}

impl Compression {
    /// Guesses the compression from the first bytes of a blob (4 are enough):
    /// gzip and zstd (including skippable frames) by magic number, anything
    /// else is taken to be an uncompressed tar.
    pub fn detect(prefix: &[u8]) -> Compression {
        match prefix {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            // Skippable frames: magic 0x184D2A50..=0x184D2A5F, little endian.
            [b0, 0x2a, 0x4d, 0x18, ..] if b0 & 0xf0 == 0x50 => Compression::Zstd,
            _ => Compression::None,
        }
    }

    /// Maps an OCI or Docker layer media type to its compression, `None` for
    /// media types that are not tar layers.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }
}

/// Why the stream reader failed; the tar crate only sees an opaque io::Error,
/// the applier picks the real cause up from here.
#[derive(Debug)]
pub(crate) enum Fault {
    Decompress(io::Error),
    StreamLimit { limit: u64 },
    MetadataLimit { limit: u64 },
    Cancelled,
}

/// State shared between the reader (owned by the tar archive) and the
/// applier loop. Single-threaded, hence `Cell`.
pub(crate) struct StreamState {
    total: Cell<u64>,
    hard_limit: u64,
    /// When set, the absolute stream offset the metadata phase may not pass.
    metadata_limit: Cell<Option<u64>>,
    fault: Cell<Option<Fault>>,
    /// Bytes the tar reader has been given (its own archive offset): real
    /// ones and the skipped data of sparse entries.
    tar_pos: Cell<u64>,
    /// Stored data of a sparse entry the applier has read itself: the tar
    /// reader's next reads (its skip to the next header) get this many bytes
    /// without touching the stream.
    skip_credit: Cell<u64>,
    /// What the tar reader read in the current metadata phase, from archive
    /// offset `captured_from`: the extension headers of a GNU sparse entry
    /// (its map past the first four segments) are only found there.
    captured: RefCell<Vec<u8>>,
    captured_from: Cell<u64>,
}

impl StreamState {
    pub(crate) fn new(hard_limit: u64) -> Rc<Self> {
        Rc::new(StreamState {
            total: Cell::new(0),
            hard_limit,
            metadata_limit: Cell::new(None),
            fault: Cell::new(None),
            tar_pos: Cell::new(0),
            skip_credit: Cell::new(0),
            captured: RefCell::new(Vec::new()),
            captured_from: Cell::new(0),
        })
    }

    /// Uncompressed bytes consumed so far.
    pub(crate) fn total(&self) -> u64 {
        self.total.get()
    }

    /// The tar reader is about to parse the next header(s).
    pub(crate) fn begin_metadata(&self) {
        self.metadata_limit
            .set(Some(self.total.get().saturating_add(METADATA_BUDGET)));
        self.captured.borrow_mut().clear();
    }

    /// The applier is about to read an entry's data (or the trailer).
    pub(crate) fn begin_data(&self) {
        self.metadata_limit.set(None);
    }

    pub(crate) fn take_fault(&self) -> Option<Fault> {
        self.fault.take()
    }

    /// The tar reader's archive offset.
    pub(crate) fn tar_pos(&self) -> u64 {
        self.tar_pos.get()
    }

    /// Bytes of a sparse entry's data the tar reader has yet to skip.
    pub(crate) fn skip_credit(&self) -> u64 {
        self.skip_credit.get()
    }

    /// The applier has read `n` bytes of entry data from the stream itself:
    /// the tar reader skips them without reading them again.
    pub(crate) fn credit(&self, n: u64) {
        self.skip_credit
            .set(self.skip_credit.get().saturating_add(n));
    }

    /// The bytes at archive offsets `start..end`, if the tar reader read them
    /// in the current metadata phase.
    pub(crate) fn captured(&self, start: u64, end: u64) -> Option<Vec<u8>> {
        let from = self.captured_from.get();
        let captured = self.captured.borrow();
        let a = usize::try_from(start.checked_sub(from)?).ok()?;
        let b = usize::try_from(end.checked_sub(from)?).ok()?;
        captured.get(a..b).map(<[u8]>::to_vec)
    }
}

/// The tar reader's side of the layer stream, shared with the applier: the
/// `tar` crate expands a GNU sparse entry's holes into zeros that the reader
/// of the entry must go through one by one (60 GiB of holes took seconds to
/// minutes of CPU), so the applier reads the stored data straight from the
/// stream and the tar reader skips it here.
pub(crate) struct TarSide<R: Read> {
    stream: Rc<RefCell<LayerStream<R>>>,
    state: Rc<StreamState>,
}

impl<R: Read> TarSide<R> {
    pub(crate) fn new(stream: Rc<RefCell<LayerStream<R>>>, state: Rc<StreamState>) -> Self {
        TarSide { stream, state }
    }
}

impl<R: Read> Read for TarSide<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let state = &self.state;
        let credit = state.skip_credit.get();
        if credit > 0 {
            // Only the tar reader's skip reads here (the entry was read by the
            // applier): what the buffer holds does not matter.
            let n = usize::try_from(credit).unwrap_or(usize::MAX).min(buf.len());
            state.skip_credit.set(credit - n as u64);
            state.tar_pos.set(state.tar_pos.get() + n as u64);
            return Ok(n);
        }
        let n = self.stream.borrow_mut().read(buf)?;
        let pos = state.tar_pos.get();
        if state.metadata_limit.get().is_some() {
            let mut captured = state.captured.borrow_mut();
            if captured.is_empty() {
                state.captured_from.set(pos);
            }
            // The metadata limit stops the phase soon after this much.
            if captured.len() < 2 * METADATA_BUDGET as usize {
                captured.extend_from_slice(buf.get(..n).unwrap_or_default());
            }
        }
        state.tar_pos.set(pos + n as u64);
        Ok(n)
    }
}

/// The applier's side of the shared layer stream.
pub(crate) struct Shared<R: Read>(pub(crate) Rc<RefCell<LayerStream<R>>>);

impl<R: Read> Read for Shared<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

/// The decompressor for one blob, without dynamic dispatch.
enum Decoder<R: Read> {
    Plain(BufReader<R>),
    Gzip(Box<flate2::bufread::MultiGzDecoder<BufReader<R>>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

/// Reads the uncompressed layer stream, hashing (sha256) and counting every
/// byte and enforcing the size limits.
pub(crate) struct LayerStream<R: Read> {
    inner: Decoder<R>,
    hasher: StreamHasher,
    state: Rc<StreamState>,
}

/// Bytes handed to the hashing thread at a time.
const HASH_BATCH: usize = 256 << 10;
/// Batches in flight to the hashing thread (bounds its memory).
const HASH_QUEUE: usize = 4;

/// The diff ID's sha256, computed on a thread of its own: hashing is about half of
/// the CPU an unpack costs and would otherwise run in series with decompression and
/// the file writes (bench-cri's cold pull on 2 cores: a 32 MiB layer's apply ~44 ->
/// ~26 ms).
/// Falls back to hashing inline if no thread can be started.
enum StreamHasher {
    Inline(Sha256),
    Threaded {
        pending: Vec<u8>,
        batches: mpsc::SyncSender<Vec<u8>>,
        thread: std::thread::JoinHandle<Sha256>,
    },
}

impl StreamHasher {
    fn new() -> Self {
        let (batches, rx) = mpsc::sync_channel::<Vec<u8>>(HASH_QUEUE);
        let spawned = std::thread::Builder::new()
            .name("layer-hash".into())
            .spawn(move || {
                let mut h = Sha256::new();
                for batch in rx {
                    h.update(&batch);
                }
                h
            });
        match spawned {
            Ok(thread) => StreamHasher::Threaded {
                pending: Vec::with_capacity(HASH_BATCH),
                batches,
                thread,
            },
            Err(_) => StreamHasher::Inline(Sha256::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            StreamHasher::Inline(h) => h.update(data),
            StreamHasher::Threaded {
                pending, batches, ..
            } => {
                pending.extend_from_slice(data);
                if pending.len() >= HASH_BATCH {
                    let full = std::mem::replace(pending, Vec::with_capacity(HASH_BATCH));
                    // A send fails only if the thread is gone; `finish` reports it.
                    let _ = batches.send(full);
                }
            }
        }
    }

    fn finish(self) -> io::Result<[u8; 32]> {
        let h = match self {
            StreamHasher::Inline(h) => h,
            StreamHasher::Threaded {
                pending,
                batches,
                thread,
            } => {
                let sent = pending.is_empty() || batches.send(pending).is_ok();
                drop(batches);
                match thread.join() {
                    Ok(h) if sent => h,
                    _ => return Err(io::Error::other("the layer hashing thread failed")),
                }
            }
        };
        Ok(h.finalize().into())
    }
}

impl<R: Read> LayerStream<R> {
    pub(crate) fn new(
        reader: R,
        compression: Compression,
        state: Rc<StreamState>,
    ) -> io::Result<Self> {
        let input = BufReader::with_capacity(INPUT_BUFFER, reader);
        let inner = match compression {
            Compression::None => Decoder::Plain(input),
            Compression::Gzip => {
                Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(input)))
            }
            Compression::Zstd => Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(input)?),
        };
        Ok(LayerStream {
            inner,
            hasher: StreamHasher::new(),
            state,
        })
    }

    /// Reads the rest of the stream (end-of-archive blocks, record padding,
    /// anything after) so that the digest covers all of it.
    pub(crate) fn drain(&mut self, buf: &mut [u8], cancel: &AtomicBool) -> io::Result<()> {
        loop {
            // Padding may be up to the stream limit of zeros.
            if cancel.load(Ordering::Relaxed) {
                self.state.fault.set(Some(Fault::Cancelled));
                return Err(io::Error::other("cancelled"));
            }
            match self.read(buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// `sha256:<hex>` of everything read, and its length.
    pub(crate) fn finish(&mut self) -> io::Result<(String, u64)> {
        let hasher = std::mem::replace(&mut self.hasher, StreamHasher::Inline(Sha256::new()));
        let digest = hasher.finish()?;
        Ok((
            format!("sha256:{}", hex::encode(digest)),
            self.state.total.get(),
        ))
    }
}

impl<R: Read> Read for LayerStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let out = io::Error::new(e.kind(), "layer stream failed");
                self.state.fault.set(Some(Fault::Decompress(e)));
                return Err(out);
            }
        };
        let chunk = buf.get(..n).unwrap_or_default();
        self.hasher.update(chunk);
        let total = self.state.total.get().saturating_add(n as u64);
        self.state.total.set(total);
        if let Some(limit) = self.state.metadata_limit.get() {
            if total > limit {
                self.state.fault.set(Some(Fault::MetadataLimit {
                    limit: METADATA_BUDGET,
                }));
                return Err(io::Error::other("tar metadata too large"));
            }
        }
        if total > self.state.hard_limit {
            self.state.fault.set(Some(Fault::StreamLimit {
                limit: self.state.hard_limit,
            }));
            return Err(io::Error::other("layer stream too large"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The threaded hasher sees every byte once, in order, across batch boundaries
    /// and odd read sizes.
    #[test]
    fn digest_covers_every_byte_across_batches() {
        let data: Vec<u8> = (0..(3 * HASH_BATCH + 4321))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut stream =
            LayerStream::new(&data[..], Compression::None, StreamState::new(u64::MAX)).unwrap();
        let mut buf = [0u8; 1000];
        let mut read = 0;
        loop {
            let n = stream.read(&mut buf[..(read % 997) + 1]).unwrap();
            if n == 0 {
                break;
            }
            read += n;
        }
        assert_eq!(read, data.len());
        let (digest, total) = stream.finish().unwrap();
        assert_eq!(total, data.len() as u64);
        assert_eq!(
            digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&data)))
        );
    }
}
