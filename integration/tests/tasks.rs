//! End-to-end tasks: a real berthd on temp dirs runs busybox containers
//! through a shim and runc, driven through berthctl. Covers run/ls/kill/rm,
//! foreground runs, and surviving berthd's and a shim's SIGKILL.
//!
//! Each scenario takes the daemon config that selects the shim. The tests
//! here run them with Debian's `containerd-shim-runc-v2` (proving berthd
//! speaks the shim v2 protocol); berth's own shim runs the same scenarios with
//! `BERTH_SHIM` (the default config: `berth-shim` next to berthd).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use integration::daemon::Daemon;
use integration::fixtures;
use integration::registry::{Registry, RegistryOpts};
use integration::util::wait_for;
use serde_json::Value;

const GO_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";
const TIMEOUT: Duration = Duration::from_secs(30);

/// Selects Debian's containerd shim.
fn go_shim() -> String {
    format!("[shim]\nbinary = \"{GO_SHIM}\"\n")
}

/// Selects berth's own shim (the default: `berth-shim` next to berthd).
const BERTH_SHIM: &str = "";

/// A registry with the busybox fixture and a daemon that has pulled it.
fn setup(config: &str) -> Result<(Registry, Daemon, String)> {
    let reg = Registry::start(RegistryOpts::default())?;
    reg.push_layout(fixtures::busybox()?, "busybox:1")?;
    let d = Daemon::start_with_config(config)?;
    let image = format!("{}/busybox:1", reg.addr());
    d.ctl_ok(["images", "pull", "--plain-http", &image])?;
    Ok((reg, d, image))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tasks(d: &Daemon) -> Result<Vec<Value>> {
    let out = d.ctl_ok(["tasks", "ls", "--format", "json"])?;
    serde_json::from_str(&out).with_context(|| format!("bad json: {out}"))
}

fn task(d: &Daemon, name: &str) -> Result<Value> {
    tasks(d)?
        .into_iter()
        .find(|t| t["name"] == name)
        .with_context(|| format!("task {name} not listed"))
}

/// Polls until `name` has left the running state; returns its record.
fn wait_settled(d: &Daemon, name: &str) -> Result<Value> {
    wait_for(&format!("task {name} to exit"), TIMEOUT, || {
        let t = task(d, name)?;
        Ok((t["status"] != "running" && t["status"] != "created").then_some(t))
    })
}

fn run_detached(d: &Daemon, image: &str, name: &str, cmd: &[&str]) -> Result<Value> {
    let mut args = vec!["run", "-d", "--name", name, image, "--"];
    args.extend_from_slice(cmd);
    let id = d.ctl_ok(&args)?;
    let id = id.trim();
    ensure!(
        id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "run -d printed {id:?}"
    );
    let t = task(d, name)?;
    ensure!(t["id"] == id, "{t}");
    ensure!(t["status"] == "running", "{t}");
    Ok(t)
}

fn pid_of(t: &Value) -> Result<i32> {
    let pid = t["pid"].as_i64().with_context(|| format!("no pid: {t}"))?;
    ensure!(pid > 0, "{t}");
    Ok(pid as i32)
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X")
    })
}

fn kill9(pid: i32) {
    // SAFETY: plain kill(2).
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// PIDs of processes whose command line mentions `needle`.
fn pids_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Live shims started for this daemon (whichever binary).
fn shims(d: &Daemon) -> Vec<i32> {
    pids_with(&format!("-address {} ", d.socket_path().display()))
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c).replace('\0', " ");
                    c.contains("-namespace berth ") && !c.ends_with(" start ")
                })
                .unwrap_or(false)
        })
        .collect()
}

fn shim_of(d: &Daemon, id: &str) -> Result<i32> {
    let found: Vec<i32> = shims(d)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c).replace('\0', " ");
                    c.contains(&format!("-id {id} "))
                })
                .unwrap_or(false)
        })
        .collect();
    match found.as_slice() {
        [p] => Ok(*p),
        other => bail!("expected one shim for {id}, found {other:?}"),
    }
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Unix nanoseconds of an RFC 3339 UTC timestamp as berthctl prints it.
fn parse_rfc3339(s: &str) -> Result<i64> {
    let bad = || anyhow::anyhow!("bad timestamp {s:?}");
    let s = s.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = s.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    ensure!(d.len() == 3 && t.len() == 3, "bad timestamp {s:?}");
    let nanos: i64 = format!("{frac:0<9}")[..9].parse().map_err(|_| bad())?;
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1_000_000_000) + nanos)
}

fn snapshot_names(d: &Daemon) -> Result<Vec<String>> {
    Ok(d.ctl_ok(["snapshots", "ls", "-q"])?
        .lines()
        .map(str::to_string)
        .collect())
}

