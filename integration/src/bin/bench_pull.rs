//! `bench-pull`: cold pull throughput of berth against skopeo and containerd 1.6, all
//! from one real local docker-registry over plain HTTP, on this machine.
//!
//! Every sample is a cold pull into an empty store: a fresh berthd (started before the
//! timer), a fresh `dir:` destination for skopeo, a fresh containerd (started before
//! the timer). The order of the tools rotates every round so machine noise hits all
//! alike. Medians are reported.
//!
//! containerd is measured twice: `ctr content fetch` (fetch only, like berth today) and
//! `ctr images pull` (fetch + unpack into overlayfs). In containerd 1.6 the registry
//! transfer happens in the `ctr` process, which streams blobs into containerd over gRPC.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use integration::containerd::{self, Containerd};
use integration::daemon::{self, Daemon, DaemonOpts};
use integration::fixtures;
use integration::registry::Registry;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "bench-pull",
    about = "Cold pull throughput: berth vs skopeo vs containerd, from a local registry"
)]
struct Args {
    /// Total size of the random layers, in MiB.
    #[arg(long, default_value_t = 256)]
    size_mb: usize,
    /// Number of random layers (plus one small busybox base layer).
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Rounds; each round times every tool once.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seed of the pseudo-random layer data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write all samples and the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Berth,
    Skopeo,
    CtrFetch,
    CtrPull,
}

impl Tool {
    const ALL: [Tool; 4] = [Tool::Berth, Tool::Skopeo, Tool::CtrFetch, Tool::CtrPull];

    fn label(self) -> &'static str {
        match self {
            Tool::Berth => "berth (berthctl images pull; fetch only)",
            Tool::Skopeo => "skopeo copy docker:// dir: (fetch only)",
            Tool::CtrFetch => "containerd (ctr content fetch; fetch only)",
            Tool::CtrPull => "containerd (ctr images pull; fetch+unpack)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Tool::Berth => "berth",
            Tool::Skopeo => "skopeo",
            Tool::CtrFetch => "containerd-fetch",
            Tool::CtrPull => "containerd-pull",
        }
    }
}

/// One timed pull.
#[derive(Clone, Debug)]
struct Sample {
    secs: f64,
    /// Peak RSS of the long-running daemon (VmHWM), if the tool has one, in KiB.
    daemon_peak_kib: Option<u64>,
    /// Peak RSS of the client process (VmHWM, sampled while it runs), in KiB.
    client_peak_kib: u64,
}

/// The result of a command run with [`run_timed`].
struct Timed {
    elapsed: Duration,
    status: i32,
    /// Peak RSS (VmHWM) of the program, in KiB, sampled every few ms while it ran.
    peak_kib: u64,
    output: String,
}

