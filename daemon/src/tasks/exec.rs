//! Running a command in a running task and collecting its output (CRI
//! ExecSync, `berthctl tasks exec`).
//!
//! The exec process gets the task's own process spec (env, cwd, user,
//! capabilities, ...) with the command swapped in and no terminal, as
//! containerd does. Its stdout and stderr go to two FIFOs berthd makes in a
//! private directory under `<state>/exec/<exec-id>/`, named to the shim by
//! plain path (both berth-shim and containerd-shim-runc-v2 open a FIFO given
//! that way). berthd opens each FIFO for reading (non-blocking, so no open
//! waits for the other side) and also holds a write end itself until the
//! exec is deleted from the shim: a reader only sees EOF once every writer is
//! gone, so a shim that opens its end late (containerd's opens it from a
//! goroutine after Start returns) cannot make the output look finished early.
//!
//! The whole exec runs in a task of its own, so that a caller that goes away
//! (a cancelled RPC) still leaves nothing behind: the exec is killed, reaped
//! and deleted from the shim, and the FIFOs are removed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use super::error::blocking;
use super::record::TaskStatus;
use super::{TaskError, TaskService};
use crate::shim::{RpcCode, ShimError, TaskShim};

/// What an exec process wrote and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    /// Whether either stream wrote more than the cap (the rest was read and
    /// dropped).
    pub truncated: bool,
}

/// The type URL containerd marshals an OCI process spec under (the value is
/// its JSON). Shims read the JSON and ignore the URL.
pub(super) const PROCESS_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// Under `<state>`: one private directory of FIFOs per exec.
pub(super) const EXEC_DIR: &str = "exec";
/// How long an exec killed at its deadline may take to be reaped.
pub(super) const REAP_WAIT: Duration = Duration::from_secs(10);
/// How long output may keep coming after the exec was deleted: a background
/// child that inherited stdout can hold the FIFO open for ever, and ExecSync
/// must return once the command itself has.
pub(super) const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// Read size for the FIFOs.
pub(super) const CHUNK: usize = 64 * 1024;

/// The exec process's spec: the task's `process` from its config.json with
/// `cmd` as args and no terminal; everything else (env, cwd, user,
/// capabilities, rlimits, apparmor/selinux labels, noNewPrivileges) is kept,
/// so the command runs with the container's own identity.
pub fn exec_process_spec(
    config_json: &[u8],
    cmd: &[String],
) -> Result<serde_json::Value, TaskError> {
    let mut config: serde_json::Value = serde_json::from_slice(config_json)
        .map_err(|e| TaskError::Internal(format!("the task's config.json is not JSON: {e}")))?;
    let mut process = match config.get_mut("process").map(serde_json::Value::take) {
        Some(p @ serde_json::Value::Object(_)) => p,
        _ => {
            return Err(TaskError::Internal(
                "the task's config.json has no process object".into(),
            ))
        }
    };
    if let Some(obj) = process.as_object_mut() {
        obj.insert("args".into(), serde_json::json!(cmd));
        obj.insert("terminal".into(), serde_json::Value::Bool(false));
        // Only meaningful with a terminal.
        obj.remove("consoleSize");
    }
    Ok(process)
}

/// `sh -c 'echo hi'` as one would type it, for messages.
pub(super) fn command_display(cmd: &[String]) -> String {
    let mut out = String::new();
    for (i, a) in cmd.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let plain = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
        if plain {
            out.push_str(a);
        } else {
            let _ = write!(out, "'{}'", a.replace('\'', r"'\''"));
        }
    }
    out
}

