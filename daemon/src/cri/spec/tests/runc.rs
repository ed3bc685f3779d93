//! The spec run by a real runc.

use super::*;

/// Writes the spec for a real busybox rootfs and runs it with runc:
/// runc must accept everything, the seccomp profile included.
#[test]
fn runc_runs_the_spec() {
    let runc = [
        "/usr/sbin/runc",
        "/usr/bin/runc",
        "/usr/local/sbin/runc",
        "/usr/local/bin/runc",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    let Some(runc) = runc else {
        berth_sysutil::testing::precondition_missing("runc_runs_the_spec", "runc not found");
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        berth_sysutil::testing::precondition_missing("runc_runs_the_spec", "needs root");
        return;
    }
    if !Path::new("/bin/busybox").exists() {
        berth_sysutil::testing::precondition_missing("runc_runs_the_spec", "/bin/busybox missing");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    let root = bundle.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "id", "cat", "hostname", "grep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/tmp:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
    )
    .unwrap();
    let files = tmp.path().join("pod");
    std::fs::create_dir_all(files.join("shm")).unwrap();
    std::fs::create_dir_all(files.join("vol")).unwrap();
    std::fs::write(files.join("vol/data"), "volume-data\n").unwrap();
    std::fs::write(files.join("hosts"), "127.0.0.1 localhost pod-host\n").unwrap();
    std::fs::write(files.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    std::fs::write(files.join("hostname"), "pod-host\n").unwrap();

    // Pod namespaces from a stand-in pause process.
    let mut pause = std::process::Command::new("unshare")
        .args(["--uts", "--ipc", "--net", "sleep", "60"])
        .spawn()
        .unwrap();
    let pid = pause.id();
    let own_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    for _ in 0..200 {
        if std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .as_ref()
            != Some(&own_net)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let net = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let ipc = PathBuf::from(format!("/proc/{pid}/ns/ipc"));
    let uts = PathBuf::from(format!("/proc/{pid}/ns/uts"));

    let uniq = format!("spec-{}-{}", std::process::id(), rand::random::<u32>());
    let id = format!("berth-spec-test-{uniq}");
    let mut pc = pod_config();
    pc.linux.as_mut().unwrap().cgroup_parent = format!("/berth-test/{uniq}");
    pc.linux.as_mut().unwrap().sysctls = HashMap::from([(
        "net.ipv4.ip_unprivileged_port_start".to_string(),
        "80".to_string(),
    )]);
    let (hosts, resolv, hostname, shm) = (
        files.join("hosts"),
        files.join("resolv.conf"),
        files.join("hostname"),
        files.join("shm"),
    );
    let ctx = PodContext {
        sandbox_id: "sb-test",
        config: &pc,
        netns: Some(&net),
        ipc_ns: Some(&ipc),
        uts_ns: Some(&uts),
        pid_ns: None,
        resolv_conf: Some(&resolv),
        hostname_file: Some(&hostname),
        hosts_file: Some(&hosts),
        shm: Some(&shm),
    };
    let mut c = with_sc(container("runc-test"), |sc| {
        sc.run_as_username = "app".into();
        sc.seccomp = Some(cri::SecurityProfile::default());
        sc.no_new_privs = true;
        sc.readonly_rootfs = true;
        sc.capabilities = Some(cri::Capability {
            drop_capabilities: s(&["NET_RAW"]),
            ..Default::default()
        });
    });
    c.command = s(&["sh", "-c"]);
    c.args = s(&[
        "id; hostname; cat /data/data; grep -c pod-host /etc/hosts; \
         cat /proc/sys/net/ipv4/ip_unprivileged_port_start; \
         if touch /x 2>/dev/null; then echo rootfs-writable; fi; echo done; \
         grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
    ]);
    c.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: files.join("vol").to_string_lossy().into(),
        readonly: true,
        ..Default::default()
    }];
    c.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 256,
        memory_limit_in_bytes: 64 << 20,
        oom_score_adj: -500,
        ..Default::default()
    });
    let o = SpecOptions::detect(CgroupDriver::Cgroupfs);
    let spec = container_spec(&id, &c, &ctx, &busybox(), &root, &o).unwrap();
    assert!(spec["linux"].get("seccomp").is_some());
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();

    let state = tmp.path().join("runc-state");
    let out = std::process::Command::new(runc)
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = std::process::Command::new(runc)
        .arg("--root")
        .arg(&state)
        .args(["delete", "-f", &id])
        .output();
    let _ = pause.kill();
    let _ = pause.wait();
    // runc removes the container's cgroup; remove the test parents.
    for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(base)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.push(PathBuf::from(base));
        for d in dirs {
            let p = d.join("berth-test").join(&uniq);
            let _ = std::fs::remove_dir(p.join(&id));
            let _ = std::fs::remove_dir(&p);
            let _ = std::fs::remove_dir(d.join("berth-test"));
        }
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "runc failed: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    assert!(
        stdout.contains("uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)"),
        "{stdout}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[1], "pod-host", "{stdout}");
    assert_eq!(lines[2], "volume-data", "{stdout}");
    assert_eq!(lines[3], "1", "{stdout}");
    assert_eq!(lines[4], "80", "{stdout}");
    assert_eq!(lines[5], "done", "read-only rootfs: {stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert!(
        stdout.contains("Seccomp:\t2"),
        "seccomp filter on: {stdout}"
    );
}
