//! The OCI runtime spec (config.json) of a CRI container, built from its
//! `runtime.v1` ContainerConfig, its pod's config and namespaces, and its
//! image's config, the way containerd's CRI plugin builds it: containerd's
//! default Linux spec (mounts, capabilities, masked paths, device rules),
//! the process from the image and the CRI command, the user resolved in the
//! image's /etc/passwd and /etc/group, the pod's namespaces, resources,
//! sysctls, seccomp (berth's default profile, see [`super::seccomp`]) and
//! AppArmor, and the CRI annotations the shim groups containers by.
//!
//! The spec is plain JSON (`serde_json::Value`) in runc 1.1's config.json
//! format; `root.path` is `rootfs`, relative to the bundle.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_api::runtime::v1 as cri;
use serde_json::{json, Map, Value};
use tracing::{debug, warn};

use super::seccomp;
use crate::tasks::spec::{
    environment, read_rootfs_file, ContainerConfig as ImageConfig, DEFAULT_CAPS,
};

/// Annotation keys containerd's CRI plugin sets on every container; the
/// shim groups a pod's containers by the sandbox id.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const ANNOTATION_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
pub const ANNOTATION_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const ANNOTATION_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const ANNOTATION_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";

/// How cgroups are named for runc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupDriver {
    /// Paths in the cgroupfs hierarchy (`/parent/id`).
    #[default]
    Cgroupfs,
    /// systemd units (`slice:berth:id`). Not exercised on the dev host
    /// (PID 1 is not systemd there).
    Systemd,
}

/// What the pod gives its containers.
#[derive(Debug, Clone, Copy)]
pub struct PodContext<'a> {
    pub sandbox_id: &'a str,
    pub config: &'a cri::PodSandboxConfig,
    /// Pinned namespace files; None = the host's namespace (host
    /// network/ipc) for net/ipc/uts.
    pub netns: Option<&'a Path>,
    pub ipc_ns: Option<&'a Path>,
    pub uts_ns: Option<&'a Path>,
    /// The pod's shared PID namespace (e.g. /proc/<pid>/ns/pid of its pause
    /// process) when the pod asks for NamespaceMode::POD and one exists;
    /// None = the container's own (CONTAINER mode) unless the pod asks for
    /// NODE (host pid: no pid namespace entry).
    pub pid_ns: Option<&'a Path>,
    /// Files bind-mounted into every container (unless the CRI config
    /// mounts that path itself). A path that does not exist is skipped.
    pub resolv_conf: Option<&'a Path>,
    pub hostname_file: Option<&'a Path>,
    pub hosts_file: Option<&'a Path>,
    /// The pod's /dev/shm (a tmpfs dir bind-mounted); None = a private
    /// tmpfs. With host IPC the host's /dev/shm is bound instead.
    pub shm: Option<&'a Path>,
}

/// Daemon-wide settings and host facts the spec depends on.
#[derive(Debug, Clone, Default)]
pub struct SpecOptions {
    pub cgroup_driver: CgroupDriver,
    /// The host has AppArmor enabled.
    pub apparmor: bool,
    /// The (already loaded) AppArmor profile `RuntimeDefault` means; None =
    /// no profile (berth loads none of its own).
    pub apparmor_default_profile: Option<String>,
    /// A privileged container does not get the host's devices.
    pub privileged_without_host_devices: bool,
    /// The host runs the unified cgroup v2 hierarchy (cgroup namespaces,
    /// `unified` resources); false = v1 or hybrid.
    pub cgroup_v2: bool,
    /// The memory controller accounts swap (memsw / memory.swap.max).
    pub swap_controller: bool,
    /// runc can set hugetlb limits (a v1 hugetlb hierarchy, or v2 with the
    /// hugetlb controller).
    pub hugetlb_controller: bool,
    /// A floor for oomScoreAdj on top of the daemon's own
    /// /proc/self/oom_score_adj, which is always read.
    pub min_oom_score_adj: Option<i32>,
    /// The capabilities "ALL" and privileged mean; None = the daemon's own
    /// effective set (what it can hand out).
    pub all_capabilities: Option<Vec<String>>,
}

impl SpecOptions {
    /// Options with the host facts detected (cgroup version, swap and
    /// hugetlb controllers, AppArmor).
    pub fn detect(cgroup_driver: CgroupDriver) -> Self {
        let cgroup_v2 = nix::sys::statfs::statfs("/sys/fs/cgroup")
            .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            .unwrap_or(false);
        let swap_controller = if cgroup_v2 {
            std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
                })
                .map(|g| {
                    Path::new("/sys/fs/cgroup")
                        .join(g.trim_start_matches('/'))
                        .join("memory.swap.max")
                        .exists()
                })
                .unwrap_or(false)
        } else {
            Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        };
        let hugetlb_controller = if cgroup_v2 {
            std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
                .map(|s| s.split_whitespace().any(|c| c == "hugetlb"))
                .unwrap_or(false)
        } else {
            Path::new("/sys/fs/cgroup/hugetlb").is_dir()
        };
        let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .map(|s| s.starts_with('Y'))
            .unwrap_or(false);
        SpecOptions {
            cgroup_driver,
            apparmor,
            cgroup_v2,
            swap_controller,
            hugetlb_controller,
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The CRI config asks for something invalid or unsupported; the
    /// message names the container and the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// A host path the config names (mount source, device) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The host could not be inspected (e.g. /proc unreadable).
    #[error("{0}")]
    Internal(String),
}

impl From<SpecError> for tonic::Status {
    fn from(e: SpecError) -> Self {
        match e {
            SpecError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            SpecError::NotFound(m) => tonic::Status::not_found(m),
            SpecError::Internal(m) => tonic::Status::internal(m),
        }
    }
}

/// containerd's default masked paths.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// containerd's default read-only paths.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Every capability the kernel knows, by bit number.
pub const KNOWN_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities in the daemon's effective set (/proc/self/status CapEff).
pub fn current_capabilities() -> Result<Vec<String>, SpecError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| SpecError::Internal(format!("cannot read /proc/self/status: {e}")))?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .ok_or_else(|| SpecError::Internal("no CapEff in /proc/self/status".into()))?;
    let bits = u64::from_str_radix(hex, 16)
        .map_err(|e| SpecError::Internal(format!("bad CapEff {hex:?}: {e}")))?;
    Ok(KNOWN_CAPS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1u64 << i) != 0)
        .map(|(_, c)| c.to_string())
        .collect())
}

/// The daemon's own oom_score_adj: nothing it starts can go below it
/// without CAP_SYS_RESOURCE.
pub fn own_oom_score_adj() -> Result<i32, SpecError> {
    let s = std::fs::read_to_string("/proc/self/oom_score_adj")
        .map_err(|e| SpecError::Internal(format!("cannot read /proc/self/oom_score_adj: {e}")))?;
    s.trim()
        .parse()
        .map_err(|e| SpecError::Internal(format!("bad /proc/self/oom_score_adj {s:?}: {e}")))
}

/// The cgroupsPath a container (or the pod) gets: cgroupfs ->
/// "<parent>/<id>" (always absolute, HOST.md; default parent
/// "/berth/pods/<sandbox_id>"), systemd -> "<slice>:berth:<id>" from a
/// parent like "kubepods-burstable-podX.slice" (or a path ending in one;
/// default "berth.slice").
pub fn cgroups_path(
    driver: CgroupDriver,
    parent: &str,
    sandbox_id: &str,
    id: &str,
) -> Result<String, SpecError> {
    let bad = |m: String| SpecError::InvalidArgument(m);
    if id.is_empty() || id.contains('/') || id.contains(':') || id == "." || id == ".." {
        return Err(bad(format!("cgroup name {id:?} is not a valid id")));
    }
    let parent = parent.trim();
    match driver {
        CgroupDriver::Cgroupfs => {
            let trimmed = parent.trim_end_matches('/');
            let base = if trimmed.is_empty() {
                if sandbox_id.is_empty() || sandbox_id.contains('/') {
                    return Err(bad(format!("sandbox id {sandbox_id:?} is not valid")));
                }
                format!("/berth/pods/{sandbox_id}")
            } else if trimmed.starts_with('/') {
                trimmed.to_string()
            } else {
                format!("/{trimmed}")
            };
            if base.split('/').any(|c| c == "..") {
                return Err(bad(format!(
                    "linux.cgroup_parent {parent:?} must not contain \"..\""
                )));
            }
            Ok(format!("{base}/{id}"))
        }
        CgroupDriver::Systemd => {
            let slice = parent
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default();
            let slice = if slice.is_empty() {
                "berth.slice"
            } else {
                slice
            };
            if !slice.ends_with(".slice") || slice.contains(':') {
                return Err(bad(format!(
                    "linux.cgroup_parent {parent:?} is not a systemd slice (NAME.slice), as the systemd cgroup driver needs"
                )));
            }
            Ok(format!("{slice}:berth:{id}"))
        }
    }
}

