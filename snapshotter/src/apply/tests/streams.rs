//! Layer streams and odd inputs: compressions and diff IDs, corrupt streams,
//! header quirks, symlinked and missing roots, applying through a mounted
//! overlay, throughput.

use super::*;

#[test]
fn diff_id_for_every_compression() {
    let mut t = TarBuf::new();
    t.dir("etc/").file("etc/hostname", b"berth\n");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    t.file("big", &big);
    let mut tar = t.finish();
    // Pad to a 10 KiB record like GNU tar: the diff ID covers the padding too.
    let record = 10240;
    tar.resize(tar.len().div_ceil(record) * record, 0);
    let want = sha256(&tar);

    let blobs = [
        (Compression::None, tar.clone()),
        (Compression::Gzip, gzip(&tar)),
        (Compression::Zstd, zstd::encode_all(&tar[..], 3).unwrap()),
    ];
    for (c, blob) in blobs {
        assert_eq!(Compression::detect(&blob), c);
        let env = Env::new();
        let report = apply_layer(&env.root, &blob[..], c, &remove_opts(), &NEVER).unwrap();
        assert_eq!(report.diff_id, want, "{c:?}");
        assert_eq!(report.bytes, tar.len() as u64);
        assert_eq!(report.entries, 3);
        assert_eq!(fs::read(env.root.join("big")).unwrap(), big);
    }
}

#[test]
fn multi_member_gzip() {
    let tar = TarBuf::new().file("a", b"a").finish();
    let (one, two) = tar.split_at(700);
    let mut blob = gzip(one);
    blob.extend(gzip(two));
    let env = Env::new();
    let report = apply_layer(
        &env.root,
        &blob[..],
        Compression::Gzip,
        &remove_opts(),
        &NEVER,
    )
    .unwrap();
    assert_eq!(report.diff_id, sha256(&tar));
}

#[test]
fn compression_helpers() {
    assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
    assert_eq!(
        Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
        Compression::Zstd
    );
    assert_eq!(
        Compression::detect(&[0x50, 0x2a, 0x4d, 0x18]),
        Compression::Zstd
    );
    assert_eq!(Compression::detect(b"etc/"), Compression::None);
    assert_eq!(Compression::detect(&[]), Compression::None);
    assert_eq!(
        Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
        Some(Compression::Zstd)
    );
    assert_eq!(
        Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        Some(Compression::Gzip)
    );
    assert_eq!(Compression::from_media_type("application/json"), None);
}

#[test]
fn corrupt_streams_are_reported_by_kind() {
    let tar = TarBuf::new().file("a", &[1u8; 5000]).finish();
    let env = Env::new();
    // Truncated tar.
    let err = apply_layer(
        &env.root,
        &tar[..1500],
        Compression::None,
        &remove_opts(),
        &NEVER,
    )
    .unwrap_err();
    assert!(matches!(err, ApplyError::Tar(_)), "{err}");
    // Corrupt gzip.
    let mut gz = gzip(&tar);
    let n = gz.len();
    gz[n / 2] ^= 0xff;
    gz[n - 6] ^= 0xff; // CRC
    let err = apply_layer(
        &env.root,
        &gz[..],
        Compression::Gzip,
        &remove_opts(),
        &NEVER,
    )
    .unwrap_err();
    assert!(matches!(err, ApplyError::Decompress(_)), "{err}");
    // Not zstd at all.
    let err = apply_layer(
        &env.root,
        &tar[..],
        Compression::Zstd,
        &remove_opts(),
        &NEVER,
    )
    .unwrap_err();
    assert!(matches!(err, ApplyError::Decompress(_)), "{err}");
    // Bad header checksum.
    let mut bad = tar.clone();
    bad[0] = b'b';
    let err = apply_layer(
        &env.root,
        &bad[..],
        Compression::None,
        &remove_opts(),
        &NEVER,
    )
    .unwrap_err();
    assert!(matches!(err, ApplyError::Tar(_)), "{err}");
}

#[test]
fn blank_numeric_fields_read_as_zero() {
    let env = Env::new();
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..1].copy_from_slice(b"f");
    h.set_entry_type(EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    let tar = TarBuf::new().raw(h, b"x").finish();
    env.apply(&tar, &remove_opts()).unwrap();
    let md = fs::metadata(env.root.join("f")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mtime()), (0, 0, 0));
}

#[test]
fn pax_sparse_is_refused() {
    let env = Env::new();
    let tar = TarBuf::new()
        .pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")])
        .file("GNUSparseFile.0/f", b"x")
        .finish();
    let err = env.apply(&tar, &remove_opts()).unwrap_err();
    assert!(matches!(err, ApplyError::InvalidEntry { .. }), "{err}");
}

