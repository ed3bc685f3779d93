//! THE mapping of a CRI container to its OCI runtime spec: every field of
//! the CRI `ContainerConfig` (and of its pod's config) that reaches the
//! spec is read here and handed to a [`SpecBuilder`] step; validation and
//! host lookups live in the sibling modules this calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_api::runtime::v1 as cri;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};
use tracing::debug;

use super::devices::{default_device_rules, devices_at, host_devices, Device};
use super::mounts::mounts;
use super::resources::{own_oom_score_adj, resources};
use super::security::{
    apparmor_profile, capabilities, current_capabilities, masked_and_readonly_paths,
    seccomp_profile,
};
use super::{
    cgroups_path, container_name, PodContext, SpecError, SpecOptions, Who,
    ANNOTATION_CONTAINER_NAME, ANNOTATION_CONTAINER_TYPE, ANNOTATION_IMAGE_NAME,
    ANNOTATION_SANDBOX_ID, ANNOTATION_SANDBOX_NAME, ANNOTATION_SANDBOX_NAMESPACE,
    ANNOTATION_SANDBOX_UID,
};
use crate::runtime_spec::builder::{device_rule, namespace};
use crate::runtime_spec::user::{self, UserRequest};
use crate::runtime_spec::SpecBuilder;
use crate::tasks::spec::{environment, ContainerConfig as ImageConfig};

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
) -> Result<Spec, SpecError> {
    let name = container_name(cfg, id);
    let who = Who(format!("container {name:?}"));

    let default_linux = cri::LinuxContainerConfig::default();
    let linux = cfg.linux.as_ref().unwrap_or(&default_linux);
    let default_sc = cri::LinuxContainerSecurityContext::default();
    let sc = linux.security_context.as_ref().unwrap_or(&default_sc);
    let pod_linux = pod.config.linux.as_ref();
    let pod_sc = pod_linux.and_then(|l| l.security_context.as_ref());
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

    // Process: command, environment, working dir, terminal.
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

    // User: run_as_username / run_as_user / run_as_group /
    // supplemental_groups over the image's User.
    let user = user::resolve(
        &UserRequest {
            run_as_username: &sc.run_as_username,
            run_as_user: sc.run_as_user.as_ref().map(|u| u.value),
            run_as_group: sc.run_as_group.as_ref().map(|g| g.value),
            supplemental_groups: &sc.supplemental_groups,
            strict_supplemental_groups: sc.supplemental_groups_policy
                == cri::SupplementalGroupsPolicy::Strict as i32,
            image_user: image.user.as_deref().unwrap_or(""),
        },
        rootfs,
    )
    .map_err(|e| who.invalid(&e.field, e.message))?;

    // Capabilities, no_new_privs, AppArmor, oom_score_adj.
    let all_caps = match &opts.all_capabilities {
        Some(c) => c.clone(),
        None => current_capabilities()?,
    };
    let caps = capabilities(&who, sc, &all_caps)?;
    let apparmor = apparmor_profile(&who, sc, privileged, opts)?;
    let oom_score_adj = match &linux.resources {
        Some(res) => Some(oom_score_adj(&who, name, res.oom_score_adj, opts)?),
        None => None,
    };

    // Namespaces: the pod's, joined, and the container's own.
    let (namespaces, host_ipc) = namespaces(&who, sc, pod, privileged, opts)?;

    // Mounts.
    let (mounts, rootfs_propagation) = mounts(&who, cfg, sc, pod, privileged, host_ipc)?;

    // Devices and their cgroup rules.
    let mut devices: Vec<Device> = Vec::new();
    let mut device_rules = vec![device_rule(false, None, None, None, "rwm")];
    device_rules.extend(default_device_rules());
    if privileged && !opts.privileged_without_host_devices {
        devices.extend(host_devices()?);
        device_rules = vec![device_rule(true, None, None, None, "rwm")];
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
        let host = who.host_path(&field, "device", &d.host_path)?;
        for dev in devices_at(&who, &field, host, &container_path)? {
            if !privileged || opts.privileged_without_host_devices {
                device_rules.push(dev.rule(perms));
            }
            devices.retain(|o| o.path != dev.path);
            devices.push(dev);
        }
    }

    // Resources.
    let mut resources = resources(&who, linux.resources.as_ref(), opts)?;
    resources.set_devices(Some(device_rules));

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
    let (masked, readonly) = masked_and_readonly_paths(sc, privileged);

    let parent = pod_linux.map(|l| l.cgroup_parent.as_str()).unwrap_or("");
    let cgroups = cgroups_path(opts.cgroup_driver, parent, pod.sandbox_id, id)?;

    let spec_hostname = (pod.uts_ns.is_some() && !pod.config.hostname.is_empty())
        .then(|| pod.config.hostname.clone());
    Ok(SpecBuilder::new()
        .process(args, env, &cwd, cfg.tty)
        .user(&user)
        .capabilities(&caps.set, &caps.ambient)
        .no_new_privileges(sc.no_new_privs)
        .apparmor_profile(apparmor)
        .oom_score_adj(oom_score_adj)
        .readonly_rootfs(sc.readonly_rootfs)
        .hostname(spec_hostname)
        .mounts(mounts)
        .annotations(annotations(cfg, pod, name))
        .resources(resources)
        .cgroups_path(&cgroups)
        .namespaces(namespaces)
        .devices(devices.iter().map(Device::to_oci).collect())
        .sysctl(sysctl)
        .rootfs_propagation(rootfs_propagation)
        .seccomp(seccomp)
        .masked_and_readonly_paths(masked, readonly)
        .build())
}

