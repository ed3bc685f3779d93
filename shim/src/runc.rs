//! The OCI runtime (runc, or a runc-compatible CLI such as crun), driven through its
//! command line: `--root R --log <bundle>/log.json --log-format json [--systemd-cgroup]`
//! then `create|start|kill|delete|exec|update|pause|resume|ps`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde_json::Value;

use crate::reaper::{CmdOutput, Reaper};
use crate::runtime::{
    CreateOpts, ExecOpts, OciRuntime, ProcStdio, Result, RuntimeError, RuntimeErrorKind,
};

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

impl Runc {
    fn command(&self) -> Command {
        self.command_logging_to(&self.log)
    }

    fn command_logging_to(&self, log: &Path) -> Command {
        let mut c = Command::new(&self.cfg.binary);
        c.arg("--root")
            .arg(&self.cfg.root)
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json");
        if self.cfg.systemd_cgroup {
            c.arg("--systemd-cgroup");
        }
        c.stdin(Stdio::null());
        c
    }

    fn exec_cmd(&self, cmd: &mut Command, sub: &str, capture: bool) -> Result<CmdOutput> {
        self.exec_logged(cmd, sub, capture, &self.log)
    }

    /// Runs one runtime command; a failure is classified here, once, from its
    /// stderr, else (create/exec: stderr belongs to the container) from the last
    /// error in its JSON log `log`.
    fn exec_logged(
        &self,
        cmd: &mut Command,
        sub: &str,
        capture: bool,
        log: &Path,
    ) -> Result<CmdOutput> {
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
        .map_err(|e| RuntimeError::spawn(&what, &e))?;
        if out.success() {
            return Ok(out);
        }
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if msg.is_empty() {
            msg = last_log_error(log).unwrap_or_default();
        }
        Err(RuntimeError::classify(&what, &msg, out.status))
    }

    fn simple(&self, args: &[&str]) -> Result<CmdOutput> {
        let mut c = self.command();
        c.args(args);
        self.exec_cmd(&mut c, args.first().copied().unwrap_or(""), true)
    }
}

impl OciRuntime for Runc {
    fn create(&self, id: &str, o: &CreateOpts, stdio: ProcStdio) -> Result<()> {
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

    fn start(&self, id: &str) -> Result<()> {
        self.simple(&["start", id]).map(|_| ())
    }

    fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        if all {
            self.simple(&["kill", "--all", id, &sig])
        } else {
            self.simple(&["kill", id, &sig])
        }
        .map(|_| ())
    }

    fn delete(&self, id: &str, force: bool) -> Result<()> {
        if force {
            self.simple(&["delete", "--force", id])
        } else {
            self.simple(&["delete", id])
        }
        .map(|_| ())
    }

    fn exec(&self, id: &str, o: &ExecOpts, stdio: ProcStdio) -> Result<()> {
        let mut c = self.command_logging_to(o.log);
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
        self.exec_logged(&mut c, "exec", false, o.log).map(|_| ())
    }

    fn update(&self, id: &str, resources_file: &Path) -> Result<()> {
        let f = resources_file.to_string_lossy();
        self.simple(&["update", "--resources", &f, id]).map(|_| ())
    }

    fn pause(&self, id: &str) -> Result<()> {
        self.simple(&["pause", id]).map(|_| ())
    }

    fn resume(&self, id: &str) -> Result<()> {
        self.simple(&["resume", id]).map(|_| ())
    }

    /// Pids of every process in the container.
    fn ps(&self, id: &str) -> Result<Vec<u32>> {
        let out = self.simple(&["ps", "--format", "json", id])?;
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            RuntimeError::new(
                RuntimeErrorKind::Failed,
                format!("parse {} ps output: {e}", self.cfg.binary),
            )
        })?;
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
    }
}
