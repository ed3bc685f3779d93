//! The metadata database behind a narrow trait of berth's own, so that sled can
//! be replaced (redb is the fallback) without touching the services. Values are
//! opaque bytes; the typed records live with their owners (images, leases).

pub mod cri;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata database at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("metadata database {op} in {bucket}: {source}")]
    Op {
        op: &'static str,
        bucket: &'static str,
        source: sled::Error,
    },
    #[error("metadata record {bucket}/{key} is corrupt: {reason}")]
    Corrupt {
        bucket: &'static str,
        key: String,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, MetaError>;

/// A named keyspace. Static names keep the set of buckets visible in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bucket(pub &'static str);

pub const IMAGES: Bucket = Bucket("images");
pub const LEASES: Bucket = Bucket("leases");
/// Task records (`berthctl run`): one per container, keyed by its id.
pub const TASKS: Bucket = Bucket("tasks");
/// CRI pod sandboxes, keyed by id.
pub const SANDBOXES: Bucket = Bucket("sandboxes");
/// Records recovery could not read, kept aside under `<bucket>/<key>`.
pub const QUARANTINE: Bucket = Bucket("quarantine");

pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// What berth needs from a metadata store: keyed records per bucket, atomic
/// batches within a bucket, and an explicit durability point.
pub trait MetaStore: Send + Sync + 'static {
    fn get(&self, bucket: Bucket, key: &str) -> Result<Option<Vec<u8>>>;
    fn list(&self, bucket: Bucket) -> Result<Vec<(String, Vec<u8>)>>;
    /// Applies all ops or none.
    fn apply(&self, bucket: Bucket, ops: Vec<Op>) -> Result<()>;
    /// Makes every applied op durable; call before replying to a request
    /// whose effect must survive kill -9, on the thread that applied the ops
    /// (SledStore fails the flush if that thread's writes were lost with a
    /// broken database instance).
    fn flush(&self) -> Result<()>;

    fn put(&self, bucket: Bucket, key: &str, value: Vec<u8>) -> Result<()> {
        self.apply(bucket, vec![Op::Put(key.to_string(), value)])
    }
    fn delete(&self, bucket: Bucket, key: &str) -> Result<()> {
        self.apply(bucket, vec![Op::Delete(key.to_string())])
    }
}

/// sled behind a handle that can be replaced: sled 0.34 keeps the first
/// I/O error of its log writer (ENOSPC, say) and fails every later call with
/// it, even once the disk has room again. A read or write that meets such an
/// error drops that instance, opens the database afresh (sled recovers from
/// its log as after a crash) and retries once. A flush never reopens or
/// retries: it fails on the broken instance, so writes it would have made
/// durable are never acknowledged; and a flush on the new instance fails for
/// a thread whose unflushed writes went to the old one (callers write and
/// flush in one blocking closure, so the thread is the caller).
pub struct SledStore {
    path: PathBuf,
    /// `None` between a failed reopen and the next try.
    db: RwLock<Option<(u64, sled::Db)>>,
    generation: AtomicU64,
}

thread_local! {
    /// The oldest generation this thread wrote to since its last flush
    /// (0: none).
    static UNFLUSHED: Cell<u64> = const { Cell::new(0) };
}

/// Starts a unit of work on this thread: writes an earlier unit left
/// unflushed (its request failed before its flush, so it promised nothing)
/// are no longer this thread's to answer for. Without it a pooled thread
/// carried them over, and the next, unrelated request's flush reported them
/// as its own lost writes (seen: RemovePodSandbox failing after a full disk
/// was freed, for a create that had failed on it).
pub(crate) fn begin_unit() {
    UNFLUSHED.with(|u| u.set(0));
}

impl SledStore {
    pub fn open(path: &Path) -> Result<SledStore> {
        Ok(SledStore {
            path: path.to_path_buf(),
            db: RwLock::new(Some((1, open_sled(path)?))),
            generation: AtomicU64::new(1),
        })
    }

    fn current(&self) -> Option<(u64, sled::Db)> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `f` on the current instance; after an I/O error, on a fresh one.
    /// Returns the generation that answered.
    fn with_db<T>(
        &self,
        op: &'static str,
        bucket: Bucket,
        f: impl Fn(&sled::Db) -> sled::Result<T>,
    ) -> Result<(u64, T)> {
        let wrap = |source| MetaError::Op {
            op,
            bucket: bucket.0,
            source,
        };
        let failed = match self.current() {
            Some((gen, db)) => match f(&db) {
                Err(sled::Error::Io(e)) => (gen, e),
                other => return other.map(|v| (gen, v)).map_err(wrap),
            },
            None => (
                0,
                std::io::Error::other("the metadata database is not open"),
            ),
        };
        tracing::warn!(op, bucket = bucket.0, error = %failed.1, "metadata I/O error; reopening the database");
        let (gen, db) = self.reopen(failed.0).map_err(|e| {
            tracing::warn!(error = %e, "reopening the metadata database failed");
            // Why the reopen failed (a disk still full, say) is what the
            // caller's answer should say, not only "not open".
            let kind = match &e {
                MetaError::Open {
                    source: sled::Error::Io(io),
                    ..
                } => io.kind(),
                _ => failed.1.kind(),
            };
            wrap(sled::Error::Io(std::io::Error::new(
                kind,
                format!("{}; reopening the database failed: {e}", failed.1),
            )))
        })?;
        f(&db).map(|v| (gen, v)).map_err(wrap)
    }

