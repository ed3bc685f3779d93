//! Shared code of the `bench-*` binaries (`bench-pull`, `bench-unpack`).
//!
//! * [`run_timed`]: runs one command under a timer while sampling its peak RSS;
//! * [`run_rounds`]: every tool once per round, the order rotated each round, with the
//!   page cache's dirty data flushed (untimed) before every sample;
//! * [`summary_rows`] and [`print_table`]: medians, p90, MB/s and like-for-like ratios;
//! * [`Machine`]: the machine line;
//! * [`PullTarget`]: cold pulls from one local registry into a fresh berthd, a fresh
//!   `dir:` for skopeo and a fresh containerd, each checked afterwards.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::containerd::{self, Containerd};
use crate::daemon::{self, Daemon, DaemonOpts};
use crate::fixtures::Image;
use crate::registry::{self, Registry};

/// One timed run of one tool.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub secs: f64,
    /// Peak RSS of the long-running daemon (VmHWM), if the tool has one, in KiB.
    pub daemon_peak_kib: Option<u64>,
    /// Peak RSS of the client process (VmHWM, sampled while it runs), in KiB.
    pub client_peak_kib: Option<u64>,
}

/// The result of a command run with [`run_timed`].
pub struct Timed {
    pub elapsed: Duration,
    pub status: i32,
    /// Peak RSS (VmHWM) of the program, in KiB, sampled every few ms while it ran.
    pub peak_kib: u64,
    pub output: String,
}

