//! A harness that runs the real `berthd` binary in temporary root/state dirs.
//!
//! Binaries are found next to the test executable (`target/<profile>/deps/..` ->
//! `target/<profile>/`), or in `$BERTH_BIN_DIR` when set. `cargo test -p integration`
//! does not build other packages' binaries: run `cargo build -p berthd -p berthctl` first.

use std::fs::OpenOptions;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::util::{spawn, stdout_if_ok, stop_child, sweep_dir, wait_for};

/// How long `start`/`restart` wait for the socket to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop`/drop wait after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Directory holding the `berthd` and `berthctl` binaries.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("BERTH_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("test executable has no parent dir"))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Path of a binary in [`bin_dir`], with a helpful error if it was not built.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    bin_path_in(&bin_dir()?, name)
}

fn bin_path_in(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "{} not found (run `cargo build -p berthd -p berthctl`, or set BERTH_BIN_DIR)",
            p.display()
        );
    }
    Ok(p)
}

/// Options for [`Daemon::start_with`].
#[derive(Debug, Clone, Default)]
pub struct DaemonOpts {
    /// Contents of the TOML config file (empty by default).
    pub config: String,
    /// Extra arguments after the standard ones.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Where berthd/berthctl are (default: [`bin_dir`]).
    pub bin_dir: Option<PathBuf>,
    /// `--log-level` (default "debug"; benchmarks use "info").
    pub log_level: Option<String>,
}

/// A running berthd. On drop: SIGTERM, SIGKILL after [`STOP_TIMEOUT`], then containers
/// runc still has under `<state>/runc` are force-deleted, processes still referring to
/// the temp dir (e.g. shims) are killed, mounts below it are lazily unmounted and the
/// dir is removed.
pub struct Daemon {
    dir: tempfile::TempDir,
    opts: DaemonOpts,
    child: Option<Child>,
}

impl Daemon {
    /// Starts berthd with an empty config.
    pub fn start() -> Result<Self> {
        Self::start_with(DaemonOpts::default())
    }

    /// Starts berthd with the given config file contents.
    pub fn start_with_config(config: &str) -> Result<Self> {
        Self::start_with(DaemonOpts {
            config: config.to_string(),
            ..Default::default()
        })
    }

    pub fn start_with(mut opts: DaemonOpts) -> Result<Self> {
        if opts.bin_dir.is_none() {
            opts.bin_dir = Some(bin_dir()?);
        }
        let dir = tempfile::Builder::new().prefix("berth-e2e-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("root"))?;
        std::fs::create_dir_all(dir.path().join("state"))?;
        std::fs::write(dir.path().join("config.toml"), &opts.config)?;
        let mut d = Daemon {
            dir,
            opts,
            child: None,
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> Result<()> {
        self.spawn_process()?;
        if let Err(e) = self.wait_ready() {
            let log = self.log();
            self.terminate();
            return Err(e.context(format!("berthd log:\n{log}")));
        }
        Ok(())
    }

    /// Starts berthd again (after [`Daemon::stop`] or [`Daemon::kill9`]) without
    /// waiting for its socket, for callers that time the start themselves.
    pub fn respawn_nowait(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("berthd is still running");
        }
        self.spawn_process()
    }

    fn spawn_process(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(self.bin("berthd")?);
        cmd.arg("--root")
            .arg(self.root())
            .arg("--state")
            .arg(self.state())
            .arg("--address")
            .arg(self.socket_path())
            .arg("--config")
            .arg(self.config_path())
            .arg("--log-level")
            .arg(self.opts.log_level.as_deref().unwrap_or("debug"))
            .args(&self.opts.args)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn(&mut cmd)?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let sock = self.socket_path();
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("berthd not running"))?;
        wait_for("berthd socket", START_TIMEOUT, || {
            if let Some(st) = child.try_wait()? {
                bail!("berthd exited during startup: {st}");
            }
            Ok((sock.exists() && UnixStream::connect(&sock).is_ok()).then_some(()))
        })
    }

    fn bin(&self, name: &str) -> Result<PathBuf> {
        match &self.opts.bin_dir {
            Some(d) => bin_path_in(d, name),
            None => bin_path(name),
        }
    }

    /// The temp dir holding root/, state/, config.toml and berthd.log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn socket_path(&self) -> PathBuf {
        self.state().join("berth.sock")
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("berthd.log")
    }

    /// berthd's stdout+stderr so far (all runs, appended).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// PID of the running berthd.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILLs berthd (shims and containers are left alone) and reaps it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, wait up to [`STOP_TIMEOUT`], then SIGKILL. Returns the exit status
    /// (`None` if it had to be killed or was not running).
    pub fn stop(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.take() {
            Some(c) => stop_child(c, STOP_TIMEOUT),
            None => Ok(None),
        }
    }

    fn terminate(&mut self) {
        let _ = self.stop();
    }