const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// Signal name or number ("SIGTERM", "TERM", "term", "15", "SIGRTMIN+3",
/// "SIGRTMAX-1", and the CRI enum's "SIGRTMINPLUS3"/"SIGRTMAXMINUS1")
/// -> its Linux number.
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let rt = |base: i32, rest: &str| -> Option<i32> {
        let n = if rest.is_empty() {
            base
        } else if let Some(k) = rest.strip_prefix('+').or_else(|| rest.strip_prefix("PLUS")) {
            base + k.parse::<i32>().ok()?
        } else if let Some(k) = rest
            .strip_prefix('-')
            .or_else(|| rest.strip_prefix("MINUS"))
        {
            base - k.parse::<i32>().ok()?
        } else {
            return None;
        };
        (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(SIGRTMIN, rest);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(SIGRTMAX, rest);
    }
    let n = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" | "IOT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "STKFLT" => 16,
        "CHLD" | "CLD" => 17,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "TTIN" => 21,
        "TTOU" => 22,
        "URG" => 23,
        "XCPU" => 24,
        "XFSZ" => 25,
        "VTALRM" => 26,
        "PROF" => 27,
        "WINCH" => 28,
        "IO" | "POLL" => 29,
        "PWR" => 30,
        "SYS" => 31,
        _ => return None,
    };
    Some(n)
}

/// The signal that stops the container: the CRI config's stop_signal, else
/// the image's StopSignal, else SIGTERM.
pub fn stop_signal(cfg: &cri::ContainerConfig, image: &ImageConfig) -> Result<i32, SpecError> {
    let name = container_name(cfg, "");
    match cri::Signal::try_from(cfg.stop_signal) {
        Ok(cri::Signal::RuntimeDefault) => {}
        Ok(sig) => {
            return parse_signal(sig.as_str_name()).ok_or_else(|| {
                SpecError::InvalidArgument(format!(
                    "container {name:?}: stop_signal {} is not a Linux signal",
                    sig.as_str_name()
                ))
            })
        }
        Err(_) => {
            return Err(SpecError::InvalidArgument(format!(
                "container {name:?}: stop_signal {} is not a known signal",
                cfg.stop_signal
            )))
        }
    }
    match image.stop_signal.as_deref().map(str::trim) {
        None | Some("") => Ok(15),
        Some(s) => parse_signal(s).ok_or_else(|| {
            SpecError::InvalidArgument(format!(
                "container {name:?}: the image's StopSignal {s:?} is not a signal"
            ))
        }),
    }
}

fn container_name<'a>(cfg: &'a cri::ContainerConfig, id: &'a str) -> &'a str {
    cfg.metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(id)
}

/// Names the container in error messages.
struct Who(String);

impl Who {
    fn invalid(&self, field: &str, msg: impl std::fmt::Display) -> SpecError {
        SpecError::InvalidArgument(format!("{}: {field}: {msg}", self.0))
    }
    fn not_found(&self, field: &str, msg: impl std::fmt::Display) -> SpecError {
        SpecError::NotFound(format!("{}: {field}: {msg}", self.0))
    }
}

