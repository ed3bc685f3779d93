//! Containment and limits: names, links and whiteouts that try to leave the
//! root, devices, sizes, header and xattr abuse.

use super::*;

#[test]
fn dotdot_names_are_clamped_inside_root() {
    let env = Env::new();
    let tar = TarBuf::new()
        .file("../../x", b"one")
        .file("../outside/file", b"pwned")
        .file("a/../../../etc/x", b"two")
        .finish();
    env.apply(&tar, &remove_opts()).unwrap();
    assert_eq!(fs::read(env.root.join("x")).unwrap(), b"one");
    assert_eq!(fs::read(env.root.join("outside/file")).unwrap(), b"pwned");
    assert_eq!(fs::read(env.root.join("etc/x")).unwrap(), b"two");
    env.assert_outside_untouched();
}

#[test]
fn absolute_names_are_relative_to_root() {
    let env = Env::new();
    let abs = format!("{}/file", env.outside.display());
    let tar = TarBuf::new()
        .file("/abs/file", b"a")
        .file(&abs, b"pwned")
        .finish();
    env.apply(&tar, &remove_opts()).unwrap();
    assert_eq!(fs::read(env.root.join("abs/file")).unwrap(), b"a");
    let inside = env.root.join(abs.trim_start_matches('/'));
    assert_eq!(fs::read(inside).unwrap(), b"pwned");
    env.assert_outside_untouched();
}

#[test]
fn absolute_symlink_to_outside_is_not_followed_out() {
    let env = Env::new();
    let target = env.outside.display().to_string();
    let tar = TarBuf::new()
        .symlink("link", &target)
        .file("link/file", b"pwned")
        .file("link/new", b"pwned")
        .finish();
    // The symlink resolves to root/<outside path>, which does not exist.
    let res = env.apply(&tar, &remove_opts());
    match res {
        Ok(_) => {
            let inside = env.root.join(target.trim_start_matches('/'));
            assert_eq!(fs::read(inside.join("file")).unwrap(), b"pwned");
        }
        Err(err) => {
            let msg = err.to_string();
            assert!(msg.contains("link/file"), "{msg}");
        }
    }
    env.assert_outside_untouched();
    assert_eq!(
        fs::read_link(env.root.join("link")).unwrap(),
        Path::new(&target)
    );
}

#[test]
fn relative_symlink_escape_stays_inside_root() {
    let env = Env::new();
    let tar = TarBuf::new()
        .symlink("up", "../../..")
        .file("up/outside/file", b"pwned")
        .symlink("sub/dotdot", "../..")
        .file("sub/dotdot/outside/x", b"x")
        .finish();
    env.apply(&tar, &remove_opts()).unwrap();
    // `up` resolves to the root itself.
    assert_eq!(fs::read(env.root.join("outside/file")).unwrap(), b"pwned");
    assert_eq!(fs::read(env.root.join("outside/x")).unwrap(), b"x");
    env.assert_outside_untouched();
}

#[test]
fn hardlink_to_host_path_is_refused() {
    let env = Env::new();
    let abs = format!("{}/file", env.outside.display());
    for target in [abs.as_str(), "../outside/file", "../../outside/file"] {
        let tar = TarBuf::new().hardlink("hard", target).finish();
        let err = env.apply(&tar, &remove_opts()).unwrap_err();
        assert!(
            matches!(err, ApplyError::HardlinkTargetMissing { .. }),
            "{target}: {err}"
        );
        assert!(!env.root.join("hard").exists());
    }
    // Through an in-root symlink pointing outside.
    let tar = TarBuf::new()
        .symlink("sl", &env.outside.display().to_string())
        .hardlink("h", "sl/file")
        .finish();
    let err = env.apply(&tar, &remove_opts()).unwrap_err();
    assert!(
        matches!(err, ApplyError::HardlinkTargetMissing { .. }),
        "{err}"
    );
    let tar = TarBuf::new()
        .symlink("sl2", "../outside")
        .hardlink("h", "sl2/file")
        .finish();
    assert!(env.apply(&tar, &remove_opts()).is_err());
    env.assert_outside_untouched();
}

#[test]
fn symlink_loop_errors_cleanly() {
    let env = Env::new();
    let tar = TarBuf::new()
        .symlink("a", "b")
        .symlink("b", "a")
        .file("a/x", b"x")
        .finish();
    let err = env.apply(&tar, &remove_opts()).unwrap_err();
    assert_eq!(errno_of(&err), Some(libc::ELOOP), "{err}");
    assert!(err.to_string().contains("\"a/x\""), "{err}");
    env.assert_outside_untouched();
}

#[test]
fn directory_replaced_by_symlink_between_entries() {
    let env = Env::new();
    let tar = TarBuf::new()
        .dir("d/")
        .file("d/before", b"b")
        .symlink("d", "../outside")
        .file("d/x", b"pwned")
        .finish();
    // root/outside does not exist: error, nothing written anywhere.
    assert!(env.apply(&tar, &remove_opts()).is_err());
    env.assert_outside_untouched();
    assert!(fs::symlink_metadata(env.root.join("d"))
        .unwrap()
        .file_type()
        .is_symlink());

    // With a root/outside directory the file lands there.
    let env = Env::new();
    fs::create_dir(env.root.join("outside")).unwrap();
    let abs = env.outside.display().to_string();
    let tar = TarBuf::new()
        .dir("d/")
        .symlink("d", "../outside")
        .file("d/x", b"inside")
        .dir("e/")
        .symlink("e", &abs)
        .file("e/y", b"y")
        .finish();
    let res = env.apply(&tar, &remove_opts());
    assert_eq!(fs::read(env.root.join("outside/x")).unwrap(), b"inside");
    // `e` points at root/<abs outside>, which is missing.
    assert!(res.is_err());
    env.assert_outside_untouched();
}

