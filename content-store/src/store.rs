//! The store itself: committed blobs, readers, and resumable, verified ingests.
//!
//! On-disk layout under the root passed to [`ContentStore::open`]:
//!
//! ```text
//! blobs/sha256/<hex>        committed blobs, mode 0444, never partially written
//! ingest/<sha256(ref)>/     one directory per in-progress write
//!     lock                  flock'ed by the writer that owns the ingest
//!     ref                   the original reference string
//!     data                  the bytes received so far (its length is the offset)
//!     total, expected       what the writer expects (size, digest), if known
//!     startedat             unix nanoseconds when the ingest was first opened
//! ```
//!
//! The invariant is that a path under `blobs/` only ever appears through a
//! `rename` of a fully written, verified and fsynced file, followed by an
//! fsync of the directory, so a crash can never leave a blob that a restart
//! would trust but that is wrong.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Writes are buffered so that hashing and syscalls happen in large chunks;
/// many small network reads would otherwise each cost a `write(2)`.
const WRITE_BUFFER: usize = 128 * 1024;
/// Chunk size used when re-hashing an existing ingest on resume.
const HASH_CHUNK: usize = 1024 * 1024;
/// Upper bound on the poll interval of [`ContentStore::writer_wait`].
const MAX_LOCK_BACKOFF: Duration = Duration::from_millis(50);

const LOCK_FILE: &str = "lock";
const DATA_FILE: &str = "data";
const REF_FILE: &str = "ref";
const TOTAL_FILE: &str = "total";
const EXPECTED_FILE: &str = "expected";
const STARTED_FILE: &str = "startedat";

/// A committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub digest: Digest,
    pub size: u64,
    /// When the blob was committed (the file's modification time, i.e. when
    /// its last byte was written).
    pub created: SystemTime,
}

/// Disk usage of the store, for metrics and `berthctl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Number of committed blobs.
    pub blobs: u64,
    /// Total size of committed blobs in bytes.
    pub bytes: u64,
    /// Number of ingest directories (in progress or abandoned).
    pub ingests: u64,
    /// Bytes held by ingest data files.
    pub ingest_bytes: u64,
}

/// Size and free space of the filesystem under the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes that can still be written.
    pub available: u64,
    /// The filesystem's size in bytes.
    pub total: u64,
}

/// The state of one in-progress (or abandoned) ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestStatus {
    pub reference: String,
    /// Bytes written to disk so far. A live writer may hold up to 128 KiB more
    /// in its buffer.
    pub offset: u64,
    /// The expected total size, if the writer knew it.
    pub total: Option<u64>,
    /// The expected digest, if the writer knew it.
    pub expected: Option<Digest>,
    pub started: SystemTime,
    pub updated: SystemTime,
}

/// What an ingest is expected to produce; checked on commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub digest: Digest,
    pub size: Option<u64>,
}

impl Expected {
    pub fn new(digest: Digest, size: Option<u64>) -> Self {
        Expected { digest, size }
    }
}

/// Content-addressed blob store. Cheap to clone; safe to share between
/// threads and between processes (ingests are coordinated with `flock`).
#[derive(Debug, Clone)]
pub struct ContentStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    blobs: PathBuf,
    ingest: PathBuf,
}

/// How long [`lock_ingest`] may wait for another holder.
#[derive(Clone, Copy)]
enum Wait {
    No,
    Until(Instant),
    Forever,
}

