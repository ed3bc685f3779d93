//! The one builder of the OCI runtime spec. Each step sets one concern of
//! `oci_spec::runtime::Spec`; the CRI mapping (`cri::spec::container`) and
//! the native Tasks API (`tasks::spec`) call the steps they need, in the
//! manner of containerd's `SpecOpts`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use oci_spec::runtime::{
    Capabilities, Capability, Linux, LinuxCapabilities, LinuxDevice, LinuxDeviceCgroup,
    LinuxDeviceType, LinuxNamespace, LinuxNamespaceType, LinuxResources, LinuxSeccomp, Mount,
    PosixRlimitBuilder, PosixRlimitType, Process, Root, Spec, User,
};
use serde::de::IntoDeserializer;
use serde::Deserialize;

use super::user::ProcessUser;

/// The `ociVersion` berth writes (runc 1.1's format).
pub const OCI_VERSION: &str = "1.0.2";

/// Parses a capability name ("CAP_CHOWN" or "chown") as oci-spec does.
pub fn capability(name: &str) -> Option<Capability> {
    let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
        name.trim().into_deserializer();
    Capability::deserialize(de).ok()
}

/// A mount entry.
pub fn mount(destination: &str, typ: &str, source: impl Into<PathBuf>, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination))
        .set_typ(Some(typ.to_string()))
        .set_source(Some(source.into()))
        .set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// A namespace entry: a new one (`path` None) or one to join.
pub fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ).set_path(path);
    ns
}

/// A device cgroup rule.
pub fn device_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow)
        .set_typ(typ)
        .set_major(major)
        .set_minor(minor)
        .set_access(Some(access.to_string()));
    r
}

/// A device node in the container.
pub fn device(
    path: &str,
    typ: LinuxDeviceType,
    major: i64,
    minor: i64,
    file_mode: u32,
    uid: u32,
    gid: u32,
) -> LinuxDevice {
    let mut d = LinuxDevice::default();
    d.set_path(PathBuf::from(path))
        .set_typ(typ)
        .set_major(major)
        .set_minor(minor)
        .set_file_mode(Some(file_mode))
        .set_uid(Some(uid))
        .set_gid(Some(gid));
    d
}

/// Builds a [`Spec`] step by step. Starts empty but for `ociVersion` and a
/// writable `root.path` of `rootfs` (relative to the bundle); oci-spec's
/// own defaults (youki's) are not used.
#[derive(Debug, Clone)]
pub struct SpecBuilder {
    spec: Spec,
    process: Process,
    linux: Linux,
}

impl Default for SpecBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SpecBuilder {
    pub fn new() -> Self {
        let mut spec = Spec::default();
        let mut root = Root::default();
        root.set_path(PathBuf::from("rootfs"))
            .set_readonly(Some(false));
        spec.set_version(OCI_VERSION.to_string())
            .set_root(Some(root))
            .set_process(None)
            .set_hostname(None)
            .set_mounts(None)
            .set_annotations(None)
            .set_linux(None);
        let mut process = Process::default();
        process
            .set_terminal(Some(false))
            .set_user(User::default())
            .set_args(None)
            .set_env(None)
            .set_cwd(PathBuf::from("/"))
            .set_capabilities(None)
            .set_rlimits(None)
            .set_no_new_privileges(None);
        let mut linux = Linux::default();
        linux
            .set_resources(None)
            .set_namespaces(None)
            .set_masked_paths(None)
            .set_readonly_paths(None);
        SpecBuilder {
            spec,
            process,
            linux,
        }
    }

    /// `process.args`, `env`, `cwd` and `terminal`.
    pub fn process(mut self, args: Vec<String>, env: Vec<String>, cwd: &str, tty: bool) -> Self {
        self.process
            .set_args(Some(args))
            .set_env(Some(env))
            .set_cwd(PathBuf::from(cwd))
            .set_terminal(Some(tty));
        self
    }

    /// `process.user` from the resolver.
    pub fn user(mut self, u: &ProcessUser) -> Self {
        let mut user = User::default();
        user.set_uid(u.uid)
            .set_gid(u.gid)
            .set_additional_gids(Some(u.additional_gids.clone()));
        self.process.set_user(user);
        self
    }

    /// bounding = effective = permitted = `set`; inheritable = ambient =
    /// `ambient` when there are any. Unknown names are skipped (callers
    /// validate them first).
    pub fn capabilities(mut self, set: &[String], ambient: &[String]) -> Self {
        let caps = |names: &[String]| -> Capabilities {
            names.iter().filter_map(|n| capability(n)).collect()
        };
        let mut c = LinuxCapabilities::default();
        c.set_bounding(Some(caps(set)))
            .set_effective(Some(caps(set)))
            .set_permitted(Some(caps(set)))
            .set_inheritable(None)
            .set_ambient(None);
        if !ambient.is_empty() {
            c.set_inheritable(Some(caps(ambient)))
                .set_ambient(Some(caps(ambient)));
        }
        self.process.set_capabilities(Some(c));
        self
    }

    pub fn no_new_privileges(mut self, on: bool) -> Self {
        self.process.set_no_new_privileges(Some(on));
        self
    }

    /// RLIMIT_NOFILE soft = hard = `n`. (oci-spec has no setters for
    /// rlimits, only a builder, hence the Result.)
    pub fn nofile_limit(mut self, n: u64) -> Result<Self, oci_spec::OciSpecError> {
        let r = PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(n)
            .soft(n)
            .build()?;
        self.process.set_rlimits(Some(vec![r]));
        Ok(self)
    }

