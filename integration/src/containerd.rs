//! A harness that runs Debian's real `containerd` (1.6) as a peer, on its own temp
//! root, state and sockets, so it never touches a system containerd (`/run/containerd`,
//! `/var/lib/containerd`, `/opt/containerd`).
//!
//! Used for interoperability tests (archives exported by one runtime imported by the
//! other) and as the reference in `bench-pull`. The CRI plugin is disabled for now; the
//! config has no debug or metrics socket. `ctr` is driven with `--address SOCK`.
//!
//! Note that `ctr` 1.6 fetches from registries in the `ctr` process itself and streams
//! the blobs into containerd's content store over gRPC (there is no transfer service
//! before containerd 1.7).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::daemon::tail;
use crate::util::{spawn, stdout_if_ok, stop_child, sweep_dir, wait_for, write_file};

/// The containerd binary (Debian package `containerd`).
pub const CONTAINERD_BIN: &str = "/usr/bin/containerd";
/// Its CLI.
pub const CTR_BIN: &str = "/usr/bin/ctr";
/// How long [`Containerd::start`] waits for `ctr version` to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long stop/drop wait after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Plugins that are never needed here: the CRI plugin (the CRI peer is a later issue)
/// and snapshotters that cannot work on this host and only log warnings at start.
pub const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
];

/// Options for [`Containerd::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ContainerdOpts {
    /// TOML appended after the generated config (plugin tables only: top-level keys
    /// must come before the first table). `@DIR@` is replaced by the harness's temp
    /// dir ([`Containerd::dir`]).
    pub extra_config: String,
    /// Plugins disabled in addition to [`DISABLED_PLUGINS`].
    pub disabled_plugins: Vec<String>,
    /// Extra environment variables for the containerd process (and so for the shims it
    /// starts), e.g. a `PATH` with a directory holding `containerd-shim-berth-v2`.
    pub env: Vec<(String, String)>,
    /// Keep the CRI plugin enabled (its `[plugins."io.containerd.grpc.v1.cri"]`
    /// table goes in `extra_config`; see `bench_cri` for one). Its runc root should be
    /// [`Containerd::runc_root`], so that drop can force-delete leftover containers.
    pub cri: bool,
}

