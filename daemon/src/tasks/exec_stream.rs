//! Interactive exec and attach (CRI Exec/Attach through the streaming
//! server): the same shim calls as ExecSync, with the client's streams
//! wired to FIFOs instead of buffers.
//!
//! Exec: stdin, stdout and stderr are FIFOs in the exec's private directory
//! (see `exec.rs`); berthd holds the stdin FIFO open read-write until the
//! client's stdin ends, then closes it and tells the shim (CloseIO), so the
//! process reads EOF. Output is forwarded through bounded channels: a slow
//! client fills the pipe and the process blocks, nothing piles up in berthd.
//! A client that goes away gets its process killed and reaped.
//!
//! Attach: the container's output is what the shim writes to its log; an
//! attach follows the log from its end. Its stdin is the FIFO the container
//! was created with (containers with `stdin`), which berthd keeps open so the
//! container does not read EOF between attaches.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::error::blocking;
use super::exec::{
    command_display, exec_process_spec, new_exec_id, open_fifo, ExecDir, CHUNK, DRAIN_WAIT,
    EXEC_DIR, PROCESS_TYPE_URL, REAP_WAIT,
};
use super::logs::LogFollower;
use super::record::TaskStatus;
use super::{TaskError, TaskService};
use crate::shim::{RpcCode, TaskShim};
use berth_streaming::{Backend, BoxFuture, CommandIo, ExitStatus, PortStream, TermSize};

/// How often an attach looks for new log output.
const ATTACH_POLL: Duration = Duration::from_millis(50);

fn mkfifo(path: &Path) -> Result<(), TaskError> {
    use nix::sys::stat::Mode;
    nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR).map_err(|e| {
        TaskError::io(format!("making the FIFO {}", path.display()))(std::io::Error::from(e))
    })
}

/// A FIFO's write end opened read-write: it never blocks or fails for want
/// of a reader, and the reader sees EOF only when it is closed.
fn open_writer(path: &Path) -> Result<pipe::Sender, TaskError> {
    pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(TaskError::io(format!("opening {}", path.display())))
}

