//! The one I/O thread: polls the non-blocking fds of every process's stdio and
//! runs the copy jobs (container output to its sinks, stdin FIFOs into the
//! container), woken through a pipe when jobs are added or stopped.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use berth_sysutil::lock;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::sink::{write_some, Sink};

const COPY_BUF: usize = 32 * 1024;
const THREAD_STACK: usize = 128 * 1024;

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
pub(super) struct Stop(AtomicBool);

impl Stop {
    pub(super) fn fire(&self) {
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

/// Counts the output copy jobs still running.
#[derive(Default)]
pub(super) struct Drain {
    n: Mutex<usize>,
    cv: Condvar,
}

impl Drain {
    pub(super) fn add(&self) {
        *lock(&self.n) += 1;
    }

    pub(super) fn done(&self) {
        let mut n = lock(&self.n);
        *n = n.saturating_sub(1);
        self.cv.notify_all();
    }

    pub(super) fn wait(&self, timeout: Duration) -> bool {
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
pub(super) struct IoLoop {
    wake: WakePipe,
    new: Mutex<Vec<Job>>,
}

static IO_LOOP: Mutex<Option<Arc<IoLoop>>> = Mutex::new(None);

impl IoLoop {
    /// Hands jobs to the I/O thread (started on first use).
    pub(super) fn add(jobs: Vec<Job>) -> io::Result<()> {
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
pub(super) struct OutJob {
    pub(super) src: OwnedFd,
    pub(super) sink: Sink,
    /// Output a FIFO destination could not take yet: the source is not read until
    /// it is written (the container blocks, as with a slow reader of a pipe).
    pub(super) pending: Vec<u8>,
    pub(super) stop: Arc<Stop>,
    pub(super) drain: Arc<Drain>,
}

/// Copies a stdin FIFO into the process's stdin pipe (or pty master). Dropping it
/// closes the container's stdin: it reads EOF.
pub(super) struct InJob {
    pub(super) src: File,
    pub(super) dst: OwnedFd,
    pub(super) pending: Vec<u8>,
    pub(super) stop: Arc<Stop>,
}

pub(super) enum Job {
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
