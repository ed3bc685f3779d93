//! Child reaping.
//!
//! The shim is a child subreaper: container processes (re-parented to it when runc
//! exits) and its own helper commands (runc, the publish binary) are all its children.
//! One reaper, driven by SIGCHLD, calls `waitpid(-1, WNOHANG)` until nothing is left and
//! hands every exit to whoever registered the pid:
//! - helper commands are started with [`Reaper::run`], which registers the pid under the
//!   reaper lock before the reaper can see it, then blocks for the status;
//! - container processes are registered with [`Reaper::watch`] once their pid is known
//!   (from runc's pid file). Such a process may already have exited by then (an exec
//!   of `true`): exits of unknown pids are kept for a while and handed over on
//!   registration.
//!
//! Nothing else in the shim may call `wait`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How long the exit of a pid nobody registered is kept.
const UNCLAIMED_TTL: Duration = Duration::from_secs(60);
const UNCLAIMED_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    /// Exit code, or 128 + signal number when killed by a signal (containerd's rule).
    pub status: u32,
    pub at: SystemTime,
}

pub type ExitHandler = Box<dyn FnOnce(Exit) + Send>;

#[derive(Default)]
struct Inner {
    commands: HashMap<i32, mpsc::Sender<Exit>>,
    watched: HashMap<i32, ExitHandler>,
    unclaimed: HashMap<i32, (Exit, Instant)>,
}

impl Inner {
    /// Hands an exit to whoever registered its pid (or keeps it until someone does).
    fn dispatch(&mut self, exit: Exit, ready: &mut Vec<(ExitHandler, Exit)>) {
        let pid = exit.pid;
        if let Some(tx) = self.commands.remove(&pid) {
            let _ = tx.send(exit);
        } else if let Some(h) = self.watched.remove(&pid) {
            ready.push((h, exit));
        } else {
            log::debug!("reaped unclaimed pid {pid} (status {})", exit.status);
            self.unclaimed.insert(pid, (exit, Instant::now()));
        }
    }
}

#[derive(Default)]
pub struct Reaper {
    inner: Mutex<Inner>,
}

/// Output of a helper command.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