/// The OCI runtime spec of CRI container `id`. `rootfs` is the container's
/// root filesystem as the daemon sees it now (only read, for /etc/passwd
/// and /etc/group); the spec's `root.path` is `rootfs` relative to the
/// bundle.
pub fn container_spec(
    id: &str,
    cfg: &cri::ContainerConfig,
    pod: &PodContext,
    image: &ImageConfig,
    rootfs: &Path,
    opts: &SpecOptions,
) -> Result<Value, SpecError> {
    let name = container_name(cfg, id);
    let who = Who(format!("container {name:?}"));

    let default_linux = cri::LinuxContainerConfig::default();
    let linux = cfg.linux.as_ref().unwrap_or(&default_linux);
    let default_sc = cri::LinuxContainerSecurityContext::default();
    let sc = linux.security_context.as_ref().unwrap_or(&default_sc);
    let pod_linux = pod.config.linux.as_ref();
    let pod_sc = pod_linux.and_then(|l| l.security_context.as_ref());
    let ns_opts = sc
        .namespace_options
        .as_ref()
        .or_else(|| pod_sc.and_then(|s| s.namespace_options.as_ref()));
    let pod_ns_opts = pod_sc.and_then(|s| s.namespace_options.as_ref());
    let privileged = sc.privileged;
    if privileged && !pod_sc.is_some_and(|s| s.privileged) {
        return Err(who.invalid(
            "security_context.privileged",
            "a privileged container needs a privileged pod (linux.security_context.privileged)",
        ));
    }
    if !cfg.cdi_devices.is_empty() {
        return Err(who.invalid("cdi_devices", "CDI devices are not supported"));
    }

    // Process.
    let args = process_args(&who, cfg, image)?;
    let hostname = if pod.config.hostname.is_empty() {
        host_hostname()
    } else {
        pod.config.hostname.clone()
    };
    let cri_env: Vec<String> = cfg
        .envs
        .iter()
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect();
    let env = environment(image, &cri_env, &hostname, cfg.tty);
    let cwd = if !cfg.working_dir.is_empty() {
        cfg.working_dir.clone()
    } else {
        image
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    };
    if !cwd.starts_with('/') {
        return Err(who.invalid("working_dir", format!("{cwd:?} is not an absolute path")));
    }
    let user = resolve_user(&who, sc, image.user.as_deref().unwrap_or(""), rootfs)?;

    let all_caps = match &opts.all_capabilities {
        Some(c) => c.clone(),
        None => current_capabilities()?,
    };
    let caps = capabilities(&who, sc, &all_caps)?;

    let mut process = Map::new();
    process.insert("terminal".into(), json!(cfg.tty));
    process.insert(
        "user".into(),
        json!({ "uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids }),
    );
    process.insert("args".into(), json!(args));
    process.insert("env".into(), json!(env));
    process.insert("cwd".into(), json!(cwd));
    let mut capobj = json!({
        "bounding": caps.set,
        "effective": caps.set,
        "permitted": caps.set,
    });
    if !caps.ambient.is_empty() {
        capobj["inheritable"] = json!(caps.ambient);
        capobj["ambient"] = json!(caps.ambient);
    }
    process.insert("capabilities".into(), capobj);
    process.insert("noNewPrivileges".into(), json!(sc.no_new_privs));
    if let Some(profile) = apparmor_profile(&who, sc, privileged, opts)? {
        process.insert("apparmorProfile".into(), json!(profile));
    }
    if let Some(res) = &linux.resources {
        let adj = res.oom_score_adj;
        if !(-1000..=1000).contains(&adj) {
            return Err(who.invalid(
                "linux.resources.oom_score_adj",
                format!("{adj} is outside [-1000, 1000]"),
            ));
        }
        let mut floor = own_oom_score_adj()?;
        if let Some(min) = opts.min_oom_score_adj {
            floor = floor.max(min);
        }
        let clamped = (adj as i32).max(floor);
        if clamped != adj as i32 {
            debug!(
                container = name,
                requested = adj,
                used = clamped,
                "oom_score_adj raised to the daemon's own"
            );
        }
        process.insert("oomScoreAdj".into(), json!(clamped));
    }

    // Namespaces.
    let mode = |m: Option<i32>| {
        m.and_then(|m| cri::NamespaceMode::try_from(m).ok())
            .unwrap_or(cri::NamespaceMode::Pod)
    };
    let mut namespaces = Vec::new();
    let mut joined = |kind: &str, path: Option<&Path>| {
        if let Some(p) = path {
            namespaces.push(json!({ "type": kind, "path": p }));
        }
    };
    joined("network", pod.netns);
    joined("ipc", pod.ipc_ns);
    joined("uts", pod.uts_ns);
    match mode(ns_opts.map(|n| n.pid)) {
        cri::NamespaceMode::Pod => match pod.pid_ns {
            Some(p) => namespaces.push(json!({ "type": "pid", "path": p })),
            None if mode(pod_ns_opts.map(|n| n.pid)) == cri::NamespaceMode::Node => {}
            None => namespaces.push(json!({ "type": "pid" })),
        },
        cri::NamespaceMode::Container => namespaces.push(json!({ "type": "pid" })),
        cri::NamespaceMode::Node => {}
        cri::NamespaceMode::Target => {
            return Err(who.invalid(
                "security_context.namespace_options.pid",
                format!(
                    "TARGET (sharing container {:?}'s PID namespace) is not supported",
                    ns_opts.map(|n| n.target_id.as_str()).unwrap_or("")
                ),
            ))
        }
    }
    namespaces.push(json!({ "type": "mount" }));
    if opts.cgroup_v2 && !privileged {
        namespaces.push(json!({ "type": "cgroup" }));
    }
    if let Some(u) = ns_opts.and_then(|n| n.userns_options.as_ref()) {
        if mode(Some(u.mode)) != cri::NamespaceMode::Node {
            return Err(who.invalid(
                "security_context.namespace_options.userns_options",
                "user namespaces are not supported",
            ));
        }
    }
    let host_ipc = pod.ipc_ns.is_none()
        && (mode(ns_opts.map(|n| n.ipc)) == cri::NamespaceMode::Node
            || mode(pod_ns_opts.map(|n| n.ipc)) == cri::NamespaceMode::Node);

    // Mounts.
    let (mounts, rootfs_propagation) = mounts(&who, cfg, sc, pod, privileged, host_ipc)?;

    // Devices and their cgroup rules.
    let mut devices: Vec<Device> = Vec::new();
    let mut device_rules: Vec<Value> = vec![json!({ "allow": false, "access": "rwm" })];
    device_rules.extend(default_device_rules());
    if privileged && !opts.privileged_without_host_devices {
        devices.extend(host_devices()?);
        device_rules = vec![json!({ "allow": true, "access": "rwm" })];
    }
    for (i, d) in cfg.devices.iter().enumerate() {
        let field = format!("devices[{i}]");
        let perms = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        if !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(who.invalid(
                &field,
                format!("permissions {perms:?} may only hold r, w and m"),
            ));
        }
        let container_path = if d.container_path.is_empty() {
            d.host_path.clone()
        } else {
            d.container_path.clone()
        };
        if !container_path.starts_with('/') {
            return Err(who.invalid(
                &field,
                format!("container path {container_path:?} is not absolute"),
            ));
        }
        for dev in devices_at(&who, &field, Path::new(&d.host_path), &container_path)? {
            if !privileged || opts.privileged_without_host_devices {
                device_rules.push(json!({
                    "allow": true, "type": dev.kind, "major": dev.major,
                    "minor": dev.minor, "access": perms,
                }));
            }
            devices.retain(|o| o.path != dev.path);
            devices.push(dev);
        }
    }

    // Resources.
    let mut resources = resources(&who, linux.resources.as_ref(), opts)?;
    resources.insert("devices".into(), Value::Array(device_rules));

    // Sysctls.
    let mut sysctl = BTreeMap::new();
    if let Some(l) = pod_linux {
        for (k, v) in &l.sysctls {
            check_sysctl(&who, k, pod)?;
            sysctl.insert(k.clone(), v.clone());
        }
    }

    // Seccomp, masked and read-only paths.
    let seccomp = seccomp_profile(&who, sc, privileged, &caps.set)?;
    let (masked, readonly): (Vec<String>, Vec<String>) = if privileged {
        (vec![], vec![])
    } else {
        let pick = |given: &[String], default: &[&str]| {
            if given.is_empty() {
                default.iter().map(|s| s.to_string()).collect()
            } else {
                given.to_vec()
            }
        };
        (
            pick(&sc.masked_paths, DEFAULT_MASKED_PATHS),
            pick(&sc.readonly_paths, DEFAULT_READONLY_PATHS),
        )
    };

    // Annotations.
    let mut annotations: BTreeMap<String, String> = cfg
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let meta = pod.config.metadata.clone().unwrap_or_default();
    let image_name = cfg
        .image
        .as_ref()
        .map(|i| {
            if i.user_specified_image.is_empty() {
                i.image.clone()
            } else {
                i.user_specified_image.clone()
            }
        })
        .unwrap_or_default();
    for (k, v) in [
        (ANNOTATION_CONTAINER_TYPE, "container".to_string()),
        (ANNOTATION_SANDBOX_ID, pod.sandbox_id.to_string()),
        (ANNOTATION_CONTAINER_NAME, name.to_string()),
        (ANNOTATION_IMAGE_NAME, image_name),
        (ANNOTATION_SANDBOX_NAME, meta.name),
        (ANNOTATION_SANDBOX_NAMESPACE, meta.namespace),
        (ANNOTATION_SANDBOX_UID, meta.uid),
    ] {
        annotations.insert(k.to_string(), v);
    }

    let parent = pod_linux.map(|l| l.cgroup_parent.as_str()).unwrap_or("");
    let cgroups = cgroups_path(opts.cgroup_driver, parent, pod.sandbox_id, id)?;

    let mut linux_obj = Map::new();
    linux_obj.insert("resources".into(), Value::Object(resources));
    linux_obj.insert("cgroupsPath".into(), json!(cgroups));
    linux_obj.insert("namespaces".into(), Value::Array(namespaces));
    if !devices.is_empty() {
        linux_obj.insert(
            "devices".into(),
            Value::Array(devices.iter().map(Device::to_json).collect()),
        );
    }
    if !sysctl.is_empty() {
        linux_obj.insert("sysctl".into(), json!(sysctl));
    }
    if let Some(p) = rootfs_propagation {
        linux_obj.insert("rootfsPropagation".into(), json!(p));
    }
    if let Some(s) = seccomp {
        linux_obj.insert("seccomp".into(), s);
    }
    if !masked.is_empty() {
        linux_obj.insert("maskedPaths".into(), json!(masked));
    }
    if !readonly.is_empty() {
        linux_obj.insert("readonlyPaths".into(), json!(readonly));
    }

    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": Value::Object(process),
        "root": { "path": "rootfs", "readonly": sc.readonly_rootfs },
        "mounts": mounts,
        "annotations": annotations,
        "linux": Value::Object(linux_obj),
    });
    if pod.uts_ns.is_some() && !pod.config.hostname.is_empty() {
        spec["hostname"] = json!(pod.config.hostname);
    }
    Ok(spec)
}

fn host_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// docker/containerd semantics: the CRI command replaces the image's
/// Entrypoint (and then its Cmd is not used), the CRI args replace its Cmd.
fn process_args(
    who: &Who,
    cfg: &cri::ContainerConfig,
    image: &ImageConfig,
) -> Result<Vec<String>, SpecError> {
    let mut command = cfg.command.clone();
    let mut args = cfg.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = image.cmd.clone().unwrap_or_default();
        }
        let entry = image.entrypoint.clone().unwrap_or_default();
        if !(entry.len() == 1 && entry[0].is_empty()) {
            command = entry;
        }
    }
    command.extend(args);
    if command.is_empty() {
        return Err(who.invalid(
            "command",
            "no command specified: neither the config (command/args) nor the image (Entrypoint/Cmd) names one",
        ));
    }
    Ok(command)
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

