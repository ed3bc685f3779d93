//! Thin, fd-relative wrappers around the Linux syscalls the applier needs.
//!
//! Every function here operates relative to a directory file descriptor and a
//! single path component (or, for [`openat2_in_root`], a path that the kernel
//! resolves while clamped to the given root). None of them joins strings onto
//! host paths.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `struct open_how` from `linux/openat2.h` (libc's copy is `#[non_exhaustive]`).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Symlinks (including absolute ones and `..`) are resolved as if the root fd
/// were `/`, and procfs-style magic links are refused outright.
const RESOLVE_FLAGS: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cvt_fd(ret: libc::c_int) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else
    // owns it, so transferring ownership to an OwnedFd is sound.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// Opens `path` relative to `root` with `openat2(RESOLVE_IN_ROOT |
/// RESOLVE_NO_MAGICLINKS)`: whatever symlinks or `..` components the path
/// contains, the result is inside `root`. `O_CLOEXEC` is always added.
pub(crate) fn openat2_in_root(
    root: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_FLAGS,
    };
    // The kernel may answer EAGAIN for RESOLVE_IN_ROOT when a concurrent
    // rename could have let the walk escape; retrying is the documented fix.
    for _ in 0..64 {
        // SAFETY: `path` is NUL-terminated and outlives the call; `how` is a
        // fully initialised `struct open_how` whose exact size is passed; the
        // syscall only reads these and returns a new fd or -1.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if ret >= 0 {
            let fd = RawFd::try_from(ret).map_err(|_| io::Error::other("openat2 fd overflow"))?;
            // SAFETY: the kernel just returned this descriptor; we are its only owner.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// Opens the applier's root as an `O_PATH` directory descriptor.
pub(crate) fn open_root(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "root path contains NUL"))?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    cvt_fd(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)`. Callers pass `O_NOFOLLOW`
/// whenever `name` could be a symlink.
pub(crate) fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is a
    // valid open descriptor for the duration of the borrow.
    cvt_fd(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    })
}

pub(crate) fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `dir` is valid for the borrow.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

pub(crate) fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated; `dir` is valid for the borrow.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// `linkat` without `AT_SYMLINK_FOLLOW`: a symlink target is linked itself,
/// never followed.
pub(crate) fn linkat(
    old_dir: BorrowedFd<'_>,
    old_name: &CStr,
    new_dir: BorrowedFd<'_>,
    new_name: &CStr,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; both fds are valid for the borrow.
    cvt(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            0,
        )
    })
}

pub(crate) fn mknodat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::mode_t,
    dev: libc::dev_t,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `dir` is valid for the borrow.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) })
}

pub(crate) fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `dir` is valid for the borrow.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn lstatat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` points to writable memory of the right size; `name` is
    // NUL-terminated; `dir` is valid for the borrow.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so it fully initialised `st`.
    Ok(unsafe { st.assume_init() })
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)` (an `lchown`).
pub(crate) fn lchownat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    uid: libc::uid_t,
    gid: libc::gid_t,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `dir` is valid for the borrow.
    cvt(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub(crate) fn fchown(fd: BorrowedFd<'_>, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: `fd` is a valid open descriptor for the duration of the borrow.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })
}

pub(crate) fn fchmod(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `fd` is a valid open descriptor for the duration of the borrow.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })
}

/// chmod of `name` in `dir` without following a symlink in the final
/// component (`fchmodat2(AT_SYMLINK_NOFOLLOW)`, Linux 6.6+).
pub(crate) fn lchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `dir` is valid for the borrow; the
    // syscall takes (int dirfd, const char *path, mode_t mode, int flags).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            mode,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    // Older kernel: pin the inode with an O_PATH|O_NOFOLLOW fd, check it is
    // not a symlink, then chmod it through its /proc magic link (which refers
    // to the pinned inode, so nothing can be swapped in between).
    let fd = openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    let st = fstat(fd.as_fd())?;
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    let path = ProcFdPath::new(fd.as_fd());
    // SAFETY: `path` is a NUL-terminated buffer that outlives the call.
    cvt(unsafe { libc::chmod(path.as_ptr(), mode) })
}

pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` points to writable memory of the right size; `fd` is valid.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it fully initialised `st`.
    Ok(unsafe { st.assume_init() })
}

/// `utimensat(dir, name, times, AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn lutimensat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    times: &[libc::timespec; 2],
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `times` points to two timespecs;
    // `dir` is valid for the borrow.
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub(crate) fn futimens(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: `times` points to two timespecs; `fd` is valid for the borrow.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })
}

