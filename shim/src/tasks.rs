//! The task state machine: which verb each state of a task or exec allows, and what
//! it answers (containerd-shim-runc-v2's rules and codes).
//!
//! - created: Start, Exec, Kill (through the runtime), Delete (`delete --force` ends
//!   init; its exit is the answer).
//! - running: Start is FailedPrecondition; Delete is FailedPrecondition (kill first);
//!   Exec, Kill, Update go on.
//! - stopped: Start, Exec, Update are FailedPrecondition; Kill is NotFound ("process
//!   already finished", as containerd answers) except `kill --all`; Delete answers
//!   the exit.
//! - deleted: NotFound, except that a retried Delete or a late Wait gets the first
//!   answer.
//! - Pause and Resume are the runtime's to refuse (its refusal is FailedPrecondition).
//! - An exec follows the same rules; its Kill before Start is FailedPrecondition.
//! - An unknown task or exec id is NotFound; a duplicate one AlreadyExists.
//!
//! Locking: the shim-wide state lock is only held to look up, reserve or remove
//! entries, never across a runtime call; each container has a lifecycle lock that
//! orders its create/start/exec/delete. Wait blocks on per-process latches (channels
//! that are disconnected once), so that it can also watch its deadline and
//! connections.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use containerd_shim_protos::api::{CreateTaskRequest, Status};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim_protos::topics;
use protobuf::well_known_types::any::Any;
use protobuf::MessageField;

use crate::container::{reopen_logs, Container, Launcher, IO_DRAIN};
use crate::error::{Error, Result};
use crate::mount::unmount_all;
use crate::process::{lock, Process};
use crate::reaper::Exit;
use crate::stats;
use crate::stdio::StdioConfig;
use crate::util::{timestamp_field, validate_id, write_atomic};

/// How long Delete waits for an exit it caused (`runc delete --force` of a created task).
const DELETE_WAIT: Duration = Duration::from_secs(10);
/// Deleted tasks remembered, so that a retried Delete (or Wait) gets the same answer.
const DELETED_KEEP: usize = 256;
/// How long a Wait that gave up on an exec waits for the exit of the SIGKILL it sent.
const ABANDON_WAIT: Duration = Duration::from_secs(2);
/// How long a Wait that gives up on an exec waits for a Start in progress (runc exec).
const START_WAIT: Duration = Duration::from_secs(10);

/// What Delete answered: the process's pid and its exit (none for an exec that was
/// never started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub pid: u32,
    pub exit: Option<Exit>,
}

/// A process as State reports it.
#[derive(Debug)]
pub struct ProcessState {
    /// The container id for init, else the exec id.
    pub id: String,
    pub bundle: String,
    pub pid: u32,
    pub status: Status,
    pub stdio: StdioConfig,
    pub exit: Option<Exit>,
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Arc<Container>>,
    creating: HashSet<String>,
    deleted: VecDeque<((String, String), Deleted)>,
    shutting_down: bool,
}

pub struct Tasks {
    launcher: Launcher,
    state: Mutex<State>,
}

