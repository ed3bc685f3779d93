//! The task service: `containerd.task.v2.Task` and `containerd.task.v3.Task` (same
//! messages) over runc.
//!
//! Locking: the shim-wide state lock is only held to look up, reserve or remove
//! entries, never across a runc call; each container has a lifecycle lock that orders
//! its create/start/exec/delete. Wait blocks on per-process latches (channels that are
//! disconnected once), so that it can also watch its deadline and connections.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::shim::oci::{Options as RuncOptions, ProcessDetails};
use containerd_shim_protos::topics;
use containerd_shim_protos::Task;
use protobuf::well_known_types::empty::Empty;
use protobuf::{EnumOrUnknown, Message, MessageField};
use ttrpc::{Code, TtrpcContext};

use crate::events::{to_any, Publisher};
use crate::mount::{mount_all, unmount_all, MountSpec};
use crate::reaper::{Exit, ExitHandler, Reaper};
use crate::runc::{CreateOpts, ExecOpts, Runc, RuncError, RuntimeConfig, RUNTIME_FILE};
use crate::stats;
use crate::stdio::{PreparedIo, ProcessIo, StdioConfig};
use crate::util::{
    internal, invalid, not_found, precondition, process_user, timestamp_field, ttrpc_err,
    validate_id, write_atomic, BundleConfig,
};

/// Annotation on an UpdateTaskRequest: reopen the task's CRI log files (kubelet's
/// ReopenContainerLog). `resources` may be empty then.
pub use berth_shim_protocol::annotations::REOPEN_LOG as REOPEN_LOG_ANNOTATION;

/// How long an exit waits for the process's output to be copied before it is reported.
const IO_DRAIN: Duration = Duration::from_secs(2);
/// How long Delete waits for an exit it caused (`runc delete --force` of a created task).
const DELETE_WAIT: Duration = Duration::from_secs(10);
/// Deleted tasks remembered, so that a retried Delete (or Wait) gets the same answer.
const DELETED_KEEP: usize = 256;
/// How long a Wait that gave up on an exec waits for the exit of the SIGKILL it sent.
const ABANDON_WAIT: Duration = Duration::from_secs(2);
/// How long a Wait that gives up on an exec waits for a Start in progress (runc exec).
const START_WAIT: Duration = Duration::from_secs(10);

/// Opened once, never closed: receivers see a disconnected channel from then on, so
/// a waiter can `select!` on it beside other channels.
struct Latch {
    tx: Mutex<Option<crossbeam_channel::Sender<()>>>,
    rx: crossbeam_channel::Receiver<()>,
}

impl Latch {
    fn new() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Latch {
            tx: Mutex::new(Some(tx)),
            rx,
        }
    }

    fn open(&self) {
        lock(&self.tx).take();
    }

    fn is_open(&self) -> bool {
        lock(&self.tx).is_none()
    }
}

pub struct ServiceConfig {
    pub namespace: String,
    /// The shim's socket, removed on Shutdown so that a new `start` makes a new shim.
    pub socket: Option<PathBuf>,
    /// Where console sockets are made (short paths: unix sockets are limited to 108 bytes).
    pub console_dir: PathBuf,
    pub default_runtime: String,
    pub runc_root_base: PathBuf,
}

/// Set once the shim should exit (Shutdown with no tasks left).
#[derive(Default)]
pub struct ExitSignal {
    done: Mutex<bool>,
    cv: Condvar,
    /// Called on the first `fire` (the main thread's signal loop ends).
    waker: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl ExitSignal {
    pub fn fire(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = waker {
            w();
        }
    }

    pub fn set_waker(&self, w: Box<dyn FnOnce() + Send>) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
    }

    pub fn wait(&self) {
        let mut d = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*d {
            d = match self.cv.wait(d) {
                Ok(g) => g,
                Err(e) => e.into_inner(),
            };
        }
    }
}

#[derive(Default)]
struct ProcState {
    pid: u32,
    started: bool,
    exit: Option<Exit>,
    /// The exit was processed (output drained): Wait may return.
    handled: bool,
    /// TaskStart / TaskExecStarted was published (or will never be): TaskExit may go.
    announced: bool,
}

