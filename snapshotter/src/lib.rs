//! Snapshots of container filesystems, modelled on containerd's snapshotter.
//!
//! A snapshot is a directory tree identified by a key. Three kinds exist:
//! *committed* snapshots are immutable layers that may parent many others;
//! *active* snapshots are writable trees on top of a committed parent (a
//! container's rootfs, or a layer being unpacked); *views* are read-only
//! trees on top of a committed parent. [`Snapshotter::commit`] turns an
//! active snapshot into a committed one under a new name.
//!
//! Two backends share one [`Snapshotter`] trait: [`OverlaySnapshotter`]
//! stacks parents as overlayfs lower directories, [`NativeSnapshotter`]
//! copies the parent's tree (for filesystems where overlayfs is unusable).
//!
//! On disk, under the root directory:
//! ```text
//! metadata/             sled database (keys, kinds, parents, labels, usage)
//! snapshots/<id>/fs     the snapshot's own tree (overlay: its upper dir)
//! snapshots/<id>/work   overlay work dir of an active snapshot
//! ```
//! Every mutating call leaves either the old or the new state after a
//! crash, modulo leftovers that [`Snapshotter::cleanup`] removes on start.

pub mod apply;
mod error;
mod fsutil;
mod meta;
mod mount;
mod native;
mod overlay;
mod store;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub use error::{is_no_space, Error, Result};
pub use mount::{mount_all, unmount, Mount};
pub use native::NativeSnapshotter;
pub use overlay::{overlay_supported, OverlaySnapshotter};

/// Labels attached to a snapshot (e.g. GC references, the layer digest).
pub type Labels = BTreeMap<String, String>;

/// The state of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Read-only tree on top of a committed parent.
    View,
    /// Writable tree on top of a committed parent.
    Active,
    /// Immutable layer; the only kind that can be a parent.
    Committed,
}

/// What is known about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub kind: Kind,
    /// The snapshot's key (for committed snapshots, the commit name).
    pub name: String,
    /// Key of the committed parent, if any.
    pub parent: Option<String>,
    pub labels: Labels,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// Space used by a snapshot's own tree (not its parents').
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes in regular files, each inode counted once.
    pub size: u64,
    /// Distinct inodes, directories included.
    pub inodes: u64,
}

/// What [`Snapshotter::cleanup`] repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Directories deleted: half-created (`new-*`), half-removed (`rm-*`),
    /// or snapshot dirs no metadata refers to.
    pub removed_dirs: Vec<PathBuf>,
    /// Keys whose metadata was dropped because their directory (or an
    /// ancestor) was missing.
    pub dropped_snapshots: Vec<String>,
}

/// A snapshot store. All calls are blocking (filesystem and mount
/// syscalls); call them from blocking threads. Implementations are safe to
/// share between threads.
pub trait Snapshotter: Send + Sync {
    /// Which backend this is: tells layer application whether
    /// [`upper_dir`](Self::upper_dir) holds only the layer's diff (overlay:
    /// deletions are written as whiteouts) or a full copy of the parent
    /// (native: deletions are real deletions).
    fn backend(&self) -> Backend;

    /// Info about the snapshot `key` (any kind).
    fn stat(&self, key: &str) -> Result<Info>;

    /// Replace the labels of `key`; returns the updated info.
    fn update_labels(&self, key: &str, labels: Labels) -> Result<Info>;

    /// Space used by `key`'s own tree: measured now for active snapshots and
    /// views, recorded at commit time for committed ones.
    fn usage(&self, key: &str) -> Result<Usage>;

    /// The mounts that assemble active snapshot or view `key` (committed
    /// snapshots are not mountable: make a view).
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;

    /// Create active snapshot `key` on top of committed `parent` (None or
    /// `""` for an empty tree) and return its mounts.
    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>>;

    /// Create read-only view `key` of committed `parent` and return its
    /// mounts.
    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>>;

    /// Turn active snapshot `key` into committed snapshot `name` with
    /// `labels` (labels are not inherited). `key` ceases to exist.
    /// Unmount the active snapshot first.
    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()>;

    /// Delete snapshot `key`; refused while it has children. Unmount it
    /// first.
    fn remove(&self, key: &str) -> Result<()>;

    /// Info of every snapshot for which `filter` returns true, by key.
    fn walk(&self, filter: &dyn Fn(&Info) -> bool) -> Result<Vec<Info>>;

    /// Reconcile directories and metadata after a crash: delete leftover
    /// and unreferenced directories, drop metadata whose directory is gone.
    /// Call once at start, before serving requests.
    fn cleanup(&self) -> Result<CleanupReport>;

    /// The directory holding active snapshot `key`'s writable tree, where a
    /// layer is unpacked before commit (see [`backend`](Self::backend)).
    fn upper_dir(&self, key: &str) -> Result<PathBuf>;
}

/// Snapshotter implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// overlayfs: layers shared by reference, O(1) prepare.
    Overlay,
    /// Plain directory copies: works on any filesystem, costs a full copy
    /// per prepare.
    Native,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Overlay => "overlayfs",
            Backend::Native => "native",
        })
    }
}

impl FromStr for Backend {
    type Err = Error;

    /// Accepts containerd's names (`overlayfs`, `native`) and `overlay`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "overlayfs" | "overlay" => Ok(Backend::Overlay),
            "native" => Ok(Backend::Native),
            other => Err(Error::invalid(format!(
                "unknown snapshotter {other:?} (expected \"overlayfs\" or \"native\")"
            ))),
        }
    }
}

/// Open (creating if needed) the snapshotter of kind `backend` at `root`.
pub fn open(root: &Path, backend: Backend) -> Result<Box<dyn Snapshotter>> {
    Ok(match backend {
        Backend::Overlay => Box::new(OverlaySnapshotter::open(root)?),
        Backend::Native => Box::new(NativeSnapshotter::open(root)?),
    })
}
