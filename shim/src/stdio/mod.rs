//! A process's stdio: what the CreateTaskRequest / ExecProcessRequest names, and the
//! copying between the container and those destinations: one I/O thread polls the
//! (non-blocking) fds of every process's stdio.
//!
//! stdout / stderr URIs:
//! - `""`: discarded (`/dev/null`).
//! - a plain absolute path (or `fifo://PATH`): a FIFO created by the client (what
//!   `ctr` and containerd's `cio` pass). The shim opens it read-write, so it never
//!   blocks on open and never gets EPIPE when the client goes away; the client sees
//!   EOF once the container's side is closed. A regular file at that path is appended to.
//! - `file:///PATH`: raw output appended to a file (parent dirs created), like
//!   containerd-shim-runc-v2.
//! - `cri-log:///PATH`: the shim writes the CRI log format itself (see [`crate::crilog`]);
//!   stdout and stderr may (and for kubelet do) name the same file.
//!
//! stdin: `""` (none) or a FIFO path; it is copied into a pipe to the container until
//! the FIFO's writer closes it or CloseIO(stdin) is called; then the container reads EOF.
//!
//! With a terminal, runc's `--console-socket` hands the pty master to the shim, which
//! keeps it (ResizePty), copies its output to the stdout destination (as `stdout` in
//! CRI log mode) and stdin into it.

use std::fs::{self, OpenOptions};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::crilog::{CriLog, Stream};
use crate::runtime::ProcStdio;

mod io_loop;
mod sink;

use io_loop::{Drain, InJob, IoLoop, Job, OutJob, Stop};
use sink::Sink;

/// How long to wait for runc to hand over the pty master after create/exec returned.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a process's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Null,
    Fifo(PathBuf),
    File(PathBuf),
    CriLog(PathBuf),
}

pub fn parse_dest(uri: &str) -> Result<Dest, String> {
    if uri.is_empty() {
        return Ok(Dest::Null);
    }
    let abs = |p: &str| -> Result<PathBuf, String> {
        if p.starts_with('/') && !p.split('/').any(|c| c == "..") {
            Ok(PathBuf::from(p))
        } else {
            Err(format!("stdio path must be absolute: {uri:?}"))
        }
    };
    if let Some(p) = uri.strip_prefix("cri-log://") {
        return abs(p).map(Dest::CriLog);
    }
    if let Some(p) = uri.strip_prefix("file://") {
        return abs(p).map(Dest::File);
    }
    if let Some(p) = uri.strip_prefix("fifo://") {
        return abs(p).map(Dest::Fifo);
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        return Err(format!("unsupported stdio scheme {scheme:?} in {uri:?}"));
    }
    abs(uri).map(Dest::Fifo)
}

pub fn parse_stdin(uri: &str) -> Result<Option<PathBuf>, String> {
    match parse_dest(uri)? {
        Dest::Null => Ok(None),
        Dest::Fifo(p) => Ok(Some(p)),
        _ => Err(format!("unsupported stdin {uri:?}: only a FIFO path")),
    }
}

/// The stdio a client asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioConfig {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fl = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK))?;
    Ok(())
}

static CONSOLE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Stdio set up before runc runs: the container's ends and the shim's ends.
pub struct PreparedIo {
    child_stdin: Option<OwnedFd>,
    child_stdout: Option<OwnedFd>,
    child_stderr: Option<OwnedFd>,
    console: Option<(UnixListener, PathBuf)>,
    outs: Vec<(OwnedFd, Sink)>,
    input: Option<(PathBuf, OwnedFd)>,
    term_out: Option<Sink>,
    term_in: Option<PathBuf>,
    logs: Vec<Arc<CriLog>>,
}

