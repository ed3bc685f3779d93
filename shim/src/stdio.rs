//! A process's stdio: what the CreateTaskRequest / ExecProcessRequest names, and the
//! threads that copy between the container and those destinations.
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

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::crilog::{CriLog, LineSplitter, Stream, MAX_LINE};
use crate::runc::ProcStdio;

const COPY_BUF: usize = 32 * 1024;
const THREAD_STACK: usize = 128 * 1024;
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

/// A level-triggered "stop" latch that poll(2) can wait on.
struct WakePipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl WakePipe {
    fn new() -> io::Result<Self> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(WakePipe { r, w })
    }

    fn fire(&self) {
        let _ = nix::unistd::write(&self.w, b"x");
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.r.as_fd()
    }
}

/// Counts the output copiers still running.
#[derive(Default)]
struct Drain {
    n: Mutex<usize>,
    cv: Condvar,
}

impl Drain {
    fn add(&self) {
        *self.n.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    fn done(&self) {
        let mut n = self.n.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        self.cv.notify_all();
    }

    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut n = self.n.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = match self.cv.wait_timeout(n, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }
}

enum SinkKind {
    Null,
    /// A FIFO (non-blocking fd; writes wait in poll so that a stop can interrupt them).
    Fifo(OwnedFd),
    File(File),
    Cri(Arc<CriLog>, Stream, LineSplitter),
}

struct Sink {
    kind: SinkKind,
    what: String,
    failed: bool,
}

impl Sink {
    fn open(dest: &Dest, stream: Stream, logs: &mut Vec<Arc<CriLog>>) -> io::Result<Sink> {
        let ctx =
            |e: io::Error, p: &Path| io::Error::new(e.kind(), format!("open {}: {e}", p.display()));
        let (kind, what) = match dest {
            Dest::Null => (SinkKind::Null, String::new()),
            Dest::Fifo(p) => {
                let meta = fs::metadata(p).map_err(|e| ctx(e, p))?;
                if meta.file_type().is_fifo() {
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                        .open(p)
                        .map_err(|e| ctx(e, p))?;
                    (SinkKind::Fifo(f.into()), p.display().to_string())
                } else {
                    (
                        SinkKind::File(append_file(p).map_err(|e| ctx(e, p))?),
                        p.display().to_string(),
                    )
                }
            }
            Dest::File(p) => {
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).map_err(|e| ctx(e, parent))?;
                }
                (
                    SinkKind::File(append_file(p).map_err(|e| ctx(e, p))?),
                    p.display().to_string(),
                )
            }
            Dest::CriLog(p) => {
                let log = match logs.iter().find(|l| l.path() == p) {
                    Some(l) => l.clone(),
                    None => {
                        let l = Arc::new(CriLog::open(p).map_err(|e| ctx(e, p))?);
                        logs.push(l.clone());
                        l
                    }
                };
                (
                    SinkKind::Cri(log, stream, LineSplitter::new(MAX_LINE)),
                    p.display().to_string(),
                )
            }
        };
        Ok(Sink {
            kind,
            what,
            failed: false,
        })
    }

    fn fail(&mut self, e: impl std::fmt::Display) {
        if !self.failed {
            log::warn!("writing container output to {}: {e}", self.what);
            self.failed = true;
        }
    }

    /// Writes `data`; false when `stop` fired while waiting for a slow reader.
    fn write(&mut self, data: &[u8], stop: &WakePipe) -> bool {
        let res = match &mut self.kind {
            SinkKind::Null => Ok(true),
            SinkKind::Fifo(fd) => write_all_fd(fd.as_fd(), data, stop),
            SinkKind::File(f) => f.write_all(data).map(|_| true),
            SinkKind::Cri(log, stream, split) => {
                let mut err = None;
                split.feed(data, &mut |tag, line| {
                    if let Err(e) = log.write_record(*stream, tag, line, SystemTime::now()) {
                        err = Some(e);
                    }
                });
                match err {
                    Some(e) => Err(e),
                    None => Ok(true),
                }
            }
        };
        match res {
            Ok(cont) => cont,
            Err(e) => {
                // Keep draining the container's output: a broken destination must not
                // block the container.
                self.fail(e);
                true
            }
        }
    }

    fn finish(&mut self) {
        if let SinkKind::Cri(log, stream, split) = &mut self.kind {
            let mut err = None;
            split.finish(&mut |tag, line| {
                if let Err(e) = log.write_record(*stream, tag, line, SystemTime::now()) {
                    err = Some(e);
                }
            });
            if let Some(e) = err {
                self.fail(e);
            }
        }
    }
}

