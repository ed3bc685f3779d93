//! Mounts, the pod's files, propagation and devices.

use super::*;

#[test]
fn readonly_rootfs_and_pod_files() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["hosts", "resolv.conf", "hostname"] {
        std::fs::write(dir.path().join(f), "x\n").unwrap();
    }
    std::fs::create_dir(dir.path().join("shm")).unwrap();
    let pc = pod_config();
    let hosts = dir.path().join("hosts");
    let resolv = dir.path().join("resolv.conf");
    let hostname = dir.path().join("hostname");
    let shm = dir.path().join("shm");
    let ctx = PodContext {
        hosts_file: Some(&hosts),
        resolv_conf: Some(&resolv),
        hostname_file: Some(&hostname),
        shm: Some(&shm),
        ..pod(&pc)
    };
    let root = rootfs();
    let c = with_sc(container("a"), |sc| sc.readonly_rootfs = true);
    let spec = container_spec("c1", &c, &ctx, &busybox(), root.path(), &opts()).unwrap();
    assert_eq!(spec["root"]["readonly"], true);
    let m = mount(&spec, "/etc/hosts");
    assert_eq!(m["type"], "bind");
    assert_eq!(m["source"], json!(hosts.canonicalize().unwrap()));
    assert_eq!(strs(&m["options"]), ["rbind", "rprivate", "ro"]);
    assert_eq!(strs(&mount(&spec, "/etc/resolv.conf")["options"])[2], "ro");
    assert_eq!(strs(&mount(&spec, "/etc/hostname")["options"])[2], "ro");
    let m = mount(&spec, "/dev/shm");
    assert_eq!(m["type"], "bind");
    assert_eq!(strs(&m["options"])[2], "rw");
    assert_eq!(dests(&spec).iter().filter(|d| *d == "/dev/shm").count(), 1);

    // Writable rootfs: writable files. A CRI mount of /etc/hosts wins.
    let mut c = container("a");
    c.mounts = vec![cri::Mount {
        container_path: "/etc/hosts".into(),
        host_path: resolv.to_string_lossy().into(),
        ..Default::default()
    }];
    let spec = container_spec("c1", &c, &ctx, &busybox(), root.path(), &opts()).unwrap();
    assert_eq!(strs(&mount(&spec, "/etc/resolv.conf")["options"])[2], "rw");
    assert_eq!(
        dests(&spec).iter().filter(|d| *d == "/etc/hosts").count(),
        1
    );
    assert_eq!(
        mount(&spec, "/etc/hosts")["source"],
        json!(resolv.canonicalize().unwrap())
    );

    // Missing pod files are skipped; host IPC binds the host's /dev/shm.
    let gone = dir.path().join("gone");
    let mut pc = pod_config();
    pc.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            ipc: cri::NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let ctx = PodContext {
        hosts_file: Some(&gone),
        ipc_ns: None,
        ..pod(&pc)
    };
    let spec = container_spec(
        "c1",
        &container("a"),
        &ctx,
        &busybox(),
        root.path(),
        &opts(),
    )
    .unwrap();
    assert!(!dests(&spec).contains(&"/etc/hosts".to_string()));
    assert_eq!(mount(&spec, "/dev/shm")["source"], "/dev/shm");
}

