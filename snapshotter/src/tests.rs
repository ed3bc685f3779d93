//! One test suite, run against both backends on real mounts (tests run as
//! root). Every test checks that nothing is left mounted under its temp dir,
//! and a guard lazily unmounts leftovers even when an assertion fails.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::MntFlags;

use crate::fsutil::mounts_under;
use crate::{
    mount_all, unmount, Backend, Error, Info, Kind, Labels, Mount, NativeSnapshotter,
    OverlaySnapshotter, Result, Snapshotter,
};

type Open<S> = fn(&Path) -> Result<S>;

/// A temp dir whose drop first detaches every mount beneath it, deepest
/// first, so a failed test never leaves mounts (or undeletable dirs) behind.
struct Env {
    dir: tempfile::TempDir,
    next: std::cell::Cell<u32>,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("snaptest-")
                .tempdir()
                .unwrap(),
            next: std::cell::Cell::new(0),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A fresh, empty mount point.
    fn target(&self) -> PathBuf {
        let n = self.next.get();
        self.next.set(n + 1);
        let p = self.dir.path().join(format!("mnt{n}"));
        fs::create_dir(&p).unwrap();
        p
    }

    /// Mount `mounts` on a fresh target.
    fn mount(&self, mounts: &[Mount]) -> PathBuf {
        let t = self.target();
        mount_all(mounts, &t).unwrap();
        t
    }

