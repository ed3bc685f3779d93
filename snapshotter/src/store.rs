//! The logic both backends share: metadata, directory lifecycle, crash
//! recovery. Backends differ only in how a new tree is seeded from its
//! parent and in the mounts they return.
//!
//! Ordering that makes each mutation crash safe:
//! * create: build `snapshots/new-<random>` (native: copy the parent in it),
//!   write metadata, rename to `snapshots/<id>`, flush. A crash leaves a
//!   `new-*` dir, or metadata without a dir, or a dir without flushed
//!   metadata; [`Store::cleanup`] removes all three.
//! * remove: delete metadata and flush, rename `<id>` to `rm-<id>`, delete.
//! * commit: syncfs the tree, then one metadata transaction; the directory
//!   keeps its id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tracing::{info, warn};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::meta::{MetaStore, Record};
use crate::{Backend, CleanupReport, Info, Kind, Labels, Mount, Usage};

pub(crate) struct Store {
    /// `<root>/snapshots`.
    dir: PathBuf,
    meta: MetaStore,
    backend: Backend,
    /// Serialises metadata changes with their directory renames, so no
    /// caller sees metadata whose directory is not in place yet. Never held
    /// across a tree copy or a usage walk.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// `new-*` directories of creates under way, which cleanup must spare.
    inflight: HashSet<OsString>,
}

impl Store {
    pub fn open(root: &Path, backend: Backend) -> Result<Self> {
        fs::create_dir_all(root).ctx("create snapshotter root", root)?;
        let root = fs::canonicalize(root).ctx("resolve snapshotter root", root)?;
        if backend == Backend::Overlay {
            // overlay options are comma separated and lowerdirs colon
            // separated; such paths cannot be passed through mount(2).
            let s = root.to_string_lossy();
            if s.contains([',', ':', '\\']) {
                return Err(Error::invalid(format!(
                    "overlay snapshotter root {s:?} must not contain ',', ':' or '\\'"
                )));
            }
        }
        let dir = root.join("snapshots");
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create snapshots dir", &dir, e)),
        }
        let meta = MetaStore::open(&root.join("metadata"))?;
        Ok(Store {
            dir,
            meta,
            backend,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave State inconsistent in a way that
        // matters more than refusing all further calls would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn fs_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    fn work_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("work")
    }

    pub fn stat(&self, key: &str) -> Result<Info> {
        Ok(self.meta.require(key)?.info(key))
    }

    pub fn update_labels(&self, key: &str, labels: Labels) -> Result<Info> {
        let rec = {
            let _g = self.lock();
            self.meta.update_labels(key, &labels)?
        };
        self.meta.flush()?;
        Ok(rec.info(key))
    }

    pub fn usage(&self, key: &str) -> Result<Usage> {
        let rec = self.meta.require(key)?;
        match (rec.kind, rec.usage) {
            (Kind::Committed, Some(u)) => Ok(u),
            _ => {
                let fs_dir = self.fs_dir(rec.id);
                fsutil::usage(&fs_dir).map_err(|e| {
                    Error::io(format!("measure usage of snapshot {key:?} at"), &fs_dir, e)
                })
            }
        }
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let rec = self.meta.require(key)?;
        self.mounts_for(key, &rec)
    }

    fn mounts_for(&self, key: &str, rec: &Record) -> Result<Vec<Mount>> {
        let readonly = match rec.kind {
            Kind::Active => false,
            Kind::View => true,
            Kind::Committed => {
                return Err(Error::precondition(
                    key,
                    "a committed snapshot cannot be mounted; create a view of it",
                ))
            }
        };
        let fs_dir = self.fs_dir(rec.id);
        if self.backend == Backend::Native {
            return Ok(vec![Mount::bind(&fs_dir, readonly)]);
        }
        let parents = self.meta.parent_ids(key, rec)?;
        match parents.as_slice() {
            [] => Ok(vec![Mount::bind(&fs_dir, readonly)]),
            // A single read-only layer needs no overlay.
            [only] if readonly => Ok(vec![Mount::bind(&self.fs_dir(*only), true)]),
            _ => {
                let lower: Vec<String> = parents
                    .iter()
                    .map(|id| self.fs_dir(*id).display().to_string())
                    .collect();
                // index=off: the same lower layers are shared by many
                // overlays, which the inodes index would refuse.
                let mut options = vec!["index=off".to_string()];
                if !readonly {
                    options.push(format!("workdir={}", self.work_dir(rec.id).display()));
                    options.push(format!("upperdir={}", fs_dir.display()));
                }
                options.push(format!("lowerdir={}", lower.join(":")));
                Ok(vec![Mount {
                    kind: "overlay".to_string(),
                    source: "overlay".to_string(),
                    options,
                }])
            }
        }
    }

    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        validate_key(key, "key")?;
        let parent = parent.filter(|p| !p.is_empty());
        // Fail fast before any copying; the transaction re-checks.
        if self.meta.get(key)?.is_some() {
            return Err(Error::exists(key));
        }
        let parent_rec = match parent {
            Some(p) => {
                let rec = self.meta.require(p)?;
                if rec.kind != Kind::Committed {
                    return Err(Error::precondition(
                        key,
                        format!("parent {p:?} is not a committed snapshot"),
                    ));
                }
                Some(rec)
            }
            None => None,
        };

        let tmp = {
            let mut state = self.lock();
            let tmp = tempfile::Builder::new()
                .prefix("new-")
                .tempdir_in(&self.dir)
                .ctx("create snapshot dir in", &self.dir)?;
            if let Some(name) = tmp.path().file_name() {
                state.inflight.insert(name.to_os_string());
            }
            tmp
        };
        self.populate_and_publish(kind, key, parent, parent_rec.as_ref(), &labels, tmp)
    }

