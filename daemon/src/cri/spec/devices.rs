//! Device nodes of a CRI container (CRI devices, a privileged container's
//! host devices) and the device cgroup rules.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::{SpecError, Who};
use crate::runtime_spec::builder::{device, device_rule};

/// A device node for `linux.devices`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Device {
    pub(super) path: String,
    kind: LinuxDeviceType,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Device {
    pub(super) fn to_oci(&self) -> LinuxDevice {
        device(
            &self.path,
            self.kind,
            self.major as i64,
            self.minor as i64,
            self.mode,
            self.uid,
            self.gid,
        )
    }

    /// The cgroup rule allowing `access` to this device.
    pub(super) fn rule(&self, access: &str) -> LinuxDeviceCgroup {
        device_rule(
            true,
            Some(self.kind),
            Some(self.major as i64),
            Some(self.minor as i64),
            access,
        )
    }
}

/// The device at `path` (not following a final symlink); None if it is no
/// block or character device.
pub(super) fn device_from_path(path: &Path) -> std::io::Result<Option<Device>> {
    let md = std::fs::symlink_metadata(path)?;
    let ft = md.file_type();
    let kind = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
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
pub(super) fn devices_at(
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
pub(super) fn walk_devices(dir: &Path, container_dir: Option<&str>, out: &mut Vec<Device>) {
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
pub(super) fn host_devices() -> Result<Vec<Device>, SpecError> {
    if !Path::new("/dev").is_dir() {
        return Err(SpecError::Internal("/dev is not a directory".into()));
    }
    let mut out = Vec::new();
    walk_devices(Path::new("/dev"), None, &mut out);
    Ok(out)
}

/// containerd's default device cgroup allow list.
pub(super) fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    let rule = |major: i64, minor: Option<i64>| {
        device_rule(true, Some(LinuxDeviceType::C), Some(major), minor, "rwm")
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
