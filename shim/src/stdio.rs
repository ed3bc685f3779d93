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

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::crilog::{CriLog, LineSplitter, Stream, Tag, MAX_LINE};
use crate::runtime::ProcStdio;

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

/// A level-triggered wake-up that poll(2) can wait on.
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

    fn clear(&self) {
        let mut b = [0u8; 64];
        while let Ok(n) = nix::unistd::read(&self.r, &mut b) {
            if n == 0 {
                break;
            }
        }
    }
}

/// A "stop" latch for one process's output or input copying.
#[derive(Default)]
struct Stop(AtomicBool);

impl Stop {
    fn fire(&self) {
        if !self.0.swap(true, Ordering::SeqCst) {
            if let Some(l) = lock(&IO_LOOP).as_ref() {
                l.wake.fire();
            }
        }
    }

    fn fired(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

use berth_sysutil::lock;

/// Counts the output copy jobs still running.
#[derive(Default)]
struct Drain {
    n: Mutex<usize>,
    cv: Condvar,
}

impl Drain {
    fn add(&self) {
        *lock(&self.n) += 1;
    }

    fn done(&self) {
        let mut n = lock(&self.n);
        *n = n.saturating_sub(1);
        self.cv.notify_all();
    }

    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut n = lock(&self.n);
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

/// The one thread that copies every process's stdio: all fds are non-blocking and
/// polled together. Jobs are handed over through `new` (and `wake`).
struct IoLoop {
    wake: WakePipe,
    new: Mutex<Vec<Job>>,
}

static IO_LOOP: Mutex<Option<Arc<IoLoop>>> = Mutex::new(None);

impl IoLoop {
    /// Hands jobs to the I/O thread (started on first use).
    fn add(jobs: Vec<Job>) -> io::Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let l = {
            let mut g = lock(&IO_LOOP);
            match g.as_ref() {
                Some(l) => l.clone(),
                None => {
                    let l = Arc::new(IoLoop {
                        wake: WakePipe::new()?,
                        new: Mutex::new(Vec::new()),
                    });
                    let l2 = l.clone();
                    std::thread::Builder::new()
                        .name("io".into())
                        .stack_size(THREAD_STACK)
                        .spawn(move || l2.run())?;
                    *g = Some(l.clone());
                    l
                }
            }
        };
        lock(&l.new).extend(jobs);
        l.wake.fire();
        Ok(())
    }

    fn run(&self) {
        let mut jobs: Vec<Job> = Vec::new();
        let mut buf = vec![0u8; COPY_BUF];
        loop {
            jobs.append(&mut lock(&self.new));
            jobs.retain_mut(|j| {
                if j.stop().fired() {
                    j.close();
                    false
                } else {
                    true
                }
            });
            let revents: Vec<PollFlags> = {
                let mut fds = Vec::with_capacity(jobs.len() + 1);
                fds.push(PollFd::new(self.wake.fd(), PollFlags::POLLIN));
                for j in &jobs {
                    let (fd, ev) = j.interest();
                    fds.push(PollFd::new(fd, ev));
                }
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        log::error!("stdio poll: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
                fds.iter()
                    .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                    .collect()
            };
            if !revents[0].is_empty() {
                self.wake.clear();
            }
            let mut i = 0;
            jobs.retain_mut(|j| {
                i += 1;
                if revents[i].is_empty() || j.ready(&mut buf) {
                    return true;
                }
                j.close();
                false
            });
        }
    }
}

/// Copies a process's output (pipe or pty master) to its destination.
struct OutJob {
    src: OwnedFd,
    sink: Sink,
    /// Output a FIFO destination could not take yet: the source is not read until
    /// it is written (the container blocks, as with a slow reader of a pipe).
    pending: Vec<u8>,
    stop: Arc<Stop>,
    drain: Arc<Drain>,
}

/// Copies a stdin FIFO into the process's stdin pipe (or pty master). Dropping it
/// closes the container's stdin: it reads EOF.
struct InJob {
    src: File,
    dst: OwnedFd,
    pending: Vec<u8>,
    stop: Arc<Stop>,
}

enum Job {
    Out(OutJob),
    In(InJob),
}

impl Job {
    fn stop(&self) -> &Stop {
        match self {
            Job::Out(o) => &o.stop,
            Job::In(i) => &i.stop,
        }
    }

    fn interest(&self) -> (BorrowedFd<'_>, PollFlags) {
        match self {
            Job::Out(o) => match o.sink.fifo_fd() {
                Some(fd) if !o.pending.is_empty() => (fd, PollFlags::POLLOUT),
                _ => (o.src.as_fd(), PollFlags::POLLIN),
            },
            Job::In(i) if !i.pending.is_empty() => (i.dst.as_fd(), PollFlags::POLLOUT),
            Job::In(i) => (i.src.as_fd(), PollFlags::POLLIN),
        }
    }

    /// The polled fd has events. False when the job is over.
    fn ready(&mut self, buf: &mut [u8]) -> bool {
        match self {
            Job::Out(o) => {
                if !o.pending.is_empty() {
                    o.sink.flush(&mut o.pending);
                    return true;
                }
                // A few reads per turn: a busy stream must not starve the others.
                for _ in 0..4 {
                    match nix::unistd::read(&o.src, buf) {
                        Ok(0) => return false,
                        Ok(n) => {
                            o.sink.write(&buf[..n], &mut o.pending);
                            if !o.pending.is_empty() {
                                return true;
                            }
                        }
                        Err(Errno::EINTR) => {}
                        Err(Errno::EAGAIN) => {
                            // Drained: an unfinished line is written now.
                            o.sink.flush_partial();
                            return true;
                        }
                        // EIO: the pty's other side is closed (the process exited).
                        Err(_) => return false,
                    }
                }
                true
            }
            Job::In(i) => {
                if !i.pending.is_empty() {
                    return match write_some(i.dst.as_fd(), &i.pending) {
                        Ok(n) => {
                            i.pending.drain(..n);
                            true
                        }
                        Err(e) => {
                            log::debug!("stdin copy to container stopped: {e}");
                            false
                        }
                    };
                }
                match nix::unistd::read(&i.src, buf) {
                    // Linux reports POLLHUP on a FIFO only after a writer has come
                    // and gone: then EOF.
                    Ok(0) => false,
                    Ok(n) => match write_some(i.dst.as_fd(), &buf[..n]) {
                        Ok(w) => {
                            i.pending.extend_from_slice(&buf[w..n]);
                            true
                        }
                        Err(e) => {
                            log::debug!("stdin copy to container stopped: {e}");
                            false
                        }
                    },
                    Err(Errno::EINTR) | Err(Errno::EAGAIN) => true,
                    Err(_) => false,
                }
            }
        }
    }

    /// The job is over (EOF, error or stop).
    fn close(&mut self) {
        if let Job::Out(o) = self {
            o.sink.finish();
            o.drain.done();
        }
    }
}

enum SinkKind {
    Null,
    /// A FIFO (non-blocking fd: a slow reader must not block the I/O thread).
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

    fn fifo_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.kind {
            SinkKind::Fifo(fd) => Some(fd.as_fd()),
            _ => None,
        }
    }

    /// Writes `data`; what a FIFO cannot take now is appended to `pending`.
    fn write(&mut self, data: &[u8], pending: &mut Vec<u8>) {
        let res = match &mut self.kind {
            SinkKind::Null => Ok(()),
            SinkKind::Fifo(fd) => {
                write_some(fd.as_fd(), data).map(|n| pending.extend_from_slice(&data[n..]))
            }
            SinkKind::File(f) => f.write_all(data),
            SinkKind::Cri(log, stream, split) => {
                let mut err = None;
                split.feed(data, &mut |tag, line| {
                    if let Err(e) = log.write_record(*stream, tag, line, SystemTime::now()) {
                        err = Some(e);
                    }
                });
                match err {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            }
        };
        if let Err(e) = res {
            // Keep draining the container's output: a broken destination must not
            // block the container.
            self.fail(e);
        }
    }

    /// Writes what a FIFO can take of `pending`.
    fn flush(&mut self, pending: &mut Vec<u8>) {
        let Some(fd) = self.fifo_fd() else {
            pending.clear();
            return;
        };
        match write_some(fd, pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) => {
                pending.clear();
                self.fail(e);
            }
        }
    }

    /// Writes an unfinished line as a partial record (CRI logs only).
    fn flush_partial(&mut self) {
        self.split_records(|split, emit| split.flush_partial(emit));
    }

    fn finish(&mut self) {
        self.split_records(|split, emit| split.finish(emit));
    }

    /// Runs `f` on a CRI log's line splitter, writing the records it emits.
    fn split_records(&mut self, f: impl FnOnce(&mut LineSplitter, &mut dyn FnMut(Tag, &[u8]))) {
        if let SinkKind::Cri(log, stream, split) = &mut self.kind {
            let mut err = None;
            f(split, &mut |tag, line| {
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

/// Writes as much of `data` as a non-blocking fd takes now; the count written.
fn write_some(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match nix::unistd::write(fd, &data[done..]) {
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
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
        // stdout and stderr are separate pipes: no order between them.
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

    /// More output than a FIFO holds, read late: the I/O thread keeps what the FIFO
    /// cannot take, stops reading the container meanwhile, and loses nothing.
    #[test]
    fn slow_fifo_reader_gets_everything() {
        let d = tempfile::tempdir().unwrap();
        let out_fifo = fifo(d.path(), "out");
        let cfg = StdioConfig {
            stdout: out_fifo.display().to_string(),
            ..Default::default()
        };
        let client = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&out_fifo)
            .unwrap();
        let mut p = PreparedIo::prepare(&cfg, (0, 0), d.path()).unwrap();
        let cout = p.child_stdout.take().unwrap();
        let io = p.start().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let want = data.clone();
        let writer = std::thread::spawn(move || File::from(cout).write_all(&data).unwrap());
        std::thread::sleep(Duration::from_millis(300));
        let fl = OFlag::from_bits_truncate(fcntl(&client, FcntlArg::F_GETFL).unwrap());
        fcntl(&client, FcntlArg::F_SETFL(fl - OFlag::O_NONBLOCK)).unwrap();
        let mut client = client;
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert!(io.wait_drained(Duration::from_secs(5)));
        assert_eq!(got.len(), want.len());
        assert!(got == want);
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
