//! Issue 14, finding 1: a local user floods berthd's streaming port (any user
//! can reach 127.0.0.1) with 20,000 connections, idle ones and slowloris ones,
//! from an unprivileged uid. Throughout, the CRI keeps answering a normal
//! client within its deadline, an exec through the streaming server (a
//! WebSocket client that is not berth's) still works, and berthd's fds and RSS
//! stay under the bounds the README documents; a slowloris connection is
//! closed at the request deadline; once the flood stops, the fds come back.
//!
//! `make test` runs the version with a tonic client and Python's WebSocket
//! client; `make conformance` runs the one with the upstream crictl
//! (`--ignored`, it needs ../shared/conformance).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use berth_api::runtime::v1 as api;
use integration::cri::{self, Env};
use integration::crictl::{crictl_bin, Crictl};
use serde_json::Value;

/// Debian's interpreter (python3-websocket is installed for it).
const PYTHON: &str = "/usr/bin/python3";
/// The flood: connections held at once, of which slowloris.
const CONNECTIONS: usize = 20_000;
/// Slowloris connections, from a uid of their own (65533) so that only the
/// request deadline closes them, not the flood's evictions.
const SLOWLORIS: usize = 50;
/// How long the checks run under the flood: past the request deadline
/// (10 s by default), so that every slowloris connection has met it.
const UNDER_FLOOD: Duration = Duration::from_secs(20);
/// A normal client's deadline for one CRI call (crictl's default is 2 s).
const CALL_DEADLINE: Duration = Duration::from_secs(2);
/// An exec session through the streaming server (URL, upgrade, streams, the
/// command's run and exit) by crictl.
const EXEC_DEADLINE: Duration = Duration::from_secs(10);
/// The documented bounds (README, "Limits"): fds at most `max_connections`
/// (1024 by default) over berthd's own, RSS at most 64 MiB over its idle RSS.
const FD_BOUND_OVER_BASELINE: usize = 1024 + 64;
const RSS_BOUND_OVER_BASELINE_KIB: u64 = 64 << 10;

/// One test at a time: each floods the loopback.
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/streaming")
        .join(name)
}

fn fd_count(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing berthd's fds (pid {pid})"))?
        .count())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/<pid>/status")
}

/// Flood processes (tests/streaming/flood.py) and their latest reports.
/// Several, because one process may not hold 20,000 fds (the hard
/// RLIMIT_NOFILE can be 20,000, as on the CI machine).
struct Flood {
    children: Vec<Child>,
    latest: Vec<Arc<Mutex<Value>>>,
}

