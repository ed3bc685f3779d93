//! berth-shim: berth's per-pod shim, speaking containerd's shim v2 protocol.
//!
//! Invocation (what containerd 1.6 and berthd run, with the bundle as working dir):
//! - `berth-shim -namespace NS -address ADDR -publish-binary BIN -id ID [-debug] start`:
//!   finds or starts the shim for the container's group (the
//!   `io.kubernetes.cri.sandbox-id` annotation of `config.json`, else ID), writes
//!   `address` and `shim.pid` into the bundle and prints `unix:///<socket>` on stdout.
//!   Sockets live in `$BERTH_SHIM_SOCKET_DIR` (default `/run/berth/s`), named by the
//!   sha256 of `ADDR/NS/GROUP`.
//! - `berth-shim -namespace NS -address ADDR -id ID [-bundle DIR] delete`: cleans up
//!   after a dead shim (`runc delete --force`, unmount the rootfs) and prints a
//!   DeleteResponse (protobuf) on stdout.
//! - `berth-shim -v`: version.
//!
//! The long-lived process (`... -socket PATH serve`, listener on fd 3) serves
//! `containerd.task.v2.Task` and `containerd.task.v3.Task` over ttrpc. See README.md.

mod args;
mod cgroup;
mod container;
mod crilog;
mod error;
mod events;
mod logger;
mod mount;
mod process;
mod reaper;
mod runc;
mod runtime;
mod server;
mod service;
mod stats;
mod stdio;
mod tasks;
mod util;

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api::{ConnectRequest, DeleteResponse};
use containerd_shim_protos::{create_task, Client, Task, TaskClient};
use protobuf::Message;
use sha2::{Digest, Sha256};
use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::args::Flags;
use crate::events::Publisher;
use crate::reaper::Reaper;
use crate::runc::{Runc, RuntimeConfig, RUNTIME_FILE};
use crate::runtime::OciRuntime;
use crate::service::{ExitSignal, Service, ServiceConfig};
use crate::util::{
    env_or, socket_dir, timestamp, write_atomic, BundleConfig, DEFAULT_RUNC_ROOT, DEFAULT_RUNTIME,
    ENV_LOG, ENV_RUNC_ROOT, ENV_RUNTIME, ENV_TTRPC_ADDRESS,
};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
use berth_shim_protocol::RUNTIME_NAME;
/// The listening socket handed from `start` to the long-lived shim.
const LISTENER_FD: i32 = 3;
/// sun_path is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Longest the shim waits, on its way out, for its last replies to go.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(500);

type Res<T> = Result<T, String>;

fn main() {
    // One arena: the shim's few threads allocate little, and every pod runs
    // a shim, so its resident memory counts per pod.
    // SAFETY: called first thing, before any other thread exists; mallopt
    // only sets an allocator tunable.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let flags = match args::parse(argv) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("berth-shim: {e}");
            std::process::exit(2);
        }
    };
    if flags.version {
        println!("berth-shim:\n  Version:  {VERSION}\n  Runtime:  {RUNTIME_NAME}");
        return;
    }
    let res = if flags.info {
        info()
    } else {
        match flags.action.as_str() {
            "start" => start(&flags),
            "delete" => delete(&flags),
            "" | "serve" => serve(&flags),
            other => Err(format!("unknown action {other:?} (start, delete)")),
        }
    };
    if let Err(e) = res {
        log::error!("{e}");
        eprintln!("berth-shim: {e}");
        std::process::exit(1);
    }
}

fn info() -> Res<()> {
    let info = containerd_shim_protos::types::introspection::RuntimeInfo {
        name: RUNTIME_NAME.to_string(),
        ..Default::default()
    };
    let data = info.write_to_bytes().map_err(|e| e.to_string())?;
    std::io::stdout()
        .write_all(&data)
        .map_err(|e| format!("write stdout: {e}"))
}

fn require(flags: &Flags) -> Res<()> {
    if flags.namespace.is_empty() {
        return Err("-namespace is required".into());
    }
    if flags.id.is_empty() {
        return Err("-id is required".into());
    }
    Ok(())
}

/// The shim socket for a group: `<dir>/<sha256(address/namespace/group)>`.
pub fn socket_path(dir: &Path, address: &str, namespace: &str, group: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{address}/{namespace}/{group}").as_bytes());
    dir.join(hex::encode(digest))
}