/// VmHWM of `pid` in KiB, if the process is (already) running the program `name`.
///
/// Right after spawn the child may still share the bench's memory (vfork-style spawn),
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
pub fn run_timed(mut cmd: Command, scratch: &Path) -> Result<Timed> {
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

/// Fails with the tool's output (and `extra`, e.g. a daemon log tail) on a non-zero exit.
pub fn ensure_success(what: &str, t: &Timed, extra: impl FnOnce() -> String) -> Result<()> {
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
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Finds berthd/berthctl: $BERTH_BIN_DIR, else the bench binary's own dir (a release
/// build puts them side by side in target/release).
pub fn berth_bin_dir() -> Result<PathBuf> {
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

/// Clear errors for missing tools, before any work is done. containerd, ctr,
/// docker-registry and the berth binaries are always needed; `on_path` lists further
/// (program, Debian package) pairs looked up on $PATH. Returns the berth bin dir.
pub fn check_tools(on_path: &[(&str, &str)]) -> Result<PathBuf> {
    let mut missing = Vec::new();
    for (prog, pkg) in on_path {
        if which(prog).is_none() {
            missing.push(format!("{prog} (apt-get install {pkg})"));
        }
    }
    for bin in [containerd::CONTAINERD_BIN, containerd::CTR_BIN] {
        if !Path::new(bin).is_file() {
            missing.push(format!("{bin} (apt-get install containerd)"));
        }
    }
    if !Path::new(registry::REGISTRY_BIN).is_file() {
        missing.push(format!(
            "{} (apt-get install docker-registry)",
            registry::REGISTRY_BIN
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

/// VmHWM (peak RSS) of `pid` in KiB.
pub fn hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM in /proc/{pid}/status"))
}

/// Nearest-rank percentile of sorted `v` (`p` in 0..=100).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

pub fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

pub fn median_u64(v: impl Iterator<Item = u64>) -> Option<u64> {
    let mut v: Vec<u64> = v.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

/// What the results were measured on.
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu: String,
    pub mem: String,
}

impl Machine {
    pub fn detect() -> Machine {
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

    /// "machine: N CPUs, MODEL, kernel X, M RAM".
    pub fn line(&self) -> String {
        format!(
            "machine: {} CPUs, {}, kernel {}, {} RAM",
            self.nproc, self.cpu, self.kernel, self.mem
        )
    }

    pub fn json(&self) -> Value {
        json!({"nproc": self.nproc, "cpu": self.cpu, "kernel": self.kernel, "mem": self.mem})
    }
}

/// First line of `cmd --version`-like output.
pub fn version_of(cmd: &str, args: &[&str]) -> String {
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

/// Reads every file once, so the first tool does not pay for a cold page cache.
pub fn warm_files<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for p in paths {
        let mut f = File::open(p).with_context(|| format!("open {}", p.display()))?;
        while f.read(&mut buf)? > 0 {}
    }
    Ok(())
}

/// Flushes dirty data (left by the previous sample, or by removing its store) to
/// disk, so that it is not written back on the next sample's time: berth syncs each
/// committed snapshot with syncfs(2), which would otherwise pay for it.
pub fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Runs `runs` rounds; each round calls `run(i)` once for every tool `i` in
/// `0..keys.len()`, starting one later each round (so the order rotates), after
/// [`settle`]. Prints one line per round, with the 1-minute load average at its end.
/// Returns the samples per tool.
pub fn run_rounds(
    keys: &[&str],
    runs: usize,
    mut run: impl FnMut(usize) -> Result<Sample>,
) -> Result<Vec<Vec<Sample>>> {
    let n = keys.len();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); n];
    for round in 0..runs {
        let mut line = format!("round {}/{}:", round + 1, runs);
        for k in 0..n {
            let i = (k + round) % n;
            settle();
            let s = run(i).with_context(|| format!("round {}: {}", round + 1, keys[i]))?;
            line.push_str(&format!(" {}={:.2}s", keys[i], s.secs));
            samples[i].push(s);
        }
        if let Some(load) = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
        {
            // Other work on the machine shows here: the tools themselves keep it near 1.
            line.push_str(&format!(" (load1 {load})"));
        }
        println!("{line}");
    }
    Ok(samples)
}

/// One row of a result table.
pub struct RowSpec {
    /// Short name (round lines, JSON).
    pub key: &'static str,
    /// What was measured, including what the time covers (fetch only, fetch+unpack...).
    pub label: String,
    /// The berth row this row is the like-for-like peer of: the "berth/tool" column
    /// is median(base) / median(this row); "-" when there is none.
    pub base: Option<usize>,
}

/// The header of [`summary_rows`].
pub const SUMMARY_HEADER: [&str; 8] = [
    "tool",
    "median s",
    "p90 s",
    "min s",
    "max s",
    "MB/s",
    "berth/tool",
    "peak RSS MiB (daemon + client)",
];

fn mib(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

/// Table rows (see [`SUMMARY_HEADER`]) and JSON summaries for `specs` with their
/// `samples`; MB/s counts `bytes` per sample.
pub fn summary_rows(
    specs: &[RowSpec],
    samples: &[Vec<Sample>],
    bytes: u64,
) -> (Vec<Vec<String>>, Vec<Value>) {
    let sorted: Vec<Vec<f64>> = samples
        .iter()
        .map(|v| {
            let mut s: Vec<f64> = v.iter().map(|x| x.secs).collect();
            s.sort_by(f64::total_cmp);
            s
        })
        .collect();
    let medians: Vec<Option<f64>> = sorted
        .iter()
        .map(|s| (!s.is_empty()).then(|| median(s)))
        .collect();
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let s = &sorted[i];
        let Some(med) = medians[i] else { continue };
        let p90 = percentile(s, 90.0);
        let mbps = bytes as f64 / 1e6 / med;
        let ratio = spec.base.and_then(|b| medians[b]).map(|b| b / med);
        let daemon_peak = median_u64(samples[i].iter().filter_map(|x| x.daemon_peak_kib));
        let client_peak = median_u64(samples[i].iter().filter_map(|x| x.client_peak_kib));
        let rss = match (daemon_peak, client_peak) {
            (Some(d), Some(c)) => format!("{} + {}", mib(d), mib(c)),
            (None, Some(c)) => mib(c),
            (Some(d), None) => mib(d),
            (None, None) => "-".into(),
        };
        rows.push(vec![
            spec.label.clone(),
            format!("{med:.3}"),
            format!("{p90:.3}"),
            format!("{:.3}", s[0]),
            format!("{:.3}", s[s.len() - 1]),
            format!("{mbps:.0}"),
            ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}")),
            rss,
        ]);
        json_rows.push(json!({
            "tool": spec.key,
            "label": spec.label,
            "samples_secs": samples[i].iter().map(|x| x.secs).collect::<Vec<_>>(),
            "median_secs": med,
            "p90_secs": p90,
            "min_secs": s[0],
            "max_secs": s[s.len() - 1],
            "mb_per_sec": mbps,
            "compared_with": spec.base.map(|b| specs[b].key),
            "berth_over_tool": ratio,
            "daemon_peak_rss_kib": daemon_peak,
            "client_peak_rss_kib": client_peak,
        }));
    }
    (rows, json_rows)
}

/// Prints an aligned plain-text table (first column left-aligned).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
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

/// Sum of the sizes of every blob of `img` (manifest, config, layers), in bytes.
pub fn image_bytes(img: &Image) -> Result<u64> {
    let mut n = 0;
    for d in img.all_blobs()? {
        n += std::fs::metadata(img.blob_path(&d))?.len();
    }
    Ok(n)
}

/// Seconds since the epoch of an RFC 3339 UTC time as berthctl prints it
/// ("2024-05-01T12:34:56.123456789Z").
pub fn parse_rfc3339_utc(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, format!("0.{b}").parse::<f64>().ok()?),
        None => (time, 0.0),
    };
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) as f64 + frac)
}

/// berth's committed snapshots (`berthctl snapshots ls --format json`).
pub fn berth_committed_snapshots(d: &Daemon) -> Result<Vec<Value>> {
    let out = d.ctl_ok(["snapshots", "ls", "--format", "json"])?;
    let all: Vec<Value> = serde_json::from_str(&out).context("parse snapshots ls")?;
    Ok(all
        .into_iter()
        .filter(|s| s["kind"] == "committed")
        .collect())
}

/// Number of committed snapshots in containerd's default (overlayfs) snapshotter.
pub fn ctr_committed_snapshots(c: &Containerd) -> Result<usize> {
    let out = c.ctr_ok(["snapshots", "ls"])?;
    Ok(out
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().last() == Some("Committed"))
        .count())
}

