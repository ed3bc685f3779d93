//! Reading a committed blob.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use crate::digest::Digest;

/// A reader over a committed blob. Holds the file open, so it keeps working
/// if the blob is deleted meanwhile.
#[derive(Debug)]
pub struct Reader {
    pub(super) digest: Digest,
    pub(super) file: File,
    pub(super) size: u64,
    pub(super) pos: u64,
}

impl Reader {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Positional read (`pread`): does not move the cursor used by `Read`, so
    /// a shared reader can serve several ranges.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let left = self.size - offset;
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        self.file.read_at(&mut buf[..n], offset)
    }

    /// The underlying file, e.g. for `sendfile` or mmap.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Reader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )),
        }
    }
}
