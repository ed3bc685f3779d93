//! Unit tests of the CRI spec mapping, by concern. Most assert on the
//! spec as runc reads it: the typed spec serialised to JSON.

use super::container::host_hostname;
use super::mounts::{check_propagation, mount_of, BindMount};
use super::*;
use crate::cri::seccomp;
use crate::tasks::spec::{ContainerConfig as ImageConfig, DEFAULT_CAPS};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;

mod mounts;
mod resources;
mod runc;
mod security;

/// The typed spec of [`super::container_spec`] as config.json reads, the
/// capability sets sorted (oci-spec holds them as sets).
fn container_spec(
    id: &str,
    cfg: &cri::ContainerConfig,
    pod: &PodContext,
    image: &ImageConfig,
    rootfs: &Path,
    opts: &SpecOptions,
) -> Result<Value, SpecError> {
    let spec = super::container_spec(id, cfg, pod, image, rootfs, opts)?;
    let mut v = serde_json::to_value(&spec).unwrap();
    if let Some(caps) = v["process"]
        .get_mut("capabilities")
        .and_then(Value::as_object_mut)
    {
        for set in caps.values_mut() {
            if let Value::Array(a) = set {
                a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
            }
        }
    }
    Ok(v)
}

/// `names`, sorted: capability sets compare without order.
fn sorted(names: &[&str]) -> Vec<String> {
    let mut v = s(names);
    v.sort();
    v
}

pub(super) fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// A rootfs with busybox-like /etc/passwd and /etc/group.
fn rootfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
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
    dir
}

fn image(entry: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
    ImageConfig {
        entrypoint: entry.map(s),
        cmd: cmd.map(s),
        env: Some(s(&["PATH=/usr/bin:/bin", "IMG=1"])),
        ..Default::default()
    }
}

fn busybox() -> ImageConfig {
    image(None, Some(&["sh"]))
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
            ..Default::default()
        }),
        ..Default::default()
    }
}

const NET: &str = "/var/run/netns/test";
const IPC: &str = "/proc/4242/ns/ipc";
const UTS: &str = "/proc/4242/ns/uts";
const PID: &str = "/proc/4242/ns/pid";

pub(super) fn pod(config: &cri::PodSandboxConfig) -> PodContext<'_> {
    PodContext {
        sandbox_id: "sb1",
        config,
        netns: Some(Path::new(NET)),
        ipc_ns: Some(Path::new(IPC)),
        uts_ns: Some(Path::new(UTS)),
        pid_ns: Some(Path::new(PID)),
        resolv_conf: None,
        hostname_file: None,
        hosts_file: None,
        shm: None,
    }
}

fn opts() -> SpecOptions {
    SpecOptions {
        all_capabilities: Some(s(KNOWN_CAPS)),
        swap_controller: true,
        hugetlb_controller: true,
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
        ..Default::default()
    }
}

pub(super) fn with_sc(
    mut c: cri::ContainerConfig,
    f: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
) -> cri::ContainerConfig {
    let linux = c.linux.get_or_insert_with(Default::default);
    f(linux.security_context.get_or_insert_with(Default::default));
    c
}

fn build(c: &cri::ContainerConfig, img: &ImageConfig) -> Result<Value, SpecError> {
    let pc = pod_config();
    let root = rootfs();
    container_spec("c1", c, &pod(&pc), img, root.path(), &opts())
}

fn dests(spec: &Value) -> Vec<String> {
    spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap().to_string())
        .collect()
}

