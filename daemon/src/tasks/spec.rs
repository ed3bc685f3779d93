//! The OCI runtime spec (config.json) of a native task (`berthctl run`):
//! the process from the image config (Entrypoint, Cmd, Env, WorkingDir,
//! User) and containerd's default Linux spec around it (mounts,
//! capabilities, masked paths, namespaces), built with the shared
//! [`SpecBuilder`]; the user is resolved by [`crate::runtime_spec::user`].

use std::collections::BTreeMap;
use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Mount};
use serde::Deserialize;

use super::error::TaskError;
use crate::runtime_spec::builder::{device_rule, mount, namespace};
pub use crate::runtime_spec::defaults::DEFAULT_CAPS;
use crate::runtime_spec::defaults::{base_mounts, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS};
use crate::runtime_spec::user::{self, UserRequest};
use crate::runtime_spec::{Spec, SpecBuilder};

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parts of an image config's `config` object a task uses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// The image's `StopSignal` ("SIGTERM", "15", ...), if it names one.
    #[serde(default)]
    pub stop_signal: Option<String>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ContainerConfig>,
}

/// Reads the `config` object of an image config document.
pub fn parse_image_config(body: &[u8], image: &str) -> Result<ContainerConfig, TaskError> {
    let f: ConfigFile = serde_json::from_slice(body).map_err(|e| {
        TaskError::FailedPrecondition(format!("image {image}: its config is not valid: {e}"))
    })?;
    Ok(f.config.unwrap_or_default())
}

/// `docker run` semantics: the image's Entrypoint stays, the given command
/// replaces its Cmd.
pub fn command_line(cfg: &ContainerConfig, args: &[String]) -> Vec<String> {
    let mut out: Vec<String> = cfg.entrypoint.clone().unwrap_or_default();
    if args.is_empty() {
        out.extend(cfg.cmd.clone().unwrap_or_default());
    } else {
        out.extend(args.iter().cloned());
    }
    out
}

/// The image's environment with `extra` KEY=VALUE entries laid over it, PATH
/// defaulted, HOSTNAME and (with a terminal) TERM set.
pub fn environment(
    cfg: &ContainerConfig,
    extra: &[String],
    hostname: &str,
    tty: bool,
) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: &str| {
        let key = entry.split('=').next().unwrap_or(entry);
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(entry.to_string());
    };
    set(DEFAULT_PATH);
    set(&format!("HOSTNAME={hostname}"));
    if tty {
        set("TERM=xterm");
    }
    for e in cfg.env.iter().flatten() {
        set(e);
    }
    for e in extra {
        set(e);
    }
    env
}

/// containerd's default masked paths for a native task: the CRI's list
/// without the powercap directory (containerd's `pkg/oci` predates it).
fn task_masked_paths() -> Vec<String> {
    DEFAULT_MASKED_PATHS
        .iter()
        .filter(|p| **p != "/sys/devices/virtual/powercap")
        .map(|p| p.to_string())
        .collect()
}

/// containerd's default mounts of a native task: the base ones and a /run
/// tmpfs.
fn task_mounts() -> Vec<Mount> {
    let mut m = base_mounts("ro");
    m.push(mount(
        "/run",
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    ));
    m
}

