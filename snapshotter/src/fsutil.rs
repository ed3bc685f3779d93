//! Filesystem helpers: disk usage, a removal that never crosses into other
//! mounts, and a faithful tree copy for the native backend.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::Usage;

/// Bytes of regular files (each inode counted once, so hard links do not
/// double count) and the number of distinct inodes under `root`, itself
/// included. Does not descend into other filesystems.
pub(crate) fn usage(root: &Path) -> io::Result<Usage> {
    let md = fs::symlink_metadata(root)?;
    let dev = md.dev();
    let mut seen = HashSet::new();
    seen.insert((md.dev(), md.ino()));
    let mut usage = Usage { size: 0, inodes: 1 };
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let md = entry.metadata()?;
            if !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            usage.inodes += 1;
            if md.is_file() {
                usage.size += md.len();
            } else if md.is_dir() && md.dev() == dev {
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// fsync a directory so renames inside it survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Flush the whole filesystem holding `path`: one syncfs(2) instead of an
/// fsync per file of a freshly unpacked layer.
pub(crate) fn sync_fs(path: &Path) -> io::Result<()> {
    let f = fs::File::open(path)?;
    nix::unistd::syncfs(&f).map_err(io::Error::from)
}

/// Mount points at or below `path`, read from /proc/self/mountinfo.
pub(crate) fn mounts_under(path: &Path) -> io::Result<Vec<PathBuf>> {
    let info = fs::read("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in info.split(|b| *b == b'\n') {
        // Field 5 (index 4) is the mount point, with octal escapes.
        let Some(field) = line.split(|b| *b == b' ').nth(4) else {
            continue;
        };
        let mp = PathBuf::from(OsString::from_vec(unescape_mountinfo(field)));
        if mp.starts_with(path) {
            out.push(mp);
        }
    }
    Ok(out)
}

fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = u32::from(oct[0] - b'0') * 64
                    + u32::from(oct[1] - b'0') * 8
                    + u32::from(oct[2] - b'0');
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Remove `path` recursively, refusing (EBUSY) if anything is mounted at or
/// below it: deleting through a bind mount would destroy data that is not
/// ours. A missing path is success.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !md.is_dir() {
        return fs::remove_file(path);
    }
    let mounted = mounts_under(path)?;
    if !mounted.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!("refusing to delete, still mounted: {mounted:?}"),
        ));
    }
    remove_contents(path, md.dev())?;
    fs::remove_dir(path)
}

fn remove_contents(dir: &Path, dev: u64) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let md = entry.metadata()?;
        let p = entry.path();
        if md.is_dir() {
            if md.dev() != dev {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!("refusing to delete {}: another filesystem", p.display()),
                ));
            }
            remove_contents(&p, dev)?;
            fs::remove_dir(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Copy the tree at `src` into the existing directory `dst`, preserving
/// file types (symlinks, devices, fifos, sockets), hard links, owners,
/// modes (incl. setuid), xattrs and timestamps; `dst` itself takes `src`'s
/// metadata. Errors carry the offending path.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(src).map_err(|e| at(src, e))?;
    let mut copier = Copier {
        links: HashMap::new(),
    };
    copier.copy_dir_contents(src, dst)?;
    copy_metadata(src, dst, &md).map_err(|e| at(dst, e))
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

struct Copier {
    /// (dev, ino) of multiply-linked sources -> first copy made.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Copier {
    fn copy_dir_contents(&mut self, src: &Path, dst: &Path) -> io::Result<()> {
        for entry in fs::read_dir(src).map_err(|e| at(src, e))? {
            let entry = entry.map_err(|e| at(src, e))?;
            let s = entry.path();
            let d = dst.join(entry.file_name());
            let md = entry.metadata().map_err(|e| at(&s, e))?;
            self.copy_entry(&s, &d, &md)?;
        }
        Ok(())
    }

    fn copy_entry(&mut self, s: &Path, d: &Path, md: &fs::Metadata) -> io::Result<()> {
        let ft = md.file_type();
        if !ft.is_dir() && md.nlink() > 1 {
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                return fs::hard_link(first, d).map_err(|e| at(d, e));
            }
            self.links.insert((md.dev(), md.ino()), d.to_path_buf());
        }
        if ft.is_dir() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(d)
                .map_err(|e| at(d, e))?;
            self.copy_dir_contents(s, d)?;
        } else if ft.is_file() {
            let mut r = fs::File::open(s).map_err(|e| at(s, e))?;
            let mut w = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(d)
                .map_err(|e| at(d, e))?;
            io::copy(&mut r, &mut w).map_err(|e| at(d, e))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(s).map_err(|e| at(s, e))?;
            std::os::unix::fs::symlink(target, d).map_err(|e| at(d, e))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
            let kind = SFlag::from_bits_truncate(md.mode() & libc::S_IFMT);
            nix::sys::stat::mknod(d, kind, Mode::from_bits_truncate(0o600), md.rdev())
                .map_err(|e| at(d, e.into()))?;
        } else {
            return Err(at(s, io::Error::other("unsupported file type")));
        }
        copy_metadata(s, d, md).map_err(|e| at(d, e))
    }
}

/// Owner first (chown clears setuid bits and file capabilities), then mode,
/// then xattrs (restoring security.capability), then times last.
fn copy_metadata(s: &Path, d: &Path, md: &fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::lchown(d, Some(md.uid()), Some(md.gid()))?;
    let is_symlink = md.file_type().is_symlink();
    if !is_symlink {
        fs::set_permissions(d, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    }
    copy_xattrs(s, d)?;
    let atime = TimeSpec::new(md.atime(), md.atime_nsec());
    let mtime = TimeSpec::new(md.mtime(), md.mtime_nsec());
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        d,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Run a size-probing xattr call twice: once for the size, once to fill.
fn xattr_buf(mut call: impl FnMut(*mut libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size.unsigned_abs()];
        if buf.is_empty() {
            return Ok(buf);
        }
        let n = call(buf.as_mut_ptr().cast(), buf.len());
        if n >= 0 {
            buf.truncate(n.unsigned_abs());
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        // The attribute grew between the two calls: ask again.
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

fn copy_xattrs(s: &Path, d: &Path) -> io::Result<()> {
    let (sc, dc) = (cpath(s)?, cpath(d)?);
    let names = match xattr_buf(|buf, len| {
        // SAFETY: `sc` is NUL-terminated; `buf` is null with len 0 (size
        // probe) or points to `len` writable bytes.
        unsafe { libc::llistxattr(sc.as_ptr(), buf.cast(), len) }
    }) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let value = match xattr_buf(|buf, len| {
            // SAFETY: `sc` and `cname` are NUL-terminated; `buf` is null
            // with len 0 or points to `len` writable bytes.
            unsafe { libc::lgetxattr(sc.as_ptr(), cname.as_ptr(), buf, len) }
        }) {
            Ok(v) => v,
            // Removed since listing.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        // SAFETY: `dc` and `cname` are NUL-terminated; `value` is a live
        // buffer of `value.len()` bytes.
        let rc = unsafe {
            libc::lsetxattr(
                dc.as_ptr(),
                cname.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "set xattr {}: {e}",
                    OsStr::from_bytes(name).to_string_lossy()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo(br"/a\040b"), b"/a b");
        assert_eq!(unescape_mountinfo(br"/a\\"), br"/a\\");
        assert_eq!(unescape_mountinfo(br"/x\011"), b"/x\t");
    }
}
