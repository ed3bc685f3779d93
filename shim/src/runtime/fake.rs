//! An in-memory OCI runtime for the state machine's unit tests: no root, no runc.
//!
//! It keeps runc's container states (created, running, paused, stopped) and answers
//! a verb the state does not allow with runc 1.1's own message, classified as runc's
//! would be. Its processes are pids above the kernel's PID_MAX_LIMIT (2^22), which
//! never exist, so a stray real `kill` cannot hit anything; their exits reach the
//! shim through the reaper ([`Reaper::deliver`]), as real ones do.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::{CreateOpts, ExecOpts, OciRuntime, ProcStdio, Result, RuntimeError};
use crate::reaper::{Exit, Reaper};

const FIRST_PID: u32 = 5_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

struct FakeContainer {
    pid: u32,
    status: FakeStatus,
    /// Exec pids still running.
    execs: Vec<u32>,
}

#[derive(Default)]
struct Inner {
    containers: HashMap<String, FakeContainer>,
    /// `verb` -> message: the next call of that verb fails so.
    failures: HashMap<&'static str, VecDeque<String>>,
    /// Every call, as `verb id [args]`.
    calls: Vec<String>,
}

pub struct FakeRuntime {
    reaper: Arc<Reaper>,
    inner: Mutex<Inner>,
    next_pid: AtomicU32,
}

fn err(verb: &str, msg: &str) -> RuntimeError {
    RuntimeError::classify(&format!("fake {verb}"), msg, 1)
}

fn exit(pid: u32, status: u32) -> Exit {
    Exit {
        pid: pid as i32,
        status,
        at: SystemTime::now(),
    }
}

impl FakeRuntime {
    pub fn new(reaper: Arc<Reaper>) -> Arc<Self> {
        Arc::new(FakeRuntime {
            reaper,
            inner: Mutex::new(Inner::default()),
            next_pid: AtomicU32::new(FIRST_PID),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next call of `verb` fails with the runtime message `msg`.
    pub fn fail_next(&self, verb: &'static str, msg: &str) {
        self.lock()
            .failures
            .entry(verb)
            .or_default()
            .push_back(msg.to_string());
    }

    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    pub fn status(&self, id: &str) -> Option<FakeStatus> {
        self.lock().containers.get(id).map(|c| c.status)
    }

    /// The container's init exits by itself with `status`.
    pub fn init_exits(&self, id: &str, status: u32) {
        let pid = {
            let mut g = self.lock();
            let Some(c) = g.containers.get_mut(id) else {
                return;
            };
            c.status = FakeStatus::Stopped;
            c.pid
        };
        self.reaper.deliver(exit(pid, status));
    }

    /// An exec exits by itself with `status`.
    pub fn exec_exits(&self, pid: u32, status: u32) {
        for c in self.lock().containers.values_mut() {
            c.execs.retain(|p| *p != pid);
        }
        self.reaper.deliver(exit(pid, status));
    }

    /// Exits caused by a signal arrive later, from another thread, as SIGCHLD's do
    /// (a caller may hold the process's lock while it signals).
    fn deliver_later(&self, pids: Vec<u32>, status: u32) {
        let reaper = self.reaper.clone();
        std::thread::spawn(move || {
            for pid in pids {
                reaper.deliver(exit(pid, status));
            }
        });
    }

    /// Records the call; the failure queued for `verb`, if any.
    fn enter(&self, verb: &'static str, what: String) -> Result<MutexGuard<'_, Inner>> {
        let mut g = self.lock();
        g.calls.push(what);
        match g.failures.get_mut(verb).and_then(VecDeque::pop_front) {
            Some(msg) => Err(err(verb, &msg)),
            None => Ok(g),
        }
    }

    fn new_pid(&self, pid_file: &Path) -> Result<u32> {
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        std::fs::write(pid_file, pid.to_string())
            .map_err(|e| err("pid-file", &format!("write pid file: {e}")))?;
        Ok(pid)
    }
}

fn get<'a>(g: &'a mut Inner, verb: &str, id: &str) -> Result<&'a mut FakeContainer> {
    g.containers
        .get_mut(id)
        .ok_or_else(|| err(verb, "container does not exist"))
}

impl OciRuntime for FakeRuntime {
    fn create(&self, id: &str, o: &CreateOpts, _stdio: ProcStdio) -> Result<()> {
        let mut g = self.enter("create", format!("create {id}"))?;
        if g.containers.contains_key(id) {
            return Err(err(
                "create",
                "runc create failed: container with given ID already exists",
            ));
        }
        let pid = self.new_pid(o.pid_file)?;
        g.containers.insert(
            id.to_string(),
            FakeContainer {
                pid,
                status: FakeStatus::Created,
                execs: Vec::new(),
            },
        );
        Ok(())
    }

    fn start(&self, id: &str) -> Result<()> {
        let mut g = self.enter("start", format!("start {id}"))?;
        let c = get(&mut g, "start", id)?;
        match c.status {
            FakeStatus::Created => {
                c.status = FakeStatus::Running;
                Ok(())
            }
            FakeStatus::Running => Err(err("start", "cannot start an already running container")),
            FakeStatus::Paused => Err(err("start", "cannot start a container in the paused state")),
            FakeStatus::Stopped => Err(err("start", "cannot start a container that has stopped")),
        }
    }

    /// Every signal ends the process here (the tests send SIGKILL or SIGTERM).
    fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let mut g = self.enter("kill", format!("kill {id} {signal} all={all}"))?;
        let c = get(&mut g, "kill", id)?;
        if c.status == FakeStatus::Stopped {
            // `runc kill --all` of a stopped container succeeds.
            return if all {
                Ok(())
            } else {
                Err(err("kill", "container not running"))
            };
        }
        c.status = FakeStatus::Stopped;
        let mut ended = vec![c.pid];
        if all {
            ended.append(&mut c.execs);
        }
        drop(g);
        self.deliver_later(ended, 128 + signal);
        Ok(())
    }

    fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut g = self.enter("delete", format!("delete {id} force={force}"))?;
        let c = get(&mut g, "delete", id)?;
        let ended = match (c.status, force) {
            (FakeStatus::Stopped, _) => vec![],
            (FakeStatus::Created, _) | (_, true) => {
                let mut v = vec![c.pid];
                v.append(&mut c.execs);
                v
            }
            (FakeStatus::Running, false) => {
                return Err(err(
                    "delete",
                    &format!("cannot delete container {id} that is not stopped: running"),
                ))
            }
            (FakeStatus::Paused, false) => {
                return Err(err(
                    "delete",
                    &format!("cannot delete container {id} that is not stopped: paused"),
                ))
            }
        };
        g.containers.remove(id);
        drop(g);
        self.deliver_later(ended, 128 + libc::SIGKILL as u32);
        Ok(())
    }

