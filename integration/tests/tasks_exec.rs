//! End-to-end `berthctl tasks exec` (the task service's ExecSync): a real
//! berthd runs a busybox task through a shim and runc, and commands are run
//! in it: output and exit codes, the output cap, the timeout (the command is
//! killed and reaped), a command that does not exist, a task that is not
//! running. Run with Debian's `containerd-shim-runc-v2` and with berth-shim.

use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use integration::daemon::Daemon;
use integration::fixtures;
use integration::registry::{Registry, RegistryOpts};
use integration::util::wait_for;
use serde_json::Value;

const GO_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";
const TIMEOUT: Duration = Duration::from_secs(30);

fn go_shim() -> String {
    format!("[shim]\nbinary = \"{GO_SHIM}\"\n")
}

/// berth's own shim (the default: `berth-shim` next to berthd).
const BERTH_SHIM: &str = "";

fn setup(config: &str) -> Result<(Registry, Daemon, String)> {
    let reg = Registry::start(RegistryOpts::default())?;
    reg.push_layout(fixtures::busybox()?, "busybox:1")?;
    let d = Daemon::start_with_config(config)?;
    let image = format!("{}/busybox:1", reg.addr());
    d.ctl_ok(["images", "pull", "--plain-http", &image])?;
    Ok((reg, d, image))
}

fn task(d: &Daemon, name: &str) -> Result<Value> {
    let out = d.ctl_ok(["tasks", "ls", "--format", "json"])?;
    let tasks: Vec<Value> =
        serde_json::from_str(&out).with_context(|| format!("bad json: {out}"))?;
    tasks
        .into_iter()
        .find(|t| t["name"] == name)
        .with_context(|| format!("task {name} not listed"))
}

fn exec(d: &Daemon, args: &[&str]) -> Result<Output> {
    let mut a = vec!["tasks", "exec"];
    a.extend_from_slice(args);
    d.ctl(&a)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X")
    })
}

/// PIDs of live processes whose command line is exactly `cmdline`.
fn pids_running(cmdline: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let c = String::from_utf8_lossy(&c).replace('\0', " ");
        if c.trim_end() == cmdline && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Nothing of finished execs is left in berthd's state dir.
fn no_exec_leftovers(d: &Daemon) -> Result<()> {
    let dir = d.state().join("exec");
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        left.is_empty(),
        "exec leftovers in {}: {left:?}",
        dir.display()
    );
    Ok(())
}

