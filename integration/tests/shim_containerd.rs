//! Debian's containerd 1.6 drives `berth-shim` as a runtime: the shim is installed as
//! `containerd-shim-berth-v2` on containerd's PATH and selected with
//! `ctr run --runtime io.containerd.berth.v2`. This proves the shim speaks the shim v2
//! protocol (task v2 over ttrpc, the `start`/`delete` conventions, events) as
//! containerd expects it.
//!
//! Needs root, runc and containerd; `cargo build -p berth-shim` first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use integration::containerd::{Containerd, ContainerdOpts};
use integration::daemon::bin_path;
use integration::fixtures;

const RUNTIME: &str = "io.containerd.berth.v2";
const IMAGE: &str = "docker.io/library/busybox:latest";

/// Shim binary dir, socket dir and runc root for one containerd.
struct ShimEnv {
    dir: tempfile::TempDir,
}

impl ShimEnv {
    fn new() -> Result<Self> {
        let shim = bin_path("berth-shim")?;
        // Short: the socket path (dir + 64 hex chars) must fit in 108 bytes.
        let dir = tempfile::Builder::new().prefix("bshim").tempdir()?;
        std::fs::create_dir_all(dir.path().join("bin"))?;
        std::os::unix::fs::symlink(&shim, dir.path().join("bin/containerd-shim-berth-v2"))?;
        Ok(ShimEnv { dir })
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("s")
    }

    fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc")
    }

    fn opts(&self) -> ContainerdOpts {
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        ContainerdOpts {
            env: vec![
                ("PATH".into(), path),
                (
                    "BERTH_SHIM_SOCKET_DIR".into(),
                    self.socket_dir().display().to_string(),
                ),
                (
                    "BERTH_SHIM_RUNC_ROOT".into(),
                    self.runc_root().display().to_string(),
                ),
            ],
            ..Default::default()
        }
    }
}

impl Drop for ShimEnv {
    /// Whatever a failed test left running: containers first (they are not below the
    /// containerd dir, so its harness cannot find them), then shims.
    fn drop(&mut self) {
        let root = self.runc_root().join("default");
        if let Ok(out) = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", id])
                    .output();
            }
        }
        for pid in shim_pids(self.dir.path()) {
            // SAFETY: plain kill(2).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// `berth-shim` processes whose command line mentions `needle` (the socket dir).
fn shim_pids(needle: &Path) -> Vec<i32> {
    let needle = needle.to_string_lossy().into_owned();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("berth-shim") && cmd.contains(&needle) {
            v.push(pid);
        }
    }
    v
}

fn start() -> Result<(ShimEnv, Containerd)> {
    let env = ShimEnv::new()?;
    let c = Containerd::start_with(env.opts())?;
    let img = fixtures::busybox()?;
    let tar = c.dir().join("busybox.tar");
    fixtures::write_oci_archive(&img.layout_dir, &tar)?;
    c.ctr_ok([
        "images",
        "import",
        "--base-name",
        "docker.io/library/busybox",
        tar.to_str().context("tar path")?,
    ])?;
    let images = c.images()?;
    ensure!(images.iter().any(|(n, _)| n == IMAGE), "{images:?}");
    Ok((env, c))
}

/// `ctr task ls` as (id, pid, status).
fn tasks(c: &Containerd) -> Result<Vec<(String, String, String)>> {
    let out = c.ctr_ok(["task", "ls"])?;
    Ok(out
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
        })
        .collect())
}

fn task_status(c: &Containerd, id: &str) -> Result<Option<String>> {
    Ok(tasks(c)?.into_iter().find(|t| t.0 == id).map(|t| t.2))
}

