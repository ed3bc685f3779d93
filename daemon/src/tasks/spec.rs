//! The OCI runtime spec (config.json) of a task: the process from the image
//! config (Entrypoint, Cmd, Env, WorkingDir, User) and containerd's default
//! Linux spec around it (mounts, capabilities, masked paths, namespaces).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::TaskError;

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

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

/// The process of a task, resolved against its image.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub terminal: bool,
    pub hostname: String,
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

/// Reads a small file of the container's rootfs without following symlinks
/// anywhere on the way: a name lookup must not read the host's files.
pub(crate) fn read_rootfs_file(rootfs: &Path, rel: &str) -> Option<String> {
    let mut p = rootfs.to_path_buf();
    for part in rel.split('/').filter(|s| !s.is_empty()) {
        p.push(part);
        let md = std::fs::symlink_metadata(&p).ok()?;
        if md.file_type().is_symlink() {
            return None;
        }
    }
    let md = std::fs::metadata(&p).ok()?;
    if !md.is_file() || md.len() > 16 << 20 {
        return None;
    }
    std::fs::read_to_string(&p).ok()
}

fn lookup_id(rootfs: &Path, file: &str, name: &str, field: usize) -> Option<(u32, Option<u32>)> {
    let text = read_rootfs_file(rootfs, file)?;
    text.lines().find_map(|l| {
        let parts: Vec<&str> = l.split(':').collect();
        if parts.first() == Some(&name) && parts.len() > field {
            let id = parts[field].parse().ok()?;
            // For passwd entries the primary group follows the uid.
            let gid = parts.get(field + 1).and_then(|g| g.parse().ok());
            Some((id, gid))
        } else {
            None
        }
    })
}

/// Resolves the image's `User` ("", "uid", "uid:gid", "name", "name:group")
/// to numeric ids, looking names up in the rootfs' /etc/passwd and /etc/group.
pub fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32), TaskError> {
    let user = user.trim();
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let bad = |what: &str| {
        TaskError::InvalidArgument(format!(
            "image user {user:?}: {what} is not numeric and not in the image's /etc/{}",
            if what == "group" { "group" } else { "passwd" }
        ))
    };
    let (uid, passwd_gid) = match u.parse::<u32>() {
        Ok(n) => (n, None),
        Err(_) => lookup_id(rootfs, "etc/passwd", u, 2).ok_or_else(|| bad("user"))?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup_id(rootfs, "etc/group", g, 2)
                .map(|(id, _)| id)
                .ok_or_else(|| bad("group"))?,
        },
        None => passwd_gid.unwrap_or(if u.parse::<u32>().is_ok() { 0 } else { uid }),
    };
    Ok((uid, gid))
}

/// The spec of native task `rec` (`berthctl run`) from its image config,
/// the extra environment and the rootfs (read for /etc/passwd, /etc/group).
pub fn task_spec(
    rec: &super::TaskRecord,
    cfg: &ContainerConfig,
    extra_env: &[String],
    rootfs: &Path,
) -> Result<Value, TaskError> {
    let hostname = rec.id[..12.min(rec.id.len())].to_string();
    let (uid, gid) = resolve_user(cfg.user.as_deref().unwrap_or(""), rootfs)?;
    let process = ProcessSpec {
        args: rec.args.clone(),
        env: environment(cfg, extra_env, &hostname, rec.tty),
        cwd: cfg
            .working_dir
            .clone()
            .filter(|w| w.starts_with('/'))
            .unwrap_or_else(|| "/".into()),
        uid,
        gid,
        terminal: rec.tty,
        hostname,
    };
    let mut annotations = BTreeMap::new();
    annotations.insert(
        super::SANDBOX_ANNOTATION.to_string(),
        rec.sandbox_id.clone(),
    );
    annotations.insert("berth.io/task-name".to_string(), rec.name.clone());
    Ok(build_spec(&process, &rec.cgroups_path, &annotations))
}

/// containerd's default Linux spec around `p`, with an absolute cgroups path
/// (HOST.md: a relative one lands under the caller's cgroup) and no
/// oomScoreAdj (the process inherits the shim's, which is never below
/// berthd's own).
pub fn build_spec(
    p: &ProcessSpec,
    cgroups_path: &str,
    annotations: &BTreeMap<String, String>,
) -> Value {
    let caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": p.terminal,
            "user": { "uid": p.uid, "gid": p.gid },
            "args": p.args,
            "env": p.env,
            "cwd": p.cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
            "noNewPrivileges": true,
        },
        "root": { "path": "rootfs", "readonly": false },
        "hostname": p.hostname,
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/run", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
        ],
        "annotations": annotations,
        "linux": {
            "resources": { "devices": [{ "allow": false, "access": "rwm" }] },
            "cgroupsPath": cgroups_path,
            "namespaces": [
                { "type": "pid" },
                { "type": "ipc" },
                { "type": "uts" },
                { "type": "mount" },
                { "type": "network" },
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    })
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
    fn users_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir(r.join("etc")).unwrap();
        std::fs::write(
            r.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n",
        )
        .unwrap();
        std::fs::write(r.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user("", r).unwrap(), (0, 0));
        assert_eq!(resolve_user("1000", r).unwrap(), (1000, 0));
        assert_eq!(resolve_user("1000:7", r).unwrap(), (1000, 7));
        assert_eq!(resolve_user("www", r).unwrap(), (33, 34));
        assert_eq!(resolve_user("www:staff", r).unwrap(), (33, 50));
        assert!(resolve_user("nobody", r).is_err());
        assert!(resolve_user("1:nogroup", r).is_err());
        // A symlink out of the rootfs is not followed.
        std::fs::remove_file(r.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("etc/passwd")).unwrap();
        assert!(resolve_user("root", r).is_err());
    }

    #[test]
    fn spec_has_absolute_cgroup_and_no_oom_adj() {
        let p = ProcessSpec {
            args: vec!["sleep".into(), "1".into()],
            env: vec![DEFAULT_PATH.into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            terminal: false,
            hostname: "abc".into(),
        };
        let s = build_spec(&p, "/berth/abc", &BTreeMap::new());
        assert_eq!(s["linux"]["cgroupsPath"], "/berth/abc");
        assert!(s["process"].get("oomScoreAdj").is_none());
        assert_eq!(s["process"]["args"][0], "sleep");
        assert_eq!(s["root"]["path"], "rootfs");
        assert_eq!(
            s["linux"]["namespaces"].as_array().map(|a| a.len()),
            Some(5)
        );
    }
}