fn mount<'a>(spec: &'a Value, dest: &str) -> &'a Value {
    spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == dest)
        .unwrap_or_else(|| panic!("no mount at {dest}"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn ns_types(spec: &Value) -> Vec<(String, Option<String>)> {
    spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["type"].as_str().unwrap().to_string(),
                n["path"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn invalid<T: std::fmt::Debug>(r: Result<T, SpecError>) -> String {
    match r {
        Err(SpecError::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// The same default spec, read through oci-spec's typed accessors.
#[test]
fn default_spec_typed() {
    use oci_spec::runtime::{Capability, LinuxNamespaceType};
    let pc = pod_config();
    let root = rootfs();
    let spec = super::container_spec(
        "c1",
        &container("app"),
        &pod(&pc),
        &busybox(),
        root.path(),
        &opts(),
    )
    .unwrap();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.args().as_deref(), Some(&s(&["sh"])[..]));
    assert_eq!(p.cwd(), Path::new("/"));
    assert_eq!(p.terminal(), Some(false));
    assert_eq!(p.no_new_privileges(), Some(false));
    assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
    assert_eq!(p.user().additional_gids().as_deref(), Some(&[0, 10][..]));
    assert!(p.oom_score_adj().is_none() && p.rlimits().is_none());
    let caps = p.capabilities().as_ref().unwrap();
    let bounding = caps.bounding().as_ref().unwrap();
    assert_eq!(bounding.len(), DEFAULT_CAPS.len());
    assert!(bounding.contains(&Capability::NetBindService));
    assert!(!bounding.contains(&Capability::SysAdmin));
    assert_eq!(caps.effective(), caps.bounding());
    assert!(caps.ambient().is_none());
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
    assert_eq!(spec.hostname().as_deref(), Some("pod-host"));
    let l = spec.linux().as_ref().unwrap();
    assert_eq!(
        l.cgroups_path().as_deref(),
        Some(Path::new("/kubepods/besteffort/poduid-1/c1"))
    );
    let ns: Vec<_> = l
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| (n.typ(), n.path().clone()))
        .collect();
    assert_eq!(
        ns,
        [
            (LinuxNamespaceType::Network, Some(PathBuf::from(NET))),
            (LinuxNamespaceType::Ipc, Some(PathBuf::from(IPC))),
            (LinuxNamespaceType::Uts, Some(PathBuf::from(UTS))),
            (LinuxNamespaceType::Pid, Some(PathBuf::from(PID))),
            (LinuxNamespaceType::Mount, None),
        ]
    );
    assert!(l.seccomp().is_none() && l.devices().is_none());
    let rules = l.resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert!(!rules[0].allow());
    let a = spec.annotations().as_ref().unwrap();
    assert_eq!(a[ANNOTATION_SANDBOX_ID], "sb1");
    assert_eq!(a[ANNOTATION_CONTAINER_TYPE], "container");
}

#[test]
fn default_spec_of_a_busybox_image() {
    let spec = build(&container("app"), &busybox()).unwrap();
    let p = &spec["process"];
    assert_eq!(strs(&p["args"]), ["sh"]);
    assert_eq!(p["cwd"], "/");
    assert_eq!(p["terminal"], false);
    assert_eq!(p["noNewPrivileges"], false);
    assert_eq!(
        p["user"],
        json!({"uid": 0, "gid": 0, "additionalGids": [0, 10]})
    );
    assert!(p.get("oomScoreAdj").is_none());
    assert!(p.get("rlimits").is_none());
    assert!(p.get("apparmorProfile").is_none());
    let env = strs(&p["env"]);
    assert!(env.contains(&"PATH=/usr/bin:/bin".to_string()));
    assert!(env.contains(&"HOSTNAME=pod-host".to_string()));
    assert!(env.contains(&"IMG=1".to_string()));
    assert_eq!(strs(&p["capabilities"]["bounding"]), sorted(DEFAULT_CAPS));
    assert_eq!(strs(&p["capabilities"]["effective"]), sorted(DEFAULT_CAPS));
    assert!(p["capabilities"].get("ambient").is_none());

    assert_eq!(spec["root"], json!({"path": "rootfs", "readonly": false}));
    assert_eq!(spec["hostname"], "pod-host");
    assert_eq!(
        dests(&spec),
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup"
        ]
    );
    assert_eq!(mount(&spec, "/sys")["options"][3], "ro");
    assert_eq!(mount(&spec, "/sys/fs/cgroup")["options"][4], "ro");
    assert_eq!(mount(&spec, "/dev/shm")["type"], "tmpfs");

    let l = &spec["linux"];
    assert_eq!(l["cgroupsPath"], "/kubepods/besteffort/poduid-1/c1");
    assert_eq!(
        ns_types(&spec),
        [
            ("network".to_string(), Some(NET.to_string())),
            ("ipc".to_string(), Some(IPC.to_string())),
            ("uts".to_string(), Some(UTS.to_string())),
            ("pid".to_string(), Some(PID.to_string())),
            ("mount".to_string(), None),
        ]
    );
    assert_eq!(strs(&l["maskedPaths"]), DEFAULT_MASKED_PATHS);
    assert_eq!(strs(&l["readonlyPaths"]), DEFAULT_READONLY_PATHS);
    assert!(l.get("seccomp").is_none(), "no profile asked: unconfined");
    assert!(l.get("devices").is_none());
    let rules = l["resources"]["devices"].as_array().unwrap();
    assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}));
    assert!(rules
        .contains(&json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})));
    assert!(rules.contains(&json!({"allow": true, "type": "c", "major": 136, "access": "rwm"})));

    let a = &spec["annotations"];
    assert_eq!(a[ANNOTATION_CONTAINER_TYPE], "container");
    assert_eq!(a[ANNOTATION_SANDBOX_ID], "sb1");
    assert_eq!(a[ANNOTATION_CONTAINER_NAME], "app");
    assert_eq!(a[ANNOTATION_IMAGE_NAME], "docker.io/library/busybox:latest");
    assert_eq!(a[ANNOTATION_SANDBOX_NAME], "web");
    assert_eq!(a[ANNOTATION_SANDBOX_NAMESPACE], "default");
    assert_eq!(a[ANNOTATION_SANDBOX_UID], "uid-1");
}

