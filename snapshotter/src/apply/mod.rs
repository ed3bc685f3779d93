//! Safe application of OCI image layers (changeset tars) onto a directory.
//!
//! [`apply_layer`] decompresses a layer blob, hashes the uncompressed stream
//! (the layer's *diff ID*) and applies its entries under `root` following the
//! OCI image-spec `layer.md` rules: additions and modifications replace what
//! is there (directories merge), `.wh.NAME` removes `NAME`, `.wh..wh..opq`
//! hides everything the lower layers had in its directory.
//!
//! # Containment
//!
//! Nothing outside `root` is created, changed or read. `root` is opened once
//! as an `O_PATH` descriptor; each entry name is normalised lexically (leading
//! `/` stripped, `.` dropped, `..` clamped at the root) and its parent
//! directory is opened with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! relative to that descriptor, so symlinks already in the tree (absolute
//! ones, `../../..`, loops) resolve inside `root` or fail. The final component
//! is then created with `*at` syscalls that never follow it (`O_NOFOLLOW |
//! O_EXCL`, `AT_SYMLINK_NOFOLLOW`, `mkdirat`, `symlinkat`, `mknodat`, `linkat`
//! without `AT_SYMLINK_FOLLOW`), and attributes are set through the file's own
//! descriptor or nofollow `*at` calls. Hardlink targets are resolved the same
//! way. No host path is ever built by string joining.
//!
//! # Whiteouts and overlayfs
//!
//! Two ways of applying are supported ([`WhiteoutMode`]):
//!
//! * [`WhiteoutMode::Remove`]: whiteouts unlink their target and opaque
//!   markers empty the directory (of everything not added by this layer). This
//!   is right for a plain copied rootfs *and* for applying through a mounted
//!   overlay: the daemon mounts the new active snapshot (lower = parent
//!   layers, upper = the new layer's dir) and applies onto the mountpoint, so
//!   the overlay itself records the deletions as whiteouts in the upper dir,
//!   and files of lower layers are visible — which is what hardlinks to files
//!   of lower layers need (this is how containerd applies layers).
//! * [`WhiteoutMode::Overlay`]: for applying into a bare (unmounted) overlay
//!   upper dir: a whiteout becomes a 0:0 character device, an opaque marker
//!   the `trusted.overlay.opaque=y` xattr, and a directory that replaces a
//!   whiteout is made opaque (as overlayfs does itself). Lower layers are not
//!   visible there, so a hardlink to a file of a lower layer fails with
//!   [`ApplyError::HardlinkTargetMissing`]; use `Remove` through a mount for
//!   layers that may contain such links.
//!
//! Whiteouts only apply to lower layers: one naming a path this layer has
//! created is ignored. Other `.wh..wh.*` entries (AUFS metadata) and anything
//! below a `.wh.*` directory are ignored; no whiteout entry ever creates a
//! file of that name.
//!
//! # Other rules
//!
//! * The root entry itself (`./`) is ignored, as containerd does.
//! * Attributes: ownership (numeric uid/gid, `lchown` for symlinks) is set
//!   first, then xattrs (a chown clears `security.capability`), then the mode
//!   including setuid/setgid/sticky (a chown clears setuid), then times.
//!   Directory times are set at the end, in reverse order. Hardlink entries
//!   carry no attributes of their own (they share the target's inode).
//! * xattrs come from `SCHILY.xattr.*` PAX records. `trusted.*` ones (which
//!   include overlayfs' own control xattrs) are never taken from a layer, as in
//!   containerd; those and any the filesystem refuses with `ENOTSUP` (and
//!   `user.*` on special files, which the kernel refuses) are skipped and
//!   listed in [`ApplyReport::skipped_xattrs`].
//! * GNU sparse entries are written with holes where the map has them and
//!   where whole 4 KiB blocks of their data are zero; the work is
//!   proportional to the data stored in the layer, never to the apparent size.
//! * Limits: `max_file_size` per entry and `max_total_size` for the whole
//!   uncompressed layer are checked against the declared size before an
//!   entry's data is written; sparse files count at their apparent size (a
//!   10 KB tar may declare 60 GiB). The stream reader also enforces
//!   `max_total_size` on the bytes actually decompressed (gzip bombs, padding)
//!   and caps what one entry's headers (PAX records, long names, sparse maps)
//!   may buffer at 4 MiB.
//! * Cancellation: the flag passed to [`apply_layer`] is checked before each
//!   entry and each chunk of data (at most 1 MiB), so a cancelled apply stops
//!   within milliseconds with [`ApplyError::Cancelled`].

