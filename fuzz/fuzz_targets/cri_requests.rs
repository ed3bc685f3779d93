//! The CRI request checks kubelet's requests go through before anything is
//! created: RunPodSandbox (config checks, names, port mappings, cgroup
//! parent, resolv.conf/hostname/hosts), CreateContainer (metadata, log
//! path, cgroups path, stop signal, the whole OCI spec:
//! `cri::spec::container_spec`), UpdateContainerResources
//! (`linux_resources`), Exec/Attach/PortForward stream options.
//!
//! Input: a byte picking the request type (see `seeds::cri_requests`), then
//! the request's protobuf encoding (prost, as tonic decodes it).
//!
//! Host paths in the request (mount and device sources, seccomp localhost
//! profiles) are confined to a private fake host directory (their `..` and
//! root dropped) so the harness never walks or reads the real host; the
//! rootfs is a temp dir with /etc/passwd and /etc/group.
#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use berth_api::runtime::v1 as cri;
use berth_fuzz::seeds;
use berthd::fuzzing::modules::cri::spec::{self, CgroupDriver, PodContext, SpecOptions, KNOWN_CAPS};
use berthd::fuzzing::modules::tasks::spec::ContainerConfig as ImageConfig;
use libfuzzer_sys::fuzz_target;
use prost::Message;

struct Dirs {
    _tmp: tempfile::TempDir,
    host: PathBuf,
    rootfs: PathBuf,
    pods: PathBuf,
}

fn dirs() -> &'static Dirs {
    static DIRS: OnceLock<Dirs> = OnceLock::new();
    DIRS.get_or_init(|| {
        let tmp = tempfile::Builder::new()
            .prefix("berth-fuzz-cri-")
            .tempdir()
            .expect("temp dir");
        let host = tmp.path().join("host");
        let rootfs = tmp.path().join("rootfs");
        let pods = tmp.path().join("pods");
        for d in [&host, &rootfs, &pods, &host.join("data"), &host.join("dev")] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(host.join("file"), "x").expect("file");
        std::fs::write(
            host.join("profile.json"),
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
        )
        .expect("profile");
        std::os::unix::fs::symlink("data", host.join("link")).expect("symlink");
        // Device nodes as root; without the privilege the harness still runs.
        let null = std::ffi::CString::new(host.join("dev/null").into_os_string().into_encoded_bytes())
            .expect("path");
        // SAFETY: a valid C string; mknod only creates the node.
        unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        std::fs::create_dir_all(rootfs.join("etc")).expect("etc");
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\nvideo:x:44:app\n")
            .expect("group");
        Dirs {
            _tmp: tmp,
            host,
            rootfs,
            pods,
        }
    })
}

/// `p` inside the fake host: only its normal components are kept.
fn confine(p: &str) -> String {
    let mut out = dirs().host.clone();
    for c in Path::new(p).components() {
        if let Component::Normal(n) = c {
            out.push(n);
        }
    }
    out.to_string_lossy().into_owned()
}

// The legacy field still reaches the daemon (`seccomp_profile_path`).
#[allow(deprecated)]
fn confine_container(cfg: &mut cri::ContainerConfig) {
    for m in &mut cfg.mounts {
        if !m.host_path.is_empty() {
            m.host_path = confine(&m.host_path);
        }
    }
    for d in &mut cfg.devices {
        d.host_path = confine(&d.host_path);
    }
    if let Some(sc) = cfg.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        if let Some(p) = sc.seccomp.as_mut() {
            if !p.localhost_ref.is_empty() {
                p.localhost_ref = confine(&p.localhost_ref);
            }
        }
        if let Some(rest) = sc.seccomp_profile_path.strip_prefix("localhost/") {
            sc.seccomp_profile_path = format!("localhost/{}", confine(rest));
        }
    }
}

fn opts() -> SpecOptions {
    SpecOptions {
        all_capabilities: Some(KNOWN_CAPS.iter().map(|c| c.to_string()).collect()),
        swap_controller: true,
        hugetlb_controller: true,
        cgroup_v2: true,
        ..Default::default()
    }
}

fn check_cgroups(parent: &str, id: &str) {
    for driver in [CgroupDriver::Cgroupfs, CgroupDriver::Systemd] {
        if let Ok(p) = spec::cgroups_path(driver, parent, "sandbox1", id) {
            if driver == CgroupDriver::Cgroupfs {
                assert!(p.starts_with('/'), "cgroups path {p:?} is relative");
                assert!(
                    !p.split('/').any(|c| c == ".."),
                    "cgroups path {p:?} climbs out of its parent"
                );
            } else {
                assert_eq!(p.matches(':').count(), 2, "systemd cgroups path {p:?}");
            }
        }
    }
}

