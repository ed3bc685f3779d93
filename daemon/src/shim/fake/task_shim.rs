//! One pod's fake shim process ([`FakeShim`], a [`TaskShim`]): a task state
//! machine like runc's behind a real shim: created -> running -> stopped,
//! exits delivered to Wait, a kill of a stopped task NotFound, a delete of a
//! running one refused; exec processes follow a script ([`ExecScript`]) and
//! die with their task. The shim can die (every call then fails as a lost
//! connection), calls can be slowed down, and any call made to fail with an
//! injected error.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use tokio::sync::watch;

use super::super::client::{RpcCode, ShimError, TaskApi};
use super::super::connection::TaskShim;
use berth_sysutil::lock;
/// The state of a task in a fake shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeState {
    Created,
    Running,
    Stopped,
}

#[derive(Debug, Clone)]
struct FakeTask {
    state: FakeState,
    pid: u32,
    exit_status: u32,
    exited_at: i64,
    /// The task's process ignores SIGTERM (a stop then needs SIGKILL).
    ignores_sigterm: bool,
}

pub(super) fn rpc(method: &'static str, code: RpcCode, message: impl Into<String>) -> ShimError {
    ShimError::Rpc {
        method,
        code,
        message: message.into(),
    }
}

fn gone(method: &'static str) -> ShimError {
    ShimError::Transport {
        method,
        message: "the fake shim died".into(),
    }
}

fn timestamp(nanos: i64) -> MessageField<Timestamp> {
    let mut t = Timestamp::new();
    t.seconds = nanos / 1_000_000_000;
    t.nanos = (nanos % 1_000_000_000) as i32;
    MessageField::some(t)
}

#[derive(Debug, Clone)]
struct FakeExec {
    state: FakeState,
    pid: u32,
    exit_status: u32,
    /// The stdout FIFO berthd gave.
    stdout: String,
}

/// What an exec process does when started.
#[derive(Debug, Clone)]
pub struct ExecScript {
    /// Written to its stdout.
    pub stdout: Vec<u8>,
    /// Exits at once with this status; None: runs until killed.
    pub exit: Option<u32>,
}

impl Default for ExecScript {
    fn default() -> Self {
        ExecScript {
            stdout: Vec::new(),
            exit: Some(0),
        }
    }
}

/// One pod's fake shim process.
pub struct FakeShim {
    pub sandbox_id: String,
    pub pid: u32,
    tasks: Mutex<HashMap<String, FakeTask>>,
    dead: AtomicBool,
    /// Errors the next calls of a method return, in order.
    failures: Mutex<HashMap<&'static str, VecDeque<ShimError>>>,
    /// Every call, as `Method id`.
    calls: Mutex<Vec<String>>,
    /// Bumped on every change waiters may care about.
    changed: watch::Sender<u64>,
    next_pid: AtomicU32,
    /// How long calls of a method take.
    delays: Mutex<HashMap<&'static str, Duration>>,
    /// Exec processes by (task id, exec id).
    execs: Mutex<HashMap<(String, String), FakeExec>>,
    exec_script: Mutex<ExecScript>,
}

