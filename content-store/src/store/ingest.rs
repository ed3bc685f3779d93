//! Ingests: opening (or resuming) a writer for a reference, listing,
//! aborting and cleaning up in-progress writes.

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use super::lock::{lock_ingest, remove_ingest_locked};
use super::writer::Writer;
use super::{
    mtime, read_small, remove_if_exists, unix_nanos, write_small, ContentStore, Expected,
    IngestStatus, Wait,
};
use super::{
    DATA_FILE, EXPECTED_FILE, HASH_CHUNK, REF_FILE, STARTED_FILE, TOTAL_FILE, WRITE_BUFFER,
};
use crate::digest::Digest;
use crate::error::{Error, Result};

impl ContentStore {
    /// Opens a writer for `reference`, resuming an existing ingest if there is
    /// one. Fails with [`Error::Locked`] if another writer holds the ingest and
    /// with [`Error::AlreadyExists`] if the expected blob is already committed.
    pub fn writer(&self, reference: &str, expected: Option<Expected>) -> Result<Writer> {
        self.open_writer(reference, expected, Wait::No)
    }

    /// Like [`ContentStore::writer`], but waits up to `timeout` for another
    /// writer of the same reference to finish. If that writer committed the
    /// expected blob, this returns [`Error::AlreadyExists`].
    pub fn writer_wait(
        &self,
        reference: &str,
        expected: Option<Expected>,
        timeout: Duration,
    ) -> Result<Writer> {
        let wait = match Instant::now().checked_add(timeout) {
            Some(deadline) => Wait::Until(deadline),
            None => Wait::Forever,
        };
        self.open_writer(reference, expected, wait)
    }

