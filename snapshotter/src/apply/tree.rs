//! Creating entries in the tree: opening parents inside the root, making
//! directories, replacing what is there, hardlinks, and the directory times
//! set at the end.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::attrs::XattrTarget;
use super::error::ApplyError;
use super::path::SplitPath;
use super::whiteout::is_overlay_whiteout;
use super::{
    errno, invalid, io_err, is_dir, sys, Applier, Meta, Scratch, WhiteoutMode, OVERLAY_OPAQUE_XATTR,
};

/// A directory an entry is created in: the root itself, or one opened inside it.
pub(super) enum Dir {
    Root,
    Fd(OwnedFd),
}

impl Dir {
    pub(super) fn fd<'a>(&'a self, root: BorrowedFd<'a>) -> BorrowedFd<'a> {
        match self {
            Dir::Root => root,
            Dir::Fd(fd) => fd.as_fd(),
        }
    }
}

impl Applier<'_> {
    /// Opens the parent directory of `names` inside the root. With `create`,
    /// missing directories are created (0755, owned by the caller); without,
    /// a missing parent gives `Ok(None)`.
    pub(super) fn open_parent(&self, names: &SplitPath, create: bool) -> io::Result<Option<Dir>> {
        self.open_dir(names.parent_bytes(), names.parent(), create)
    }

    /// Opens the directory `rel` (`c` is the same path NUL-terminated) inside
    /// the root, as [`Self::open_parent`] does.
    pub(super) fn open_dir(&self, rel: &[u8], c: &CStr, create: bool) -> io::Result<Option<Dir>> {
        if rel.is_empty() {
            return Ok(Some(Dir::Root));
        }
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        match sys::openat2_in_root(self.root, c, flags) {
            Ok(fd) => Ok(Some(Dir::Fd(fd))),
            Err(e) if create && errno(&e) == libc::ENOENT => {
                self.mkdir_all(rel).map(|fd| Some(Dir::Fd(fd)))
            }
            Err(e) if !create && matches!(errno(&e), libc::ENOENT | libc::ENOTDIR) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the missing directories of `rel` one component at a time, each
    /// with `mkdirat` in its already-resolved (in-root) parent. Slow path: the
    /// common case is a layer that lists its directories before their files.
    fn mkdir_all(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let mut prefix = Vec::with_capacity(rel.len());
        let mut cur = Dir::Root;
        for comp in rel.split(|&b| b == b'/') {
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(comp);
            let cpath = CString::new(prefix.as_slice())?;
            let next = match sys::openat2_in_root(self.root, &cpath, flags) {
                Ok(fd) => fd,
                Err(e) if errno(&e) == libc::ENOENT => {
                    let ccomp = CString::new(comp)?;
                    match sys::mkdirat(cur.fd(self.root), &ccomp, 0o755) {
                        Ok(()) => {}
                        Err(e) if errno(&e) == libc::EEXIST => {}
                        Err(e) => return Err(e),
                    }
                    match sys::openat2_in_root(self.root, &cpath, flags) {
                        Ok(fd) => fd,
                        Err(e) if errno(&e) == libc::ENOENT => {
                            return Err(io::Error::new(
                                io::ErrorKind::NotFound,
                                format!(
                                    "{:?} is a symlink whose target does not exist in the root",
                                    String::from_utf8_lossy(&prefix)
                                ),
                            ))
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            cur = Dir::Fd(next);
        }
        match cur {
            Dir::Fd(fd) => Ok(fd),
            Dir::Root => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }

    /// Runs `make(dir, name)`; if the name is taken, removes whatever is there
    /// (recursively, without following symlinks) and tries once more.
    pub(super) fn create<T>(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        make: impl Fn(BorrowedFd<'_>, &CStr) -> io::Result<T>,
    ) -> io::Result<T> {
        match make(dir, name) {
            Err(e) if errno(&e) == libc::EEXIST => {
                sys::remove_all(dir, name)?;
                make(dir, name)
            }
            other => other,
        }
    }

    pub(super) fn create_dir(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        meta: &Meta,
        s: &Scratch,
    ) -> Result<(), ApplyError> {
        let mut make_opaque = false;
        match sys::mkdirat(dir, name, 0o700) {
            Ok(()) => {}
            Err(e) if errno(&e) == libc::EEXIST => {
                let st = sys::lstatat(dir, name).map_err(|e| io_err(s, "stat", e))?;
                if !is_dir(&st) {
                    // A directory replacing a whiteout hides the lower
                    // directory's contents: overlayfs marks such a directory
                    // opaque, and so do we.
                    make_opaque =
                        self.opts.whiteouts == WhiteoutMode::Overlay && is_overlay_whiteout(&st);
                    sys::remove_all(dir, name).map_err(|e| io_err(s, "removing", e))?;
                    sys::mkdirat(dir, name, 0o700)
                        .map_err(|e| io_err(s, "creating directory", e))?;
                }
            }
            Err(e) => return Err(io_err(s, "creating directory", e)),
        }
        let fd = sys::openat(
            dir,
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|e| io_err(s, "opening directory", e))?;
        if make_opaque {
            sys::fsetxattr(fd.as_fd(), OVERLAY_OPAQUE_XATTR, b"y")
                .map_err(|e| io_err(s, "marking directory opaque", e))?;
        }
        if self.opts.preserve_ownership {
            sys::fchown(fd.as_fd(), meta.uid, meta.gid).map_err(|e| io_err(s, "chown", e))?;
        }
        self.set_xattrs(XattrTarget::Open(fd.as_fd()), s)?;
        sys::fchmod(fd.as_fd(), meta.mode).map_err(|e| io_err(s, "chmod", e))?;
        self.dirs.push((s.rel.clone(), meta.times));
        Ok(())
    }

    pub(super) fn hardlink(
        &mut self,
        dir: BorrowedFd<'_>,
        s: &mut Scratch,
    ) -> Result<(), ApplyError> {
        let missing = |s: &Scratch| ApplyError::HardlinkTargetMissing {
            path: s.display(),
            target: String::from_utf8_lossy(&s.other).into_owned(),
        };
        if s.other.is_empty() {
            return Err(invalid(s, "hardlink to the root"));
        }
        if s.other == s.rel {
            return Err(invalid(s, "hardlink to itself"));
        }
        s.other_names.set(&s.other);
        let tdir = match self
            .open_parent(&s.other_names, false)
            .map_err(|e| io_err(s, "resolving hardlink target", e))?
        {
            Some(d) => d,
            None => return Err(missing(s)),
        };
        let tfd = tdir.fd(self.root);
        let tname = s.other_names.base();
        match self.create(dir, s.names.base(), |d, n| sys::linkat(tfd, tname, d, n)) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == libc::ENOENT => Err(missing(s)),
            Err(e) => Err(io_err(s, "creating hardlink", e)),
        }
    }

    pub(super) fn mark_unpacked(&mut self, rel: &[u8]) {
        if self.opts.whiteouts != WhiteoutMode::Remove || self.unpacked.contains(rel) {
            return;
        }
        self.unpacked.insert(rel.to_vec());
        let mut end = rel.len();
        while let Some(i) = rel[..end].iter().rposition(|&b| b == b'/') {
            let ancestor = &rel[..i];
            if self.unpacked.contains(ancestor) {
                break;
            }
            self.unpacked.insert(ancestor.to_vec());
            end = i;
        }
    }

    /// Sets directory times, deepest-last-created first, now that nothing
    /// more is written into them.
    pub(super) fn finish_dirs(&mut self) -> Result<(), ApplyError> {
        let dirs = std::mem::take(&mut self.dirs);
        let mut names = SplitPath::default();
        for (rel, times) in dirs.iter().rev() {
            names.set(rel);
            let err = |e| ApplyError::Io {
                path: String::from_utf8_lossy(rel).into_owned(),
                op: "setting directory times",
                source: e,
            };
            let dir = match self.open_parent(&names, false).map_err(err)? {
                Some(d) => d,
                None => continue,
            };
            match sys::lutimensat(dir.fd(self.root), names.base(), times) {
                Ok(()) => {}
                Err(e) if errno(&e) == libc::ENOENT => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(())
    }
}