/// The requested oom_score_adj, raised to the daemon's own (and the
/// configured floor): going below needs CAP_SYS_RESOURCE.
fn oom_score_adj(who: &Who, name: &str, adj: i64, opts: &SpecOptions) -> Result<i32, SpecError> {
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
    Ok(clamped)
}

/// The namespaces: the pod's network, IPC and UTS ones joined; PID per the
/// container's (else the pod's) mode; a mount namespace; a cgroup one on
/// cgroup v2 unless privileged. Also whether the container uses the host's
/// IPC namespace.
fn namespaces(
    who: &Who,
    sc: &cri::LinuxContainerSecurityContext,
    pod: &PodContext,
    privileged: bool,
    opts: &SpecOptions,
) -> Result<(Vec<LinuxNamespace>, bool), SpecError> {
    let pod_sc = pod
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let ns_opts = sc
        .namespace_options
        .as_ref()
        .or_else(|| pod_sc.and_then(|s| s.namespace_options.as_ref()));
    let pod_ns_opts = pod_sc.and_then(|s| s.namespace_options.as_ref());
    let mode = |m: Option<i32>| {
        m.and_then(|m| cri::NamespaceMode::try_from(m).ok())
            .unwrap_or(cri::NamespaceMode::Pod)
    };
    let joined = |p: &Path| Some(PathBuf::from(p));
    let mut out = Vec::new();
    for (kind, path) in [
        (LinuxNamespaceType::Network, pod.netns),
        (LinuxNamespaceType::Ipc, pod.ipc_ns),
        (LinuxNamespaceType::Uts, pod.uts_ns),
    ] {
        if let Some(p) = path {
            out.push(namespace(kind, joined(p)));
        }
    }
    match mode(ns_opts.map(|n| n.pid)) {
        cri::NamespaceMode::Pod => match pod.pid_ns {
            Some(p) => out.push(namespace(LinuxNamespaceType::Pid, joined(p))),
            None if mode(pod_ns_opts.map(|n| n.pid)) == cri::NamespaceMode::Node => {}
            None => out.push(namespace(LinuxNamespaceType::Pid, None)),
        },
        cri::NamespaceMode::Container => out.push(namespace(LinuxNamespaceType::Pid, None)),
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
    out.push(namespace(LinuxNamespaceType::Mount, None));
    if opts.cgroup_v2 && !privileged {
        out.push(namespace(LinuxNamespaceType::Cgroup, None));
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
    Ok((out, host_ipc))
}

/// The CRI's own annotations over the config's: the shim groups a pod's
/// containers by the sandbox id.
fn annotations(
    cfg: &cri::ContainerConfig,
    pod: &PodContext,
    name: &str,
) -> BTreeMap<String, String> {
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
    annotations
}

pub(crate) fn host_hostname() -> String {
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