/// A running containerd. On drop: SIGTERM, SIGKILL after [`STOP_TIMEOUT`], then any
/// process still referring to the temp dir (shims) is killed, mounts below the dir are
/// lazily unmounted and the dir is removed.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Containerd {
    /// Starts containerd with the default harness config.
    pub fn start() -> Result<Self> {
        Self::start_with(ContainerdOpts::default())
    }

    pub fn start_with(opts: ContainerdOpts) -> Result<Self> {
        for bin in [CONTAINERD_BIN, CTR_BIN] {
            if !Path::new(bin).is_file() {
                bail!("{bin} not found (apt-get install containerd)");
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-containerd-")
            .tempdir()
            .context("create containerd temp dir")?;
        let mut c = Containerd {
            dir,
            child: None,
            env: opts.env.clone(),
        };
        for d in [c.root(), c.state(), c.hosts_dir(), c.dir().join("opt")] {
            std::fs::create_dir_all(&d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        write_file(&c.config_path(), c.render_config(&opts).as_bytes())?;
        c.spawn_process()?;
        if let Err(e) = c.wait_ready() {
            let log = c.log();
            c.terminate();
            return Err(e.context(format!("containerd log:\n{}", tail(&log, 60))));
        }
        Ok(c)
    }

    fn spawn_process(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(CONTAINERD_BIN);
        cmd.arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(spawn(&mut cmd)?);
        Ok(())
    }

    /// Starts containerd again (after [`Containerd::stop`]) with the same config,
    /// without waiting for it, for callers that time the start themselves.
    pub fn respawn_nowait(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("containerd is still running");
        }
        self.spawn_process()
    }

    /// The runc root to give the CRI plugin's runc runtime (`options.Root`).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc")
    }

    fn render_config(&self, opts: &ContainerdOpts) -> String {
        let disabled: Vec<String> = DISABLED_PLUGINS
            .iter()
            .filter(|p| !(opts.cri && **p == "io.containerd.grpc.v1.cri"))
            .map(|s| s.to_string())
            .chain(opts.disabled_plugins.iter().cloned())
            .map(|p| format!("{p:?}"))
            .collect();
        let q = |p: PathBuf| format!("{:?}", p.to_string_lossy());
        format!(
            "version = 2\n\
             root = {root}\n\
             state = {state}\n\
             disabled_plugins = [{disabled}]\n\
             \n\
             [grpc]\n  address = {sock}\n\
             \n\
             [ttrpc]\n  address = {ttrpc}\n\
             \n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n\
             \n{extra}\n",
            root = q(self.root()),
            state = q(self.state()),
            disabled = disabled.join(", "),
            sock = q(self.socket()),
            ttrpc = q(self.dir().join("containerd.sock.ttrpc")),
            opt = q(self.dir().join("opt")),
            extra = opts
                .extra_config
                .replace("@DIR@", &self.dir().to_string_lossy()),
        )
    }

    fn wait_ready(&mut self) -> Result<()> {
        let sock = self.socket();
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("containerd not running"))?;
        wait_for("containerd (ctr version)", START_TIMEOUT, || {
            if let Some(st) = child.try_wait()? {
                bail!("containerd exited during startup: {st}");
            }
            if !sock.exists() {
                return Ok(None);
            }
            let out = Command::new(CTR_BIN)
                .arg("--address")
                .arg(&sock)
                .arg("version")
                .stdin(Stdio::null())
                .output()
                .context("run ctr version")?;
            Ok(out.status.success().then_some(()))
        })
    }

    /// The temp dir holding root/, state/, certs.d/, config.toml and containerd.log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    /// The gRPC socket (`ctr --address`).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }
    /// A containerd-style hosts dir (`<host>/hosts.toml`), for `ctr --hosts-dir`.
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    /// Writes `<hosts_dir>/<addr>/hosts.toml` so that `addr` ("127.0.0.1:PORT") is
    /// reached over plain HTTP when `ctr` is given `--hosts-dir` [`Containerd::hosts_dir`]
    /// (an alternative to `--plain-http`).
    pub fn trust_plain_http(&self, addr: &str) -> Result<()> {
        let toml = format!(
            "server = \"http://{addr}\"\n\n[host.\"http://{addr}\"]\n  \
             capabilities = [\"pull\", \"resolve\", \"push\"]\n  skip_verify = true\n"
        );
        write_file(
            &self.hosts_dir().join(addr).join("hosts.toml"),
            toml.as_bytes(),
        )
    }

    /// containerd's stdout+stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// PID of the running containerd.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident set size of containerd in KiB (VmRSS from /proc/PID/status).
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("containerd not running"))?;
        rss_kib_of(pid)
    }

    /// Runs `ctr --address SOCK args...` and returns its output.
    pub fn ctr<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.ctr_command();
        cmd.args(args);
        cmd.output().with_context(|| format!("run {cmd:?}"))
    }

    /// A `ctr --address SOCK` command with stdin closed, for callers that want to
    /// add arguments or time it themselves.
    pub fn ctr_command(&self) -> Command {
        let mut cmd = Command::new(CTR_BIN);
        cmd.arg("--address").arg(self.socket()).stdin(Stdio::null());
        cmd
    }

    /// Like [`Containerd::ctr`] but fails (with stdout, stderr and the containerd log
    /// tail) on a non-zero exit; returns stdout.
    pub fn ctr_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let out = self.ctr(&args)?;
        stdout_if_ok("ctr", &args, out, || tail(&self.log(), 40), "containerd")
    }

    /// `ctr images ls` parsed into (name, digest) pairs.
    pub fn images(&self) -> Result<Vec<(String, String)>> {
        let out = self.ctr_ok(["images", "ls"])?;
        Ok(parse_images_ls(&out))
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
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// Parses `ctr images ls` output (REF TYPE DIGEST SIZE PLATFORMS LABELS) into
/// (ref, digest) pairs.
pub fn parse_images_ls(out: &str) -> Vec<(String, String)> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?;
            let _type = f.next()?;
            let digest = f.next()?;
            Some((name.to_string(), digest.to_string()))
        })
        .collect()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.terminate();
        crate::daemon::delete_containers(&self.runc_root());
        sweep_dir(self.dir.path());
        if std::thread::panicking() {
            eprintln!(
                "containerd log ({}):\n{}",
                self.log_path().display(),
                tail(&self.log(), 100)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ls() {
        let out = "REF TYPE DIGEST SIZE PLATFORMS LABELS \n\
                   127.0.0.1:5000/busybox:1 application/vnd.oci.image.manifest.v1+json \
                   sha256:abc 1.1 MiB linux/amd64 -\n";
        assert_eq!(
            parse_images_ls(out),
            vec![("127.0.0.1:5000/busybox:1".into(), "sha256:abc".into())]
        );
    }

    #[test]
    fn start_stop_cleans_up() {
        let c = Containerd::start().unwrap();
        let dir = c.dir().to_path_buf();
        let out = c.ctr_ok(["version"]).unwrap();
        assert!(out.contains("Server:"), "{out}");
        assert!(c.rss_kib().unwrap() > 1000);
        let cfg = std::fs::read_to_string(c.config_path()).unwrap();
        assert!(cfg.contains("\"io.containerd.grpc.v1.cri\""), "{cfg}");
        assert!(c.images().unwrap().is_empty());
        assert!(c
            .ctr_ok(["images", "pull", "--plain-http", "127.0.0.1:1/x:1"])
            .is_err());
        let pid = c.pid().unwrap();
        drop(c);
        assert!(!dir.exists());
        assert!(rss_kib_of(pid).is_err(), "containerd {pid} still running");
    }
}