fn start(flags: &Flags) -> Res<()> {
    require(flags)?;
    let bundle = std::env::current_dir().map_err(|e| format!("getcwd: {e}"))?;
    let group = BundleConfig::read(&bundle)
        .ok()
        .and_then(|c| c.sandbox_id)
        .unwrap_or_else(|| flags.id.clone());
    let dir = socket_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&dir)
        .map_err(|e| format!("create socket dir {}: {e}", dir.display()))?;
    let sock = socket_path(&dir, &flags.address, &flags.namespace, &group);
    if sock.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes: use a shorter $BERTH_SHIM_SOCKET_DIR",
            sock.display()
        ));
    }
    let address = format!("unix://{}", sock.display());
    for _ in 0..3 {
        match UnixListener::bind(&sock) {
            Ok(listener) => {
                let pid = match spawn_serve(flags, &sock, &listener, &bundle) {
                    Ok(pid) => pid,
                    Err(e) => {
                        let _ = std::fs::remove_file(&sock);
                        return Err(e);
                    }
                };
                drop(listener);
                return finish_start(&bundle, &address, pid);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                match running_shim_pid(&sock, &flags.id) {
                    Ok(pid) => return finish_start(&bundle, &address, pid),
                    Err(Probe::Stale) => {
                        // A shim that died without cleaning up: take the name over.
                        let _ = std::fs::remove_file(&sock);
                    }
                    // Alive but not answering: replacing it would orphan its tasks.
                    Err(Probe::Unresponsive(e)) => {
                        return Err(format!("shim at {} does not answer: {e}", sock.display()))
                    }
                }
            }
            Err(e) => return Err(format!("listen on {}: {e}", sock.display())),
        }
    }
    Err(format!("could not bind or reach {}", sock.display()))
}

fn finish_start(bundle: &Path, address: &str, pid: u32) -> Res<()> {
    write_atomic(&bundle.join("shim.pid"), pid.to_string().as_bytes())
        .map_err(|e| format!("write shim.pid: {e}"))?;
    write_atomic(&bundle.join("address"), address.as_bytes())
        .map_err(|e| format!("write address: {e}"))?;
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes())
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .map_err(|e| format!("write stdout: {e}"))
}

enum Probe {
    /// Nobody listens (the shim died): the socket file can be replaced.
    Stale,
    Unresponsive(String),
}

/// Asks the shim listening on `sock` for its pid (it is alive and serving).
fn running_shim_pid(sock: &Path, id: &str) -> Result<u32, Probe> {
    let stream = UnixStream::connect(sock).map_err(|_| Probe::Stale)?;
    let fd = std::os::fd::IntoRawFd::into_raw_fd(stream);
    let client = Client::new(fd).map_err(|e| Probe::Unresponsive(e.to_string()))?;
    let tc = TaskClient::new(client);
    let resp = tc
        .connect(
            ttrpc::context::with_duration(Duration::from_secs(5)),
            &ConnectRequest {
                id: id.to_string(),
                ..Default::default()
            },
        )
        .map_err(|e| Probe::Unresponsive(e.to_string()))?;
    Ok(resp.shim_pid)
}

fn spawn_serve(flags: &Flags, sock: &Path, listener: &UnixListener, bundle: &Path) -> Res<u32> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("-namespace")
        .arg(&flags.namespace)
        .arg("-id")
        .arg(&flags.id)
        .arg("-address")
        .arg(&flags.address)
        .arg("-publish-binary")
        .arg(&flags.publish_binary)
        .arg("-socket")
        .arg(sock);
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.arg("serve")
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let fd = listener.as_raw_fd();
    // SAFETY: the closure only makes async-signal-safe calls (setsid, dup2, fcntl)
    // between fork and exec and touches no memory shared with other threads.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if fd == LISTENER_FD {
                let fl = libc::fcntl(fd, libc::F_GETFD);
                if fl < 0 || libc::fcntl(fd, libc::F_SETFD, fl & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, LISTENER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("start shim: {e}"))?;
    let pid = child.id();
    adjust_oom_score(pid);
    Ok(pid)
}

/// Gives the shim an oom_score_adj one above ours (never lower: that needs
/// CAP_SYS_RESOURCE), so the OOM killer prefers it over the daemon. Best effort.
fn adjust_oom_score(pid: u32) {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    let v = (own + 1).min(1000);
    let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), v.to_string());
}

fn delete(flags: &Flags) -> Res<()> {
    require(flags)?;
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(|e| format!("getcwd: {e}"))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let cfg = std::fs::read(bundle.join(RUNTIME_FILE))
        .ok()
        .and_then(|d| RuntimeConfig::from_json(&d))
        .unwrap_or_else(|| RuntimeConfig {
            binary: env_or(ENV_RUNTIME, DEFAULT_RUNTIME),
            root: PathBuf::from(env_or(ENV_RUNC_ROOT, DEFAULT_RUNC_ROOT)).join(&flags.namespace),
            systemd_cgroup: false,
        });
    let runc = Runc {
        cfg,
        log: bundle.join("log.json"),
        reaper: None,
    };
    if let Err(e) = runc.delete(&flags.id, true) {
        if !e.is_not_found() {
            eprintln!("warning: {e}");
        }
    }
    if let Err(e) = mount::unmount_all(&bundle.join("rootfs")) {
        eprintln!("warning: {e}");
    }
    let resp = DeleteResponse {
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: protobuf::MessageField::some(timestamp(SystemTime::now())),
        ..Default::default()
    };
    let data = resp.write_to_bytes().map_err(|e| e.to_string())?;
    std::io::stdout()
        .write_all(&data)
        .map_err(|e| format!("write stdout: {e}"))
}