/// `sleep_arg` is unique per test, so that the check for a left-over `sleep`
/// cannot see another test's.
fn exec_sync(config: &str, sleep_arg: &str) -> Result<()> {
    let (_reg, d, image) = setup(config)?;
    d.ctl_ok([
        "run",
        "-d",
        "--name",
        "t",
        "-e",
        "EXEC_TEST=yes",
        &image,
        "--",
        "sleep",
        "1000",
    ])?;

    // Output and exit codes, stdout and stderr apart.
    let o = exec(&d, &["t", "echo", "hi"])?;
    ensure!(o.status.code() == Some(0), "{o:?}");
    ensure!(text(&o.stdout) == "hi\n", "{o:?}");
    ensure!(o.stderr.is_empty(), "{o:?}");
    let o = exec(
        &d,
        &["t", "--", "sh", "-c", "echo out; echo err >&2; exit 3"],
    )?;
    ensure!(o.status.code() == Some(3), "{o:?}");
    ensure!(text(&o.stdout) == "out\n", "{o:?}");
    ensure!(text(&o.stderr) == "err\n", "{o:?}");
    // The task's own environment and working directory.
    let o = exec(&d, &["t", "sh", "-c", "echo $EXEC_TEST; pwd"])?;
    ensure!(o.status.success(), "{o:?}");
    ensure!(text(&o.stdout) == "yes\n/\n", "{o:?}");

    // 20 MiB of output with a 1000-byte cap: cut, drained, no hang.
    let started = Instant::now();
    let o = exec(
        &d,
        &[
            "--output-limit",
            "1000",
            "t",
            "sh",
            "-c",
            "head -c 20971520 /dev/zero; echo done >&2",
        ],
    )?;
    ensure!(o.status.code() == Some(0), "{o:?}");
    ensure!(o.stdout.len() == 1000 && o.stdout.iter().all(|b| *b == 0));
    let err = text(&o.stderr);
    ensure!(
        err.starts_with("done\n") && err.contains("truncated"),
        "{err:?}"
    );
    ensure!(started.elapsed() < TIMEOUT, "took {:?}", started.elapsed());
    // Without a cap from the client, the daemon's (16 MiB) applies.
    let o = exec(&d, &["t", "sh", "-c", "head -c 20971520 /dev/zero"])?;
    ensure!(o.status.code() == Some(0), "{:?}", o.status);
    ensure!(o.stdout.len() == 16 << 20, "{}", o.stdout.len());

    // A command still running at the deadline is killed and reaped.
    let started = Instant::now();
    let o = exec(&d, &["--timeout", "1", "t", "sleep", sleep_arg])?;
    let took = started.elapsed();
    ensure!(o.status.code() == Some(124), "{o:?}");
    let err = text(&o.stderr);
    ensure!(
        err.contains(&format!("sleep {sleep_arg}")) && err.contains("task t") && err.contains("1s"),
        "{err:?}"
    );
    ensure!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(15),
        "took {took:?}"
    );
    ensure!(
        pids_running(&format!("sleep {sleep_arg}")).is_empty(),
        "the timed-out exec is still running"
    );
    let t = task(&d, "t")?;
    ensure!(t["status"] == "running", "{t}");

    // A command the container does not have: the runtime's error, naming it.
    let err = d.ctl_err(&["tasks", "exec", "t", "no-such-command", "x"])?;
    ensure!(err.contains("no-such-command"), "{err}");
    let err = d.ctl_err(&["tasks", "exec", "nope", "true"])?;
    ensure!(err.contains("nope") && err.contains("not found"), "{err}");
    let err = d.ctl_err(&["tasks", "exec", "t", ""])?;
    ensure!(err.contains("command"), "{err}");
    no_exec_leftovers(&d)?;

    // Several at once.
    let outs: Vec<Result<Output>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let d = &d;
                s.spawn(move || exec(d, &["t", "sh", "-c", &format!("echo {i}")]))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("exec thread panicked")))
            })
            .collect()
    });
    for (i, o) in outs.into_iter().enumerate() {
        let o = o?;
        ensure!(
            o.status.success() && text(&o.stdout) == format!("{i}\n"),
            "{o:?}"
        );
    }
    no_exec_leftovers(&d)?;

    // A caller that goes away (berthctl killed mid-exec, which cancels the
    // RPC) leaves nothing running.
    let gone_arg = format!("{sleep_arg}9");
    let mut child = std::process::Command::new(integration::daemon::bin_path("berthctl")?)
        .arg("--address")
        .arg(d.socket_path())
        .args(["tasks", "exec", "t", "sleep", &gone_arg])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let gone_cmd = format!("sleep {gone_arg}");
    let found = wait_for("the exec to start", TIMEOUT, || {
        Ok((!pids_running(&gone_cmd).is_empty()).then_some(()))
    });
    child.kill()?;
    child.wait()?;
    found?;
    wait_for("the abandoned exec to be killed", TIMEOUT, || {
        Ok(pids_running(&gone_cmd).is_empty().then_some(()))
    })?;
    wait_for("the abandoned exec's FIFOs to go", TIMEOUT, || {
        Ok(no_exec_leftovers(&d).is_ok().then_some(()))
    })?;
    let t = task(&d, "t")?;
    ensure!(t["status"] == "running", "{t}");

    // A task that is not running.
    d.ctl_ok(["tasks", "kill", "t"])?;
    wait_for("t to exit", TIMEOUT, || {
        let t = task(&d, "t")?;
        Ok((t["status"] == "exited").then_some(()))
    })?;
    let err = d.ctl_err(&["tasks", "exec", "t", "true"])?;
    ensure!(err.contains("not running"), "{err}");
    d.ctl_ok(["tasks", "rm", "t"])?;
    no_exec_leftovers(&d)?;
    Ok(())
}

#[test]
fn go_shim_exec_sync() -> Result<()> {
    exec_sync(&go_shim(), "3217")
}

#[test]
fn berth_shim_exec_sync() -> Result<()> {
    exec_sync(BERTH_SHIM, "3218")
}