    fn exec(&self, id: &str, o: &ExecOpts, _stdio: ProcStdio) -> Result<()> {
        let mut g = self.enter("exec", format!("exec {id}"))?;
        let c = get(&mut g, "exec", id)?;
        match c.status {
            FakeStatus::Stopped => Err(err(
                "exec",
                "exec failed: cannot exec in a stopped container",
            )),
            FakeStatus::Paused => Err(err(
                "exec",
                "exec failed: cannot exec in a paused container (use --ignore-paused to override)",
            )),
            FakeStatus::Created | FakeStatus::Running => {
                let pid = self.new_pid(o.pid_file)?;
                c.execs.push(pid);
                Ok(())
            }
        }
    }

    fn update(&self, id: &str, resources_file: &Path) -> Result<()> {
        let data = std::fs::read_to_string(resources_file).unwrap_or_default();
        let mut g = self.enter("update", format!("update {id} {data}"))?;
        match get(&mut g, "update", id)?.status {
            FakeStatus::Stopped => Err(err("update", "container not running")),
            _ => Ok(()),
        }
    }

    fn pause(&self, id: &str) -> Result<()> {
        let mut g = self.enter("pause", format!("pause {id}"))?;
        let c = get(&mut g, "pause", id)?;
        match c.status {
            FakeStatus::Created | FakeStatus::Running => {
                c.status = FakeStatus::Paused;
                Ok(())
            }
            _ => Err(err("pause", "container not running")),
        }
    }

    fn resume(&self, id: &str) -> Result<()> {
        let mut g = self.enter("resume", format!("resume {id}"))?;
        let c = get(&mut g, "resume", id)?;
        match c.status {
            FakeStatus::Paused => {
                c.status = FakeStatus::Running;
                Ok(())
            }
            _ => Err(err("resume", "container not paused")),
        }
    }

    fn ps(&self, id: &str) -> Result<Vec<u32>> {
        let mut g = self.enter("ps", format!("ps {id}"))?;
        let c = get(&mut g, "ps", id)?;
        if c.status == FakeStatus::Stopped {
            return Ok(vec![]);
        }
        let mut v = vec![c.pid];
        v.extend(&c.execs);
        Ok(v)
    }

    /// Ends a running exec of the fake with 128 + `signal`.
    fn signal(&self, pid: u32, signal: i32) -> Result<()> {
        let found = {
            let mut g = self.enter("signal", format!("signal {pid} {signal}"))?;
            let mut found = false;
            for c in g.containers.values_mut() {
                let before = c.execs.len();
                c.execs.retain(|p| *p != pid);
                found |= c.execs.len() != before;
            }
            found
        };
        if !found {
            return Err(err("signal", "os: process already finished"));
        }
        self.deliver_later(vec![pid], 128 + signal as u32);
        Ok(())
    }
}