impl ContentStore {
    /// Opens (creating if needed) a store rooted at `root`, normally
    /// `<berth root>/content`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let blobs_parent = root.join("blobs");
        let blobs = blobs_parent.join("sha256");
        let ingest = root.join("ingest");
        mkdir_all(&root, 0o711)?;
        mkdir_all(&blobs, 0o700)?;
        mkdir_all(&ingest, 0o700)?;
        // Make the directories themselves durable, so the first committed blob
        // cannot vanish with its parent after a crash.
        for dir in [&root, &blobs_parent, &blobs] {
            sync_dir(dir)?;
        }
        Ok(ContentStore {
            inner: Arc::new(Inner {
                root,
                blobs,
                ingest,
            }),
        })
    }

    /// The root directory this store was opened on.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the blob for `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.blobs.join(digest.hex())
    }

    /// Size and commit time of a blob.
    pub fn info(&self, digest: &Digest) -> Result<Info> {
        let path = self.blob_path(digest);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(info_from(digest.clone(), &meta)),
            Ok(_) => Err(Error::NotFound {
                digest: digest.clone(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotFound {
                digest: digest.clone(),
            }),
            Err(e) => Err(Error::io("stat blob", path, e)),
        }
    }

    /// Whether a committed blob with this digest exists.
    pub fn exists(&self, digest: &Digest) -> bool {
        fs::symlink_metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file())
    }

    /// Opens a blob for reading.
    pub fn reader(&self, digest: &Digest) -> Result<Reader> {
        let path = self.blob_path(digest);
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) =>
            {
                return Err(Error::NotFound {
                    digest: digest.clone(),
                })
            }
            Err(e) => return Err(Error::io("open blob", path, e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| Error::io("stat blob", &path, e))?;
        if !meta.is_file() {
            return Err(Error::NotFound {
                digest: digest.clone(),
            });
        }
        Ok(Reader {
            digest: digest.clone(),
            file,
            size: meta.len(),
            pos: 0,
        })
    }

    /// Reads a whole blob into memory, refusing blobs larger than `max` (a
    /// manifest from a hostile registry must not exhaust memory).
    pub fn read_all(&self, digest: &Digest, max: u64) -> Result<Vec<u8>> {
        let mut reader = self.reader(digest)?;
        let size = reader.size();
        if size > max {
            return Err(Error::TooLarge {
                digest: digest.clone(),
                size,
                max,
            });
        }
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        reader
            .read_to_end(&mut buf)
            .map_err(|e| Error::io("read blob", self.blob_path(digest), e))?;
        Ok(buf)
    }

    /// All committed blobs, sorted by digest. Anything in the blobs directory
    /// that is not a regular file named by 64 lowercase hex characters (such
    /// as a stray temporary file) is ignored.
    pub fn list(&self) -> Result<Vec<Info>> {
        let dir = &self.inner.blobs;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io("list blobs", dir, e))? {
            let entry = entry.map_err(|e| Error::io("list blobs", dir, e))?;
            let Some(digest) = entry.file_name().to_str().and_then(Digest::from_hex) else {
                continue;
            };
            match entry.metadata() {
                Ok(meta) if meta.is_file() => out.push(info_from(digest, &meta)),
                Ok(_) => {}
                // Deleted while we were listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("stat blob", entry.path(), e)),
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Deletes a committed blob. Readers that already opened it keep working.
    pub fn delete(&self, digest: &Digest) -> Result<()> {
        let path = self.blob_path(digest);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                return Err(Error::NotFound {
                    digest: digest.clone(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    digest: digest.clone(),
                })
            }
            Err(e) => return Err(Error::io("stat blob", path, e)),
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::debug!(%digest, "deleted blob");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotFound {
                digest: digest.clone(),
            }),
            Err(e) => Err(Error::io("delete blob", path, e)),
        }
    }

    /// Counts blobs and ingests and the bytes they hold.
    pub fn usage(&self) -> Result<Usage> {
        let mut usage = Usage::default();
        for info in self.list()? {
            usage.blobs += 1;
            usage.bytes += info.size;
        }
        let dir = &self.inner.ingest;
        for entry in fs::read_dir(dir).map_err(|e| Error::io("list ingests", dir, e))? {
            let entry = entry.map_err(|e| Error::io("list ingests", dir, e))?;
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            usage.ingests += 1;
            if let Ok(meta) = fs::symlink_metadata(entry.path().join(DATA_FILE)) {
                usage.ingest_bytes += meta.len();
            }
        }
        Ok(usage)
    }

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
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&data_path)
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

    /// The filesystem holding the store: its size and the bytes it can still
    /// take (what root may use when running as root, the blocks reserved for
    /// root included, else what an unprivileged writer may).
    pub fn space(&self) -> Result<Space> {
        let path = &self.inner.ingest;
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| {
            Error::io(
                "statvfs",
                path,
                io::Error::new(io::ErrorKind::InvalidInput, e),
            )
        })?;
        // SAFETY: statvfs(3) writes into the zeroed struct we own and reads the
        // NUL-terminated path, both valid for the duration of the call.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(Error::io("statvfs", path, io::Error::last_os_error()));
        }
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let free = if unsafe { libc::geteuid() } == 0 {
            st.f_bfree
        } else {
            st.f_bavail
        };
        Ok(Space {
            available: free.saturating_mul(st.f_frsize),
            total: st.f_blocks.saturating_mul(st.f_frsize),
        })
    }

    /// Ingest directory for a reference. References are arbitrary strings, so
    /// the directory is named by their sha256: always a safe, fixed-length name.
    fn ingest_dir(&self, reference: &str) -> PathBuf {
        self.inner
            .ingest
            .join(hex::encode(Sha256::digest(reference.as_bytes())))
    }
}