    fn populate_and_publish(
        &self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        parent_rec: Option<&Record>,
        labels: &Labels,
        tmp: tempfile::TempDir,
    ) -> Result<Vec<Mount>> {
        let tmp_name = tmp.path().file_name().map(|n| n.to_os_string());
        let unregister = |state: &mut State| {
            if let Some(n) = &tmp_name {
                state.inflight.remove(n);
            }
        };
        let res = (|| {
            let fs_dir = tmp.path().join("fs");
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&fs_dir)
                .ctx("create", &fs_dir)?;
            if self.backend == Backend::Overlay && kind == Kind::Active {
                let work = tmp.path().join("work");
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&work)
                    .ctx("create", &work)?;
            }
            if let Some(prec) = parent_rec {
                let parent_fs = self.fs_dir(prec.id);
                match self.backend {
                    Backend::Native => fsutil::copy_tree(&parent_fs, &fs_dir).map_err(|e| {
                        Error::io(
                            format!("copy parent of snapshot {key:?} from"),
                            &parent_fs,
                            e,
                        )
                    })?,
                    // The overlay root takes the upper dir's owner and mode:
                    // keep the parent's so "/" does not change under a container.
                    Backend::Overlay => match_root(&parent_fs, &fs_dir)?,
                }
            }
            let id = self.meta.next_id()?;

            let mut state = self.lock();
            let rec = self.meta.create(key, id, kind, parent, labels)?;
            let final_dir = self.snapshot_dir(id);
            if let Err(e) = fs::rename(tmp.path(), &final_dir) {
                if let Err(undo) = self.meta.remove(key) {
                    warn!(key, error = %undo, "could not roll back snapshot metadata; cleanup will drop it");
                }
                return Err(Error::io(
                    format!("publish snapshot {key:?} as"),
                    &final_dir,
                    e,
                ));
            }
            unregister(&mut state);
            drop(state);
            Ok(rec)
        })();
        match res {
            Ok(rec) => {
                // The directory was renamed away; nothing left to delete.
                let _ = tmp.keep();
                fsutil::sync_dir(&self.dir).ctx("sync", &self.dir)?;
                self.meta.flush()?;
                self.mounts_for(key, &rec)
            }
            Err(e) => {
                let path = tmp.path().to_path_buf();
                let _ = tmp.keep();
                if let Err(rm) = fsutil::remove_tree(&path) {
                    warn!(path = %path.display(), error = %rm, "could not delete unfinished snapshot dir; cleanup will");
                }
                unregister(&mut self.lock());
                Err(e)
            }
        }
    }

    pub fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        validate_key(name, "commit name")?;
        let rec = self.meta.require(key)?;
        if rec.kind != Kind::Active {
            return Err(Error::precondition(
                key,
                format!(
                    "only active snapshots can be committed, this one is {:?}",
                    rec.kind
                ),
            ));
        }
        if self.meta.get(name)?.is_some() {
            return Err(Error::exists(name));
        }
        let fs_dir = self.fs_dir(rec.id);
        let usage = fsutil::usage(&fs_dir)
            .map_err(|e| Error::io(format!("measure usage of snapshot {key:?} at"), &fs_dir, e))?;
        // A committed layer is trusted forever after (reused across
        // reboots), so its bytes must be on disk before the metadata says
        // it exists.
        fsutil::sync_fs(&fs_dir).map_err(|e| {
            Error::io(
                format!("sync snapshot {key:?} before commit at"),
                &fs_dir,
                e,
            )
        })?;
        {
            let _g = self.lock();
            let now = self.meta.require(key)?;
            if now.id != rec.id {
                // Removed and re-created while we measured.
                return Err(Error::precondition(key, "snapshot changed during commit"));
            }
            self.meta.commit(name, key, &labels, usage)?;
        }
        self.meta.flush()
    }

    pub fn remove(&self, key: &str) -> Result<()> {
        let state = self.lock();
        let rec = self.meta.remove(key)?;
        self.meta.flush()?;
        let dir = self.snapshot_dir(rec.id);
        let doomed = self.dir.join(format!("rm-{}", rec.id));
        let res = fs::rename(&dir, &doomed);
        drop(state);
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                // The snapshot is gone as far as callers are concerned; its
                // directory has no metadata and the next cleanup deletes it.
                warn!(key, dir = %dir.display(), error = %e, "could not retire removed snapshot's dir");
                return Ok(());
            }
        }
        if let Err(e) = fsutil::remove_tree(&doomed) {
            warn!(key, dir = %doomed.display(), error = %e, "could not delete removed snapshot's dir; cleanup will retry");
        }
        Ok(())
    }

    pub fn walk(&self, filter: &dyn Fn(&Info) -> bool) -> Result<Vec<Info>> {
        Ok(self
            .meta
            .list()?
            .into_iter()
            .map(|(k, rec)| rec.info(&k))
            .filter(|i| filter(i))
            .collect())
    }

    pub fn upper_dir(&self, key: &str) -> Result<PathBuf> {
        let rec = self.meta.require(key)?;
        if rec.kind != Kind::Active {
            return Err(Error::precondition(
                key,
                format!(
                    "only active snapshots are writable, this one is {:?}",
                    rec.kind
                ),
            ));
        }
        Ok(self.fs_dir(rec.id))
    }

    pub fn cleanup(&self) -> Result<CleanupReport> {
        let state = self.lock();
        let mut report = CleanupReport::default();

        // 1. Metadata whose directory is gone, and everything built on it
        //    (a child is unusable without its ancestors).
        let records: BTreeMap<String, Record> = self.meta.list()?.into_iter().collect();
        let mut dropped: HashSet<String> = HashSet::new();
        loop {
            let before = dropped.len();
            for (key, rec) in &records {
                if dropped.contains(key) {
                    continue;
                }
                let parent_gone = rec
                    .parent
                    .as_ref()
                    .is_some_and(|p| dropped.contains(p) || !records.contains_key(p));
                if parent_gone || !self.fs_dir(rec.id).is_dir() {
                    dropped.insert(key.clone());
                }
            }
            if dropped.len() == before {
                break;
            }
        }
        if !dropped.is_empty() {
            let mut keys: Vec<String> = dropped.iter().cloned().collect();
            keys.sort();
            for k in &keys {
                warn!(
                    key = k.as_str(),
                    "dropping snapshot metadata: its directory is missing"
                );
            }
            self.meta.drop_records(&keys)?;
            report.dropped_snapshots = keys;
        }

        // 2. Children lists must match the parents the survivors name.
        let mut children: HashMap<&str, Vec<u64>> = HashMap::new();
        for (key, rec) in records.iter().filter(|(k, _)| !dropped.contains(*k)) {
            children.entry(key.as_str()).or_default();
            if let Some(p) = &rec.parent {
                children.entry(p.as_str()).or_default().push(rec.id);
            }
        }
        for (key, mut want) in children {
            let Some(rec) = records.get(key) else {
                continue;
            };
            let mut have = rec.children.clone();
            want.sort_unstable();
            have.sort_unstable();
            if want != have {
                warn!(key, "repairing snapshot child links");
                self.meta.set_children(key, &want)?;
            }
        }
        self.meta.flush()?;

        // 3. Directories nobody refers to.
        let live: HashSet<u64> = records
            .iter()
            .filter(|(k, _)| !dropped.contains(*k))
            .map(|(_, r)| r.id)
            .collect();
        let entries = fs::read_dir(&self.dir).ctx("list", &self.dir)?;
        let mut doomed = Vec::new();
        for entry in entries {
            let entry = entry.ctx("list", &self.dir)?;
            let name = entry.file_name();
            let Some(s) = name.to_str() else {
                warn!(name = ?name, "unexpected entry in snapshots dir, leaving it");
                continue;
            };
            let remove = if s.starts_with("new-") {
                !state.inflight.contains(&name)
            } else if s.starts_with("rm-") {
                true
            } else if let Ok(id) = s.parse::<u64>() {
                !live.contains(&id)
            } else {
                warn!(name = s, "unexpected entry in snapshots dir, leaving it");
                false
            };
            if remove {
                doomed.push(entry.path());
            }
        }
        drop(state);
        doomed.sort();
        for path in doomed {
            match fsutil::remove_tree(&path) {
                Ok(()) => {
                    info!(path = %path.display(), "removed leftover snapshot dir");
                    report.removed_dirs.push(path);
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "could not remove leftover snapshot dir")
                }
            }
        }
        Ok(report)
    }
}

