//! What each kind of entry becomes: files, directories, links, special files,
//! attributes and xattrs, whiteouts in both modes, long names, sparse files.

use super::*;

#[test]
fn files_dirs_symlinks_with_attributes() {
    let env = Env::new();
    let tar = TarBuf::new()
        .with("d/", EntryType::Directory, b"", |h| {
            h.set_mode(0o750);
            h.set_uid(1000);
            h.set_gid(2000);
        })
        .with("d/f", EntryType::Regular, b"hello", |h| {
            h.set_mode(0o640);
            h.set_uid(1001);
            h.set_gid(1002);
            h.set_mtime(1_234_567_890);
        })
        .link(EntryType::Symlink, "d/l", "f")
        .finish();
    let mut h_sym = TarBuf::header(b"d/l2", EntryType::Symlink, 0);
    h_sym.as_old_mut().linkname[..4].copy_from_slice(b"/nil");
    h_sym.set_uid(1003);
    h_sym.set_gid(1004);
    h_sym.set_mtime(1_000_000_000);
    let mut t2 = TarBuf::new();
    t2.raw(h_sym, b"");
    let tar2 = t2.finish();
    let report = env.apply(&tar, &remove_opts()).unwrap();
    assert_eq!(report.entries, 3);
    env.apply(&tar2, &remove_opts()).unwrap();

    let d = fs::symlink_metadata(env.root.join("d")).unwrap();
    assert!(d.is_dir());
    assert_eq!(d.mode() & 0o7777, 0o750);
    assert_eq!((d.uid(), d.gid()), (1000, 2000));
    let f = fs::symlink_metadata(env.root.join("d/f")).unwrap();
    assert_eq!(fs::read(env.root.join("d/f")).unwrap(), b"hello");
    assert_eq!(f.mode() & 0o7777, 0o640);
    assert_eq!((f.uid(), f.gid()), (1001, 1002));
    assert_eq!(f.mtime(), 1_234_567_890);
    assert_eq!(fs::read_link(env.root.join("d/l")).unwrap(), Path::new("f"));
    let l2 = fs::symlink_metadata(env.root.join("d/l2")).unwrap();
    assert!(l2.file_type().is_symlink());
    assert_eq!((l2.uid(), l2.gid()), (1003, 1004));
    assert_eq!(l2.mtime(), 1_000_000_000);
}

#[test]
fn setuid_setgid_sticky_survive_chown() {
    let env = Env::new();
    let tar = TarBuf::new()
        .with("suid", EntryType::Regular, b"#!", |h| {
            h.set_mode(0o4755);
            h.set_uid(1000);
            h.set_gid(1000);
        })
        .with("sgid", EntryType::Regular, b"#!", |h| {
            h.set_mode(0o2755);
            h.set_uid(1000);
            h.set_gid(50);
        })
        .with("sgid-dir/", EntryType::Directory, b"", |h| {
            h.set_mode(0o2775);
            h.set_gid(50);
        })
        .with("tmp/", EntryType::Directory, b"", |h| h.set_mode(0o1777))
        .finish();
    env.apply(&tar, &remove_opts()).unwrap();
    let mode = |p: &str| fs::symlink_metadata(env.root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o4755);
    assert_eq!(mode("sgid"), 0o2755);
    assert_eq!(mode("sgid-dir"), 0o2775);
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(fs::metadata(env.root.join("suid")).unwrap().uid(), 1000);
}

#[test]
fn mtimes_are_set_after_children() {
    let env = Env::new();
    let tar = TarBuf::new()
        .with("d/", EntryType::Directory, b"", |h| {
            h.set_mtime(1_000_000_000)
        })
        .with("d/sub/", EntryType::Directory, b"", |h| {
            h.set_mtime(1_100_000_000)
        })
        .file("d/sub/f", b"x")
        .file("d/g", b"y")
        .pax(&[("mtime", b"1300000000.25")])
        .file("d/frac", b"z")
        .finish();
    env.apply(&tar, &remove_opts()).unwrap();
    let md = |p: &str| fs::symlink_metadata(env.root.join(p)).unwrap();
    assert_eq!(md("d").mtime(), 1_000_000_000);
    assert_eq!(md("d/sub").mtime(), 1_100_000_000);
    assert_eq!(md("d/g").mtime(), MTIME as i64);
    assert_eq!(md("d/frac").mtime(), 1_300_000_000);
    assert_eq!(md("d/frac").mtime_nsec(), 250_000_000);
}

