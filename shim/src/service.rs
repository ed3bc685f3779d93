//! The task service: `containerd.task.v2.Task` and `containerd.task.v3.Task` (same
//! messages) over ttrpc. Thin: it decodes a request, calls the task state machine
//! ([`crate::tasks`]) and encodes the answer; errors become ttrpc statuses in one
//! place ([`crate::error`]).

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim_protos::shim::oci::ProcessDetails;
use containerd_shim_protos::Task;
use protobuf::well_known_types::empty::Empty;
use protobuf::{EnumOrUnknown, MessageField};
use ttrpc::TtrpcContext;

use crate::container::{LaunchConfig, Launcher, RuntimeFactory};
use crate::events::{to_any, Publisher};
use crate::reaper::{Exit, Reaper};
use crate::runc::Runc;
use crate::stdio::StdioConfig;
use crate::tasks::Tasks;
use crate::util::timestamp_field;

/// Annotation on an UpdateTaskRequest: reopen the task's CRI log files (kubelet's
/// ReopenContainerLog). `resources` may be empty then.
pub use berth_shim_protocol::annotations::REOPEN_LOG as REOPEN_LOG_ANNOTATION;

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

pub struct Service {
    tasks: Tasks,
    /// The shim's socket, removed on Shutdown so that a new `start` makes a new shim.
    socket: Option<PathBuf>,
    exit: Arc<ExitSignal>,
}

impl Service {
    pub fn new(
        cfg: ServiceConfig,
        reaper: Arc<Reaper>,
        events: Publisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        let runc_reaper = reaper.clone();
        let new_runtime: RuntimeFactory = Box::new(move |cfg, log| {
            Arc::new(Runc {
                cfg,
                log,
                reaper: Some(runc_reaper.clone()),
            })
        });
        let launch = LaunchConfig {
            namespace: cfg.namespace,
            console_dir: cfg.console_dir,
            default_runtime: cfg.default_runtime,
            runc_root_base: cfg.runc_root_base,
        };
        Service {
            tasks: Tasks::new(Launcher::new(launch, reaper, events, new_runtime)),
            socket: cfg.socket,
            exit,
        }
    }

    /// Reopens the CRI log files of every process (SIGUSR1).
    pub fn reopen_all_logs(&self) {
        self.tasks.reopen_all_logs();
    }

    /// Number of tasks (Shutdown does nothing while there are any).
    pub fn task_count(&self) -> usize {
        self.tasks.task_count()
    }

    fn begin_shutdown(&self) {
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
        }
        self.exit.fire();
    }
}

fn stdio_of(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioConfig {
    StdioConfig {
        stdin: stdin.to_string(),
        stdout: stdout.to_string(),
        stderr: stderr.to_string(),
        terminal,
    }
}

fn exit_status(exit: Option<Exit>) -> u32 {
    exit.map(|e| e.status).unwrap_or(0)
}

impl Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let pid = self.tasks.create(&req)?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let pid = self
            .tasks
            .start(&req.id, &req.exec_id, ctx.cancel_rx.clone())?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let d = self.tasks.delete(&req.id, &req.exec_id)?;
        Ok(DeleteResponse {
            pid: d.pid,
            exit_status: exit_status(d.exit),
            exited_at: timestamp_field(d.exit.map(|e| e.at)),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let processes = self
            .tasks
            .pids(&req.id)?
            .into_iter()
            .map(|(pid, exec_id)| ProcessInfo {
                pid,
                info: MessageField::from_option(exec_id.and_then(|exec_id| {
                    to_any(&ProcessDetails {
                        exec_id,
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
        self.tasks.pause(&req.id)?;
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        self.tasks.resume(&req.id)?;
        Ok(Empty::new())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        self.tasks
            .kill(&req.id, &req.exec_id, req.signal, req.all)?;
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let stdio = stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let spec = req.spec.as_ref().map(|a| a.value.clone());
        self.tasks.exec(&req.id, &req.exec_id, stdio, spec)?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        self.tasks
            .resize_pty(&req.id, &req.exec_id, req.width, req.height)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        self.tasks.close_io(&req.id, &req.exec_id, req.stdin)?;
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let reopen = req
            .annotations
            .get(REOPEN_LOG_ANNOTATION)
            .is_some_and(|v| v != "false");
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.as_slice())
            .unwrap_or_default();
        self.tasks.update(&req.id, resources, reopen)?;
        Ok(Empty::new())
    }

    fn wait(&self, ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let deadline = (ctx.timeout_nano > 0)
            .then(|| Instant::now() + Duration::from_nanos(ctx.timeout_nano as u64));
        let exit = self
            .tasks
            .wait(&req.id, &req.exec_id, deadline, &ctx.cancel_rx)?;
        Ok(WaitResponse {
            exit_status: exit_status(exit),
            exited_at: timestamp_field(exit.map(|e| e.at)),
            ..Default::default()
        })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let stats = self.tasks.stats(&req.id)?;
        Ok(StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.tasks.task_pid(&req.id),
            version: crate::VERSION.to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        if self.tasks.shutdown() {
            log::info!("shutdown: no tasks left, exiting");
            self.begin_shutdown();
        }
        Ok(Empty::new())
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let s = self.tasks.state(&req.id, &req.exec_id)?;
        Ok(StateResponse {
            id: s.id,
            bundle: s.bundle,
            pid: s.pid,
            status: EnumOrUnknown::new(s.status),
            stdin: s.stdio.stdin,
            stdout: s.stdio.stdout,
            stderr: s.stdio.stderr,
            terminal: s.stdio.terminal,
            exit_status: exit_status(s.exit),
            exited_at: timestamp_field(s.exit.map(|e| e.at)),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }
}