fn passwd_entries(rootfs: &Path) -> Vec<PasswdEntry> {
    read_rootfs_file(rootfs, "etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn group_entries(rootfs: &Path) -> Vec<GroupEntry> {
    read_rootfs_file(rootfs, "etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[derive(Debug, PartialEq)]
struct ProcessUser {
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
}

fn id_value(who: &Who, field: &str, v: i64) -> Result<u32, SpecError> {
    u32::try_from(v).map_err(|_| who.invalid(field, format!("{v} is not a valid id")))
}

/// The process user as containerd resolves it: run_as_username, else
/// run_as_user, else the image's User ("", "uid", "name", with ":group"),
/// else root; the primary group from run_as_group, the image's group, or
/// the user's /etc/passwd entry; the supplemental groups = the primary
/// group, the /etc/group groups listing the user (policy Merge) and the
/// CRI supplemental_groups.
fn resolve_user(
    who: &Who,
    sc: &cri::LinuxContainerSecurityContext,
    image_user: &str,
    rootfs: &Path,
) -> Result<ProcessUser, SpecError> {
    let run_as_group = match &sc.run_as_group {
        Some(g) => Some(id_value(who, "security_context.run_as_group", g.value)?),
        None => None,
    };
    let (user_field, user, group): (&str, String, Option<String>) =
        if !sc.run_as_username.is_empty() {
            (
                "security_context.run_as_username",
                sc.run_as_username.clone(),
                None,
            )
        } else if let Some(u) = &sc.run_as_user {
            let uid = id_value(who, "security_context.run_as_user", u.value)?;
            ("security_context.run_as_user", uid.to_string(), None)
        } else {
            if run_as_group.is_some() {
                return Err(who.invalid(
                    "security_context.run_as_group",
                    "run_as_group needs run_as_user or run_as_username",
                ));
            }
            let image_user = image_user.trim();
            match image_user.split_once(':') {
                Some((u, g)) => ("image User", u.to_string(), Some(g.to_string())),
                None if image_user.is_empty() => ("image User", "0".into(), None),
                None => ("image User", image_user.to_string(), None),
            }
        };
    let passwd = passwd_entries(rootfs);
    let (uid, name, passwd_gid) = match user.parse::<u32>() {
        Ok(uid) => {
            let e = passwd.iter().find(|e| e.uid == uid);
            (uid, e.map(|e| e.name.clone()), e.map(|e| e.gid))
        }
        Err(_) => {
            let e = passwd.iter().find(|e| e.name == user).ok_or_else(|| {
                who.invalid(
                    user_field,
                    format!("user {user:?} is not in the image's /etc/passwd"),
                )
            })?;
            (e.uid, Some(e.name.clone()), Some(e.gid))
        }
    };
    let groups = group_entries(rootfs);
    let gid = match (run_as_group, group.as_deref()) {
        (Some(g), _) => g,
        (None, Some(g)) if !g.is_empty() => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    who.invalid(
                        user_field,
                        format!("group {g:?} is not in the image's /etc/group"),
                    )
                })?,
        },
        _ => passwd_gid.unwrap_or(0),
    };
    let mut additional = vec![gid];
    let strict = sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32;
    if let (Some(name), false) = (&name, strict) {
        for g in &groups {
            if g.name != *name && g.members.iter().any(|m| m == name) {
                additional.push(g.gid);
            }
        }
    }
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        additional.push(id_value(
            who,
            &format!("security_context.supplemental_groups[{i}]"),
            *g,
        )?);
    }
    let mut seen = std::collections::HashSet::new();
    additional.retain(|g| seen.insert(*g));
    Ok(ProcessUser {
        uid,
        gid,
        additional_gids: additional,
    })
}

struct Caps {
    /// bounding = effective = permitted.
    set: Vec<String>,
    ambient: Vec<String>,
}

fn cap_name(who: &Who, field: &str, c: &str) -> Result<String, SpecError> {
    let up = c.trim().to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if KNOWN_CAPS.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(who.invalid(field, format!("unknown capability {c:?}")))
    }
}

/// containerd's default set with the CRI adds and drops ("ALL" first, so
/// that ADD ALL + DROP X = all but X); privileged = all.
fn capabilities(
    who: &Who,
    sc: &cri::LinuxContainerSecurityContext,
    all: &[String],
) -> Result<Caps, SpecError> {
    if sc.privileged {
        return Ok(Caps {
            set: all.to_vec(),
            ambient: vec![],
        });
    }
    let mut set: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    let mut ambient = Vec::new();
    let Some(c) = &sc.capabilities else {
        return Ok(Caps { set, ambient });
    };
    let is_all = |s: &String| s.trim().eq_ignore_ascii_case("ALL");
    if c.add_capabilities.iter().any(is_all) {
        set = all.to_vec();
    }
    if c.drop_capabilities.iter().any(is_all) {
        set.clear();
    }
    for a in c.add_capabilities.iter().filter(|s| !is_all(s)) {
        let n = cap_name(who, "security_context.capabilities.add_capabilities", a)?;
        if !set.contains(&n) {
            set.push(n);
        }
    }
    for a in &c.add_ambient_capabilities {
        let n = cap_name(
            who,
            "security_context.capabilities.add_ambient_capabilities",
            a,
        )?;
        if !set.contains(&n) {
            set.push(n.clone());
        }
        if !ambient.contains(&n) {
            ambient.push(n);
        }
    }
    for d in c.drop_capabilities.iter().filter(|s| !is_all(s)) {
        let n = cap_name(who, "security_context.capabilities.drop_capabilities", d)?;
        set.retain(|x| *x != n);
        ambient.retain(|x| *x != n);
    }
    Ok(Caps { set, ambient })
}

enum Profile {
    RuntimeDefault,
    Unconfined,
    Localhost(String),
}

fn profile_of(sp: &cri::SecurityProfile) -> Profile {
    use cri::security_profile::ProfileType;
    match ProfileType::try_from(sp.profile_type) {
        Ok(ProfileType::Unconfined) => Profile::Unconfined,
        Ok(ProfileType::Localhost) => Profile::Localhost(sp.localhost_ref.clone()),
        _ => Profile::RuntimeDefault,
    }
}

fn seccomp_profile(
    who: &Who,
    sc: &cri::LinuxContainerSecurityContext,
    privileged: bool,
    bounding: &[String],
) -> Result<Option<Value>, SpecError> {
    if privileged {
        return Ok(None);
    }
    #[allow(deprecated)]
    let legacy = sc.seccomp_profile_path.as_str();
    let (field, profile) = match &sc.seccomp {
        Some(sp) => ("security_context.seccomp", profile_of(sp)),
        None => (
            "security_context.seccomp_profile_path",
            match legacy {
                "" | "unconfined" => Profile::Unconfined,
                "runtime/default" | "docker/default" => Profile::RuntimeDefault,
                p => match p.strip_prefix("localhost/") {
                    Some(path) => Profile::Localhost(path.to_string()),
                    None => {
                        return Err(who.invalid(
                            "security_context.seccomp_profile_path",
                            format!("unknown profile {p:?}"),
                        ))
                    }
                },
            },
        ),
    };
    match profile {
        Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault => Ok(Some(seccomp::default_profile(bounding))),
        Profile::Localhost(path) => {
            if path.is_empty() {
                return Err(who.invalid(field, "Localhost needs a profile path"));
            }
            seccomp::load_profile(Path::new(&path))
                .map(Some)
                .map_err(|e| who.invalid(field, e))
        }
    }
}

fn apparmor_profile(
    who: &Who,
    sc: &cri::LinuxContainerSecurityContext,
    privileged: bool,
    opts: &SpecOptions,
) -> Result<Option<String>, SpecError> {
    if privileged {
        return Ok(None);
    }
    #[allow(deprecated)]
    let legacy = sc.apparmor_profile.as_str();
    let (field, profile) = match &sc.apparmor {
        Some(sp) => ("security_context.apparmor", profile_of(sp)),
        None => (
            "security_context.apparmor_profile",
            match legacy {
                "" | "runtime/default" => Profile::RuntimeDefault,
                "unconfined" => Profile::Unconfined,
                p => match p.strip_prefix("localhost/") {
                    Some(name) => Profile::Localhost(name.to_string()),
                    None => {
                        return Err(who.invalid(
                            "security_context.apparmor_profile",
                            format!("unknown profile {p:?}"),
                        ))
                    }
                },
            },
        ),
    };
    match profile {
        Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault if opts.apparmor => Ok(opts.apparmor_default_profile.clone()),
        Profile::RuntimeDefault => Ok(None),
        Profile::Localhost(name) => {
            if !opts.apparmor {
                return Err(who.invalid(field, "AppArmor is not enabled on this host"));
            }
            let name = name.strip_prefix("localhost/").unwrap_or(&name).to_string();
            if name.is_empty() {
                return Err(who.invalid(field, "Localhost needs a profile name"));
            }
            Ok(Some(name))
        }
    }
}

/// A lexically cleaned absolute container path ("/a//b/../c/" -> "/a/c").
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// One bind mount of a host path (a CRI mount or one of the pod's files).
struct BindMount {
    container_path: String,
    host_path: PathBuf,
    readonly: bool,
    propagation: cri::MountPropagation,
    field: String,
}

fn mount_json(dest: &str, kind: &str, source: &str, options: &[&str]) -> Value {
    json!({ "destination": dest, "type": kind, "source": source, "options": options })
}