pub(crate) fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `value` is a valid buffer of the
    // given length; `fd` is valid for the borrow.
    cvt(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Sets an xattr on the inode an `O_PATH` descriptor refers to (symlinks,
/// fifos, device nodes: files we must not open for I/O) through its
/// `/proc/self/fd/N` magic link. The magic link jumps straight to the pinned
/// inode, so this cannot be redirected elsewhere; the caller must have
/// checked that `/proc` is procfs ([`proc_is_procfs`]).
pub(crate) fn setxattr_pinned(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    let path = ProcFdPath::new(fd);
    // SAFETY: `path` and `name` are NUL-terminated buffers and `value` a valid
    // buffer of the given length, all outliving the call.
    cvt(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// True when `/proc` is a real procfs (so `/proc/self/fd/N` are magic links).
pub(crate) fn proc_is_procfs() -> bool {
    let mut sfs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: the path literal is NUL-terminated and `sfs` points to writable
    // memory of the right size.
    let ret = unsafe { libc::statfs(c"/proc".as_ptr(), sfs.as_mut_ptr()) };
    if ret != 0 {
        return false;
    }
    // SAFETY: statfs succeeded, so it fully initialised `sfs`.
    let sfs = unsafe { sfs.assume_init() };
    sfs.f_type == libc::PROC_SUPER_MAGIC
}

/// "/proc/self/fd/<n>\0" formatted on the stack.
struct ProcFdPath {
    buf: [u8; 32],
}

impl ProcFdPath {
    fn new(fd: BorrowedFd<'_>) -> Self {
        const PREFIX: &[u8] = b"/proc/self/fd/";
        let mut buf = [0u8; 32];
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        let mut digits = [0u8; 12];
        let mut n = fd.as_raw_fd().unsigned_abs();
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            buf[PREFIX.len() + i] = digits[len - 1 - i];
        }
        // buf[PREFIX.len() + len] is already 0: the terminating NUL.
        ProcFdPath { buf }
    }

    fn as_ptr(&self) -> *const libc::c_char {
        self.buf.as_ptr().cast()
    }
}

/// An open directory stream (`fdopendir`), closed on drop.
pub(crate) struct DirStream {
    ptr: std::ptr::NonNull<libc::DIR>,
}

impl DirStream {
    /// The stream's descriptor, usable for `*at` calls on the directory.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `ptr` is a live DIR* (closed only in Drop), so dirfd() returns
        // its open descriptor, which stays valid for as long as `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(libc::dirfd(self.ptr.as_ptr())) }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from fdopendir and is closed exactly once, here.
        unsafe {
            libc::closedir(self.ptr.as_ptr());
        }
    }
}

/// Reads every name in the directory `dir` (opened `O_RDONLY|O_DIRECTORY`),
/// except `.` and `..`. Returns the open stream (for further `*at` calls on
/// the directory) and the names.
pub(crate) fn read_dir(dir: OwnedFd) -> io::Result<(DirStream, Vec<CString>)> {
    use std::os::fd::IntoRawFd;
    let raw = dir.into_raw_fd();
    // SAFETY: `raw` is an open directory descriptor we own; on success the DIR
    // stream takes ownership of it.
    let ptr = unsafe { libc::fdopendir(raw) };
    let Some(ptr) = std::ptr::NonNull::new(ptr) else {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `raw` is still ours to close.
        unsafe {
            libc::close(raw);
        }
        return Err(err);
    };
    let stream = DirStream { ptr };
    let mut names = Vec::new();
    loop {
        // SAFETY: __errno_location returns this thread's errno slot; readdir
        // reports errors only through errno, so it is cleared first.
        unsafe {
            *libc::__errno_location() = 0;
        }
        // SAFETY: `stream.ptr` is a live DIR*, used from this thread only.
        let ent = unsafe { libc::readdir(stream.ptr.as_ptr()) };
        if ent.is_null() {
            let err = io::Error::last_os_error();
            if err.raw_os_error().unwrap_or(0) != 0 {
                return Err(err);
            }
            break;
        }
        // SAFETY: readdir returned a valid dirent whose d_name is a
        // NUL-terminated string, valid until the next readdir call; it is
        // copied out before that.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let b = name.to_bytes();
        if b == b"." || b == b".." {
            continue;
        }
        names.push(name.to_owned());
    }
    Ok((stream, names))
}

/// Removes `name` from `dir` whatever it is, recursively for directories,
/// without following symlinks (like `rm -rf`, but fd-relative). A missing
/// entry is not an error.
///
/// Iterative, so a deep tree cannot overflow the stack; one fd is held per
/// directory level currently being emptied.
pub(crate) fn remove_all(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match unlinkat(dir, name, 0) {
        Ok(()) => return Ok(()),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENOENT) => return Ok(()),
            // Linux answers EISDIR for a directory (POSIX allows EPERM).
            Some(libc::EISDIR) | Some(libc::EPERM) => {}
            _ => return Err(e),
        },
    }
    match unlinkat(dir, name, libc::AT_REMOVEDIR) {
        Ok(()) => return Ok(()),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENOENT) => return Ok(()),
            Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => {}
            _ => return Err(e),
        },
    }

    struct Frame {
        dir: DirStream,
        pending: Vec<CString>,
        /// Name of this directory in its parent frame (None for the top).
        name: Option<CString>,
    }
    let top = openat(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    let (d, pending) = read_dir(top)?;
    let mut stack = vec![Frame {
        dir: d,
        pending,
        name: None,
    }];
    while let Some(frame) = stack.last_mut() {
        if let Some(child) = frame.pending.pop() {
            let fd = frame.dir.as_fd();
            match unlinkat(fd, &child, 0) {
                Ok(()) => continue,
                Err(e) => match e.raw_os_error() {
                    Some(libc::ENOENT) => continue,
                    Some(libc::EISDIR) | Some(libc::EPERM) => {}
                    _ => return Err(e),
                },
            }
            let sub = openat(
                fd,
                &child,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            let (d, pending) = read_dir(sub)?;
            stack.push(Frame {
                dir: d,
                pending,
                name: Some(child),
            });
            continue;
        }
        // Directory emptied: remove it from its parent.
        let done = stack.pop();
        if let (Some(Frame { name: Some(n), .. }), Some(parent)) = (done, stack.last()) {
            match unlinkat(parent.dir.as_fd(), &n, libc::AT_REMOVEDIR) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    match unlinkat(dir, name, libc::AT_REMOVEDIR) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}
