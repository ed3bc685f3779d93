//! The CRI container log format, written by the shim itself.
//!
//! Each record is one line:
//! `<RFC 3339 UTC time, 9 fractional digits> <stdout|stderr> <F|P> <content>\n`.
//! A line longer than [`MAX_LINE`] bytes is cut into `P` (partial) records of exactly
//! [`MAX_LINE`] bytes followed by an `F` (full) record with the rest, like containerd's
//! CRI plugin (`max_container_log_line_size` = 16 KiB). Output that ends without a
//! newline when the stream closes is written as a `P` record. A trailing `\r` before
//! the newline is dropped (TTY output).
//!
//! [`CriLog::reopen`] opens the path again (after kubelet renamed the file for
//! rotation): writes go to the new file from the next record on.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use berth_sysutil::time::format_rfc3339_nanos;

/// Longest line written as one record.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Partial,
    Full,
}

impl Tag {
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Partial => "P",
            Tag::Full => "F",
        }
    }
}

/// One CRI log file, shared by a process's stdout and stderr.
pub struct CriLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl CriLog {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(CriLog {
            path: path.to_path_buf(),
            file: Mutex::new(open_log(path)?),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again (creating it) and writes there from now on.
    pub fn reopen(&self) -> io::Result<()> {
        let f = open_log(&self.path)?;
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        *guard = f;
        Ok(())
    }

    /// Writes one record with a single `write(2)` (O_APPEND), so records from stdout
    /// and stderr never interleave within a line.
    pub fn write_record(
        &self,
        stream: Stream,
        tag: Tag,
        content: &[u8],
        at: SystemTime,
    ) -> io::Result<()> {
        let rec = format_record(stream, tag, content, at);
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&rec)
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

pub fn format_record(stream: Stream, tag: Tag, content: &[u8], at: SystemTime) -> Vec<u8> {
    let ts = format_rfc3339_nanos(at);
    let mut rec = Vec::with_capacity(ts.len() + content.len() + 12);
    rec.extend_from_slice(ts.as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(stream.as_str().as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(tag.as_str().as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(content);
    rec.push(b'\n');
    rec
}

/// Cuts a byte stream into CRI records (see the module docs).
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max: max.max(1),
        }
    }

    /// Feeds bytes; `emit` is called for every record that is complete.
    pub fn feed(&mut self, mut data: &[u8], emit: &mut dyn FnMut(Tag, &[u8])) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let part = &data[..i];
                    data = &data[i + 1..];
                    if self.buf.is_empty() {
                        emit_line(part, self.max, emit);
                    } else {
                        self.buf.extend_from_slice(part);
                        let line = std::mem::take(&mut self.buf);
                        emit_line(&line, self.max, emit);
                        self.buf = line;
                        self.buf.clear();
                    }
                }
                None => {
                    self.buf.extend_from_slice(data);
                    data = &[];
                    if self.buf.len() > self.max {
                        let mut start = 0;
                        while self.buf.len() - start > self.max {
                            emit(Tag::Partial, &self.buf[start..start + self.max]);
                            start += self.max;
                        }
                        self.buf.drain(..start);
                    }
                }
            }
        }
        // Do not keep a large allocation around after one long line.
        if self.buf.is_empty() && self.buf.capacity() > 2 * self.max {
            self.buf = Vec::new();
        }
    }

    /// What came without a newline so far becomes a partial record now, so
    /// a prompt or `echo -n` reaches the log (and attached clients, which
    /// follow it) without waiting for a newline that may never come. The
    /// I/O loop calls this once it has read everything the pipe held, as
    /// CRI-O's conmon does; readers join `P` records to the next record.
    pub fn flush_partial(&mut self, emit: &mut dyn FnMut(Tag, &[u8])) {
        if !self.buf.is_empty() {
            emit(Tag::Partial, &self.buf);
            self.buf.clear();
        }
    }

    /// The stream ended: what is left (no newline) becomes a partial record.
    pub fn finish(&mut self, emit: &mut dyn FnMut(Tag, &[u8])) {
        if !self.buf.is_empty() {
            emit(Tag::Partial, &self.buf);
        }
        self.buf = Vec::new();
    }
}