/// The optional fields ("shared:N master:M") of the mount `path` lives on,
/// per `mountinfo` (/proc/self/mountinfo's format), and its mount point.
fn mount_of(path: &Path, mountinfo: &str) -> Option<(PathBuf, String)> {
    let unescape = |s: &str| {
        s.replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\")
    };
    let mut best: Option<(PathBuf, String)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 7 {
            continue;
        }
        let mp = PathBuf::from(unescape(fields[4]));
        if !path.starts_with(&mp) {
            continue;
        }
        let optional = fields[6..]
            .iter()
            .take_while(|f| **f != "-")
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        let longer = best
            .as_ref()
            .is_none_or(|(b, _)| mp.components().count() >= b.components().count());
        if longer {
            best = Some((mp, optional));
        }
    }
    best
}

fn check_propagation(
    who: &Who,
    m: &BindMount,
    src: &Path,
    mountinfo: &str,
) -> Result<(), SpecError> {
    let (shared_only, what) = match m.propagation {
        cri::MountPropagation::PropagationBidirectional => (true, "shared"),
        cri::MountPropagation::PropagationHostToContainer => (false, "shared or slave"),
        cri::MountPropagation::PropagationPrivate => return Ok(()),
    };
    let Some((mp, optional)) = mount_of(src, mountinfo) else {
        return Err(who.invalid(
            &m.field,
            format!("no mount holds host path {}", src.display()),
        ));
    };
    let ok = optional
        .split(' ')
        .any(|o| o.starts_with("shared:") || (!shared_only && o.starts_with("master:")));
    if ok {
        Ok(())
    } else {
        Err(who.invalid(
            &m.field,
            format!(
                "host path {} is on mount {}, which is not a {what} mount, as {:?} propagation needs",
                src.display(),
                mp.display(),
                m.propagation.as_str_name()
            ),
        ))
    }
}

/// containerd's default mounts (without /run), the cgroup mount, then the
/// CRI mounts and the pod's files and /dev/shm sorted by depth (parents
/// first); a CRI mount replaces a default one at the same path, and a CRI
/// /dev replaces everything under /dev. Also returns rootfsPropagation.
fn mounts(
    who: &Who,
    cfg: &cri::ContainerConfig,
    sc: &cri::LinuxContainerSecurityContext,
    pod: &PodContext,
    privileged: bool,
    host_ipc: bool,
) -> Result<(Vec<Value>, Option<&'static str>), SpecError> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    let mut defaults = vec![
        mount_json("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount_json(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount_json(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount_json(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount_json(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount_json(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        mount_json(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
    ];

    let mut binds: Vec<BindMount> = Vec::new();
    for (i, m) in cfg.mounts.iter().enumerate() {
        let field = format!("mounts[{i}]");
        if m.image.is_some() {
            return Err(who.invalid(&field, "image volume mounts are not supported"));
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(who.invalid(&field, "id-mapped mounts are not supported"));
        }
        if m.recursive_read_only {
            return Err(who.invalid(
                &field,
                "recursive read-only mounts are not supported by the OCI runtime",
            ));
        }
        if !m.container_path.starts_with('/') {
            return Err(who.invalid(
                &field,
                format!("container path {:?} is not absolute", m.container_path),
            ));
        }
        if m.host_path.is_empty() {
            return Err(who.invalid(&field, "host path is empty"));
        }
        let propagation = cri::MountPropagation::try_from(m.propagation).unwrap_or_else(|_| {
            warn!(
                propagation = m.propagation,
                "unknown mount propagation, using private"
            );
            cri::MountPropagation::PropagationPrivate
        });
        binds.push(BindMount {
            container_path: m.container_path.clone(),
            host_path: PathBuf::from(&m.host_path),
            readonly: m.readonly,
            propagation,
            field,
        });
    }
    let in_cri = |p: &str| {
        cfg.mounts
            .iter()
            .any(|m| clean_path(&m.container_path) == clean_path(p))
    };
    let mut extras: Vec<(&str, Option<&Path>, bool)> = vec![
        ("/etc/hostname", pod.hostname_file, sc.readonly_rootfs),
        ("/etc/hosts", pod.hosts_file, sc.readonly_rootfs),
        ("/etc/resolv.conf", pod.resolv_conf, sc.readonly_rootfs),
    ];
    let shm = if host_ipc {
        Some(Path::new("/dev/shm"))
    } else {
        pod.shm
    };
    extras.push(("/dev/shm", shm, false));
    for (dest, src, readonly) in extras {
        let Some(src) = src else { continue };
        if in_cri(dest) {
            continue;
        }
        if !src.exists() {
            debug!(path = %src.display(), dest, "pod file missing, not mounted");
            continue;
        }
        binds.push(BindMount {
            container_path: dest.to_string(),
            host_path: src.to_path_buf(),
            readonly,
            propagation: cri::MountPropagation::PropagationPrivate,
            field: format!("pod file {dest}"),
        });
    }
    binds.sort_by_key(|b| clean_path(&b.container_path).split('/').count());

    let targets: Vec<String> = binds
        .iter()
        .map(|b| clean_path(&b.container_path))
        .collect();
    let dev_replaced = targets.iter().any(|t| t == "/dev");
    defaults.retain(|m| {
        let d = clean_path(m["destination"].as_str().unwrap_or_default());
        let replaced = targets.contains(&d);
        let under_dev = dev_replaced && d.starts_with("/dev/");
        !replaced && !under_dev
    });

    let mut out = defaults;
    let mut rootfs_propagation: Option<&'static str> = None;
    let mut mountinfo: Option<String> = None;
    for b in &binds {
        let src = std::fs::canonicalize(&b.host_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                who.not_found(
                    &b.field,
                    format!("host path {} does not exist", b.host_path.display()),
                )
            } else {
                who.invalid(
                    &b.field,
                    format!("host path {}: {e}", b.host_path.display()),
                )
            }
        })?;
        let prop = match b.propagation {
            cri::MountPropagation::PropagationPrivate => "rprivate",
            cri::MountPropagation::PropagationHostToContainer => {
                if rootfs_propagation != Some("rshared") {
                    rootfs_propagation = Some("rslave");
                }
                "rslave"
            }
            cri::MountPropagation::PropagationBidirectional => {
                rootfs_propagation = Some("rshared");
                "rshared"
            }
        };
        if b.propagation != cri::MountPropagation::PropagationPrivate {
            if mountinfo.is_none() {
                mountinfo = Some(
                    std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| {
                        SpecError::Internal(format!("cannot read /proc/self/mountinfo: {e}"))
                    })?,
                );
            }
            check_propagation(who, b, &src, mountinfo.as_deref().unwrap_or_default())?;
        }
        let rw = if b.readonly { "ro" } else { "rw" };
        out.push(json!({
            "destination": b.container_path,
            "type": "bind",
            "source": src,
            "options": ["rbind", prop, rw],
        }));
    }
    Ok((out, rootfs_propagation))
}

/// A device node for `linux.devices`.
#[derive(Debug, Clone, PartialEq)]
struct Device {
    path: String,
    kind: &'static str,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Device {
    fn to_json(&self) -> Value {
        json!({
            "path": self.path, "type": self.kind, "major": self.major,
            "minor": self.minor, "fileMode": self.mode, "uid": self.uid, "gid": self.gid,
        })
    }
}

/// The device at `path` (not following a final symlink); None if it is no
/// block or character device.
fn device_from_path(path: &Path) -> std::io::Result<Option<Device>> {
    let md = std::fs::symlink_metadata(path)?;
    let ft = md.file_type();
    let kind = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else {
        return Ok(None);
    };
    Ok(Some(Device {
        path: path.to_string_lossy().into_owned(),
        kind,
        major: nix::sys::stat::major(md.rdev()),
        minor: nix::sys::stat::minor(md.rdev()),
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
    }))
}

/// The devices a CRI `Device` names: the node at `host` (symlinks
/// resolved), or every node under it when it is a directory.
fn devices_at(
    who: &Who,
    field: &str,
    host: &Path,
    container_path: &str,
) -> Result<Vec<Device>, SpecError> {
    let real = std::fs::canonicalize(host).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            who.not_found(field, format!("device {} does not exist", host.display()))
        } else {
            who.invalid(field, format!("device {}: {e}", host.display()))
        }
    })?;
    if real.is_dir() {
        let mut out = Vec::new();
        walk_devices(&real, Some(container_path), &mut out);
        return Ok(out);
    }
    match device_from_path(&real) {
        Ok(Some(mut d)) => {
            d.path = container_path.to_string();
            Ok(vec![d])
        }
        Ok(None) => Err(who.invalid(field, format!("{} is not a device node", host.display()))),
        Err(e) => Err(who.invalid(field, format!("device {}: {e}", host.display()))),
    }
}

