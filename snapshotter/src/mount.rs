//! Mount descriptions returned by snapshotters, and the syscalls that realise
//! them.
//!
//! Overlay mounts go through the new mount API (`fsopen`/`fsconfig`/`fsmount`/
//! `move_mount`) and pass every lower directory separately with `lowerdir+`
//! (Linux >= 6.8), because mount(2) takes all options in one page and a
//! 100-layer image does not fit. Kernels without `lowerdir+` fall back to
//! mount(2) when the options fit. Paths are always absolute: no `chdir`
//! tricks, which would be process-wide and race with other threads.

use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::error::{Error, Result};

/// mount(2) copies at most one page of option data; longer data is cut
/// short by the kernel, so the classic path refuses it up front.
pub(crate) const MOUNT_DATA_LIMIT: usize = 4096;

/// How many mounts stacked on one target [`unmount`] peels off before giving
/// up (a guard against looping forever on a path that keeps being remounted).
const MAX_STACKED_MOUNTS: usize = 64;

/// One mount needed to assemble a snapshot, in containerd's shape: `kind` is
/// the filesystem type (`"bind"` or `"overlay"`), `options` the fstab-style
/// options (`"ro"`, `"rbind"`, `"lowerdir=a:b"`, `"upperdir=..."`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

impl Mount {
    /// A recursive bind mount of `source`, read-only when `readonly`.
    pub fn bind(source: &Path, readonly: bool) -> Mount {
        Mount {
            kind: "bind".to_string(),
            source: source.display().to_string(),
            options: vec![
                if readonly { "ro" } else { "rw" }.to_string(),
                "rbind".to_string(),
            ],
        }
    }

    /// Perform the mount on `target` (which must exist).
    pub fn mount(&self, target: &Path) -> Result<()> {
        match self.kind.as_str() {
            "bind" => self.mount_bind(target),
            "overlay" => mount_overlay(self, target),
            _ => self.mount_classic(target),
        }
    }

    fn mount_bind(&self, target: &Path) -> Result<()> {
        let parsed = parse_options(&self.options);
        let mut flags = MsFlags::MS_BIND | (parsed.flags & MsFlags::MS_REC);
        // A bind without "bind"/"rbind" still means bind; default to
        // recursive like containerd's "rbind" so submounts come along.
        if !parsed.flags.contains(MsFlags::MS_BIND) {
            flags |= MsFlags::MS_REC;
        }
        nix::mount::mount(
            Some(self.source.as_str()),
            target,
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|e| {
            Error::io(
                format!("bind mount {} on", self.source),
                target,
                io::Error::from(e),
            )
        })?;
        // Per-mount flags (ro, nosuid, ...) are ignored by a plain bind and
        // need a remount of the new bind mount.
        let extra = parsed.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            let res = nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                None::<&str>,
            );
            if let Err(e) = res {
                let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
                return Err(Error::io(
                    format!("remount bind of {} with {:?} on", self.source, self.options),
                    target,
                    io::Error::from(e),
                ));
            }
        }
        Ok(())
    }

    fn mount_classic(&self, target: &Path) -> Result<()> {
        let parsed = parse_options(&self.options);
        let data = parsed.data.join(",");
        if data.len() >= MOUNT_DATA_LIMIT {
            return Err(Error::invalid(format!(
                "{} mount options for {} are {} bytes, over mount(2)'s one-page limit",
                self.kind,
                target.display(),
                data.len()
            )));
        }
        nix::mount::mount(
            Some(self.source.as_str()),
            target,
            Some(self.kind.as_str()),
            parsed.flags,
            Some(data.as_str()),
        )
        .map_err(|e| {
            Error::io(
                format!("mount {} ({}) on", self.kind, self.source),
                target,
                io::Error::from(e),
            )
        })
    }
}

/// Mount `mounts` in order on `target`; if one fails, the ones already done
/// are unmounted again so the caller never sees a half-assembled rootfs.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = m.mount(target) {
            if i > 0 {
                let _ = unmount(target);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Unmount everything stacked on `target`. A busy mount is detached lazily
/// (`MNT_DETACH`) so teardown never blocks on a straggling process; a path
/// that is not mounted (or does not exist) is fine, so this is idempotent.
pub fn unmount(target: &Path) -> Result<()> {
    for _ in 0..MAX_STACKED_MOUNTS {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(Errno::EBUSY) => nix::mount::umount2(target, MntFlags::MNT_DETACH)
                .map_err(|e| Error::io("lazy unmount", target, io::Error::from(e)))?,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(Error::io("unmount", target, io::Error::from(e))),
        }
    }
    Err(Error::io(
        "unmount",
        target,
        io::Error::other(format!("still mounted after {MAX_STACKED_MOUNTS} unmounts")),
    ))
}

/// Options split into mount(2) flags and filesystem data.
struct Parsed {
    flags: MsFlags,
    /// `MOUNT_ATTR_*` bits for fsmount(2), equivalent to the per-mount flags.
    attrs: u64,
    data: Vec<String>,
}

