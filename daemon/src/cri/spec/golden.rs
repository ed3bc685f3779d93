//! Golden files: the config.json the builders produce for a representative
//! set of CRI configs and for a native task, compared with
//! `daemon/tests/golden/<case>.json`. They pin the serialised spec across
//! refactors of the builder; a difference must be an intended change.
//! `BERTH_UPDATE_GOLDEN=1 cargo test -p berthd --lib golden` rewrites them.
//!
//! Normalised before comparing: temporary directories become `<tmp>`, and
//! the capability lists are sorted (they are sets; their order in
//! config.json means nothing to the runtime, and oci-spec holds them as
//! `HashSet`s).
//!
//! Intended changes since the JSON builders: `native_task` gained
//! `process.user.additionalGids` (the Tasks API resolves users with the
//! CRI resolver now, supplementary groups included, as containerd does).

use std::path::{Path, PathBuf};

use berth_api::runtime::v1 as cri;
use serde_json::Value;

use super::tests::{pod, s, with_sc as sc};
use super::*;
use crate::tasks::spec::ContainerConfig as ImageConfig;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("rootfs/etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\n\
             daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
             app:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("group"),
            "root:x:0:\nwheel:x:10:root\napp:x:1000:\nextra:x:2000:app,daemon\nvideo:x:44:app\nstaff:x:50:\n",
        )
        .unwrap();
        let pod = dir.path().join("pod");
        std::fs::create_dir_all(pod.join("shm")).unwrap();
        for f in ["hosts", "resolv.conf", "hostname"] {
            std::fs::write(pod.join(f), "x\n").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("vol/a")).unwrap();
        std::fs::create_dir_all(dir.path().join("vol/b")).unwrap();
        std::fs::write(
            dir.path().join("seccomp.json"),
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,"architectures":["SCMP_ARCH_X86_64"],"syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"},{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap();
        Fixture { dir }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

fn image() -> ImageConfig {
    ImageConfig {
        entrypoint: Some(s(&["/entry", "-x"])),
        cmd: Some(s(&["default-cmd"])),
        env: Some(s(&["PATH=/usr/bin:/bin", "IMG=1"])),
        working_dir: Some("/srv".into()),
        ..Default::default()
    }
}

fn pod_config() -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "pod-host".into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/besteffort/poduid-1".into(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn opts() -> SpecOptions {
    SpecOptions {
        all_capabilities: Some(s(KNOWN_CAPS)),
        swap_controller: true,
        hugetlb_controller: true,
        privileged_without_host_devices: true,
        ..Default::default()
    }
}

fn container(name: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: "docker.io/library/busybox:latest".into(),
            ..Default::default()
        }),
        annotations: [("user.annotation".to_string(), "v".to_string())].into(),
        ..Default::default()
    }
}

fn profile(t: cri::security_profile::ProfileType, r: &str) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: r.into(),
    })
}

/// Replaces the fixture's directory and sorts capability sets.
fn normalise(mut v: Value, tmp: &Path) -> Value {
    fn walk(v: &mut Value, tmp: &str) {
        match v {
            Value::String(s) if s.contains(tmp) => *s = s.replace(tmp, "<tmp>"),
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, tmp)),
            Value::Object(o) => o.values_mut().for_each(|x| walk(x, tmp)),
            _ => {}
        }
    }
    let real = tmp.canonicalize().unwrap();
    walk(&mut v, &real.to_string_lossy());
    walk(&mut v, &tmp.to_string_lossy());
    if let Some(caps) = v
        .get_mut("process")
        .and_then(|p| p.get_mut("capabilities"))
        .and_then(Value::as_object_mut)
    {
        for set in caps.values_mut() {
            if let Value::Array(a) = set {
                a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
            }
        }
    }
    v
}

fn check(name: &str, spec: Value, tmp: &Path) {
    let got = normalise(spec, tmp);
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    if std::env::var_os("BERTH_UPDATE_GOLDEN").is_some() {
        let mut body = serde_json::to_string_pretty(&got).unwrap();
        body.push('\n');
        std::fs::write(&file, body).unwrap();
        return;
    }
    let want: Value = serde_json::from_slice(
        &std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())),
    )
    .unwrap();
    assert!(
        got == want,
        "{name}: the spec differs from {}:\n{}",
        file.display(),
        serde_json::to_string_pretty(&got).unwrap()
    );
}

fn to_json<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap()
}