/// Every device node under `dir` (containerd's walk: pts, shm, fd, mqueue
/// and a few container-manager dirs skipped, /dev/console skipped, no
/// symlinks followed), renamed under `container_dir` when given.
fn walk_devices(dir: &Path, container_dir: Option<&str>, out: &mut Vec<Device>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let cpath = container_dir.map(|c| format!("{}/{name}", c.trim_end_matches('/')));
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if matches!(
                name.as_str(),
                "pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev"
            ) {
                continue;
            }
            walk_devices(&e.path(), cpath.as_deref(), out);
        } else if name != "console" {
            if let Ok(Some(mut d)) = device_from_path(&e.path()) {
                if let Some(c) = cpath {
                    d.path = c;
                }
                out.push(d);
            }
        }
    }
}

/// The host's devices (for a privileged container).
fn host_devices() -> Result<Vec<Device>, SpecError> {
    if !Path::new("/dev").is_dir() {
        return Err(SpecError::Internal("/dev is not a directory".into()));
    }
    let mut out = Vec::new();
    walk_devices(Path::new("/dev"), None, &mut out);
    Ok(out)
}

/// containerd's default device cgroup allow list.
fn default_device_rules() -> Vec<Value> {
    let rule = |major: i64, minor: Option<i64>| {
        let mut r = json!({ "allow": true, "type": "c", "major": major, "access": "rwm" });
        if let Some(m) = minor {
            r["minor"] = json!(m);
        }
        r
    };
    vec![
        rule(1, Some(3)),    // /dev/null
        rule(1, Some(8)),    // /dev/random
        rule(1, Some(7)),    // /dev/full
        rule(5, Some(0)),    // /dev/tty
        rule(1, Some(5)),    // /dev/zero
        rule(1, Some(9)),    // /dev/urandom
        rule(5, Some(1)),    // /dev/console
        rule(136, None),     // /dev/pts/*
        rule(5, Some(2)),    // /dev/ptmx
        rule(10, Some(200)), // /dev/net/tun
    ]
}

fn valid_cpuset(s: &str) -> bool {
    s.split(',').all(|part| {
        let num = |x: &str| !x.is_empty() && x.chars().all(|c| c.is_ascii_digit());
        match part.trim().split_once('-') {
            Some((a, b)) => num(a) && num(b) && a.parse::<u64>().ok() <= b.parse::<u64>().ok(),
            None => num(part.trim()),
        }
    })
}

fn valid_page_size(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && matches!(unit, "KB" | "MB" | "GB" | "TB" | "PB")
}

/// linux.resources (without devices) from the CRI resources, validated.
fn resources(
    who: &Who,
    r: Option<&cri::LinuxContainerResources>,
    opts: &SpecOptions,
) -> Result<Map<String, Value>, SpecError> {
    let mut out = Map::new();
    let Some(r) = r else { return Ok(out) };
    let f = |n: &str| format!("linux.resources.{n}");
    let mut cpu = Map::new();
    if r.cpu_period < 0 || (r.cpu_period != 0 && !(1000..=1_000_000).contains(&r.cpu_period)) {
        return Err(who.invalid(
            &f("cpu_period"),
            format!("{} is outside [1000, 1000000] microseconds", r.cpu_period),
        ));
    }
    if r.cpu_quota < -1 || (r.cpu_quota > 0 && r.cpu_quota < 1000) {
        return Err(who.invalid(
            &f("cpu_quota"),
            format!(
                "{} must be -1 (unlimited) or at least 1000 microseconds",
                r.cpu_quota
            ),
        ));
    }
    if r.cpu_quota > 0 && r.cpu_period == 0 {
        return Err(who.invalid(&f("cpu_quota"), "a quota needs a cpu_period"));
    }
    if r.cpu_shares < 0 || (r.cpu_shares != 0 && !(2..=262_144).contains(&r.cpu_shares)) {
        return Err(who.invalid(
            &f("cpu_shares"),
            format!("{} is outside [2, 262144]", r.cpu_shares),
        ));
    }
    if r.cpu_shares != 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period != 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        if !valid_cpuset(&r.cpuset_cpus) {
            return Err(who.invalid(
                &f("cpuset_cpus"),
                format!("{:?} is not a CPU list like \"0-2,4\"", r.cpuset_cpus),
            ));
        }
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        if !valid_cpuset(&r.cpuset_mems) {
            return Err(who.invalid(
                &f("cpuset_mems"),
                format!("{:?} is not a node list like \"0-1\"", r.cpuset_mems),
            ));
        }
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }

    let mut memory = Map::new();
    if r.memory_limit_in_bytes < 0 {
        return Err(who.invalid(
            &f("memory_limit_in_bytes"),
            format!("{} is negative", r.memory_limit_in_bytes),
        ));
    }
    if r.memory_swap_limit_in_bytes < -1 {
        return Err(who.invalid(
            &f("memory_swap_limit_in_bytes"),
            format!(
                "{} must be -1 (unlimited) or positive",
                r.memory_swap_limit_in_bytes
            ),
        ));
    }
    if r.memory_swap_limit_in_bytes > 0
        && r.memory_limit_in_bytes > 0
        && r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes
    {
        return Err(who.invalid(
            &f("memory_swap_limit_in_bytes"),
            format!(
                "{} (memory + swap) is below memory_limit_in_bytes {}",
                r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes
            ),
        ));
    }
    if r.memory_limit_in_bytes != 0 {
        memory.insert("limit".into(), json!(r.memory_limit_in_bytes));
        // memory + swap = memory: no swapping unless asked.
        if r.memory_swap_limit_in_bytes == 0 && opts.swap_controller {
            memory.insert("swap".into(), json!(r.memory_limit_in_bytes));
        }
    }
    if r.memory_swap_limit_in_bytes != 0 {
        if opts.swap_controller {
            memory.insert("swap".into(), json!(r.memory_swap_limit_in_bytes));
        } else {
            warn!("no swap accounting on this host: memory_swap_limit_in_bytes ignored");
        }
    }
    if !memory.is_empty() {
        out.insert("memory".into(), Value::Object(memory));
    }

    let mut huge = Vec::new();
    for (i, h) in r.hugepage_limits.iter().enumerate() {
        if !valid_page_size(&h.page_size) {
            return Err(who.invalid(
                &format!("linux.resources.hugepage_limits[{i}].page_size"),
                format!("{:?} is not a page size like \"2MB\"", h.page_size),
            ));
        }
        huge.push(json!({ "pageSize": h.page_size, "limit": h.limit }));
    }
    if !huge.is_empty() {
        if opts.hugetlb_controller {
            out.insert("hugepageLimits".into(), Value::Array(huge));
        } else {
            warn!("no hugetlb cgroup controller: hugepage limits ignored");
        }
    }

    if !r.unified.is_empty() {
        if opts.cgroup_v2 {
            for k in r.unified.keys() {
                if k.is_empty() || k.contains('/') || !k.contains('.') {
                    return Err(
                        who.invalid(&f("unified"), format!("{k:?} is not a cgroup v2 file name"))
                    );
                }
            }
            let u: BTreeMap<&String, &String> = r.unified.iter().collect();
            out.insert("unified".into(), json!(u));
        } else {
            // kubelet only sends these for cgroup v2 nodes; runc refuses
            // them on v1.
            debug!(keys = ?r.unified.keys().collect::<Vec<_>>(), "cgroup v1 host: unified resources ignored");
        }
    }
    Ok(out)
}

/// The OCI `LinuxResources` (JSON) for `r`, validated as CreateContainer
/// validates it: what UpdateContainerResources hands the runtime. `who`
/// names the object in errors.
pub fn linux_resources(
    who: &str,
    r: &cri::LinuxContainerResources,
    opts: &SpecOptions,
) -> Result<Value, SpecError> {
    resources(&Who(who.to_string()), Some(r), opts).map(Value::Object)
}