/// Registers the same handlers under the task v3 and v2 service names.
fn task_services(
    svc: Arc<dyn Task + Send + Sync>,
) -> HashMap<String, Box<dyn ttrpc::MethodHandler + Send + Sync>> {
    let mut all = create_task(svc.clone());
    for (k, v) in create_task(svc) {
        let k2 = k.replacen("/containerd.task.v3.Task/", "/containerd.task.v2.Task/", 1);
        all.insert(k2, v);
    }
    all
}

fn serve(flags: &Flags) -> Res<()> {
    require(flags)?;
    let bundle = std::env::current_dir().map_err(|e| format!("getcwd: {e}"))?;
    let log_path = std::env::var_os(ENV_LOG).map(PathBuf::from);
    logger::init(
        logger::open_log(log_path.as_deref(), &bundle),
        flags.debug,
        &flags.namespace,
        &flags.id,
    );
    // SAFETY: fstat on a descriptor number with a stack buffer; no ownership taken.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(LISTENER_FD, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    if !is_socket {
        return Err("no listening socket on fd 3 (run `start`, not `serve`)".into());
    }
    reaper::set_subreaper().map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    // Signals are registered before any child exists, so no SIGCHLD is missed.
    let mut signals = Signals::new([SIGCHLD, SIGUSR1, SIGTERM, SIGINT])
        .map_err(|e| format!("signal handlers: {e}"))?;
    let reaper = Reaper::new();
    let exit = Arc::new(ExitSignal::default());
    let socket = (!flags.socket.is_empty()).then(|| PathBuf::from(&flags.socket));
    let console_dir = socket
        .as_ref()
        .and_then(|s| s.parent().map(Path::to_path_buf))
        .unwrap_or_else(socket_dir);
    let publisher = Publisher::start(
        &flags.namespace,
        std::env::var(ENV_TTRPC_ADDRESS)
            .ok()
            .filter(|s| !s.is_empty()),
        (!flags.publish_binary.is_empty()).then(|| flags.publish_binary.clone()),
        &flags.address,
        reaper.clone(),
    );
    let svc = Arc::new(Service::new(
        ServiceConfig {
            namespace: flags.namespace.clone(),
            socket: socket.clone(),
            console_dir,
            default_runtime: env_or(ENV_RUNTIME, DEFAULT_RUNTIME),
            runc_root_base: PathBuf::from(env_or(ENV_RUNC_ROOT, DEFAULT_RUNC_ROOT)),
        },
        reaper.clone(),
        publisher,
        exit.clone(),
    ));

    let handle = signals.handle();
    exit.set_waker(Box::new(move || handle.close()));
    server::start(LISTENER_FD, task_services(svc.clone()))
        .map_err(|e| format!("ttrpc server: {e}"))?;
    // Do not pin the first bundle (containerd removes it on delete).
    let _ = std::env::set_current_dir("/");
    log::info!("serving on {} (pid {})", flags.socket, std::process::id());

    // The main thread reaps and handles signals until the shim is to exit.
    reaper.reap();
    for sig in signals.forever() {
        match sig {
            SIGCHLD => reaper.reap(),
            SIGUSR1 => {
                // Not here: reopening takes locks that a handler waiting for the
                // reaper (a runc command) may hold.
                let svc = svc.clone();
                let _ = std::thread::Builder::new()
                    .name("reopen".into())
                    .stack_size(256 * 1024)
                    .spawn(move || svc.reopen_all_logs());
            }
            _ => {
                if svc.task_count() == 0 {
                    log::info!("signal {sig}: no tasks, exiting");
                    exit.fire();
                } else {
                    log::info!("signal {sig} ignored: tasks are running");
                }
            }
        }
    }
    exit.wait();
    // Let the Shutdown reply reach the client before the process goes away, and
    // wait no longer than that takes: berthd waits for this process to be gone
    // before a pod's teardown goes on. (Events stay best-effort: sending one may
    // need this thread to reap a publish command.)
    if !server::wait_answered(SHUTDOWN_FLUSH) {
        log::warn!("exiting with requests unanswered");
    }
    if let Some(s) = &socket {
        let _ = std::fs::remove_file(s);
    }
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names() {
        let a = socket_path(Path::new("/run/berth/s"), "/run/c.sock", "k8s.io", "sb1");
        let b = socket_path(Path::new("/run/berth/s"), "/run/c.sock", "k8s.io", "sb2");
        assert_ne!(a, b);
        assert_eq!(a.file_name().unwrap().len(), 64);
        assert!(a.as_os_str().len() <= MAX_SOCKET_PATH);
    }

    #[test]
    fn both_service_versions() {
        struct Nop;
        impl Task for Nop {}
        let m = task_services(Arc::new(Nop));
        for v in ["v2", "v3"] {
            for method in [
                "Create",
                "Start",
                "State",
                "Kill",
                "Delete",
                "Wait",
                "Exec",
                "ResizePty",
                "CloseIO",
                "Pids",
                "Pause",
                "Resume",
                "Update",
                "Stats",
                "Connect",
                "Shutdown",
            ] {
                let k = format!("/containerd.task.{v}.Task/{method}");
                assert!(m.contains_key(&k), "{k}");
            }
        }
    }
}
