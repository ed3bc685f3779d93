//! Attributes of special files (symlinks, fifos, devices) and xattrs from
//! `SCHILY.xattr.*` PAX records.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tracing::warn;

use super::error::ApplyError;
use super::{errno, io_err, sys, Applier, Meta, Scratch, SkippedXattr};

/// Where xattrs are set.
#[derive(Clone, Copy)]
pub(super) enum XattrTarget<'f> {
    /// A regular file or directory opened for I/O: `fsetxattr`.
    Open(BorrowedFd<'f>),
    /// A symlink, fifo or device node: named by `dir` + `name`, set through a
    /// pinned `O_PATH` descriptor.
    Special(BorrowedFd<'f>, &'f CStr),
}

impl Applier<'_> {
    /// Ownership, xattrs, mode (unless a symlink) and times of a symlink,
    /// fifo or device node, all without following the final component.
    pub(super) fn special_attrs(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        meta: &Meta,
        chmod: bool,
        s: &Scratch,
    ) -> Result<(), ApplyError> {
        if self.opts.preserve_ownership {
            sys::lchownat(dir, name, meta.uid, meta.gid).map_err(|e| io_err(s, "chown", e))?;
        }
        self.set_xattrs(XattrTarget::Special(dir, name), s)?;
        if chmod {
            sys::lchmodat(dir, name, meta.mode).map_err(|e| io_err(s, "chmod", e))?;
        }
        sys::lutimensat(dir, name, &meta.times).map_err(|e| io_err(s, "setting times", e))
    }

    pub(super) fn set_xattrs(
        &mut self,
        target: XattrTarget<'_>,
        s: &Scratch,
    ) -> Result<(), ApplyError> {
        if self.xattrs.is_empty() {
            return Ok(());
        }
        let mut pinned: Option<OwnedFd> = None;
        for (name, value) in &self.xattrs {
            let skip_reason = if name.to_bytes().starts_with(b"trusted.") {
                Some("trusted.* xattrs are not taken from layers".to_string())
            } else {
                let res = match target {
                    XattrTarget::Open(fd) => sys::fsetxattr(fd, name, value),
                    XattrTarget::Special(dir, entry_name) => {
                        if !*self.proc_ok.get_or_insert_with(sys::proc_is_procfs) {
                            self.skipped.push(SkippedXattr {
                                path: s.display(),
                                name: name.to_string_lossy().into_owned(),
                                reason: "/proc is not procfs".to_string(),
                            });
                            continue;
                        }
                        if pinned.is_none() {
                            pinned = Some(
                                sys::openat(dir, entry_name, libc::O_PATH | libc::O_NOFOLLOW, 0)
                                    .map_err(|e| io_err(s, "opening for xattrs", e))?,
                            );
                        }
                        match &pinned {
                            Some(fd) => sys::setxattr_pinned(fd.as_fd(), name, value),
                            None => Ok(()),
                        }
                    }
                };
                match res {
                    Ok(()) => None,
                    Err(e) if errno(&e) == libc::EOPNOTSUPP => Some(e.to_string()),
                    // The kernel refuses user.* xattrs on anything but
                    // regular files and directories.
                    Err(e)
                        if errno(&e) == libc::EPERM
                            && matches!(target, XattrTarget::Special(..))
                            && name.to_bytes().starts_with(b"user.") =>
                    {
                        Some(e.to_string())
                    }
                    Err(e) => {
                        return Err(ApplyError::Io {
                            path: s.display(),
                            op: "setting xattr",
                            source: io::Error::new(
                                e.kind(),
                                format!("{}: {e}", name.to_string_lossy()),
                            ),
                        })
                    }
                }
            };
            if let Some(reason) = skip_reason {
                warn!(entry = %s.display(), xattr = %name.to_string_lossy(), %reason, "xattr skipped");
                self.skipped.push(SkippedXattr {
                    path: s.display(),
                    name: name.to_string_lossy().into_owned(),
                    reason,
                });
            }
        }
        Ok(())
    }
}