impl Reaper {
    pub fn new() -> Arc<Self> {
        Arc::new(Reaper::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reaps every exited child. Called on SIGCHLD.
    pub fn reap(&self) {
        let mut ready: Vec<(ExitHandler, Exit)> = Vec::new();
        {
            let mut inner = self.lock();
            loop {
                let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code as u32),
                    Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), 128 + sig as u32),
                    Ok(WaitStatus::StillAlive) => break,
                    Ok(_) => continue,
                    Err(Errno::EINTR) => continue,
                    Err(_) => break, // ECHILD: no children left
                };
                let exit = Exit {
                    pid,
                    status,
                    at: SystemTime::now(),
                };
                inner.dispatch(exit, &mut ready);
            }
            let now = Instant::now();
            if inner.unclaimed.len() > UNCLAIMED_MAX / 2 {
                inner
                    .unclaimed
                    .retain(|_, (_, t)| now.duration_since(*t) < UNCLAIMED_TTL);
            }
            if inner.unclaimed.len() > UNCLAIMED_MAX {
                inner.unclaimed.clear();
            }
        }
        for (h, exit) in ready {
            h(exit);
        }
    }

    /// Hands over an exit as if `waitpid` had returned it: the unit tests' fake
    /// runtime ends its (never real) processes through this.
    #[cfg(test)]
    pub fn deliver(&self, exit: Exit) {
        let mut ready = Vec::new();
        self.lock().dispatch(exit, &mut ready);
        for (h, exit) in ready {
            h(exit);
        }
    }

    /// Calls `handler` once `pid` exits (at once if it already has).
    pub fn watch(&self, pid: i32, handler: ExitHandler) {
        let early = {
            let mut inner = self.lock();
            match inner.unclaimed.remove(&pid) {
                Some((exit, t)) if t.elapsed() < UNCLAIMED_TTL => Some((handler, exit)),
                _ => {
                    inner.watched.insert(pid, handler);
                    None
                }
            }
        };
        if let Some((h, exit)) = early {
            h(exit);
        }
    }

    /// SIGKILLs a watched pid that has not been reaped yet (so the pid cannot have been
    /// reused), and its process group too if `group` and it leads one. False: not
    /// watched (already reaped, or never registered).
    pub fn kill_watched(&self, pid: i32, group: bool) -> bool {
        use nix::sys::signal::{kill, killpg, Signal};
        let inner = self.lock();
        if !inner.watched.contains_key(&pid) {
            return false;
        }
        let p = Pid::from_raw(pid);
        if group && nix::unistd::getpgid(Some(p)) == Ok(p) {
            let _ = killpg(p, Signal::SIGKILL);
        }
        let _ = kill(p, Signal::SIGKILL);
        true
    }

    /// Forgets a registration (the handler is dropped without being called).
    pub fn unwatch(&self, pid: i32) {
        self.lock().watched.remove(&pid);
    }

    /// Runs a helper command to completion: stdout and stderr are captured unless the
    /// caller set them; `stdin` (if any) is written to a pipe. The caller's own stdio
    /// settings on `cmd` win for streams it configured.
    pub fn run(
        &self,
        cmd: &mut Command,
        stdin: Option<&[u8]>,
        capture: bool,
    ) -> io::Result<CmdOutput> {
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        if capture {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let (tx, rx) = mpsc::channel();
        let mut child = {
            let mut inner = self.lock();
            let child = cmd.spawn()?;
            inner.commands.insert(child.id() as i32, tx);
            child
        };
        let pid = child.id() as i32;
        if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
            // Helper inputs are small (an event); a closed pipe is the helper's problem.
            let _ = w.write_all(data);
        }
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let out_pipe = child.stdout.take();
        let err_pipe = child.stderr.take();
        std::thread::scope(|s| {
            let h = err_pipe.map(|mut e| {
                s.spawn(move || {
                    let mut b = Vec::new();
                    let _ = e.read_to_end(&mut b);
                    b
                })
            });
            if let Some(mut o) = out_pipe {
                let _ = o.read_to_end(&mut stdout);
            }
            if let Some(h) = h {
                stderr = h.join().unwrap_or_default();
            }
        });
        let exit = rx.recv().map_err(|_| {
            self.lock().commands.remove(&pid);
            io::Error::other(format!("lost the exit status of pid {pid}"))
        })?;
        Ok(CmdOutput {
            status: exit.status,
            stdout,
            stderr,
        })
    }
}

/// Makes the calling process a child subreaper (orphaned descendants are re-parented
/// to it instead of PID 1).
pub fn set_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    // These tests reap with waitpid(-1) and so must not run beside anything else in
    // this test binary that waits for its own children.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn pump(r: Arc<Reaper>, stop: Arc<std::sync::atomic::AtomicBool>) {
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            r.reap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    #[allow(clippy::zombie_processes)] // the Reaper under test waits for them
    fn commands_and_watched_pids() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let r = Reaper::new();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let t = {
            let (r, stop) = (r.clone(), stop.clone());
            std::thread::spawn(move || pump(r, stop))
        };

        let out = r
            .run(
                Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
                None,
                true,
            )
            .unwrap();
        assert_eq!(out.status, 3);
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");

        let out = r
            .run(&mut Command::new("cat"), Some(b"piped"), true)
            .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, b"piped");

        // A child that exits before it is watched is still reported.
        let child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        std::thread::sleep(Duration::from_millis(200));
        let (tx, rx) = mpsc::channel();
        r.watch(pid, Box::new(move |e| tx.send(e).unwrap()));
        let e = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((e.pid, e.status), (pid, 0));

        // Killed by a signal: 128 + signo.
        let child = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = child.id() as i32;
        let (tx, rx) = mpsc::channel();
        r.watch(pid, Box::new(move |e| tx.send(e).unwrap()));
        nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        let e = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(e.status, 137);

        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        t.join().unwrap();
    }
}