fn parse_options(options: &[String]) -> Parsed {
    // (name, clears the flag?, mount(2) flag, fsmount attr)
    const TABLE: &[(&str, bool, MsFlags, u64)] = &[
        ("ro", false, MsFlags::MS_RDONLY, sys::MOUNT_ATTR_RDONLY),
        ("rw", true, MsFlags::MS_RDONLY, sys::MOUNT_ATTR_RDONLY),
        ("nosuid", false, MsFlags::MS_NOSUID, sys::MOUNT_ATTR_NOSUID),
        ("suid", true, MsFlags::MS_NOSUID, sys::MOUNT_ATTR_NOSUID),
        ("nodev", false, MsFlags::MS_NODEV, sys::MOUNT_ATTR_NODEV),
        ("dev", true, MsFlags::MS_NODEV, sys::MOUNT_ATTR_NODEV),
        ("noexec", false, MsFlags::MS_NOEXEC, sys::MOUNT_ATTR_NOEXEC),
        ("exec", true, MsFlags::MS_NOEXEC, sys::MOUNT_ATTR_NOEXEC),
        (
            "noatime",
            false,
            MsFlags::MS_NOATIME,
            sys::MOUNT_ATTR_NOATIME,
        ),
        ("atime", true, MsFlags::MS_NOATIME, sys::MOUNT_ATTR_NOATIME),
        (
            "nodiratime",
            false,
            MsFlags::MS_NODIRATIME,
            sys::MOUNT_ATTR_NODIRATIME,
        ),
        (
            "diratime",
            true,
            MsFlags::MS_NODIRATIME,
            sys::MOUNT_ATTR_NODIRATIME,
        ),
        (
            "strictatime",
            false,
            MsFlags::MS_STRICTATIME,
            sys::MOUNT_ATTR_STRICTATIME,
        ),
        ("relatime", false, MsFlags::MS_RELATIME, 0),
        ("sync", false, MsFlags::MS_SYNCHRONOUS, 0),
        ("async", true, MsFlags::MS_SYNCHRONOUS, 0),
        ("bind", false, MsFlags::MS_BIND, 0),
        ("rbind", false, MsFlags::MS_BIND.union(MsFlags::MS_REC), 0),
    ];
    let mut parsed = Parsed {
        flags: MsFlags::empty(),
        attrs: 0,
        data: Vec::new(),
    };
    for opt in options {
        match TABLE.iter().find(|(name, ..)| name == opt) {
            Some((_, true, flag, attr)) => {
                parsed.flags &= !*flag;
                parsed.attrs &= !*attr;
            }
            Some((_, false, flag, attr)) => {
                parsed.flags |= *flag;
                parsed.attrs |= *attr;
            }
            None => parsed.data.push(opt.clone()),
        }
    }
    parsed
}

/// Why the new mount API could not be used.
enum FsApiError {
    /// The kernel lacks the syscalls or `lowerdir+`: try mount(2).
    Unsupported(String),
    /// A real failure (bad path, bad option): report it.
    Failed(Error),
}

fn mount_overlay(m: &Mount, target: &Path) -> Result<()> {
    match mount_overlay_fsapi(m, target) {
        Ok(()) => Ok(()),
        Err(FsApiError::Failed(e)) => Err(e),
        Err(FsApiError::Unsupported(why)) => {
            debug!(target = %target.display(), %why, "new mount API unusable, falling back to mount(2)");
            m.mount_classic(target)
        }
    }
}

fn cstring(s: &str, target: &Path) -> Result<CString, FsApiError> {
    CString::new(s).map_err(|_| {
        FsApiError::Failed(Error::invalid(format!(
            "mount option {s:?} for {} contains a NUL byte",
            target.display()
        )))
    })
}

