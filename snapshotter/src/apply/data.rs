//! Regular file contents: plain copies and GNU sparse files (holes where the
//! map has them and where whole blocks are zero).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use super::error::ApplyError;
use super::{invalid, io_err, stream_error, Applier, Scratch, SPARSE_BLOCK};

impl Applier<'_> {
    pub(super) fn write_data<R: Read>(
        &mut self,
        entry: &mut R,
        mut file: &File,
        s: &Scratch,
    ) -> Result<u64, ApplyError> {
        let mut offset: u64 = 0;
        loop {
            self.check_cancel()?;
            let n = read_full(entry, &mut self.buf).map_err(|e| stream_error(&self.state, e))?;
            if n == 0 {
                break;
            }
            file.write_all(&self.buf[..n])
                .map_err(|e| io_err(s, "writing file data", e))?;
            offset += n as u64;
        }
        Ok(offset)
    }

    /// Writes a GNU sparse entry: its stored segments, read straight from the
    /// layer stream, at their offsets, then the apparent size. The tar
    /// reader's own view of the entry (zeros for every hole) is never read;
    /// it skips the stored bytes instead. Returns the apparent size.
    pub(super) fn write_sparse_entry<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        raw: &mut dyn Read,
        file: &File,
        s: &Scratch,
    ) -> Result<u64, ApplyError> {
        self.copy_sparse(entry, raw, s, |chunk, offset| {
            write_sparse(file, chunk, offset).map_err(|e| io_err(s, "writing file data", e))
        })?;
        let size = entry.size();
        file.set_len(size)
            .map_err(|e| io_err(s, "setting sparse file size", e))?;
        Ok(size)
    }

    /// Reads a GNU sparse entry's stored data from the layer stream, handing
    /// each chunk to `sink` with its offset in the file, and lets the tar
    /// reader skip those bytes.
    pub(super) fn copy_sparse<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        raw: &mut dyn Read,
        s: &Scratch,
        mut sink: impl FnMut(&[u8], u64) -> Result<(), ApplyError>,
    ) -> Result<(), ApplyError> {
        let (map, data_pos) = self.sparse_map(entry, s)?;
        // The tar reader must stand right at the stored data, as it does
        // after parsing the entry's headers.
        if self.state.tar_pos() != data_pos || self.state.skip_credit() != 0 {
            return Err(ApplyError::Tar(io::Error::other(format!(
                "entry {:?}: sparse data not where the headers end",
                s.display()
            ))));
        }
        let mut stored: u64 = 0;
        for &(offset, len) in &map {
            let mut done: u64 = 0;
            while done < len {
                self.check_cancel()?;
                let want = usize::try_from(len - done)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                let n = read_full(raw, &mut self.buf[..want])
                    .map_err(|e| stream_error(&self.state, e))?;
                if n == 0 {
                    return Err(ApplyError::Tar(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("entry {:?}: sparse data truncated", s.display()),
                    )));
                }
                sink(&self.buf[..n], offset + done)?;
                done += n as u64;
                stored += n as u64;
            }
        }
        self.state.credit(stored);
        Ok(())
    }

    /// The data segments (offset, length) of a GNU sparse entry, and the
    /// archive offset its stored data starts at: the map is in the header and
    /// in the extension headers after it, which the tar reader has parsed and
    /// checked (ascending, ending at the apparent size, adding up to the
    /// stored size) but does not expose.
    fn sparse_map<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        s: &Scratch,
    ) -> Result<(Vec<(u64, u64)>, u64), ApplyError> {
        fn push(map: &mut Vec<(u64, u64)>, h: &tar::GnuSparseHeader) -> Result<(), ApplyError> {
            if h.is_empty() {
                return Ok(());
            }
            let offset = h.offset().map_err(ApplyError::Tar)?;
            let len = h.length().map_err(ApplyError::Tar)?;
            if len > 0 {
                map.push((offset, len));
            }
            Ok(())
        }
        const BLOCK: u64 = 512;
        let gnu = entry
            .header()
            .as_gnu()
            .ok_or_else(|| invalid(s, "sparse entry without a GNU header"))?;
        let mut map = Vec::new();
        for h in &gnu.sparse {
            push(&mut map, h)?;
        }
        let mut pos = entry.raw_header_position().saturating_add(BLOCK);
        let mut extended = gnu.is_extended();
        while extended {
            let block = self
                .state
                .captured(pos, pos.saturating_add(BLOCK))
                .ok_or_else(|| invalid(s, "sparse map extension header not found"))?;
            let mut ext = tar::GnuExtSparseHeader::new();
            ext.as_mut_bytes().copy_from_slice(&block);
            for h in &ext.sparse {
                push(&mut map, h)?;
            }
            extended = ext.is_extended();
            pos = pos.saturating_add(BLOCK);
        }
        Ok((map, pos))
    }
}

/// Reads until `buf` is full or the reader is exhausted.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes `chunk` at `offset`, skipping whole zero blocks (left as holes).
fn write_sparse(file: &File, chunk: &[u8], offset: u64) -> io::Result<()> {
    let mut pos = 0;
    while pos < chunk.len() {
        // Skip zero blocks.
        while pos < chunk.len() {
            let end = (pos + SPARSE_BLOCK).min(chunk.len());
            if chunk[pos..end].iter().fold(0u8, |a, &b| a | b) != 0 {
                break;
            }
            pos = end;
        }
        let start = pos;
        while pos < chunk.len() {
            let end = (pos + SPARSE_BLOCK).min(chunk.len());
            if chunk[pos..end].iter().fold(0u8, |a, &b| a | b) == 0 {
                break;
            }
            pos = end;
        }
        if pos > start {
            file.write_all_at(&chunk[start..pos], offset + start as u64)?;
        }
    }
    Ok(())
}