impl PreparedIo {
    /// Opens the destinations and makes the pipes (or the console socket, in
    /// `console_dir`). `owner`: uid/gid given the container's ends, so that a non-root
    /// process can reopen /dev/stdout.
    pub fn prepare(cfg: &StdioConfig, owner: (u32, u32), console_dir: &Path) -> io::Result<Self> {
        let inv = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let stdin = parse_stdin(&cfg.stdin).map_err(inv)?;
        let stdout = parse_dest(&cfg.stdout).map_err(inv)?;
        let stderr = if cfg.terminal {
            Dest::Null
        } else {
            parse_dest(&cfg.stderr).map_err(inv)?
        };
        let mut p = PreparedIo {
            child_stdin: None,
            child_stdout: None,
            child_stderr: None,
            console: None,
            outs: Vec::new(),
            input: None,
            term_out: None,
            term_in: None,
            logs: Vec::new(),
        };
        if cfg.terminal {
            p.term_out = Some(Sink::open(&stdout, Stream::Stdout, &mut p.logs)?);
            p.term_in = stdin;
            fs::create_dir_all(console_dir)?;
            let path = console_dir.join(format!(
                "pty-{}-{}.sock",
                std::process::id(),
                CONSOLE_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_file(&path);
            let l = UnixListener::bind(&path).map_err(|e| {
                io::Error::new(e.kind(), format!("console socket {}: {e}", path.display()))
            })?;
            p.console = Some((l, path));
            return Ok(p);
        }
        let chown = |fd: &OwnedFd| {
            if owner != (0, 0) {
                let _ = nix::unistd::fchown(
                    fd,
                    Some(nix::unistd::Uid::from_raw(owner.0)),
                    Some(nix::unistd::Gid::from_raw(owner.1)),
                );
            }
        };
        if let Some(path) = stdin {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            set_nonblocking(w.as_fd())?;
            chown(&r);
            p.child_stdin = Some(r);
            p.input = Some((path, w));
        }
        for (dest, stream) in [(&stdout, Stream::Stdout), (&stderr, Stream::Stderr)] {
            if *dest == Dest::Null {
                continue;
            }
            let sink = Sink::open(dest, stream, &mut p.logs)?;
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            chown(&w);
            match stream {
                Stream::Stdout => p.child_stdout = Some(w),
                Stream::Stderr => p.child_stderr = Some(w),
            }
            p.outs.push((r, sink));
        }
        Ok(p)
    }

    pub fn console_socket(&self) -> Option<&Path> {
        self.console.as_ref().map(|(_, p)| p.as_path())
    }

    /// The container's stdio for runc; the shim's copies close when runc's Command is
    /// dropped.
    pub fn child_stdio(&mut self) -> ProcStdio {
        let f = |fd: Option<OwnedFd>| fd.map(Stdio::from).unwrap_or_else(Stdio::null);
        ProcStdio {
            stdin: f(self.child_stdin.take()),
            stdout: f(self.child_stdout.take()),
            stderr: f(self.child_stderr.take()),
        }
    }

    /// runc succeeded: receive the pty master (terminal) and start the copiers.
    pub fn start(mut self) -> io::Result<ProcessIo> {
        let mut io = ProcessIo {
            drain: Arc::new(Drain::default()),
            stop_out: Arc::new(Stop::default()),
            stop_in: Arc::new(Stop::default()),
            master: None,
            logs: std::mem::take(&mut self.logs),
        };
        let mut jobs = Vec::new();
        if let Some((listener, path)) = self.console.take() {
            let res = recv_master(&listener, CONSOLE_TIMEOUT);
            let _ = fs::remove_file(&path);
            let master = res?;
            set_nonblocking(master.as_fd())?;
            if let Some(sink) = self.term_out.take() {
                let src = nix::unistd::dup(&master)?;
                jobs.push(io.out_job(src, sink));
            }
            if let Some(path) = self.term_in.take() {
                let dst = nix::unistd::dup(&master)?;
                jobs.extend(io.in_job(&path, dst));
            }
            io.master = Some(master);
        } else {
            for (src, sink) in std::mem::take(&mut self.outs) {
                set_nonblocking(src.as_fd())?;
                jobs.push(io.out_job(src, sink));
            }
            if let Some((path, dst)) = self.input.take() {
                jobs.extend(io.in_job(&path, dst));
            }
        }
        let n_out = jobs.iter().filter(|j| matches!(j, Job::Out(_))).count();
        if let Err(e) = IoLoop::add(jobs) {
            for _ in 0..n_out {
                io.drain.done();
            }
            return Err(e);
        }
        Ok(io)
    }
}

impl Drop for PreparedIo {
    fn drop(&mut self) {
        if let Some((_, path)) = self.console.take() {
            let _ = fs::remove_file(path);
        }
    }
}

fn recv_master(listener: &UnixListener, timeout: Duration) -> io::Result<OwnedFd> {
    let pfd_ok = {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let t = PollTimeout::try_from(ms).unwrap_or(PollTimeout::NONE);
        poll(&mut fds, t)? > 0
    };
    if !pfd_ok {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the runtime did not send the console (pty master)",
        ));
    }
    let (conn, _) = listener.accept()?;
    conn.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 1024];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut got: Option<OwnedFd> = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in our table (SCM_RIGHTS);
                // nobody else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
    }
    got.ok_or_else(|| io::Error::other("console socket message carried no file descriptor"))
}

/// A running process's stdio.
pub struct ProcessIo {
    drain: Arc<Drain>,
    stop_out: Arc<Stop>,
    stop_in: Arc<Stop>,
    master: Option<OwnedFd>,
    logs: Vec<Arc<CriLog>>,
}

impl ProcessIo {
    fn out_job(&self, src: OwnedFd, sink: Sink) -> Job {
        self.drain.add();
        Job::Out(OutJob {
            src,
            sink,
            pending: Vec::new(),
            stop: self.stop_out.clone(),
            drain: self.drain.clone(),
        })
    }

    fn in_job(&self, path: &Path, dst: OwnedFd) -> Option<Job> {
        // Non-blocking open never waits for a writer; poll then waits for data or EOF.
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(src) => Some(Job::In(InJob {
                src,
                dst,
                pending: Vec::new(),
                stop: self.stop_in.clone(),
            })),
            Err(e) => {
                // Dropping `dst`: the container reads EOF.
                log::warn!("open stdin {}: {e}", path.display());
                None
            }
        }
    }
    /// Waits until the container's output has been copied (its side closed).
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        self.drain.wait(timeout)
    }

    /// CloseIO(stdin): the container reads EOF.
    pub fn close_stdin(&self) {
        self.stop_in.fire();
    }

    pub fn resize(&self, width: u32, height: u32) -> io::Result<()> {
        let Some(m) = &self.master else {
            return Ok(());
        };
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize` that outlives the call; the fd is ours.
        let r = unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reopens every CRI log file of this process.
    pub fn reopen_logs(&self) -> io::Result<()> {
        for l in &self.logs {
            l.reopen().map_err(|e| {
                io::Error::new(e.kind(), format!("reopen {}: {e}", l.path().display()))
            })?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn has_cri_logs(&self) -> bool {
        !self.logs.is_empty()
    }

    /// Waits up to `timeout` for the output to drain, then stops all copying.
    pub fn close(&self, timeout: Duration) {
        if !self.drain.wait(timeout) {
            log::debug!("output still open after {timeout:?}: closing it");
        }
        self.stop_out.fire();
        self.stop_in.fire();
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.stop_out.fire();
        self.stop_in.fire();
    }
}

#[cfg(test)]
mod tests;