/// A pod sysctl must be namespaced, and its namespace must be the pod's own.
fn check_sysctl(who: &Who, key: &str, pod: &PodContext) -> Result<(), SpecError> {
    let field = format!("pod linux.sysctls[{key:?}]");
    let ipc = key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("fs.mqueue.");
    if key.starts_with("net.") {
        if pod.netns.is_none() {
            return Err(who.invalid(&field, "a net.* sysctl cannot be set in a host-network pod"));
        }
    } else if ipc {
        if pod.ipc_ns.is_none() {
            return Err(who.invalid(&field, "an IPC sysctl cannot be set in a host-IPC pod"));
        }
    } else {
        return Err(who.invalid(
            &field,
            "not a namespaced sysctl (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod golden;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn s(v: &[&str]) -> Vec<String> {
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

    fn pod(config: &cri::PodSandboxConfig) -> PodContext<'_> {
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

    fn with_sc(
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
        assert_eq!(strs(&p["capabilities"]["bounding"]), DEFAULT_CAPS);
        assert_eq!(strs(&p["capabilities"]["effective"]), DEFAULT_CAPS);
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
        assert!(rules.contains(
            &json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})
        ));
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
        assert!(
            strs(&spec["process"]["env"]).contains(&crate::tasks::spec::DEFAULT_PATH.to_string())
        );
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
    fn capabilities_add_drop_and_all() {
        let caps = |add: &[&str], drop: &[&str], ambient: &[&str]| {
            let c = with_sc(container("a"), |sc| {
                sc.capabilities = Some(cri::Capability {
                    add_capabilities: s(add),
                    drop_capabilities: s(drop),
                    add_ambient_capabilities: s(ambient),
                })
            });
            build(&c, &busybox()).map(|s| s["process"]["capabilities"].clone())
        };
        let c = caps(&["NET_ADMIN", "CAP_SYS_TIME"], &["chown", "MKNOD"], &[]).unwrap();
        let b = strs(&c["bounding"]);
        assert!(b.contains(&"CAP_NET_ADMIN".into()) && b.contains(&"CAP_SYS_TIME".into()));
        assert!(!b.contains(&"CAP_CHOWN".into()) && !b.contains(&"CAP_MKNOD".into()));
        assert_eq!(c["bounding"], c["permitted"]);
        assert_eq!(c["bounding"], c["effective"]);

        let c = caps(&["ALL"], &["SYS_ADMIN"], &[]).unwrap();
        let b = strs(&c["bounding"]);
        assert_eq!(b.len(), KNOWN_CAPS.len() - 1);
        assert!(!b.contains(&"CAP_SYS_ADMIN".into()));

        let c = caps(&["NET_BIND_SERVICE"], &["ALL"], &[]).unwrap();
        assert_eq!(strs(&c["bounding"]), ["CAP_NET_BIND_SERVICE"]);
        let c = caps(&[], &["all"], &[]).unwrap();
        assert!(strs(&c["bounding"]).is_empty());

        let c = caps(&[], &[], &["NET_RAW", "SYS_NICE"]).unwrap();
        assert_eq!(strs(&c["ambient"]), ["CAP_NET_RAW", "CAP_SYS_NICE"]);
        assert_eq!(c["ambient"], c["inheritable"]);
        assert!(strs(&c["bounding"]).contains(&"CAP_SYS_NICE".into()));

        let e = invalid(caps(&["FLY"], &[], &[]));
        assert!(e.contains("add_capabilities") && e.contains("FLY"), "{e}");

        // The seccomp profile follows the capabilities.
        let c = with_sc(container("a"), |sc| {
            sc.capabilities = Some(cri::Capability {
                add_capabilities: s(&["SYS_ADMIN"]),
                ..Default::default()
            });
            sc.seccomp = Some(cri::SecurityProfile::default());
        });
        let spec = build(&c, &busybox()).unwrap();
        let rules = spec["linux"]["seccomp"]["syscalls"].to_string();
        assert!(rules.contains("\"mount\""));
    }

    #[test]
    fn privileged_containers() {
        let c = with_sc(container("a"), |sc| {
            sc.privileged = true;
            sc.seccomp = Some(cri::SecurityProfile::default());
            sc.masked_paths = s(&["/proc/kcore"]);
        });
        // Only in a privileged pod.
        assert!(invalid(build(&c, &busybox())).contains("privileged"));

        let mut pc = pod_config();
        pc.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        });
        let root = rootfs();
        let spec = container_spec("c1", &c, &pod(&pc), &busybox(), root.path(), &opts()).unwrap();
        assert_eq!(
            strs(&spec["process"]["capabilities"]["bounding"]),
            KNOWN_CAPS
        );
        let l = &spec["linux"];
        assert!(l.get("maskedPaths").is_none() && l.get("readonlyPaths").is_none());
        assert!(l.get("seccomp").is_none());
        assert_eq!(mount(&spec, "/sys")["options"][3], "rw");
        assert_eq!(mount(&spec, "/sys/fs/cgroup")["options"][4], "rw");
        assert_eq!(
            l["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
        let devs = l["devices"].as_array().unwrap();
        assert!(devs
            .iter()
            .any(|d| d["path"] == "/dev/null" && d["major"] == 1 && d["minor"] == 3));
        assert!(!devs.iter().any(|d| d["path"] == "/dev/console"));

        // Without host devices.
        let o = SpecOptions {
            privileged_without_host_devices: true,
            ..opts()
        };
        let spec = container_spec("c1", &c, &pod(&pc), &busybox(), root.path(), &o).unwrap();
        assert!(spec["linux"].get("devices").is_none());
        assert_eq!(spec["linux"]["resources"]["devices"][0]["allow"], false);
    }

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

    fn with_resources(r: cri::LinuxContainerResources) -> cri::ContainerConfig {
        let mut c = container("a");
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(r),
            security_context: None,
        });
        c
    }

    #[test]
    fn resources_map_and_validate() {
        let r = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0-1,3".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 1 << 21,
            }],
            unified: HashMap::from([("memory.high".to_string(), "1000000".to_string())]),
            ..Default::default()
        };
        let spec = build(&with_resources(r.clone()), &busybox()).unwrap();
        let res = &spec["linux"]["resources"];
        assert_eq!(
            res["cpu"],
            json!({"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1,3", "mems": "0"})
        );
        assert_eq!(res["memory"], json!({"limit": 67108864, "swap": 67108864}));
        assert_eq!(
            res["hugepageLimits"],
            json!([{"pageSize": "2MB", "limit": 2097152}])
        );
        assert!(res.get("unified").is_none(), "cgroup v1: unified ignored");
        let o = SpecOptions {
            cgroup_v2: true,
            swap_controller: false,
            ..opts()
        };
        let pc = pod_config();
        let root = rootfs();
        let spec = container_spec(
            "c1",
            &with_resources(r.clone()),
            &pod(&pc),
            &busybox(),
            root.path(),
            &o,
        )
        .unwrap();
        let res = &spec["linux"]["resources"];
        assert_eq!(res["unified"], json!({"memory.high": "1000000"}));
        assert_eq!(
            res["memory"],
            json!({"limit": 67108864}),
            "no swap accounting"
        );

        let swap = cri::LinuxContainerResources {
            memory_limit_in_bytes: 100,
            memory_swap_limit_in_bytes: 300,
            ..Default::default()
        };
        let spec = build(&with_resources(swap), &busybox()).unwrap();
        assert_eq!(
            spec["linux"]["resources"]["memory"],
            json!({"limit": 100, "swap": 300})
        );

        let bad = |r: cri::LinuxContainerResources, field: &str| {
            let e = invalid(build(&with_resources(r), &busybox()));
            assert!(e.contains(field) && e.contains("container \"a\""), "{e}");
        };
        let d = cri::LinuxContainerResources::default;
        bad(
            cri::LinuxContainerResources {
                cpu_period: -1,
                ..d()
            },
            "cpu_period",
        );
        bad(
            cri::LinuxContainerResources {
                cpu_period: 10,
                ..d()
            },
            "cpu_period",
        );
        bad(
            cri::LinuxContainerResources {
                cpu_quota: 50_000,
                ..d()
            },
            "cpu_quota",
        );
        bad(
            cri::LinuxContainerResources {
                cpu_quota: -5,
                cpu_period: 100_000,
                ..d()
            },
            "cpu_quota",
        );
        bad(
            cri::LinuxContainerResources {
                cpu_shares: -2,
                ..d()
            },
            "cpu_shares",
        );
        bad(
            cri::LinuxContainerResources {
                cpu_shares: 1_000_000,
                ..d()
            },
            "cpu_shares",
        );
        bad(
            cri::LinuxContainerResources {
                memory_limit_in_bytes: -1,
                ..d()
            },
            "memory_limit_in_bytes",
        );
        bad(
            cri::LinuxContainerResources {
                memory_limit_in_bytes: 1000,
                memory_swap_limit_in_bytes: 10,
                ..d()
            },
            "memory_swap_limit_in_bytes",
        );
        bad(
            cri::LinuxContainerResources {
                cpuset_cpus: "0-a".into(),
                ..d()
            },
            "cpuset_cpus",
        );
        bad(
            cri::LinuxContainerResources {
                cpuset_mems: "3-1".into(),
                ..d()
            },
            "cpuset_mems",
        );
        bad(
            cri::LinuxContainerResources {
                hugepage_limits: vec![cri::HugepageLimit {
                    page_size: "2M".into(),
                    limit: 1,
                }],
                ..d()
            },
            "page_size",
        );
        bad(
            cri::LinuxContainerResources {
                oom_score_adj: 1001,
                ..d()
            },
            "oom_score_adj",
        );
        // -1 quota (unlimited) is fine.
        assert!(build(
            &with_resources(cri::LinuxContainerResources {
                cpu_quota: -1,
                ..d()
            }),
            &busybox()
        )
        .is_ok());
    }

    #[test]
    fn oom_score_adj_never_below_the_daemons() {
        let own = own_oom_score_adj().unwrap();
        let adj = |v: i64, min: Option<i32>| {
            let pc = pod_config();
            let root = rootfs();
            let o = SpecOptions {
                min_oom_score_adj: min,
                ..opts()
            };
            let c = with_resources(cri::LinuxContainerResources {
                oom_score_adj: v,
                ..Default::default()
            });
            container_spec("c1", &c, &pod(&pc), &busybox(), root.path(), &o).unwrap()["process"]
                ["oomScoreAdj"]
                .as_i64()
                .unwrap()
        };
        assert_eq!(adj(-998, None), own.max(-998) as i64);
        assert_eq!(adj(1000, None), 1000);
        assert_eq!(adj(-1000, Some(500)), 500.max(own) as i64);
        assert_eq!(adj(800, Some(500)), 800);
    }

    #[test]
    fn sysctls_must_be_namespaced_and_own() {
        let mut pc = pod_config();
        pc.linux.as_mut().unwrap().sysctls = HashMap::from([
            (
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            ),
            ("kernel.shmmax".to_string(), "1000000".to_string()),
            ("fs.mqueue.msg_max".to_string(), "20".to_string()),
        ]);
        let root = rootfs();
        let spec = container_spec(
            "c1",
            &container("a"),
            &pod(&pc),
            &busybox(),
            root.path(),
            &opts(),
        )
        .unwrap();
        assert_eq!(
            spec["linux"]["sysctl"],
            json!({"fs.mqueue.msg_max": "20", "kernel.shmmax": "1000000",
                   "net.ipv4.ip_unprivileged_port_start": "0"})
        );
        let host_net = PodContext {
            netns: None,
            ..pod(&pc)
        };
        let e = invalid(container_spec(
            "c1",
            &container("a"),
            &host_net,
            &busybox(),
            root.path(),
            &opts(),
        ));
        assert!(e.contains("net.ipv4") && e.contains("host-network"), "{e}");
        let host_ipc = PodContext {
            ipc_ns: None,
            ..pod(&pc)
        };
        assert!(invalid(container_spec(
            "c1",
            &container("a"),
            &host_ipc,
            &busybox(),
            root.path(),
            &opts()
        ))
        .contains("IPC"));
        pc.linux.as_mut().unwrap().sysctls =
            HashMap::from([("kernel.panic".to_string(), "1".to_string())]);
        let e = invalid(container_spec(
            "c1",
            &container("a"),
            &pod(&pc),
            &busybox(),
            root.path(),
            &opts(),
        ));
        assert!(
            e.contains("kernel.panic") && e.contains("namespaced"),
            "{e}"
        );
    }

    #[test]
    fn seccomp_profiles() {
        use cri::security_profile::ProfileType;
        let with = |p: Option<cri::SecurityProfile>, legacy: &str| {
            let c = with_sc(container("a"), |sc| {
                sc.seccomp = p;
                #[allow(deprecated)]
                {
                    sc.seccomp_profile_path = legacy.into();
                }
            });
            build(&c, &busybox()).map(|s| s["linux"].get("seccomp").cloned())
        };
        let prof = |t: ProfileType, r: &str| {
            Some(cri::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            })
        };
        let def = with(prof(ProfileType::RuntimeDefault, ""), "")
            .unwrap()
            .unwrap();
        assert_eq!(def["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(def, seccomp::default_profile(&s(DEFAULT_CAPS)));
        assert!(
            def["syscalls"].to_string().contains("\"chroot\""),
            "CAP_SYS_CHROOT is default"
        );
        assert!(with(prof(ProfileType::Unconfined, ""), "")
            .unwrap()
            .is_none());
        assert!(with(None, "").unwrap().is_none());
        assert!(with(None, "unconfined").unwrap().is_none());
        assert_eq!(with(None, "runtime/default").unwrap().unwrap(), def);
        assert_eq!(with(None, "docker/default").unwrap().unwrap(), def);
        assert!(invalid(with(None, "bogus")).contains("seccomp_profile_path"));

        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("p.json");
        std::fs::write(
            &good,
            r#"{"defaultAction":"SCMP_ACT_LOG","architectures":["SCMP_ARCH_X86_64"],"syscalls":[]}"#,
        )
        .unwrap();
        let g = good.to_string_lossy().to_string();
        let p = with(prof(ProfileType::Localhost, &g), "").unwrap().unwrap();
        assert_eq!(p["defaultAction"], "SCMP_ACT_LOG");
        assert_eq!(with(None, &format!("localhost/{g}")).unwrap().unwrap(), p);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "[1,2]").unwrap();
        let e = invalid(with(
            prof(ProfileType::Localhost, &bad.to_string_lossy()),
            "",
        ));
        assert!(
            e.contains("security_context.seccomp") && e.contains("bad.json"),
            "{e}"
        );
        let e = invalid(with(
            prof(ProfileType::Localhost, "/nonexistent/p.json"),
            "",
        ));
        assert!(e.contains("cannot read"), "{e}");
        assert!(invalid(with(prof(ProfileType::Localhost, ""), "")).contains("Localhost"));
    }

    #[test]
    fn apparmor_only_when_enabled() {
        use cri::security_profile::ProfileType;
        let c = |p: ProfileType, r: &str| {
            with_sc(container("a"), |sc| {
                sc.apparmor = Some(cri::SecurityProfile {
                    profile_type: p as i32,
                    localhost_ref: r.into(),
                })
            })
        };
        let pc = pod_config();
        let root = rootfs();
        let run = |c: &cri::ContainerConfig, o: &SpecOptions| {
            container_spec("c1", c, &pod(&pc), &busybox(), root.path(), o)
                .map(|s| s["process"].get("apparmorProfile").cloned())
        };
        let on = SpecOptions {
            apparmor: true,
            apparmor_default_profile: Some("berth-default".into()),
            ..opts()
        };
        assert_eq!(
            run(&c(ProfileType::RuntimeDefault, ""), &on).unwrap(),
            Some(json!("berth-default"))
        );
        assert_eq!(
            run(&c(ProfileType::RuntimeDefault, ""), &opts()).unwrap(),
            None
        );
        assert_eq!(run(&container("a"), &opts()).unwrap(), None);
        assert_eq!(
            run(&c(ProfileType::Localhost, "localhost/my-prof"), &on).unwrap(),
            Some(json!("my-prof"))
        );
        assert!(
            invalid(run(&c(ProfileType::Localhost, "my-prof"), &opts()).map(|_| Value::Null))
                .contains("AppArmor")
        );
        assert_eq!(run(&c(ProfileType::Unconfined, ""), &on).unwrap(), None);
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
            eprintln!("skipping runc_runs_the_spec: runc not found");
            return;
        };
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping runc_runs_the_spec: not root");
            return;
        }
        if !Path::new("/bin/busybox").exists() {
            eprintln!("skipping runc_runs_the_spec: /bin/busybox missing");
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
}