    /// Stops berthd (gracefully, see [`Daemon::stop`]) if running, and starts it again
    /// with the same dirs, config and options.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Sets (or with `None` removes) an environment variable of berthd from
    /// the next (re)start on, e.g. `BERTH_FAILPOINTS`.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.opts.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.opts.env.push((key.to_string(), v.to_string()));
        }
    }

    /// Replaces the config file (takes effect on the next restart).
    pub fn set_config(&mut self, config: &str) -> Result<()> {
        self.opts.config = config.to_string();
        std::fs::write(self.config_path(), config)?;
        Ok(())
    }

    /// Runs `berthctl --address SOCK args...` and returns its output.
    pub fn ctl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(self.bin("berthctl")?);
        cmd.arg("--address")
            .arg(self.socket_path())
            .args(args)
            .stdin(Stdio::null());
        cmd.output().with_context(|| format!("run {cmd:?}"))
    }

    /// Like [`Daemon::ctl`] but fails (with stdout, stderr and the daemon log tail) on a
    /// non-zero exit; returns stdout.
    pub fn ctl_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let out = self.ctl(&args)?;
        stdout_if_ok("berthctl", &args, out, || tail(&self.log(), 60), "berthd")
    }
}

impl Daemon {
    /// Runs a berthctl command that must fail with one clear error line
    /// (`berthctl: ...`) and no backtrace; returns that line.
    pub fn ctl_err(&self, args: &[&str]) -> Result<String> {
        let out = self.ctl(args)?;
        if out.status.success() {
            bail!(
                "berthctl {args:?} unexpectedly succeeded: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if !(err.starts_with("berthctl: ") && err.trim_end().lines().count() == 1) {
            bail!("expected one clear error line, got {err:?}");
        }
        Ok(err)
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Force-deletes the containers runc still has under `runtime_root/<namespace>`:
/// a container's own processes live in their own mount and PID namespaces and
/// do not show the temp dir in their command line or cwd.
pub fn delete_containers(runtime_root: &Path) {
    let Ok(rd) = std::fs::read_dir(runtime_root) else {
        return;
    };
    for ns in rd.flatten() {
        let root = ns.path();
        let Ok(out) = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .stderr(Stdio::null())
            .output()
        else {
            continue;
        };
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", id.trim()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
        // Containers berthd ran (its default runtime root is <state>/runc).
        delete_containers(&self.state().join("runc"));
        // Leftover shims etc. started for this daemon's dirs.
        sweep_dir(self.dir.path());
        if std::thread::panicking() {
            eprintln!(
                "berthd log ({}):\n{}",
                self.log_path().display(),
                tail(&self.log(), 200)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_dir_is_next_to_deps() {
        if std::env::var_os("BERTH_BIN_DIR").is_some() {
            return;
        }
        let d = bin_dir().unwrap();
        assert!(
            d.ends_with("debug") || d.ends_with("release"),
            "{}",
            d.display()
        );
        assert!(d.join("deps").is_dir());
    }

    #[test]
    fn tail_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    /// The harness itself, with a stand-in "berthd" (a shell script that listens on the
    /// socket with python3) in a fake BERTH_BIN_DIR-style dir.
    #[test]
    fn harness_with_stand_in_daemon() {
        let bins = tempfile::tempdir().unwrap();
        let script = r#"#!/bin/sh
# stand-in berthd: parse --address and listen on it
while [ $# -gt 0 ]; do
  case "$1" in --address) SOCK="$2"; shift;; esac; shift
done
echo "stand-in starting $SOCK"
exec python3 -c '
import socket, sys, os, signal
signal.signal(signal.SIGTERM, lambda *a: (print("got SIGTERM", flush=True), sys.exit(0)))
s = socket.socket(socket.AF_UNIX)
p = sys.argv[1]
if os.path.exists(p): os.unlink(p)
s.bind(p); s.listen(16)
while True:
    c, _ = s.accept(); c.close()
' "$SOCK"
"#;
        let ctl = "#!/bin/sh\necho \"ctl $*\"\n[ \"$4\" = fail ] && exit 3\nexit 0\n";
        for (name, body) in [("berthd", script), ("berthctl", ctl)] {
            let p = bins.path().join(name);
            std::fs::write(&p, body).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut d = Daemon::start_with(DaemonOpts {
            config: "[foo]\nbar = 1\n".into(),
            bin_dir: Some(bins.path().to_path_buf()),
            ..Default::default()
        })
        .unwrap();
        let dir = d.dir().to_path_buf();
        assert!(UnixStream::connect(d.socket_path()).is_ok());
        assert_eq!(
            std::fs::read_to_string(d.config_path()).unwrap(),
            "[foo]\nbar = 1\n"
        );
        let pid1 = d.pid().unwrap();
        let out = d.ctl(["version"]).unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("--address"));
        assert!(d.ctl_ok(["x", "fail"]).is_err());
        d.restart().unwrap();
        assert_ne!(d.pid().unwrap(), pid1);
        assert!(d.log().contains("got SIGTERM"));
        d.kill9().unwrap();
        assert!(!d.is_running());
        d.restart().unwrap();
        assert!(d.is_running());
        assert_eq!(d.log().matches("stand-in starting").count(), 3);
        drop(d);
        assert!(!dir.exists());
    }
}
