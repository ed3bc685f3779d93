//! Capabilities, seccomp, AppArmor, and the masked and read-only paths of
//! a CRI container, as containerd's CRI plugin sets them.

use std::path::Path;

use berth_api::runtime::v1 as cri;
use oci_spec::runtime::LinuxSeccomp;

use super::{SpecError, SpecOptions, Who};
use crate::cri::seccomp;
use crate::runtime_spec::defaults::DEFAULT_CAPS;
pub use crate::runtime_spec::defaults::{DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS};

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

pub(super) struct Caps {
    /// bounding = effective = permitted.
    pub(super) set: Vec<String>,
    pub(super) ambient: Vec<String>,
}

pub(super) fn cap_name(who: &Who, field: &str, c: &str) -> Result<String, SpecError> {
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
pub(super) fn capabilities(
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

/// The deprecated string fields: `unconfined`, a default name,
/// `localhost/<path>`, or empty (`empty` says what that means per field).
fn legacy_profile(
    who: &Who,
    field: &'static str,
    value: &str,
    empty: Profile,
    default_names: &[&str],
) -> Result<Profile, SpecError> {
    Ok(match value {
        "" => empty,
        "unconfined" => Profile::Unconfined,
        v if default_names.contains(&v) => Profile::RuntimeDefault,
        v => match v.strip_prefix("localhost/") {
            Some(rest) => Profile::Localhost(rest.to_string()),
            None => return Err(who.invalid(field, format!("unknown profile {v:?}"))),
        },
    })
}

fn profile_of(sp: &cri::SecurityProfile) -> Profile {
    use cri::security_profile::ProfileType;
    match ProfileType::try_from(sp.profile_type) {
        Ok(ProfileType::Unconfined) => Profile::Unconfined,
        Ok(ProfileType::Localhost) => Profile::Localhost(sp.localhost_ref.clone()),
        _ => Profile::RuntimeDefault,
    }
}

pub(super) fn seccomp_profile(
    who: &Who,
    sc: &cri::LinuxContainerSecurityContext,
    privileged: bool,
    bounding: &[String],
) -> Result<Option<LinuxSeccomp>, SpecError> {
    if privileged {
        return Ok(None);
    }
    #[allow(deprecated)]
    let legacy = sc.seccomp_profile_path.as_str();
    let (field, profile) = match &sc.seccomp {
        Some(sp) => ("security_context.seccomp", profile_of(sp)),
        None => (
            "security_context.seccomp_profile_path",
            legacy_profile(
                who,
                "security_context.seccomp_profile_path",
                legacy,
                // An empty seccomp path is unconfined, as in containerd.
                Profile::Unconfined,
                &["runtime/default", "docker/default"],
            )?,
        ),
    };
    match profile {
        Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault => serde_json::from_value(seccomp::default_profile(bounding))
            .map(Some)
            .map_err(|e| SpecError::Internal(format!("berth's default seccomp profile: {e}"))),
        Profile::Localhost(path) => {
            if path.is_empty() {
                return Err(who.invalid(field, "Localhost needs a profile path"));
            }
            let v = seccomp::load_profile(Path::new(&path)).map_err(|e| who.invalid(field, e))?;
            // Typed here, so a profile the runtime would misread is refused
            // now, naming the field.
            serde_json::from_value(v).map(Some).map_err(|e| {
                who.invalid(
                    field,
                    format!("seccomp profile {path} is not an OCI seccomp profile: {e}"),
                )
            })
        }
    }
}

pub(super) fn apparmor_profile(
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
            legacy_profile(
                who,
                "security_context.apparmor_profile",
                legacy,
                // An empty AppArmor name is the runtime default.
                Profile::RuntimeDefault,
                &["runtime/default"],
            )?,
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

/// containerd's default masked and read-only paths unless the CRI config
/// names its own; none for a privileged container.
pub(super) fn masked_and_readonly_paths(
    sc: &cri::LinuxContainerSecurityContext,
    privileged: bool,
) -> (Vec<String>, Vec<String>) {
    if privileged {
        return (vec![], vec![]);
    }
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
}
