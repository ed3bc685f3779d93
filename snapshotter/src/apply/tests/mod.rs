//! Tests for layer application. Malicious archives are built by hand (raw
//! header bytes), since the `tar` crate's builder refuses `..` and absolute
//! names. "Outside" is a canary directory next to the root, never a real host
//! path such as /etc.

use super::*;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

mod entries;
mod limits;
mod security;
mod streams;

const MTIME: u64 = 1_600_000_000;

/// A cancellation flag that is never set.
static NEVER: AtomicBool = AtomicBool::new(false);

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("file"), b"canary").unwrap();
        Env {
            _tmp: tmp,
            root,
            outside,
        }
    }

    /// The canary directory holds exactly its one untouched file.
    fn assert_outside_untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsStr::new("file").to_owned()]);
        assert_eq!(fs::read(self.outside.join("file")).unwrap(), b"canary");
        let md = fs::metadata(self.outside.join("file")).unwrap();
        assert_eq!(md.nlink(), 1, "canary was hardlinked");
        assert!(
            !self.outside.parent().unwrap().join("x").exists(),
            "file created next to the root"
        );
    }

    fn apply(&self, tar: &[u8], opts: &ApplyOptions) -> Result<ApplyReport, ApplyError> {
        apply_layer(&self.root, tar, Compression::None, opts, &NEVER)
    }
}

fn remove_opts() -> ApplyOptions {
    ApplyOptions::default()
}

fn overlay_opts() -> ApplyOptions {
    ApplyOptions {
        whiteouts: WhiteoutMode::Overlay,
        ..ApplyOptions::default()
    }
}

/// Builds tar streams entry by entry with raw names.
struct TarBuf {
    b: tar::Builder<Vec<u8>>,
}

impl TarBuf {
    fn new() -> Self {
        TarBuf {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(name: &[u8], kind: EntryType, size: u64) -> Header {
        let mut h = Header::new_gnu();
        assert!(name.len() <= 100, "use pax_path for long names");
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h
    }

    fn raw(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn with(
        &mut self,
        name: &str,
        kind: EntryType,
        data: &[u8],
        f: impl FnOnce(&mut Header),
    ) -> &mut Self {
        let mut h = Self::header(name.as_bytes(), kind, data.len() as u64);
        f(&mut h);
        self.raw(h, data)
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.with(name, EntryType::Regular, data, |_| {})
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.with(name, EntryType::Directory, b"", |_| {})
    }

    fn link(&mut self, kind: EntryType, name: &str, target: &str) -> &mut Self {
        self.with(name, kind, b"", |h| {
            h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        })
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(EntryType::Symlink, name, target)
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(EntryType::Link, name, target)
    }

    /// A PAX extended header applying to the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let body_len = 1 + k.len() + 1 + v.len() + 1; // ' ' k '=' v '\n'
            let mut len = body_len + 1;
            while len.to_string().len() + body_len != len {
                len = len.to_string().len() + body_len;
            }
            data.extend_from_slice(len.to_string().as_bytes());
            data.push(b' ');
            data.extend_from_slice(k.as_bytes());
            data.push(b'=');
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let h = Self::header(b"PaxHeaders/x", EntryType::XHeader, data.len() as u64);
        self.raw(h, &data)
    }

    /// A GNU sparse entry in the old GNU format GNU tar's `--sparse` writes:
    /// `segments` are (offset, data) in file order; past the header's four,
    /// they go into extension headers of 21 each. Every segment but the last
    /// holds a multiple of 512 bytes (as the format has it).
    fn sparse(&mut self, name: &str, real_size: u64, segments: &[(u64, &[u8])]) -> &mut Self {
        // As GNU tar does, an empty segment at the end marks the real size.
        let mut segments = segments.to_vec();
        if segments
            .last()
            .is_none_or(|(off, d)| off + d.len() as u64 != real_size)
        {
            segments.push((real_size, &[]));
        }
        let stored: usize = segments.iter().map(|(_, d)| d.len()).sum();
        let mut h = Self::header(name.as_bytes(), EntryType::GNUSparse, stored as u64);
        {
            let gnu = h.as_gnu_mut().unwrap();
            for (slot, (off, data)) in gnu.sparse.iter_mut().zip(&segments) {
                slot.set_offset(*off);
                slot.set_length(data.len() as u64);
            }
            gnu.set_real_size(real_size);
            gnu.isextended[0] = u8::from(segments.len() > 4);
        }
        h.set_cksum();
        let out = self.b.get_mut();
        out.extend_from_slice(h.as_bytes());
        let ext: Vec<_> = segments.iter().skip(4).collect();
        let blocks: Vec<_> = ext.chunks(21).collect();
        for (i, chunk) in blocks.iter().enumerate() {
            let mut e = tar::GnuExtSparseHeader::new();
            for (slot, (off, data)) in e.sparse.iter_mut().zip(chunk.iter()) {
                slot.set_offset(*off);
                slot.set_length(data.len() as u64);
            }
            e.set_is_extended(i + 1 < blocks.len());
            out.extend_from_slice(e.as_bytes());
        }
        for (_, data) in &segments {
            out.extend_from_slice(data);
        }
        out.resize(out.len().next_multiple_of(512), 0);
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        self.b.finish().unwrap();
        self.b.get_ref().clone()
    }
}

fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        None
    } else {
        buf.truncate(r as usize);
        Some(buf)
    }
}

fn errno_of(err: &ApplyError) -> Option<i32> {
    match err {
        ApplyError::Io { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

fn lower_tree(root: &Path) {
    fs::create_dir_all(root.join("x/sub")).unwrap();
    fs::write(root.join("x/old"), b"old").unwrap();
    fs::write(root.join("x/sub/deep"), b"deep").unwrap();
    fs::write(root.join("y"), b"y").unwrap();
    fs::create_dir_all(root.join("z/w/deeper")).unwrap();
    fs::write(root.join("z/w/deeper/f"), b"f").unwrap();
    fs::write(root.join("z/keep"), b"k").unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}