    fn open_writer(
        &self,
        reference: &str,
        expected: Option<Expected>,
        wait: Wait,
    ) -> Result<Writer> {
        if let Some(exp) = &expected {
            if self.exists(&exp.digest) {
                return Err(Error::AlreadyExists {
                    digest: exp.digest.clone(),
                });
            }
        }
        let dir = self.ingest_dir(reference);
        let lock = lock_ingest(reference, &dir, true, wait)?;
        // The previous holder may have just committed the blob we want.
        if let Some(exp) = &expected {
            if self.exists(&exp.digest) {
                remove_ingest_locked(&dir)?;
                return Err(Error::AlreadyExists {
                    digest: exp.digest.clone(),
                });
            }
        }

        let stored_total: Option<u64> =
            read_small(&dir.join(TOTAL_FILE)).and_then(|s| s.trim().parse().ok());
        let stored_expected =
            read_small(&dir.join(EXPECTED_FILE)).and_then(|s| Digest::parse(s.trim()).ok());
        let described = (|| {
            if read_small(&dir.join(REF_FILE)).as_deref() != Some(reference) {
                write_small(&dir, REF_FILE, reference)?;
            }
            if read_small(&dir.join(STARTED_FILE)).is_none() {
                write_small(
                    &dir,
                    STARTED_FILE,
                    &unix_nanos(SystemTime::now()).to_string(),
                )?;
            }
            Ok(())
        })();
        if let Err(e) = described {
            // E.g. a full disk: an ingest nobody can name is nobody's to resume.
            if read_small(&dir.join(REF_FILE)).as_deref() != Some(reference) {
                let _ = remove_ingest_locked(&dir);
            }
            return Err(e);
        }

        let data_path = dir.join(DATA_FILE);
        let mut file = super::open_private_rw(&data_path)
            .map_err(|e| Error::io("open ingest data", &data_path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat ingest data", &data_path, e))?
            .len();

        // Bytes written for a different blob, or more bytes than the blob can
        // have, cannot be resumed: start over rather than fail at commit.
        let mut reset = false;
        if let Some(exp) = &expected {
            if stored_expected.as_ref().is_some_and(|d| d != &exp.digest) {
                reset = true;
            }
            if let Some(size) = exp.size {
                if len > size || stored_total.is_some_and(|t| t != size) {
                    reset = true;
                }
            }
        }
        if reset && len > 0 {
            tracing::warn!(
                reference,
                len,
                "ingest was written for different content; restarting at 0"
            );
            file.set_len(0)
                .map_err(|e| Error::io("truncate ingest data", &data_path, e))?;
        }

        // Record the current expectations (for list_ingests and the next resume).
        match &expected {
            Some(exp) => {
                write_small(&dir, EXPECTED_FILE, exp.digest.as_str())?;
                match exp.size {
                    Some(size) => write_small(&dir, TOTAL_FILE, &size.to_string())?,
                    None => remove_if_exists(&dir.join(TOTAL_FILE))?,
                }
            }
            None => {
                remove_if_exists(&dir.join(EXPECTED_FILE))?;
                remove_if_exists(&dir.join(TOTAL_FILE))?;
            }
        }

        let resume_len = if reset { 0 } else { len };
        let (hasher, offset) =
            rehash(&file, resume_len).map_err(|e| Error::io("hash ingest data", &data_path, e))?;
        if offset < len && !reset {
            // Only possible if the file shrank under us; keep file and hash in step.
            file.set_len(offset)
                .map_err(|e| Error::io("truncate ingest data", &data_path, e))?;
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io("seek ingest data", &data_path, e))?;
        // Mark the ingest as active so a cleanup sweep does not see it as stale.
        file.set_modified(SystemTime::now())
            .map_err(|e| Error::io("touch ingest data", &data_path, e))?;
        if offset > 0 {
            tracing::debug!(reference, offset, "resuming ingest");
        }

        Ok(Writer {
            store: self.clone(),
            reference: reference.to_owned(),
            dir,
            expected,
            hasher,
            offset,
            writeback_from: offset,
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            _lock: lock,
        })
    }

    /// Writes a small blob (manifest, config) in one go. Verifies it against
    /// `expected` if given; succeeds without writing if it is already present.
    pub fn write_blob(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest> {
        let actual = Digest::of(data);
        if let Some(exp) = expected {
            if exp != &actual {
                return Err(Error::DigestMismatch {
                    reference: exp.to_string(),
                    expected: exp.clone(),
                    actual,
                });
            }
        }
        if self.exists(&actual) {
            return Ok(actual);
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let reference = format!(
            "write-blob-{}-{}-{}",
            std::process::id(),
            unix_nanos(SystemTime::now()),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let exp = Expected::new(actual.clone(), Some(data.len() as u64));
        let mut writer = match self.writer(&reference, Some(exp)) {
            Ok(w) => w,
            Err(Error::AlreadyExists { .. }) => return Ok(actual),
            Err(e) => return Err(e),
        };
        if let Err(e) = writer.write_all(data) {
            let path = writer.dir.join(DATA_FILE);
            // Best effort: the write error is the one worth reporting.
            let _ = writer.abort();
            return Err(Error::io("write ingest data", path, e));
        }
        writer.commit(None, None)?;
        Ok(actual)
    }

    /// In-progress and abandoned ingests, sorted by reference. Ingest
    /// directories without a readable `ref` file (a crash while one was being
    /// created) are skipped; [`ContentStore::cleanup_ingests`] removes them.
    pub fn list_ingests(&self) -> Result<Vec<IngestStatus>> {
        let mut out = Vec::new();
        for (dir, reference) in self.named_ingests()? {
            let offset = fs::symlink_metadata(dir.join(DATA_FILE)).map_or(0, |m| m.len());
            let total = read_small(&dir.join(TOTAL_FILE)).and_then(|s| s.trim().parse().ok());
            let expected =
                read_small(&dir.join(EXPECTED_FILE)).and_then(|s| Digest::parse(s.trim()).ok());
            let updated = ingest_updated(&dir);
            let started = read_small(&dir.join(STARTED_FILE))
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map_or(updated, |n| UNIX_EPOCH + Duration::from_nanos(n));
            // File times come from the kernel's coarse clock, `startedat` from the
            // fine one: the first write can look older than the open by a tick.
            let updated = updated.max(started);
            out.push(IngestStatus {
                reference,
                offset,
                total,
                expected,
                started,
                updated,
            });
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// The ingest directories with a readable `ref` file, with that
    /// reference (one without is a crash's leftover no writer can resume).
    fn named_ingests(&self) -> Result<Vec<(PathBuf, String)>> {
        let root = &self.inner.ingest;
        let mut out = Vec::new();
        for entry in fs::read_dir(root).map_err(|e| Error::io("list ingests", root, e))? {
            let entry = entry.map_err(|e| Error::io("list ingests", root, e))?;
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = entry.path();
            if let Some(reference) = read_small(&dir.join(REF_FILE)) {
                out.push((dir, reference));
            }
        }
        Ok(out)
    }

    /// Removes an ingest. [`Error::IngestNotFound`] if there is none,
    /// [`Error::Locked`] if a writer is using it.
    pub fn abort(&self, reference: &str) -> Result<()> {
        let dir = self.ingest_dir(reference);
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Err(Error::IngestNotFound {
                reference: reference.to_owned(),
            });
        }
        let _lock = lock_ingest(reference, &dir, false, Wait::No)?;
        remove_ingest_locked(&dir)
    }

    /// Startup sweep: removes ingests that no writer holds and that have not
    /// been updated for `older_than`, plus stray files (left by a crash or by
    /// hand) in the ingest and blobs directories. Returns how many entries
    /// were removed.
    pub fn cleanup_ingests(&self, older_than: Duration) -> Result<usize> {
        let now = SystemTime::now();
        let is_old = |t: SystemTime| now.duration_since(t).unwrap_or(Duration::ZERO) >= older_than;
        let mut removed = 0;

        let root = &self.inner.ingest;
        for entry in fs::read_dir(root).map_err(|e| Error::io("list ingests", root, e))? {
            let entry = entry.map_err(|e| Error::io("list ingests", root, e))?;
            let path = entry.path();
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let _lock = match lock_ingest(&name, &path, false, Wait::No) {
                    Ok(lock) => lock,
                    Err(Error::Locked { .. } | Error::IngestNotFound { .. }) => continue,
                    Err(e) => return Err(e),
                };
                // Without its ref (a crash or a full disk right after the
                // mkdir) no writer can ever resume it: removed at once.
                let unnamed = read_small(&path.join(REF_FILE)).is_none();
                if unnamed || is_old(ingest_updated(&path)) {
                    let reference = read_small(&path.join(REF_FILE)).unwrap_or(name);
                    remove_ingest_locked(&path)?;
                    tracing::info!(reference, "removed stale ingest");
                    removed += 1;
                }
            } else if entry.metadata().is_ok_and(|m| is_old(mtime(&m))) {
                remove_if_exists(&path)?;
                removed += 1;
            }
        }

        let blobs = &self.inner.blobs;
        for entry in fs::read_dir(blobs).map_err(|e| Error::io("list blobs", blobs, e))? {
            let entry = entry.map_err(|e| Error::io("list blobs", blobs, e))?;
            let valid_name = entry
                .file_name()
                .to_str()
                .and_then(Digest::from_hex)
                .is_some();
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if valid_name && meta.is_file() {
                continue;
            }
            if !is_old(mtime(&meta)) {
                continue;
            }
            let path = entry.path();
            let res = if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match res {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed stray entry in blobs dir");
                    removed += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove stray blob entry", path, e)),
            }
        }
        Ok(removed)
    }

    /// Removes the ingests whose reference starts with `prefix`, that no
    /// writer holds and that have not been updated for `idle`: the partial
    /// downloads a caller keeps for a resume only as long as one could still
    /// come. Returns the references removed.
    pub fn remove_idle_ingests(&self, prefix: &str, idle: Duration) -> Result<Vec<String>> {
        let now = SystemTime::now();
        let mut removed = Vec::new();
        for (path, reference) in self.named_ingests()? {
            if !reference.starts_with(prefix) {
                continue;
            }
            let is_idle = |dir: &Path| {
                now.duration_since(ingest_updated(dir))
                    .unwrap_or(Duration::ZERO)
                    >= idle
            };
            if !is_idle(&path) {
                continue;
            }
            let _lock = match lock_ingest(&reference, &path, false, Wait::No) {
                Ok(lock) => lock,
                Err(Error::Locked { .. } | Error::IngestNotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            // A writer may have resumed it between the check and the lock.
            if !is_idle(&path) {
                continue;
            }
            remove_ingest_locked(&path)?;
            removed.push(reference);
        }
        removed.sort();
        Ok(removed)
    }

    /// Ingest directory for a reference. References are arbitrary strings, so
    /// the directory is named by their sha256: always a safe, fixed-length name.
    fn ingest_dir(&self, reference: &str) -> PathBuf {
        self.inner
            .ingest
            .join(hex::encode(Sha256::digest(reference.as_bytes())))
    }
}

/// Hashes the first `len` bytes of `file`; returns the hasher and how many
/// bytes were actually there.
pub(super) fn rehash(file: &File, len: u64) -> io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK.min(usize::try_from(len).unwrap_or(HASH_CHUNK))];
    let mut pos = 0u64;
    while pos < len {
        let want = usize::try_from(len - pos).map_or(buf.len(), |l| l.min(buf.len()));
        let n = match file.read_at(&mut buf[..want], pos) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok((hasher, pos))
}

/// Last activity of an ingest: the later of its data file's and directory's
/// modification times.
fn ingest_updated(dir: &Path) -> SystemTime {
    let data = fs::symlink_metadata(dir.join(DATA_FILE)).map(|m| mtime(&m));
    let dir = fs::symlink_metadata(dir).map(|m| mtime(&m));
    match (data, dir) {
        (Ok(a), Ok(b)) => a.max(b),
        (Ok(a), Err(_)) | (Err(_), Ok(a)) => a,
        (Err(_), Err(_)) => UNIX_EPOCH,
    }
}