fn append_file(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fl = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Waits until `fd` has `events` or `stop` fired. Ok(false) when stopped.
fn wait_fd(fd: BorrowedFd<'_>, events: PollFlags, stop: &WakePipe) -> io::Result<bool> {
    loop {
        let mut fds = [
            PollFd::new(fd, events),
            PollFd::new(stop.fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return Ok(false);
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            return Ok(true);
        }
    }
}

/// Writes all of `data` to a non-blocking fd. Ok(false) when `stop` fired first.
fn write_all_fd(fd: BorrowedFd<'_>, mut data: &[u8], stop: &WakePipe) -> io::Result<bool> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                if !wait_fd(fd, PollFlags::POLLOUT, stop)? {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn copy_out(src: OwnedFd, mut sink: Sink, stop: Arc<WakePipe>) {
    let mut buf = vec![0u8; COPY_BUF];
    while let Ok(true) = wait_fd(src.as_fd(), PollFlags::POLLIN, &stop) {
        match nix::unistd::read(&src, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !sink.write(&buf[..n], &stop) {
                    break;
                }
            }
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
            // EIO: the pty's other side is closed (the process exited).
            Err(_) => break,
        }
    }
    sink.finish();
}

fn copy_in(path: PathBuf, dst: OwnedFd, stop: Arc<WakePipe>) {
    // Non-blocking open never waits for a writer; poll then waits for data or EOF
    // (Linux reports POLLHUP only after a writer has come and gone).
    let src = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            log::warn!("open stdin {}: {e}", path.display());
            return;
        }
    };
    let mut buf = vec![0u8; COPY_BUF];
    while let Ok(true) = wait_fd(src.as_fd(), PollFlags::POLLIN, &stop) {
        match nix::unistd::read(&src, &mut buf) {
            Ok(0) => break,
            Ok(n) => match write_all_fd(dst.as_fd(), &buf[..n], &stop) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    log::debug!("stdin copy to container stopped: {e}");
                    break;
                }
            },
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
            Err(_) => break,
        }
    }
    // Dropping `dst` closes the container's stdin pipe: it reads EOF.
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(THREAD_STACK)
        .spawn(f)
        .map(|_| ())
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
        let io = ProcessIo {
            drain: Arc::new(Drain::default()),
            stop_out: Arc::new(WakePipe::new()?),
            stop_in: Arc::new(WakePipe::new()?),
            master: None,
            logs: std::mem::take(&mut self.logs),
        };
        let mut io = io;
        if let Some((listener, path)) = self.console.take() {
            let res = recv_master(&listener, CONSOLE_TIMEOUT);
            let _ = fs::remove_file(&path);
            let master = res?;
            set_nonblocking(master.as_fd())?;
            if let Some(sink) = self.term_out.take() {
                let src = nix::unistd::dup(&master)?;
                io.spawn_out(src, sink)?;
            }
            if let Some(path) = self.term_in.take() {
                let dst = nix::unistd::dup(&master)?;
                let stop = io.stop_in.clone();
                spawn_thread("stdin", move || copy_in(path, dst, stop))?;
            }
            io.master = Some(master);
            return Ok(io);
        }
        for (src, sink) in std::mem::take(&mut self.outs) {
            io.spawn_out(src, sink)?;
        }
        if let Some((path, dst)) = self.input.take() {
            let stop = io.stop_in.clone();
            spawn_thread("stdin", move || copy_in(path, dst, stop))?;
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
    stop_out: Arc<WakePipe>,
    stop_in: Arc<WakePipe>,
    master: Option<OwnedFd>,
    logs: Vec<Arc<CriLog>>,
}

