//! The OCI runtime spec (config.json) of a CRI container, built from its
//! `runtime.v1` ContainerConfig, its pod's config and namespaces, and its
//! image's config, the way containerd's CRI plugin builds it, as a typed
//! `oci_spec::runtime::Spec` made with the shared
//! [`SpecBuilder`](crate::runtime_spec::SpecBuilder).
//!
//! Where to look:
//! - [`container`]: THE mapping: reads the CRI config field by field and
//!   calls the builder's steps (process, user, capabilities, namespaces,
//!   annotations, sysctls, ...). Start here to find where a CRI field
//!   becomes an OCI spec field.
//! - [`security`]: capabilities, seccomp (berth's default profile, see
//!   [`super::seccomp`]), AppArmor, masked and read-only paths.
//! - [`mounts`]: containerd's default mounts, CRI mounts and propagation,
//!   the pod's files and /dev/shm.
//! - [`devices`]: device nodes and the device cgroup rules.
//! - [`resources`]: `linux.resources` (also UpdateContainerResources),
//!   cgroups paths, oom_score_adj.
//! - [`signal`]: stop signals.
//! - the user: [`crate::runtime_spec::user`], shared with the Tasks API.
//!
//! `root.path` is `rootfs`, relative to the bundle.

use std::path::Path;

use berth_api::runtime::v1 as cri;

pub mod container;
pub mod devices;
pub mod mounts;
pub mod resources;
pub mod security;
pub mod signal;

pub use container::container_spec;
pub use resources::{cgroups_path, linux_resources, own_oom_score_adj};
pub use security::{
    current_capabilities, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, KNOWN_CAPS,
};
pub use signal::{parse_signal, stop_signal};

/// Annotation keys containerd's CRI plugin sets on every container (the
/// shim groups a pod's containers by the sandbox id); defined once, with
/// the shim, in `berth-shim-protocol`.
pub use berth_shim_protocol::annotations::{
    CONTAINER_NAME as ANNOTATION_CONTAINER_NAME, CONTAINER_TYPE as ANNOTATION_CONTAINER_TYPE,
    IMAGE_NAME as ANNOTATION_IMAGE_NAME, SANDBOX_ID as ANNOTATION_SANDBOX_ID,
    SANDBOX_NAME as ANNOTATION_SANDBOX_NAME, SANDBOX_NAMESPACE as ANNOTATION_SANDBOX_NAMESPACE,
    SANDBOX_UID as ANNOTATION_SANDBOX_UID,
};

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

pub(crate) fn container_name<'a>(cfg: &'a cri::ContainerConfig, id: &'a str) -> &'a str {
    cfg.metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(id)
}

/// Adds the pod annotations a RuntimeClass handler passes through
/// (`pod_annotations`) to a spec; the spec's own annotations win.
pub(crate) fn add_pod_annotations(
    doc: &mut oci_spec::runtime::Spec,
    passthrough: Vec<(String, String)>,
) {
    if passthrough.is_empty() {
        return;
    }
    let a = doc.annotations_mut().get_or_insert_with(Default::default);
    for (k, v) in passthrough {
        a.entry(k).or_insert(v);
    }
}

/// Names the container in error messages.
pub(crate) struct Who(pub(crate) String);

impl Who {
    pub(crate) fn invalid(&self, field: &str, msg: impl std::fmt::Display) -> SpecError {
        SpecError::InvalidArgument(format!("{}: {field}: {msg}", self.0))
    }
    pub(crate) fn not_found(&self, field: &str, msg: impl std::fmt::Display) -> SpecError {
        SpecError::NotFound(format!("{}: {field}: {msg}", self.0))
    }
    /// A path on the host the caller names: absolute (relative to what?
    /// berthd's cwd, not the caller's) and without '..' (Kubernetes refuses
    /// it in a hostPath too).
    pub(crate) fn host_path<'a>(
        &self,
        field: &str,
        kind: &str,
        path: &'a str,
    ) -> Result<&'a Path, SpecError> {
        let p = Path::new(path);
        if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(self.invalid(
                field,
                format!(
                    "{kind} {} must be absolute, without '..'",
                    berth_sysutil::echo(path)
                ),
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod golden;

#[cfg(test)]
mod tests;