/// A complete line (without its `\n`): `P` chunks while longer than `max`, then `F`.
fn emit_line(mut line: &[u8], max: usize, emit: &mut dyn FnMut(Tag, &[u8])) {
    while line.len() > max {
        emit(Tag::Partial, &line[..max]);
        line = &line[max..];
    }
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    emit(Tag::Full, line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn split(chunks: &[&[u8]], max: usize) -> Vec<(Tag, Vec<u8>)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut |t, b| out.push((t, b.to_vec())));
        }
        s.finish(&mut |t, b| out.push((t, b.to_vec())));
        out
    }

    #[test]
    fn record_format() {
        let t = UNIX_EPOCH + Duration::new(1_704_067_200, 0);
        assert_eq!(
            format_record(Stream::Stdout, Tag::Full, b"hello", t),
            b"2024-01-01T00:00:00.000000000Z stdout F hello\n"
        );
        assert_eq!(
            format_record(Stream::Stderr, Tag::Partial, b"", t),
            b"2024-01-01T00:00:00.000000000Z stderr P \n"
        );
    }

    #[test]
    fn lines_across_chunks() {
        let out = split(&[b"hel", b"lo\nwor", b"ld\n\n", b"tail"], MAX_LINE);
        assert_eq!(
            out,
            vec![
                (Tag::Full, b"hello".to_vec()),
                (Tag::Full, b"world".to_vec()),
                (Tag::Full, b"".to_vec()),
                (Tag::Partial, b"tail".to_vec()),
            ]
        );
    }

    #[test]
    fn partial_lines_are_flushed_on_demand() {
        let mut s = LineSplitter::new(MAX_LINE);
        let mut out = Vec::new();
        s.feed(b"line\nprompt> ", &mut |t, b| out.push((t, b.to_vec())));
        s.flush_partial(&mut |t, b| out.push((t, b.to_vec())));
        s.flush_partial(&mut |t, b| out.push((t, b.to_vec())));
        s.feed(b"rest\n", &mut |t, b| out.push((t, b.to_vec())));
        assert_eq!(
            out,
            vec![
                (Tag::Full, b"line".to_vec()),
                (Tag::Partial, b"prompt> ".to_vec()),
                (Tag::Full, b"rest".to_vec()),
            ]
        );
    }

    #[test]
    fn crlf_is_stripped() {
        let out = split(&[b"a\r\nb\r", b"\n"], MAX_LINE);
        assert_eq!(
            out,
            vec![(Tag::Full, b"a".to_vec()), (Tag::Full, b"b".to_vec())]
        );
    }

    #[test]
    fn long_lines_split_at_16k() {
        // Exactly MAX_LINE: one full record.
        let line = vec![b'x'; MAX_LINE];
        let mut input = line.clone();
        input.push(b'\n');
        let out = split(&[&input], MAX_LINE);
        assert_eq!(out, vec![(Tag::Full, line)]);

        // 40000 bytes in one chunk: P(16384) P(16384) F(7232).
        let mut input = vec![b'y'; 40_000];
        input.push(b'\n');
        let out = split(&[&input], MAX_LINE);
        let tags: Vec<_> = out.iter().map(|(t, b)| (*t, b.len())).collect();
        assert_eq!(
            tags,
            vec![
                (Tag::Partial, MAX_LINE),
                (Tag::Partial, MAX_LINE),
                (Tag::Full, 40_000 - 2 * MAX_LINE)
            ]
        );

        // The same line fed in small pieces gives the same records.
        let pieces: Vec<&[u8]> = input.chunks(1000).collect();
        assert_eq!(split(&pieces, MAX_LINE), out);

        // MAX_LINE + 1 without a newline at EOF: P(16384) then P(1).
        let input = vec![b'z'; MAX_LINE + 1];
        let out = split(&[&input], MAX_LINE);
        let tags: Vec<_> = out.iter().map(|(t, b)| (*t, b.len())).collect();
        assert_eq!(tags, vec![(Tag::Partial, MAX_LINE), (Tag::Partial, 1)]);
    }

    #[test]
    fn small_max() {
        let out = split(&[b"abcdefg\n"], 3);
        assert_eq!(
            out,
            vec![
                (Tag::Partial, b"abc".to_vec()),
                (Tag::Partial, b"def".to_vec()),
                (Tag::Full, b"g".to_vec()),
            ]
        );
    }

    #[test]
    fn writes_and_reopens() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("0.log");
        let log = CriLog::open(&path).unwrap();
        let t = UNIX_EPOCH + Duration::new(1_704_067_200, 1);
        log.write_record(Stream::Stdout, Tag::Full, b"one", t)
            .unwrap();
        // kubelet rotates: rename, then asks for a reopen.
        let rotated = d.path().join("0.log.20240101-000000");
        std::fs::rename(&path, &rotated).unwrap();
        log.write_record(Stream::Stderr, Tag::Full, b"two", t)
            .unwrap();
        log.reopen().unwrap();
        log.write_record(Stream::Stdout, Tag::Partial, b"three", t)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "2024-01-01T00:00:00.000000001Z stdout F one\n\
             2024-01-01T00:00:00.000000001Z stderr F two\n"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "2024-01-01T00:00:00.000000001Z stdout P three\n"
        );
        // Reopen appends to an existing file.
        log.reopen().unwrap();
        log.write_record(Stream::Stdout, Tag::Full, b"four", t)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        assert_eq!(log.path(), path);
    }

    #[test]
    fn reopen_error_keeps_old_file() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("pod");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("0.log");
        let log = CriLog::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        assert!(log.reopen().is_err());
        // Still writable (to the unlinked file): no panic, no error.
        log.write_record(Stream::Stdout, Tag::Full, b"x", SystemTime::now())
            .unwrap();
    }
}