/// VmHWM of `pid` in KiB, if the process is (already) running the program `name`.
///
/// Right after spawn the child may still share bench-pull's memory (vfork-style spawn),
/// so samples are only taken once /proc/PID/status names the program. (wait4's
/// ru_maxrss is no use here: it keeps the pre-exec high-water mark of the parent.)
fn program_hwm_kib(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let comm = status.lines().find_map(|l| l.strip_prefix("Name:"))?.trim();
    // The kernel truncates comm to 15 bytes.
    if !name.starts_with(comm) || comm.is_empty() {
        return None;
    }
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs `cmd` with stdout+stderr to a file in `scratch`, timing from spawn until it
/// has exited (blocked in waitpid). A side thread samples the program's peak RSS.
fn run_timed(mut cmd: Command, scratch: &Path) -> Result<Timed> {
    let program = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out_path = scratch.join("tool-output.log");
    let out = File::create(&out_path)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                if let Some(k) = program_hwm_kib(pid, &program) {
                    peak = peak.max(k);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let status = child.wait();
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let peak_kib = sampler.join().unwrap_or(0);
    let status = status.with_context(|| format!("wait for {cmd:?}"))?;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    let mut output = String::new();
    File::open(&out_path)?.read_to_string(&mut output)?;
    Ok(Timed {
        elapsed,
        status: code,
        peak_kib,
        output,
    })
}

fn ensure_success(what: &str, t: &Timed, extra: impl FnOnce() -> String) -> Result<()> {
    if t.status != 0 {
        bail!(
            "{what} failed (exit {}):\n{}\n{}",
            t.status,
            t.output.trim_end(),
            extra()
        );
    }
    Ok(())
}

/// The first `name` on $PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Finds berthd/berthctl: $BERTH_BIN_DIR, else the bench binary's own dir (a release
/// build puts them side by side in target/release).
fn berth_bin_dir() -> Result<PathBuf> {
    let dir = daemon::bin_dir()?;
    for b in ["berthd", "berthctl"] {
        if !dir.join(b).is_file() {
            bail!(
                "{} not found: run `cargo build --release -p berthd -p berthctl`, \
                 or set BERTH_BIN_DIR",
                dir.join(b).display()
            );
        }
    }
    Ok(dir)
}

/// Clear errors for missing tools, before any work is done.
fn check_tools() -> Result<PathBuf> {
    let mut missing = Vec::new();
    if which("skopeo").is_none() {
        missing.push("skopeo (apt-get install skopeo)".to_string());
    }
    for bin in [containerd::CONTAINERD_BIN, containerd::CTR_BIN] {
        if !Path::new(bin).is_file() {
            missing.push(format!("{bin} (apt-get install containerd)"));
        }
    }
    if !Path::new(integration::registry::REGISTRY_BIN).is_file() {
        missing.push(format!(
            "{} (apt-get install docker-registry)",
            integration::registry::REGISTRY_BIN
        ));
    }
    let bins = berth_bin_dir();
    if let Err(e) = &bins {
        missing.push(e.to_string());
    }
    if !missing.is_empty() {
        bail!("missing tools:\n  {}", missing.join("\n  "));
    }
    bins
}

struct Bench {
    reference: String,
    bin_dir: PathBuf,
    /// Layer digests: each tool's result is checked to hold them.
    layers: Vec<String>,
}

impl Bench {
    fn run(&self, tool: Tool) -> Result<Sample> {
        match tool {
            Tool::Berth => self.berth(),
            Tool::Skopeo => self.skopeo(),
            Tool::CtrFetch => self.containerd(&["content", "fetch", "--plain-http"]),
            Tool::CtrPull => self.containerd(&["images", "pull", "--plain-http"]),
        }
    }

    fn berth(&self) -> Result<Sample> {
        let d = Daemon::start_with(DaemonOpts {
            bin_dir: Some(self.bin_dir.clone()),
            ..Default::default()
        })?;
        let mut cmd = Command::new(self.bin_dir.join("berthctl"));
        cmd.arg("--address").arg(d.socket_path()).args([
            "images",
            "pull",
            "--plain-http",
            &self.reference,
        ]);
        let t = run_timed(cmd, d.dir())?;
        ensure_success("berthctl images pull", &t, || daemon::tail(&d.log(), 40))?;
        let peak = hwm_kib(d.pid().ok_or_else(|| anyhow!("berthd not running"))?)?;
        let blobs = d.root().join("content/blobs/sha256");
        self.check_layers("berth", |hex| blobs.join(hex).is_file())?;
        Ok(Sample {
            secs: t.elapsed.as_secs_f64(),
            daemon_peak_kib: Some(peak),
            client_peak_kib: t.peak_kib,
        })
    }

    fn skopeo(&self) -> Result<Sample> {
        let tmp = tempfile::Builder::new().prefix("bench-skopeo-").tempdir()?;
        let dest = tmp.path().join("image");
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{}", self.reference))
        .arg(format!("dir:{}", dest.display()));
        let t = run_timed(cmd, tmp.path())?;
        ensure_success("skopeo copy", &t, String::new)?;
        self.check_layers("skopeo", |hex| dest.join(hex).is_file())?;
        Ok(Sample {
            secs: t.elapsed.as_secs_f64(),
            daemon_peak_kib: None,
            client_peak_kib: t.peak_kib,
        })
    }

    fn containerd(&self, args: &[&str]) -> Result<Sample> {
        let c = Containerd::start()?;
        let mut cmd = c.ctr_command();
        cmd.args(args).arg(&self.reference);
        let t = run_timed(cmd, c.dir())?;
        ensure_success(&format!("ctr {}", args.join(" ")), &t, || {
            daemon::tail(&c.log(), 40)
        })?;
        let peak = hwm_kib(c.pid().ok_or_else(|| anyhow!("containerd not running"))?)?;
        let content = c.ctr_ok(["content", "ls", "-q"])?;
        self.check_layers("containerd", |hex| {
            content.lines().any(|l| l.trim() == format!("sha256:{hex}"))
        })?;
        Ok(Sample {
            secs: t.elapsed.as_secs_f64(),
            daemon_peak_kib: Some(peak),
            client_peak_kib: t.peak_kib,
        })
    }

    fn check_layers(&self, who: &str, has: impl Fn(&str) -> bool) -> Result<()> {
        for l in &self.layers {
            let hex = integration::util::digest_hex(l);
            if !has(hex) {
                bail!("{who}: layer {l} missing after the pull");
            }
        }
        Ok(())
    }
}

/// VmHWM (peak RSS) of `pid` in KiB.
fn hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM in /proc/{pid}/status"))
}

/// Nearest-rank percentile of sorted `v` (`p` in 0..=100).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn median_u64(v: impl Iterator<Item = u64>) -> Option<u64> {
    let mut v: Vec<u64> = v.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

struct Machine {
    nproc: usize,
    kernel: String,
    cpu: String,
    mem: String,
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        cpu,
        mem,
    }
}

