//! The overlayfs backend: a snapshot's own tree is its overlay upper dir,
//! and its committed ancestors are the lower dirs, nearest first. Prepare is
//! O(1) whatever the image size.

use std::fs;
use std::path::Path;

use tracing::debug;

use crate::error::{Error, IoContext};
use crate::store::{forward_snapshotter, Store};
use crate::{fsutil, unmount, Backend, Mount, Result};

/// Snapshotter that stacks layers with overlayfs.
pub struct OverlaySnapshotter(Store);

impl OverlaySnapshotter {
    /// Open (creating if needed) an overlay snapshotter rooted at `root`.
    /// Does not probe the kernel; see [`overlay_supported`].
    pub fn open(root: &Path) -> Result<Self> {
        Store::open(root, Backend::Overlay).map(OverlaySnapshotter)
    }
}

forward_snapshotter!(OverlaySnapshotter);

/// Whether an overlay with an upper dir on `root`'s filesystem can be
/// mounted here (overlayfs present, the filesystem usable as upper, and we
/// are privileged). Mounts and removes a tiny probe under `root`.
pub fn overlay_supported(root: &Path) -> bool {
    match probe(root) {
        Ok(()) => true,
        Err(e) => {
            debug!(root = %root.display(), error = %e, "overlayfs not usable");
            false
        }
    }
}

fn probe(root: &Path) -> Result<()> {
    fs::create_dir_all(root).ctx("create", root)?;
    let dir = tempfile::Builder::new()
        .prefix("overlay-probe-")
        .tempdir_in(root)
        .ctx("create probe dir in", root)?
        // Removed by hand below: a drop-time delete must never run while
        // the overlay might still be mounted.
        .keep();
    let res = probe_in(&dir);
    let rm = fsutil::remove_tree(&dir).ctx("remove probe dir", &dir);
    res.and(rm)
}

fn probe_in(dir: &Path) -> Result<()> {
    let sub = |n: &str| dir.join(n);
    for d in ["l1", "l2", "upper", "work", "merged"] {
        fs::create_dir(sub(d)).ctx("create", &sub(d))?;
    }
    fs::write(sub("l2").join("probe"), b"ok").ctx("write", &sub("l2"))?;
    let m = Mount {
        kind: "overlay".to_string(),
        source: "overlay".to_string(),
        options: vec![
            "index=off".to_string(),
            format!("workdir={}", sub("work").display()),
            format!("upperdir={}", sub("upper").display()),
            format!("lowerdir={}:{}", sub("l1").display(), sub("l2").display()),
        ],
    };
    let merged = sub("merged");
    m.mount(&merged)?;
    let seen = fs::read(merged.join("probe"));
    unmount(&merged)?;
    match seen {
        Ok(b) if b == b"ok" => Ok(()),
        Ok(_) => Err(Error::invalid("overlay probe read wrong content")),
        Err(e) => Err(Error::io("read through overlay", &merged, e)),
    }
}
