//! `soak-cri`: berthd's memory under pod churn, as a node daemon sees it over months.
//!
//! Starts a private berthd (as `bench-cri` does: temp root/state/socket, its own CNI
//! bridge + host-local + portmap network, cgroup parent and pod log dir, busybox pulled
//! from a local docker-registry through CRI `PullImage`), starts `--long-lived` pods that
//! stay up the whole run, then runs `--cycles` pod cycles one after another:
//!
//! RunPodSandbox -> 2 x (CreateContainer + StartContainer) -> 3 x ExecSync ->
//! ContainerStats of both + ListContainerStats + PodSandboxStats -> StopPodSandbox ->
//! RemovePodSandbox
//!
//! Every `--sample-every` cycles it reads the daemon's VmRSS, RssAnon and RssFile from
//! `/proc/PID/status` and prints a line; at the end a table of cycles against memory,
//! the growth after warm-up (Theil-Sen slope of VmRSS over the samples taken at or
//! after `--warmup` cycles, in KiB per 100 cycles; RssAnon's slope beside it), and the
//! memory after every pod, the long-lived ones too, has been removed. It exits non-zero
//! when the VmRSS slope exceeds `--max-growth-kib-per-100`.
//!
//! `--runtime containerd` runs the same against Debian's containerd 1.6 (its CRI
//! plugin) for reference. `--heaptrack FILE` attaches heaptrack (`heaptrack -p`) to
//! berthd once the warm-up is over and stops it before the pods are removed, so its
//! "leaked" figures are what the measured cycles allocated and never freed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use integration::bench::{self, Machine};
use integration::bench_cri::{Common, Runtime, Side};
use integration::cri::{self, api};
use integration::{containerd, fixtures, registry, Registry};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "soak-cri",
    about = "berthd's RSS over many pod cycles beside long-lived pods; fails on growth"
)]
struct Args {
    /// Pod cycles (sandbox, 2 containers, 3 ExecSync, stats, stop, remove).
    #[arg(long, default_value_t = 500)]
    cycles: usize,
    /// Pods (one `sleep` container each) running for the whole run.
    #[arg(long, default_value_t = 10)]
    long_lived: usize,
    /// Sample the daemon's memory every this many cycles.
    #[arg(long, default_value_t = 20)]
    sample_every: usize,
    /// Cycles before growth is measured (caches, arenas and code pages fill up).
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Fail when VmRSS grows faster than this after warm-up (Theil-Sen slope over the
    /// samples, KiB per 100 cycles).
    #[arg(long, default_value_t = 384.0)]
    max_growth_kib_per_100: f64,
    /// "berth" or "containerd" (the reference: Debian's containerd 1.6 CRI plugin).
    #[arg(long, default_value = "berth", value_parser = ["berth", "containerd"])]
    runtime: String,
    /// berth's `[cri] sandbox_mode`: "pinned" (default) or "pause".
    #[arg(long, default_value = "pinned", value_parser = ["pinned", "pause"])]
    berth_sandbox_mode: String,
    /// berthd's `--log-level`.
    #[arg(long, default_value = "info")]
    berth_log_level: String,
    /// Attach heaptrack to berthd after the warm-up and write its profile here
    /// (heaptrack adds `.zst`/`.gz`); stopped before the pods are removed.
    #[arg(long, value_name = "FILE")]
    heaptrack: Option<PathBuf>,
    /// Keep berthd running this long after every pod was removed (to inspect it, e.g.
    /// `gdb -p PID -batch -ex 'call (void)malloc_stats()'`, which writes to its log).
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
}

/// Memory of the daemon at one point, KiB.
#[derive(Clone, Copy, Debug)]
struct Sample {
    cycles: usize,
    secs: f64,
    rss: u64,
    anon: u64,
    file: u64,
    threads: u64,
}

/// VmRSS, RssAnon, RssFile (KiB) and Threads of `pid`.
fn status_kib(pid: u32) -> Result<(u64, u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((
        field("VmRSS:")?,
        field("RssAnon:")?,
        field("RssFile:")?,
        field("Threads:")?,
    ))
}

/// Theil-Sen slope of `y` over `x`, per 100 `x`: the median of the slopes between
/// every two points. A block the allocator holds at one sample and not at the next
/// (a sawtooth of half a MiB) moves it far less than it moves a least-squares fit.
fn slope_per_100(points: &[(f64, f64)]) -> Option<f64> {
    let mut slopes = Vec::new();
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            if b.0 != a.0 {
                slopes.push((b.1 - a.1) / (b.0 - a.0) * 100.0);
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    slopes.sort_by(f64::total_cmp);
    Some(bench::median(&slopes))
}

struct Soak {
    args: Args,
    t0: Instant,
    side: Side,
    samples: Vec<Sample>,
    /// StopPodSandbox calls that failed once (and then went through).
    stop_retries: Vec<String>,
}

impl Soak {
    fn progress(&self, msg: &str) {
        eprintln!("[{:6.1}s] {msg}", self.t0.elapsed().as_secs_f64());
    }

    fn sample(&self, cycles: usize) -> Result<Sample> {
        let pid = self.side.daemon.pid().context("daemon not running")?;
        let (rss, anon, file, threads) = status_kib(pid)?;
        let s = Sample {
            cycles,
            secs: self.t0.elapsed().as_secs_f64(),
            rss,
            anon,
            file,
            threads,
        };
        Ok(s)
    }

    /// One pod cycle.
    async fn cycle(&mut self, i: usize) -> Result<()> {
        let s = &mut self.side;
        let config = s.pod_config(&format!("churn{i}"))?;
        let id =
            s.rt.run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|e| s.err("RunPodSandbox", e))?
            .into_inner()
            .pod_sandbox_id;
        let sh = "trap 'exit 0' TERM; sleep 3600 & wait";
        let mut cids = Vec::new();
        for name in ["app", "sidecar"] {
            let cc = s.container_config(&config, name, &["sh", "-c", sh])?;
            let cid =
                s.rt.create_container(api::CreateContainerRequest {
                    pod_sandbox_id: id.clone(),
                    config: Some(cc),
                    sandbox_config: Some(config.clone()),
                })
                .await
                .map_err(|e| s.err("CreateContainer", e))?
                .into_inner()
                .container_id;
            s.rt.start_container(api::StartContainerRequest {
                container_id: cid.clone(),
            })
            .await
            .map_err(|e| s.err("StartContainer", e))?;
            cids.push(cid);
        }
        for (k, cmd) in [
            &["true"][..],
            &["sh", "-c", "echo out; echo err >&2"][..],
            &["sh", "-c", "exit 3"][..],
        ]
        .into_iter()
        .enumerate()
        {
            let cid = &cids[k % cids.len()];
            let r = cri::exec(&mut s.rt, cid, cmd, 10)
                .await
                .map_err(|e| s.err("ExecSync", e))?;
            let want = if k == 2 { 3 } else { 0 };
            ensure!(
                r.exit_code == want,
                "{}: ExecSync {cmd:?} exited {} (want {want})",
                s.name(),
                r.exit_code
            );
        }
        for cid in &cids {
            s.rt.container_stats(api::ContainerStatsRequest {
                container_id: cid.clone(),
            })
            .await
            .map_err(|e| s.err("ContainerStats", e))?;
        }
        let all =
            s.rt.list_container_stats(api::ListContainerStatsRequest { filter: None })
                .await
                .map_err(|e| s.err("ListContainerStats", e))?
                .into_inner()
                .stats;
        let want = self.args.long_lived + cids.len();
        ensure!(
            all.len() == want,
            "{}: ListContainerStats gave {} stats, want {want}",
            s.name(),
            all.len()
        );
        s.rt.pod_sandbox_stats(api::PodSandboxStatsRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .map_err(|e| s.err("PodSandboxStats", e))?;
        // kubelet retries a failed stop; so does this, once, and counts it.
        let stop = api::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        };
        if let Err(e) = s.rt.stop_pod_sandbox(stop.clone()).await {
            self.stop_retries
                .push(format!("cycle {i}: {:?}: {}", e.code(), e.message()));
            s.rt.stop_pod_sandbox(stop)
                .await
                .map_err(|e| s.err("StopPodSandbox (retried)", e))?;
        }
        s.rt.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .map_err(|e| s.err("RemovePodSandbox", e))?;
        Ok(())
    }
}

/// `heaptrack -o FILE -p PID`, in its own process group; returns once injected.
fn heaptrack_attach(pid: u32, out: &std::path::Path) -> Result<Child> {
    let log = out.with_extension("heaptrack.log");
    let f = std::fs::File::create(&log)?;
    let mut cmd = Command::new("heaptrack");
    // heaptrack's script wants -o before -p.
    cmd.arg("-o")
        .arg(out)
        .arg("-p")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .context("spawn heaptrack (apt-get install heaptrack)")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("injection finished") {
            return Ok(child);
        }
        ensure!(
            Instant::now() < deadline,
            "heaptrack did not attach within 60 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops heaptrack (its script removes the injection through gdb on exit).
fn heaptrack_stop(mut child: Child) -> Result<()> {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let st = child.wait()?;
    eprintln!("heaptrack stopped ({st})");
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    match soak_main(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak-cri: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn soak_main(args: Args) -> Result<()> {
    ensure!(
        args.cycles >= 1 && args.sample_every >= 1,
        "--cycles and --sample-every must be at least 1"
    );
    let kind = if args.runtime == "containerd" {
        Runtime::Containerd
    } else {
        Runtime::Berth
    };
    ensure!(
        args.heaptrack.is_none() || kind == Runtime::Berth,
        "--heaptrack profiles berthd"
    );
    ensure!(
        std::path::Path::new(registry::REGISTRY_BIN).is_file(),
        "{} missing (apt-get install docker-registry)",
        registry::REGISTRY_BIN
    );
    if kind == Runtime::Containerd {
        ensure!(
            std::path::Path::new(containerd::CONTAINERD_BIN).is_file(),
            "{} missing (apt-get install containerd)",
            containerd::CONTAINERD_BIN
        );
    }
    let bin_dir = bench::berth_bin_dir()?;
    println!("{}", Machine::detect().line());
    println!(
        "runtime: {}; {} cycles beside {} long-lived pods, sample every {}, warm-up {} \
         cycles, bound {} KiB VmRSS per 100 cycles",
        match kind {
            Runtime::Berth => bench::version_of(
                bin_dir.join("berthd").to_str().unwrap_or("berthd"),
                &["--version"],
            ),
            Runtime::Containerd => bench::version_of(containerd::CONTAINERD_BIN, &["--version"]),
        },
        args.cycles,
        args.long_lived,
        args.sample_every,
        args.warmup,
        args.max_growth_kib_per_100
    );
    let t0 = Instant::now();
    eprintln!("building fixtures, starting the local registry");
    let reg = Registry::start_default()?;
    reg.push_layout(fixtures::busybox()?, "soak/busybox:1")?;
    reg.push_layout(fixtures::pause()?, "soak/pause:1")?;
    let hosts = tempfile::Builder::new()
        .prefix("berth-soak-hosts-")
        .tempdir()?;
    integration::bench_cri::write_hosts_toml(hosts.path(), reg.addr())?;
    let common = Common {
        bin_dir,
        hosts_dir: hosts.path().to_path_buf(),
        pause_image: reg.reference("soak/pause:1"),
        berth_sandbox_mode: args.berth_sandbox_mode.clone(),
        berth_log_level: args.berth_log_level.clone(),
    };
    let side = Side::start(kind, &common).await?;
    let mut soak = Soak {
        args: args.clone(),
        t0,
        side,
        samples: Vec::new(),
        stop_retries: Vec::new(),
    };
    let mut heaptrack = None;
    let busybox = reg.reference("soak/busybox:1");
    let result = run(&mut soak, &common, &busybox, &mut heaptrack).await;
    if let Some(h) = heaptrack.take() {
        if let Err(e) = heaptrack_stop(h) {
            eprintln!("heaptrack: {e:#}");
        }
    }
    // Every pod goes, the long-lived ones too: what is left is what berthd keeps.
    soak.progress("removing every pod");
    let cleanup = soak.side.cleanup().await;
    let mut after = None;
    if cleanup.is_ok() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        after = soak.sample(soak.args.cycles).ok();
        if soak.args.hold_secs > 0 {
            soak.progress(&format!(
                "holding for {} s: berthd is pid {:?}, its log {}",
                soak.args.hold_secs,
                soak.side.daemon.pid(),
                soak.side.daemon.log_path().display()
            ));
            tokio::time::sleep(Duration::from_secs(soak.args.hold_secs)).await;
        }
    }
    let verdict = result.and(cleanup).and_then(|()| report(&soak, after));
    drop(soak);
    drop(reg);
    drop(hosts);
    verdict
}

async fn run(
    soak: &mut Soak,
    common: &Common,
    busybox: &str,
    heaptrack: &mut Option<Child>,
) -> Result<()> {
    let a = soak.args.clone();
    soak.side.image = busybox.to_string();
    soak.side.pull(busybox).await?;
    if soak.side.kind == Runtime::Containerd || a.berth_sandbox_mode == "pause" {
        soak.side.pull(&common.pause_image).await?;
    }
    soak.progress(&format!("starting {} long-lived pods", a.long_lived));
    for i in 0..a.long_lived {
        soak.side.start_pod(&format!("long{i}")).await?;
    }
    soak.side.check_running().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = soak.sample(0)?;
    soak.samples.push(s);
    print_sample(&s, None);
    let mut base: Option<Sample> = None;
    for i in 1..=a.cycles {
        soak.cycle(i).await?;
        if i == a.warmup {
            if let Some(out) = &a.heaptrack {
                let pid = soak.side.daemon.pid().context("daemon not running")?;
                soak.progress(&format!("attaching heaptrack to berthd ({pid})"));
                *heaptrack = Some(heaptrack_attach(pid, out)?);
            }
        }
        if i % a.sample_every == 0 || i == a.cycles {
            let s = soak.sample(i)?;
            soak.samples.push(s);
            if base.is_none() && i >= a.warmup {
                base = Some(s);
            }
            print_sample(&s, base.as_ref());
        }
    }
    soak.side.check_running().await?;
    Ok(())
}

fn print_sample(s: &Sample, base: Option<&Sample>) {
    let d = base
        .map(|b| format!("{:+}", s.rss as i64 - b.rss as i64))
        .unwrap_or_else(|| "-".into());
    eprintln!(
        "[{:6.1}s] cycles {:>5}  VmRSS {:>7} KiB  RssAnon {:>7} KiB  since warm-up {d}",
        s.secs, s.cycles, s.rss, s.anon
    );
}

fn report(soak: &Soak, after: Option<Sample>) -> Result<()> {
    let a = &soak.args;
    let samples = &soak.samples;
    let first = samples.first().context("no samples")?;
    let base = samples.iter().find(|s| s.cycles >= a.warmup);
    let header = [
        "cycles",
        "time s",
        "VmRSS KiB",
        "RssAnon KiB",
        "RssFile KiB",
        "threads",
        "VmRSS since warm-up",
    ];
    let mut rows = Vec::new();
    for s in samples {
        rows.push(vec![
            s.cycles.to_string(),
            format!("{:.0}", s.secs),
            s.rss.to_string(),
            s.anon.to_string(),
            s.file.to_string(),
            s.threads.to_string(),
            match base {
                Some(b) if s.cycles >= b.cycles => format!("{:+}", s.rss as i64 - b.rss as i64),
                _ => "-".into(),
            },
        ]);
    }
    if let Some(s) = after {
        rows.push(vec![
            "all pods removed".into(),
            format!("{:.0}", s.secs),
            s.rss.to_string(),
            s.anon.to_string(),
            s.file.to_string(),
            s.threads.to_string(),
            base.map(|b| format!("{:+}", s.rss as i64 - b.rss as i64))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    println!();
    bench::print_table(&header, &rows);
    let measured: Vec<&Sample> = samples.iter().filter(|s| s.cycles >= a.warmup).collect();
    let pts = |f: fn(&Sample) -> u64| -> Vec<(f64, f64)> {
        measured
            .iter()
            .map(|s| (s.cycles as f64, f(s) as f64))
            .collect()
    };
    let rss_slope = slope_per_100(&pts(|s| s.rss));
    let anon_slope = slope_per_100(&pts(|s| s.anon));
    let last = measured.last().copied().unwrap_or(first);
    println!(
        "{}: VmRSS {} -> {} KiB over {} cycles (start -> end, {} long-lived pods)",
        soak.side.name(),
        first.rss,
        last.rss,
        last.cycles,
        a.long_lived
    );
    if let Some(s) = after {
        println!(
            "after every pod was removed: VmRSS {} KiB, RssAnon {} KiB ({:+} KiB VmRSS against \
             the start with {} long-lived pods)",
            s.rss,
            s.anon,
            s.rss as i64 - first.rss as i64,
            a.long_lived
        );
    }
    if !soak.stop_retries.is_empty() {
        println!(
            "StopPodSandbox failed once and was retried in {} cycles:",
            soak.stop_retries.len()
        );
        for r in &soak.stop_retries {
            println!("  {r}");
        }
    }
    let Some(rss_slope) = rss_slope else {
        bail!(
            "too few samples after the warm-up ({} cycles) to measure growth: raise --cycles \
             or lower --sample-every/--warmup",
            a.warmup
        );
    };
    println!(
        "growth after warm-up (Theil-Sen over {} samples, cycles {}..{}): VmRSS {:+.0} \
         KiB/100 cycles, RssAnon {:+.0} KiB/100 cycles; bound {} KiB/100 cycles",
        measured.len(),
        measured.first().map(|s| s.cycles).unwrap_or(0),
        last.cycles,
        rss_slope,
        anon_slope.unwrap_or(f64::NAN),
        a.max_growth_kib_per_100
    );
    if rss_slope > a.max_growth_kib_per_100 {
        bail!(
            "FAIL: {}'s VmRSS grows {rss_slope:.0} KiB per 100 pod cycles after warm-up \
             (bound {} KiB)",
            soak.side.name(),
            a.max_growth_kib_per_100
        );
    }
    println!("PASS");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope() {
        assert_eq!(slope_per_100(&[(0.0, 5.0)]), None);
        let s = slope_per_100(&[(100.0, 1000.0), (200.0, 1100.0), (300.0, 1200.0)]).unwrap();
        assert!((s - 100.0).abs() < 1e-9);
        let flat = slope_per_100(&[(100.0, 7.0), (200.0, 7.0)]).unwrap();
        assert_eq!(flat, 0.0);
        // One sample holding an extra 512 KiB block does not make a flat line grow.
        let saw = [
            (100.0, 1000.0),
            (200.0, 1512.0),
            (300.0, 1000.0),
            (400.0, 1000.0),
        ];
        assert_eq!(slope_per_100(&saw).unwrap(), 0.0);
    }
}