pub(super) fn new_exec_id() -> String {
    format!("exec-{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// One stream's output, cut at the cap.
#[derive(Debug, Default)]
struct Captured {
    data: Vec<u8>,
    truncated: bool,
}

impl Captured {
    fn push(&mut self, chunk: &[u8], cap: usize) {
        let room = cap.saturating_sub(self.data.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.data.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

/// Reads a FIFO until EOF (every writer gone) or `stop`, keeping at most
/// `cap` bytes and discarding the rest, so the writer never blocks on a full
/// pipe.
async fn drain(
    mut rx: pipe::Receiver,
    cap: usize,
    mut stop: watch::Receiver<bool>,
    exec_id: String,
) -> Captured {
    let mut out = Captured::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        tokio::select! {
            // Checked first: a writer that never stops must not keep this
            // loop from ending.
            biased;
            _ = stop.wait_for(|s| *s) => break,
            r = rx.read(&mut buf) => match r {
                Ok(0) => break,
                Ok(n) => out.push(&buf[..n], cap),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!(exec = %exec_id, error = %e, "reading an exec's output failed");
                    break;
                }
            },
        }
    }
    out
}

/// The directory of an exec's FIFOs, removed when dropped (however the exec
/// ends).
pub(super) struct ExecDir(pub(super) PathBuf);

impl Drop for ExecDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %self.0.display(), error = %e, "cannot remove an exec's FIFOs"),
        }
    }
}

/// Makes the exec's private directory and its two FIFOs. Blocking.
fn make_fifos(dir: &Path) -> Result<(PathBuf, PathBuf), TaskError> {
    use nix::sys::stat::Mode;
    use std::os::unix::fs::DirBuilderExt;
    let parent = dir
        .parent()
        .ok_or_else(|| TaskError::Internal(format!("{} has no parent", dir.display())))?;
    std::fs::create_dir_all(parent)
        .map_err(TaskError::io(format!("creating {}", parent.display())))?;
    // Private: only berthd and the (root) shim open these.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(TaskError::io(format!("creating {}", dir.display())))?;
    let stdout = dir.join("stdout");
    let stderr = dir.join("stderr");
    for p in [&stdout, &stderr] {
        nix::unistd::mkfifo(p, Mode::S_IRUSR | Mode::S_IWUSR).map_err(|e| {
            TaskError::io(format!("making the FIFO {}", p.display()))(std::io::Error::from(e))
        })?;
    }
    Ok((stdout, stderr))
}

/// A FIFO's read end (non-blocking, so it opens at once) and a write end
/// berthd holds so the reader sees no EOF before the shim has opened its own.
pub(super) fn open_fifo(path: &Path) -> Result<(pipe::Receiver, std::fs::File), TaskError> {
    use std::os::unix::fs::OpenOptionsExt;
    let rx = pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(TaskError::io(format!("opening {}", path.display())))?;
    // Non-blocking: with a reader present, this open cannot wait.
    let keep = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(TaskError::io(format!("opening {}", path.display())))?;
    Ok((rx, keep))
}

/// How the exec process ended, as far as the wait goes.
enum Ended {
    Exited(u32),
    TimedOut(Duration),
    /// The caller went away.
    Abandoned,
}

/// Everything one exec needs, owned, so it can run in a task of its own.
struct ExecJob {
    client: std::sync::Arc<dyn TaskShim>,
    task_id: String,
    task_name: String,
    exec_id: String,
    cmd: Vec<String>,
    config_path: PathBuf,
    dir: PathBuf,
    timeout: Option<Duration>,
    cap: usize,
}

impl ExecJob {
    fn what(&self) -> String {
        format!(
            "`{}` in task {}",
            command_display(&self.cmd),
            self.task_name
        )
    }