/// Keys are opaque strings, but an empty one is always a caller bug.
fn validate_key(key: &str, what: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid(format!("snapshot {what} must not be empty")));
    }
    Ok(())
}

/// Give `dst` the owner and permission bits of `src`.
fn match_root(src: &Path, dst: &Path) -> Result<()> {
    let md = fs::metadata(src).ctx("stat parent tree", src)?;
    std::os::unix::fs::chown(dst, Some(md.uid()), Some(md.gid())).ctx("chown", dst)?;
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777)).ctx("chmod", dst)
}

/// Implement [`crate::Snapshotter`] for a newtype around [`Store`].
macro_rules! forward_snapshotter {
    ($ty:ty) => {
        impl $crate::Snapshotter for $ty {
            fn backend(&self) -> $crate::Backend {
                self.0.backend()
            }
            fn stat(&self, key: &str) -> $crate::Result<$crate::Info> {
                self.0.stat(key)
            }
            fn update_labels(
                &self,
                key: &str,
                labels: $crate::Labels,
            ) -> $crate::Result<$crate::Info> {
                self.0.update_labels(key, labels)
            }
            fn usage(&self, key: &str) -> $crate::Result<$crate::Usage> {
                self.0.usage(key)
            }
            fn mounts(&self, key: &str) -> $crate::Result<Vec<$crate::Mount>> {
                self.0.mounts(key)
            }
            fn prepare(
                &self,
                key: &str,
                parent: Option<&str>,
                labels: $crate::Labels,
            ) -> $crate::Result<Vec<$crate::Mount>> {
                self.0.create($crate::Kind::Active, key, parent, labels)
            }
            fn view(
                &self,
                key: &str,
                parent: Option<&str>,
                labels: $crate::Labels,
            ) -> $crate::Result<Vec<$crate::Mount>> {
                self.0.create($crate::Kind::View, key, parent, labels)
            }
            fn commit(&self, name: &str, key: &str, labels: $crate::Labels) -> $crate::Result<()> {
                self.0.commit(name, key, labels)
            }
            fn remove(&self, key: &str) -> $crate::Result<()> {
                self.0.remove(key)
            }
            fn walk(
                &self,
                filter: &dyn Fn(&$crate::Info) -> bool,
            ) -> $crate::Result<Vec<$crate::Info>> {
                self.0.walk(filter)
            }
            fn cleanup(&self) -> $crate::Result<$crate::CleanupReport> {
                self.0.cleanup()
            }
            fn upper_dir(&self, key: &str) -> $crate::Result<std::path::PathBuf> {
                self.0.upper_dir(key)
            }
        }
    };
}
pub(crate) use forward_snapshotter;