fn memory_cgroup(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.split(':').nth(1) == Some("memory"))
        .and_then(|l| l.split(':').nth(2))
        .unwrap_or_default()
        .to_string()
}

fn run_ls_kill_rm_and_foreground(config: &str) -> Result<()> {
    let (_reg, d, image) = setup(config)?;

    let t = run_detached(&d, &image, "sleeper", &["sleep", "1000"])?;
    let id = t["id"].as_str().unwrap_or_default().to_string();
    let pid = pid_of(&t)?;
    ensure!(alive(pid), "container pid {pid} is not alive");
    // runc got an absolute cgroups path.
    ensure!(
        memory_cgroup(pid) == format!("/berth/{id}"),
        "cgroup {}",
        memory_cgroup(pid)
    );
    // Each task is its own pod with its own shim, under berthd's state dir.
    let shim = shim_of(&d, &id)?;
    ensure!(alive(shim));
    ensure!(d.state().join("pods").join(&id).join("address").is_file());
    ensure!(d
        .state()
        .join("containers")
        .join(&id)
        .join("config.json")
        .is_file());
    ensure!(snapshot_names(&d)?.contains(&id));

    let table = d.ctl_ok(["tasks", "ls"])?;
    let header = table.lines().next().unwrap_or_default();
    for col in ["NAME", "PID", "STATUS", "EXIT CODE"] {
        ensure!(header.contains(col), "{table}");
    }
    ensure!(
        table.contains("sleeper") && table.contains("running") && table.contains(&pid.to_string()),
        "{table}"
    );

    // A running task is not removed without --force; names are unique.
    let err = d.ctl_err(&["tasks", "rm", "sleeper"])?;
    ensure!(err.contains("sleeper") && err.contains("running"), "{err}");
    let err = d.ctl_err(&["run", "-d", "--name", "sleeper", &image, "sleep", "1"])?;
    ensure!(err.contains("already exists"), "{err}");
    let err = d.ctl_err(&["tasks", "kill", "nope"])?;
    ensure!(err.contains("nope") && err.contains("not found"), "{err}");

    // busybox sleep as PID 1 ignores SIGTERM; SIGKILL ends it with 137.
    d.ctl_ok(["tasks", "kill", "-s", "KILL", "sleeper"])?;
    let t = wait_settled(&d, "sleeper")?;
    ensure!(t["status"] == "exited" && t["exitCode"] == 137, "{t}");
    ensure!(t["pid"].is_null() && t["finishedAt"].is_string(), "{t}");
    ensure!(!alive(pid));
    // The pod's last task is gone from its shim: the shim exits.
    // The exit is recorded before the shim is told to delete the task, and the
    // pod's directory goes after the shim: poll for both.
    let pod_dir = d.state().join("pods").join(&id);
    wait_for("the shim to exit and its directory to go", TIMEOUT, || {
        Ok((!alive(shim) && !pod_dir.exists()).then_some(()))
    })?;
    let table = d.ctl_ok(["tasks", "ls"])?;
    ensure!(table.contains("exited") && table.contains("137"), "{table}");
    let err = d.ctl_err(&["tasks", "kill", "sleeper"])?;
    ensure!(err.contains("not running"), "{err}");

    d.ctl_ok(["tasks", "rm", "sleeper"])?;
    ensure!(tasks(&d)?.is_empty());
    ensure!(!d.state().join("containers").join(&id).exists());
    ensure!(!snapshot_names(&d)?.contains(&id));

    // Foreground: output on stdout, the exit code is berthctl's.
    let out = d.ctl(["run", "--name", "hello", &image, "echo", "hi"])?;
    ensure!(
        out.status.code() == Some(0),
        "{:?} {}",
        out.status,
        stderr(&out)
    );
    ensure!(stdout(&out) == "hi\n", "{:?}", stdout(&out));
    let t = task(&d, "hello")?;
    ensure!(t["status"] == "exited" && t["exitCode"] == 0, "{t}");
    let out = d.ctl([
        "run",
        "--rm",
        &image,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ])?;
    ensure!(
        out.status.code() == Some(3),
        "{:?} {}",
        out.status,
        stderr(&out)
    );
    // containerd's runc shim mixes stderr into the raw log file (and, under
    // load, may drop the last stderr line of a task that exits at once), so
    // only stdout is checked here.
    let text = format!("{}{}", stdout(&out), stderr(&out));
    ensure!(text.contains("out\n"), "{text:?}");
    // --rm: only `hello` is left.
    let names: Vec<String> = tasks(&d)?
        .iter()
        .map(|t| t["name"].as_str().unwrap_or_default().to_string())
        .collect();
    ensure!(names == ["hello"], "{names:?}");

    // The image's Cmd runs when none is given; env and the image's user apply.
    let out = d.ctl([
        "run",
        "--rm",
        "-e",
        "GREETING=hey",
        &image,
        "sh",
        "-c",
        "echo $GREETING $(id -u) $(hostname)",
    ])?;
    ensure!(out.status.success(), "{}", stderr(&out));
    ensure!(stdout(&out).starts_with("hey 0 "), "{:?}", stdout(&out));

    // rm --force kills first.
    run_detached(&d, &image, "doomed", &["sleep", "1000"])?;
    d.ctl_ok(["tasks", "rm", "--force", "doomed", "hello"])?;
    ensure!(tasks(&d)?.is_empty());
    wait_for("all shims to exit", TIMEOUT, || {
        Ok(shims(&d).is_empty().then_some(()))
    })?;
    Ok(())
}

