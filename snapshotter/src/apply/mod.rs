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

mod attrs;
mod data;
mod error;
mod headers;
mod path;
mod stream;
mod sys;
#[cfg(test)]
mod tests;
mod tree;
mod whiteout;

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{debug, warn};

pub use error::ApplyError;
pub use stream::Compression;

use attrs::XattrTarget;
use path::SplitPath;
use stream::{Fault, LayerStream, Shared, StreamState, TarSide};
use tree::Dir;
use whiteout::is_whiteout_name;

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