fn wait_status(c: &Containerd, id: &str, want: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = task_status(c, id)?;
        if st.as_deref() == Some(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("task {id}: status {st:?}, want {want}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_no_shim(env: &ShimEnv) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = shim_pids(env.dir.path());
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("shim processes left: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_d(c: &Containerd, id: &str, extra: &[&str], cmd: &[&str]) -> Result<()> {
    let mut args = vec!["run", "-d", "--runtime", RUNTIME];
    args.extend_from_slice(extra);
    args.push(IMAGE);
    args.push(id);
    args.extend_from_slice(cmd);
    c.ctr_ok(&args)?;
    Ok(())
}

#[test]
fn ctr_run_rm_prints_hello() -> Result<()> {
    let (env, c) = start()?;
    let out = c.ctr_ok([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "hello1",
        "echo",
        "hello",
    ])?;
    ensure!(out.trim() == "hello", "ctr run output: {out:?}");

    // Exit codes come back through Wait.
    let out = c.ctr([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "exit3",
        "sh",
        "-c",
        "echo bye; exit 3",
    ])?;
    ensure!(
        out.status.code() == Some(3),
        "status {:?}, stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(String::from_utf8_lossy(&out.stdout).trim() == "bye");

    // --rm removed everything and the shims exited.
    ensure!(tasks(&c)?.is_empty(), "{:?}", tasks(&c)?);
    let containers = c.ctr_ok(["containers", "ls", "-q"])?;
    ensure!(containers.trim().is_empty(), "{containers}");
    wait_no_shim(&env)?;
    Ok(())
}

#[test]
fn ctr_detached_task_lifecycle() -> Result<()> {
    let (env, c) = start()?;
    run_d(&c, "sleeper", &[], &["sleep", "1000"])?;
    wait_status(&c, "sleeper", "RUNNING")?;
    let pid: i32 = tasks(&c)?
        .into_iter()
        .find(|t| t.0 == "sleeper")
        .context("no task")?
        .1
        .parse()?;
    ensure!(pid > 1);

    // The shim wrote its address and pid into the bundle.
    let bundle = c
        .state()
        .join("io.containerd.runtime.v2.task/default/sleeper");
    let address = std::fs::read_to_string(bundle.join("address"))?;
    ensure!(
        address.starts_with(&format!("unix://{}/", env.socket_dir().display())),
        "{address}"
    );
    let shim_pid: i32 = std::fs::read_to_string(bundle.join("shim.pid"))?
        .trim()
        .parse()?;
    ensure!(shim_pids(env.dir.path()) == vec![shim_pid]);

    // Exec, with output and exit code.
    let out = c.ctr([
        "task",
        "exec",
        "--exec-id",
        "e1",
        "sleeper",
        "sh",
        "-c",
        "echo in-exec; exit 4",
    ])?;
    ensure!(out.status.code() == Some(4), "exec status {:?}", out.status);
    ensure!(String::from_utf8_lossy(&out.stdout).trim() == "in-exec");

    // Pids, pause/resume, metrics (cgroup stats).
    let ps = c.ctr_ok(["task", "ps", "sleeper"])?;
    ensure!(ps.contains(&pid.to_string()), "{ps}");
    c.ctr_ok(["task", "pause", "sleeper"])?;
    wait_status(&c, "sleeper", "PAUSED")?;
    c.ctr_ok(["task", "resume", "sleeper"])?;
    wait_status(&c, "sleeper", "RUNNING")?;
    let metrics = c.ctr_ok(["task", "metrics", "sleeper"])?;
    ensure!(metrics.contains("memory.usage_in_bytes"), "{metrics}");

    // busybox sleep as PID 1 ignores SIGTERM: SIGKILL.
    c.ctr_ok(["task", "kill", "-s", "SIGKILL", "sleeper"])?;
    wait_status(&c, "sleeper", "STOPPED")?;
    c.ctr_ok(["task", "delete", "sleeper"])?;
    ensure!(task_status(&c, "sleeper")?.is_none());
    c.ctr_ok(["container", "rm", "sleeper"])?;
    wait_no_shim(&env)?;
    ensure!(
        std::fs::read_dir(env.socket_dir())?.count() == 0,
        "socket left in {}",
        env.socket_dir().display()
    );
    Ok(())
}

/// Two containers of one pod (same sandbox-id annotation) share a shim; the shim
/// writes CRI logs itself and reopens them on SIGUSR1; `file://` log URIs work too.
#[test]
fn one_shim_per_pod_and_logs() -> Result<()> {
    let (env, c) = start()?;
    let logs = tempfile::tempdir()?;
    let log_a = logs.path().join("a.log");
    let log_b = logs.path().join("b.log");
    let pod = "--annotation=io.kubernetes.cri.sandbox-id=pod1";
    let uri_a = format!("--log-uri=cri-log://{}", log_a.display());
    let uri_b = format!("--log-uri=file://{}", log_b.display());
    let script = "echo out; echo err >&2; \
                  while [ ! -e /tmp/go ]; do sleep 0.1; done; echo after; sleep 1000";
    run_d(&c, "ctr-a", &[pod, &uri_a], &["sh", "-c", script])?;
    run_d(
        &c,
        "ctr-b",
        &[pod, &uri_b],
        &["sh", "-c", "echo raw-output; sleep 1000"],
    )?;
    wait_status(&c, "ctr-a", "RUNNING")?;
    wait_status(&c, "ctr-b", "RUNNING")?;

    let base = c.state().join("io.containerd.runtime.v2.task/default");
    let addr_a = std::fs::read_to_string(base.join("ctr-a/address"))?;
    let addr_b = std::fs::read_to_string(base.join("ctr-b/address"))?;
    ensure!(addr_a == addr_b, "{addr_a} != {addr_b}");
    let shims = shim_pids(env.dir.path());
    ensure!(shims.len() == 1, "shims: {shims:?}");

    let wait_file = |p: &Path, want: &str| -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = std::fs::read_to_string(p).unwrap_or_default();
            if s.contains(want) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("{} has no {want:?}: {s:?}", p.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let a = wait_file(&log_a, " stderr F err\n")?;
    let a = if a.contains(" stdout F out\n") {
        a
    } else {
        wait_file(&log_a, " stdout F out\n")?
    };
    for line in a.lines() {
        let ts = line.split(' ').next().unwrap_or_default();
        // 2024-01-01T00:00:00.000000000Z
        ensure!(
            ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{line}"
        );
    }
    wait_file(&log_b, "raw-output\n")?;

    // kubelet-style rotation: rename, reopen (SIGUSR1 to the shim), new lines go to
    // the new file.
    let rotated = logs.path().join("a.log.1");
    std::fs::rename(&log_a, &rotated)?;
    // SAFETY: plain kill(2) to the shim we found above.
    unsafe {
        libc::kill(shims[0], libc::SIGUSR1);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log_a.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(log_a.exists(), "log not reopened");
    c.ctr_ok([
        "task",
        "exec",
        "--exec-id",
        "go",
        "ctr-a",
        "touch",
        "/tmp/go",
    ])?;
    let new = wait_file(&log_a, " stdout F after\n")?;
    ensure!(!new.contains(" out\n"), "{new}");
    ensure!(!std::fs::read_to_string(&rotated)?.contains("after"));

    // Deleting one container keeps the shim for the other.
    c.ctr_ok(["task", "kill", "-s", "SIGKILL", "ctr-a"])?;
    wait_status(&c, "ctr-a", "STOPPED")?;
    c.ctr_ok(["task", "delete", "ctr-a"])?;
    c.ctr_ok(["container", "rm", "ctr-a"])?;
    wait_status(&c, "ctr-b", "RUNNING")?;
    ensure!(shim_pids(env.dir.path()) == shims);

    c.ctr_ok(["task", "kill", "-s", "SIGKILL", "ctr-b"])?;
    wait_status(&c, "ctr-b", "STOPPED")?;
    c.ctr_ok(["task", "delete", "ctr-b"])?;
    c.ctr_ok(["container", "rm", "ctr-b"])?;
    wait_no_shim(&env)?;
    Ok(())
}