/// Builds the CRI container spec of `c` in the default pod.
fn cri_case(name: &str, c: &cri::ContainerConfig, o: &SpecOptions) {
    let fx = Fixture::new();
    let pc = pod_config();
    let spec = container_spec("c1", c, &pod(&pc), &image(), &fx.rootfs(), o).unwrap();
    check(name, to_json(&spec), fx.dir.path());
}

#[test]
fn golden_default_and_image_process() {
    cri_case("default", &container("app"), &opts());
    // Working dir, env and args from the CRI over the image's.
    let mut c = container("app");
    c.args = s(&["a1", "a2"]);
    c.envs = vec![
        cri::KeyValue {
            key: "IMG".into(),
            value: "2".into(),
        },
        cri::KeyValue {
            key: "NEW".into(),
            value: "x=y".into(),
        },
    ];
    c.working_dir = "/work".into();
    cri_case("process_overrides", &c, &opts());
    let mut c = container("app");
    c.command = s(&["/bin/echo"]);
    c.tty = true;
    c.stdin = true;
    c.stdin_once = true;
    cri_case("tty_stdin_command", &c, &opts());
}

#[test]
fn golden_security() {
    use cri::security_profile::ProfileType;
    let c = sc(container("app"), |sc| {
        sc.privileged = true;
        sc.readonly_rootfs = true;
    });
    cri_case("privileged", &c, &opts());
    let c = sc(container("app"), |sc| {
        sc.seccomp = profile(ProfileType::RuntimeDefault, "");
        sc.no_new_privs = true;
    });
    cri_case("seccomp_runtime_default", &c, &opts());
    let fx = Fixture::new();
    let path = fx.p("seccomp.json");
    let c = sc(container("app"), |sc| {
        sc.seccomp = profile(ProfileType::Localhost, &path.to_string_lossy());
    });
    let pc = pod_config();
    let spec = container_spec("c1", &c, &pod(&pc), &image(), &fx.rootfs(), &opts()).unwrap();
    check("seccomp_localhost", to_json(&spec), fx.dir.path());
    let c = sc(container("app"), |sc| {
        sc.capabilities = Some(cri::Capability {
            add_capabilities: s(&["NET_ADMIN", "CAP_SYS_TIME"]),
            drop_capabilities: s(&["CHOWN", "KILL"]),
            add_ambient_capabilities: s(&["NET_BIND_SERVICE"]),
        });
    });
    cri_case("capabilities", &c, &opts());
    let c = sc(container("app"), |sc| {
        sc.masked_paths = s(&["/proc/one"]);
        sc.readonly_paths = s(&["/proc/two", "/proc/three"]);
    });
    cri_case("masked_readonly_paths", &c, &opts());
    let c = sc(container("app"), |sc| {
        sc.apparmor = profile(ProfileType::RuntimeDefault, "");
    });
    cri_case(
        "apparmor_default",
        &c,
        &SpecOptions {
            apparmor: true,
            apparmor_default_profile: Some("berth-default".into()),
            ..opts()
        },
    );
}

#[test]
fn golden_users() {
    let c = sc(container("app"), |sc| {
        sc.run_as_user = Some(cri::Int64Value { value: 1000 });
        sc.run_as_group = Some(cri::Int64Value { value: 50 });
        sc.supplemental_groups = vec![3000, 44];
    });
    cri_case("run_as_user_group", &c, &opts());
    let c = sc(container("app"), |sc| {
        sc.run_as_username = "app".into();
    });
    cri_case("run_as_username", &c, &opts());
    let c = sc(container("app"), |sc| {
        sc.run_as_user = Some(cri::Int64Value { value: 1 });
        sc.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
    });
    cri_case("supplemental_strict", &c, &opts());
    let fx = Fixture::new();
    let pc = pod_config();
    let mut img = image();
    img.user = Some("app:video".into());
    let spec = container_spec(
        "c1",
        &container("app"),
        &pod(&pc),
        &img,
        &fx.rootfs(),
        &opts(),
    )
    .unwrap();
    check("image_user", to_json(&spec), fx.dir.path());
}

