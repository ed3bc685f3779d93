//! `bench-unpack`: how fast berth turns an image into overlayfs snapshots, against
//! containerd 1.6 and umoci, on this machine.
//!
//! The like-for-like pairs (each with a berth/tool ratio):
//! * `berthctl images import` of an OCI archive into a fresh berthd against `ctr images
//!   import` into a fresh containerd: both ingest the blobs into a content store and
//!   unpack the layers into overlayfs snapshots;
//! * `berthctl images pull` against `ctr images pull` from one local docker-registry:
//!   both fetch and unpack.
//!
//! References without a ratio:
//! * `ctr images import --no-unpack`: containerd's ingest alone;
//! * berth's unpack phase of each import, derived from berthd's own records: the image
//!   record's creation time (berthd stamps it after ingesting, just before unpacking)
//!   to the commit time of the last snapshot. No process is timed for it;
//! * `umoci raw unpack` of the OCI layout into a plain directory: unpack only, no
//!   content store, no snapshots (umoci 0.4 lacks zstd; the large fixture is gzip).
//!
//! containerd 1.6's `ctr` has no standalone unpack command, so there is no
//! containerd unpack-only row.
//!
//! Every sample starts from an empty store (a fresh berthd or containerd, started
//! before the timer; a fresh directory for umoci) and is checked afterwards (the image
//! is listed, one committed snapshot per layer; for umoci the files are there). The
//! order of the tools rotates every round and dirty data is flushed (untimed) before
//! every sample. Medians are reported.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Parser;
use integration::bench::{self, Machine, PullTarget, RowSpec, Sample};
use integration::containerd::{self, Containerd};
use integration::daemon::{self, Daemon, DaemonOpts};
use integration::fixtures::{self, Image};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "bench-unpack",
    about = "Import/pull + unpack into snapshots: berth vs containerd vs umoci"
)]
struct Args {
    #[command(flatten)]
    bench: bench::BenchArgs,
}

/// Name the imports give the image (berth normalises it to docker.io/bench/large:latest).
const BASE_NAME: &str = "bench/large";

/// The timed tools, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    BerthImport,
    CtrImport,
    BerthPull,
    CtrPull,
    CtrIngest,
    Umoci,
}

impl Tool {
    const ALL: [Tool; 6] = [
        Tool::BerthImport,
        Tool::CtrImport,
        Tool::BerthPull,
        Tool::CtrPull,
        Tool::CtrIngest,
        Tool::Umoci,
    ];
}

/// Table rows: the timed tools in [`Tool::ALL`] order, with the derived berth unpack
/// phase inserted before umoci.
const DERIVED_ROW: usize = 5;

fn specs() -> Vec<RowSpec> {
    let row = |key, label: &str, base| RowSpec {
        key,
        label: label.to_string(),
        base,
    };
    vec![
        row(
            "berth-import",
            "berth (berthctl images import; ingest+unpack)",
            Some(0),
        ),
        row(
            "containerd-import",
            "containerd (ctr images import; ingest+unpack)",
            Some(0),
        ),
        row(
            "berth-pull",
            "berth (berthctl images pull; fetch+unpack)",
            Some(2),
        ),
        row(
            "containerd-pull",
            "containerd (ctr images pull; fetch+unpack)",
            Some(2),
        ),
        row(
            "containerd-import-no-unpack",
            "containerd (ctr images import --no-unpack; ingest only)",
            None,
        ),
        row(
            "berth-import-unpack-phase",
            "berth import, unpack phase only (derived, see below)",
            None,
        ),
        row(
            "umoci",
            "umoci raw unpack (unpack only, OCI layout -> dir)",
            None,
        ),
    ]
}

struct Bench<'a> {
    img: &'a Image,
    archive: PathBuf,
    bin_dir: PathBuf,
    pull: PullTarget,
    /// Size of each random data file (`/data/blob-N.bin`).
    data_file_size: u64,
    /// Unpack phases of the berth imports, in seconds.
    berth_unpack_phase: Vec<Sample>,
}