#![deny(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod path;
mod stream;
mod sys;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{debug, warn};

pub use error::ApplyError;
pub use stream::Compression;

use path::SplitPath;
use stream::{Fault, LayerStream, Shared, StreamState, TarSide};

/// Size of the buffer file data is copied through.
const COPY_BUFFER: usize = 1 << 20;
/// Granularity of hole detection for sparse entries.
const SPARSE_BLOCK: usize = 4096;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// How whiteouts and opaque directories are materialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutMode {
    /// Overlayfs on-disk format, for applying into a bare upper dir: a
    /// whiteout is a 0:0 character device, an opaque directory carries
    /// `trusted.overlay.opaque=y`.
    Overlay,
    /// Remove the whited-out path / empty the opaque directory. For plain
    /// rootfs copies and for applying through a mounted overlay (where the
    /// kernel then writes the whiteouts into the upper dir).
    #[default]
    Remove,
}

/// Options for [`apply_layer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    /// How whiteouts are applied.
    pub whiteouts: WhiteoutMode,
    /// When false, character and block device entries are refused with
    /// [`ApplyError::DeviceNotAllowed`] (whiteout devices the applier creates
    /// itself in [`WhiteoutMode::Overlay`] are not affected). FIFOs are
    /// always allowed.
    pub allow_devices: bool,
    /// Largest size one entry may declare (for sparse files, the apparent
    /// size).
    pub max_file_size: u64,
    /// Largest uncompressed layer, headers and padding included, sparse files
    /// at their apparent size.
    pub max_total_size: u64,
    /// Most tar entries a layer may have.
    pub max_entries: u64,
    /// Apply the uid/gid of entries (needs root); when false, files belong to
    /// the caller.
    pub preserve_ownership: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            whiteouts: WhiteoutMode::default(),
            allow_devices: false,
            max_file_size: 128 << 30,
            max_total_size: 512 << 30,
            max_entries: 5_000_000,
            preserve_ownership: true,
        }
    }
}

/// What [`apply_layer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// `sha256:<hex>` of the whole uncompressed tar stream; compare it with
    /// the image config's `rootfs.diff_ids`.
    pub diff_id: String,
    /// Length of the uncompressed stream.
    pub bytes: u64,
    /// Number of tar entries (PAX and GNU long-name headers not counted).
    pub entries: u64,
    /// xattrs that were not applied, and why.
    pub skipped_xattrs: Vec<SkippedXattr>,
}

/// An xattr from the layer that was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedXattr {
    /// The entry, as named in the layer.
    pub path: String,
    /// The xattr name.
    pub name: String,
    /// Why it was skipped.
    pub reason: String,
}

/// Applies the layer blob read from `reader` (compressed as `compression`)
/// onto the directory `root`, and returns its diff ID.
///
/// The whole stream is read, including the end-of-archive blocks and any
/// padding after them, so the diff ID covers all of it. On error `root` is
/// left partially applied: callers discard it.
///
/// Once `cancel` is set, the apply stops promptly with
/// [`ApplyError::Cancelled`].
pub fn apply_layer<R: Read>(
    root: &Path,
    reader: R,
    compression: Compression,
    opts: &ApplyOptions,
    cancel: &AtomicBool,
) -> Result<ApplyReport, ApplyError> {
    let root_fd = sys::open_root(root).map_err(|source| ApplyError::Root {
        root: root.to_path_buf(),
        source,
    })?;
    let state = StreamState::new(opts.max_total_size);
    let stream = Rc::new(RefCell::new(
        LayerStream::new(reader, compression, Rc::clone(&state)).map_err(ApplyError::Decompress)?,
    ));
    let mut archive = tar::Archive::new(TarSide::new(Rc::clone(&stream), Rc::clone(&state)));
    let mut raw = Shared(Rc::clone(&stream));
    let mut applier = Applier::new(root_fd.as_fd(), opts, Rc::clone(&state), cancel);

    let mut count: u64 = 0;
    {
        let mut entries = archive.entries().map_err(|e| stream_error(&state, e))?;
        loop {
            applier.check_cancel()?;
            state.begin_metadata();
            let next = entries.next();
            state.begin_data();
            let mut entry = match next {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(e)) => return Err(stream_error(&state, e)),
            };
            count += 1;
            if count > opts.max_entries {
                return Err(ApplyError::TooManyEntries {
                    limit: opts.max_entries,
                });
            }
            applier.apply(&mut entry, &mut raw)?;
        }
    }
    drop(archive);

    let mut stream = stream.borrow_mut();
    stream
        .drain(&mut applier.buf, cancel)
        .map_err(|e| stream_error(&state, e))?;
    let (diff_id, bytes) = stream.finish().map_err(|e| stream_error(&state, e))?;
    applier.finish_dirs()?;
    Ok(ApplyReport {
        diff_id,
        bytes,
        entries: count,
        skipped_xattrs: applier.skipped,
    })
}

