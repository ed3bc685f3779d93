//! The mounts of a CRI container: containerd's default mounts, the CRI
//! mounts (bind, with propagation checked against the host's mounts), the
//! pod's files (/etc/hosts, /etc/hostname, /etc/resolv.conf) and /dev/shm.

use std::path::{Path, PathBuf};

use berth_api::runtime::v1 as cri;
use oci_spec::runtime::Mount;
use tracing::{debug, warn};

use super::{PodContext, SpecError, Who};
use crate::runtime_spec::builder::mount;
use crate::runtime_spec::defaults::base_mounts;

/// A lexically cleaned absolute container path ("/a//b/../c/" -> "/a/c").
pub(super) fn clean_path(p: &str) -> String {
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
pub(super) struct BindMount {
    pub(super) container_path: String,
    pub(super) host_path: PathBuf,
    pub(super) readonly: bool,
    pub(super) propagation: cri::MountPropagation,
    pub(super) field: String,
}

/// The optional fields ("shared:N master:M") of the mount `path` lives on,
/// per `mountinfo` (/proc/self/mountinfo's format), and its mount point.
pub(super) fn mount_of(path: &Path, mountinfo: &str) -> Option<(PathBuf, String)> {
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

pub(super) fn check_propagation(
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
pub(super) fn mounts(
    who: &Who,
    cfg: &cri::ContainerConfig,
    sc: &cri::LinuxContainerSecurityContext,
    pod: &PodContext,
    privileged: bool,
    host_ipc: bool,
) -> Result<(Vec<Mount>, Option<&'static str>), SpecError> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    let mut defaults = base_mounts(sys_mode);
    defaults.push(mount(
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        &["nosuid", "noexec", "nodev", "relatime", sys_mode],
    ));

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
        who.host_path(&field, "host path", &m.host_path)?;
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
        let d = clean_path(&m.destination().to_string_lossy());
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
        out.push(mount(&b.container_path, "bind", src, &["rbind", prop, rw]));
    }
    Ok((out, rootfs_propagation))
}