/// A reader over a committed blob. Holds the file open, so it keeps working
/// if the blob is deleted meanwhile.
#[derive(Debug)]
pub struct Reader {
    digest: Digest,
    file: File,
    size: u64,
    pos: u64,
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

/// An exclusive, resumable write of one blob. Bytes are hashed as they are
/// written; nothing becomes visible in the store until [`Writer::commit`]
/// has verified and fsynced them. Dropping the writer keeps the ingest on
/// disk for a later resume and releases the lock.
#[derive(Debug)]
pub struct Writer {
    store: ContentStore,
    reference: String,
    dir: PathBuf,
    expected: Option<Expected>,
    hasher: Sha256,
    offset: u64,
    /// Writeback of the file has been started up to here (see [`WRITEBACK_STEP`]).
    writeback_from: u64,
    // Declared before the lock so that buffered bytes are flushed before the
    // lock is released on drop.
    file: BufWriter<File>,
    _lock: IngestLock,
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

/// An exclusive `flock` on an ingest's lock file. Closing the file (on drop)
/// releases the lock, including when the process dies.
#[derive(Debug)]
struct IngestLock {
    _file: File,
}

/// Takes the exclusive lock of the ingest in `dir`. If `create`, the
/// directory is created as needed; otherwise a missing directory is
/// [`Error::IngestNotFound`].
///
/// A holder removes the ingest (including the lock file) before releasing the
/// lock, so after locking we check that the lock file we hold is still the one
/// at the path; if not, we locked a deleted file and must start over.
fn lock_ingest(reference: &str, dir: &Path, create: bool, wait: Wait) -> Result<IngestLock> {
    let lock_path = dir.join(LOCK_FILE);
    let mut backoff = Duration::from_millis(1);
    let mut vanished = 0u32;
    loop {
        if create {
            mkdir_all(dir, 0o700)?;
        }
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The directory was removed by a holder that just finished.
                vanished += 1;
                if !create {
                    return Err(Error::IngestNotFound {
                        reference: reference.to_owned(),
                    });
                }
                if vanished > 1000 {
                    return Err(Error::io("open ingest lock", &lock_path, e));
                }
                continue;
            }
            Err(e) => return Err(Error::io("open ingest lock", &lock_path, e)),
        };
        match try_flock(&file) {
            Ok(true) => {
                if same_file(&file, &lock_path) {
                    return Ok(IngestLock { _file: file });
                }
                vanished += 1;
                if vanished > 1000 {
                    return Err(Error::io(
                        "lock ingest",
                        &lock_path,
                        io::Error::other("lock file keeps being replaced"),
                    ));
                }
                continue;
            }
            Ok(false) => {}
            Err(e) => return Err(Error::io("lock ingest", &lock_path, e)),
        }
        drop(file);
        let sleep = match wait {
            Wait::No => None,
            Wait::Forever => Some(backoff),
            Wait::Until(deadline) => deadline
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero())
                .map(|left| left.min(backoff)),
        };
        let Some(sleep) = sleep else {
            return Err(Error::Locked {
                reference: reference.to_owned(),
            });
        };
        std::thread::sleep(sleep);
        backoff = (backoff * 2).min(MAX_LOCK_BACKOFF);
    }
}

/// Non-blocking exclusive flock. `Ok(false)` if someone else holds it.
fn try_flock(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: flock(2) only takes a file descriptor, which `file` keeps
        // open for the duration of the call; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes an ingest directory whose lock the caller holds. Everything but
/// the lock file goes first, so a waiter can never lock a fresh lock file
/// while our data is still there.
fn remove_ingest_locked(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list ingest", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list ingest", dir, e))?;
        if entry.file_name() == LOCK_FILE {
            continue;
        }
        let path = entry.path();
        let res = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove ingest file", path, e)),
        }
    }
    remove_if_exists(&dir.join(LOCK_FILE))?;
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        // NotEmpty: a new writer of the same reference already moved in.
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTEMPTY) =>
        {
            Ok(())
        }
        Err(e) => Err(Error::io("remove ingest dir", dir, e)),
    }
}

/// Hashes the first `len` bytes of `file`; returns the hasher and how many
/// bytes were actually there.
fn rehash(file: &File, len: u64) -> io::Result<(Sha256, u64)> {
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

fn mtime(meta: &fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or(UNIX_EPOCH)
}

fn info_from(digest: Digest, meta: &fs::Metadata) -> Info {
    Info {
        digest,
        size: meta.len(),
        created: mtime(meta),
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn mkdir_all(path: &Path, mode: u32) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| Error::io("create directory", path, e))
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", path, e))
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Reads a small metadata file; `None` if absent or unreadable (metadata is
/// advisory: commit always verifies the bytes themselves).
fn read_small(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// Replaces a small metadata file atomically (write temp, rename), so a crash
/// leaves either the old or the new contents, never a torn one. No fsync:
/// losing it only loses a hint.
fn write_small(dir: &Path, name: &str, contents: &str) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| Error::io("create ingest metadata", &tmp, e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| Error::io("write ingest metadata", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(|e| Error::io("rename ingest metadata", &path, e))
}