impl Bench<'_> {
    fn run(&mut self, tool: Tool) -> Result<Sample> {
        match tool {
            Tool::BerthImport => self.berth_import(),
            Tool::CtrImport => self.ctr_import(true),
            Tool::CtrIngest => self.ctr_import(false),
            Tool::Umoci => self.umoci(),
            Tool::BerthPull => self.pull.berth(),
            Tool::CtrPull => self.pull.ctr(&["images", "pull", "--plain-http"], true),
        }
    }

    fn berth_import(&mut self) -> Result<Sample> {
        let d = Daemon::start_with(DaemonOpts {
            bin_dir: Some(self.bin_dir.clone()),
            ..Default::default()
        })?;
        let mut cmd = Command::new(self.bin_dir.join("berthctl"));
        cmd.arg("--address")
            .arg(d.socket_path())
            .args(["images", "import", "--base-name", BASE_NAME])
            .arg(&self.archive);
        let t = bench::run_timed(cmd, d.dir())?;
        bench::ensure_success("berthctl images import", &t, || daemon::tail(&d.log(), 40))?;
        let peak = bench::hwm_kib(d.pid().ok_or_else(|| anyhow!("berthd not running"))?)?;
        let secs = t.elapsed.as_secs_f64();

        let images: Vec<Value> =
            serde_json::from_str(&d.ctl_ok(["images", "ls", "--format", "json"])?)
                .context("parse berthctl images ls")?;
        let name = format!("docker.io/{BASE_NAME}:latest");
        let image = images
            .iter()
            .find(|i| i["name"] == name.as_str())
            .ok_or_else(|| anyhow!("berth: {name} not listed after the import: {images:?}"))?;
        ensure!(
            image["target"]["digest"] == self.img.manifest_digest.as_str(),
            "berth: {name} has digest {}, want {}",
            image["target"]["digest"],
            self.img.manifest_digest
        );
        let snaps = bench::berth_committed_snapshots(&d)?;
        ensure!(
            snaps.len() == self.img.layers.len(),
            "berth: {} committed snapshots after the import, {} layers",
            snaps.len(),
            self.img.layers.len()
        );

        // The unpack phase: berthd stamps the image record (createdAt) once the archive
        // is ingested, unpacks, and each commit stamps its snapshot (createdAt).
        let time = |v: &Value| v.as_str().and_then(bench::parse_rfc3339_utc);
        let recorded = time(&image["createdAt"])
            .ok_or_else(|| anyhow!("berth: image createdAt {}", image["createdAt"]))?;
        let last_commit = snaps
            .iter()
            .filter_map(|s| time(&s["createdAt"]))
            .fold(f64::NEG_INFINITY, f64::max);
        let phase = last_commit - recorded;
        if phase.is_finite() && phase >= 0.0 && phase <= secs {
            self.berth_unpack_phase.push(Sample {
                secs: phase,
                daemon_peak_kib: None,
                client_peak_kib: None,
            });
        } else {
            eprintln!(
                "warning: berth unpack phase {phase:.3}s out of range (import took {secs:.3}s); \
                 sample dropped"
            );
        }
        Ok(Sample {
            secs,
            daemon_peak_kib: Some(peak),
            client_peak_kib: Some(t.peak_kib),
        })
    }

    fn ctr_import(&self, unpack: bool) -> Result<Sample> {
        let c = Containerd::start()?;
        let mut cmd = c.ctr_command();
        cmd.args(["images", "import", "--base-name", BASE_NAME]);
        if !unpack {
            cmd.arg("--no-unpack");
        }
        cmd.arg(&self.archive);
        let t = bench::run_timed(cmd, c.dir())?;
        bench::ensure_success("ctr images import", &t, || daemon::tail(&c.log(), 40))?;
        let peak = bench::hwm_kib(c.pid().ok_or_else(|| anyhow!("containerd not running"))?)?;
        let name = format!("{BASE_NAME}:latest");
        let images = c.images()?;
        ensure!(
            images.contains(&(name.clone(), self.img.manifest_digest.clone())),
            "containerd: {name} @ {} not listed after the import: {images:?}",
            self.img.manifest_digest
        );
        let snaps = bench::ctr_committed_snapshots(&c)?;
        let want = if unpack { self.img.layers.len() } else { 0 };
        ensure!(
            snaps == want,
            "containerd: {snaps} committed snapshots after the import, expected {want}"
        );
        Ok(Sample {
            secs: t.elapsed.as_secs_f64(),
            daemon_peak_kib: Some(peak),
            client_peak_kib: Some(t.peak_kib),
        })
    }

    fn umoci(&self) -> Result<Sample> {
        let tmp = tempfile::Builder::new().prefix("bench-umoci-").tempdir()?;
        let rootfs = tmp.path().join("rootfs");
        let mut cmd = Command::new("umoci");
        cmd.args(["raw", "unpack", "--image"])
            .arg(format!(
                "{}:{}",
                self.img.layout_dir.display(),
                self.img.tag
            ))
            .arg(&rootfs);
        let t = bench::run_timed(cmd, tmp.path())?;
        bench::ensure_success("umoci raw unpack", &t, String::new)?;
        self.check_rootfs("umoci", &rootfs)?;
        Ok(Sample {
            secs: t.elapsed.as_secs_f64(),
            daemon_peak_kib: None,
            client_peak_kib: Some(t.peak_kib),
        })
    }

    fn check_rootfs(&self, who: &str, rootfs: &Path) -> Result<()> {
        ensure!(
            rootfs.join("bin/busybox").is_file(),
            "{who}: no /bin/busybox in {}",
            rootfs.display()
        );
        for i in 0..self.img.layers.len() - 1 {
            let p = rootfs.join(format!("data/blob-{i}.bin"));
            let len = std::fs::metadata(&p)
                .with_context(|| format!("{who}: {}", p.display()))?
                .len();
            ensure!(
                len == self.data_file_size,
                "{who}: {} has {len} bytes, want {}",
                p.display(),
                self.data_file_size
            );
        }
        Ok(())
    }
}