    fn assert_no_mounts(&self) {
        let left = mounts_under(self.dir.path()).unwrap();
        assert!(left.is_empty(), "mounts left behind: {left:?}");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(mut mps) = mounts_under(self.dir.path()) {
            mps.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for mp in mps {
                let _ = nix::mount::umount2(&mp, MntFlags::MNT_DETACH);
            }
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Prepare `key` on `parent`, write `files` into its upper dir, commit as
/// `name`.
fn layer<S: Snapshotter>(s: &S, name: &str, parent: Option<&str>, files: &[(&str, &str)]) {
    let key = format!("extract-{name}");
    s.prepare(&key, parent, Labels::new()).unwrap();
    let upper = s.upper_dir(&key).unwrap();
    for (path, content) in files {
        let p = upper.join(path);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(p, content).unwrap();
    }
    s.commit(name, &key, Labels::new()).unwrap();
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn snapshot_dirs(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(env.root().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn chain_three_levels<S: Snapshotter>(open: Open<S>) {
    let env = Env::new();
    let s = open(&env.root()).unwrap();
    layer(&s, "l1", None, &[("etc/one", "1"), ("shared", "from l1")]);
    layer(&s, "l2", Some("l1"), &[("two", "2")]);
    layer(
        &s,
        "l3",
        Some("l2"),
        &[("three", "3"), ("shared", "from l3")],
    );

    let l3 = s.stat("l3").unwrap();
    assert_eq!(l3.kind, Kind::Committed);
    assert_eq!(l3.parent.as_deref(), Some("l2"));
    assert!(s.stat("extract-l3").unwrap_err().is_not_found());

    let mounts = s.prepare("ctr", Some("l3"), Labels::new()).unwrap();
    assert_eq!(mounts, s.mounts("ctr").unwrap());
    if s.backend() == Backend::Overlay {
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].kind, "overlay");
        let lower = mounts[0]
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .unwrap();
        assert_eq!(lower.split(':').count(), 3);
        // Nearest parent first: the first lowerdir holds l3's files.
        let first = Path::new(lower.split(':').next().unwrap());
        assert!(first.join("three").exists());
    } else {
        assert_eq!(mounts[0].kind, "bind");
    }

    let t = env.mount(&mounts);
    assert_eq!(read(&t.join("etc/one")), "1");
    assert_eq!(read(&t.join("two")), "2");
    assert_eq!(read(&t.join("three")), "3");
    assert_eq!(read(&t.join("shared")), "from l3");
    fs::write(t.join("written"), "by container").unwrap();
    unmount(&t).unwrap();
    let upper = s.upper_dir("ctr").unwrap();
    assert_eq!(read(&upper.join("written")), "by container");

    // The container's changes can be committed and built upon.
    s.commit("l4", "ctr", Labels::new()).unwrap();
    let t = env.mount(&s.view("v4", Some("l4"), Labels::new()).unwrap());
    assert_eq!(read(&t.join("written")), "by container");
    assert_eq!(read(&t.join("etc/one")), "1");
    unmount(&t).unwrap();
    env.assert_no_mounts();
}

fn views<S: Snapshotter>(open: Open<S>) {
    let env = Env::new();
    let s = open(&env.root()).unwrap();
    layer(&s, "l1", None, &[("one", "1")]);
    layer(&s, "l2", Some("l1"), &[("two", "2")]);

    // Empty view.
    let m = s.view("v0", None, Labels::new()).unwrap();
    assert_eq!(m[0].kind, "bind");
    let t = env.mount(&m);
    assert_eq!(fs::read_dir(&t).unwrap().count(), 0);
    let err = fs::write(t.join("x"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    unmount(&t).unwrap();

    // One parent.
    let m = s.view("v1", Some("l1"), Labels::new()).unwrap();
    assert_eq!(m[0].kind, "bind");
    assert!(m[0].options.contains(&"ro".to_string()));
    let t = env.mount(&m);
    assert_eq!(read(&t.join("one")), "1");
    assert!(!t.join("two").exists());
    assert_eq!(
        fs::write(t.join("x"), "x").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    unmount(&t).unwrap();

    // Several parents.
    let m = s.view("v2", Some("l2"), Labels::new()).unwrap();
    if s.backend() == Backend::Overlay {
        assert_eq!(m[0].kind, "overlay");
        assert!(!m[0].options.iter().any(|o| o.starts_with("upperdir=")));
    }
    let t = env.mount(&m);
    assert_eq!(read(&t.join("one")), "1");
    assert_eq!(read(&t.join("two")), "2");
    assert_eq!(
        fs::write(t.join("x"), "x").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    unmount(&t).unwrap();

    assert_eq!(s.stat("v2").unwrap().kind, Kind::View);
    assert!(matches!(
        s.upper_dir("v2"),
        Err(Error::FailedPrecondition { .. })
    ));
    assert!(matches!(
        s.commit("c", "v2", Labels::new()),
        Err(Error::FailedPrecondition { .. })
    ));
    assert!(matches!(
        s.mounts("l2"),
        Err(Error::FailedPrecondition { .. })
    ));
    // Views hold their parent.
    assert!(matches!(
        s.remove("l2"),
        Err(Error::FailedPrecondition { .. })
    ));
    s.remove("v2").unwrap();
    s.remove("l2").unwrap();
    env.assert_no_mounts();
}

fn errors<S: Snapshotter>(open: Open<S>) {
    let env = Env::new();
    let s = open(&env.root()).unwrap();
    layer(&s, "base", None, &[("f", "x")]);
    s.prepare("a", Some("base"), Labels::new()).unwrap();

    let e = s.prepare("a", None, Labels::new()).unwrap_err();
    assert!(
        matches!(&e, Error::AlreadyExists { key } if key == "a"),
        "{e}"
    );
    assert!(e.to_string().contains("\"a\""), "{e}");
    // Keys are unique across kinds.
    assert!(matches!(
        s.view("base", None, Labels::new()),
        Err(Error::AlreadyExists { .. })
    ));
    let e = s.prepare("b", Some("nope"), Labels::new()).unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { key } if key == "nope"),
        "{e}"
    );
    let e = s.prepare("b", Some("a"), Labels::new()).unwrap_err();
    assert!(
        matches!(&e, Error::FailedPrecondition { key, .. } if key == "b"),
        "{e}"
    );
    assert!(e.to_string().contains("\"a\""), "{e}");
    assert!(matches!(
        s.prepare("", None, Labels::new()),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        s.commit("base", "a", Labels::new()),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.commit("x", "base", Labels::new()),
        Err(Error::FailedPrecondition { .. })
    ));
    assert!(matches!(
        s.commit("", "a", Labels::new()),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(s
        .commit("x", "missing", Labels::new())
        .unwrap_err()
        .is_not_found());
    assert!(s.remove("missing").unwrap_err().is_not_found());
    assert!(s.stat("missing").unwrap_err().is_not_found());
    assert!(s.usage("missing").unwrap_err().is_not_found());
    assert!(s.mounts("missing").unwrap_err().is_not_found());
    assert!(s.upper_dir("missing").unwrap_err().is_not_found());
    assert!(s
        .update_labels("missing", Labels::new())
        .unwrap_err()
        .is_not_found());
    // Failed creates leave no directories behind.
    let dirs = snapshot_dirs(&env);
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    // An empty parent means no parent.
    s.prepare("c", Some(""), Labels::new()).unwrap();
    assert_eq!(s.stat("c").unwrap().parent, None);
    env.assert_no_mounts();
}

fn remove_and_recreate<S: Snapshotter>(open: Open<S>) {
    let env = Env::new();
    let s = open(&env.root()).unwrap();
    layer(&s, "base", None, &[("f", "x")]);
    s.prepare("child", Some("base"), Labels::new()).unwrap();
    let e = s.remove("base").unwrap_err();
    assert!(
        matches!(&e, Error::FailedPrecondition { key, .. } if key == "base"),
        "{e}"
    );
    assert!(s.stat("base").is_ok());

    let old_upper = s.upper_dir("child").unwrap();
    fs::write(old_upper.join("junk"), "x").unwrap();
    s.remove("child").unwrap();
    assert!(!old_upper.exists());
    assert!(s.stat("child").unwrap_err().is_not_found());

    // Same key again: a fresh, clean snapshot with a new id.
    s.prepare("child", Some("base"), Labels::new()).unwrap();
    let new_upper = s.upper_dir("child").unwrap();
    assert_ne!(old_upper, new_upper);
    assert!(!new_upper.join("junk").exists());
    let t = env.mount(&s.mounts("child").unwrap());
    assert_eq!(read(&t.join("f")), "x");
    assert!(!t.join("junk").exists());
    unmount(&t).unwrap();

    s.remove("child").unwrap();
    s.remove("base").unwrap();
    assert!(snapshot_dirs(&env).is_empty(), "{:?}", snapshot_dirs(&env));
    assert!(s.walk(&|_| true).unwrap().is_empty());
    env.assert_no_mounts();
}

fn usage<S: Snapshotter>(open: Open<S>) {
    let env = Env::new();
    let s = open(&env.root()).unwrap();
    s.prepare("a", None, Labels::new()).unwrap();
    let empty = s.usage("a").unwrap();
    assert_eq!(empty.inodes, 1, "{empty:?}");
    let upper = s.upper_dir("a").unwrap();
    let mib = 1024 * 1024;
    fs::write(upper.join("big"), vec![7u8; mib]).unwrap();
    fs::hard_link(upper.join("big"), upper.join("big-link")).unwrap();
    fs::create_dir(upper.join("d")).unwrap();
    for i in 0..3 {
        fs::write(upper.join("d").join(i.to_string()), "abc").unwrap();
    }
    let u = s.usage("a").unwrap();
    // root, big (linked twice, counted once), d, three files.
    assert_eq!(u.inodes, 6, "{u:?}");
    assert_eq!(u.size, mib as u64 + 9, "{u:?}");
    s.commit("c", "a", Labels::new()).unwrap();
    assert_eq!(s.usage("c").unwrap(), u);
    // Stored at commit: later changes (which are forbidden) do not count.
    env.assert_no_mounts();
}

fn label_updates<S: Snapshotter>(open: Open<S>) {
    let env = Env::new();
    let s = open(&env.root()).unwrap();
    s.prepare("a", None, labels(&[("k1", "v1")])).unwrap();
    let info = s.stat("a").unwrap();
    assert_eq!(info.labels, labels(&[("k1", "v1")]));
    assert_eq!(info.created, info.updated);
    let upd = s.update_labels("a", labels(&[("k2", "v2")])).unwrap();
    assert_eq!(upd.labels, labels(&[("k2", "v2")]));
    assert!(upd.updated >= info.updated);
    assert_eq!(upd.created, info.created);
    assert_eq!(s.stat("a").unwrap(), upd);
    // Commit replaces labels rather than inheriting them.
    s.commit("c", "a", labels(&[("layer", "sha256:x")]))
        .unwrap();
    assert_eq!(
        s.stat("c").unwrap().labels,
        labels(&[("layer", "sha256:x")])
    );
    let upd = s.update_labels("c", Labels::new()).unwrap();
    assert!(upd.labels.is_empty());
    env.assert_no_mounts();
}

fn walk_filter<S: Snapshotter>(open: Open<S>) {
    let env = Env::new();
    let s = open(&env.root()).unwrap();
    layer(&s, "l1", None, &[]);
    layer(&s, "l2", Some("l1"), &[]);
    s.prepare("a1", Some("l2"), labels(&[("app", "x")]))
        .unwrap();
    s.prepare("a2", None, Labels::new()).unwrap();
    s.view("v1", Some("l1"), labels(&[("app", "x")])).unwrap();

    let names = |f: &dyn Fn(&Info) -> bool| -> Vec<String> {
        s.walk(f).unwrap().into_iter().map(|i| i.name).collect()
    };
    assert_eq!(names(&|_| true), ["a1", "a2", "l1", "l2", "v1"]);
    assert_eq!(names(&|i| i.kind == Kind::Committed), ["l1", "l2"]);
    assert_eq!(names(&|i| i.kind == Kind::Active), ["a1", "a2"]);
    assert_eq!(
        names(&|i| i.labels.get("app").map(String::as_str) == Some("x")),
        ["a1", "v1"]
    );
    assert_eq!(names(&|i| i.parent.as_deref() == Some("l1")), ["l2", "v1"]);
    env.assert_no_mounts();
}

fn crash_recovery<S: Snapshotter>(open: Open<S>) {
    let env = Env::new();
    let root = env.root();
    let s = open(&root).unwrap();
    layer(&s, "base", None, &[("f", "base")]);
    s.prepare("a", Some("base"), Labels::new()).unwrap();
    s.prepare("b", None, Labels::new()).unwrap();
    layer(&s, "c", Some("base"), &[("g", "c")]);
    s.prepare("d", Some("c"), Labels::new()).unwrap();
    let d_dir = s.upper_dir("d").unwrap().parent().unwrap().to_path_buf();

    // Nothing to do on a healthy store.
    assert_eq!(s.cleanup().unwrap(), Default::default());

    let snaps = root.join("snapshots");
    // A create that died before publishing.
    fs::create_dir_all(snaps.join("new-x/fs/etc")).unwrap();
    fs::write(snaps.join("new-x/fs/etc/passwd"), "x").unwrap();
    // A remove that died before deleting.
    fs::create_dir_all(snaps.join("rm-77/fs")).unwrap();
    // A directory whose metadata never got written.
    fs::create_dir_all(snaps.join("9999/fs/usr")).unwrap();
    // Metadata whose directories are gone: "b", and "c" which takes its
    // child "d" with it.
    let b_dir = s.upper_dir("b").unwrap().parent().unwrap().to_path_buf();
    fs::remove_dir_all(&b_dir).unwrap();
    let c_dir = {
        // A committed snapshot has no upper dir; find it as the dir holding "g".
        let mut found = None;
        for e in fs::read_dir(&snaps).unwrap() {
            let p = e.unwrap().path();
            if p.join("fs/g").exists() {
                found = Some(p);
            }
        }
        found.unwrap()
    };
    fs::remove_dir_all(&c_dir).unwrap();

    // As on a daemon restart: reopen, then clean up.
    drop(s);
    let s = open(&root).unwrap();
    let report = s.cleanup().unwrap();
    assert_eq!(report.dropped_snapshots, ["b", "c", "d"]);
    let mut removed: Vec<String> = report
        .removed_dirs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    removed.sort();
    let d_name = d_dir.file_name().unwrap().to_string_lossy().into_owned();
    let mut want = vec!["9999".to_string(), d_name, "new-x".into(), "rm-77".into()];
    want.sort();
    assert_eq!(removed, want);
    for p in [
        snaps.join("new-x"),
        snaps.join("rm-77"),
        snaps.join("9999"),
        d_dir,
    ] {
        assert!(!p.exists(), "{} survived", p.display());
    }
    for k in ["b", "c", "d"] {
        assert!(s.stat(k).unwrap_err().is_not_found());
    }
    // Survivors still work, and the parent's child links were repaired.
    let t = env.mount(&s.mounts("a").unwrap());
    assert_eq!(read(&t.join("f")), "base");
    unmount(&t).unwrap();
    assert_eq!(s.cleanup().unwrap(), Default::default());
    s.remove("a").unwrap();
    s.remove("base").unwrap();
    assert!(snapshot_dirs(&env).is_empty());
    env.assert_no_mounts();
}

fn reopen_keeps_state<S: Snapshotter>(open: Open<S>) {
    let env = Env::new();
    let root = env.root();
    {
        let s = open(&root).unwrap();
        layer(&s, "base", None, &[("f", "base")]);
        s.prepare("a", Some("base"), labels(&[("k", "v")])).unwrap();
    }
    let s = open(&root).unwrap();
    assert_eq!(s.stat("a").unwrap().labels, labels(&[("k", "v")]));
    assert_eq!(s.stat("base").unwrap().kind, Kind::Committed);
    let t = env.mount(&s.mounts("a").unwrap());
    assert_eq!(read(&t.join("f")), "base");
    unmount(&t).unwrap();
    // Ids keep increasing after a reopen: no reuse of directories.
    s.prepare("b", None, Labels::new()).unwrap();
    assert_ne!(s.upper_dir("a").unwrap(), s.upper_dir("b").unwrap());
    env.assert_no_mounts();
}

fn long_chain<S: Snapshotter>(open: Open<S>) {
    const LAYERS: usize = 130;
    let env = Env::new();
    let s = open(&env.root()).unwrap();
    let mut parent: Option<String> = None;
    for i in 0..LAYERS {
        let name = format!("layer-{i}");
        let file = format!("file-{i}");
        let shared = format!("written by {i}");
        layer(
            &s,
            &name,
            parent.as_deref(),
            &[(&file, "x"), ("top", &shared)],
        );
        parent = Some(name);
    }
    let mounts = s.prepare("ctr", parent.as_deref(), Labels::new()).unwrap();
    if s.backend() == Backend::Overlay {
        let data_len = mounts[0].options.join(",").len();
        assert!(
            data_len > crate::mount::MOUNT_DATA_LIMIT,
            "chain too short to exercise lowerdir+: {data_len} bytes"
        );
    }
    let t = env.mount(&mounts);
    assert!(t.join("file-0").exists());
    assert!(t.join(format!("file-{}", LAYERS - 1)).exists());
    assert_eq!(read(&t.join("top")), format!("written by {}", LAYERS - 1));
    assert_eq!(
        fs::read_dir(&t).unwrap().count(),
        LAYERS + 1,
        "every layer's file is visible"
    );
    fs::write(t.join("new"), "y").unwrap();
    unmount(&t).unwrap();
    assert_eq!(read(&s.upper_dir("ctr").unwrap().join("new")), "y");

    // A view of the same chain (no upper dir) mounts too.
    let t = env.mount(&s.view("v", parent.as_deref(), Labels::new()).unwrap());
    assert!(t.join("file-0").exists());
    unmount(&t).unwrap();
    env.assert_no_mounts();
}

/// Owners, modes, special files, links, xattrs and times of a layer survive
/// into a child (the native backend copies them; overlay shows them).
fn metadata_preserved<S: Snapshotter>(open: Open<S>) {
    use std::os::unix::fs::symlink;
    let env = Env::new();
    let s = open(&env.root()).unwrap();
    s.prepare("x", None, Labels::new()).unwrap();
    let u = s.upper_dir("x").unwrap();
    fs::write(u.join("suid"), "#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(u.join("suid"), Some(1000), Some(1001)).unwrap();
    fs::set_permissions(u.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(u.join("priv")).unwrap();
    fs::set_permissions(u.join("priv"), fs::Permissions::from_mode(0o711)).unwrap();
    symlink("../suid", u.join("priv/link")).unwrap();
    std::os::unix::fs::lchown(u.join("priv/link"), Some(5), Some(6)).unwrap();
    fs::write(u.join("a"), "linked").unwrap();
    fs::hard_link(u.join("a"), u.join("priv/b")).unwrap();
    nix::sys::stat::mknod(
        &u.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    nix::unistd::mkfifo(
        &u.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let c = std::ffi::CString::new(u.join("a").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated path and name; value buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.berth".as_ptr(),
            b"yes".as_ptr().cast(),
            3,
            0,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let old = nix::sys::time::TimeSpec::new(1_000_000, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &u.join("priv"),
        &old,
        &old,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    s.commit("base", "x", Labels::new()).unwrap();

    let t = env.mount(&s.prepare("child", Some("base"), Labels::new()).unwrap());
    let md = fs::metadata(t.join("suid")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1000, 1001, 0o4755)
    );
    let md = fs::metadata(t.join("priv")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o711);
    assert_eq!(md.mtime(), 1_000_000);
    let md = fs::symlink_metadata(t.join("priv/link")).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!((md.uid(), md.gid()), (5, 6));
    assert_eq!(
        fs::read_link(t.join("priv/link")).unwrap(),
        Path::new("../suid")
    );
    let (a, b) = (
        fs::metadata(t.join("a")).unwrap(),
        fs::metadata(t.join("priv/b")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "hard link preserved");
    assert_eq!(a.nlink(), 2);
    let md = fs::metadata(t.join("null")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), nix::sys::stat::makedev(1, 3));
    assert!(fs::metadata(t.join("fifo")).unwrap().file_type().is_fifo());
    let c = std::ffi::CString::new(t.join("a").into_os_string().into_encoded_bytes()).unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: NUL-terminated path and name; buf is writable for its length.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"user.berth".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 3, "{}", std::io::Error::last_os_error());
    assert_eq!(&buf[..3], b"yes");
    unmount(&t).unwrap();
    env.assert_no_mounts();
}

fn concurrent_prepares<S: Snapshotter>(open: Open<S>) {
    let env = Env::new();
    let s = open(&env.root()).unwrap();
    layer(&s, "base", None, &[("f", "x")]);
    std::thread::scope(|sc| {
        for i in 0..8 {
            let s = &s;
            sc.spawn(move || {
                s.prepare(&format!("c{i}"), Some("base"), BTreeMap::new())
                    .unwrap();
            });
        }
        // Racing cleanup must spare creates under way.
        sc.spawn(|| s.cleanup().unwrap());
    });
    assert_eq!(s.walk(&|i| i.kind == Kind::Active).unwrap().len(), 8);
    assert!(s.remove("base").is_err());
    for i in 0..8 {
        s.remove(&format!("c{i}")).unwrap();
    }
    s.remove("base").unwrap();
    assert!(snapshot_dirs(&env).is_empty());
    env.assert_no_mounts();
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod overlay {
            $( #[test] fn $name() { super::$name(crate::OverlaySnapshotter::open) } )*
        }
        mod native {
            $( #[test] fn $name() { super::$name(crate::NativeSnapshotter::open) } )*
        }
    };
}

suite!(
    chain_three_levels,
    views,
    errors,
    remove_and_recreate,
    usage,
    label_updates,
    walk_filter,
    crash_recovery,
    reopen_keeps_state,
    long_chain,
    metadata_preserved,
    concurrent_prepares,
);

#[test]
fn overlay_probe() {
    let env = Env::new();
    assert!(crate::overlay_supported(&env.root()));
    assert_eq!(
        fs::read_dir(env.root()).unwrap().count(),
        0,
        "probe cleaned up"
    );
    env.assert_no_mounts();
}

#[test]
fn open_by_backend() {
    let env = Env::new();
    for (name, b) in [("overlayfs", Backend::Overlay), ("native", Backend::Native)] {
        let parsed: Backend = name.parse().unwrap();
        assert_eq!(parsed, b);
        assert_eq!(b.to_string(), name);
        let s = crate::open(&env.root().join(name), b).unwrap();
        assert_eq!(s.backend(), b);
    }
    assert!("zfs".parse::<Backend>().is_err());
    let e = OverlaySnapshotter::open(&env.dir.path().join("a:b"))
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(NativeSnapshotter::open(&env.dir.path().join("a:b")).is_ok());
}

/// The mount(2) fallback for kernels without `lowerdir+` works while the
/// options fit in a page, and refuses cleanly when they do not.
#[test]
fn overlay_classic_fallback() {
    let env = Env::new();
    let s = OverlaySnapshotter::open(&env.root()).unwrap();
    layer(&s, "l1", None, &[("one", "1")]);
    layer(&s, "l2", Some("l1"), &[("two", "2")]);
    let m = s.prepare("a", Some("l2"), Labels::new()).unwrap();
    let t = env.target();
    crate::mount::mount_overlay_classic(&m[0], &t).unwrap();
    assert_eq!(read(&t.join("one")), "1");
    assert_eq!(read(&t.join("two")), "2");
    unmount(&t).unwrap();

    let mut long = m[0].clone();
    let lower = long.options.pop().unwrap();
    let extra = format!(":{}", lower.trim_start_matches("lowerdir=")).repeat(200);
    long.options.push(format!("{lower}{extra}"));
    let e = crate::mount::mount_overlay_classic(&long, &t).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    env.assert_no_mounts();
}

#[test]
fn unmount_is_idempotent_and_peels_stacks() {
    let env = Env::new();
    let src = env.target();
    fs::write(src.join("f"), "x").unwrap();
    let t = env.target();
    unmount(&t).unwrap();
    unmount(&env.dir.path().join("missing")).unwrap();
    Mount::bind(&src, true).mount(&t).unwrap();
    Mount::bind(&src, false).mount(&t).unwrap();
    assert_eq!(mounts_under(&t).unwrap().len(), 2);
    // Busy: an open directory handle on the mount forces the lazy path.
    let busy = fs::File::open(t.join("f")).unwrap();
    unmount(&t).unwrap();
    drop(busy);
    env.assert_no_mounts();
}

/// A failed overlay mount names the offending option and the kernel's
/// reason, and leaves nothing mounted.
#[test]
fn overlay_mount_error_is_descriptive() {
    let env = Env::new();
    let t = env.target();
    let missing = env.dir.path().join("missing-layer");
    let lower = env.target();
    let m = Mount {
        kind: "overlay".to_string(),
        source: "overlay".to_string(),
        options: vec![format!(
            "lowerdir={}:{}",
            lower.display(),
            missing.display()
        )],
    };
    let e = m.mount(&t).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Io { .. }), "{msg}");
    assert!(msg.contains("missing-layer"), "{msg}");
    let bad = Mount {
        options: vec![
            format!("lowerdir={}", lower.display()),
            "bogus=1".to_string(),
        ],
        ..m
    };
    let msg = bad.mount(&t).unwrap_err().to_string();
    assert!(msg.contains("bogus"), "{msg}");
    env.assert_no_mounts();
}