#[test]
fn symlinked_parent_inside_root_is_followed() {
    let env = Env::new();
    let tar = TarBuf::new()
        .dir("usr/")
        .dir("usr/lib/")
        .symlink("lib", "usr/lib")
        .symlink("abs", "/usr/lib")
        .file("lib/x", b"x")
        .file("abs/y", b"y")
        .finish();
    env.apply(&tar, &remove_opts()).unwrap();
    assert_eq!(fs::read(env.root.join("usr/lib/x")).unwrap(), b"x");
    assert_eq!(fs::read(env.root.join("usr/lib/y")).unwrap(), b"y");
    assert!(fs::symlink_metadata(env.root.join("lib"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn opaque_root_in_remove_mode() {
    let env = Env::new();
    lower_tree(&env.root);
    let tar = TarBuf::new()
        .file("x/new", b"n")
        .file(".wh..wh..opq", b"")
        .finish();
    env.apply(&tar, &remove_opts()).unwrap();
    assert_eq!(names(&env.root), ["x"]);
    assert_eq!(names(&env.root.join("x")), ["new"]);
}

#[test]
fn dangling_symlink_parent_gives_a_clear_error() {
    let env = Env::new();
    let tar = TarBuf::new()
        .symlink("lib", "usr/lib")
        .file("lib/x", b"x")
        .finish();
    let err = env.apply(&tar, &remove_opts()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"lib/x\"") && msg.contains("symlink whose target does not exist"),
        "{msg}"
    );
}

#[test]
fn missing_root_is_an_error() {
    let env = Env::new();
    let tar = TarBuf::new().file("a", b"a").finish();
    let err = apply_layer(
        &env.root.join("nope"),
        &tar[..],
        Compression::None,
        &remove_opts(),
        &NEVER,
    )
    .unwrap_err();
    assert!(matches!(err, ApplyError::Root { .. }));
}

/// Unmounts (lazily) on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let c = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is NUL-terminated; umount2 has no memory preconditions.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

#[test]
fn remove_mode_through_mounted_overlay() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    let upper = tmp.path().join("upper");
    let work = tmp.path().join("work");
    let merged = tmp.path().join("merged");
    for d in [&lower, &upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    lower_tree(&lower);
    fs::create_dir(lower.join("usr")).unwrap();
    fs::write(lower.join("usr/lib.so"), b"lib").unwrap();

    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let target = CString::new(merged.as_os_str().as_bytes()).unwrap();
    let data = CString::new(data).unwrap();
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let r = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        berth_sysutil::testing::precondition_missing(
            "overlay mount test",
            &format!("cannot mount overlay: {}", io::Error::last_os_error()),
        );
        return;
    }
    let _mount = Mount(merged.clone());

    let tar = TarBuf::new()
        .file(".wh.y", b"")
        .dir("x/")
        .file("x/.wh..wh..opq", b"")
        .file("x/new", b"n")
        .file("z/w/.wh.deeper", b"")
        .hardlink("usr/lib2.so", "usr/lib.so")
        .with("z/keep", EntryType::Regular, b"K", |h| h.set_mode(0o600))
        .finish();
    apply_layer(&merged, &tar[..], Compression::None, &remove_opts(), &NEVER).unwrap();

    // Merged view.
    assert!(!merged.join("y").exists());
    assert_eq!(names(&merged.join("x")), ["new"]);
    assert!(names(&merged.join("z/w")).is_empty());
    assert_eq!(fs::read(merged.join("z/keep")).unwrap(), b"K");
    assert_eq!(
        fs::metadata(merged.join("usr/lib2.so")).unwrap().ino(),
        fs::metadata(merged.join("usr/lib.so")).unwrap().ino()
    );
    // The kernel wrote the whiteouts into the upper dir.
    let wh = fs::symlink_metadata(upper.join("y")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(fs::symlink_metadata(upper.join("z/w/deeper"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(fs::read(upper.join("usr/lib2.so")).unwrap(), b"lib");
    // The lower layer is untouched.
    assert_eq!(fs::read(lower.join("y")).unwrap(), b"y");
    assert_eq!(fs::read(lower.join("x/old")).unwrap(), b"old");
}

/// Throughput of a ~200 MiB random-data gzip layer (100 files of 2 MiB).
/// `cargo test --release -- --ignored --nocapture apply_throughput`
#[test]
#[ignore]
fn apply_throughput() {
    let files = 100;
    let per = (200 << 20) / files;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut data = vec![0u8; per];
    let mut t = TarBuf::new();
    for i in 0..files {
        for chunk in data.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        t.file(&format!("dir{}/file{i}", i % 10), &data);
    }
    let tar = t.finish();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&tar).unwrap();
    let gz = enc.finish().unwrap();
    for _ in 0..3 {
        let env = Env::new();
        let start = std::time::Instant::now();
        let report = apply_layer(
            &env.root,
            &gz[..],
            Compression::Gzip,
            &remove_opts(),
            &NEVER,
        )
        .unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(report.diff_id, sha256(&tar));
        println!(
            "applied {:.0} MiB ({} MiB gzip) in {secs:.3} s: {:.0} MiB/s",
            report.bytes as f64 / 1048576.0,
            gz.len() >> 20,
            report.bytes as f64 / 1048576.0 / secs
        );
    }
}