impl ProcessIo {
    fn spawn_out(&mut self, src: OwnedFd, sink: Sink) -> io::Result<()> {
        let drain = self.drain.clone();
        let stop = self.stop_out.clone();
        drain.add();
        let d2 = drain.clone();
        spawn_thread("stdout", move || {
            copy_out(src, sink, stop);
            d2.done();
        })
        .inspect_err(|_| drain.done())
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
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn uris() {
        assert_eq!(parse_dest("").unwrap(), Dest::Null);
        assert_eq!(
            parse_dest("/run/x/c-stdout").unwrap(),
            Dest::Fifo("/run/x/c-stdout".into())
        );
        assert_eq!(
            parse_dest("file:///var/log/a.log").unwrap(),
            Dest::File("/var/log/a.log".into())
        );
        assert_eq!(
            parse_dest("cri-log:///var/log/pods/ns_p_uid/c/0.log").unwrap(),
            Dest::CriLog("/var/log/pods/ns_p_uid/c/0.log".into())
        );
        assert!(parse_dest("binary:///usr/bin/logger").is_err());
        assert!(parse_dest("relative/path").is_err());
        assert!(parse_dest("cri-log:///var/log/../../etc/x").is_err());
        assert!(parse_stdin("file:///x").is_err());
        assert_eq!(parse_stdin("").unwrap(), None);
    }

    fn fifo(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p
    }

    /// Writes through the container's ends by hand (no runc) and checks what arrives.
    #[test]
    fn cri_log_and_fifo_copy() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("0.log");
        let cfg = StdioConfig {
            stdin: fifo(d.path(), "in").display().to_string(),
            stdout: format!("cri-log://{}", log.display()),
            stderr: format!("cri-log://{}", log.display()),
            terminal: false,
        };
        let mut p = PreparedIo::prepare(&cfg, (0, 0), d.path()).unwrap();
        let fds = (
            p.child_stdin.take().unwrap(),
            p.child_stdout.take().unwrap(),
            p.child_stderr.take().unwrap(),
        );
        let io = p.start().unwrap();
        assert!(io.has_cri_logs());
        let (cin, cout, cerr) = fds;
        let mut out = File::from(cout);
        let mut err = File::from(cerr);
        out.write_all(b"hello\nwor").unwrap();
        err.write_all(b"oops\n").unwrap();
        out.write_all(b"ld\nno newline").unwrap();
        drop(out);
        drop(err);
        assert!(io.wait_drained(Duration::from_secs(5)));
        let text = fs::read_to_string(&log).unwrap();
        let recs: Vec<(&str, &str, &str)> = text
            .lines()
            .map(|l| {
                let mut f = l.splitn(4, ' ');
                let _ts = f.next().unwrap();
                (f.next().unwrap(), f.next().unwrap(), f.next().unwrap_or(""))
            })
            .collect();
        assert!(recs.contains(&("stdout", "F", "hello")), "{text}");
        assert!(recs.contains(&("stdout", "F", "world")), "{text}");
        assert!(recs.contains(&("stderr", "F", "oops")), "{text}");
        // stdout and stderr are copied by separate threads: no order between them.
        assert!(recs.contains(&("stdout", "P", "no newline")), "{text}");
        assert_eq!(recs.len(), 4, "{text}");

        // stdin: a client writes to the FIFO; CloseIO makes the container see EOF.
        let mut w = OpenOptions::new()
            .write(true)
            .open(d.path().join("in"))
            .unwrap();
        w.write_all(b"input").unwrap();
        let mut cin = File::from(cin);
        let mut got = [0u8; 5];
        cin.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"input");
        io.close_stdin();
        let mut rest = Vec::new();
        cin.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        drop(w);
    }

    #[test]
    fn fifo_output_and_eof() {
        let d = tempfile::tempdir().unwrap();
        let out_fifo = fifo(d.path(), "out");
        let cfg = StdioConfig {
            stdout: out_fifo.display().to_string(),
            ..Default::default()
        };
        // The client opens its read side before the task is created (like ctr); it
        // must not block on open nor see EOF before the shim opened its side.
        let client = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&out_fifo)
            .unwrap();
        let mut p = PreparedIo::prepare(&cfg, (0, 0), d.path()).unwrap();
        let fl = OFlag::from_bits_truncate(fcntl(&client, FcntlArg::F_GETFL).unwrap());
        fcntl(&client, FcntlArg::F_SETFL(fl - OFlag::O_NONBLOCK)).unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let mut client = client;
            client.read_to_string(&mut s).unwrap();
            s
        });
        assert!(p.child_stdin.is_none() && p.child_stderr.is_none());
        let cout = p.child_stdout.take().unwrap();
        let io = p.start().unwrap();
        File::from(cout).write_all(b"hello\n").unwrap();
        assert!(io.wait_drained(Duration::from_secs(5)));
        // The shim's copier closed its FIFO fd: the client read EOF.
        assert_eq!(reader.join().unwrap(), "hello\n");
        drop(io);
    }

    #[test]
    fn file_uri_creates_dirs_and_appends() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a/b/out.log");
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, b"old\n").unwrap();
        let cfg = StdioConfig {
            stdout: format!("file://{}", f.display()),
            stderr: format!("file://{}", d.path().join("c/err.log").display()),
            ..Default::default()
        };
        let mut p = PreparedIo::prepare(&cfg, (0, 0), d.path()).unwrap();
        let (o, e) = (
            p.child_stdout.take().unwrap(),
            p.child_stderr.take().unwrap(),
        );
        let io = p.start().unwrap();
        File::from(o).write_all(b"new").unwrap();
        File::from(e).write_all(b"err").unwrap();
        assert!(io.wait_drained(Duration::from_secs(5)));
        assert_eq!(fs::read_to_string(&f).unwrap(), "old\nnew");
        assert_eq!(
            fs::read_to_string(d.path().join("c/err.log")).unwrap(),
            "err"
        );
    }

    #[test]
    fn missing_fifo_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let cfg = StdioConfig {
            stdout: d.path().join("nope").display().to_string(),
            ..Default::default()
        };
        assert!(PreparedIo::prepare(&cfg, (0, 0), d.path()).is_err());
    }
}
