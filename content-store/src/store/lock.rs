//! The per-ingest lock: an flock on the ingest directory's lock file, held by
//! the one writer of a reference.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{mkdir_all, remove_if_exists, Wait, LOCK_FILE, MAX_LOCK_BACKOFF};
use crate::error::{Error, Result};

/// An exclusive `flock` on an ingest's lock file. Closing the file (on drop)
/// releases the lock, including when the process dies.
#[derive(Debug)]
pub(super) struct IngestLock {
    _file: File,
}

/// Takes the exclusive lock of the ingest in `dir`. If `create`, the
/// directory is created as needed; otherwise a missing directory is
/// [`Error::IngestNotFound`].
///
/// A holder removes the ingest (including the lock file) before releasing the
/// lock, so after locking we check that the lock file we hold is still the one
/// at the path; if not, we locked a deleted file and must start over.
pub(super) fn lock_ingest(
    reference: &str,
    dir: &Path,
    create: bool,
    wait: Wait,
) -> Result<IngestLock> {
    let lock_path = dir.join(LOCK_FILE);
    let mut backoff = Duration::from_millis(1);
    let mut vanished = 0u32;
    loop {
        if create {
            mkdir_all(dir, 0o700)?;
        }
        let file = match super::open_private_rw(&lock_path) {
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
pub(super) fn remove_ingest_locked(dir: &Path) -> Result<()> {
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