/// Pushes `img` to a fresh local docker-registry as `name_tag` and reads its blobs once
/// (so the first tool does not pay for a cold page cache on the registry side).
/// Returns the registry and the reference to pull.
pub fn serve_image(img: &Image, name_tag: &str) -> Result<(Registry, String)> {
    let reg = Registry::start_default()?;
    reg.push_layout(img, name_tag)?;
    let paths: Vec<PathBuf> = img
        .all_blobs()?
        .iter()
        .map(|d| registry::blob_data_path(&reg.storage_dir(), d))
        .collect();
    warm_files(paths.iter().map(PathBuf::as_path))?;
    let reference = reg.reference(name_tag);
    Ok((reg, reference))
}

/// Cold pulls of one image from a local registry. Every sample starts from an empty
/// store (a fresh berthd, `dir:` or containerd, started before the timer) and is
/// checked afterwards: every layer present, and unpacked where the tool unpacks.
pub struct PullTarget {
    pub reference: String,
    pub bin_dir: PathBuf,
    /// Layer digests.
    pub layers: Vec<String>,
}

impl PullTarget {
    /// `berthctl images pull --plain-http`: fetch + unpack into overlayfs snapshots.
    pub fn berth(&self) -> Result<Sample> {
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
        let snaps = berth_committed_snapshots(&d)?.len();
        if snaps != self.layers.len() {
            bail!(
                "berth: {snaps} committed snapshots after the pull, {} layers",
                self.layers.len()
            );
        }
        Ok(Sample {
            secs: t.elapsed.as_secs_f64(),
            daemon_peak_kib: Some(peak),
            client_peak_kib: Some(t.peak_kib),
        })
    }

    /// `skopeo copy docker://REF dir:DEST`: fetch only.
    pub fn skopeo(&self) -> Result<Sample> {
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
            client_peak_kib: Some(t.peak_kib),
        })
    }

    /// `ctr <args> REF` against a fresh containerd; `unpacks` says whether the command
    /// unpacks (`images pull`) or only fetches (`content fetch`), and is checked.
    pub fn ctr(&self, args: &[&str], unpacks: bool) -> Result<Sample> {
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
        let snaps = ctr_committed_snapshots(&c)?;
        let want = if unpacks { self.layers.len() } else { 0 };
        if snaps != want {
            bail!("containerd: {snaps} committed snapshots after `ctr {args:?}`, expected {want}");
        }
        Ok(Sample {
            secs: t.elapsed.as_secs_f64(),
            daemon_peak_kib: Some(peak),
            client_peak_kib: Some(t.peak_kib),
        })
    }

    fn check_layers(&self, who: &str, has: impl Fn(&str) -> bool) -> Result<()> {
        for l in &self.layers {
            let hex = crate::util::digest_hex(l);
            if !has(hex) {
                bail!("{who}: layer {l} missing after the pull");
            }
        }
        Ok(())
    }
}

/// The fixture and sampling flags every benchmark takes.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Total size of the random layers, in MiB.
    #[arg(long, default_value_t = 256)]
    pub size_mb: usize,
    /// Number of random layers (plus one small busybox base layer).
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Rounds; each round times every tool once.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Seed of the pseudo-random layer data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write all samples and the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:01Z"), Some(1.0));
        let t = parse_rfc3339_utc("2023-11-14T22:13:20.12Z").unwrap();
        assert!((t - 1_700_000_000.12).abs() < 1e-6, "{t}");
        assert_eq!(
            parse_rfc3339_utc("2000-02-29T00:00:00Z"),
            Some(951_782_400.0)
        );
        assert_eq!(parse_rfc3339_utc("2000-02-29T00:00:00"), None);
        assert_eq!(parse_rfc3339_utc("nonsense"), None);
    }

    #[test]
    fn stats() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(median(&v), 3.0);
        assert_eq!(median(&v[..4]), 2.5);
        assert_eq!(percentile(&v, 90.0), 5.0);
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(median_u64([3u64, 1, 2].into_iter()), Some(2));
    }

    #[test]
    fn ratios_only_for_like_for_like_rows() {
        let s = |secs| Sample {
            secs,
            daemon_peak_kib: Some(2048),
            client_peak_kib: Some(1024),
        };
        let specs = [
            RowSpec {
                key: "berth",
                label: "berth".into(),
                base: Some(0),
            },
            RowSpec {
                key: "peer",
                label: "peer".into(),
                base: Some(0),
            },
            RowSpec {
                key: "other",
                label: "other".into(),
                base: None,
            },
        ];
        let samples = vec![vec![s(1.0)], vec![s(2.0)], vec![s(4.0)]];
        let (rows, json) = summary_rows(&specs, &samples, 8_000_000);
        assert_eq!(rows[0][6], "1.00");
        assert_eq!(rows[1][6], "0.50");
        assert_eq!(rows[2][6], "-");
        assert_eq!(rows[1][5], "4");
        assert_eq!(rows[0][7], "2 + 1");
        assert_eq!(json[1]["compared_with"], "berth");
    }
}