#[test]
fn golden_mounts_devices_files() {
    let fx = Fixture::new();
    let pc = pod_config();
    let (hosts, resolv, hostname, shm) = (
        fx.p("pod/hosts"),
        fx.p("pod/resolv.conf"),
        fx.p("pod/hostname"),
        fx.p("pod/shm"),
    );
    let ctx = PodContext {
        hosts_file: Some(&hosts),
        resolv_conf: Some(&resolv),
        hostname_file: Some(&hostname),
        shm: Some(&shm),
        ..pod(&pc)
    };
    let mut c = sc(container("app"), |sc| sc.readonly_rootfs = true);
    let m = |cp: &str, hp: PathBuf, ro: bool| cri::Mount {
        container_path: cp.into(),
        host_path: hp.to_string_lossy().into(),
        readonly: ro,
        propagation: cri::MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    };
    c.mounts = vec![
        m("/data/sub", fx.p("vol/a"), false),
        m("/data", fx.p("vol/b"), true),
        m("/etc/hosts", fx.p("pod/resolv.conf"), true),
    ];
    c.devices = vec![cri::Device {
        container_path: "/dev/mynull".into(),
        host_path: "/dev/null".into(),
        permissions: "rw".into(),
    }];
    let spec = container_spec("c1", &c, &ctx, &image(), &fx.rootfs(), &opts()).unwrap();
    check("mounts_devices_pod_files", to_json(&spec), fx.dir.path());
}

#[test]
fn golden_resources_sysctls_namespaces() {
    let fx = Fixture::new();
    let mut c = container("app");
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 1000,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "50000000".to_string())].into(),
            memory_swap_limit_in_bytes: 0,
        }),
        security_context: None,
    });
    let mut pc = pod_config();
    let l = pc.linux.as_mut().unwrap();
    l.sysctls = [
        ("net.ipv4.ip_forward".to_string(), "1".to_string()),
        ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
    ]
    .into();
    let o = SpecOptions {
        cgroup_v2: true,
        ..opts()
    };
    let spec = container_spec("c1", &c, &pod(&pc), &image(), &fx.rootfs(), &o).unwrap();
    check("resources_sysctls_v2", to_json(&spec), fx.dir.path());

    // Host network, IPC and PID; systemd cgroups.
    let mut pc = pod_config();
    pc.linux.as_mut().unwrap().cgroup_parent = "kubepods-besteffort-poduid1.slice".into();
    pc.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            pid: cri::NamespaceMode::Node as i32,
            ipc: cri::NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let ctx = PodContext {
        netns: None,
        ipc_ns: None,
        uts_ns: None,
        pid_ns: None,
        ..pod(&pc)
    };
    let o = SpecOptions {
        cgroup_driver: CgroupDriver::Systemd,
        ..opts()
    };
    let spec = container_spec("c1", &container("app"), &ctx, &image(), &fx.rootfs(), &o).unwrap();
    check("host_namespaces_systemd", to_json(&spec), fx.dir.path());
}

/// The pause container, configured as `cri::sandbox` does.
#[test]
fn golden_sandbox_pause() {
    let fx = Fixture::new();
    let pc = pod_config();
    let cfg = crate::cri::sandbox::pause_config(&pc, "registry.k8s.io/pause:3.10");
    let shm = fx.p("pod/shm");
    let ctx = PodContext {
        pid_ns: None,
        shm: Some(&shm),
        ..pod(&pc)
    };
    let img = ImageConfig {
        entrypoint: Some(s(&["/pause"])),
        ..Default::default()
    };
    let spec = container_spec("p1", &cfg, &ctx, &img, &fx.rootfs(), &opts()).unwrap();
    check("sandbox_pause", to_json(&spec), fx.dir.path());
}

/// The native Tasks API's spec (`berthctl run`).
#[test]
fn golden_native_task() {
    let fx = Fixture::new();
    let rec = crate::tasks::TaskRecord {
        id: "0123456789abcdef0123".into(),
        name: "busybox-012345".into(),
        sandbox_id: "0123456789abcdef0123".into(),
        image: "docker.io/library/busybox:latest".into(),
        args: s(&["sh", "-c", "echo hi"]),
        tty: true,
        auto_remove: false,
        status: crate::tasks::TaskStatus::Creating,
        pid: 0,
        exit_code: None,
        created_at: 1,
        started_at: 0,
        finished_at: 0,
        reason: String::new(),
        bundle: fx.p("bundle"),
        log_path: fx.p("log"),
        stdio: crate::shim::StdioScheme::CriLog,
        snapshot: "0123456789abcdef0123".into(),
        shim_address: String::new(),
        shim_binary: PathBuf::new(),
        runtime_root: "/run/berth/runc".into(),
        runtime: Default::default(),
        kind: crate::tasks::TaskKind::Native,
        keep_log: false,
        stdin: false,
        cgroups_path: "/berth/0123456789abcdef0123".into(),
        cri: None,
    };
    let mut img = image();
    img.user = Some("app".into());
    let spec = crate::tasks::spec::task_spec(&rec, &img, &s(&["A=b"]), &fx.rootfs()).unwrap();
    check("native_task", to_json(&spec), fx.dir.path());
}