#[test]
fn command_and_args_follow_docker() {
    let img = image(Some(&["/entry", "-x"]), Some(&["default-cmd"]));
    let run = |cmd: &[&str], args: &[&str], img: &ImageConfig| {
        let mut c = container("a");
        c.command = s(cmd);
        c.args = s(args);
        build(&c, img).map(|s| strs(&s["process"]["args"]))
    };
    assert_eq!(
        run(&[], &[], &img).unwrap(),
        ["/entry", "-x", "default-cmd"]
    );
    assert_eq!(run(&[], &["y"], &img).unwrap(), ["/entry", "-x", "y"]);
    // A CRI command replaces the entrypoint, and the image's Cmd goes too.
    assert_eq!(run(&["/bin/echo"], &[], &img).unwrap(), ["/bin/echo"]);
    assert_eq!(
        run(&["/bin/echo"], &["hi"], &img).unwrap(),
        ["/bin/echo", "hi"]
    );
    assert_eq!(run(&[], &[], &busybox()).unwrap(), ["sh"]);
    // An Entrypoint of [""] means none.
    let blank = image(Some(&[""]), Some(&["sh"]));
    assert_eq!(run(&[], &[], &blank).unwrap(), ["sh"]);
    let e = invalid(run(&[], &[], &image(None, None)));
    assert!(
        e.contains("container \"a\"") && e.contains("command"),
        "{e}"
    );
}