/// The spec of native task `rec` (`berthctl run`): the process from the
/// image config and the extra environment, the user resolved as the CRI
/// resolves an image's `User` (`rootfs` is read for /etc/passwd and
/// /etc/group), containerd's default Linux spec around it, new namespaces,
/// an absolute cgroups path (HOST.md: a relative one lands under the
/// caller's cgroup) and no oomScoreAdj (the process inherits the shim's,
/// which is never below berthd's own).
pub fn task_spec(
    rec: &super::TaskRecord,
    cfg: &ContainerConfig,
    extra_env: &[String],
    rootfs: &Path,
) -> Result<Spec, TaskError> {
    let hostname = rec.id[..12.min(rec.id.len())].to_string();
    let user = user::resolve(
        &UserRequest {
            image_user: cfg.user.as_deref().unwrap_or(""),
            ..Default::default()
        },
        rootfs,
    )
    .map_err(|e| TaskError::InvalidArgument(format!("image {}: {e}", rec.image)))?;
    let cwd = cfg
        .working_dir
        .clone()
        .filter(|w| w.starts_with('/'))
        .unwrap_or_else(|| "/".into());
    let mut annotations = BTreeMap::new();
    annotations.insert(
        berth_shim_protocol::annotations::SANDBOX_ID.to_string(),
        rec.sandbox_id.clone(),
    );
    annotations.insert("berth.io/task-name".to_string(), rec.name.clone());
    let caps: Vec<String> = DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ns = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
    ];
    let mut resources = LinuxResources::default();
    resources.set_devices(Some(vec![device_rule(false, None, None, None, "rwm")]));
    let builder = SpecBuilder::new()
        .nofile_limit(1024)
        .map_err(|e| TaskError::Internal(format!("the spec of task {}: {e}", rec.name)))?;
    Ok(builder
        .process(
            rec.args.clone(),
            environment(cfg, extra_env, &hostname, rec.tty),
            &cwd,
            rec.tty,
        )
        .user(&user)
        .capabilities(&caps, &[])
        .no_new_privileges(true)
        .hostname(Some(hostname))
        .mounts(task_mounts())
        .annotations(annotations)
        .resources(resources)
        .cgroups_path(&rec.cgroups_path)
        .namespaces(ns.into_iter().map(|t| namespace(t, None)).collect())
        .masked_and_readonly_paths(task_masked_paths(), strs(DEFAULT_READONLY_PATHS))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(entry: Option<&[&str]>, cmd: Option<&[&str]>) -> ContainerConfig {
        ContainerConfig {
            entrypoint: entry.map(|v| v.iter().map(|s| s.to_string()).collect()),
            cmd: cmd.map(|v| v.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn command_keeps_entrypoint_and_replaces_cmd() {
        let c = cfg(Some(&["/pause", "-P"]), Some(&["x"]));
        assert_eq!(command_line(&c, &[]), ["/pause", "-P", "x"]);
        assert_eq!(command_line(&c, &["y".into()]), ["/pause", "-P", "y"]);
        let c = cfg(None, Some(&["sh"]));
        assert_eq!(command_line(&c, &[]), ["sh"]);
        assert_eq!(
            command_line(&c, &["echo".into(), "hi".into()]),
            ["echo", "hi"]
        );
        assert!(command_line(&cfg(None, None), &[]).is_empty());
    }

    #[test]
    fn environment_layers_and_defaults() {
        let c = ContainerConfig {
            env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
            ..Default::default()
        };
        let env = environment(&c, &["A=2".into(), "B=3".into()], "h", true);
        assert_eq!(env, ["HOSTNAME=h", "TERM=xterm", "PATH=/bin", "A=2", "B=3"]);
        let env = environment(&ContainerConfig::default(), &[], "h", false);
        assert_eq!(env, [DEFAULT_PATH, "HOSTNAME=h"]);
    }

    #[test]
    fn image_config_parses() {
        let c = parse_image_config(
            br#"{"architecture":"amd64","config":{"Cmd":["sh"],"Env":["PATH=/bin"],"WorkingDir":"/w","User":"1:2"}}"#,
            "x",
        )
        .unwrap();
        assert_eq!(c.cmd.as_deref(), Some(&["sh".to_string()][..]));
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
        assert_eq!(
            parse_image_config(b"{}", "x").unwrap(),
            ContainerConfig::default()
        );
        assert!(parse_image_config(b"nope", "x").is_err());
    }

    #[test]
    fn native_task_users_resolve_as_the_cri_does() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir(r.join("etc")).unwrap();
        std::fs::write(
            r.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n",
        )
        .unwrap();
        std::fs::write(r.join("etc/group"), "root:x:0:\nstaff:x:50:www\n").unwrap();
        let rec = |user: &str| {
            let cfg = ContainerConfig {
                user: Some(user.into()),
                ..Default::default()
            };
            task_spec(&record(), &cfg, &[], r).map(|s| s.process().as_ref().unwrap().user().clone())
        };
        let u = rec("www").unwrap();
        assert_eq!((u.uid(), u.gid()), (33, 34));
        assert_eq!(u.additional_gids().as_deref(), Some(&[34, 50][..]));
        let u = rec("33").unwrap();
        assert_eq!((u.uid(), u.gid()), (33, 34), "a uid's passwd group");
        let u = rec("1000:7").unwrap();
        assert_eq!((u.uid(), u.gid()), (1000, 7));
        match rec("nobody") {
            Err(TaskError::InvalidArgument(m)) => {
                assert!(m.contains("image busybox") && m.contains("nobody"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    fn record() -> crate::tasks::TaskRecord {
        crate::tasks::TaskRecord {
            id: "abcdef0123456789".into(),
            name: "t".into(),
            sandbox_id: "abcdef0123456789".into(),
            image: "busybox".into(),
            args: vec!["sleep".into(), "1".into()],
            tty: false,
            auto_remove: false,
            status: crate::tasks::TaskStatus::Creating,
            pid: 0,
            exit_code: None,
            created_at: 0,
            started_at: 0,
            finished_at: 0,
            reason: String::new(),
            bundle: "/b".into(),
            log_path: "/l".into(),
            stdio: crate::shim::StdioScheme::File,
            snapshot: String::new(),
            shim_address: String::new(),
            shim_binary: Default::default(),
            runtime_root: "/r".into(),
            runtime: Default::default(),
            kind: crate::tasks::TaskKind::Native,
            keep_log: false,
            stdin: false,
            cgroups_path: "/berth/abc".into(),
            cri: None,
        }
    }

    #[test]
    fn spec_has_absolute_cgroup_and_no_oom_adj() {
        let s = task_spec(
            &record(),
            &ContainerConfig::default(),
            &[],
            Path::new("/nonexistent"),
        )
        .unwrap();
        let linux = s.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/berth/abc"))
        );
        let p = s.process().as_ref().unwrap();
        assert!(p.oom_score_adj().is_none());
        assert_eq!(p.args().as_deref().unwrap()[0], "sleep");
        assert_eq!(s.root().as_ref().unwrap().path(), Path::new("rootfs"));
        assert_eq!(s.hostname().as_deref(), Some("abcdef012345"));
        assert_eq!(linux.namespaces().as_ref().map(|n| n.len()), Some(5));
    }
}