/// Build the overlay with fsopen/fsconfig, one `lowerdir+` per layer so no
/// single option string grows with the number of layers.
fn mount_overlay_fsapi(m: &Mount, target: &Path) -> Result<(), FsApiError> {
    let fs = match sys::fsopen(c"overlay") {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
            return Err(FsApiError::Unsupported(format!("fsopen: {e}")));
        }
        Err(e) => {
            return Err(FsApiError::Failed(Error::io(
                "fsopen overlay for",
                target,
                e,
            )));
        }
    };
    let fail = |what: String, e: io::Error| {
        let log = sys::read_log(fs.as_fd());
        let e = if log.is_empty() {
            e
        } else {
            io::Error::new(e.kind(), format!("{e} ({})", log.join("; ")))
        };
        FsApiError::Failed(Error::io(what, target, e))
    };
    let parsed = parse_options(&m.options);
    let mut first_lower = true;
    for opt in &parsed.data {
        match opt.split_once('=') {
            Some(("lowerdir", dirs)) => {
                for dir in dirs.split(':') {
                    let value = cstring(dir, target)?;
                    match sys::fsconfig_set_string(fs.as_fd(), c"lowerdir+", &value) {
                        Ok(()) => {}
                        // Kernels before 6.8 reject the unknown parameter.
                        Err(e) if first_lower && e.raw_os_error() == Some(libc::EINVAL) => {
                            return Err(FsApiError::Unsupported(format!(
                                "lowerdir+: {e} {:?}",
                                sys::read_log(fs.as_fd())
                            )));
                        }
                        Err(e) => return Err(fail(format!("overlay lowerdir+={dir} for"), e)),
                    }
                    first_lower = false;
                }
            }
            Some((key, value)) => {
                let (k, v) = (cstring(key, target)?, cstring(value, target)?);
                sys::fsconfig_set_string(fs.as_fd(), &k, &v)
                    .map_err(|e| fail(format!("overlay option {opt} for"), e))?;
            }
            None => {
                let k = cstring(opt, target)?;
                sys::fsconfig_set_flag(fs.as_fd(), &k)
                    .map_err(|e| fail(format!("overlay option {opt} for"), e))?;
            }
        }
    }
    sys::fsconfig_create(fs.as_fd()).map_err(|e| fail("create overlay for".to_string(), e))?;
    let mnt = sys::fsmount(fs.as_fd(), parsed.attrs)
        .map_err(|e| fail("fsmount overlay for".to_string(), e))?;
    let target_c = CString::new(target.as_os_str().as_encoded_bytes()).map_err(|_| {
        FsApiError::Failed(Error::invalid(format!(
            "mount target {} contains a NUL byte",
            target.display()
        )))
    })?;
    sys::move_mount(mnt.as_fd(), &target_c)
        .map_err(|e| FsApiError::Failed(Error::io("move_mount overlay to", target, e)))
}

/// Thin safe wrappers over the new mount API syscalls, which libc exposes
/// only as syscall numbers.
mod sys {
    use std::ffi::CStr;
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

    // From <linux/mount.h>; stable kernel ABI.
    const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
    const FSCONFIG_SET_FLAG: libc::c_uint = 0;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
    pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
    pub const MOUNT_ATTR_NODEV: u64 = 0x4;
    pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
    pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
    pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
    pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

    fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
        let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("kernel returned a bad fd"))?;
        // SAFETY: `fd` was just returned by the kernel as a new descriptor
        // that nothing else in the process owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// fsopen(2): a filesystem context for `fstype`.
    pub fn fsopen(fstype: &CStr) -> io::Result<OwnedFd> {
        // SAFETY: `fstype` is NUL-terminated and outlives the call.
        let fd =
            check(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
        owned(fd)
    }

    /// fsconfig(FSCONFIG_SET_STRING, key, value).
    pub fn fsconfig_set_string(fs: BorrowedFd<'_>, key: &CStr, value: &CStr) -> io::Result<()> {
        // SAFETY: `fs` is an open fd; `key`/`value` are NUL-terminated and
        // outlive the call; aux must be 0 for this command.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0 as libc::c_int,
            )
        })
        .map(drop)
    }

    /// fsconfig(FSCONFIG_SET_FLAG, key).
    pub fn fsconfig_set_flag(fs: BorrowedFd<'_>, key: &CStr) -> io::Result<()> {
        // SAFETY: `fs` is an open fd; `key` is NUL-terminated and outlives
        // the call; value must be NULL and aux 0 for this command.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_FLAG,
                key.as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0 as libc::c_int,
            )
        })
        .map(drop)
    }

    /// fsconfig(FSCONFIG_CMD_CREATE): build the superblock.
    pub fn fsconfig_create(fs: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: `fs` is an open fd; key and value must be NULL, aux 0.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0 as libc::c_int,
            )
        })
        .map(drop)
    }

    /// fsmount(2): a detached mount of the created superblock.
    pub fn fsmount(fs: BorrowedFd<'_>, attrs: u64) -> io::Result<OwnedFd> {
        let attrs = libc::c_uint::try_from(attrs)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `fs` is an open fd; the other arguments are plain integers.
        let fd = check(unsafe {
            libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs)
        })?;
        owned(fd)
    }

    /// move_mount(2): attach the detached mount `mnt` at `target`.
    pub fn move_mount(mnt: BorrowedFd<'_>, target: &CStr) -> io::Result<()> {
        // SAFETY: `mnt` is an open mount fd; both paths are NUL-terminated
        // and outlive the call; the empty from-path plus
        // MOVE_MOUNT_F_EMPTY_PATH means "the mount `mnt` itself".
        check(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mnt.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        })
        .map(drop)
    }

    /// Drain the messages the filesystem logged on the context (why an
    /// option or the create was refused); best effort.
    pub fn read_log(fs: BorrowedFd<'_>) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while out.len() < 32 {
            match nix::unistd::read(fs, &mut buf) {
                Ok(n) if n > 0 => out.push(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
                _ => break,
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) fn mount_overlay_classic(m: &Mount, target: &Path) -> Result<()> {
    m.mount_classic(target)
}