impl Flood {
    /// Idle connections in two processes, slowloris ones in a third (its
    /// reports then come on time however busy the idle ones are), as
    /// another user.
    fn start(port: u16) -> Result<Flood> {
        let mut flood = Flood {
            children: Vec::new(),
            latest: Vec::new(),
        };
        let idle = (CONNECTIONS - SLOWLORIS) / 2;
        for (connections, slowloris, uid) in [
            (idle, 0, "65534"),
            (idle, 0, "65534"),
            (SLOWLORIS, SLOWLORIS, "65533"),
        ] {
            let mut child = Command::new(PYTHON)
                .arg(script("flood.py"))
                .args(["127.0.0.1", &port.to_string()])
                .args(["--connections", &connections.to_string()])
                .args(["--slowloris", &slowloris.to_string()])
                .args(["--uid", uid])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting the flood")?;
            let latest = Arc::new(Mutex::new(Value::Null));
            let out = child.stdout.take().context("flood stdout")?;
            let l = latest.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        *l.lock().unwrap_or_else(|e| e.into_inner()) = v;
                    }
                }
            });
            flood.children.push(child);
            flood.latest.push(latest);
        }
        Ok(flood)
    }

    /// A counter summed over the processes (the maximum for ages).
    fn stat(&self, key: &str) -> u64 {
        let values = self.latest.iter().map(|l| {
            l.lock().unwrap_or_else(|e| e.into_inner())[key]
                .as_f64()
                .unwrap_or(0.0) as u64
        });
        if key.ends_with("_age") {
            values.max().unwrap_or(0)
        } else {
            values.sum()
        }
    }

    fn report(&self) -> String {
        let keys = [
            "open",
            "opened",
            "closed",
            "errors",
            "slow_closed",
            "slow_open",
            "slow_max_age",
        ];
        let parts: Vec<String> = keys
            .iter()
            .map(|k| format!("{k} {}", self.stat(k)))
            .collect();
        parts.join(", ")
    }

    /// Until the attacker has made its 20,000 connections.
    fn wait_opened(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.stat("opened") < CONNECTIONS as u64 {
            for c in &mut self.children {
                if let Some(st) = c.try_wait()? {
                    bail!("a flood process exited early ({st}): {}", self.report());
                }
            }
            ensure!(
                Instant::now() < deadline,
                "the flood made too few connections in 120 s: {}",
                self.report()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The streaming server's port, from an exec URL.
fn port_of(url: &str) -> Result<u16> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("exec URL {url}"))?;
    let hostport = rest.split('/').next().unwrap_or_default();
    hostport
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {url}"))
}

async fn exec_url(rt: &mut cri::Rt, c: &str, cmd: &[&str]) -> Result<String> {
    Ok(rt
        .exec(api::ExecRequest {
            container_id: c.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .url)
}

/// An exec through the streaming server by Python's WebSocket client.
fn ws_exec(url: &str) -> Result<String> {
    let out = Command::new(PYTHON)
        .arg(script("k8s_ws.py"))
        .args(["exec", url, "v4.channel.k8s.io"])
        .output()
        .context("running the python websocket client")?;
    ensure!(
        out.status.success(),
        "websocket exec failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["stdout"].as_str().unwrap_or_default().to_string())
}

/// Peak fds and RSS seen while sampling.
#[derive(Default)]
struct Peak {
    fds: usize,
    rss_kib: u64,
}

impl Peak {
    fn sample(&mut self, pid: u32) -> Result<()> {
        self.fds = self.fds.max(fd_count(pid)?);
        self.rss_kib = self.rss_kib.max(rss_kib(pid)?);
        Ok(())
    }
}

/// A berthd with its default streaming limits and one running container.
struct Target {
    env: Env,
    rt: cri::Rt,
    pod: String,
    ctr: String,
    pid: u32,
    port: u16,
}

impl Target {
    async fn start() -> Result<Target> {
        let env = Env::start()?;
        let mut rt = env.rt().await?;
        let pod_cfg = env.pod(&cri::unique("flood"))?;
        let pod = env.run_pod(&mut rt, &pod_cfg).await?;
        let ctr = env
            .create_start(
                &mut rt,
                &pod,
                &pod_cfg,
                &env.container("c", &["sleep", "3600"]),
            )
            .await?;
        let url = exec_url(&mut rt, &ctr, &["true"]).await?;
        let port = port_of(&url)?;
        let pid = env.d().pid().context("berthd's pid")?;
        Ok(Target {
            env,
            rt,
            pod,
            ctr,
            pid,
            port,
        })
    }

    /// Runs `check` repeatedly under the flood for [`UNDER_FLOOD`], then
    /// checks the bounds and that the fds come back once it stops.
    async fn under_flood<F>(&mut self, mut check: F) -> Result<()>
    where
        F: FnMut(
            &mut Target,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + '_>>,
    {
        // Settle, then the baseline.
        check(self).await.context("before the flood")?;
        let base_fds = fd_count(self.pid)?;
        let base_rss = rss_kib(self.pid)?;
        let mut flood = Flood::start(self.port)?;
        flood.wait_opened()?;
        let mut peak = Peak::default();
        let t0 = Instant::now();
        let mut rounds = 0;
        while t0.elapsed() < UNDER_FLOOD {
            peak.sample(self.pid)?;
            check(self)
                .await
                .with_context(|| format!("under the flood ({})", flood.report()))?;
            rounds += 1;
        }
        peak.sample(self.pid)?;
        let report = flood.report();
        eprintln!(
            "flood: {report}; berthd fds {base_fds} -> peak {}, RSS {base_rss} KiB -> peak {} KiB, {rounds} rounds of checks",
            peak.fds, peak.rss_kib
        );
        ensure!(
            peak.fds <= base_fds + FD_BOUND_OVER_BASELINE,
            "berthd's fds reached {} (baseline {base_fds}, bound +{FD_BOUND_OVER_BASELINE})",
            peak.fds
        );
        ensure!(
            peak.rss_kib <= base_rss + RSS_BOUND_OVER_BASELINE_KIB,
            "berthd's RSS reached {} KiB (baseline {base_rss} KiB, bound +{RSS_BOUND_OVER_BASELINE_KIB} KiB)",
            peak.rss_kib
        );
        // Every slowloris connection meets the 10 s request deadline, and
        // not much before (its own uid is under its per-peer bound).
        ensure!(
            flood.stat("slow_closed") >= SLOWLORIS as u64,
            "slowloris connections were not closed at the request deadline: {report}"
        );
        ensure!(
            flood.stat("slow_max_age") <= 10 + 3,
            "a slowloris connection outlived the 10 s request deadline: {report}"
        );
        // Killed (Drop): a loop of 10,000 busy tasks is slow to wind down.
        drop(flood);
        // The fds come back once the attacker lets go.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let fds = fd_count(self.pid)?;
            if fds <= base_fds + 16 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "berthd still holds {fds} fds 30 s after the flood (baseline {base_fds})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        check(self).await.context("after the flood")?;
        Ok(())
    }

    async fn finish(mut self) -> Result<()> {
        let pod = self.pod.clone();
        self.env.stop_remove_pod(&mut self.rt, &pod).await
    }
}

async fn with_deadline<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let t = Instant::now();
    match tokio::time::timeout(CALL_DEADLINE, f).await {
        Ok(r) => r.with_context(|| format!("{what} after {:?}", t.elapsed())),
        Err(_) => bail!("{what} missed its {CALL_DEADLINE:?} deadline"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_leaves_the_cri_and_exec_working_within_bounds() -> Result<()> {
    let _lock = LOCK.lock().await;
    let mut t = Target::start().await?;
    t.under_flood(|t| {
        Box::pin(async move {
            with_deadline("Version", async {
                t.rt.version(api::VersionRequest::default()).await?;
                Ok(())
            })
            .await?;
            with_deadline("ListContainers", async {
                t.rt.list_containers(api::ListContainersRequest::default())
                    .await?;
                Ok(())
            })
            .await?;
            // An exec through the flooded streaming server, by a client
            // that is not berth's: the URL from Exec, the session by Python.
            let url = with_deadline("Exec", exec_url(&mut t.rt, &t.ctr, &["echo", "hi"])).await?;
            let out = tokio::task::spawn_blocking(move || ws_exec(&url)).await??;
            ensure!(out == "hi\n", "exec printed {out:?}");
            Ok(())
        })
    })
    .await?;
    t.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the upstream crictl from ../shared/conformance; make conformance runs it"]
async fn crictl_answers_within_its_deadline_under_a_connection_flood() -> Result<()> {
    let _lock = LOCK.lock().await;
    crictl_bin()?;
    let mut t = Target::start().await?;
    let c = Crictl::new(&t.env.d().socket_path(), t.env.files.path())?;
    t.under_flood(move |t| {
        let c = c.clone();
        Box::pin(async move {
            let ctr = t.ctr.clone();
            tokio::task::spawn_blocking(move || -> Result<()> {
                // crictl's own 2 s timeout is the deadline of each CRI call.
                for args in [
                    vec!["--timeout", "2s", "version"],
                    vec!["--timeout", "2s", "ps", "-q"],
                ] {
                    let out = c.run(&args)?;
                    ensure!(out.status.success(), "{out}");
                }
                // An exec through the flooded streaming server (client-go's
                // SPDY executor), within a deadline of its own.
                let t0 = Instant::now();
                let out = c.run(&["exec", &ctr, "echo", "hi"])?;
                ensure!(out.status.success() && out.stdout == "hi\n", "{out}");
                ensure!(
                    t0.elapsed() < EXEC_DEADLINE,
                    "crictl exec took {:?}",
                    t0.elapsed()
                );
                Ok(())
            })
            .await?
        })
    })
    .await?;
    t.finish().await
}
