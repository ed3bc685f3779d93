//! The native backend: every snapshot is a full, independent directory
//! tree. prepare/view copy the parent's tree (preserving owners, modes,
//! xattrs, links and devices); mounts are bind mounts. Slower and bigger
//! than overlayfs, but works on any filesystem and in any kernel.

use std::path::Path;

use crate::store::{forward_snapshotter, Store};
use crate::{Backend, Result};

/// Snapshotter that copies parents instead of layering them.
pub struct NativeSnapshotter(Store);

impl NativeSnapshotter {
    /// Open (creating if needed) a native snapshotter rooted at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        Store::open(root, Backend::Native).map(NativeSnapshotter)
    }
}

forward_snapshotter!(NativeSnapshotter);
