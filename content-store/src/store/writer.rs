//! Writing an ingest: buffered appends hashed as they go, truncation for
//! resumes, and the verified, fsynced commit into the blob store.

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::ingest::rehash;
use super::lock::{remove_ingest_locked, IngestLock};
use super::{info_from, sync_dir, ContentStore, Expected, Info, DATA_FILE};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// An exclusive, resumable write of one blob. Bytes are hashed as they are
/// written; nothing becomes visible in the store until [`Writer::commit`]
/// has verified and fsynced them. Dropping the writer keeps the ingest on
/// disk for a later resume and releases the lock.
#[derive(Debug)]
pub struct Writer {
    pub(super) store: ContentStore,
    pub(super) reference: String,
    pub(super) dir: PathBuf,
    pub(super) expected: Option<Expected>,
    pub(super) hasher: Sha256,
    pub(super) offset: u64,
    /// Writeback of the file has been started up to here (see [`WRITEBACK_STEP`]).
    pub(super) writeback_from: u64,
    // Declared before the lock so that buffered bytes are flushed before the
    // lock is released on drop.
    pub(super) file: BufWriter<File>,
    pub(super) _lock: IngestLock,
}

impl Writer {
    /// Bytes written so far (including a resumed prefix).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The digest of what was written so far: the committed blob's, if
    /// nothing more is written. Lets a caller protect the blob (a GC lease)
    /// before it exists.
    pub fn digest_so_far(&self) -> Digest {
        Digest::from_sha256_bytes(self.hasher.clone().finalize().into())
    }

    /// What this writer was opened to produce, if known.
    pub fn expected(&self) -> Option<&Expected> {
        self.expected.as_ref()
    }

    fn data_path(&self) -> PathBuf {
        self.dir.join(DATA_FILE)
    }

    /// Cuts the ingest back to `offset` bytes (normally 0, when the registry
    /// cannot serve the range needed to resume) and restores the hash state.
    pub fn truncate(&mut self, offset: u64) -> Result<()> {
        let path = self.data_path();
        self.file
            .flush()
            .map_err(|e| Error::io("flush ingest data", &path, e))?;
        let file = self.file.get_mut();
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat ingest data", &path, e))?
            .len();
        if offset > len {
            return Err(Error::io(
                format!("truncate ingest {:?} to {offset} bytes", self.reference),
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "beyond the data written"),
            ));
        }
        file.set_len(offset)
            .map_err(|e| Error::io("truncate ingest data", &path, e))?;
        let (hasher, hashed) =
            rehash(file, offset).map_err(|e| Error::io("hash ingest data", &path, e))?;
        if hashed != offset {
            file.set_len(hashed)
                .map_err(|e| Error::io("truncate ingest data", &path, e))?;
        }
        file.seek(SeekFrom::Start(hashed))
            .map_err(|e| Error::io("seek ingest data", &path, e))?;
        self.hasher = hasher;
        self.offset = hashed;
        // Behind the cut there is nothing left to write back.
        self.writeback_from = self.writeback_from.min(hashed);
        Ok(())
    }

    /// Verifies the written bytes against `size`/`expected` and against the
    /// expectations the writer was opened with, makes them durable and moves
    /// them into place. On a mismatch the ingest is removed (bad bytes are
    /// never kept for a resume). If the blob was committed meanwhile through
    /// another reference, our copy is discarded and the existing blob's info
    /// returned.
    pub fn commit(self, size: Option<u64>, expected: Option<&Digest>) -> Result<Info> {
        let Writer {
            store,
            reference,
            dir,
            expected: opened,
            hasher,
            offset,
            file,
            _lock: lock,
            ..
        } = self;
        let data_path = dir.join(DATA_FILE);
        let file = file
            .into_inner()
            .map_err(|e| Error::io("flush ingest data", &data_path, e.into_error()))?;
        let disk_len = file
            .metadata()
            .map_err(|e| Error::io("stat ingest data", &data_path, e))?
            .len();
        if disk_len != offset {
            remove_ingest_locked(&dir)?;
            return Err(Error::io(
                format!("commit ingest {reference:?}"),
                data_path,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("data file is {disk_len} bytes but {offset} were written"),
                ),
            ));
        }

        let size_checks = [size, opened.as_ref().and_then(|e| e.size)];
        for want in size_checks.into_iter().flatten() {
            if want != offset {
                remove_ingest_locked(&dir)?;
                return Err(Error::SizeMismatch {
                    reference,
                    expected: want,
                    actual: offset,
                });
            }
        }
        let actual = Digest::from_sha256_bytes(hasher.finalize().into());
        let digest_checks = [expected, opened.as_ref().map(|e| &e.digest)];
        for want in digest_checks.into_iter().flatten() {
            if want != &actual {
                remove_ingest_locked(&dir)?;
                return Err(Error::DigestMismatch {
                    reference,
                    expected: want.clone(),
                    actual,
                });
            }
        }

        if store.exists(&actual) {
            remove_ingest_locked(&dir)?;
            drop(lock);
            return store.info(&actual);
        }

        file.sync_all()
            .map_err(|e| Error::io("fsync ingest data", &data_path, e))?;
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(|e| Error::io("chmod ingest data", &data_path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("stat ingest data", &data_path, e))?;
        let blob_path = store.blob_path(&actual);
        if let Err(e) = fs::rename(&data_path, &blob_path) {
            // Keep the ingest resumable by a non-root writer.
            let _ = file.set_permissions(fs::Permissions::from_mode(0o600));
            return Err(Error::io("rename ingest into", blob_path, e));
        }
        sync_dir(&store.inner.blobs)?;
        remove_ingest_locked(&dir)?;
        drop(lock);
        tracing::debug!(%actual, size = offset, reference, "committed blob");
        Ok(info_from(actual, &meta))
    }

    /// Discards the ingest.
    pub fn abort(self) -> Result<()> {
        let Writer {
            dir, file, _lock, ..
        } = self;
        // Do not flush bytes we are about to delete.
        let (_file, _buffered) = file.into_parts();
        remove_ingest_locked(&dir)
    }
}

/// A big blob's data is handed to the disk in steps of this size while it streams in,
/// so the fsync at commit waits for little more than the last step instead of the
/// whole blob (bench-cri's cold pull, three 32 MiB blobs at once, fetch to commit:
/// 200-224 ms before, 176-203 ms after, on a noisy shared disk).
const WRITEBACK_STEP: u64 = 8 << 20;

impl Writer {
    /// Starts (does not wait for) writeback of what has reached the file since the
    /// last step. Only a hint: an error here changes nothing, the fsync at commit
    /// is what makes the data durable.
    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        let fd = self.file.get_ref().as_raw_fd();
        let from = self.writeback_from as libc::off64_t;
        // SAFETY: sync_file_range only reads the descriptor number and offsets; the
        // file stays open (borrowed from self) for the call.
        unsafe { libc::sync_file_range(fd, from, 0, libc::SYNC_FILE_RANGE_WRITE) };
        self.writeback_from = self.offset;
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(size) = self.expected.as_ref().and_then(|e| e.size) {
            if self.offset.saturating_add(buf.len() as u64) > size {
                // Fail early rather than fill the disk for a blob that can
                // only fail verification.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "ingest {:?}: write past the expected size of {size} bytes",
                        self.reference
                    ),
                ));
            }
        }
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.offset += n as u64;
        if self.offset.saturating_sub(self.writeback_from) >= WRITEBACK_STEP {
            self.start_writeback();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