    /// Replaces instance `broken` (unless another caller already did).
    fn reopen(&self, broken: u64) -> Result<(u64, sled::Db)> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some((gen, db)) = slot.as_ref() {
            if *gen != broken {
                return Ok((*gen, db.clone()));
            }
        }
        // The broken instance must be gone (its file lock with it) first.
        drop(slot.take());
        let db = open_sled(&self.path)?;
        let gen = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *slot = Some((gen, db.clone()));
        tracing::info!(path = %self.path.display(), generation = gen, "metadata database reopened");
        Ok((gen, db))
    }
}

/// Opens the database. Just after a handle was dropped (a reopen, a restart
/// in the same process) sled's flusher thread may hold the file lock a
/// moment longer, so a lock conflict is retried for a bounded time (seen in
/// CI as `WouldBlock`); a lock another process keeps still fails.
fn open_sled(path: &Path) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match open_sled_once(path) {
            Err(e) if is_lock_conflict(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// sled 0.34 reports a held file lock only as an `Other` I/O error whose
/// text says so.
fn is_lock_conflict(e: &MetaError) -> bool {
    matches!(e, MetaError::Open { source: sled::Error::Io(io), .. }
        if io.to_string().contains("could not acquire lock"))
}

fn open_sled_once(path: &Path) -> Result<sled::Db> {
    drop_unfinished_snapshots(path);
    let open = || {
        sled::Config::new()
            .path(path)
            // Durability comes from explicit flushes before replies; the
            // background flush only bounds the loss window for the rest.
            .flush_every_ms(Some(1000))
            .open()
    };
    match open() {
        // A snapshot is only an index over the log: without any, sled
        // recovers from the log alone. Moved aside, not deleted.
        Err(sled::Error::Corruption { .. }) if set_snapshots_aside(path) => open(),
        r => r,
    }
    .map_err(|source| MetaError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// sled 0.34 writes a snapshot to `snap.<lsn>.generating` and renames it when
/// done, but on open takes the highest `snap.*` file, finished or not: one
/// left empty by a full disk (or a crash) made every later open fail with
/// `Corruption` (the chaos suite's disk-full fault, 2026-12-07; the database
/// opened whole once the file was gone).
fn drop_unfinished_snapshots(path: &Path) {
    for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::warn!(file = %name, "removed an unfinished sled snapshot"),
                Err(err) => {
                    tracing::warn!(file = %name, error = %err, "cannot remove an unfinished sled snapshot")
                }
            }
        }
    }
}

/// Moves every `snap.*` file of the database into `snapshots-set-aside.<ns>/`;
/// whether any was moved.
fn set_snapshots_aside(path: &Path) -> bool {
    let aside = path.join(format!(
        "snapshots-set-aside.{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let mut moved = false;
    for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with("snap.") {
            continue;
        }
        if std::fs::create_dir_all(&aside).is_ok()
            && std::fs::rename(e.path(), aside.join(&name)).is_ok()
        {
            moved = true;
        }
    }
    if moved {
        tracing::warn!(dir = %aside.display(), "sled reported corruption; its snapshots were set aside and the log is replayed");
    }
    moved
}

impl MetaError {
    /// Whether the disk (or a quota) is full: callers answer
    /// `ResourceExhausted` rather than `Internal`.
    pub fn is_no_space(&self) -> bool {
        let source = match self {
            MetaError::Open { source, .. } | MetaError::Op { source, .. } => source,
            MetaError::Corrupt { .. } => return false,
        };
        matches!(source, sled::Error::Io(e) if snapshotter::is_no_space(e))
    }
}

impl MetaStore for SledStore {
    fn get(&self, bucket: Bucket, key: &str) -> Result<Option<Vec<u8>>> {
        let (_, v) = self.with_db("get", bucket, |db| {
            db.open_tree(bucket.0)?.get(key.as_bytes())
        })?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn list(&self, bucket: Bucket) -> Result<Vec<(String, Vec<u8>)>> {
        let (_, rows) = self.with_db("scan", bucket, |db| {
            db.open_tree(bucket.0)?
                .iter()
                .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect::<sled::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|(k, v)| {
                let key = String::from_utf8(k).map_err(|e| MetaError::Corrupt {
                    bucket: bucket.0,
                    key: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    reason: e.to_string(),
                })?;
                Ok((key, v))
            })
            .collect()
    }

    fn apply(&self, bucket: Bucket, ops: Vec<Op>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(k.as_bytes(), v),
                Op::Delete(k) => batch.remove(k.as_bytes()),
            }
        }
        let (gen, ()) = self.with_db("write", bucket, |db| {
            db.open_tree(bucket.0)?.apply_batch(batch.clone())
        })?;
        UNFLUSHED.with(|u| {
            if u.get() == 0 || gen < u.get() {
                u.set(gen);
            }
        });
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let wrap = |source| MetaError::Op {
            op: "flush",
            bucket: "*",
            source,
        };
        let written = UNFLUSHED.with(|u| u.replace(0));
        let (gen, db) = self.current().ok_or_else(|| {
            wrap(sled::Error::Io(std::io::Error::other(
                "the metadata database is not open",
            )))
        })?;
        db.flush().map_err(wrap)?;
        if written != 0 && written < gen {
            return Err(wrap(sled::Error::Io(std::io::Error::other(
                "writes made before the metadata database was reopened after an I/O error were lost",
            ))));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty unfinished snapshot with a higher LSN than the last finished
    /// one (a full disk while sled generated it) made sled 0.34's open fail
    /// with `Corruption` for good; the records are all there without it.
    #[test]
    fn an_unfinished_snapshot_does_not_stop_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let db = SledStore::open(&path).unwrap();
            for i in 0..100 {
                db.put(TASKS, &format!("t{i}"), vec![1; 100]).unwrap();
            }
            db.flush().unwrap();
        }
        std::fs::write(path.join("snap.00000000FFFFFFFF.generating"), b"").unwrap();
        assert!(matches!(
            sled::Config::new().path(&path).open(),
            Err(sled::Error::Corruption { .. })
        ));
        let db = SledStore::open(&path).unwrap();
        assert!(db.get(TASKS, "t99").unwrap().is_some());
        assert!(!path.join("snap.00000000FFFFFFFF.generating").exists());
    }

    /// The text sled 0.34 gives a held lock is what the bounded retry
    /// recognises; any other open error is not retried.
    #[test]
    fn a_held_lock_is_recognised_as_a_lock_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        let _held = open_sled(&path).unwrap();
        let err = open_sled_once(&path).unwrap_err();
        assert!(is_lock_conflict(&err), "{err}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = open_sled_once(&file).unwrap_err();
        assert!(!is_lock_conflict(&err), "{err}");
    }

    /// A write that went to an instance replaced before its flush is never
    /// acknowledged; writes after the reopen are.
    #[test]
    fn a_flush_after_a_reopen_does_not_acknowledge_lost_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = SledStore::open(&dir.path().join("meta")).unwrap();
        db.put(IMAGES, "before", b"1".to_vec()).unwrap();
        db.flush().unwrap();
        db.put(IMAGES, "lost", b"2".to_vec()).unwrap();
        let (gen, _) = db.current().unwrap();
        db.reopen(gen).unwrap();
        assert!(
            db.flush().is_err(),
            "the unflushed write went with the old instance"
        );
        db.put(IMAGES, "after", b"3".to_vec()).unwrap();
        db.flush().unwrap();
        assert_eq!(db.get(IMAGES, "before").unwrap(), Some(b"1".to_vec()));
        assert_eq!(db.get(IMAGES, "after").unwrap(), Some(b"3".to_vec()));
        // A second reopen of the same broken instance is a no-op.
        let (now, _) = db.current().unwrap();
        assert_eq!(db.reopen(gen).unwrap().0, now);
    }

    /// A unit of work that failed before its flush leaves nothing for the
    /// next unit on the same (pooled) thread to answer for.
    #[test]
    fn a_new_unit_does_not_inherit_an_abandoned_units_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = SledStore::open(&dir.path().join("meta")).unwrap();
        db.put(IMAGES, "abandoned", b"1".to_vec()).unwrap();
        let (gen, _) = db.current().unwrap();
        db.reopen(gen).unwrap();
        begin_unit();
        db.put(IMAGES, "next", b"2".to_vec()).unwrap();
        db.flush().unwrap();
        assert_eq!(db.get(IMAGES, "next").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn put_get_list_delete_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = SledStore::open(&dir.path().join("meta")).unwrap();
        db.put(IMAGES, "a", b"1".to_vec()).unwrap();
        db.apply(
            IMAGES,
            vec![Op::Put("b".into(), b"2".to_vec()), Op::Delete("a".into())],
        )
        .unwrap();
        assert_eq!(db.get(IMAGES, "a").unwrap(), None);
        assert_eq!(db.get(IMAGES, "b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(db.list(IMAGES).unwrap().len(), 1);
        assert!(db.list(LEASES).unwrap().is_empty());
        db.flush().unwrap();
        drop(db);
        // sled's flusher thread may hold the file lock a moment after the
        // drop: the same bounded wait a reopen uses.
        let db = SledStore::open(&dir.path().join("meta")).unwrap();
        assert_eq!(db.get(IMAGES, "b").unwrap(), Some(b"2".to_vec()));
    }
}
