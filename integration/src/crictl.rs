//! Driving the upstream `crictl` binary (cri-tools v1.29, from `../shared/conformance`)
//! against a berthd: commands with a deadline, background commands (`logs -f`,
//! `events`, `port-forward`), commands on a pseudo-terminal (`exec -it`,
//! `attach -it`), crictl's table output and its stream of JSON documents, and the
//! pod and container config files crictl reads (snake_case JSON, enums as numbers).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// Where `make conformance` finds crictl: `../shared/conformance/bin/crictl` next to the
/// workspace. `$CRICTL` overrides it.
pub const DEFAULT_CRICTL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/conformance/bin/crictl"
);

/// How long one crictl command may take before it is killed and the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// The crictl binary: `$CRICTL`, else [`DEFAULT_CRICTL`]. A missing or broken binary is
/// an error saying where it was looked for (tests using it must fail, never pass).
pub fn crictl_bin() -> Result<PathBuf> {
    let (p, from) = match std::env::var_os("CRICTL") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), "$CRICTL"),
        _ => (PathBuf::from(DEFAULT_CRICTL), "the default path"),
    };
    if !p.is_file() {
        bail!(
            "upstream crictl not found at {} ({from}): these tests need cri-tools v1.29's \
             crictl; put it in ../shared/conformance/bin (see ../shared/conformance/README.md) \
             or set CRICTL=/path/to/crictl",
            p.display()
        );
    }
    let p = std::fs::canonicalize(&p).unwrap_or(p);
    let out = Command::new(&p)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", p.display()))?;
    let v = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && v.starts_with("crictl version"),
        "{} --version did not answer like crictl: {:?} {:?}",
        p.display(),
        v,
        String::from_utf8_lossy(&out.stderr)
    );
    if !v.contains("1.29.") {
        eprintln!(
            "note: {} is {}, these tests were written for 1.29",
            p.display(),
            v.trim()
        );
    }
    Ok(p)
}

/// What a finished crictl command printed.
#[derive(Debug, Clone)]
pub struct Out {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ {}\n[{}]\n--- stdout ---\n{}--- stderr ---\n{}",
            self.cmdline, self.status, self.stdout, self.stderr
        )
    }
}

/// crictl pointed at one berthd socket through flags (`--runtime-endpoint`,
/// `--image-endpoint`, `--timeout 30s`) and a config file of its own (so a host's
/// `/etc/crictl.yaml` never matters).
#[derive(Debug, Clone)]
pub struct Crictl {
    pub bin: PathBuf,
    pub endpoint: String,
    pub config: PathBuf,
}

impl Crictl {
    /// crictl for the socket at `socket`; its config file is written into `dir`.
    pub fn new(socket: &Path, dir: &Path) -> Result<Self> {
        let bin = crictl_bin()?;
        let config = dir.join("crictl.yaml");
        std::fs::write(&config, "")?;
        Ok(Crictl {
            bin,
            endpoint: format!("unix://{}", socket.display()),
            config,
        })
    }

    /// The command with the global flags, ready for the verb's arguments.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--runtime-endpoint")
            .arg(&self.endpoint)
            .arg("--image-endpoint")
            .arg(&self.endpoint)
            .arg("--timeout")
            .arg("30s")
            .args(args)
            .env_remove("CONTAINER_RUNTIME_ENDPOINT")
            .env_remove("IMAGE_SERVICE_ENDPOINT")
            .env_remove("CRI_CONFIG_FILE");
        cmd
    }

    fn cmdline(args: &[&str]) -> String {
        format!("crictl {}", args.join(" "))
    }

    /// Runs `crictl ARGS` (stdin empty) to its end, killed after [`COMMAND_TIMEOUT`].
    pub fn run(&self, args: &[&str]) -> Result<Out> {
        self.run_input(args, None, COMMAND_TIMEOUT)
    }

    /// Runs `crictl ARGS` with `input` on its stdin (then closed).
    pub fn run_input(&self, args: &[&str], input: Option<&[u8]>, timeout: Duration) -> Result<Out> {
        let mut cmd = self.command(args);
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut bg = Background::spawn(cmd, &Self::cmdline(args))?;
        if let Some(data) = input {
            bg.write_stdin(data)?;
            bg.close_stdin();
        }
        match bg.wait_exit(timeout) {
            Ok(_) => Ok(bg.into_out()),
            Err(e) => Err(e.context(format!(
                "`{}` did not finish within {timeout:?}",
                Self::cmdline(args)
            ))),
        }
    }

    /// Runs `crictl ARGS`, which must exit 0; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        ensure!(out.status.success(), "crictl failed:\n{out}");
        Ok(out.stdout)
    }

    /// Runs `crictl ARGS`, which must exit 0 and print JSON; returns it parsed.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let out = self.run(args)?;
        ensure!(out.status.success(), "crictl failed:\n{out}");
        serde_json::from_str(&out.stdout).with_context(|| format!("output is not JSON:\n{out}"))
    }

    /// Runs `crictl ARGS`, which must fail (non-zero exit); returns what it printed.
    pub fn fails(&self, args: &[&str]) -> Result<Out> {
        let out = self.run(args)?;
        ensure!(!out.status.success(), "crictl was expected to fail:\n{out}");
        Ok(out)
    }

    /// Starts `crictl ARGS` in the background (stdout/stderr collected, stdin piped).
    pub fn spawn(&self, args: &[&str]) -> Result<Background> {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped());
        Background::spawn(cmd, &Self::cmdline(args))
    }

    /// Starts `crictl ARGS` on a new pseudo-terminal (its stdin, stdout and stderr).
    pub fn spawn_pty(&self, args: &[&str]) -> Result<PtyChild> {
        PtyChild::spawn(self.command(args), &Self::cmdline(args))
    }
}