pub struct Process {
    container_id: String,
    /// Empty for the container's init process.
    exec_id: String,
    stdio: StdioConfig,
    /// An exec's OCI process (JSON).
    spec: Option<Vec<u8>>,
    st: Mutex<ProcState>,
    cv: Condvar,
    io: Mutex<Option<Arc<ProcessIo>>>,
    /// Opened with `handled`.
    handled_latch: Latch,
    /// Opened once Start of an exec was tried (`caller` is set by then).
    start_latch: Latch,
    /// An exec's Start connection (`TtrpcContext::cancel_rx`: disconnected once the
    /// connection is gone).
    caller: Mutex<Option<crossbeam_channel::Receiver<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Process {
    fn new(container_id: &str, exec_id: &str, stdio: StdioConfig, spec: Option<Vec<u8>>) -> Self {
        Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            spec,
            st: Mutex::new(ProcState::default()),
            cv: Condvar::new(),
            io: Mutex::new(None),
            handled_latch: Latch::new(),
            start_latch: Latch::new(),
            caller: Mutex::new(None),
        }
    }

    /// The id containerd uses for this process in events (container id for init).
    fn event_id(&self) -> String {
        if self.exec_id.is_empty() {
            self.container_id.clone()
        } else {
            self.exec_id.clone()
        }
    }

    fn pid(&self) -> u32 {
        lock(&self.st).pid
    }

    fn exit(&self) -> Option<Exit> {
        lock(&self.st).exit
    }

    fn started(&self) -> bool {
        lock(&self.st).started
    }

    fn io(&self) -> Option<Arc<ProcessIo>> {
        lock(&self.io).clone()
    }

    fn status(&self, paused: bool) -> Status {
        let st = lock(&self.st);
        if st.exit.is_some() {
            Status::STOPPED
        } else if !st.started {
            Status::CREATED
        } else if paused {
            Status::PAUSED
        } else {
            Status::RUNNING
        }
    }

    fn set_exited(&self, exit: Exit) {
        let mut st = lock(&self.st);
        if st.exit.is_none() {
            st.exit = Some(exit);
        }
        self.cv.notify_all();
    }

    fn set_handled(&self) {
        lock(&self.st).handled = true;
        self.cv.notify_all();
        self.handled_latch.open();
    }

    /// Blocks until the exit is recorded (or `timeout`).
    fn wait_exited(&self, timeout: Duration) -> Option<Exit> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.st);
        while st.exit.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = match self.cv.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        st.exit
    }

    fn set_announced(&self) {
        lock(&self.st).announced = true;
        self.cv.notify_all();
    }

    /// Containerd wants TaskStart/TaskExecStarted before TaskExit: an exit that races
    /// its start waits (bounded) for the start event.
    fn wait_announced(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let mut st = lock(&self.st);
        while !st.announced {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            st = match self.cv.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Blocks until the exit is handled (or `timeout`); the exit, if any.
    fn wait_handled(&self, timeout: Option<Duration>) -> Option<Exit> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut st = lock(&self.st);
        while !st.handled {
            st = match deadline {
                None => match self.cv.wait(st) {
                    Ok(g) => g,
                    Err(e) => e.into_inner(),
                },
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match self.cv.wait_timeout(st, left) {
                        Ok((g, _)) => g,
                        Err(e) => e.into_inner().0,
                    }
                }
            };
        }
        st.exit
    }
}

pub struct Container {
    id: String,
    bundle: PathBuf,
    runc: Runc,
    cfg: BundleConfig,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    lifecycle: Mutex<()>,
    paused: AtomicBool,
    rootfs_mounted: bool,
}

impl Container {
    fn process(&self, exec_id: &str) -> ttrpc::Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| not_found(format!("exec {exec_id:?} of task {:?} not found", self.id)))
    }

    fn all_processes(&self) -> Vec<Arc<Process>> {
        let mut v = vec![self.init.clone()];
        v.extend(lock(&self.execs).values().cloned());
        v
    }
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Arc<Container>>,
    creating: HashSet<String>,
    deleted: VecDeque<((String, String), DeleteResponse)>,
    shutting_down: bool,
}

pub struct Service {
    cfg: ServiceConfig,
    reaper: Arc<Reaper>,
    events: Publisher,
    state: Mutex<State>,
    exit: Arc<ExitSignal>,
    seq: AtomicU64,
}

fn runtime_err(e: RuncError) -> ttrpc::Error {
    ttrpc_err(Code::UNKNOWN, e)
}

/// Reads a pid file written by runc.
fn read_pid(path: &Path) -> std::io::Result<u32> {
    let s = fs::read_to_string(path)?;
    s.trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad pid file {}: {s:?}", path.display()),
            )
        })
}

impl Service {
    pub fn new(
        cfg: ServiceConfig,
        reaper: Arc<Reaper>,
        events: Publisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Service {
            cfg,
            reaper,
            events,
            state: Mutex::new(State::default()),
            exit,
            seq: AtomicU64::new(0),
        }
    }