impl FakeShim {
    pub(super) fn new(sandbox_id: &str, pid: u32) -> FakeShim {
        FakeShim {
            sandbox_id: sandbox_id.to_string(),
            pid,
            tasks: Mutex::new(HashMap::new()),
            dead: AtomicBool::new(false),
            failures: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
            next_pid: AtomicU32::new(pid + 1),
            delays: Mutex::new(HashMap::new()),
            execs: Mutex::new(HashMap::new()),
            exec_script: Mutex::new(ExecScript::default()),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Records a call; fails it when the shim is dead or an error was
    /// injected for `method`.
    fn enter(&self, method: &'static str, id: &str) -> Result<(), ShimError> {
        lock(&self.calls).push(format!("{method} {id}"));
        if self.is_dead() {
            return Err(gone(method));
        }
        if let Some(e) = lock(&self.failures)
            .get_mut(method)
            .and_then(VecDeque::pop_front)
        {
            return Err(e);
        }
        Ok(())
    }

    /// The next call of `method` (ttrpc's name: `Create`, `Start`, `Kill`,
    /// `Delete`, `Wait`, `State`, ...) fails with `err`.
    pub fn fail_next(&self, method: &'static str, err: ShimError) {
        lock(&self.failures)
            .entry(method)
            .or_default()
            .push_back(err);
    }

    /// Calls of `method` take `d` (before they act).
    pub fn delay(&self, method: &'static str, d: Duration) {
        lock(&self.delays).insert(method, d);
    }

    async fn take_time(&self, method: &'static str) {
        let d = lock(&self.delays).get(method).copied();
        if let Some(d) = d {
            tokio::time::sleep(d).await;
        }
    }

    /// The shim process dies: every call and every Wait fails as a lost
    /// connection, and a reconnect is refused.
    pub fn die(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.bump();
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// The task's process exits on its own with `code`.
    pub fn exit(&self, id: &str, code: u32) {
        if let Some(t) = lock(&self.tasks).get_mut(id) {
            if t.state == FakeState::Running {
                t.state = FakeState::Stopped;
                t.exit_status = code;
                t.exited_at = berth_sysutil::now_nanos();
            }
        }
        self.kill_execs_of(id);
        self.bump();
    }

    /// The task's process ignores SIGTERM from now on.
    pub fn ignore_sigterm(&self, id: &str) {
        if let Some(t) = lock(&self.tasks).get_mut(id) {
            t.ignores_sigterm = true;
        }
    }

    pub fn state_of(&self, id: &str) -> Option<FakeState> {
        lock(&self.tasks).get(id).map(|t| t.state)
    }

    /// The ids of the tasks the shim holds.
    pub fn task_ids(&self) -> Vec<String> {
        lock(&self.tasks).keys().cloned().collect()
    }

    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    fn with_task<T>(
        &self,
        method: &'static str,
        id: &str,
        f: impl FnOnce(&mut FakeTask) -> Result<T, ShimError>,
    ) -> Result<T, ShimError> {
        let r = match lock(&self.tasks).get_mut(id) {
            Some(t) => f(t),
            None => Err(rpc(
                method,
                RpcCode::NotFound,
                format!("task {id} not found"),
            )),
        };
        self.bump();
        r
    }

    fn with_exec<T>(
        &self,
        method: &'static str,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut FakeExec) -> Result<T, ShimError>,
    ) -> Result<T, ShimError> {
        match lock(&self.execs).get_mut(&(id.to_string(), exec_id.to_string())) {
            Some(e) => f(e),
            None => Err(rpc(
                method,
                RpcCode::NotFound,
                format!("exec {exec_id} not found"),
            )),
        }
    }

    /// What exec processes started from now on do.
    pub fn on_exec(&self, script: ExecScript) {
        *lock(&self.exec_script) = script;
    }

    /// The exec processes the shim holds, as `(task id, exec id)`.
    pub fn exec_ids(&self) -> Vec<(String, String)> {
        lock(&self.execs).keys().cloned().collect()
    }

    /// A task's init exited: its exec processes die with it.
    fn kill_execs_of(&self, id: &str) {
        for ((task, _), e) in lock(&self.execs).iter_mut() {
            if task == id && e.state != FakeState::Stopped {
                e.state = FakeState::Stopped;
                e.exit_status = 137;
            }
        }
    }
}

#[async_trait]
impl TaskShim for FakeShim {
    fn api(&self) -> TaskApi {
        TaskApi::V3
    }

    async fn connect_info(&self, id: &str) -> Result<api::ConnectResponse, ShimError> {
        self.enter("Connect", id)?;
        Ok(api::ConnectResponse {
            shim_pid: self.pid,
            ..Default::default()
        })
    }

    async fn create(
        &self,
        req: &api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse, ShimError> {
        self.enter("Create", &req.id)?;
        self.take_time("Create").await;
        let mut tasks = lock(&self.tasks);
        if tasks.contains_key(&req.id) {
            return Err(rpc(
                "Create",
                RpcCode::AlreadyExists,
                format!("task {} already exists", req.id),
            ));
        }
        let pid = self.next_pid.fetch_add(1, Ordering::SeqCst);
        tasks.insert(
            req.id.clone(),
            FakeTask {
                state: FakeState::Created,
                pid,
                exit_status: 0,
                exited_at: 0,
                ignores_sigterm: false,
            },
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, id: &str) -> Result<api::StartResponse, ShimError> {
        self.enter("Start", id)?;
        self.take_time("Start").await;
        self.with_task("Start", id, |t| match t.state {
            FakeState::Created => {
                t.state = FakeState::Running;
                Ok(api::StartResponse {
                    pid: t.pid,
                    ..Default::default()
                })
            }
            s => Err(rpc(
                "Start",
                RpcCode::FailedPrecondition,
                format!("cannot start a task that is {s:?}"),
            )),
        })
    }

    async fn state(&self, id: &str) -> Result<api::StateResponse, ShimError> {
        self.enter("State", id)?;
        self.with_task("State", id, |t| {
            let status = match t.state {
                FakeState::Created => api::Status::CREATED,
                FakeState::Running => api::Status::RUNNING,
                FakeState::Stopped => api::Status::STOPPED,
            };
            Ok(api::StateResponse {
                id: id.to_string(),
                pid: t.pid,
                status: status.into(),
                exit_status: t.exit_status,
                exited_at: timestamp(t.exited_at),
                ..Default::default()
            })
        })
    }

    async fn kill(&self, id: &str, signal: u32, _all: bool) -> Result<(), ShimError> {
        self.enter("Kill", id)?;
        let r = self.with_task("Kill", id, |t| {
            if t.state == FakeState::Stopped {
                return Err(rpc("Kill", RpcCode::NotFound, "process already finished"));
            }
            if signal == 15 && t.ignores_sigterm {
                return Ok(());
            }
            if matches!(signal, 9 | 15 | 2 | 1) {
                t.state = FakeState::Stopped;
                t.exit_status = 128 + signal;
                t.exited_at = berth_sysutil::now_nanos();
            }
            Ok(())
        });
        if self.state_of(id) == Some(FakeState::Stopped) {
            self.kill_execs_of(id);
            self.bump();
        }
        r
    }

    async fn wait(&self, id: &str) -> Result<api::WaitResponse, ShimError> {
        self.enter("Wait", id)?;
        let mut rx = self.changed.subscribe();
        loop {
            if self.is_dead() {
                return Err(gone("Wait"));
            }
            match lock(&self.tasks).get(id) {
                None => {
                    return Err(rpc(
                        "Wait",
                        RpcCode::NotFound,
                        format!("task {id} not found"),
                    ))
                }
                Some(t) if t.state == FakeState::Stopped => {
                    return Ok(api::WaitResponse {
                        exit_status: t.exit_status,
                        exited_at: timestamp(t.exited_at),
                        ..Default::default()
                    })
                }
                Some(_) => {}
            }
            if rx.changed().await.is_err() {
                return Err(gone("Wait"));
            }
        }
    }

    async fn delete(&self, id: &str) -> Result<api::DeleteResponse, ShimError> {
        self.enter("Delete", id)?;
        self.take_time("Delete").await;
        let mut tasks = lock(&self.tasks);
        let r = match tasks.get(id) {
            None => Err(rpc(
                "Delete",
                RpcCode::NotFound,
                format!("task {id} not found"),
            )),
            Some(t) if t.state == FakeState::Running => Err(rpc(
                "Delete",
                RpcCode::FailedPrecondition,
                format!("cannot delete running task {id}"),
            )),
            Some(t) => {
                let d = api::DeleteResponse {
                    pid: t.pid,
                    exit_status: t.exit_status,
                    exited_at: timestamp(t.exited_at),
                    ..Default::default()
                };
                tasks.remove(id);
                Ok(d)
            }
        };
        drop(tasks);
        self.bump();
        r
    }

    async fn exec(&self, req: &api::ExecProcessRequest) -> Result<(), ShimError> {
        self.enter("Exec", &req.id)?;
        match lock(&self.tasks).get(&req.id).map(|t| t.state) {
            None => {
                return Err(rpc(
                    "Exec",
                    RpcCode::NotFound,
                    format!("task {} not found", req.id),
                ))
            }
            Some(FakeState::Running) => {}
            Some(_) => {
                return Err(rpc(
                    "Exec",
                    RpcCode::FailedPrecondition,
                    "cannot exec in a stopped container",
                ))
            }
        }
        let key = (req.id.clone(), req.exec_id.clone());
        let mut execs = lock(&self.execs);
        if execs.contains_key(&key) {
            return Err(rpc(
                "Exec",
                RpcCode::AlreadyExists,
                format!("exec {} already exists", req.exec_id),
            ));
        }
        execs.insert(
            key,
            FakeExec {
                state: FakeState::Created,
                pid: self.next_pid.fetch_add(1, Ordering::SeqCst),
                exit_status: 0,
                stdout: req.stdout.clone(),
            },
        );
        Ok(())
    }

    async fn start_exec(&self, id: &str, exec_id: &str) -> Result<api::StartResponse, ShimError> {
        self.enter("Start", id)?;
        let script = lock(&self.exec_script).clone();
        let r = self.with_exec("Start", id, exec_id, |e| {
            if e.state != FakeState::Created {
                return Err(rpc(
                    "Start",
                    RpcCode::FailedPrecondition,
                    "exec already started",
                ));
            }
            if !script.stdout.is_empty() {
                // berthd holds the FIFO open read-write: this open does not block.
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&e.stdout)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, &script.stdout))
                    .map_err(|err| rpc("Start", RpcCode::Other(13), err.to_string()))?;
            }
            e.state = FakeState::Running;
            if let Some(code) = script.exit {
                e.state = FakeState::Stopped;
                e.exit_status = code;
            }
            Ok(api::StartResponse {
                pid: e.pid,
                ..Default::default()
            })
        });
        self.bump();
        r
    }

    async fn wait_exec(&self, id: &str, exec_id: &str) -> Result<api::WaitResponse, ShimError> {
        self.enter("Wait", id)?;
        let mut rx = self.changed.subscribe();
        loop {
            if self.is_dead() {
                return Err(gone("Wait"));
            }
            let done = self.with_exec("Wait", id, exec_id, |e| {
                Ok((e.state == FakeState::Stopped).then_some(e.exit_status))
            })?;
            if let Some(code) = done {
                return Ok(api::WaitResponse {
                    exit_status: code,
                    ..Default::default()
                });
            }
            if rx.changed().await.is_err() {
                return Err(gone("Wait"));
            }
        }
    }

    async fn kill_exec(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        _all: bool,
    ) -> Result<(), ShimError> {
        self.enter("Kill", id)?;
        let r = self.with_exec("Kill", id, exec_id, |e| match e.state {
            FakeState::Stopped => Err(rpc("Kill", RpcCode::NotFound, "process already finished")),
            _ => {
                e.state = FakeState::Stopped;
                e.exit_status = 128 + signal;
                Ok(())
            }
        });
        self.bump();
        r
    }

    async fn delete_exec(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse, ShimError> {
        self.enter("Delete", id)?;
        let key = (id.to_string(), exec_id.to_string());
        let mut execs = lock(&self.execs);
        match execs.get(&key) {
            None => Err(rpc(
                "Delete",
                RpcCode::NotFound,
                format!("exec {exec_id} not found"),
            )),
            Some(e) if e.state == FakeState::Running => Err(rpc(
                "Delete",
                RpcCode::FailedPrecondition,
                format!("cannot delete running exec {exec_id}"),
            )),
            Some(e) => {
                let d = api::DeleteResponse {
                    pid: e.pid,
                    exit_status: e.exit_status,
                    ..Default::default()
                };
                execs.remove(&key);
                Ok(d)
            }
        }
    }

    async fn resize_pty(
        &self,
        id: &str,
        _exec_id: &str,
        _width: u32,
        _height: u32,
    ) -> Result<(), ShimError> {
        self.enter("ResizePty", id)?;
        self.with_task("ResizePty", id, |_| Ok(()))
    }

    async fn close_io(&self, id: &str, _exec_id: &str, _stdin: bool) -> Result<(), ShimError> {
        self.enter("CloseIO", id)?;
        self.with_task("CloseIO", id, |_| Ok(()))
    }

    async fn update(
        &self,
        id: &str,
        _resources: Option<Any>,
        _annotations: HashMap<String, String>,
    ) -> Result<(), ShimError> {
        self.enter("Update", id)?;
        self.with_task("Update", id, |_| Ok(()))
    }

    async fn pids(&self, id: &str) -> Result<api::PidsResponse, ShimError> {
        self.enter("Pids", id)?;
        self.with_task("Pids", id, |t| {
            let mut p = api::ProcessInfo::new();
            p.pid = t.pid;
            Ok(api::PidsResponse {
                processes: if t.state == FakeState::Stopped {
                    Vec::new()
                } else {
                    vec![p]
                },
                ..Default::default()
            })
        })
    }

    async fn stats(&self, id: &str) -> Result<api::StatsResponse, ShimError> {
        self.enter("Stats", id)?;
        self.with_task("Stats", id, |_| Ok(api::StatsResponse::default()))
    }

    async fn shutdown(&self, id: &str) -> Result<(), ShimError> {
        self.enter("Shutdown", id)?;
        // A shim exits on Shutdown only once it holds no task.
        if lock(&self.tasks).is_empty() {
            self.die();
        }
        Ok(())
    }
}
