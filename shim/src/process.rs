//! One process of a task (the container's init or an exec): its pid, stdio and
//! state (created, started, exited, exit handled), and the waits on those changes.
//!
//! A process moves one way: created -> started -> exited -> handled (its output
//! drained, so Wait may answer). `announced` orders containerd's events: TaskExit
//! never goes before the TaskStart / TaskExecStarted of the same process.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use containerd_shim_protos::api::Status;

use crate::reaper::Exit;
use crate::stdio::{ProcessIo, StdioConfig};

/// Opened once, never closed: receivers see a disconnected channel from then on, so
/// a waiter can `select!` on it beside other channels.
pub struct Latch {
    tx: Mutex<Option<crossbeam_channel::Sender<()>>>,
    pub rx: crossbeam_channel::Receiver<()>,
}

impl Latch {
    pub fn new() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Latch {
            tx: Mutex::new(Some(tx)),
            rx,
        }
    }

    pub fn open(&self) {
        lock(&self.tx).take();
    }

    pub fn is_open(&self) -> bool {
        lock(&self.tx).is_none()
    }
}

#[derive(Default)]
pub struct ProcState {
    pub pid: u32,
    pub started: bool,
    pub exit: Option<Exit>,
    /// The exit was processed (output drained): Wait may return.
    pub handled: bool,
    /// TaskStart / TaskExecStarted was published (or will never be): TaskExit may go.
    pub announced: bool,
}

pub struct Process {
    pub container_id: String,
    /// Empty for the container's init process.
    pub exec_id: String,
    pub stdio: StdioConfig,
    /// An exec's OCI process (JSON).
    pub spec: Option<Vec<u8>>,
    pub st: Mutex<ProcState>,
    pub cv: Condvar,
    pub io: Mutex<Option<Arc<ProcessIo>>>,
    /// Opened with `handled`.
    pub handled_latch: Latch,
    /// Opened once Start of an exec was tried (`caller` is set by then).
    pub start_latch: Latch,
    /// An exec's Start connection (`TtrpcContext::cancel_rx`: disconnected once the
    /// connection is gone).
    pub caller: Mutex<Option<crossbeam_channel::Receiver<()>>>,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Process {
    pub fn new(
        container_id: &str,
        exec_id: &str,
        stdio: StdioConfig,
        spec: Option<Vec<u8>>,
    ) -> Self {
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
    pub fn event_id(&self) -> String {
        if self.exec_id.is_empty() {
            self.container_id.clone()
        } else {
            self.exec_id.clone()
        }
    }

    pub fn pid(&self) -> u32 {
        lock(&self.st).pid
    }

    pub fn exit(&self) -> Option<Exit> {
        lock(&self.st).exit
    }

    pub fn started(&self) -> bool {
        lock(&self.st).started
    }

    pub fn io(&self) -> Option<Arc<ProcessIo>> {
        lock(&self.io).clone()
    }

    pub fn status(&self, paused: bool) -> Status {
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

    pub fn set_exited(&self, exit: Exit) {
        let mut st = lock(&self.st);
        if st.exit.is_none() {
            st.exit = Some(exit);
        }
        self.cv.notify_all();
    }

    pub fn set_handled(&self) {
        lock(&self.st).handled = true;
        self.cv.notify_all();
        self.handled_latch.open();
    }

    /// Blocks until the exit is recorded (or `timeout`).
    pub fn wait_exited(&self, timeout: Duration) -> Option<Exit> {
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

    pub fn set_announced(&self) {
        lock(&self.st).announced = true;
        self.cv.notify_all();
    }

    /// Containerd wants TaskStart/TaskExecStarted before TaskExit: an exit that races
    /// its start waits (bounded) for the start event.
    pub fn wait_announced(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.st);
        while !st.announced {
            let left = deadline.saturating_duration_since(Instant::now());
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
    pub fn wait_handled(&self, timeout: Option<Duration>) -> Option<Exit> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut st = lock(&self.st);
        while !st.handled {
            st = match deadline {
                None => match self.cv.wait(st) {
                    Ok(g) => g,
                    Err(e) => e.into_inner(),
                },
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
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

/// Reads a pid file written by runc.
pub fn read_pid(path: &Path) -> std::io::Result<u32> {
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