#[test]
fn devices_are_refused_unless_allowed() {
    let env = Env::new();
    let tar = TarBuf::new()
        .with("dev/sda", EntryType::Block, b"", |h| {
            h.set_device_major(8).unwrap();
            h.set_device_minor(0).unwrap();
        })
        .finish();
    let err = env.apply(&tar, &remove_opts()).unwrap_err();
    assert!(matches!(err, ApplyError::DeviceNotAllowed { .. }));
    assert_eq!(
        err.to_string(),
        "layer entry \"dev/sda\": device nodes are not allowed"
    );
    assert!(!env.root.join("dev").exists());
    let tar = TarBuf::new()
        .with("null", EntryType::Char, b"", |h| {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        })
        .finish();
    assert!(matches!(
        env.apply(&tar, &remove_opts()),
        Err(ApplyError::DeviceNotAllowed { .. })
    ));
    assert!(!env.root.join("null").exists());
}

#[test]
fn absurd_entry_size_is_refused_before_reading() {
    let env = Env::new();
    // Header claims 1 TiB; no data follows.
    let tar = TarBuf::new()
        .with("big", EntryType::Regular, b"", |h| h.set_size(1 << 40))
        .finish();
    let err = env.apply(&tar, &remove_opts()).unwrap_err();
    assert!(matches!(err, ApplyError::EntryTooLarge { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("layer entry \"big\": size 1099511627776 exceeds the limit"),
        "{err}"
    );
    assert!(!env.root.join("big").exists());
}

#[test]
fn total_size_limit_is_enforced_before_writing() {
    let env = Env::new();
    let data = vec![7u8; 600 << 10];
    let tar = TarBuf::new().file("a", &data).file("b", &data).finish();
    let opts = ApplyOptions {
        max_total_size: 1 << 20,
        ..remove_opts()
    };
    let err = env.apply(&tar, &opts).unwrap_err();
    assert!(matches!(err, ApplyError::LayerTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("\"b\""), "{err}");
    assert_eq!(fs::read(env.root.join("a")).unwrap(), data);
    assert!(!env.root.join("b").exists());
}

#[test]
fn decompressed_stream_limit_stops_bombs() {
    let env = Env::new();
    let mut tar = TarBuf::new().file("a", b"a").finish();
    // 64 MiB of zeros after the archive compresses to almost nothing.
    tar.resize(tar.len() + (64 << 20), 0);
    let gz = gzip(&tar);
    assert!(gz.len() < 1 << 20);
    let opts = ApplyOptions {
        max_total_size: 4 << 20,
        ..remove_opts()
    };
    let err = apply_layer(&env.root, &gz[..], Compression::Gzip, &opts, &NEVER).unwrap_err();
    assert!(
        matches!(err, ApplyError::StreamTooLarge { limit } if limit == 4 << 20),
        "{err}"
    );
}

#[test]
fn oversized_pax_header_is_refused() {
    let env = Env::new();
    let huge = vec![b'a'; 5 << 20];
    let tar = TarBuf::new()
        .pax(&[("SCHILY.xattr.user.big", &huge)])
        .file("f", b"x")
        .finish();
    let err = env.apply(&tar, &remove_opts()).unwrap_err();
    assert!(matches!(err, ApplyError::MetadataTooLarge { .. }), "{err}");
}

#[test]
fn too_many_entries() {
    let env = Env::new();
    let mut t = TarBuf::new();
    for i in 0..5 {
        t.file(&format!("f{i}"), b"x");
    }
    let tar = t.finish();
    let opts = ApplyOptions {
        max_entries: 3,
        ..remove_opts()
    };
    let err = env.apply(&tar, &opts).unwrap_err();
    assert!(
        matches!(err, ApplyError::TooManyEntries { limit: 3 }),
        "{err}"
    );
    assert!(env.root.join("f2").exists());
    assert!(!env.root.join("f3").exists());
}

#[test]
fn trusted_xattrs_from_layers_are_skipped() {
    let env = Env::new();
    let tar = TarBuf::new()
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.user.ok", b"1"),
        ])
        .file("f", b"x")
        .finish();
    let report = env.apply(&tar, &remove_opts()).unwrap();
    assert_eq!(
        lgetxattr(&env.root.join("f"), "trusted.overlay.redirect"),
        None
    );
    assert_eq!(lgetxattr(&env.root.join("f"), "user.ok").unwrap(), b"1");
    assert_eq!(report.skipped_xattrs.len(), 1);
    assert_eq!(report.skipped_xattrs[0].name, "trusted.overlay.redirect");
    assert_eq!(report.skipped_xattrs[0].path, "f");
}

#[test]
fn invalid_whiteout_names_error() {
    let env = Env::new();
    for name in ["a/.wh..", "a/.wh.", ".wh.."] {
        let tar = TarBuf::new().file(name, b"").finish();
        let err = env.apply(&tar, &remove_opts()).unwrap_err();
        assert!(
            matches!(err, ApplyError::InvalidEntry { .. }),
            "{name}: {err}"
        );
    }
}

#[test]
fn whiteout_cannot_reach_outside() {
    let env = Env::new();
    fs::create_dir(env.root.join("outside")).unwrap();
    fs::write(env.root.join("outside/file"), b"in").unwrap();
    let abs = format!("{}/.wh.file", env.outside.display());
    let tar = TarBuf::new()
        .file("../outside/.wh.file", b"")
        .symlink("l", &env.outside.display().to_string())
        .file("l/.wh.file", b"")
        .file(&abs, b"")
        .finish();
    env.apply(&tar, &remove_opts()).unwrap();
    assert!(!env.root.join("outside/file").exists());
    env.assert_outside_untouched();
}