// ---------------------------------------------------------------- background

type Buf = Arc<Mutex<Vec<u8>>>;

fn collect(mut r: impl Read + Send + 'static, buf: Buf) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // EIO on a pty master once the last slave fd is closed.
                Err(_) => break,
            }
        }
    })
}

fn text(buf: &Buf) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// Polls `f` until it returns `Some` ([`crate::util::wait_for`]); a failure
/// carries `ctx()`.
fn poll<T>(
    what: &str,
    timeout: Duration,
    f: impl FnMut() -> Result<Option<T>>,
    ctx: impl Fn() -> String,
) -> Result<T> {
    crate::util::wait_for(what, timeout, f).map_err(|e| anyhow::anyhow!("{e:#}\n{}", ctx()))
}

/// A command running in the background; its stdout and stderr are collected as they
/// come. Killed (and reaped) on drop.
pub struct Background {
    cmdline: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Buf,
    stderr: Buf,
    readers: Vec<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Background {
    pub fn spawn(mut cmd: Command, cmdline: &str) -> Result<Self> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawn {cmdline}"))?;
        let stdout: Buf = Arc::default();
        let stderr: Buf = Arc::default();
        let mut readers = Vec::new();
        if let Some(o) = child.stdout.take() {
            readers.push(collect(o, stdout.clone()));
        }
        if let Some(e) = child.stderr.take() {
            readers.push(collect(e, stderr.clone()));
        }
        Ok(Background {
            cmdline: cmdline.to_string(),
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            readers,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        text(&self.stdout)
    }

    pub fn stderr(&self) -> String {
        text(&self.stderr)
    }

    fn describe(&self) -> String {
        format!(
            "$ {}\n--- stdout so far ---\n{}--- stderr so far ---\n{}",
            self.cmdline,
            self.stdout(),
            self.stderr()
        )
    }

    pub fn write_stdin(&mut self, data: &[u8]) -> Result<()> {
        let w = self
            .stdin
            .as_mut()
            .context("stdin is not piped or closed")?;
        w.write_all(data)?;
        w.flush()?;
        Ok(())
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until `pred(stdout)` holds.
    pub fn wait_stdout(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let stdout = self.stdout.clone();
        let me = self;
        poll(
            what,
            timeout,
            || {
                let s = text(&stdout);
                Ok(pred(&s).then_some(s))
            },
            || me.describe(),
        )
    }

    /// Waits until `pred(stderr)` holds.
    pub fn wait_stderr(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let stderr = self.stderr.clone();
        let me = self;
        poll(
            what,
            timeout,
            || {
                let s = text(&stderr);
                Ok(pred(&s).then_some(s))
            },
            || me.describe(),
        )
    }

    /// The exit status if the command has ended.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits for the command to end on its own (its output fully read); fails (and
    /// kills it) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut interval = Duration::from_millis(5);
        loop {
            if let Some(st) = self.try_status()? {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let d = self.describe();
                self.kill();
                bail!("`{}` still running after {timeout:?}\n{d}", self.cmdline);
            }
            std::thread::sleep(interval);
            interval = (interval * 2).min(Duration::from_millis(100));
        }
    }

    /// SIGKILL and reap (no-op once it has ended).
    pub fn kill(&mut self) {
        if self.try_status().ok().flatten().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        self.stdin = None;
    }

    /// SIGINT (like Ctrl-C), then waits up to `timeout` for it to end.
    pub fn interrupt(&mut self, timeout: Duration) -> Result<ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        self.wait_exit(timeout)
    }

    /// The finished command's output (call after [`Background::wait_exit`]).
    pub fn into_out(mut self) -> Out {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Out {
            cmdline: self.cmdline.clone(),
            status: self.status.unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                ExitStatus::from_raw(-1)
            }),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- pty

/// A command whose stdin, stdout and stderr are the slave side of a new
/// pseudo-terminal (it is a session leader with that terminal as its controlling
/// tty), so `crictl exec -it` and `attach -it` see a real terminal. What it writes
/// is collected from the master side; [`PtyChild::send`] types on it. Killed on drop.
pub struct PtyChild {
    cmdline: String,
    child: Child,
    master: File,
    output: Buf,
    reader: Option<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl PtyChild {
    pub fn spawn(mut cmd: Command, cmdline: &str) -> Result<Self> {
        let mut master: libc::c_int = -1;
        let mut slave: libc::c_int = -1;
        let ws = libc::winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two fds into the out-params; the name and termios
        // pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        ensure!(rc == 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just returned by openpty and are owned here only.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave.try_clone()?));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {cmdline} on a pty"))?;
        drop(cmd);
        drop(slave);
        let master = File::from(master);
        let output: Buf = Arc::default();
        let reader = collect(master.try_clone()?, output.clone());
        Ok(PtyChild {
            cmdline: cmdline.to_string(),
            child,
            master,
            output,
            reader: Some(reader),
            status: None,
        })
    }

    /// Everything the command wrote to the terminal so far.
    pub fn output(&self) -> String {
        text(&self.output)
    }

    fn describe(&self) -> String {
        format!(
            "$ {} (on a pty)\n--- terminal output so far ---\n{:?}",
            self.cmdline,
            self.output()
        )
    }

    /// Types `data` on the terminal.
    pub fn send(&mut self, data: &[u8]) -> Result<()> {
        self.master.write_all(data)?;
        self.master.flush()?;
        Ok(())
    }

    /// Waits until the terminal output contains `needle`.
    pub fn wait_output(&self, needle: &str, timeout: Duration) -> Result<String> {
        let out = self.output.clone();
        let me = self;
        poll(
            &format!("{needle:?} on the terminal"),
            timeout,
            || {
                let s = text(&out);
                Ok(s.contains(needle).then_some(s))
            },
            || me.describe(),
        )
    }

    /// Waits for the command to end on its own; fails (and kills it) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                self.status = Some(st);
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let d = self.describe();
                self.kill();
                bail!("`{}` still running after {timeout:?}\n{d}", self.cmdline);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if self.status.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            self.status = self.child.wait().ok();
        }
    }

    /// Resizes the terminal (the kernel sends SIGWINCH to the command, which is
    /// the terminal's foreground process group).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ as _, &ws) };
        ensure!(rc == 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
        Ok(())
    }
}

impl Drop for PtyChild {
    fn drop(&mut self) {
        self.kill();
        // The reader ends with EIO once no process holds the slave any more; a
        // grandchild still holding it must not hang the test, so do not join.
        drop(self.reader.take());
    }
}

// ---------------------------------------------------------------- output parsing

/// Parses crictl's table output (a header line, then one line per row, columns
/// aligned by tabwriter) into rows keyed by header name. Columns are cut at the
/// header's column starts, so cells may be empty or contain single spaces
/// ("2 seconds ago", "IMAGE ID").
pub fn parse_table(out: &str) -> Result<Vec<BTreeMap<String, String>>> {
    let out = strip_ansi(out);
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        bail!("table output is empty");
    };
    let hb = header.as_bytes();
    let mut starts = Vec::new();
    for i in 0..hb.len() {
        let begins =
            hb[i] != b' ' && (i == 0 || (i >= 2 && hb[i - 1] == b' ' && hb[i - 2] == b' '));
        if begins {
            starts.push(i);
        }
    }
    ensure!(!starts.is_empty(), "no columns in header {header:?}");
    let cell = |l: &str, k: usize| -> String {
        let from = starts[k];
        let to = starts
            .get(k + 1)
            .copied()
            .unwrap_or(usize::MAX)
            .min(l.len());
        if from >= l.len() || from >= to {
            return String::new();
        }
        l.get(from..to).unwrap_or("").trim().to_string()
    };
    let names: Vec<String> = (0..starts.len()).map(|k| cell(header, k)).collect();
    let mut rows = Vec::new();
    for l in lines {
        let mut row = BTreeMap::new();
        for (k, n) in names.iter().enumerate() {
            row.insert(n.clone(), cell(l, k));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// `s` without ANSI escape sequences (`stats` and `statsp` clear the screen before
/// their table: `ESC[2J ESC[H`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte (a letter)
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The header names of crictl's table output.
pub fn table_header(out: &str) -> Vec<String> {
    strip_ansi(out)
        .lines()
        .find(|l| !l.trim().is_empty())
        .map(|h| {
            h.split("  ")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The complete JSON documents in `s`, one after the other (as `crictl events -o json`
/// prints them); a trailing incomplete document is left out.
pub fn json_stream(s: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(s)
        .into_iter::<Value>()
        .map_while(|v| v.ok())
        .collect()
}

/// The non-empty lines of `s`, trimmed.
pub fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Now as a Unix timestamp with nanoseconds (`SECONDS.NANOS`), a form
/// `crictl logs --since` passes through unchanged.
pub fn unix_timestamp_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// Writes `v` as pretty JSON to `dir/name`; returns the path as a string.
pub fn write_json(dir: &Path, name: &str, v: &Value) -> Result<String> {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(v)?)?;
    p.to_str()
        .map(str::to_string)
        .context("config path is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_by_header_position() {
        let out = "\
CONTAINER           IMAGE               CREATED             STATE               NAME                ATTEMPT             POD ID              POD
1f2e3d4c5b6a7       docker.io/x:1       2 seconds ago       Running             web                 0                   abcdef0123456       p1
9a8b7c6d5e4f3       y                   About a minute ago  Exited              db                  1                   fedcba9876543       
";
        let rows = parse_table(out).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["CONTAINER"], "1f2e3d4c5b6a7");
        assert_eq!(rows[0]["CREATED"], "2 seconds ago");
        assert_eq!(rows[0]["POD ID"], "abcdef0123456");
        assert_eq!(rows[0]["POD"], "p1");
        assert_eq!(rows[1]["CREATED"], "About a minute ago");
        assert_eq!(rows[1]["POD"], "");
        assert_eq!(
            table_header(out),
            [
                "CONTAINER",
                "IMAGE",
                "CREATED",
                "STATE",
                "NAME",
                "ATTEMPT",
                "POD ID",
                "POD"
            ]
        );
        assert!(parse_table("").is_err());
        let rows = parse_table("\u{1b}[2J\u{1b}[HPOD   POD ID\nweb    abc\n").unwrap();
        assert_eq!(rows[0]["POD ID"], "abc");
        assert_eq!(parse_table("IMAGE   TAG\n").unwrap().len(), 0);
    }

    #[test]
    fn json_documents_one_after_another() {
        let v = json_stream("{\n  \"a\": 1\n}\n{\"b\": [2]}\n{\"c\":");
        assert_eq!(v.len(), 2);
        assert_eq!(v[1]["b"][0], 2);
    }

    #[test]
    fn crictl_missing_is_a_clear_error() {
        // Only meaningful where $CRICTL is not set to a real binary by the caller.
        if std::env::var_os("CRICTL").is_some() {
            return;
        }
        if Path::new(DEFAULT_CRICTL).is_file() {
            return;
        }
        let e = crictl_bin().unwrap_err().to_string();
        assert!(e.contains("crictl not found"), "{e}");
    }

    #[test]
    fn pty_child_sees_a_terminal() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            "[ -t 0 ] && [ -t 1 ] && echo on-a-tty; read x; echo got-$x; read y; stty size",
        ]);
        let mut p = PtyChild::spawn(cmd, "sh").unwrap();
        p.wait_output("on-a-tty", Duration::from_secs(10)).unwrap();
        p.send(b"abc\n").unwrap();
        p.wait_output("got-abc", Duration::from_secs(10)).unwrap();
        p.resize(30, 90).unwrap();
        p.send(b"\n").unwrap();
        p.wait_output("30 90", Duration::from_secs(10)).unwrap();
        assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success());
    }
}