#[test]
fn xattrs_round_trip() {
    let env = Env::new();
    // VFS_CAP_REVISION_2: cap_net_bind_service permitted + effective.
    let mut cap = vec![0u8; 20];
    cap[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    cap[4..8].copy_from_slice(&(1u32 << 10).to_le_bytes());
    let tar = TarBuf::new()
        .pax(&[
            ("SCHILY.xattr.security.capability", &cap),
            ("SCHILY.xattr.user.note", b"hi\0there"),
        ])
        .with("bin/ping", EntryType::Regular, b"\x7fELF", |h| {
            h.set_uid(1000);
            h.set_mode(0o4755)
        })
        .pax(&[("SCHILY.xattr.user.dir", b"d")])
        .dir("d/")
        .pax(&[("SCHILY.xattr.user.fifo", b"f")])
        .with("fifo", EntryType::Fifo, b"", |_| {})
        .finish();
    let report = env.apply(&tar, &remove_opts()).unwrap();
    let ping = env.root.join("bin/ping");
    assert_eq!(lgetxattr(&ping, "security.capability").unwrap(), cap);
    assert_eq!(lgetxattr(&ping, "user.note").unwrap(), b"hi\0there");
    assert_eq!(fs::metadata(&ping).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(lgetxattr(&env.root.join("d"), "user.dir").unwrap(), b"d");
    // The kernel refuses user.* on fifos: skipped and reported.
    assert_eq!(
        report.skipped_xattrs.len(),
        1,
        "{:?}",
        report.skipped_xattrs
    );
    assert_eq!(report.skipped_xattrs[0].name, "user.fifo");
}

#[test]
fn security_xattr_on_symlink_is_set_on_the_link() {
    let env = Env::new();
    fs::write(env.root.join("target"), b"t").unwrap();
    let tar = TarBuf::new()
        .pax(&[("SCHILY.xattr.security.test", b"v")])
        .symlink("link", "target")
        .finish();
    let report = env.apply(&tar, &remove_opts()).unwrap();
    assert!(
        report.skipped_xattrs.is_empty(),
        "{:?}",
        report.skipped_xattrs
    );
    assert_eq!(
        lgetxattr(&env.root.join("link"), "security.test").unwrap(),
        b"v"
    );
    assert_eq!(lgetxattr(&env.root.join("target"), "security.test"), None);
}

#[test]
fn fifo_and_devices_when_allowed() {
    let env = Env::new();
    let tar = TarBuf::new()
        .with("p", EntryType::Fifo, b"", |h| {
            h.set_mode(0o620);
            h.set_uid(7);
        })
        .with("dev/null", EntryType::Char, b"", |h| {
            h.set_mode(0o666);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        })
        .with("dev/loop9", EntryType::Block, b"", |h| {
            h.set_mode(0o660);
            h.set_gid(6);
            h.set_device_major(7).unwrap();
            h.set_device_minor(9).unwrap();
        })
        .finish();
    let opts = ApplyOptions {
        allow_devices: true,
        ..remove_opts()
    };
    env.apply(&tar, &opts).unwrap();
    let p = fs::symlink_metadata(env.root.join("p")).unwrap();
    assert!(p.file_type().is_fifo());
    assert_eq!(p.mode() & 0o7777, 0o620);
    assert_eq!(p.uid(), 7);
    let null = fs::symlink_metadata(env.root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    let lp = fs::symlink_metadata(env.root.join("dev/loop9")).unwrap();
    assert!(lp.file_type().is_block_device());
    assert_eq!(lp.rdev(), libc::makedev(7, 9));
    assert_eq!(lp.gid(), 6);
}

#[test]
fn hardlinks_within_layer() {
    let env = Env::new();
    let tar = TarBuf::new()
        .file("a", b"data")
        .hardlink("b", "a")
        .hardlink("sub/c", "/a")
        .hardlink("d", "./sub/../a")
        .finish();
    env.apply(&tar, &remove_opts()).unwrap();
    let ino = fs::metadata(env.root.join("a")).unwrap().ino();
    for p in ["b", "sub/c", "d"] {
        assert_eq!(fs::metadata(env.root.join(p)).unwrap().ino(), ino, "{p}");
    }
    assert_eq!(fs::metadata(env.root.join("a")).unwrap().nlink(), 4);
    // A hardlink to a directory or to itself is refused.
    let tar = TarBuf::new().dir("dir/").hardlink("hl", "dir").finish();
    assert!(env.apply(&tar, &remove_opts()).is_err());
    let tar = TarBuf::new().hardlink("self", "self").finish();
    assert!(matches!(
        env.apply(&tar, &remove_opts()),
        Err(ApplyError::InvalidEntry { .. })
    ));
}

#[test]
fn hardlink_to_lower_file_in_plain_root() {
    let env = Env::new();
    fs::create_dir(env.root.join("usr")).unwrap();
    fs::write(env.root.join("usr/lower"), b"lower").unwrap();
    let tar = TarBuf::new().hardlink("new", "usr/lower").finish();
    env.apply(&tar, &remove_opts()).unwrap();
    assert_eq!(fs::read(env.root.join("new")).unwrap(), b"lower");
    // A bare upper dir does not see lower layers: clear error.
    let env = Env::new();
    let err = env.apply(&tar, &overlay_opts()).unwrap_err();
    assert!(
        matches!(err, ApplyError::HardlinkTargetMissing { .. }),
        "{err}"
    );
}

#[test]
fn whiteouts_and_opaque_in_remove_mode() {
    for opaque_first in [true, false] {
        let env = Env::new();
        lower_tree(&env.root);
        let mut t = TarBuf::new();
        t.file(".wh.y", b"").dir("x/");
        if opaque_first {
            t.file("x/.wh..wh..opq", b"");
        }
        t.dir("x/sub/").file("x/sub/new", b"n").file("x/new", b"n");
        if !opaque_first {
            t.file("x/.wh..wh..opq", b"");
        }
        t.file("z/w/.wh.deeper", b"")
            .file(".wh.missing", b"")
            .file("q/.wh.nothing", b"");
        let tar = t.finish();
        env.apply(&tar, &remove_opts()).unwrap();
        assert!(!env.root.join("y").exists());
        assert_eq!(names(&env.root.join("x")), ["new", "sub"], "{opaque_first}");
        assert_eq!(names(&env.root.join("x/sub")), ["new"]);
        assert_eq!(names(&env.root.join("z")), ["keep", "w"]);
        assert!(names(&env.root.join("z/w")).is_empty());
        assert!(!env.root.join("q").exists());
        assert!(!env.root.join(".wh.missing").exists());
    }
}

#[test]
fn whiteouts_and_opaque_in_overlay_mode() {
    let env = Env::new();
    let tar = TarBuf::new()
        .with(".wh.y", EntryType::Regular, b"", |h| {
            h.set_uid(5);
            h.set_gid(6)
        })
        .dir("x/")
        .file("x/.wh..wh..opq", b"")
        .file("x/new", b"n")
        .file("z/w/.wh.deeper", b"")
        .file("o/new", b"n")
        .file("o/.wh..wh..opq", b"")
        .file(".wh..wh..opq", b"")
        .file(".wh..wh.plnk/123", b"aufs")
        .finish();
    let report = env.apply(&tar, &overlay_opts()).unwrap();
    assert_eq!(report.entries, 9);
    let wh = fs::symlink_metadata(env.root.join("y")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert_eq!((wh.uid(), wh.gid()), (5, 6));
    assert_eq!(
        lgetxattr(&env.root.join("x"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    assert_eq!(
        lgetxattr(&env.root.join("o"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    assert_eq!(
        lgetxattr(&env.root, "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    assert_eq!(names(&env.root.join("x")), ["new"]);
    assert_eq!(names(&env.root.join("o")), ["new"]);
    let deeper = fs::symlink_metadata(env.root.join("z/w/deeper")).unwrap();
    assert!(deeper.file_type().is_char_device());
    assert_eq!(names(&env.root), ["o", "x", "y", "z"]);
}

#[test]
fn overlay_dir_replacing_whiteout_becomes_opaque() {
    let env = Env::new();
    let tar = TarBuf::new()
        .file(".wh.d", b"")
        .dir("d/")
        .file("d/f", b"f")
        .finish();
    env.apply(&tar, &overlay_opts()).unwrap();
    assert!(env.root.join("d").is_dir());
    assert_eq!(
        lgetxattr(&env.root.join("d"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
}

#[test]
fn whiteout_of_path_from_same_layer_is_ignored() {
    for opts in [remove_opts(), overlay_opts()] {
        let env = Env::new();
        let tar = TarBuf::new()
            .file("a", b"a")
            .file(".wh.a", b"")
            .dir("d/")
            .file("d/f", b"f")
            .file(".wh.d", b"")
            .finish();
        env.apply(&tar, &opts).unwrap();
        assert_eq!(fs::read(env.root.join("a")).unwrap(), b"a");
        assert_eq!(fs::read(env.root.join("d/f")).unwrap(), b"f");
    }
}

#[test]
fn replaces_file_with_dir_and_dir_with_file() {
    let env = Env::new();
    fs::write(env.root.join("a"), b"file").unwrap();
    fs::create_dir_all(env.root.join("b/c")).unwrap();
    fs::write(env.root.join("b/c/f"), b"f").unwrap();
    fs::create_dir(env.root.join("keep")).unwrap();
    fs::write(env.root.join("keep/old"), b"old").unwrap();
    std::os::unix::fs::symlink("/nowhere", env.root.join("s")).unwrap();
    let tar = TarBuf::new()
        .dir("a/")
        .file("a/inner", b"i")
        .file("b", b"now a file")
        .with("keep/", EntryType::Directory, b"", |h| h.set_mode(0o700))
        .file("s", b"not a link")
        .finish();
    env.apply(&tar, &remove_opts()).unwrap();
    assert_eq!(fs::read(env.root.join("a/inner")).unwrap(), b"i");
    assert_eq!(fs::read(env.root.join("b")).unwrap(), b"now a file");
    assert_eq!(fs::read(env.root.join("keep/old")).unwrap(), b"old");
    assert_eq!(
        fs::metadata(env.root.join("keep")).unwrap().mode() & 0o7777,
        0o700
    );
    assert!(fs::symlink_metadata(env.root.join("s")).unwrap().is_file());
}

#[test]
fn ownership_not_preserved_when_disabled() {
    let env = Env::new();
    let tar = TarBuf::new()
        .with("f", EntryType::Regular, b"x", |h| {
            h.set_uid(1234);
            h.set_gid(1234);
            h.set_mode(0o4755);
        })
        .finish();
    let opts = ApplyOptions {
        preserve_ownership: false,
        ..remove_opts()
    };
    env.apply(&tar, &opts).unwrap();
    let md = fs::metadata(env.root.join("f")).unwrap();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    assert_eq!(md.uid(), me);
    assert_eq!(md.mode() & 0o7777, 0o4755);
}

#[test]
fn long_names_via_pax_and_gnu() {
    let env = Env::new();
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_entry_type(EntryType::Regular);
    b.append_data(&mut h, &long, &b"long"[..]).unwrap();
    let mut t = TarBuf { b };
    let long2 = format!("{}/x", "e".repeat(150));
    t.pax(&[("path", long2.as_bytes())]).file("short", b"pax");
    let tar = t.finish();
    env.apply(&tar, &remove_opts()).unwrap();
    assert_eq!(fs::read(env.root.join(&long)).unwrap(), b"long");
    assert_eq!(fs::read(env.root.join(&long2)).unwrap(), b"pax");
    assert!(!env.root.join("short").exists());
}

#[test]
fn sparse_file_content_and_holes() {
    let env = Env::new();
    let real_size: u64 = 8 << 20;
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..6].copy_from_slice(b"sparse");
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(1024 + 4096);
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].set_offset(0);
        gnu.sparse[0].set_length(512);
        gnu.sparse[1].set_offset(4 << 20);
        gnu.sparse[1].set_length(512);
        gnu.sparse[2].set_offset(real_size - 4096);
        gnu.sparse[2].set_length(4096);
        gnu.set_real_size(real_size);
    }
    let mut data = vec![b'A'; 512];
    data.extend(vec![b'B'; 512]);
    data.extend(vec![b'C'; 4096]);
    let tar = TarBuf::new().raw(h, &data).file("after", b"ok").finish();
    env.apply(&tar, &remove_opts()).unwrap();
    let content = fs::read(env.root.join("sparse")).unwrap();
    assert_eq!(content.len() as u64, real_size);
    let mut expected = vec![0u8; real_size as usize];
    expected[..512].fill(b'A');
    expected[4 << 20..(4 << 20) + 512].fill(b'B');
    expected[real_size as usize - 4096..].fill(b'C');
    assert!(content == expected);
    let md = fs::metadata(env.root.join("sparse")).unwrap();
    assert!(
        md.blocks() * 512 < real_size / 2,
        "no holes: {} blocks",
        md.blocks()
    );
    assert_eq!(fs::read(env.root.join("after")).unwrap(), b"ok");
}