/// Maps an error that surfaced through the tar reader to its real cause.
fn stream_error(state: &StreamState, e: io::Error) -> ApplyError {
    match state.take_fault() {
        Some(Fault::Decompress(source)) => ApplyError::Decompress(source),
        Some(Fault::StreamLimit { limit }) => ApplyError::StreamTooLarge { limit },
        Some(Fault::MetadataLimit { limit }) => ApplyError::MetadataTooLarge { limit },
        Some(Fault::Cancelled) => ApplyError::Cancelled,
        None => ApplyError::Tar(e),
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_overlay_whiteout(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Parses a PAX time (`[-]secs[.fraction]`) into (seconds, nanoseconds).
fn parse_pax_time(value: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(value).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: i64 = 0;
    let mut digits = 0;
    for b in frac.bytes().take(9) {
        nanos = nanos * 10 + i64::from(b - b'0');
        digits += 1;
    }
    for _ in digits..9 {
        nanos *= 10;
    }
    if neg {
        if nanos > 0 {
            Some((-secs - 1, 1_000_000_000 - nanos))
        } else {
            Some((-secs, 0))
        }
    } else {
        Some((secs, nanos))
    }
}

/// Reads until `buf` is full or the reader is exhausted.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes `chunk` at `offset`, skipping whole zero blocks (left as holes).
fn write_sparse(file: &File, chunk: &[u8], offset: u64) -> io::Result<()> {
    let mut pos = 0;
    while pos < chunk.len() {
        // Skip zero blocks.
        while pos < chunk.len() {
            let end = (pos + SPARSE_BLOCK).min(chunk.len());
            if chunk[pos..end].iter().fold(0u8, |a, &b| a | b) != 0 {
                break;
            }
            pos = end;
        }
        let start = pos;
        while pos < chunk.len() {
            let end = (pos + SPARSE_BLOCK).min(chunk.len());
            if chunk[pos..end].iter().fold(0u8, |a, &b| a | b) == 0 {
                break;
            }
            pos = end;
        }
        if pos > start {
            file.write_all_at(&chunk[start..pos], offset + start as u64)?;
        }
    }
    Ok(())
}

/// A directory an entry is created in: the root itself, or one opened inside it.
enum Dir {
    Root,
    Fd(OwnedFd),
}

impl Dir {
    fn fd<'a>(&'a self, root: BorrowedFd<'a>) -> BorrowedFd<'a> {
        match self {
            Dir::Root => root,
            Dir::Fd(fd) => fd.as_fd(),
        }
    }
}

/// Attributes of one entry.
struct Meta {
    mode: libc::mode_t,
    uid: libc::uid_t,
    gid: libc::gid_t,
    times: [libc::timespec; 2],
}

/// Per-entry scratch buffers, reused across entries.
#[derive(Default)]
struct Scratch {
    /// The entry name as in the archive (for messages).
    raw: Vec<u8>,
    /// The normalised entry path.
    rel: Vec<u8>,
    /// `rel` split for syscalls.
    names: SplitPath,
    /// Hardlink target / whiteout target, normalised.
    other: Vec<u8>,
    other_names: SplitPath,
}

impl Scratch {
    fn display(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// Where xattrs are set.
#[derive(Clone, Copy)]
enum XattrTarget<'f> {
    /// A regular file or directory opened for I/O: `fsetxattr`.
    Open(BorrowedFd<'f>),
    /// A symlink, fifo or device node: named by `dir` + `name`, set through a
    /// pinned `O_PATH` descriptor.
    Special(BorrowedFd<'f>, &'f CStr),
}

struct Applier<'r> {
    root: BorrowedFd<'r>,
    opts: &'r ApplyOptions,
    state: Rc<StreamState>,
    cancel: &'r AtomicBool,
    /// What the sparse entries so far declare beyond the data they store:
    /// the layer's apparent size is the stream's plus this.
    sparse_extra: u64,
    buf: Vec<u8>,
    scratch: Scratch,
    xattrs: Vec<(CString, Vec<u8>)>,
    /// Paths (and their ancestors) this layer has put in place; `Remove` mode
    /// only, for opaque markers and whiteouts that come after them.
    unpacked: HashSet<Vec<u8>>,
    /// Directories whose times are set at the end.
    dirs: Vec<(Vec<u8>, [libc::timespec; 2])>,
    skipped: Vec<SkippedXattr>,
    proc_ok: Option<bool>,
}

impl<'r> Applier<'r> {
    fn new(
        root: BorrowedFd<'r>,
        opts: &'r ApplyOptions,
        state: Rc<StreamState>,
        cancel: &'r AtomicBool,
    ) -> Self {
        Applier {
            root,
            opts,
            state,
            cancel,
            sparse_extra: 0,
            buf: vec![0; COPY_BUFFER],
            scratch: Scratch::default(),
            xattrs: Vec::new(),
            unpacked: HashSet::new(),
            dirs: Vec::new(),
            skipped: Vec::new(),
            proc_ok: None,
        }
    }

    fn check_cancel(&self) -> Result<(), ApplyError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(ApplyError::Cancelled);
        }
        Ok(())
    }

    /// Applies one entry; `raw` is the layer stream itself, from which the
    /// stored data of a GNU sparse entry is read (see [`TarSide`]).
    fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &mut dyn Read,
    ) -> Result<(), ApplyError> {
        let mut s = std::mem::take(&mut self.scratch);
        let result = self.apply_with(entry, raw, &mut s);
        self.scratch = s;
        result
    }

    fn apply_with<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &mut dyn Read,
        s: &mut Scratch,
    ) -> Result<(), ApplyError> {
        use tar::EntryType as T;

        s.raw.clear();
        s.raw.extend_from_slice(&entry.path_bytes());
        if let Err(reason) = path::normalize(&s.raw, &mut s.rel) {
            return Err(invalid(s, reason));
        }
        let kind = entry.header().entry_type();
        // For a GNU sparse entry, its apparent size (the tar reader checked
        // that its map ends there).
        let size = entry.size();
        if size > self.opts.max_file_size {
            return Err(ApplyError::EntryTooLarge {
                path: s.display(),
                size,
                limit: self.opts.max_file_size,
            });
        }
        let layer_size = self.state.total().saturating_add(self.sparse_extra);
        if layer_size.saturating_add(size) > self.opts.max_total_size {
            return Err(ApplyError::LayerTooLarge {
                path: s.display(),
                size,
                limit: self.opts.max_total_size,
            });
        }
        if kind == tar::EntryType::GNUSparse {
            let stored = entry.header().entry_size().map_err(ApplyError::Tar)?;
            self.sparse_extra = self
                .sparse_extra
                .saturating_add(size.saturating_sub(stored));
        }

        match kind {
            T::Regular
            | T::Continuous
            | T::GNUSparse
            | T::Directory
            | T::Symlink
            | T::Link
            | T::Fifo => {}
            T::Char | T::Block => {
                if !self.opts.allow_devices && !is_whiteout_name(&s.rel) {
                    return Err(ApplyError::DeviceNotAllowed { path: s.display() });
                }
            }
            T::XGlobalHeader => {
                debug!("ignoring PAX global header");
                return self.drain(entry, raw, s);
            }
            other => {
                return Err(ApplyError::UnsupportedType {
                    path: s.display(),
                    kind: char::from(other.as_byte()),
                })
            }
        }

        if s.rel.is_empty() {
            debug!(entry = %s.display(), "entry resolves to the root, ignored");
            return self.drain(entry, raw, s);
        }
        s.names.set(&s.rel);

        // Whiteouts and AUFS metadata.
        let base = s.names.base_bytes();
        if s.names
            .parent_bytes()
            .split(|&b| b == b'/')
            .any(|c| c.starts_with(WHITEOUT_PREFIX))
        {
            warn!(entry = %s.display(), "entry below a whiteout-named directory ignored");
            return self.drain(entry, raw, s);
        }
        if base == WHITEOUT_OPAQUE {
            self.drain(entry, raw, s)?;
            return self.opaque(s);
        }
        if base.starts_with(WHITEOUT_META_PREFIX) {
            debug!(entry = %s.display(), "whiteout metadata entry ignored");
            return self.drain(entry, raw, s);
        }
        if let Some(target) = base.strip_prefix(WHITEOUT_PREFIX) {
            if target.is_empty() || target == b"." || target == b".." {
                return Err(invalid(s, "invalid whiteout name"));
            }
            let meta = self.read_meta(entry, s)?;
            self.drain(entry, raw, s)?;
            return self.whiteout(s, &meta);
        }

        let meta = self.read_meta(entry, s)?;
        let dir = self
            .open_parent(&s.names, true)
            .map_err(|e| io_err(s, "opening parent directory", e))?
            .unwrap_or(Dir::Root);
        let dirfd = dir.fd(self.root);
        let name = s.names.base();

        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                let file = self
                    .create(dirfd, name, |d, n| {
                        sys::openat(
                            d,
                            n,
                            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                            0o600,
                        )
                    })
                    .map_err(|e| io_err(s, "creating file", e))?;
                let file = File::from(file);
                let written = if kind == T::GNUSparse {
                    self.write_sparse_entry(entry, raw, &file, s)?
                } else {
                    self.write_data(entry, &file, s)?
                };
                if written != size {
                    return Err(ApplyError::Tar(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "entry {:?}: data truncated ({written} of {size} bytes)",
                            s.display()
                        ),
                    )));
                }
                let fd = file.as_fd();
                if self.opts.preserve_ownership {
                    sys::fchown(fd, meta.uid, meta.gid).map_err(|e| io_err(s, "chown", e))?;
                }
                self.set_xattrs(XattrTarget::Open(fd), s)?;
                sys::fchmod(fd, meta.mode).map_err(|e| io_err(s, "chmod", e))?;
                sys::futimens(fd, &meta.times).map_err(|e| io_err(s, "setting times", e))?;
            }
            T::Directory => {
                self.drain(entry, raw, s)?;
                self.create_dir(dirfd, name, &meta, s)?;
            }
            T::Symlink => {
                self.drain(entry, raw, s)?;
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid(s, "symlink without a target"))?;
                let target = CString::new(target.into_owned())
                    .map_err(|_| invalid(s, "symlink target contains a NUL byte"))?;
                self.create(dirfd, name, |d, n| sys::symlinkat(&target, d, n))
                    .map_err(|e| io_err(s, "creating symlink", e))?;
                self.special_attrs(dirfd, name, &meta, false, s)?;
            }
            T::Link => {
                self.drain(entry, raw, s)?;
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid(s, "hardlink without a target"))?;
                if let Err(reason) = path::normalize(&target, &mut s.other) {
                    return Err(invalid(s, reason));
                }
                self.hardlink(dirfd, s)?;
            }
            T::Char | T::Block | T::Fifo => {
                self.drain(entry, raw, s)?;
                let (fmt, dev) = match kind {
                    T::Fifo => (libc::S_IFIFO, 0),
                    _ => {
                        let header = entry.header();
                        let major = header.device_major().map_err(ApplyError::Tar)?.unwrap_or(0);
                        let minor = header.device_minor().map_err(ApplyError::Tar)?.unwrap_or(0);
                        let fmt = if kind == T::Char {
                            libc::S_IFCHR
                        } else {
                            libc::S_IFBLK
                        };
                        (fmt, libc::makedev(major, minor))
                    }
                };
                self.create(dirfd, name, |d, n| {
                    sys::mknodat(d, n, fmt | (meta.mode & 0o777), dev)
                })
                .map_err(|e| io_err(s, "creating node", e))?;
                self.special_attrs(dirfd, name, &meta, true, s)?;
            }
            _ => {}
        }
        drop(dir);
        self.mark_unpacked(&s.rel);
        Ok(())
    }

    /// Reads the rest of an entry's data. A GNU sparse entry's stored data is
    /// read from the stream itself, its holes never (see [`TarSide`]).
    fn drain<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &mut dyn Read,
        s: &Scratch,
    ) -> Result<(), ApplyError> {
        if entry.header().entry_type() == tar::EntryType::GNUSparse {
            return self.copy_sparse(entry, raw, s, |_, _| Ok(()));
        }
        loop {
            self.check_cancel()?;
            match entry.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stream_error(&self.state, e)),
            }
        }
    }

    /// Mode, ownership, times and xattrs of the entry (xattrs into `self.xattrs`).
    fn read_meta<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        s: &Scratch,
    ) -> Result<Meta, ApplyError> {
        let header = entry.header();
        let old = header.as_old();
        let mode = lenient(header.mode().map(u64::from), &old.mode)? as u32 & 0o7777;
        let uid = lenient(header.uid(), &old.uid)?;
        let gid = lenient(header.gid(), &old.gid)?;
        let mtime = lenient(header.mtime(), &old.mtime)?;
        // u32::MAX is "no change" to chown: not a valid id.
        let uid = libc::uid_t::try_from(uid)
            .ok()
            .filter(|&u| u != u32::MAX)
            .ok_or_else(|| invalid(s, "uid out of range"))?;
        let gid = libc::gid_t::try_from(gid)
            .ok()
            .filter(|&g| g != u32::MAX)
            .ok_or_else(|| invalid(s, "gid out of range"))?;
        let mut time = (i64::try_from(mtime).unwrap_or(i64::MAX), 0);

        self.xattrs.clear();
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(|e| stream_error(&self.state, e))?
        {
            for ext in exts {
                let ext = ext.map_err(ApplyError::Tar)?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    if let Some(t) = parse_pax_time(ext.value_bytes()) {
                        time = t;
                    }
                } else if key.starts_with(b"GNU.sparse.") {
                    // PAX-format (GNU 0.1/1.0) sparse files are not expanded by
                    // the tar reader: refuse rather than write the raw map.
                    return Err(invalid(s, "PAX-format sparse files are not supported"));
                } else if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    let name = CString::new(name)
                        .map_err(|_| invalid(s, "xattr name contains a NUL byte"))?;
                    self.xattrs.push((name, ext.value_bytes().to_vec()));
                }
            }
        }
        let ts = libc::timespec {
            tv_sec: time.0,
            tv_nsec: time.1,
        };
        Ok(Meta {
            mode,
            uid,
            gid,
            times: [ts, ts],
        })
    }

    /// Opens the parent directory of `names` inside the root. With `create`,
    /// missing directories are created (0755, owned by the caller); without,
    /// a missing parent gives `Ok(None)`.
    fn open_parent(&self, names: &SplitPath, create: bool) -> io::Result<Option<Dir>> {
        self.open_dir(names.parent_bytes(), names.parent(), create)
    }

    /// Opens the directory `rel` (`c` is the same path NUL-terminated) inside
    /// the root, as [`Self::open_parent`] does.
    fn open_dir(&self, rel: &[u8], c: &CStr, create: bool) -> io::Result<Option<Dir>> {
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
    fn create<T>(
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

    fn write_data<R: Read>(
        &mut self,
        entry: &mut R,
        mut file: &File,
        s: &Scratch,
    ) -> Result<u64, ApplyError> {
        let mut offset: u64 = 0;
        loop {
            self.check_cancel()?;
            let n = read_full(entry, &mut self.buf).map_err(|e| stream_error(&self.state, e))?;
            if n == 0 {
                break;
            }
            file.write_all(&self.buf[..n])
                .map_err(|e| io_err(s, "writing file data", e))?;
            offset += n as u64;
        }
        Ok(offset)
    }

    /// Writes a GNU sparse entry: its stored segments, read straight from the
    /// layer stream, at their offsets, then the apparent size. The tar
    /// reader's own view of the entry (zeros for every hole) is never read;
    /// it skips the stored bytes instead. Returns the apparent size.
    fn write_sparse_entry<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        raw: &mut dyn Read,
        file: &File,
        s: &Scratch,
    ) -> Result<u64, ApplyError> {
        self.copy_sparse(entry, raw, s, |chunk, offset| {
            write_sparse(file, chunk, offset).map_err(|e| io_err(s, "writing file data", e))
        })?;
        let size = entry.size();
        file.set_len(size)
            .map_err(|e| io_err(s, "setting sparse file size", e))?;
        Ok(size)
    }

    /// Reads a GNU sparse entry's stored data from the layer stream, handing
    /// each chunk to `sink` with its offset in the file, and lets the tar
    /// reader skip those bytes.
    fn copy_sparse<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        raw: &mut dyn Read,
        s: &Scratch,
        mut sink: impl FnMut(&[u8], u64) -> Result<(), ApplyError>,
    ) -> Result<(), ApplyError> {
        let (map, data_pos) = self.sparse_map(entry, s)?;
        // The tar reader must stand right at the stored data, as it does
        // after parsing the entry's headers.
        if self.state.tar_pos() != data_pos || self.state.skip_credit() != 0 {
            return Err(ApplyError::Tar(io::Error::other(format!(
                "entry {:?}: sparse data not where the headers end",
                s.display()
            ))));
        }
        let mut stored: u64 = 0;
        for &(offset, len) in &map {
            let mut done: u64 = 0;
            while done < len {
                self.check_cancel()?;
                let want = usize::try_from(len - done)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                let n = read_full(raw, &mut self.buf[..want])
                    .map_err(|e| stream_error(&self.state, e))?;
                if n == 0 {
                    return Err(ApplyError::Tar(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("entry {:?}: sparse data truncated", s.display()),
                    )));
                }
                sink(&self.buf[..n], offset + done)?;
                done += n as u64;
                stored += n as u64;
            }
        }
        self.state.credit(stored);
        Ok(())
    }

    /// The data segments (offset, length) of a GNU sparse entry, and the
    /// archive offset its stored data starts at: the map is in the header and
    /// in the extension headers after it, which the tar reader has parsed and
    /// checked (ascending, ending at the apparent size, adding up to the
    /// stored size) but does not expose.
    fn sparse_map<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        s: &Scratch,
    ) -> Result<(Vec<(u64, u64)>, u64), ApplyError> {
        fn push(map: &mut Vec<(u64, u64)>, h: &tar::GnuSparseHeader) -> Result<(), ApplyError> {
            if h.is_empty() {
                return Ok(());
            }
            let offset = h.offset().map_err(ApplyError::Tar)?;
            let len = h.length().map_err(ApplyError::Tar)?;
            if len > 0 {
                map.push((offset, len));
            }
            Ok(())
        }
        const BLOCK: u64 = 512;
        let gnu = entry
            .header()
            .as_gnu()
            .ok_or_else(|| invalid(s, "sparse entry without a GNU header"))?;
        let mut map = Vec::new();
        for h in &gnu.sparse {
            push(&mut map, h)?;
        }
        let mut pos = entry.raw_header_position().saturating_add(BLOCK);
        let mut extended = gnu.is_extended();
        while extended {
            let block = self
                .state
                .captured(pos, pos.saturating_add(BLOCK))
                .ok_or_else(|| invalid(s, "sparse map extension header not found"))?;
            let mut ext = tar::GnuExtSparseHeader::new();
            ext.as_mut_bytes().copy_from_slice(&block);
            for h in &ext.sparse {
                push(&mut map, h)?;
            }
            extended = ext.is_extended();
            pos = pos.saturating_add(BLOCK);
        }
        Ok((map, pos))
    }

    fn create_dir(
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

    fn hardlink(&mut self, dir: BorrowedFd<'_>, s: &mut Scratch) -> Result<(), ApplyError> {
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

    /// Ownership, xattrs, mode (unless a symlink) and times of a symlink,
    /// fifo or device node, all without following the final component.
    fn special_attrs(
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

    fn set_xattrs(&mut self, target: XattrTarget<'_>, s: &Scratch) -> Result<(), ApplyError> {
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

    /// `.wh.NAME`: remove NAME from the lower layers.
    fn whiteout(&mut self, s: &mut Scratch, meta: &Meta) -> Result<(), ApplyError> {
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
    fn opaque(&mut self, s: &Scratch) -> Result<(), ApplyError> {
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

    fn mark_unpacked(&mut self, rel: &[u8]) {
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
    fn finish_dirs(&mut self) -> Result<(), ApplyError> {
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

/// A numeric header field that failed to parse but is blank (all NULs or
/// spaces) reads as 0, as Go's archive/tar has it.
fn lenient(value: io::Result<u64>, raw: &[u8]) -> Result<u64, ApplyError> {
    match value {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        Err(e) => Err(ApplyError::Tar(e)),
    }
}

fn is_whiteout_name(rel: &[u8]) -> bool {
    path::split(rel).1.starts_with(WHITEOUT_PREFIX)
}

fn io_err(s: &Scratch, op: &'static str, source: io::Error) -> ApplyError {
    ApplyError::Io {
        path: s.display(),
        op,
        source,
    }
}

fn invalid(s: &Scratch, reason: &str) -> ApplyError {
    ApplyError::InvalidEntry {
        path: s.display(),
        reason: reason.to_string(),
    }
}