#[test]
fn env_overrides_and_working_dir() {
    let mut c = container("a");
    c.envs = vec![
        cri::KeyValue {
            key: "IMG".into(),
            value: "2".into(),
        },
        cri::KeyValue {
            key: "NEW".into(),
            value: "x=y".into(),
        },
        cri::KeyValue {
            key: "HOSTNAME".into(),
            value: "mine".into(),
        },
    ];
    c.tty = true;
    let mut img = busybox();
    img.working_dir = Some("/srv".into());
    let spec = build(&c, &img).unwrap();
    let env = strs(&spec["process"]["env"]);
    assert!(env.contains(&"IMG=2".to_string()));
    assert!(!env.contains(&"IMG=1".to_string()));
    assert!(env.contains(&"NEW=x=y".to_string()));
    assert!(env.contains(&"HOSTNAME=mine".to_string()));
    assert!(env.contains(&"TERM=xterm".to_string()));
    assert_eq!(env.iter().filter(|e| e.starts_with("HOSTNAME=")).count(), 1);
    assert_eq!(spec["process"]["cwd"], "/srv");
    assert_eq!(spec["process"]["terminal"], true);
    c.working_dir = "/work".into();
    assert_eq!(build(&c, &img).unwrap()["process"]["cwd"], "/work");
    c.working_dir = "rel".into();
    assert!(invalid(build(&c, &img)).contains("working_dir"));
    // No image PATH: the default one.
    let spec = build(
        &container("a"),
        &ImageConfig {
            cmd: Some(s(&["sh"])),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(strs(&spec["process"]["env"]).contains(&crate::tasks::spec::DEFAULT_PATH.to_string()));
}

#[test]
fn users_resolve_with_supplemental_groups() {
    let user = |c: &cri::ContainerConfig, img_user: &str| {
        let mut img = busybox();
        img.user = Some(img_user.into());
        build(c, &img).map(|s| s["process"]["user"].clone())
    };
    let by_name = with_sc(container("a"), |sc| {
        sc.run_as_username = "app".into();
        sc.supplemental_groups = vec![3000, 44];
    });
    assert_eq!(
        user(&by_name, "").unwrap(),
        json!({"uid": 1000, "gid": 1000, "additionalGids": [1000, 2000, 44, 3000]})
    );
    // Numeric uid with a passwd entry: its primary group and memberships.
    let by_uid = with_sc(container("a"), |sc| {
        sc.run_as_user = Some(cri::Int64Value { value: 1000 });
        sc.run_as_group = Some(cri::Int64Value { value: 50 });
    });
    assert_eq!(
        user(&by_uid, "").unwrap(),
        json!({"uid": 1000, "gid": 50, "additionalGids": [50, 2000, 44]})
    );
    // A uid the image does not know: gid 0.
    let unknown = with_sc(container("a"), |sc| {
        sc.run_as_user = Some(cri::Int64Value { value: 4242 });
    });
    assert_eq!(
        user(&unknown, "").unwrap(),
        json!({"uid": 4242, "gid": 0, "additionalGids": [0]})
    );
    // The image's User, by name and with a group name.
    assert_eq!(
        user(&container("a"), "app:staff").unwrap(),
        json!({"uid": 1000, "gid": 50, "additionalGids": [50, 2000, 44]})
    );
    assert_eq!(user(&container("a"), "1:1").unwrap()["uid"], 1);
    // The CRI user beats the image's.
    assert_eq!(user(&by_uid, "daemon").unwrap()["uid"], 1000);
    // Strict: no /etc/group memberships.
    let strict = with_sc(by_name.clone(), |sc| {
        sc.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
    });
    assert_eq!(
        user(&strict, "").unwrap()["additionalGids"],
        json!([1000, 3000, 44])
    );
    // Errors name the field.
    let e = invalid(user(
        &with_sc(container("a"), |sc| sc.run_as_username = "nobody".into()),
        "",
    ));
    assert!(e.contains("run_as_username") && e.contains("nobody"), "{e}");
    let e = invalid(user(
        &with_sc(container("a"), |sc| {
            sc.run_as_group = Some(cri::Int64Value { value: 5 })
        }),
        "",
    ));
    assert!(e.contains("run_as_group"), "{e}");
    let e = invalid(user(
        &with_sc(container("a"), |sc| {
            sc.run_as_user = Some(cri::Int64Value { value: -1 })
        }),
        "",
    ));
    assert!(e.contains("run_as_user"), "{e}");
    assert!(invalid(user(&container("a"), "ghost")).contains("ghost"));
    assert!(invalid(user(&container("a"), "app:nogroup")).contains("nogroup"));
}

#[test]
fn user_lookup_does_not_follow_symlinks_out_of_the_rootfs() {
    let root = rootfs();
    std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.path().join("etc/passwd")).unwrap();
    let pc = pod_config();
    let c = with_sc(container("a"), |sc| sc.run_as_username = "root".into());
    let r = container_spec("c1", &c, &pod(&pc), &busybox(), root.path(), &opts());
    assert!(invalid(r).contains("root"));
}

#[test]
fn host_namespaces() {
    let mut pc = pod_config();
    pc.hostname = String::new();
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
    let root = rootfs();
    let spec = container_spec(
        "c1",
        &container("a"),
        &ctx,
        &busybox(),
        root.path(),
        &opts(),
    )
    .unwrap();
    assert_eq!(ns_types(&spec), [("mount".to_string(), None)]);
    assert!(spec.get("hostname").is_none());
    let host = host_hostname();
    assert!(strs(&spec["process"]["env"]).contains(&format!("HOSTNAME={host}")));

    // Container PID mode.
    let c = with_sc(container("a"), |sc| {
        sc.namespace_options = Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Container as i32,
            ..Default::default()
        })
    });
    let spec = build(&c, &busybox()).unwrap();
    assert!(ns_types(&spec).contains(&("pid".to_string(), None)));
    // POD mode without a pod namespace: a new one.
    let pc = pod_config();
    let ctx = PodContext {
        pid_ns: None,
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
    assert!(ns_types(&spec).contains(&("pid".to_string(), None)));
    // TARGET is not supported yet; user namespaces neither.
    let c = with_sc(container("a"), |sc| {
        sc.namespace_options = Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Target as i32,
            target_id: "other".into(),
            ..Default::default()
        })
    });
    assert!(invalid(build(&c, &busybox())).contains("namespace_options.pid"));
    let c = with_sc(container("a"), |sc| {
        sc.namespace_options = Some(cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace::default()),
            ..Default::default()
        })
    });
    assert!(invalid(build(&c, &busybox())).contains("userns"));
    // cgroup v2: a cgroup namespace.
    let o = SpecOptions {
        cgroup_v2: true,
        ..opts()
    };
    let pc = pod_config();
    let spec = container_spec(
        "c1",
        &container("a"),
        &pod(&pc),
        &busybox(),
        root.path(),
        &o,
    )
    .unwrap();
    assert!(ns_types(&spec).contains(&("cgroup".to_string(), None)));
}