/// First line of `cmd --version`-like output.
fn version_of(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Reads every blob of the registry's storage once, so the first tool does not pay
/// for a cold page cache on the registry side.
fn warm_registry(reg: &Registry, digests: &[String]) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for d in digests {
        let p = integration::registry::blob_data_path(&reg.storage_dir(), d);
        let mut f = File::open(&p).with_context(|| format!("open {}", p.display()))?;
        while f.read(&mut buf)? > 0 {}
    }
    Ok(())
}

fn mib(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.runs == 0 || args.size_mb == 0 || args.layers == 0 {
        bail!("--runs, --size-mb and --layers must be at least 1");
    }
    let bin_dir = check_tools()?;
    let m = machine();
    println!(
        "machine: {} CPUs, {}, kernel {}, {} RAM",
        m.nproc, m.cpu, m.kernel, m.mem
    );
    let versions = json!({
        "containerd": version_of(containerd::CONTAINERD_BIN, &["--version"]),
        "skopeo": version_of("skopeo", &["--version"]),
        "berthctl": version_of(bin_dir.join("berthctl").to_str().unwrap_or("berthctl"), &["--version"]),
    });
    println!(
        "tools: berth from {}; {}; {}",
        bin_dir.display(),
        versions["skopeo"].as_str().unwrap_or_default(),
        versions["containerd"].as_str().unwrap_or_default()
    );

    let t0 = Instant::now();
    let img = fixtures::large(args.size_mb, args.layers, args.seed)?;
    let blobs = img.all_blobs()?;
    let mut image_bytes = 0u64;
    for d in &blobs {
        image_bytes += std::fs::metadata(img.blob_path(d))?.len();
    }
    println!(
        "image: {} layers ({} random + busybox base), {:.1} MB in {} blobs, built in {:.1}s",
        img.layers.len(),
        args.layers,
        image_bytes as f64 / 1e6,
        blobs.len(),
        t0.elapsed().as_secs_f64()
    );

    let reg = Registry::start_default()?;
    let t0 = Instant::now();
    reg.push_layout(img, "bench/large:1")?;
    warm_registry(&reg, &blobs)?;
    let reference = reg.reference("bench/large:1");
    println!(
        "registry: docker-registry at {} (pushed in {:.1}s); reference {reference}",
        reg.addr(),
        t0.elapsed().as_secs_f64()
    );

    let bench = Bench {
        reference,
        bin_dir,
        layers: img.layers.iter().map(|l| l.digest.clone()).collect(),
    };
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Tool::ALL.len()];
    for round in 0..args.runs {
        let n = Tool::ALL.len();
        let order: Vec<usize> = (0..n).map(|i| (i + round) % n).collect();
        let mut line = format!("round {}/{}:", round + 1, args.runs);
        for &i in &order {
            let tool = Tool::ALL[i];
            let s = bench
                .run(tool)
                .with_context(|| format!("round {}: {}", round + 1, tool.key()))?;
            line.push_str(&format!(" {}={:.2}s", tool.key(), s.secs));
            samples[i].push(s);
        }
        println!("{line}");
    }

    // Summary.
    let sorted: Vec<Vec<f64>> = samples
        .iter()
        .map(|v| {
            let mut s: Vec<f64> = v.iter().map(|x| x.secs).collect();
            s.sort_by(f64::total_cmp);
            s
        })
        .collect();
    let medians: Vec<f64> = sorted.iter().map(|s| median(s)).collect();
    let berth_median = medians[0];
    println!();
    println!(
        "cold pull of {:.1} MB ({} runs each, order rotated per round; medians)",
        image_bytes as f64 / 1e6,
        args.runs
    );
    let header = [
        "tool",
        "median s",
        "p90 s",
        "min s",
        "max s",
        "MB/s",
        "berth/tool",
        "peak RSS MiB (daemon + client)",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut summary = Vec::new();
    for (i, tool) in Tool::ALL.iter().enumerate() {
        let s = &sorted[i];
        let med = medians[i];
        let p90 = percentile(s, 90.0);
        let mbps = image_bytes as f64 / 1e6 / med;
        let ratio = berth_median / med;
        let daemon_peak = median_u64(samples[i].iter().filter_map(|x| x.daemon_peak_kib));
        let client_peak = median_u64(samples[i].iter().map(|x| x.client_peak_kib)).unwrap_or(0);
        let rss = match daemon_peak {
            Some(d) => format!("{} + {}", mib(d), mib(client_peak)),
            None => mib(client_peak),
        };
        rows.push(vec![
            tool.label().to_string(),
            format!("{med:.3}"),
            format!("{p90:.3}"),
            format!("{:.3}", s[0]),
            format!("{:.3}", s[s.len() - 1]),
            format!("{mbps:.0}"),
            format!("{ratio:.2}"),
            rss,
        ]);
        summary.push(json!({
            "tool": tool.key(),
            "label": tool.label(),
            "samples_secs": samples[i].iter().map(|x| x.secs).collect::<Vec<_>>(),
            "median_secs": med,
            "p90_secs": p90,
            "min_secs": s[0],
            "max_secs": s[s.len() - 1],
            "mb_per_sec": mbps,
            "berth_over_tool": ratio,
            "daemon_peak_rss_kib": daemon_peak,
            "client_peak_rss_kib": client_peak,
        }));
    }
    print_table(&header, &rows);
    println!(
        "MB = 10^6 bytes of registry blobs (manifest, config, layers). berth/tool < 1 means \
         berth is faster.\npeak RSS: VmHWM of the daemon after the pull + of the client, sampled every 5 ms; medians. \
         berth fetches 3 layers at a time (default config); ctr 1.6 without a limit."
    );

    if let Some(path) = &args.json {
        let doc = json!({
            "machine": {"nproc": m.nproc, "cpu": m.cpu, "kernel": m.kernel, "mem": m.mem},
            "versions": versions,
            "image": {
                "size_mb": args.size_mb,
                "layers": args.layers,
                "seed": args.seed,
                "bytes": image_bytes,
                "manifest_digest": img.manifest_digest,
            },
            "runs": args.runs,
            "results": summary,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let fmt = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<width$}", width = w[i])
                } else {
                    format!("{c:>width$}", width = w[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", fmt(header.to_vec()));
    println!(
        "{}",
        w.iter()
            .map(|n| "-".repeat(*n))
            .collect::<Vec<_>>()
            .join("  ")
    );
    for r in rows {
        println!("{}", fmt(r.iter().map(String::as_str).collect()));
    }
}
