//! Layer tar application (snapshotter `apply_layer`) into a fresh root, and
//! proof that nothing outside that root was created, changed or linked.
//!
//! Input: a mode byte (see `seeds::LAYER_*`: whiteout mode, compression,
//! ownership, devices), then the layer blob.
//!
//! Layout, under a private directory in /dev/shm (tmpfs) or /tmp:
//! ```text
//! <base>/canary                 file
//! <base>/run/canary-dir/file    file
//! <base>/run/outside/canary     file  (a hardlink target an escape would use)
//! <base>/run/root/              the layer's root
//! ```
//! After each input: `<base>` and `<base>/run` hold exactly those names, the
//! canaries have their content, mode, owner, times and a link count of 1;
//! every inode under the root with more than one link has all its links
//! inside the root; with devices refused there is no device node but
//! overlay whiteouts (0:0). Then `<base>/run` is removed (without following
//! symlinks) for the next input.
#![no_main]

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use berth_fuzz::seeds;
use libfuzzer_sys::fuzz_target;
use snapshotter::apply::{apply_layer, ApplyOptions, Compression, WhiteoutMode};

struct Base {
    _dir: tempfile::TempDir,
    base: PathBuf,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let parent = if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        };
        let dir = tempfile::Builder::new()
            .prefix("berth-fuzz-layer-")
            .tempdir_in(parent)
            .expect("temp dir");
        let base = dir.path().to_path_buf();
        fs::write(base.join("canary"), b"canary").expect("canary");
        Base { _dir: dir, base }
    })
}

#[derive(Debug, PartialEq, Eq)]
struct Canary {
    content: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    nlink: u64,
}

fn canary(p: &Path) -> Canary {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("canary {p:?} is gone: {e}"));
    assert!(md.file_type().is_file(), "canary {p:?} is no longer a file");
    Canary {
        content: fs::read(p).expect("read canary"),
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        nlink: md.nlink(),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Every inode under `root` (not following symlinks): (dev, ino) -> (links
/// seen, st_nlink), plus the device nodes found.
fn walk(root: &Path, links: &mut HashMap<(u64, u64), (u64, u64)>, devices: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        let ft = md.file_type();
        if ft.is_dir() {
            walk(&p, links, devices);
            continue;
        }
        if ft.is_char_device() || ft.is_block_device() {
            let whiteout = ft.is_char_device() && md.rdev() == 0;
            if !whiteout {
                devices.push(p.clone());
            }
        }
        let ent = links.entry((md.dev(), md.ino())).or_insert((0, md.nlink()));
        ent.0 += 1;
    }
}

fn check(base: &Path, run: &Path, root: &Path, before: &[(PathBuf, Canary)], opts: &ApplyOptions) {
    assert_eq!(
        names(base),
        ["canary", "run"],
        "something appeared next to the run dir"
    );
    assert_eq!(
        names(run),
        ["canary-dir", "outside", "root"],
        "something appeared next to the root"
    );
    assert_eq!(names(&run.join("outside")), ["canary"]);
    assert_eq!(names(&run.join("canary-dir")), ["file"]);
    for (p, c) in before {
        assert_eq!(&canary(p), c, "canary {p:?} changed");
    }
    let mut links = HashMap::new();
    let mut devices = Vec::new();
    walk(root, &mut links, &mut devices);
    for ((dev, ino), (seen, nlink)) in links {
        assert_eq!(
            seen, nlink,
            "inode {dev}:{ino} under the root has {nlink} links but only {seen} inside it"
        );
    }
    if !opts.allow_devices {
        assert!(
            devices.is_empty(),
            "devices created though refused: {devices:?}"
        );
    }
}

fn setup(run: &Path) -> Vec<(PathBuf, Canary)> {
    fs::create_dir(run).expect("run dir");
    fs::create_dir(run.join("root")).expect("root");
    fs::create_dir(run.join("outside")).expect("outside");
    fs::create_dir(run.join("canary-dir")).expect("canary-dir");
    fs::write(run.join("outside/canary"), b"outside canary").expect("canary");
    fs::write(run.join("canary-dir/file"), b"canary file").expect("canary");
    [
        run.parent().expect("base").join("canary"),
        run.join("outside/canary"),
        run.join("canary-dir/file"),
    ]
    .into_iter()
    .map(|p| {
        let c = canary(&p);
        (p, c)
    })
    .collect()
}

fuzz_target!(
    init: berth_fuzz::seeds_init("layer_apply", seeds::layer_apply),
    |data: &[u8]| {
        let Some((&mode, body)) = data.split_first() else {
            return;
        };
        let b = base();
        let run = b.base.join("run");
        if run.exists() {
            fs::remove_dir_all(&run).expect("cleaning the last run");
        }
        let before = setup(&run);
        let root = run.join("root");

        let opts = ApplyOptions {
            whiteouts: if mode & seeds::LAYER_OVERLAY != 0 {
                WhiteoutMode::Overlay
            } else {
                WhiteoutMode::Remove
            },
            allow_devices: mode & seeds::LAYER_DEVICES != 0,
            max_file_size: 64 << 20,
            max_total_size: 256 << 20,
            max_entries: 100_000,
            preserve_ownership: mode & seeds::LAYER_OWNERS != 0,
        };
        let wrapped;
        let (blob, compression): (&[u8], Compression) = match mode & (3 << 1) {
            seeds::LAYER_GZIP_RAW => (body, Compression::Gzip),
            seeds::LAYER_GZIP_WRAP => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(body).expect("gzip");
                wrapped = e.finish().expect("gzip");
                (&wrapped, Compression::Gzip)
            }
            seeds::LAYER_ZSTD_RAW => (body, Compression::Zstd),
            _ => (body, Compression::None),
        };
        let never = std::sync::atomic::AtomicBool::new(false);
        let res = apply_layer(&root, blob, compression, &opts, &never);
        if let Ok(report) = &res {
            assert!(report.diff_id.starts_with("sha256:") && report.diff_id.len() == 71);
            if compression == Compression::None {
                assert_eq!(report.bytes, blob.len() as u64, "diff covers the whole stream");
            }
        }
        check(&b.base, &run, &root, &before, &opts);
        fs::remove_dir_all(&run).expect("cleaning up");
    }
);
