//! Whiteouts and opaque directories, removed or recorded overlayfs-style
//! (see [`WhiteoutMode`]).

use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;

use tracing::debug;

use super::error::ApplyError;
use super::tree::Dir;
use super::{errno, io_err, is_dir, path, sys, Applier, Meta, Scratch, WhiteoutMode};
use super::{OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX};

impl Applier<'_> {
    /// `.wh.NAME`: remove NAME from the lower layers.
    pub(super) fn whiteout(&mut self, s: &mut Scratch, meta: &Meta) -> Result<(), ApplyError> {
        // The path the whiteout hides, e.g. "a/b" for "a/.wh.b".
        s.other.clear();
        let parent = s.names.parent_bytes();
        if !parent.is_empty() {
            s.other.extend_from_slice(parent);
            s.other.push(b'/');
        }
        s.other
            .extend_from_slice(&s.names.base_bytes()[WHITEOUT_PREFIX.len()..]);
        s.other_names.set(&s.other);

        match self.opts.whiteouts {
            WhiteoutMode::Overlay => {
                let dir = self
                    .open_parent(&s.other_names, true)
                    .map_err(|e| io_err(s, "opening parent directory", e))?
                    .unwrap_or(Dir::Root);
                let dirfd = dir.fd(self.root);
                let name = s.other_names.base();
                match sys::mknodat(dirfd, name, libc::S_IFCHR, 0) {
                    Ok(()) => {
                        if self.opts.preserve_ownership {
                            sys::lchownat(dirfd, name, meta.uid, meta.gid)
                                .map_err(|e| io_err(s, "chown", e))?;
                        }
                    }
                    Err(e) if errno(&e) == libc::EEXIST => {
                        let st = sys::lstatat(dirfd, name).map_err(|e| io_err(s, "stat", e))?;
                        if !is_overlay_whiteout(&st) {
                            // The upper dir only holds this layer: the path was
                            // created by it, and whiteouts only hide lower layers.
                            debug!(entry = %s.display(), "whiteout of a path added by the same layer ignored");
                        }
                    }
                    Err(e) => return Err(io_err(s, "creating whiteout", e)),
                }
            }
            WhiteoutMode::Remove => {
                if self.unpacked.contains(&s.other) {
                    debug!(entry = %s.display(), "whiteout of a path added by the same layer ignored");
                    return Ok(());
                }
                let dir = match self
                    .open_parent(&s.other_names, false)
                    .map_err(|e| io_err(s, "opening parent directory", e))?
                {
                    Some(d) => d,
                    None => return Ok(()),
                };
                sys::remove_all(dir.fd(self.root), s.other_names.base())
                    .map_err(|e| io_err(s, "removing whited-out path", e))?;
            }
        }
        Ok(())
    }

    /// `DIR/.wh..wh..opq`: hide everything lower layers have in DIR.
    pub(super) fn opaque(&mut self, s: &Scratch) -> Result<(), ApplyError> {
        let parent = s.names.parent_bytes();
        let parent_c = if parent.is_empty() {
            c"."
        } else {
            s.names.parent()
        };
        match self.opts.whiteouts {
            WhiteoutMode::Overlay => {
                // Make sure the directory exists in the upper dir.
                self.open_dir(parent, parent_c, true)
                    .map_err(|e| io_err(s, "creating opaque directory", e))?;
                let fd =
                    sys::openat2_in_root(self.root, parent_c, libc::O_RDONLY | libc::O_DIRECTORY)
                        .map_err(|e| io_err(s, "opening opaque directory", e))?;
                sys::fsetxattr(fd.as_fd(), OVERLAY_OPAQUE_XATTR, b"y")
                    .map_err(|e| io_err(s, "marking directory opaque", e))?;
            }
            WhiteoutMode::Remove => {
                self.empty_lower(parent)
                    .map_err(|e| io_err(s, "emptying opaque directory", e))?;
            }
        }
        Ok(())
    }

    /// Removes everything under `rel` that this layer did not put there.
    fn empty_lower(&self, rel: &[u8]) -> io::Result<()> {
        let mut stack: Vec<Vec<u8>> = vec![rel.to_vec()];
        let mut key = Vec::new();
        while let Some(dir_rel) = stack.pop() {
            let c = if dir_rel.is_empty() {
                c".".to_owned()
            } else {
                CString::new(dir_rel.as_slice())?
            };
            let fd = match sys::openat2_in_root(self.root, &c, libc::O_RDONLY | libc::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(e) if matches!(errno(&e), libc::ENOENT | libc::ENOTDIR) => continue,
                Err(e) => return Err(e),
            };
            let (d, names) = sys::read_dir(fd)?;
            for name in names {
                key.clear();
                if !dir_rel.is_empty() {
                    key.extend_from_slice(&dir_rel);
                    key.push(b'/');
                }
                key.extend_from_slice(name.to_bytes());
                if self.unpacked.contains(&key) {
                    if sys::lstatat(d.as_fd(), &name).is_ok_and(|st| is_dir(&st)) {
                        stack.push(key.clone());
                    }
                } else {
                    sys::remove_all(d.as_fd(), &name)?;
                }
            }
        }
        Ok(())
    }
}

pub(super) fn is_whiteout_name(rel: &[u8]) -> bool {
    path::split(rel).1.starts_with(WHITEOUT_PREFIX)
}

pub(super) fn is_overlay_whiteout(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}