/// The numbers a counting task logged, in order (raw lines, or CRI log lines
/// whose content is the last field).
fn counter_lines(log: &Path) -> Result<Vec<u64>> {
    let text = std::fs::read_to_string(log)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect())
}

fn tasks_survive_a_berthd_kill9(config: &str) -> Result<()> {
    let (_reg, mut d, image) = setup(config)?;
    let mut before = Vec::new();
    for i in 0..4 {
        before.push(run_detached(
            &d,
            &image,
            &format!("s{i}"),
            &["sleep", "1000"],
        )?);
    }
    // The fifth counts, so its log can be checked for a gap.
    before.push(run_detached(
        &d,
        &image,
        "counter",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done",
        ],
    )?);
    let log = PathBuf::from(before[4]["logPath"].as_str().context("no log path")?);
    d.kill9()?;
    std::thread::sleep(Duration::from_millis(500));
    for t in &before {
        ensure!(alive(pid_of(t)?), "{t} died with berthd");
    }
    d.restart()?;

    let after = tasks(&d)?;
    ensure!(after.len() == 5, "{after:?}");
    for t in &before {
        let name = t["name"].as_str().unwrap_or_default();
        let now = task(&d, name)?;
        ensure!(now["status"] == "running", "{now}");
        ensure!(now["pid"] == t["pid"], "{now} vs {t}");
    }
    std::thread::sleep(Duration::from_millis(500));

    // Killable and removable after the restart.
    d.ctl_ok(["tasks", "kill", "-s", "KILL", "s0"])?;
    let t = wait_settled(&d, "s0")?;
    ensure!(t["exitCode"] == 137, "{t}");
    d.ctl_ok(["tasks", "kill", "-s", "KILL", "counter"])?;
    wait_settled(&d, "counter")?;
    let counted = counter_lines(&log)?;
    ensure!(counted.len() > 5, "{counted:?}");
    for (i, n) in counted.iter().enumerate() {
        ensure!(*n == i as u64, "the log has a gap at line {i}: {counted:?}");
    }
    d.ctl_ok(["tasks", "rm", "-f", "s0", "s1", "s2", "s3", "counter"])?;
    ensure!(tasks(&d)?.is_empty());
    wait_for("all shims to exit", TIMEOUT, || {
        Ok(shims(&d).is_empty().then_some(()))
    })?;
    for t in &before {
        ensure!(!alive(pid_of(t)?), "{t} still runs");
    }
    Ok(())
}

fn exits_while_berthd_is_down_are_collected(config: &str) -> Result<()> {
    let (_reg, mut d, image) = setup(config)?;
    let a = run_detached(&d, &image, "a", &["sleep", "1000"])?;
    let b = run_detached(&d, &image, "b", &["sleep", "1000"])?;
    run_detached(&d, &image, "c", &["sleep", "1000"])?;
    let seven = run_detached(&d, &image, "seven", &["sh", "-c", "sleep 2; exit 7"])?;
    d.kill9()?;

    let killed_from = now_nanos();
    kill9(pid_of(&a)?);
    kill9(pid_of(&b)?);
    let seven_pid = pid_of(&seven)?;
    wait_for("the containers to die", TIMEOUT, || {
        Ok((!alive(pid_of(&a)?) && !alive(pid_of(&b)?) && !alive(seven_pid)).then_some(()))
    })?;
    // A zombie counts as dead above; its shim reaps it and stamps the time just after.
    std::thread::sleep(Duration::from_millis(300));
    let died_by = now_nanos();
    d.restart()?;

    for name in ["a", "b"] {
        let t = task(&d, name)?;
        ensure!(t["status"] == "exited" && t["exitCode"] == 137, "{t}");
        let at = parse_rfc3339(t["finishedAt"].as_str().context("no finishedAt")?)?;
        ensure!(
            at >= killed_from - 1_000_000 && at <= died_by + 1_000_000,
            "{name} finished at {at}, killed between {killed_from} and {died_by}"
        );
    }
    let t = task(&d, "seven")?;
    ensure!(t["status"] == "exited" && t["exitCode"] == 7, "{t}");
    let at = parse_rfc3339(t["finishedAt"].as_str().context("no finishedAt")?)?;
    ensure!(at <= died_by + 1_000_000, "{t}");
    ensure!(task(&d, "c")?["status"] == "running");
    // The shims of the exited ones are gone; c's stays.
    wait_for("the exited tasks' shims to exit", TIMEOUT, || {
        Ok((shims(&d).len() == 1).then_some(()))
    })?;
    d.ctl_ok(["tasks", "rm", "-f", "a", "b", "c", "seven"])?;
    ensure!(tasks(&d)?.is_empty());
    Ok(())
}

