//! The CRI log reader berthd uses for logs and attach
//! (`tasks::logs::LogFollower`, `decode_cri_line`), alone and behind the
//! shim's writer (`shim/src/crilog.rs`: `LineSplitter` + `format_record`).
//!
//! Input: a mode byte, then
//! - even mode: a log file's bytes. It is appended to a file in pieces
//!   (cut points from the mode byte) with `read_available` between them;
//!   what comes out must equal one read of the whole file.
//! - odd mode: ops `[op, len, bytes...]` (op & 3: 0 stdout write, 1 stderr
//!   write, 2 flush stdout's partial line, 3 flush stderr's) run through
//!   the shim's writer with a line limit from the mode byte; reading the file
//!   back must give each stream's bytes exactly, except that `\r\n` ending a
//!   line written whole becomes `\n` (the writer drops the `\r` of TTY
//!   output).
#![no_main]

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use berth_fuzz::crilog::{format_record, LineSplitter, Stream, Tag, MAX_LINE};
use berth_fuzz::seeds;
use berthd::fuzzing::modules::shim::StdioScheme;
use berthd::fuzzing::modules::tasks::logs::{Chunk, LogFollower};
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("berth-fuzz-crilog-")
            .tempdir()
            .expect("temp dir")
    })
    .path()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn drain(f: &mut LogFollower, out: &mut Vec<Chunk>) {
    loop {
        let got = f.read_available().await.expect("read_available");
        if got.is_empty() {
            break;
        }
        out.extend(got);
    }
}

/// Writes `pieces` one after another, reading between them; then finishes.
async fn read_in_pieces(path: &Path, pieces: &[&[u8]]) -> Vec<Chunk> {
    std::fs::write(path, b"").expect("create log");
    let mut f = LogFollower::open(path, StdioScheme::CriLog)
        .await
        .expect("open log");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    let mut out = Vec::new();
    for p in pieces {
        file.write_all(p).expect("append");
        drain(&mut f, &mut out).await;
    }
    out.extend(f.finish());
    out
}

/// Each stream's bytes, in order.
fn streams(chunks: &[Chunk]) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for c in chunks {
        if c.stderr {
            err.extend_from_slice(&c.data);
        } else {
            out.extend_from_slice(&c.data);
        }
    }
    (out, err)
}

fn reader(mode: u8, body: &[u8]) {
    let path = dir().join("reader.log");
    let rt = rt();
    let whole = rt.block_on(read_in_pieces(&path, &[body]));
    let n = body.len();
    let (a, b) = (
        (mode as usize * 7) % (n + 1),
        (mode as usize * 131) % (n + 1),
    );
    let (a, b) = (a.min(b), a.max(b));
    let pieces = rt.block_on(read_in_pieces(
        &path,
        &[&body[..a], &body[a..b], &body[b..]],
    ));
    assert_eq!(whole, pieces, "reading in pieces at {a}, {b} differs");
    // Each complete line gives one chunk.
    let lines = body.iter().filter(|&&c| c == b'\n').count();
    let trailing = usize::from(!body.is_empty() && !body.ends_with(b"\n"));
    assert_eq!(whole.len(), lines + trailing);
}

fn round_trip(mode: u8, ops: &[u8]) {
    let max = match mode >> 1 {
        0 => MAX_LINE,
        m => usize::from(m),
    };
    let t = UNIX_EPOCH + Duration::new(1_704_067_200, 5);
    let mut file = Vec::new();
    let mut split = [LineSplitter::new(max), LineSplitter::new(max)];
    let mut written = [Vec::new(), Vec::new()];
    let mut flushed = [false, false];
    let mut rest = ops;
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        let i = usize::from(op & 1);
        let stream = if i == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        let mut emit = |tag: Tag, content: &[u8]| {
            file.extend_from_slice(&format_record(stream, tag, content, t));
        };
        if op & 2 == 0 {
            split[i].feed(bytes, &mut emit);
            written[i].extend_from_slice(bytes);
        } else {
            split[i].flush_partial(&mut emit);
            flushed[i] = true;
        }
    }
    for (i, s) in split.iter_mut().enumerate() {
        let stream = if i == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        s.finish(&mut |tag, content| {
            file.extend_from_slice(&format_record(stream, tag, content, t));
        });
    }
    let path = dir().join("roundtrip.log");
    let chunks = rt().block_on(read_in_pieces(&path, &[&file]));
    let (out, err) = streams(&chunks);
    for (i, got) in [out, err].iter().enumerate() {
        check_stream(&written[i], got, flushed[i]);
    }
}

/// `got` is `want` with some `\r` before a `\n` removed: all of them when
/// nothing was flushed early (every line went to the writer whole).
fn check_stream(want: &[u8], got: &[u8], flushed: bool) {
    let (mut i, mut j) = (0, 0);
    while i < want.len() {
        if j < got.len()
            && want[i] == got[j]
            && !(want[i] == b'\r' && want.get(i + 1) == Some(&b'\n') && !flushed)
        {
            i += 1;
            j += 1;
        } else if want[i] == b'\r' && want.get(i + 1) == Some(&b'\n') {
            i += 1;
        } else {
            panic!(
                "stream differs at byte {i} of what was written (read {j}): wrote {:?}, read {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(got)
            );
        }
    }
    assert_eq!(j, got.len(), "read more than was written: {got:?}");
}

fuzz_target!(
    init: berth_fuzz::seeds_init("cri_log", seeds::cri_log),
    |data: &[u8]| {
        let Some((&mode, body)) = data.split_first() else {
            return;
        };
        if mode & 1 == 0 {
            reader(mode, body);
        } else {
            round_trip(mode, body);
        }
    }
);