#[test]
fn cgroup_paths() {
    use CgroupDriver::*;
    assert_eq!(
        cgroups_path(Cgroupfs, "", "sb", "c1").unwrap(),
        "/berth/pods/sb/c1"
    );
    assert_eq!(
        cgroups_path(Cgroupfs, "/kubepods/burstable/pod1/", "sb", "c1").unwrap(),
        "/kubepods/burstable/pod1/c1"
    );
    assert_eq!(
        cgroups_path(Cgroupfs, "kubepods/pod1", "sb", "c1").unwrap(),
        "/kubepods/pod1/c1"
    );
    assert!(cgroups_path(Cgroupfs, "/a/../b", "sb", "c1").is_err());
    assert!(cgroups_path(Cgroupfs, "/a", "sb", "x/y").is_err());
    assert!(cgroups_path(Cgroupfs, "/a", "sb", "").is_err());
    assert_eq!(
        cgroups_path(Systemd, "kubepods-burstable-pod1.slice", "sb", "c1").unwrap(),
        "kubepods-burstable-pod1.slice:berth:c1"
    );
    assert_eq!(
        cgroups_path(
            Systemd,
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice",
            "sb",
            "c1"
        )
        .unwrap(),
        "kubepods-burstable-pod1.slice:berth:c1"
    );
    assert_eq!(
        cgroups_path(Systemd, "", "sb", "c1").unwrap(),
        "berth.slice:berth:c1"
    );
    assert!(cgroups_path(Systemd, "/kubepods/pod1", "sb", "c1").is_err());
}

#[test]
fn signals_parse() {
    for (s, n) in [
        ("SIGTERM", 15),
        ("TERM", 15),
        ("term", 15),
        ("15", 15),
        ("SIGKILL", 9),
        ("SIGQUIT", 3),
        ("SIGUSR1", 10),
        ("SIGWINCH", 28),
        ("SIGRTMIN", 34),
        ("SIGRTMIN+3", 37),
        ("RTMIN+1", 35),
        ("SIGRTMAX", 64),
        ("SIGRTMAX-2", 62),
        ("SIGRTMINPLUS3", 37),
        ("SIGRTMAXMINUS1", 63),
    ] {
        assert_eq!(parse_signal(s), Some(n), "{s}");
    }
    for s in [
        "",
        "0",
        "65",
        "-1",
        "SIGFOO",
        "SIGRTMIN+40",
        "SIGRTMAX+1",
        "RTMINX",
    ] {
        assert_eq!(parse_signal(s), None, "{s}");
    }
    // Every CRI enum name maps to a signal.
    for v in 1..=65 {
        let sig = cri::Signal::try_from(v).unwrap();
        assert!(
            parse_signal(sig.as_str_name()).is_some(),
            "{}",
            sig.as_str_name()
        );
    }
    let mut img = busybox();
    assert_eq!(stop_signal(&container("a"), &img).unwrap(), 15);
    img.stop_signal = Some("SIGQUIT".into());
    assert_eq!(stop_signal(&container("a"), &img).unwrap(), 3);
    let mut c = container("a");
    c.stop_signal = cri::Signal::Sigusr1 as i32;
    assert_eq!(stop_signal(&c, &img).unwrap(), 10);
    img.stop_signal = Some("NOPE".into());
    assert!(stop_signal(&container("a"), &img).is_err());
}

#[test]
fn spec_serializes_in_runc_field_names() {
    let spec = build(&container("a"), &busybox()).unwrap();
    let text = serde_json::to_string(&spec).unwrap();
    for key in [
        "\"ociVersion\"",
        "\"cgroupsPath\"",
        "\"noNewPrivileges\"",
        "\"maskedPaths\"",
    ] {
        assert!(text.contains(key), "{key}");
    }
}