#[test]
fn cri_mounts_sorted_with_propagation_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::os::unix::fs::symlink(&b, dir.path().join("link")).unwrap();
    let m = |cp: &str, hp: &Path, ro: bool, prop: cri::MountPropagation| cri::Mount {
        container_path: cp.into(),
        host_path: hp.to_string_lossy().into(),
        readonly: ro,
        selinux_relabel: true,
        propagation: prop as i32,
        ..Default::default()
    };
    let mut c = container("web");
    c.mounts = vec![
        m(
            "/data/sub/deep",
            &a,
            false,
            cri::MountPropagation::PropagationPrivate,
        ),
        m(
            "/data",
            &dir.path().join("link"),
            true,
            cri::MountPropagation::PropagationPrivate,
        ),
        m("/sys", &a, true, cri::MountPropagation::PropagationPrivate),
    ];
    let spec = build(&c, &busybox()).unwrap();
    let d = dests(&spec);
    // /sys replaced a default; parents before children.
    assert_eq!(d.iter().filter(|x| *x == "/sys").count(), 1);
    let pos = |p: &str| d.iter().position(|x| x == p).unwrap();
    assert!(pos("/data") < pos("/data/sub/deep"));
    assert!(pos("/sys") < pos("/sys/fs/cgroup") || mount(&spec, "/sys")["type"] == "bind");
    let data = mount(&spec, "/data");
    assert_eq!(
        data["source"],
        json!(b.canonicalize().unwrap()),
        "symlink resolved"
    );
    assert_eq!(strs(&data["options"]), ["rbind", "rprivate", "ro"]);
    assert!(spec["linux"].get("rootfsPropagation").is_none());

    // A CRI /dev drops the default mounts under /dev.
    let mut c2 = container("web");
    c2.mounts = vec![m(
        "/dev",
        &a,
        false,
        cri::MountPropagation::PropagationPrivate,
    )];
    let d = dests(&build(&c2, &busybox()).unwrap());
    assert!(!d.iter().any(|x| x.starts_with("/dev/")));

    // A missing host path is an error naming the container and path.
    let missing = dir.path().join("missing");
    c.mounts = vec![m(
        "/x",
        &missing,
        false,
        cri::MountPropagation::PropagationPrivate,
    )];
    match build(&c, &busybox()) {
        Err(SpecError::NotFound(e)) => {
            assert!(
                e.contains("container \"web\"") && e.contains("missing"),
                "{e}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!missing.exists(), "not created");

    // Propagation needs a shared (or slave) host mount.
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let (_, optional) = mount_of(&a.canonicalize().unwrap(), &info).unwrap();
    let shared = optional.contains("shared:");
    c.mounts = vec![m(
        "/x",
        &a,
        false,
        cri::MountPropagation::PropagationBidirectional,
    )];
    match build(&c, &busybox()) {
        Ok(spec) => {
            assert!(shared);
            assert_eq!(spec["linux"]["rootfsPropagation"], "rshared");
            assert_eq!(strs(&mount(&spec, "/x")["options"])[1], "rshared");
        }
        Err(e) => {
            assert!(!shared);
            assert!(e.to_string().contains("not a shared mount"), "{e}");
        }
    }
    // Other unsupported fields.
    c.mounts = vec![cri::Mount {
        recursive_read_only: true,
        readonly: true,
        ..m("/x", &a, true, cri::MountPropagation::PropagationPrivate)
    }];
    assert!(invalid(build(&c, &busybox())).contains("mounts[0]"));
    c.mounts = vec![m(
        "rel",
        &a,
        true,
        cri::MountPropagation::PropagationPrivate,
    )];
    assert!(invalid(build(&c, &busybox())).contains("not absolute"));
    // Host paths: absolute, no '..' (a relative one would be berthd's cwd's).
    for host in ["rel/dir", "/tmp/../etc"] {
        c.mounts = vec![m(
            "/x",
            Path::new(host),
            true,
            cri::MountPropagation::PropagationPrivate,
        )];
        let e = invalid(build(&c, &busybox()));
        assert!(
            e.contains("must be absolute, without '..'") && e.contains(host),
            "{e}"
        );
    }
}

#[test]
fn propagation_checks_read_mountinfo() {
    let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:5 / /mnt/priv rw - tmpfs tmpfs rw
31 22 0:6 / /mnt/slave rw master:3 - tmpfs tmpfs rw
32 22 0:7 / /mnt/with\\040space rw shared:9 master:3 - tmpfs tmpfs rw
";
    let who = Who("container \"a\"".into());
    let bm = |prop| BindMount {
        container_path: "/x".into(),
        host_path: "/unused".into(),
        readonly: false,
        propagation: prop,
        field: "mounts[0]".into(),
    };
    let bi = bm(cri::MountPropagation::PropagationBidirectional);
    let h2c = bm(cri::MountPropagation::PropagationHostToContainer);
    let check = |b: &BindMount, p: &str| check_propagation(&who, b, Path::new(p), info);
    assert!(check(&bi, "/var/lib/x").is_ok());
    assert!(check(&bi, "/mnt/priv/x").is_err());
    assert!(check(&h2c, "/mnt/priv/x").is_err());
    assert!(check(&bi, "/mnt/slave/x").is_err());
    assert!(check(&h2c, "/mnt/slave/x").is_ok());
    assert!(check(&bi, "/mnt/with space/d").is_ok());
    // /mnt/privx is not under /mnt/priv.
    assert!(check(&bi, "/mnt/privx").is_ok());
    let e = check(&h2c, "/mnt/priv").unwrap_err().to_string();
    assert!(
        e.contains("/mnt/priv") && e.contains("PROPAGATION_HOST_TO_CONTAINER"),
        "{e}"
    );
}

#[test]
fn devices_from_the_config() {
    let mut c = container("a");
    c.devices = vec![cri::Device {
        container_path: "/dev/mynull".into(),
        host_path: "/dev/null".into(),
        permissions: "rw".into(),
    }];
    let spec = build(&c, &busybox()).unwrap();
    let d = &spec["linux"]["devices"][0];
    assert_eq!(d["path"], "/dev/mynull");
    assert_eq!(d["type"], "c");
    assert_eq!(
        (d["major"].as_u64(), d["minor"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(d["fileMode"], 0o666);
    let rules = spec["linux"]["resources"]["devices"].as_array().unwrap();
    assert_eq!(
        rules.last().unwrap(),
        &json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"})
    );
    c.devices[0].permissions = "rwx".into();
    assert!(invalid(build(&c, &busybox())).contains("devices[0]"));
    c.devices[0].permissions = "r".into();
    c.devices[0].host_path = "/dev/does-not-exist".into();
    assert!(matches!(build(&c, &busybox()), Err(SpecError::NotFound(_))));
    c.devices[0].host_path = "/etc/hostname".into();
    if Path::new("/etc/hostname").exists() {
        assert!(invalid(build(&c, &busybox())).contains("not a device"));
    }
}