/// Whether this `ctr` has a standalone `images unpack` command (containerd 1.6 has not).
fn ctr_has_unpack() -> bool {
    Command::new(containerd::CTR_BIN)
        .args(["images", "--help"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim_start().starts_with("unpack"))
        })
        .unwrap_or(false)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.bench.runs == 0 || args.bench.size_mb == 0 || args.bench.layers == 0 {
        bail!("--runs, --size-mb and --layers must be at least 1");
    }
    let bin_dir = bench::check_tools(&[("umoci", "umoci")])?;
    let m = Machine::detect();
    println!("{}", m.line());
    let versions = json!({
        "containerd": bench::version_of(containerd::CONTAINERD_BIN, &["--version"]),
        "umoci": bench::version_of("umoci", &["--version"]),
        "berthctl": bench::version_of(bin_dir.join("berthctl").to_str().unwrap_or("berthctl"), &["--version"]),
    });
    println!(
        "tools: berth from {}; {}; {}",
        bin_dir.display(),
        versions["umoci"].as_str().unwrap_or_default(),
        versions["containerd"].as_str().unwrap_or_default()
    );
    if ctr_has_unpack() {
        println!("note: this ctr has `images unpack`, which bench-unpack does not time yet");
    } else {
        println!(
            "note: ctr has no standalone unpack command (containerd 1.6): no containerd \
             unpack-only row; compare `ctr images import` with `--no-unpack` instead"
        );
    }

    let t0 = Instant::now();
    let img = fixtures::large(args.bench.size_mb, args.bench.layers, args.bench.seed)?;
    let image_bytes = bench::image_bytes(img)?;
    let work = tempfile::Builder::new().prefix("bench-unpack-").tempdir()?;
    let archive = work.path().join("large.tar");
    fixtures::write_oci_archive(&img.layout_dir, &archive)?;
    let archive_bytes = std::fs::metadata(&archive)?.len();
    let blob_paths: Vec<PathBuf> = img.all_blobs()?.iter().map(|d| img.blob_path(d)).collect();
    bench::warm_files(
        blob_paths
            .iter()
            .map(PathBuf::as_path)
            .chain([archive.as_path()]),
    )?;
    println!(
        "image: {} layers ({} random + busybox base, gzip), {:.1} MB in {} blobs; OCI \
         archive {:.1} MB; built in {:.1}s",
        img.layers.len(),
        args.bench.layers,
        image_bytes as f64 / 1e6,
        blob_paths.len(),
        archive_bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );

    let t0 = Instant::now();
    let (reg, reference) = bench::serve_image(img, "bench/large:1")?;
    println!(
        "registry: docker-registry at {} (pushed in {:.1}s); reference {reference}",
        reg.addr(),
        t0.elapsed().as_secs_f64()
    );

    let mut b = Bench {
        img,
        archive,
        bin_dir: bin_dir.clone(),
        pull: PullTarget {
            reference,
            bin_dir,
            layers: img.layers.iter().map(|l| l.digest.clone()).collect(),
        },
        data_file_size: ((args.bench.size_mb * 1024 * 1024) / args.bench.layers) as u64,
        berth_unpack_phase: Vec::new(),
    };
    let mut specs = specs();
    let keys: Vec<&str> = Tool::ALL
        .iter()
        .enumerate()
        .map(|(i, _)| specs[if i < DERIVED_ROW { i } else { i + 1 }].key)
        .collect();
    let mut samples = bench::run_rounds(&keys, args.bench.runs, |i| b.run(Tool::ALL[i]))?;
    samples.insert(DERIVED_ROW, std::mem::take(&mut b.berth_unpack_phase));
    if samples[DERIVED_ROW].is_empty() {
        specs.remove(DERIVED_ROW);
        samples.remove(DERIVED_ROW);
    }

    println!();
    println!(
        "{:.1} MB image, empty store per sample ({} runs each, order rotated per round; medians)",
        image_bytes as f64 / 1e6,
        args.bench.runs
    );
    let (rows, summary) = bench::summary_rows(&specs, &samples, image_bytes);
    bench::print_table(&bench::SUMMARY_HEADER, &rows);
    println!(
        "MB = 10^6 bytes of image blobs (manifest, config, layers); the random layers are \
         gzip with stored blocks, so the unpacked size is about the same.\n\
         berth/tool: like for like only (import vs import, pull vs pull); < 1 means berth \
         is faster. Rows without a ratio are references.\n\
         berth import, unpack phase: per berth import, the image record's createdAt \
         (stamped after ingest, before unpack) to the last snapshot commit's createdAt; \
         the rest of the import is upload + staging + ingest.\n\
         peak RSS: VmHWM of the daemon after the run + of the client, sampled every 5 ms; \
         medians. sync(2) before every sample (untimed). berth commits each snapshot \
         after syncfs(2)."
    );

    if let Some(path) = &args.bench.json {
        let doc = json!({
            "bench": "unpack",
            "machine": m.json(),
            "versions": versions,
            "image": {
                "size_mb": args.bench.size_mb,
                "layers": args.bench.layers,
                "seed": args.bench.seed,
                "bytes": image_bytes,
                "archive_bytes": archive_bytes,
                "manifest_digest": img.manifest_digest,
            },
            "runs": args.bench.runs,
            "results": summary,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    drop(reg);
    drop(work);
    Ok(())
}
