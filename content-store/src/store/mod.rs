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
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::digest::Digest;
use crate::error::{Error, Result};

mod ingest;
mod lock;
mod reader;
mod writer;

pub use reader::Reader;
pub use writer::Writer;

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

/// Opens (creating) a file of an ingest read-write, owner-only, never
/// through a symlink planted in its place; existing contents are kept.
pub(super) fn open_private_rw(path: &Path) -> io::Result<fs::File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
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
