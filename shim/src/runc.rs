//! The OCI runtime (runc, or a runc-compatible CLI such as crun), driven through its
//! command line: `--root R --log <bundle>/log.json --log-format json [--systemd-cgroup]`
//! then `create|start|kill|delete|exec|update|pause|resume|ps`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde_json::Value;

use crate::reaper::{CmdOutput, Reaper};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuncError {
    pub msg: String,
}

impl std::fmt::Display for RuncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for RuncError {}

impl RuncError {
    fn new(msg: impl Into<String>) -> Self {
        RuncError { msg: msg.into() }
    }

    /// The container is unknown to the runtime.
    pub fn is_not_exist(&self) -> bool {
        let m = self.msg.to_ascii_lowercase();
        m.contains("does not exist") || m.contains("not found") || m.contains("no such")
    }

    /// The container (or its init) is not running any more.
    pub fn is_not_running(&self) -> bool {
        let m = self.msg.to_ascii_lowercase();
        m.contains("not running") || m.contains("process already finished") || self.is_not_exist()
    }
}

pub type Result<T> = std::result::Result<T, RuncError>;

/// Runtime settings of one container (kept in `<bundle>/berth-shim.json` for `delete`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub binary: String,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
}

impl RuntimeConfig {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::json!({
            "binary": self.binary,
            "root": self.root,
            "systemd_cgroup": self.systemd_cgroup,
        })
        .to_string()
        .into_bytes()
    }

    pub fn from_json(data: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(data).ok()?;
        Some(RuntimeConfig {
            binary: v.get("binary")?.as_str()?.to_string(),
            root: PathBuf::from(v.get("root")?.as_str()?),
            systemd_cgroup: v
                .get("systemd_cgroup")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

pub const RUNTIME_FILE: &str = "berth-shim.json";

#[derive(Clone)]
pub struct Runc {
    pub cfg: RuntimeConfig,
    /// `<bundle>/log.json`: runc writes its errors there (stderr belongs to the container).
    pub log: PathBuf,
    /// None: wait for commands directly (only in the short-lived `delete` action).
    pub reaper: Option<Arc<Reaper>>,
}

pub struct CreateOpts<'a> {
    pub bundle: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
}

pub struct ExecOpts<'a> {
    pub process_file: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
}

/// The container's stdio for `create`/`exec` (runc hands them to the process).
pub struct ProcStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl Runc {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.cfg.binary);
        c.arg("--root")
            .arg(&self.cfg.root)
            .arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json");
        if self.cfg.systemd_cgroup {
            c.arg("--systemd-cgroup");
        }
        c.stdin(Stdio::null());
        c
    }

    fn exec_cmd(&self, cmd: &mut Command, sub: &str, capture: bool) -> Result<CmdOutput> {
        let what = format!("{} {sub}", self.cfg.binary);
        let out = match &self.reaper {
            Some(r) => r.run(cmd, None, capture),
            None => {
                if capture {
                    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                }
                cmd.output().map(|o| CmdOutput {
                    status: o.status.code().map(|c| c as u32).unwrap_or(255),
                    stdout: o.stdout,
                    stderr: o.stderr,
                })
            }
        }
        .map_err(|e| RuncError::new(format!("run {what}: {e}")))?;
        if out.success() {
            return Ok(out);
        }
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if msg.is_empty() {
            // create/exec: stderr belongs to the container; runc logged the error.
            msg = last_log_error(&self.log).unwrap_or_default();
        }
        if msg.is_empty() {
            msg = format!("exit status {}", out.status);
        }
        if msg.starts_with(&what) {
            Err(RuncError::new(msg))
        } else {
            Err(RuncError::new(format!("{what}: {msg}")))
        }
    }

    fn simple(&self, args: &[&str]) -> Result<CmdOutput> {
        let mut c = self.command();
        c.args(args);
        self.exec_cmd(&mut c, args.first().copied().unwrap_or(""), true)
    }

    pub fn create(&self, id: &str, o: &CreateOpts, stdio: ProcStdio) -> Result<()> {
        truncate_log(&self.log);
        let mut c = self.command();
        c.arg("create")
            .arg("--bundle")
            .arg(o.bundle)
            .arg("--pid-file")
            .arg(o.pid_file);
        if let Some(s) = o.console_socket {
            c.arg("--console-socket").arg(s);
        }
        if o.no_pivot {
            c.arg("--no-pivot");
        }
        if o.no_new_keyring {
            c.arg("--no-new-keyring");
        }
        c.arg(id)
            .stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        self.exec_cmd(&mut c, "create", false).map(|_| ())
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.simple(&["start", id]).map(|_| ())
    }

    pub fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        if all {
            self.simple(&["kill", "--all", id, &sig])
        } else {
            self.simple(&["kill", id, &sig])
        }
        .map(|_| ())
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        if force {
            self.simple(&["delete", "--force", id])
        } else {
            self.simple(&["delete", id])
        }
        .map(|_| ())
    }

    pub fn exec(&self, id: &str, o: &ExecOpts, stdio: ProcStdio) -> Result<()> {
        let mut c = self.command();
        c.arg("exec")
            .arg("--process")
            .arg(o.process_file)
            .arg("--detach")
            .arg("--pid-file")
            .arg(o.pid_file);
        if let Some(s) = o.console_socket {
            c.arg("--console-socket").arg(s);
        }
        c.arg(id)
            .stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        self.exec_cmd(&mut c, "exec", false).map(|_| ())
    }

    pub fn update(&self, id: &str, resources_file: &Path) -> Result<()> {
        let f = resources_file.to_string_lossy();
        self.simple(&["update", "--resources", &f, id]).map(|_| ())
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.simple(&["pause", id]).map(|_| ())
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.simple(&["resume", id]).map(|_| ())
    }

    /// Pids of every process in the container.
    pub fn ps(&self, id: &str) -> Result<Vec<u32>> {
        let out = self.simple(&["ps", "--format", "json", id])?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| RuncError::new(format!("parse runc ps output: {e}")))?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_u64().map(|p| p as u32))
                    .collect()
            })
            .unwrap_or_default())
    }
}

