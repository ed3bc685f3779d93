//! Running one plugin: the runtime config passed in `CNI_*` environment
//! variables, the command, the binary lookup, the timeout and error decoding.

use std::path::PathBuf;
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use super::{Cni, CniError};

/// What the runtime tells the plugins about one attachment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeConf {
    /// CNI_CONTAINERID: the sandbox id.
    pub container_id: String,
    /// CNI_NETNS: the pinned namespace's path.
    pub netns: PathBuf,
    /// CNI_IFNAME, e.g. "eth0".
    pub ifname: String,
    /// CNI_ARGS key/value pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments (e.g. "portMappings", "dns", "bandwidth"),
    /// passed as `runtimeConfig` to plugins that declare the capability.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    pub(super) fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Command {
    Add,
    Check,
    Del,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Check => "CHECK",
            Command::Del => "DEL",
        }
    }
}

impl Cni {
    fn find_plugin(&self, kind: &str) -> Result<PathBuf, CniError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: kind.into(),
                dirs: self.bin_dirs.clone(),
            })
    }

    pub(super) async fn exec(
        &self,
        cmd: Command,
        conf: &Value,
        rt: &RuntimeConf,
    ) -> Result<Value, CniError> {
        let kind = conf
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let command = cmd.as_str();
        let bin = self.find_plugin(&kind)?;
        let exec_err = |source| CniError::Exec {
            plugin: kind.clone(),
            command,
            source,
        };
        let cni_path = std::env::join_paths(&self.bin_dirs).unwrap_or_default();
        let stdin = serde_json::to_vec(conf).unwrap_or_default();
        let mut child = tokio::process::Command::new(&bin);
        child
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &rt.container_id)
            .env("CNI_NETNS", &rt.netns)
            .env("CNI_IFNAME", &rt.ifname)
            .env("CNI_ARGS", rt.cni_args())
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // A plugin must not outlive a berthd killed mid-call: recovery's DEL
        // would race an ADD still running.
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches
        // only the child's own state between fork and exec.
        unsafe {
            child.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = child.spawn().map_err(exec_err)?;
        let mut input = child.stdin.take();
        let run = async move {
            if let Some(mut i) = input.take() {
                // A plugin may exit without reading stdin; its error is what matters.
                let _ = i.write_all(&stdin).await;
                drop(i);
            }
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r.map_err(exec_err)?,
            Err(_) => {
                return Err(CniError::Timeout {
                    plugin: kind,
                    command,
                    timeout: self.timeout,
                })
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            if let Ok(err) = serde_json::from_slice::<Value>(&output.stdout) {
                if let Some(code) = err.get("code").and_then(Value::as_u64) {
                    let s = |k: &str| {
                        err.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    return Err(CniError::Plugin {
                        plugin: kind,
                        command,
                        code,
                        msg: s("msg"),
                        details: s("details"),
                    });
                }
            }
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(CniError::PluginFailed {
                plugin: kind,
                command,
                status: output.status.to_string(),
                output: format!("{} {}", stdout.trim(), stderr.trim())
                    .trim()
                    .chars()
                    .take(4096)
                    .collect(),
            });
        }
        if cmd != Command::Add || stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout).map_err(|e| CniError::BadResult {
            plugin: kind,
            command,
            reason: e.to_string(),
        })
    }
}