    async fn run(self, mut cancel: oneshot::Receiver<()>) -> Result<ExecOutput, TaskError> {
        let config_path = self.config_path.clone();
        let cmd = self.cmd.clone();
        let name = self.task_name.clone();
        let spec = blocking(move || {
            let body = std::fs::read(&config_path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    // The bundle goes with the task.
                    TaskError::FailedPrecondition(format!("task {name} is not running"))
                } else {
                    TaskError::io(format!("reading {}", config_path.display()))(e)
                }
            })?;
            exec_process_spec(&body, &cmd)
        })
        .await?;
        let spec = serde_json::to_vec(&spec).map_err(|e| TaskError::Internal(e.to_string()))?;

        let dir = self.dir.clone();
        let (stdout_path, stderr_path) = blocking(move || make_fifos(&dir)).await?;
        let _dir = ExecDir(self.dir.clone());
        let (out_rx, out_keep) = open_fifo(&stdout_path)?;
        let (err_rx, err_keep) = open_fifo(&stderr_path)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let out_reader = tokio::spawn(drain(
            out_rx,
            self.cap,
            stop_rx.clone(),
            self.exec_id.clone(),
        ));
        let err_reader = tokio::spawn(drain(err_rx, self.cap, stop_rx, self.exec_id.clone()));

        let req = api::ExecProcessRequest {
            id: self.task_id.clone(),
            exec_id: self.exec_id.clone(),
            terminal: false,
            stdin: String::new(),
            stdout: stdout_path.display().to_string(),
            stderr: stderr_path.display().to_string(),
            spec: MessageField::some(Any {
                type_url: PROCESS_TYPE_URL.to_string(),
                value: spec,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut live = false;
        let ended = self.drive(&req, &mut cancel, &mut live).await;
        if live {
            // The wait failed (e.g. the connection broke) with the process
            // maybe still running: the shim refuses to delete a running exec.
            self.kill_and_reap().await;
        }
        self.delete().await;

        // The shim's write ends are closed by now (the exec is deleted);
        // dropping ours lets the readers reach EOF once the pipes are empty.
        drop(out_keep);
        drop(err_keep);
        let exec_id = self.exec_id.clone();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(DRAIN_WAIT).await;
            debug!(exec = %exec_id, "output still open after the exec ended; stop reading");
            let _ = stop_tx.send(true);
        });
        let (out, err) = tokio::join!(out_reader, err_reader);
        stopper.abort();
        let (out, err) = (out.unwrap_or_default(), err.unwrap_or_default());

        match ended? {
            Ended::Exited(code) => {
                debug!(task = %self.task_name, exec = %self.exec_id, exit_code = code, "exec finished");
                Ok(ExecOutput {
                    truncated: out.truncated || err.truncated,
                    stdout: out.data,
                    stderr: err.data,
                    exit_code: code as i32,
                })
            }
            Ended::TimedOut(t) => Err(TaskError::DeadlineExceeded(format!(
                "{} did not finish within {}; it was killed",
                self.what(),
                fmt_duration(t)
            ))),
            Ended::Abandoned => Err(TaskError::Internal(format!(
                "{}: the caller went away; the command was killed",
                self.what()
            ))),
        }
    }

    /// Registers, starts and waits for the exec. `live` is set while the
    /// process may be running.
    async fn drive(
        &self,
        req: &api::ExecProcessRequest,
        cancel: &mut oneshot::Receiver<()>,
        live: &mut bool,
    ) -> Result<Ended, TaskError> {
        self.client
            .exec(req)
            .await
            .map_err(|e| self.shim_error("adding", e))?;
        let started = self
            .client
            .start_exec(&self.task_id, &self.exec_id)
            .await
            .map_err(|e| self.shim_error("starting", e))?;
        *live = true;
        debug!(task = %self.task_name, exec = %self.exec_id, pid = started.pid, "exec started");
        let deadline = async {
            match self.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            w = self.client.wait_exec(&self.task_id, &self.exec_id) => {
                let w = w.map_err(|e| self.shim_error("waiting for", e))?;
                Ended::Exited(w.exit_status)
            }
            _ = deadline => {
                let t = self.timeout.unwrap_or_default();
                info!(task = %self.task_name, exec = %self.exec_id, timeout = ?t, "exec timed out; killing it");
                Ended::TimedOut(t)
            }
            // Never sent: this fires when the caller's side is dropped.
            _ = cancel => {
                info!(task = %self.task_name, exec = %self.exec_id, "exec's caller went away; killing it");
                Ended::Abandoned
            }
        };
        if !matches!(ended, Ended::Exited(_)) {
            self.kill_and_reap().await;
        }
        *live = false;
        Ok(ended)
    }

    fn shim_error(&self, doing: &str, e: ShimError) -> TaskError {
        // The task ended under us: say so rather than "not found".
        if matches!(
            e.code(),
            Some(RpcCode::NotFound) | Some(RpcCode::FailedPrecondition)
        ) {
            return TaskError::FailedPrecondition(format!(
                "{doing} {}: task {} is not running ({e})",
                self.what(),
                self.task_name
            ));
        }
        TaskError::shim(format!("{doing} {}", self.what()))(e)
    }

    /// SIGKILLs the exec process and waits (bounded) for the shim to reap it.
    async fn kill_and_reap(&self) {
        match self
            .client
            .kill_exec(&self.task_id, &self.exec_id, libc::SIGKILL as u32, false)
            .await
        {
            Ok(()) => {}
            // Already exited.
            Err(e) if matches!(e.code(), Some(RpcCode::NotFound)) => {}
            Err(e) => {
                debug!(exec = %self.exec_id, error = %e, "killing an exec failed")
            }
        }
        match tokio::time::timeout(
            REAP_WAIT,
            self.client.wait_exec(&self.task_id, &self.exec_id),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                debug!(exec = %self.exec_id, error = %e, "waiting for a killed exec failed")
            }
            Err(_) => warn!(exec = %self.exec_id, "a killed exec was not reaped in time"),
        }
    }

    /// Deletes the exec from the shim; it may never have been added, or the
    /// task (and with it the exec) may be gone already.
    async fn delete(&self) {
        match self.client.delete_exec(&self.task_id, &self.exec_id).await {
            Ok(_) => {}
            Err(e) if matches!(e.code(), Some(RpcCode::NotFound)) => {}
            Err(e) => {
                warn!(task = %self.task_name, exec = %self.exec_id, error = %e, "deleting an exec from the shim failed")
            }
        }
    }
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