fn truncate_log(path: &Path) {
    // One log per create: an old error must not be reported for a new failure.
    let _ = std::fs::write(path, b"");
}

/// The message of the last error-level line of a runc JSON log.
pub fn last_log_error(path: &Path) -> Option<String> {
    let data = std::fs::read(path).ok()?;
    let tail = &data[data.len().saturating_sub(64 * 1024)..];
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| {
            matches!(
                v.get("level").and_then(Value::as_str),
                Some("error" | "fatal")
            )
        })
        .and_then(|v| v.get("msg").and_then(Value::as_str).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_roundtrip() {
        let c = RuntimeConfig {
            binary: "crun".into(),
            root: "/run/berth/runc/k8s.io".into(),
            systemd_cgroup: true,
        };
        assert_eq!(RuntimeConfig::from_json(&c.to_json()), Some(c));
        assert_eq!(RuntimeConfig::from_json(b"{}"), None);
    }

    #[test]
    fn log_error_extraction() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.json");
        std::fs::write(
            &p,
            "{\"level\":\"info\",\"msg\":\"x\"}\n\
             {\"level\":\"error\",\"msg\":\"first\"}\n\
             not json\n\
             {\"level\":\"error\",\"msg\":\"container_linux.go: starting container process caused: exec: \\\"nope\\\": not found\"}\n\
             {\"level\":\"warning\",\"msg\":\"y\"}\n",
        )
        .unwrap();
        let m = last_log_error(&p).unwrap();
        assert!(m.contains("\"nope\""), "{m}");
        assert_eq!(last_log_error(&d.path().join("missing")), None);
        assert!(RuncError::new("container \"x\" does not exist").is_not_exist());
        assert!(RuncError::new("cannot kill: container not running").is_not_running());
    }
}