fn run_pod_sandbox(req: cri::RunPodSandboxRequest) {
    let Some(cfg) = req.config else {
        return;
    };
    let _ = berthd::fuzzing::pod_config_json(&cfg);
    if berthd::fuzzing::validate_pod_sandbox(&cfg).is_err() {
        return;
    }
    for (m, orig) in berthd::fuzzing::pod_port_mappings(&cfg).iter().zip(
        cfg.port_mappings
            .iter()
            .filter(|p| p.host_port > 0 && p.container_port > 0),
    ) {
        assert_eq!(i32::from(m.host_port), orig.host_port, "host port changed");
        assert_eq!(
            i32::from(m.container_port),
            orig.container_port,
            "container port changed"
        );
    }
    if let Some(l) = &cfg.linux {
        check_cgroups(&l.cgroup_parent, "sandbox1");
    }
    let host_network = cfg
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .is_some_and(|n| n.network == cri::NamespaceMode::Node as i32);
    let pod_dir = dirs().pods.join("pod");
    let hostname = if cfg.hostname.is_empty() {
        "node"
    } else {
        &cfg.hostname
    };
    let host = &dirs().host;
    if let Ok(files) = berthd::fuzzing::modules::cri::podfiles::write_pod_files(
        &pod_dir,
        hostname,
        cfg.dns_config.as_ref(),
        host_network,
        &host.join("file"),
        &host.join("file"),
    ) {
        let resolv = std::fs::read_to_string(&files.resolv_conf).unwrap_or_default();
        if cfg.dns_config.as_ref().is_some_and(|d| {
            !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty()
        }) {
            for line in resolv.lines() {
                assert!(
                    line.starts_with("nameserver ")
                        || line.starts_with("search ")
                        || line.starts_with("options "),
                    "resolv.conf line {line:?} injected"
                );
            }
        }
        let h = std::fs::read_to_string(&files.hostname).expect("hostname file");
        assert_eq!(h, format!("{hostname}\n"), "hostname file");
    }
    let _ = std::fs::remove_dir_all(&pod_dir);
}

fn image() -> ImageConfig {
    ImageConfig {
        user: Some("app".into()),
        env: Some(vec!["PATH=/usr/bin:/bin".into()]),
        cmd: Some(vec!["sh".into()]),
        stop_signal: Some("SIGQUIT".into()),
        ..Default::default()
    }
}

fn create_container(req: cri::CreateContainerRequest) {
    let Some(mut cfg) = req.config else {
        return;
    };
    let Some(m) = cfg.metadata.clone() else {
        return;
    };
    if m.name.trim().is_empty() {
        return;
    }
    let pod_cfg = req.sandbox_config.unwrap_or_default();
    let pod_meta = pod_cfg.metadata.clone().unwrap_or_default();
    let _ = berthd::fuzzing::container_name(&m, &pod_meta);
    if let Ok(Some(p)) =
        berthd::fuzzing::container_log_path(&pod_cfg.log_directory, &cfg.log_path, &m.name)
    {
        let dir = Path::new(&pod_cfg.log_directory);
        assert!(p.starts_with(dir), "log path {p:?} outside {dir:?}");
        let rel = p.strip_prefix(dir).expect("prefix");
        assert!(
            rel.components().all(|c| matches!(c, Component::Normal(_))),
            "log path {p:?} climbs out of {dir:?}"
        );
    }
    check_cgroups(
        pod_cfg
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.as_str())
            .unwrap_or(""),
        "container1",
    );
    let img = image();
    if let Ok(sig) = spec::stop_signal(&cfg, &img) {
        assert!((1..=64).contains(&sig), "stop signal {sig}");
    }
    confine_container(&mut cfg);
    let pod = PodContext {
        sandbox_id: "sandbox1",
        config: &pod_cfg,
        netns: Some(Path::new("/var/run/netns/fuzz")),
        ipc_ns: Some(Path::new("/proc/4242/ns/ipc")),
        uts_ns: Some(Path::new("/proc/4242/ns/uts")),
        pid_ns: Some(Path::new("/proc/4242/ns/pid")),
        resolv_conf: None,
        hostname_file: None,
        hosts_file: None,
        shm: None,
    };
    let Ok(doc) = spec::container_spec("container1", &cfg, &pod, &img, &dirs().rootfs, &opts())
    else {
        return;
    };
    let cwd = doc["process"]["cwd"].as_str().expect("cwd");
    assert!(cwd.starts_with('/'), "cwd {cwd:?}");
    for mount in doc["mounts"].as_array().expect("mounts") {
        let dest = mount["destination"].as_str().expect("destination");
        assert!(dest.starts_with('/'), "mount destination {dest:?}");
    }
    for set in ["bounding", "effective", "permitted"] {
        for c in doc["process"]["capabilities"][set]
            .as_array()
            .expect("caps")
        {
            let c = c.as_str().expect("cap");
            assert!(KNOWN_CAPS.contains(&c), "unknown capability {c:?} granted");
        }
    }
    serde_json::to_vec(&doc).expect("the spec serialises");
}

fuzz_target!(
    init: berth_fuzz::seeds_init("cri_requests", seeds::cri_requests),
    |data: &[u8]| {
        let Some((&kind, body)) = data.split_first() else {
            return;
        };
        match kind % 4 {
            0 => {
                if let Ok(req) = cri::RunPodSandboxRequest::decode(body) {
                    run_pod_sandbox(req);
                }
            }
            1 => {
                if let Ok(req) = cri::CreateContainerRequest::decode(body) {
                    create_container(req);
                }
            }
            2 => {
                if let Ok(req) = cri::UpdateContainerResourcesRequest::decode(body) {
                    if let Some(r) = &req.linux {
                        let _ = spec::linux_resources("container1", r, &opts());
                    }
                }
            }
            _ => {
                if let Ok(req) = cri::ExecRequest::decode(body) {
                    let _ = spec::parse_signal(req.cmd.first().map(String::as_str).unwrap_or(""));
                }
            }
        }
    }
);