    pub fn oom_score_adj(mut self, adj: Option<i32>) -> Self {
        self.process.set_oom_score_adj(adj);
        self
    }

    pub fn apparmor_profile(mut self, profile: Option<String>) -> Self {
        self.process.set_apparmor_profile(profile);
        self
    }

    pub fn readonly_rootfs(mut self, ro: bool) -> Self {
        let mut root = Root::default();
        root.set_path(PathBuf::from("rootfs"))
            .set_readonly(Some(ro));
        self.spec.set_root(Some(root));
        self
    }

    pub fn hostname(mut self, name: Option<String>) -> Self {
        self.spec.set_hostname(name);
        self
    }

    /// The mounts, in the order the runtime mounts them.
    pub fn mounts(mut self, mounts: Vec<Mount>) -> Self {
        self.spec.set_mounts(Some(mounts));
        self
    }

    pub fn annotations(mut self, a: BTreeMap<String, String>) -> Self {
        self.spec
            .set_annotations(Some(a.into_iter().collect::<HashMap<_, _>>()));
        self
    }

    pub fn cgroups_path(mut self, path: &str) -> Self {
        self.linux.set_cgroups_path(Some(PathBuf::from(path)));
        self
    }

    pub fn namespaces(mut self, ns: Vec<LinuxNamespace>) -> Self {
        self.linux.set_namespaces(Some(ns));
        self
    }

    pub fn resources(mut self, r: LinuxResources) -> Self {
        self.linux.set_resources(Some(r));
        self
    }

    /// `linux.devices`; none = no entry.
    pub fn devices(mut self, d: Vec<LinuxDevice>) -> Self {
        self.linux.set_devices((!d.is_empty()).then_some(d));
        self
    }

    /// `linux.sysctl`; none = no entry.
    pub fn sysctl(mut self, s: BTreeMap<String, String>) -> Self {
        self.linux
            .set_sysctl((!s.is_empty()).then(|| s.into_iter().collect()));
        self
    }

    pub fn seccomp(mut self, s: Option<LinuxSeccomp>) -> Self {
        self.linux.set_seccomp(s);
        self
    }

    /// `linux.maskedPaths` and `readonlyPaths`; an empty list = no entry.
    pub fn masked_and_readonly_paths(mut self, masked: Vec<String>, readonly: Vec<String>) -> Self {
        self.linux
            .set_masked_paths((!masked.is_empty()).then_some(masked))
            .set_readonly_paths((!readonly.is_empty()).then_some(readonly));
        self
    }

    pub fn rootfs_propagation(mut self, p: Option<&str>) -> Self {
        self.linux.set_rootfs_propagation(p.map(str::to_string));
        self
    }

    pub fn build(self) -> Spec {
        let mut spec = self.spec;
        spec.set_process(Some(self.process))
            .set_linux(Some(self.linux));
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_empty_builder_has_no_youki_defaults() {
        let v = serde_json::to_value(SpecBuilder::new().build()).unwrap();
        assert_eq!(
            v,
            json!({
                "ociVersion": "1.0.2",
                "root": {"path": "rootfs", "readonly": false},
                "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/"},
                "linux": {},
            })
        );
    }

    #[test]
    fn steps_set_their_fields() {
        let spec = SpecBuilder::new()
            .process(vec!["sh".into()], vec!["A=1".into()], "/w", true)
            .user(&ProcessUser {
                uid: 1,
                gid: 2,
                additional_gids: vec![2, 3],
            })
            .capabilities(&["CAP_CHOWN".into(), "kill".into()], &["CAP_KILL".into()])
            .nofile_limit(1024)
            .unwrap()
            .readonly_rootfs(true)
            .hostname(Some("h".into()))
            .mounts(vec![mount("/proc", "proc", "proc", &["nosuid"])])
            .namespaces(vec![
                namespace(LinuxNamespaceType::Network, Some("/n".into())),
                namespace(LinuxNamespaceType::Mount, None),
            ])
            .cgroups_path("/berth/x")
            .devices(vec![])
            .sysctl(BTreeMap::new())
            .masked_and_readonly_paths(vec!["/proc/kcore".into()], vec![])
            .build();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["process"]["args"], json!(["sh"]));
        assert_eq!(v["process"]["cwd"], "/w");
        assert_eq!(v["process"]["terminal"], true);
        assert_eq!(v["process"]["user"]["additionalGids"], json!([2, 3]));
        assert_eq!(v["process"]["capabilities"]["ambient"], json!(["CAP_KILL"]));
        assert_eq!(
            v["process"]["capabilities"]["bounding"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        assert_eq!(
            v["process"]["rlimits"],
            json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
        );
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["hostname"], "h");
        assert_eq!(
            v["linux"]["namespaces"],
            json!([{"type": "network", "path": "/n"}, {"type": "mount"}])
        );
        assert_eq!(v["linux"]["cgroupsPath"], "/berth/x");
        assert!(v["linux"].get("devices").is_none());
        assert!(v["linux"].get("sysctl").is_none());
        assert!(v["linux"].get("readonlyPaths").is_none());
        assert_eq!(v["linux"]["maskedPaths"], json!(["/proc/kcore"]));
    }

    #[test]
    fn capability_names_parse_with_or_without_prefix() {
        assert_eq!(capability("CAP_SYS_ADMIN"), Some(Capability::SysAdmin));
        assert_eq!(
            capability("net_bind_service"),
            Some(Capability::NetBindService)
        );
        assert_eq!(capability("CAP_NOPE"), None);
    }
}