impl TaskService {
    /// Runs `cmd` in the running task `id` (CRI ExecSync) and returns its
    /// output, at most `cap` bytes per stream (the rest is read and dropped,
    /// and `truncated` set), and its exit code. With a `timeout`, a command
    /// still running then is killed, reaped and reported as
    /// `DeadlineExceeded`. The exec is always deleted from the shim and its
    /// FIFOs removed, also when the caller's future is dropped.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
        cap: usize,
    ) -> Result<ExecOutput, TaskError> {
        if cmd.first().is_none_or(|c| c.is_empty()) {
            return Err(TaskError::InvalidArgument(
                "exec needs a command (its first argument is empty)".into(),
            ));
        }
        let task = self.lookup(id)?;
        let rec = task.record();
        if rec.status != TaskStatus::Running {
            return Err(TaskError::FailedPrecondition(format!(
                "task {} is not running",
                rec.name
            )));
        }
        let pod = self.live_shim(&rec)?;
        let exec_id = new_exec_id();
        debug!(task = %rec.name, exec = %exec_id, cmd = %command_display(&cmd), "exec");
        let job = ExecJob {
            client: pod.client(),
            task_id: rec.id.clone(),
            task_name: rec.name.clone(),
            dir: self.config.state.join(EXEC_DIR).join(&exec_id),
            exec_id,
            cmd,
            config_path: rec.bundle.join("config.json"),
            timeout,
            cap,
        };
        // Held until this future ends: dropping it (the caller went away)
        // tells the job to kill the exec.
        let (_cancel, rx) = oneshot::channel::<()>();
        tokio::spawn(job.run(rx))
            .await
            .map_err(|e| TaskError::Internal(format!("exec in task {} failed: {e}", rec.name)))?
    }

    /// Removes the FIFO directories of execs a previous berthd left behind
    /// (it died mid-exec). Call once at start, before any exec.
    pub async fn sweep_exec_dirs(&self) {
        let dir = self.config.state.join(EXEC_DIR);
        let r = blocking(move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TaskError::io(format!("removing {}", dir.display()))(e)),
        })
        .await;
        if let Err(e) = r {
            warn!(error = %e, "cannot remove leftover exec FIFOs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn process_spec_keeps_the_task_identity() {
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": true,
                "consoleSize": {"height": 24, "width": 80},
                "user": {"uid": 1000, "gid": 100, "additionalGids": [10]},
                "args": ["sleep", "3600"],
                "env": ["PATH=/bin", "HOSTNAME=abc"],
                "cwd": "/srv",
                "capabilities": {"bounding": ["CAP_CHOWN"]},
                "noNewPrivileges": true,
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
            },
            "root": {"path": "rootfs"}
        });
        let body = serde_json::to_vec(&config).unwrap();
        let p = exec_process_spec(&body, &strings(&["sh", "-c", "echo hi"])).unwrap();
        assert_eq!(p["args"], serde_json::json!(["sh", "-c", "echo hi"]));
        assert_eq!(p["terminal"], false);
        assert!(p.get("consoleSize").is_none());
        assert_eq!(p["user"], config["process"]["user"]);
        assert_eq!(p["env"], config["process"]["env"]);
        assert_eq!(p["cwd"], "/srv");
        assert_eq!(p["capabilities"], config["process"]["capabilities"]);
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["rlimits"], config["process"]["rlimits"]);
        assert!(p.get("root").is_none());
    }

    #[test]
    fn process_spec_needs_a_process() {
        assert!(exec_process_spec(b"{}", &strings(&["true"])).is_err());
        assert!(exec_process_spec(br#"{"process": 3}"#, &strings(&["true"])).is_err());
        assert!(exec_process_spec(b"not json", &strings(&["true"])).is_err());
    }

    #[test]
    fn capture_caps_and_flags() {
        let mut c = Captured::default();
        c.push(b"hello", 8);
        assert!(!c.truncated);
        c.push(b"world", 8);
        assert_eq!(c.data, b"hellowor");
        assert!(c.truncated);
        c.push(b"more", 8);
        assert_eq!(c.data, b"hellowor");
        let mut z = Captured::default();
        z.push(b"", 0);
        assert!(!z.truncated);
        z.push(b"x", 0);
        assert!(z.truncated && z.data.is_empty());
    }

    #[test]
    fn commands_display_like_a_shell() {
        assert_eq!(
            command_display(&strings(&["sh", "-c", "echo 'a' b"])),
            r#"sh -c 'echo '\''a'\'' b'"#
        );
        assert_eq!(command_display(&strings(&["ls", "/tmp", ""])), "ls /tmp ''");
        let id = new_exec_id();
        assert!(id.starts_with("exec-") && id.len() == 21, "{id}");
        assert_ne!(id, new_exec_id());
        assert_eq!(fmt_duration(Duration::from_secs(2)), "2s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.500s");
    }

    #[tokio::test]
    async fn fifo_reader_waits_for_the_late_writer_and_drains_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("exec").join("x");
        let (out, _) = make_fifos(&d).unwrap();
        let (rx, keep) = open_fifo(&out).unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let reader = tokio::spawn(drain(rx, 10, stop_rx, "x".into()));
        // No writer but ours yet: the reader must not take that for EOF.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!reader.is_finished());
        let path = out.clone();
        // A writer opens late and writes far more than the pipe holds.
        let w = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all(&vec![b'a'; 1 << 20]).unwrap();
        });
        w.await.unwrap();
        drop(keep);
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.data, b"aaaaaaaaaa");
        assert!(got.truncated);
        drop(stop_tx);
        drop(ExecDir(d.clone()));
        assert!(!d.exists());
    }

    #[tokio::test]
    async fn fifo_reader_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("y");
        let (out, _) = make_fifos(&d).unwrap();
        let (rx, _keep) = open_fifo(&out).unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let reader = tokio::spawn(drain(rx, 10, stop_rx, "y".into()));
        stop_tx.send(true).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert!(got.data.is_empty());
    }
}