fn a_dead_shim_is_noticed_and_cleaned_up(config: &str) -> Result<()> {
    let (_reg, mut d, image) = setup(config)?;
    let victim = run_detached(&d, &image, "victim", &["sleep", "1000"])?;
    let other = run_detached(&d, &image, "other", &["sleep", "1000"])?;
    let id = victim["id"].as_str().unwrap_or_default().to_string();
    let shim = shim_of(&d, &id)?;
    kill9(shim);

    let t = wait_settled(&d, "victim")?;
    ensure!(t["status"] == "exited" || t["status"] == "unknown", "{t}");
    ensure!(
        t["reason"].as_str().is_some_and(|r| r.contains("shim")),
        "{t}"
    );
    // The runtime was asked: the orphaned container is gone too.
    wait_for("the orphaned container to go", TIMEOUT, || {
        Ok((!alive(pid_of(&victim)?)).then_some(()))
    })?;
    ensure!(task(&d, "other")?["status"] == "running");
    let err = d.ctl_err(&["tasks", "kill", "victim"])?;
    ensure!(err.contains("not running"), "{err}");
    d.ctl_ok(["tasks", "rm", "victim"])?;
    ensure!(!d.state().join("containers").join(&id).exists());
    ensure!(!d.state().join("pods").join(&id).exists());

    // The same with berthd down: a shim killed meanwhile is settled on start.
    let other_id = other["id"].as_str().unwrap_or_default().to_string();
    let other_shim = shim_of(&d, &other_id)?;
    d.kill9()?;
    kill9(other_shim);
    d.restart()?;
    let t = task(&d, "other")?;
    ensure!(t["status"] == "exited" || t["status"] == "unknown", "{t}");
    ensure!(!alive(pid_of(&other)?));
    d.ctl_ok(["tasks", "rm", "other"])?;
    ensure!(tasks(&d)?.is_empty());
    ensure!(shims(&d).is_empty());
    Ok(())
}

// containerd-shim-runc-v2 (task API v2, plain-address start reply, file:// stdio).

#[test]
fn go_shim_run_ls_kill_rm_and_foreground() -> Result<()> {
    run_ls_kill_rm_and_foreground(&go_shim())
}

#[test]
fn go_shim_tasks_survive_a_berthd_kill9() -> Result<()> {
    tasks_survive_a_berthd_kill9(&go_shim())
}

#[test]
fn go_shim_exits_while_berthd_is_down_are_collected() -> Result<()> {
    exits_while_berthd_is_down_are_collected(&go_shim())
}

#[test]
fn go_shim_a_dead_shim_is_noticed_and_cleaned_up() -> Result<()> {
    a_dead_shim_is_noticed_and_cleaned_up(&go_shim())
}

// berth-shim (bootstrap parameters on stdin, its own socket dir, cri-log://
// stdio). Ignored until the shim issue lands it; run with `-- --ignored`.

#[test]
fn berth_shim_run_ls_kill_rm_and_foreground() -> Result<()> {
    run_ls_kill_rm_and_foreground(BERTH_SHIM)
}

#[test]
fn berth_shim_tasks_survive_a_berthd_kill9() -> Result<()> {
    tasks_survive_a_berthd_kill9(BERTH_SHIM)
}

#[test]
fn berth_shim_exits_while_berthd_is_down_are_collected() -> Result<()> {
    exits_while_berthd_is_down_are_collected(BERTH_SHIM)
}

#[test]
fn berth_shim_a_dead_shim_is_noticed_and_cleaned_up() -> Result<()> {
    a_dead_shim_is_noticed_and_cleaned_up(BERTH_SHIM)
}