/// Copies a FIFO to a client channel until EOF or `stop`. A client that went
/// away makes the rest be read and dropped, so the writer never blocks.
async fn pump_out(
    mut rx: pipe::Receiver,
    tx: Option<mpsc::Sender<Bytes>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tx = tx;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let r = tokio::select! {
            biased;
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            r = rx.read(&mut buf) => r,
        };
        match r {
            Ok(0) => break,
            Ok(n) => {
                if let Some(t) = &tx {
                    if t.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        tx = None;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Forwards the client's terminal size changes to the shim.
async fn pump_resize(
    mut rx: mpsc::Receiver<TermSize>,
    client: std::sync::Arc<dyn TaskShim>,
    id: String,
    exec_id: String,
) {
    while let Some(s) = rx.recv().await {
        if let Err(e) = client
            .resize_pty(&id, &exec_id, u32::from(s.width), u32::from(s.height))
            .await
        {
            debug!(task = %id, exec = %exec_id, error = %e, "resize failed");
        }
    }
}

struct Streams {
    stdin: Option<mpsc::Receiver<Bytes>>,
    stdout: Option<mpsc::Sender<Bytes>>,
    stderr: Option<mpsc::Sender<Bytes>>,
    resize: Option<mpsc::Receiver<TermSize>>,
    client_gone: oneshot::Receiver<()>,
}

fn split(io: CommandIo) -> (Streams, oneshot::Sender<ExitStatus>) {
    (
        Streams {
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
            resize: io.resize,
            client_gone: io.client_gone,
        },
        io.done,
    )
}

fn exit_status(code: u32) -> ExitStatus {
    if code == 0 {
        ExitStatus::Success
    } else {
        ExitStatus::ExitCode(code as i32)
    }
}

/// A running task, its record and a client of its shim.
type RunningTask = (
    std::sync::Arc<super::Task>,
    super::TaskRecord,
    std::sync::Arc<dyn TaskShim>,
);

impl TaskService {
    /// A running task, its record and a client of its shim.
    fn running_with_client(&self, id: &str) -> Result<RunningTask, TaskError> {
        let task = self.lookup(id)?;
        let rec = task.record();
        if rec.status != TaskStatus::Running {
            return Err(TaskError::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let client = self
            .pod_shim(&rec.sandbox_id)
            .ok_or_else(|| {
                TaskError::FailedPrecondition(format!("the shim of container {} is gone", rec.id))
            })?
            .client();
        Ok((task, rec, client))
    }

    /// Runs `cmd` in the running task `id` with the client's streams, and
    /// reports how it ended on `io.done`.
    pub async fn exec_streaming(&self, id: &str, cmd: Vec<String>, tty: bool, io: CommandIo) {
        let (streams, done) = split(io);
        let status = match self.exec_streams(id, cmd, tty, streams).await {
            Ok(code) => exit_status(code),
            Err(e) => ExitStatus::Error(e.to_string()),
        };
        let _ = done.send(status);
    }

    async fn exec_streams(
        &self,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
        mut s: Streams,
    ) -> Result<u32, TaskError> {
        if cmd.first().is_none_or(|c| c.is_empty()) {
            return Err(TaskError::InvalidArgument("exec needs a command".into()));
        }
        let (_, rec, client) = self.running_with_client(id)?;
        let exec_id = new_exec_id();
        let what = format!("`{}` in container {}", command_display(&cmd), rec.id);
        info!(container = %rec.id, exec = %exec_id, tty, cmd = %command_display(&cmd), "interactive exec");
        let dir = self.config.state.join(EXEC_DIR).join(&exec_id);
        let want_in = s.stdin.is_some();
        let want_out = s.stdout.is_some();
        let want_err = s.stderr.is_some() && !tty;
        let paths = {
            let dir = dir.clone();
            blocking(move || {
                use std::os::unix::fs::DirBuilderExt;
                if let Some(parent) = dir.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(TaskError::io(format!("creating {}", parent.display())))?;
                }
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(TaskError::io(format!("creating {}", dir.display())))?;
                let mut out: [Option<PathBuf>; 3] = [None, None, None];
                for (i, (want, name)) in [
                    (want_in, "stdin"),
                    (want_out, "stdout"),
                    (want_err, "stderr"),
                ]
                .into_iter()
                .enumerate()
                {
                    if want {
                        let p = dir.join(name);
                        mkfifo(&p)?;
                        out[i] = Some(p);
                    }
                }
                Ok(out)
            })
            .await?
        };
        let _dir = ExecDir(dir);
        let [in_path, out_path, err_path] = paths;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut keeps = Vec::new();
        let mut readers = Vec::new();
        for (path, tx) in [(&out_path, s.stdout.take()), (&err_path, s.stderr.take())] {
            if let Some(p) = path {
                let (rx, keep) = open_fifo(p)?;
                keeps.push(keep);
                readers.push(tokio::spawn(pump_out(rx, tx, stop_rx.clone())));
            }
        }
        let stdin_writer = match &in_path {
            Some(p) => Some(open_writer(p)?),
            None => None,
        };
        let config_path = rec.bundle.join("config.json");
        let spec = blocking(move || {
            let body = std::fs::read(&config_path)
                .map_err(TaskError::io(format!("reading {}", config_path.display())))?;
            let mut spec = exec_process_spec(&body, &cmd)?;
            spec["terminal"] = serde_json::Value::Bool(tty);
            Ok(spec)
        })
        .await?;
        let spec = serde_json::to_vec(&spec).map_err(|e| TaskError::Internal(e.to_string()))?;
        let path_of = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let req = api::ExecProcessRequest {
            id: rec.id.clone(),
            exec_id: exec_id.clone(),
            terminal: tty,
            stdin: path_of(&in_path),
            stdout: path_of(&out_path),
            stderr: path_of(&err_path),
            spec: MessageField::some(Any {
                type_url: PROCESS_TYPE_URL.to_string(),
                value: spec,
                ..Default::default()
            }),
            ..Default::default()
        };
        client
            .exec(&req)
            .await
            .map_err(TaskError::shim(format!("adding {what}")))?;
        let result = self
            .drive_exec(&client, &rec.id, &exec_id, &what, &mut s, stdin_writer)
            .await;
        match client.delete_exec(&rec.id, &exec_id).await {
            Ok(_) => {}
            Err(e) if matches!(e.code(), Some(RpcCode::NotFound)) => {}
            Err(e) => warn!(exec = %exec_id, error = %e, "deleting an exec from the shim failed"),
        }
        // The shim's write ends are closed by now; ours go too, so the
        // readers reach EOF once the pipes are empty (bounded, as a
        // background child may hold them open).
        drop(keeps);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(DRAIN_WAIT).await;
            let _ = stop_tx.send(true);
        });
        for r in readers {
            let _ = r.await;
        }
        stopper.abort();
        result
    }

    async fn drive_exec(
        &self,
        client: &std::sync::Arc<dyn TaskShim>,
        id: &str,
        exec_id: &str,
        what: &str,
        s: &mut Streams,
        stdin_writer: Option<pipe::Sender>,
    ) -> Result<u32, TaskError> {
        client
            .start_exec(id, exec_id)
            .await
            .map_err(TaskError::shim(format!("starting {what}")))?;
        let mut tasks = Vec::new();
        if let (Some(mut rx), Some(mut w)) = (s.stdin.take(), stdin_writer) {
            let client = client.clone();
            let (id, exec_id) = (id.to_string(), exec_id.to_string());
            tasks.push(tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if w.write_all(&b).await.is_err() {
                        break;
                    }
                }
                drop(w);
                // The shim may hold its own write end: tell it stdin is over.
                let _ = client.close_io(&id, &exec_id, true).await;
            }));
        }
        if let Some(rx) = s.resize.take() {
            tasks.push(tokio::spawn(pump_resize(
                rx,
                client.clone(),
                id.to_string(),
                exec_id.to_string(),
            )));
        }
        let result = tokio::select! {
            w = client.wait_exec(id, exec_id) => w
                .map(|w| w.exit_status)
                .map_err(TaskError::shim(format!("waiting for {what}"))),
            _ = &mut s.client_gone => {
                info!(container = %id, exec = %exec_id, "the client went away; killing the exec");
                let _ = client.kill_exec(id, exec_id, libc::SIGKILL as u32, false).await;
                let _ = tokio::time::timeout(REAP_WAIT, client.wait_exec(id, exec_id)).await;
                Err(TaskError::Internal(format!("{what}: the client went away; the process was killed")))
            }
        };
        for t in tasks {
            t.abort();
        }
        result
    }

    /// Attaches the client's streams to the running task `id`: output from
    /// the task's log from now on, input to its stdin FIFO (if it has one),
    /// resizes to its terminal. Ends when the task exits or the client goes.
    pub async fn attach_streaming(&self, id: &str, io: CommandIo) {
        let (streams, done) = split(io);
        let status = match self.attach_streams(id, streams).await {
            Ok(Some(code)) => exit_status(code),
            Ok(None) => ExitStatus::Success,
            Err(e) => ExitStatus::Error(e.to_string()),
        };
        let _ = done.send(status);
    }

    async fn attach_streams(&self, id: &str, mut s: Streams) -> Result<Option<u32>, TaskError> {
        let (task, rec, client) = self.running_with_client(id)?;
        let mut follower = LogFollower::open_at_end(&rec.log_path, rec.stdio)
            .await
            .map_err(TaskError::io(format!("opening the log of {}", rec.id)))?;
        let mut tasks = Vec::new();
        if let Some(mut rx) = s.stdin.take() {
            if !rec.stdin {
                return Err(TaskError::FailedPrecondition(format!(
                    "container {} was not created with stdin",
                    rec.id
                )));
            }
            let mut w = open_writer(&rec.bundle.join("stdin"))?;
            let stdin_once = rec.cri.as_ref().is_some_and(|m| m.config().stdin_once);
            let client = client.clone();
            let cid = rec.id.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if w.write_all(&b).await.is_err() {
                        break;
                    }
                }
                if stdin_once {
                    let _ = client.close_io(&cid, "", true).await;
                }
            }));
        }
        if let Some(rx) = s.resize.take() {
            tasks.push(tokio::spawn(pump_resize(
                rx,
                client.clone(),
                rec.id.clone(),
                String::new(),
            )));
        }
        let mut exit = task.subscribe();
        let result = loop {
            let exited = exit.borrow_and_update().clone();
            let chunks = follower
                .read_available()
                .await
                .map_err(TaskError::io(format!("reading the log of {}", rec.id)))?;
            let mut gone = false;
            for c in chunks {
                let tx = match (&s.stderr, c.stderr) {
                    (Some(e), true) => Some(e),
                    _ => s.stdout.as_ref(),
                };
                if let Some(tx) = tx {
                    if tx.send(Bytes::from(c.data)).await.is_err() {
                        gone = true;
                    }
                }
            }
            if gone {
                break Ok(None);
            }
            if let Some(e) = exited {
                break Ok(Some(e.exit_code));
            }
            tokio::select! {
                r = exit.changed() => {
                    if r.is_err() {
                        tokio::time::sleep(ATTACH_POLL).await;
                    }
                }
                _ = tokio::time::sleep(ATTACH_POLL) => {}
                _ = &mut s.client_gone => break Ok(None),
            }
        };
        for t in tasks {
            t.abort();
        }
        result
    }
}

/// The streaming server's view of the task service: exec and attach through
/// the shims, port connections from inside the pod's network namespace.
impl Backend for TaskService {
    fn exec(
        &self,
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        io: CommandIo,
    ) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.exec_streaming(&container_id, cmd, tty, io).await })
    }

    fn attach(&self, container_id: String, io: CommandIo) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.attach_streaming(&container_id, io).await })
    }

    fn connect(
        &self,
        netns: Option<std::path::PathBuf>,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<PortStream>> {
        Box::pin(async move {
            let dial = move || berth_streaming::dial_loopback(port);
            // The socket is made on a thread inside the namespace and stays
            // there; only the thread leaves.
            let std = match netns {
                Some(p) => berth_network::NetNs::from_path(p)
                    .run(dial)
                    .await
                    .map_err(std::io::Error::other)??,
                None => tokio::task::spawn_blocking(dial)
                    .await
                    .map_err(std::io::Error::other)??,
            };
            tokio::net::TcpStream::from_std(std)
        })
    }
}
