//! Shim processes for real: the configured shim binary started with the
//! containerd shim v2 `start` convention, reached over ttrpc, its log fifo
//! followed, and its `delete` command run after it died.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::api;
use tokio::io::AsyncBufReadExt;
use tracing::{debug, warn};

use super::binary::{self, Launcher, ShimBinary, StartReply, NAMESPACE};
use super::client::{RpcCode, ShimError, TaskApi, TaskClient};
use super::connection::{Connected, ShimProcesses, TaskShim};
use crate::config::Config;

/// Shims as the config names them: processes of a shim binary.
pub struct BinaryShims {
    config: Arc<Config>,
    /// Bounds connects and every call but Wait.
    timeout: Duration,
}

impl BinaryShims {
    pub fn new(config: Arc<Config>) -> BinaryShims {
        let timeout = Duration::from_secs(config.shim.rpc_timeout_secs.max(1));
        BinaryShims { config, timeout }
    }

    fn launcher(&self, binary: &ShimBinary) -> Launcher {
        Launcher {
            binary: binary.clone(),
            daemon_address: self.config.socket_path(),
            publish_binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("berthd")),
            socket_dir: self.config.shim_socket_dir(),
            timeout: Duration::from_secs(self.config.shim.start_timeout_secs.max(1)),
            debug: self.config.log_level.contains("debug")
                || self.config.log_level.contains("trace"),
        }
    }
}

#[async_trait]
impl ShimProcesses for BinaryShims {
    fn binary(&self) -> Result<ShimBinary, ShimError> {
        binary::resolve(&self.config)
    }

    async fn start(
        &self,
        binary: &ShimBinary,
        sandbox_id: &str,
        cwd: &Path,
    ) -> Result<StartReply, ShimError> {
        let launcher = self.launcher(binary);
        if let Err(e) = std::fs::create_dir_all(&launcher.socket_dir) {
            warn!(dir = %launcher.socket_dir.display(), error = %e, "cannot create the shim socket dir");
        }
        launcher.start(sandbox_id, cwd).await
    }

    async fn connect(
        &self,
        address: &str,
        api: TaskApi,
        sandbox_id: &str,
    ) -> Result<Connected, ShimError> {
        let client = TaskClient::connect(address, api, NAMESPACE, self.timeout).await?;
        match client.connect_info(sandbox_id).await {
            Ok(r) => Ok((Arc::new(client), r.shim_pid)),
            Err(e) if api == TaskApi::V3 && e.code() == Some(RpcCode::Unimplemented) => {
                debug!(pod = %sandbox_id, "shim does not serve task v3; using v2");
                let v2 = client.with_api(TaskApi::V2);
                let r = v2.connect_info(sandbox_id).await?;
                Ok((Arc::new(v2), r.shim_pid))
            }
            Err(e) => Err(e),
        }
    }

    async fn cleanup(
        &self,
        binary: &ShimBinary,
        id: &str,
        bundle: &Path,
    ) -> Result<api::DeleteResponse, ShimError> {
        self.launcher(binary).delete(id, bundle).await
    }

    fn follow_log(
        &self,
        cwd: &Path,
        sandbox_id: &str,
        create: bool,
    ) -> Result<Option<tokio::task::AbortHandle>, ShimError> {
        if !create && !cwd.join("log").exists() {
            return Ok(None);
        }
        open_log_fifo(cwd, sandbox_id).map(Some)
    }

    fn alive(&self, pid: u32) -> bool {
        super::pid_alive(pid)
    }

    /// Such shims are found by their command line, which names the pod
    /// (`-id`) and this daemon's socket (`-address`), as every shim started
    /// by the containerd convention does; their sockets go too. Such a shim
    /// has no task yet (tasks are created after the record).
    fn kill_unrecorded(&self, sandbox_id: &str) -> usize {
        let address = self.config.socket_path();
        let mut killed = 0;
        for (pid, socket) in shim_processes(sandbox_id, &address) {
            warn!(pod = %sandbox_id, pid, "killing a shim that was never recorded");
            let pid = nix::unistd::Pid::from_raw(pid);
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
                killed += 1;
            }
            if let Some(path) = socket {
                let _ = std::fs::remove_file(path);
            }
        }
        killed
    }
}

/// Live processes whose arguments carry `-id <sandbox_id>` and `-address
/// <address>`, with their `-socket` argument if any (berth-shim's).
fn shim_processes(sandbox_id: &str, address: &Path) -> Vec<(i32, Option<PathBuf>)> {
    let own = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let address = address.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == own || !super::pid_alive(pid as u32) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let value = |flag: &[u8]| args.windows(2).find(|w| w[0] == flag).map(|w| w[1]);
        if value(b"-id") == Some(sandbox_id.as_bytes()) && value(b"-address") == Some(address) {
            let socket = value(b"-socket")
                .filter(|s| !s.is_empty())
                .map(|s| PathBuf::from(std::ffi::OsStr::from_bytes(s)));
            out.push((pid, socket));
        }
    }
    out
}

/// Creates (if needed) the `log` fifo in `dir` and copies what the shim
/// writes to it into berthd's log. Opened read-write, so it never reports
/// EOF between writers; the reader ends when aborted.
fn open_log_fifo(dir: &Path, pod: &str) -> Result<tokio::task::AbortHandle, ShimError> {
    let path = dir.join("log");
    if !path.exists() {
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o700)).map_err(
            |e| {
                ShimError::Binary(format!(
                    "creating the shim log fifo {}: {e}",
                    path.display()
                ))
            },
        )?;
    }
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .map_err(|e| {
            ShimError::Binary(format!("opening the shim log fifo {}: {e}", path.display()))
        })?;
    let pod = pod.to_string();
    let handle = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(rx).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            debug!(target: "berthd::shim::log", pod = %pod, "{line}");
        }
    });
    Ok(handle.abort_handle())
}