impl Tasks {
    pub fn new(launcher: Launcher) -> Self {
        Tasks {
            launcher,
            state: Mutex::new(State::default()),
        }
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.state)
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("task {id:?} not found")))
    }

    fn deleted(&self, id: &str, exec_id: &str) -> Option<Deleted> {
        lock(&self.state)
            .deleted
            .iter()
            .rev()
            .find(|((i, e), _)| i == id && e == exec_id)
            .map(|(_, r)| *r)
    }

    fn remember_deleted(st: &mut State, id: &str, exec_id: &str, d: Deleted) {
        if st.deleted.len() >= DELETED_KEEP {
            st.deleted.pop_front();
        }
        st.deleted
            .push_back(((id.to_string(), exec_id.to_string()), d));
    }

    fn publish<M: crate::events::TypeName>(&self, topic: &'static str, ev: M) {
        self.launcher.events.publish(topic, ev);
    }

    /// Number of tasks (Shutdown does nothing while there are any).
    pub fn task_count(&self) -> usize {
        let st = lock(&self.state);
        st.containers.len() + st.creating.len()
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

    /// Create: the task's init pid.
    pub fn create(&self, req: &CreateTaskRequest) -> Result<u32> {
        validate_id("task", &req.id)?;
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(Error::Unimplemented(
                "checkpoint/restore is not supported".into(),
            ));
        }
        {
            let mut st = lock(&self.state);
            if st.shutting_down {
                return Err(Error::FailedPrecondition("shim is shutting down".into()));
            }
            if st.containers.contains_key(&req.id) || st.creating.contains(&req.id) {
                return Err(Error::AlreadyExists(format!(
                    "task {:?} already exists",
                    req.id
                )));
            }
            st.creating.insert(req.id.clone());
        }
        let res = self.launcher.create(req);
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
        Ok(pid)
    }

    /// Start of init (empty `exec_id`) or an exec: its pid. `caller` is disconnected
    /// once the Start's connection is gone (an exec whose starter left is killed by
    /// its Wait).
    pub fn start(
        &self,
        id: &str,
        exec_id: &str,
        caller: crossbeam_channel::Receiver<()>,
    ) -> Result<u32> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            let _g = lock(&c.lifecycle);
            {
                let st = lock(&c.init.st);
                if st.exit.is_some() {
                    return Err(Error::FailedPrecondition(format!(
                        "task {id:?} has already exited"
                    )));
                }
                if st.started {
                    return Err(Error::FailedPrecondition(format!(
                        "task {id:?} is already started"
                    )));
                }
            }
            if let Err(e) = c.runtime.start(&c.id) {
                c.init.set_announced();
                return Err(e.into());
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
            return Ok(pid);
        }
        let _g = lock(&c.lifecycle);
        let p = c.process(exec_id)?;
        if p.started() {
            return Err(Error::FailedPrecondition(format!(
                "exec {exec_id:?} is already started"
            )));
        }
        *lock(&p.caller) = Some(caller);
        let started = self.launcher.start_exec(&c, &p);
        p.start_latch.open();
        let pid = started.inspect_err(|_| p.set_announced())?;
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: exec_id.to_string(),
                pid,
                ..Default::default()
            },
        );
        p.set_announced();
        Ok(pid)
    }

    /// Delete of a task (empty `exec_id`) or an exec. A retried Delete gets the first
    /// answer.
    pub fn delete(&self, id: &str, exec_id: &str) -> Result<Deleted> {
        let c = match self.container(id) {
            Ok(c) => c,
            Err(e) => return self.deleted(id, exec_id).ok_or(e),
        };
        if exec_id.is_empty() {
            self.delete_task(&c)
        } else {
            self.delete_exec(&c, exec_id)
        }
    }

    fn delete_exec(&self, c: &Arc<Container>, exec_id: &str) -> Result<Deleted> {
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
            return Err(Error::FailedPrecondition(format!(
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
        let d = Deleted { pid: p.pid(), exit };
        Self::remember_deleted(&mut lock(&self.state), &c.id, exec_id, d);
        Ok(d)
    }

    fn delete_task(&self, c: &Arc<Container>) -> Result<Deleted> {
        let _g = lock(&c.lifecycle);
        if !lock(&self.state).containers.contains_key(&c.id) {
            // Deleted by a concurrent call that held the lock first.
            return self
                .deleted(&c.id, "")
                .ok_or_else(|| Error::NotFound(format!("task {:?} not found", c.id)));
        }
        let init = &c.init;
        let (started, exited) = {
            let st = lock(&init.st);
            (st.started, st.exit.is_some())
        };
        if started && !exited {
            return Err(Error::FailedPrecondition(format!(
                "cannot delete task {:?}: it is running (kill it first)",
                c.id
            )));
        }
        match c.runtime.delete(&c.id, true) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        self.kill_execs(c);
        // A created task was just killed by `delete --force`: collect its exit.
        let exit = init.wait_handled(Some(if exited {
            IO_DRAIN + Duration::from_secs(1)
        } else {
            DELETE_WAIT
        }));
        if exit.is_none() {
            self.launcher.reaper.unwatch(init.pid() as i32);
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
        let d = Deleted {
            pid: init.pid(),
            exit: Some(exit),
        };
        {
            let mut st = lock(&self.state);
            st.containers.remove(&c.id);
            Self::remember_deleted(&mut st, &c.id, "", d);
        }
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: c.id.clone(),
                pid: d.pid,
                exit_status: exit.status,
                exited_at: timestamp_field(Some(exit.at)),
                id: c.id.clone(),
                ..Default::default()
            },
        );
        Ok(d)
    }

    /// Ends every exec of `c` that is still around (Delete of the task).
    fn kill_execs(&self, c: &Container) {
        for p in lock(&c.execs).values() {
            let st = lock(&p.st);
            if st.started && st.exit.is_none() && st.pid > 0 {
                let _ = c.runtime.signal(st.pid, libc::SIGKILL);
            }
        }
    }

    /// Every pid of the task, with the exec id of those that are execs.
    pub fn pids(&self, id: &str) -> Result<Vec<(u32, Option<String>)>> {
        let c = self.container(id)?;
        let pids = c.runtime.ps(&c.id)?;
        let execs: HashMap<u32, String> = lock(&c.execs)
            .values()
            .map(|p| (p.pid(), p.exec_id.clone()))
            .filter(|(pid, _)| *pid > 0)
            .collect();
        Ok(pids
            .into_iter()
            .map(|pid| (pid, execs.get(&pid).cloned()))
            .collect())
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        c.runtime.pause(&c.id)?;
        c.paused.store(true, Ordering::SeqCst);
        self.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            TaskPaused {
                container_id: c.id.clone(),
                ..Default::default()
            },
        );
        Ok(())
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        c.runtime.resume(&c.id)?;
        c.paused.store(false, Ordering::SeqCst);
        self.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            TaskResumed {
                container_id: c.id.clone(),
                ..Default::default()
            },
        );
        Ok(())
    }

    /// Kill: the init through the runtime (`all`: every process), an exec directly.
    /// A process that already finished is NotFound, as containerd answers.
    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        let finished = |what: &str| Error::NotFound(format!("{what}: process already finished"));
        if exec_id.is_empty() {
            if p.exit().is_some() && !all {
                return Err(finished(&format!("task {id:?}")));
            }
            return match c.runtime.kill(&c.id, signal, all) {
                Ok(()) => Ok(()),
                Err(e) if e.is_not_running() => Err(finished(&format!("task {id:?}"))),
                Err(e) => Err(e.into()),
            };
        }
        let st = lock(&p.st);
        if !st.started || st.pid == 0 {
            return Err(Error::FailedPrecondition(format!(
                "exec {exec_id:?} is not started"
            )));
        }
        if st.exit.is_some() {
            return Err(finished(&format!("exec {exec_id:?}")));
        }
        let sig = i32::try_from(signal)
            .map_err(|_| Error::InvalidArgument(format!("invalid signal {signal}")))?;
        // An exec is signalled directly (runc kill only knows the init process).
        match c.runtime.signal(st.pid, sig) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_running() => Err(finished(&format!("exec {exec_id:?}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Registers an exec (started by a later Start).
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        stdio: StdioConfig,
        spec: Option<Vec<u8>>,
    ) -> Result<()> {
        let c = self.container(id)?;
        validate_id("exec", exec_id)?;
        let spec =
            spec.ok_or_else(|| Error::InvalidArgument("exec without a process spec".into()))?;
        serde_json::from_slice::<serde_json::Value>(&spec)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| {
                Error::InvalidArgument("exec process spec is not a JSON object".into())
            })?;
        if c.init.exit().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "task {id:?} is not running"
            )));
        }
        {
            let mut execs = lock(&c.execs);
            if execs.contains_key(exec_id) {
                return Err(Error::AlreadyExists(format!(
                    "exec {exec_id:?} already exists"
                )));
            }
            execs.insert(
                exec_id.to_string(),
                Arc::new(Process::new(&c.id, exec_id, stdio, Some(spec))),
            );
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: c.id.clone(),
                exec_id: exec_id.to_string(),
                ..Default::default()
            },
        );
        Ok(())
    }

    pub fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        if let Some(io) = p.io() {
            io.resize(width, height)
                .map_err(|e| Error::Internal(format!("resize pty: {e}")))?;
        }
        Ok(())
    }

    pub fn close_io(&self, id: &str, exec_id: &str, stdin: bool) -> Result<()> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        if stdin {
            if let Some(io) = p.io() {
                io.close_stdin();
            }
        }
        Ok(())
    }

    /// Update: applies `resources` (OCI LinuxResources JSON, if any) and reopens the
    /// CRI log files if `reopen_log`.
    pub fn update(&self, id: &str, resources: &[u8], reopen_log: bool) -> Result<()> {
        let c = self.container(id)?;
        if !resources.is_empty() {
            if c.init.exit().is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "task {id:?} is not running"
                )));
            }
            let n = self.launcher.next_seq();
            let f = c.bundle.join(format!(".update-{n}.json"));
            write_atomic(&f, resources)
                .map_err(|e| Error::Internal(format!("write resources: {e}")))?;
            let res = c.runtime.update(&c.id, &f);
            let _ = fs::remove_file(&f);
            res?;
        }
        if reopen_log {
            reopen_logs(&c).map_err(|e| Error::Internal(format!("reopen log: {e}")))?;
        }
        Ok(())
    }

    /// Wait: the process's exit once it is handled (None: it never ran), or
    /// DeadlineExceeded at `deadline`, or Cancelled when `cancel` (the Wait's
    /// connection) is disconnected.
    pub fn wait(
        &self,
        id: &str,
        exec_id: &str,
        deadline: Option<Instant>,
        cancel: &crossbeam_channel::Receiver<()>,
    ) -> Result<Option<Exit>> {
        let found = self.container(id).and_then(|c| c.process(exec_id));
        let p = match found {
            Ok(p) => p,
            Err(e) => return self.deleted(id, exec_id).map(|d| d.exit).ok_or(e),
        };
        self.wait_for(&p, deadline, cancel)
    }

    /// Wait's blocking part: until `p`'s exit is handled (its exit, if any), `deadline`
    /// (DEADLINE_EXCEEDED) or the end of the Wait's connection (an error nobody reads).
    /// An exec still running at the deadline, or whose Start connection goes away
    /// meanwhile, is SIGKILLed and reaped first: its caller is gone.
    fn wait_for(
        &self,
        p: &Process,
        deadline: Option<Instant>,
        cancel: &crossbeam_channel::Receiver<()>,
    ) -> Result<Option<Exit>> {
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
                    return Err(Error::DeadlineExceeded(format!(
                        "wait for {:?}: deadline exceeded",
                        p.event_id()
                    )));
                }
                recv(cancel) -> _ => {
                    if exec && caller_rx.try_recv() == Err(crossbeam_channel::TryRecvError::Disconnected) {
                        self.abandon_exec(p, "the connection that started it closed");
                    }
                    return Err(Error::Cancelled("the connection closed".into()));
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
        if self.launcher.reaper.kill_watched(pid, true) {
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

    /// Stats of the task's cgroup.
    pub fn stats(&self, id: &str) -> Result<Any> {
        let c = self.container(id)?;
        let pid = (c.init.exit().is_none()).then(|| c.init.pid());
        let dirs = stats::locate(
            Path::new(stats::CGROUP_ROOT),
            pid,
            c.cfg.cgroups_path.as_deref(),
        )
        .ok_or_else(|| Error::NotFound(format!("cgroup of task {id:?} does not exist")))?;
        Ok(stats::collect(&dirs))
    }

    /// The init pid of a task (0: no such task).
    pub fn task_pid(&self, id: &str) -> u32 {
        self.container(id).map(|c| c.init.pid()).unwrap_or(0)
    }

    /// Shutdown: true (and no Create is accepted from then on) when no task is left;
    /// the shim should exit then.
    pub fn shutdown(&self) -> bool {
        let mut st = lock(&self.state);
        if !st.containers.is_empty() || !st.creating.is_empty() {
            return false;
        }
        st.shutting_down = true;
        true
    }

    pub fn state(&self, id: &str, exec_id: &str) -> Result<ProcessState> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        let paused = exec_id.is_empty() && c.paused.load(Ordering::SeqCst);
        let status = p.status(paused);
        let (pid, exit) = {
            let st = lock(&p.st);
            (st.pid, st.exit)
        };
        Ok(ProcessState {
            id: p.event_id(),
            bundle: c.bundle.display().to_string(),
            pid,
            status,
            stdio: p.stdio.clone(),
            exit,
        })
    }
}

#[cfg(test)]
mod tests;