    fn container(&self, id: &str) -> ttrpc::Result<Arc<Container>> {
        lock(&self.state)
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(format!("task {id:?} not found")))
    }

    fn deleted(&self, id: &str, exec_id: &str) -> Option<DeleteResponse> {
        lock(&self.state)
            .deleted
            .iter()
            .rev()
            .find(|((i, e), _)| i == id && e == exec_id)
            .map(|(_, r)| r.clone())
    }

    fn remember_deleted(&self, st: &mut State, id: &str, exec_id: &str, r: &DeleteResponse) {
        if st.deleted.len() >= DELETED_KEEP {
            st.deleted.pop_front();
        }
        st.deleted
            .push_back(((id.to_string(), exec_id.to_string()), r.clone()));
    }

    fn publish<M: crate::events::TypeName>(&self, topic: &'static str, ev: M) {
        self.events.publish(topic, ev);
    }

    /// The reaper's callback for a container process: record the exit, then (off the
    /// reaper thread, which must never wait for a command) finish it.
    fn exit_handler(&self, c: &Arc<Container>, p: &Arc<Process>) -> ExitHandler {
        let (c, p, events) = (c.clone(), p.clone(), self.events.clone());
        Box::new(move |exit: Exit| {
            p.set_exited(exit);
            let (c2, p2) = (c.clone(), p.clone());
            let spawned = std::thread::Builder::new()
                .name("exit".into())
                .stack_size(256 * 1024)
                .spawn(move || finish_exit(&c2, &p2, &events, exit));
            if spawned.is_err() {
                p.set_handled();
            }
        })
    }

    fn runtime_config(&self, opts: Option<&RuncOptions>) -> RuntimeConfig {
        let binary = opts
            .map(|o| o.binary_name.clone())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| self.cfg.default_runtime.clone());
        let base = opts
            .map(|o| o.root.clone())
            .filter(|r| !r.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| self.cfg.runc_root_base.clone());
        RuntimeConfig {
            binary,
            root: base.join(&self.cfg.namespace),
            systemd_cgroup: opts.is_some_and(|o| o.systemd_cgroup),
        }
    }

    fn do_create(&self, req: &CreateTaskRequest) -> ttrpc::Result<Arc<Container>> {
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() {
            return Err(invalid(format!(
                "bundle path must be absolute: {:?}",
                req.bundle
            )));
        }
        let bcfg = BundleConfig::read(&bundle)
            .map_err(|e| invalid(format!("read {}/config.json: {e}", bundle.display())))?;
        let opts = match req.options.as_ref() {
            Some(any) if any.type_url.ends_with("containerd.runc.v1.Options") => Some(
                RuncOptions::parse_from_bytes(&any.value)
                    .map_err(|e| invalid(format!("bad runtime options: {e}")))?,
            ),
            _ => None,
        };
        let rcfg = self.runtime_config(opts.as_ref());
        fs::create_dir_all(&rcfg.root)
            .map_err(|e| internal(format!("create runtime root {}: {e}", rcfg.root.display())))?;
        write_atomic(&bundle.join(RUNTIME_FILE), &rcfg.to_json())
            .map_err(|e| internal(format!("write {RUNTIME_FILE}: {e}")))?;
        let runc = Runc {
            cfg: rcfg,
            log: bundle.join("log.json"),
            reaper: Some(self.reaper.clone()),
        };

        let rootfs = bundle.join("rootfs");
        let mounts: Vec<MountSpec> = req
            .rootfs
            .iter()
            .map(|m| MountSpec {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        if !mounts.is_empty() {
            fs::create_dir_all(&rootfs)
                .map_err(|e| internal(format!("mkdir {}: {e}", rootfs.display())))?;
            mount_all(&mounts, &rootfs).map_err(|e| internal(format!("mount rootfs: {e}")))?;
        }
        let undo_mounts = || {
            if !mounts.is_empty() {
                let _ = unmount_all(&rootfs);
            }
        };

        let stdio = StdioConfig {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut pio = match PreparedIo::prepare(&stdio, (bcfg.uid, bcfg.gid), &self.cfg.console_dir)
        {
            Ok(p) => p,
            Err(e) => {
                undo_mounts();
                return Err(if e.kind() == std::io::ErrorKind::InvalidInput {
                    invalid(e)
                } else {
                    internal(format!("stdio: {e}"))
                });
            }
        };
        let pid_file = bundle.join("init.pid");
        let _ = fs::remove_file(&pid_file);
        let console = pio.console_socket().map(Path::to_path_buf);
        let created = runc.create(
            &req.id,
            &CreateOpts {
                bundle: &bundle,
                pid_file: &pid_file,
                console_socket: console.as_deref(),
                no_pivot: opts.as_ref().is_some_and(|o| o.no_pivot_root),
                no_new_keyring: opts.as_ref().is_some_and(|o| o.no_new_keyring),
            },
            pio.child_stdio(),
        );
        // runc killed mid-create may leave its cgroup that `delete` cannot see.
        let remove_cgroup = || {
            if let Some(p) = bcfg.cgroups_path.as_deref() {
                crate::cgroup::remove_leftover(Path::new(crate::stats::CGROUP_ROOT), p);
            }
        };
        if let Err(e) = created {
            let _ = runc.delete(&req.id, true);
            remove_cgroup();
            undo_mounts();
            return Err(runtime_err(e));
        }
        let fail = |msg: String| {
            let _ = runc.delete(&req.id, true);
            remove_cgroup();
            undo_mounts();
            internal(msg)
        };
        let pid = read_pid(&pid_file).map_err(|e| fail(e.to_string()))?;
        let io = pio.start().map_err(|e| fail(format!("stdio: {e}")))?;

        let init = Arc::new(Process::new(&req.id, "", stdio, None));
        {
            let mut st = lock(&init.st);
            st.pid = pid;
        }
        *lock(&init.io) = Some(Arc::new(io));
        let c = Arc::new(Container {
            id: req.id.clone(),
            bundle,
            runc,
            cfg: bcfg,
            init: init.clone(),
            execs: Mutex::new(HashMap::new()),
            lifecycle: Mutex::new(()),
            paused: AtomicBool::new(false),
            rootfs_mounted: !mounts.is_empty(),
        });
        self.reaper.watch(pid as i32, self.exit_handler(&c, &init));
        Ok(c)
    }

    fn start_exec(&self, c: &Arc<Container>, p: &Arc<Process>) -> ttrpc::Result<u32> {
        if c.init.exit().is_some() {
            return Err(precondition(format!("task {:?} is not running", c.id)));
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let process_file = c.bundle.join(format!(".exec-{n}.json"));
        let pid_file = c.bundle.join(format!(".exec-{n}.pid"));
        let log = c.bundle.join(format!(".exec-{n}.log.json"));
        let spec = p.spec.clone().unwrap_or_default();
        let owner = serde_json::from_slice::<serde_json::Value>(&spec)
            .map(|v| process_user(&v))
            .unwrap_or((0, 0));
        let cleanup = || {
            for f in [&process_file, &pid_file, &log] {
                let _ = fs::remove_file(f);
            }
        };
        let res = (|| {
            write_atomic(&process_file, &spec)
                .map_err(|e| internal(format!("write exec process: {e}")))?;
            let mut pio =
                PreparedIo::prepare(&p.stdio, owner, &self.cfg.console_dir).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::InvalidInput {
                        invalid(e)
                    } else {
                        internal(format!("stdio: {e}"))
                    }
                })?;
            let runc = Runc {
                log: log.clone(),
                ..c.runc.clone()
            };
            let console = pio.console_socket().map(Path::to_path_buf);
            runc.exec(
                &c.id,
                &ExecOpts {
                    process_file: &process_file,
                    pid_file: &pid_file,
                    console_socket: console.as_deref(),
                },
                pio.child_stdio(),
            )
            .map_err(runtime_err)?;
            let pid = read_pid(&pid_file).map_err(|e| internal(e.to_string()))?;
            let io = match pio.start() {
                Ok(io) => io,
                Err(e) => {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    // Still watch it, so the exit is recorded.
                    {
                        let mut st = lock(&p.st);
                        st.pid = pid;
                        st.started = true;
                    }
                    self.reaper.watch(pid as i32, self.exit_handler(c, p));
                    return Err(internal(format!("stdio: {e}")));
                }
            };
            *lock(&p.io) = Some(Arc::new(io));
            {
                let mut st = lock(&p.st);
                st.pid = pid;
                st.started = true;
            }
            self.reaper.watch(pid as i32, self.exit_handler(c, p));
            Ok(pid)
        })();
        cleanup();
        res
    }

    /// Wait's blocking part: until `p`'s exit is handled (its exit, if any), `deadline`
    /// (DEADLINE_EXCEEDED) or the end of the Wait's connection (an error nobody reads).
    /// An exec still running at the deadline, or whose Start connection goes away
    /// meanwhile, is SIGKILLed and reaped first: its caller is gone.
    fn wait_for(
        &self,
        ctx: &TtrpcContext,
        p: &Process,
        deadline: Option<Instant>,
    ) -> ttrpc::Result<Option<Exit>> {
        let exec = !p.exec_id.is_empty();
        let timer = deadline.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
        loop {
            let caller = if exec { lock(&p.caller).clone() } else { None };
            // Until Start (containerd waits before it starts an exec), wake up then to
            // watch the Start connection.
            let started = if exec && !p.start_latch.is_open() {
                p.start_latch.rx.clone()
            } else {
                crossbeam_channel::never()
            };
            let caller_rx = caller.unwrap_or_else(crossbeam_channel::never);
            crossbeam_channel::select! {
                recv(p.handled_latch.rx) -> _ => return Ok(p.wait_handled(Some(Duration::ZERO))),
                recv(started) -> _ => continue,
                recv(caller_rx) -> _ => {
                    self.abandon_exec(p, "the connection that started it closed");
                    let exit = p.wait_handled(Some(IO_DRAIN + Duration::from_secs(1)));
                    return Ok(exit);
                }
                recv(timer) -> _ => {
                    if exec {
                        self.abandon_exec(p, "its Wait's deadline passed");
                    }
                    return Err(ttrpc_err(
                        Code::DEADLINE_EXCEEDED,
                        format!("wait for {:?}: deadline exceeded", p.event_id()),
                    ));
                }
                recv(ctx.cancel_rx) -> _ => {
                    if exec && caller_rx.try_recv() == Err(crossbeam_channel::TryRecvError::Disconnected) {
                        self.abandon_exec(p, "the connection that started it closed");
                    }
                    return Err(ttrpc_err(Code::CANCELLED, "the connection closed"));
                }
            }
        }
    }

    /// SIGKILLs a running exec (and its process group if it leads one) and waits
    /// (bounded) for the reaper to record its exit.
    fn abandon_exec(&self, p: &Process, why: &str) {
        if lock(&p.caller).is_some() && !p.start_latch.is_open() {
            // Being started right now: kill what that Start starts.
            let _ = p.start_latch.rx.recv_timeout(START_WAIT);
        }
        let pid = {
            let st = lock(&p.st);
            if !st.started || st.pid == 0 || st.exit.is_some() {
                return;
            }
            st.pid as i32
        };
        if self.reaper.kill_watched(pid, true) {
            log::info!(
                "task {} exec {} (pid {pid}): killed, {why}",
                p.container_id,
                p.exec_id
            );
        }
        if p.wait_exited(ABANDON_WAIT).is_none() {
            log::warn!(
                "task {} exec {} (pid {pid}): no exit {ABANDON_WAIT:?} after SIGKILL",
                p.container_id,
                p.exec_id
            );
        }
    }

    /// Ends every exec of `c` that is still around (Delete of the task, Shutdown).
    fn kill_execs(&self, c: &Container) {
        for p in lock(&c.execs).values() {
            let st = lock(&p.st);
            if st.started && st.exit.is_none() && st.pid > 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(st.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    fn delete_exec(&self, c: &Arc<Container>, exec_id: &str) -> ttrpc::Result<DeleteResponse> {
        let _g = lock(&c.lifecycle);
        let p = match c.process(exec_id) {
            Ok(p) => p,
            Err(e) => return self.deleted(&c.id, exec_id).ok_or(e),
        };
        let (started, exited) = {
            let st = lock(&p.st);
            (st.started, st.exit.is_some())
        };
        if started && !exited {
            return Err(precondition(format!(
                "cannot delete exec {exec_id:?} of task {:?}: it is running",
                c.id
            )));
        }
        let exit = if started {
            p.wait_handled(Some(IO_DRAIN + Duration::from_secs(1)))
        } else {
            None
        };
        if let Some(io) = p.io() {
            io.close(Duration::from_millis(100));
        }
        lock(&c.execs).remove(exec_id);
        let resp = DeleteResponse {
            pid: p.pid(),
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: timestamp_field(exit.map(|e| e.at)),
            ..Default::default()
        };
        let mut st = lock(&self.state);
        self.remember_deleted(&mut st, &c.id, exec_id, &resp);
        Ok(resp)
    }

    fn delete_task(&self, c: &Arc<Container>) -> ttrpc::Result<DeleteResponse> {
        let _g = lock(&c.lifecycle);
        if !lock(&self.state).containers.contains_key(&c.id) {
            // Deleted by a concurrent call that held the lock first.
            return self
                .deleted(&c.id, "")
                .ok_or_else(|| not_found(format!("task {:?} not found", c.id)));
        }
        let init = &c.init;
        let (started, exited) = {
            let st = lock(&init.st);
            (st.started, st.exit.is_some())
        };
        if started && !exited {
            return Err(precondition(format!(
                "cannot delete task {:?}: it is running (kill it first)",
                c.id
            )));
        }
        match c.runc.delete(&c.id, true) {
            Ok(()) => {}
            Err(e) if e.is_not_exist() => {}
            Err(e) => return Err(runtime_err(e)),
        }
        self.kill_execs(c);
        // A created task was just killed by `delete --force`: collect its exit.
        let exit = init.wait_handled(Some(if exited {
            IO_DRAIN + Duration::from_secs(1)
        } else {
            DELETE_WAIT
        }));
        if exit.is_none() {
            self.reaper.unwatch(init.pid() as i32);
        }
        let exit = exit.unwrap_or(Exit {
            pid: init.pid() as i32,
            status: 128 + libc::SIGKILL as u32,
            at: SystemTime::now(),
        });
        for p in c.all_processes() {
            p.set_announced();
            if p.exit().is_none() {
                p.set_exited(Exit {
                    pid: p.pid() as i32,
                    ..exit
                });
            }
            p.set_handled();
            if let Some(io) = p.io() {
                io.close(Duration::from_millis(200));
            }
        }
        if c.rootfs_mounted {
            if let Err(e) = unmount_all(&c.bundle.join("rootfs")) {
                log::warn!("task {}: {e}", c.id);
            }
        }
        let resp = DeleteResponse {
            pid: init.pid(),
            exit_status: exit.status,
            exited_at: timestamp_field(Some(exit.at)),
            ..Default::default()
        };
        {
            let mut st = lock(&self.state);
            st.containers.remove(&c.id);
            self.remember_deleted(&mut st, &c.id, "", &resp);
        }
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: c.id.clone(),
                pid: resp.pid,
                exit_status: resp.exit_status,
                exited_at: resp.exited_at.clone(),
                id: c.id.clone(),
                ..Default::default()
            },
        );
        Ok(resp)
    }

    /// Reopens the CRI log files of every process (SIGUSR1).
    pub fn reopen_all_logs(&self) {
        let all: Vec<Arc<Container>> = lock(&self.state).containers.values().cloned().collect();
        for c in all {
            if let Err(e) = reopen_logs(&c) {
                log::warn!("task {}: {e}", c.id);
            }
        }
    }

    /// Number of tasks (Shutdown does nothing while there are any).
    pub fn task_count(&self) -> usize {
        let st = lock(&self.state);
        st.containers.len() + st.creating.len()
    }

    fn begin_shutdown(&self) {
        if let Some(s) = &self.cfg.socket {
            let _ = fs::remove_file(s);
        }
        self.exit.fire();
    }
}

fn reopen_logs(c: &Container) -> std::io::Result<()> {
    for p in c.all_processes() {
        if let Some(io) = p.io() {
            io.reopen_logs()?;
        }
    }
    Ok(())
}

fn finish_exit(c: &Container, p: &Process, events: &Publisher, exit: Exit) {
    if p.exec_id.is_empty() && c.cfg.shared_pid_ns {
        // No private PID namespace: nothing killed the other processes with init.
        if let Err(e) = c.runc.kill(&c.id, libc::SIGKILL as u32, true) {
            log::debug!("task {}: kill --all after init exit: {e}", c.id);
        }
    }
    if let Some(io) = p.io() {
        if !io.wait_drained(IO_DRAIN) {
            log::debug!("task {} {}: output still open at exit", c.id, p.exec_id);
        }
    }
    p.set_handled();
    p.wait_announced(Duration::from_secs(5));
    log::info!(
        "task {} process {} (pid {}) exited with status {}",
        c.id,
        p.event_id(),
        exit.pid,
        exit.status
    );
    events.publish(
        topics::TASK_EXIT_EVENT_TOPIC,
        TaskExit {
            container_id: c.id.clone(),
            id: p.event_id(),
            pid: exit.pid as u32,
            exit_status: exit.status,
            exited_at: timestamp_field(Some(exit.at)),
            ..Default::default()
        },
    );
}

impl Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        validate_id("task", &req.id)?;
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(ttrpc_err(
                Code::UNIMPLEMENTED,
                "checkpoint/restore is not supported",
            ));
        }
        {
            let mut st = lock(&self.state);
            if st.shutting_down {
                return Err(precondition("shim is shutting down"));
            }
            if st.containers.contains_key(&req.id) || st.creating.contains(&req.id) {
                return Err(ttrpc_err(
                    Code::ALREADY_EXISTS,
                    format!("task {:?} already exists", req.id),
                ));
            }
            st.creating.insert(req.id.clone());
        }
        let res = self.do_create(&req);
        {
            let mut st = lock(&self.state);
            st.creating.remove(&req.id);
            if let Ok(c) = &res {
                st.containers.insert(req.id.clone(), c.clone());
            }
        }
        let c = res.inspect_err(|e| log::warn!("create {}: {e}", req.id))?;
        let pid = c.init.pid();
        log::info!("task {} created (pid {pid})", req.id);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            },
        );
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let c = self.container(&req.id)?;
        if req.exec_id.is_empty() {
            let _g = lock(&c.lifecycle);
            {
                let st = lock(&c.init.st);
                if st.exit.is_some() {
                    return Err(precondition(format!(
                        "task {:?} has already exited",
                        req.id
                    )));
                }
                if st.started {
                    return Err(precondition(format!(
                        "task {:?} is already started",
                        req.id
                    )));
                }
            }
            if let Err(e) = c.runc.start(&c.id) {
                c.init.set_announced();
                return Err(runtime_err(e));
            }
            lock(&c.init.st).started = true;
            let pid = c.init.pid();
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                TaskStart {
                    container_id: c.id.clone(),
                    pid,
                    ..Default::default()
                },
            );
            c.init.set_announced();
            return Ok(StartResponse {
                pid,
                ..Default::default()
            });
        }
        let _g = lock(&c.lifecycle);
        let p = c.process(&req.exec_id)?;
        if p.started() {
            return Err(precondition(format!(
                "exec {:?} is already started",
                req.exec_id
            )));
        }
        *lock(&p.caller) = Some(ctx.cancel_rx.clone());
        let started = self.start_exec(&c, &p);
        p.start_latch.open();
        let pid = started.inspect_err(|_| p.set_announced())?;
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            },
        );
        p.set_announced();
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let c = match self.container(&req.id) {
            Ok(c) => c,
            Err(e) => return self.deleted(&req.id, &req.exec_id).ok_or(e),
        };
        if req.exec_id.is_empty() {
            self.delete_task(&c)
        } else {
            self.delete_exec(&c, &req.exec_id)
        }
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let c = self.container(&req.id)?;
        let pids = c.runc.ps(&c.id).map_err(runtime_err)?;
        let execs: HashMap<u32, String> = lock(&c.execs)
            .values()
            .map(|p| (p.pid(), p.exec_id.clone()))
            .filter(|(pid, _)| *pid > 0)
            .collect();
        let processes = pids
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                info: MessageField::from_option(execs.get(&pid).and_then(|exec_id| {
                    to_any(&ProcessDetails {
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    })
                })),
                ..Default::default()
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        let c = self.container(&req.id)?;
        c.runc.pause(&c.id).map_err(runtime_err)?;
        c.paused.store(true, Ordering::SeqCst);
        self.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            TaskPaused {
                container_id: c.id.clone(),
                ..Default::default()
            },
        );
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        let c = self.container(&req.id)?;
        c.runc.resume(&c.id).map_err(runtime_err)?;
        c.paused.store(false, Ordering::SeqCst);
        self.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            TaskResumed {
                container_id: c.id.clone(),
                ..Default::default()
            },
        );
        Ok(Empty::new())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.exec_id.is_empty() {
            if p.exit().is_some() && !req.all {
                return Err(not_found(format!(
                    "task {:?}: process already finished",
                    req.id
                )));
            }
            return match c.runc.kill(&c.id, req.signal, req.all) {
                Ok(()) => Ok(Empty::new()),
                Err(e) if e.is_not_running() => Err(not_found(format!(
                    "task {:?}: process already finished",
                    req.id
                ))),
                Err(e) => Err(runtime_err(e)),
            };
        }
        let st = lock(&p.st);
        if !st.started || st.pid == 0 {
            return Err(precondition(format!(
                "exec {:?} is not started",
                req.exec_id
            )));
        }
        if st.exit.is_some() {
            return Err(not_found(format!(
                "exec {:?}: process already finished",
                req.exec_id
            )));
        }
        // An exec is signalled directly (runc kill only knows the init process).
        let sig = nix::sys::signal::Signal::try_from(req.signal as i32)
            .map_err(|_| invalid(format!("invalid signal {}", req.signal)))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(st.pid as i32), sig) {
            Ok(()) => Ok(Empty::new()),
            Err(nix::errno::Errno::ESRCH) => Err(not_found(format!(
                "exec {:?}: process already finished",
                req.exec_id
            ))),
            Err(e) => Err(internal(format!("kill exec {:?}: {e}", req.exec_id))),
        }
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let c = self.container(&req.id)?;
        validate_id("exec", &req.exec_id)?;
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| invalid("exec without a process spec"))?;
        serde_json::from_slice::<serde_json::Value>(&spec)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| invalid("exec process spec is not a JSON object"))?;
        if c.init.exit().is_some() {
            return Err(precondition(format!("task {:?} is not running", req.id)));
        }
        {
            let mut execs = lock(&c.execs);
            if execs.contains_key(&req.exec_id) {
                return Err(ttrpc_err(
                    Code::ALREADY_EXISTS,
                    format!("exec {:?} already exists", req.exec_id),
                ));
            }
            let stdio = StdioConfig {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            execs.insert(
                req.exec_id.clone(),
                Arc::new(Process::new(&c.id, &req.exec_id, stdio, Some(spec))),
            );
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: c.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if let Some(io) = p.io() {
            io.resize(req.width, req.height)
                .map_err(|e| internal(format!("resize pty: {e}")))?;
        }
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.stdin {
            if let Some(io) = p.io() {
                io.close_stdin();
            }
        }
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let c = self.container(&req.id)?;
        let reopen = req
            .annotations
            .get(REOPEN_LOG_ANNOTATION)
            .is_some_and(|v| v != "false");
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        if !resources.is_empty() {
            if c.init.exit().is_some() {
                return Err(precondition(format!("task {:?} is not running", req.id)));
            }
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            let f = c.bundle.join(format!(".update-{n}.json"));
            write_atomic(&f, &resources).map_err(|e| internal(format!("write resources: {e}")))?;
            let res = c.runc.update(&c.id, &f);
            let _ = fs::remove_file(&f);
            res.map_err(runtime_err)?;
        }
        if reopen {
            reopen_logs(&c).map_err(|e| internal(format!("reopen log: {e}")))?;
        }
        Ok(Empty::new())
    }

    fn wait(&self, ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let deadline = (ctx.timeout_nano > 0)
            .then(|| Instant::now() + Duration::from_nanos(ctx.timeout_nano as u64));
        let c = match self.container(&req.id) {
            Ok(c) => c,
            Err(e) => {
                let d = self.deleted(&req.id, &req.exec_id).ok_or(e)?;
                return Ok(WaitResponse {
                    exit_status: d.exit_status,
                    exited_at: d.exited_at,
                    ..Default::default()
                });
            }
        };
        let p = match c.process(&req.exec_id) {
            Ok(p) => p,
            Err(e) => {
                let d = self.deleted(&req.id, &req.exec_id).ok_or(e)?;
                return Ok(WaitResponse {
                    exit_status: d.exit_status,
                    exited_at: d.exited_at,
                    ..Default::default()
                });
            }
        };
        drop(c);
        let exit = self.wait_for(ctx, &p, deadline)?;
        Ok(WaitResponse {
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: timestamp_field(exit.map(|e| e.at)),
            ..Default::default()
        })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let c = self.container(&req.id)?;
        let pid = (c.init.exit().is_none()).then(|| c.init.pid());
        let dirs = stats::locate(
            Path::new(stats::CGROUP_ROOT),
            pid,
            c.cfg.cgroups_path.as_deref(),
        )
        .ok_or_else(|| not_found(format!("cgroup of task {:?} does not exist", req.id)))?;
        Ok(StatsResponse {
            stats: MessageField::some(stats::collect(&dirs)),
            ..Default::default()
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        let task_pid = self.container(&req.id).map(|c| c.init.pid()).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: crate::VERSION.to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        {
            let mut st = lock(&self.state);
            if !st.containers.is_empty() || !st.creating.is_empty() {
                return Ok(Empty::new());
            }
            st.shutting_down = true;
        }
        log::info!("shutdown: no tasks left, exiting");
        self.begin_shutdown();
        Ok(Empty::new())
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let paused = req.exec_id.is_empty() && c.paused.load(Ordering::SeqCst);
        let status = p.status(paused);
        let (pid, exit) = {
            let st = lock(&p.st);
            (st.pid, st.exit)
        };
        Ok(StateResponse {
            id: p.event_id(),
            bundle: c.bundle.display().to_string(),
            pid,
            status: EnumOrUnknown::new(status),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: timestamp_field(exit.map(|e| e.at)),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }
}
