//! Where output goes: a FIFO, an appended file, a CRI log or nowhere, with the
//! bytes a slow FIFO reader has not taken yet kept pending.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use nix::errno::Errno;

use super::Dest;
use crate::crilog::{CriLog, LineSplitter, Stream, Tag, MAX_LINE};

enum SinkKind {
    Null,
    /// A FIFO (non-blocking fd: a slow reader must not block the I/O thread).
    Fifo(OwnedFd),
    File(File),
    Cri(Arc<CriLog>, Stream, LineSplitter),
}

pub(super) struct Sink {
    kind: SinkKind,
    what: String,
    failed: bool,
}

impl Sink {
    pub(super) fn open(
        dest: &Dest,
        stream: Stream,
        logs: &mut Vec<Arc<CriLog>>,
    ) -> io::Result<Sink> {
        let ctx =
            |e: io::Error, p: &Path| io::Error::new(e.kind(), format!("open {}: {e}", p.display()));
        let (kind, what) = match dest {
            Dest::Null => (SinkKind::Null, String::new()),
            Dest::Fifo(p) => {
                let meta = fs::metadata(p).map_err(|e| ctx(e, p))?;
                if meta.file_type().is_fifo() {
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                        .open(p)
                        .map_err(|e| ctx(e, p))?;
                    (SinkKind::Fifo(f.into()), p.display().to_string())
                } else {
                    (
                        SinkKind::File(append_file(p).map_err(|e| ctx(e, p))?),
                        p.display().to_string(),
                    )
                }
            }
            Dest::File(p) => {
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).map_err(|e| ctx(e, parent))?;
                }
                (
                    SinkKind::File(append_file(p).map_err(|e| ctx(e, p))?),
                    p.display().to_string(),
                )
            }
            Dest::CriLog(p) => {
                let log = match logs.iter().find(|l| l.path() == p) {
                    Some(l) => l.clone(),
                    None => {
                        let l = Arc::new(CriLog::open(p).map_err(|e| ctx(e, p))?);
                        logs.push(l.clone());
                        l
                    }
                };
                (
                    SinkKind::Cri(log, stream, LineSplitter::new(MAX_LINE)),
                    p.display().to_string(),
                )
            }
        };
        Ok(Sink {
            kind,
            what,
            failed: false,
        })
    }

    fn fail(&mut self, e: impl std::fmt::Display) {
        if !self.failed {
            log::warn!("writing container output to {}: {e}", self.what);
            self.failed = true;
        }
    }

    pub(super) fn fifo_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.kind {
            SinkKind::Fifo(fd) => Some(fd.as_fd()),
            _ => None,
        }
    }

    /// Writes `data`; what a FIFO cannot take now is appended to `pending`.
    pub(super) fn write(&mut self, data: &[u8], pending: &mut Vec<u8>) {
        let res = match &mut self.kind {
            SinkKind::Null => Ok(()),
            SinkKind::Fifo(fd) => {
                write_some(fd.as_fd(), data).map(|n| pending.extend_from_slice(&data[n..]))
            }
            SinkKind::File(f) => f.write_all(data),
            SinkKind::Cri(log, stream, split) => {
                let mut err = None;
                split.feed(data, &mut |tag, line| {
                    if let Err(e) = log.write_record(*stream, tag, line, SystemTime::now()) {
                        err = Some(e);
                    }
                });
                match err {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            }
        };
        if let Err(e) = res {
            // Keep draining the container's output: a broken destination must not
            // block the container.
            self.fail(e);
        }
    }

    /// Writes what a FIFO can take of `pending`.
    pub(super) fn flush(&mut self, pending: &mut Vec<u8>) {
        let Some(fd) = self.fifo_fd() else {
            pending.clear();
            return;
        };
        match write_some(fd, pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) => {
                pending.clear();
                self.fail(e);
            }
        }
    }

    /// Writes an unfinished line as a partial record (CRI logs only).
    pub(super) fn flush_partial(&mut self) {
        self.split_records(|split, emit| split.flush_partial(emit));
    }

    pub(super) fn finish(&mut self) {
        self.split_records(|split, emit| split.finish(emit));
    }

    /// Runs `f` on a CRI log's line splitter, writing the records it emits.
    fn split_records(&mut self, f: impl FnOnce(&mut LineSplitter, &mut dyn FnMut(Tag, &[u8]))) {
        if let SinkKind::Cri(log, stream, split) = &mut self.kind {
            let mut err = None;
            f(split, &mut |tag, line| {
                if let Err(e) = log.write_record(*stream, tag, line, SystemTime::now()) {
                    err = Some(e);
                }
            });
            if let Some(e) = err {
                self.fail(e);
            }
        }
    }
}

fn append_file(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
}

/// Writes as much of `data` as a non-blocking fd takes now; the count written.
pub(super) fn write_some(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match nix::unistd::write(fd, &data[done..]) {
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}
