//! `bench-pull`: cold pull throughput of berth against containerd 1.6 and skopeo, all
//! from one real local docker-registry over plain HTTP, on this machine.
//!
//! A berth pull fetches and unpacks (layers become overlayfs snapshots), so the
//! like-for-like pair is berth against `ctr images pull` (fetch + unpack into
//! containerd's overlayfs snapshotter); only these two get a berth/tool ratio. `skopeo
//! copy ... dir:` and `ctr content fetch` are fetch-only references for the transfer
//! part alone. In containerd 1.6 the registry transfer happens in the `ctr` process,
//! which streams blobs into containerd over gRPC.
//!
//! Every sample is a cold pull into an empty store: a fresh berthd (started before the
//! timer), a fresh `dir:` destination for skopeo, a fresh containerd (started before
//! the timer). Each result is checked (layers present; one committed snapshot per
//! layer where the tool unpacks). The order of the tools rotates every round so
//! machine noise hits all alike, and dirty data is flushed (untimed) before every
//! sample. Medians are reported.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use integration::bench::{self, Machine, PullTarget, RowSpec, Sample};
use integration::containerd;
use integration::fixtures;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "bench-pull",
    about = "Cold pull throughput: berth vs containerd vs skopeo, from a local registry"
)]
struct Args {
    #[command(flatten)]
    bench: bench::BenchArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Berth,
    CtrPull,
    Skopeo,
    CtrFetch,
}

impl Tool {
    /// Table order: the like-for-like pair first, then the fetch-only references.
    const ALL: [Tool; 4] = [Tool::Berth, Tool::CtrPull, Tool::Skopeo, Tool::CtrFetch];

    fn spec(self) -> RowSpec {
        let (key, label, base) = match self {
            Tool::Berth => (
                "berth",
                "berth (berthctl images pull; fetch+unpack)",
                Some(0),
            ),
            Tool::CtrPull => (
                "containerd-pull",
                "containerd (ctr images pull; fetch+unpack)",
                Some(0),
            ),
            Tool::Skopeo => ("skopeo", "skopeo copy docker:// dir: (fetch only)", None),
            Tool::CtrFetch => (
                "containerd-fetch",
                "containerd (ctr content fetch; fetch only)",
                None,
            ),
        };
        RowSpec {
            key,
            label: label.to_string(),
            base,
        }
    }

    fn run(self, t: &PullTarget) -> Result<Sample> {
        match self {
            Tool::Berth => t.berth(),
            Tool::CtrPull => t.ctr(&["images", "pull", "--plain-http"], true),
            Tool::Skopeo => t.skopeo(),
            Tool::CtrFetch => t.ctr(&["content", "fetch", "--plain-http"], false),
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.bench.runs == 0 || args.bench.size_mb == 0 || args.bench.layers == 0 {
        bail!("--runs, --size-mb and --layers must be at least 1");
    }
    let bin_dir = bench::check_tools(&[("skopeo", "skopeo")])?;
    let m = Machine::detect();
    println!("{}", m.line());
    let versions = json!({
        "containerd": bench::version_of(containerd::CONTAINERD_BIN, &["--version"]),
        "skopeo": bench::version_of("skopeo", &["--version"]),
        "berthctl": bench::version_of(bin_dir.join("berthctl").to_str().unwrap_or("berthctl"), &["--version"]),
    });
    println!(
        "tools: berth from {}; {}; {}",
        bin_dir.display(),
        versions["skopeo"].as_str().unwrap_or_default(),
        versions["containerd"].as_str().unwrap_or_default()
    );

    let t0 = Instant::now();
    let img = fixtures::large(args.bench.size_mb, args.bench.layers, args.bench.seed)?;
    let image_bytes = bench::image_bytes(img)?;
    println!(
        "image: {} layers ({} random + busybox base), {:.1} MB in {} blobs, built in {:.1}s",
        img.layers.len(),
        args.bench.layers,
        image_bytes as f64 / 1e6,
        img.all_blobs()?.len(),
        t0.elapsed().as_secs_f64()
    );

    let t0 = Instant::now();
    let (reg, reference) = bench::serve_image(img, "bench/large:1")?;
    println!(
        "registry: docker-registry at {} (pushed in {:.1}s); reference {reference}",
        reg.addr(),
        t0.elapsed().as_secs_f64()
    );

    let target = PullTarget {
        reference,
        bin_dir,
        layers: img.layers.iter().map(|l| l.digest.clone()).collect(),
    };
    let specs: Vec<RowSpec> = Tool::ALL.iter().map(|t| t.spec()).collect();
    let keys: Vec<&str> = specs.iter().map(|s| s.key).collect();
    let samples = bench::run_rounds(&keys, args.bench.runs, |i| Tool::ALL[i].run(&target))?;

    println!();
    println!(
        "cold pull of {:.1} MB ({} runs each, order rotated per round; medians)",
        image_bytes as f64 / 1e6,
        args.bench.runs
    );
    let (rows, summary) = bench::summary_rows(&specs, &samples, image_bytes);
    bench::print_table(&bench::SUMMARY_HEADER, &rows);
    println!(
        "MB = 10^6 bytes of registry blobs (manifest, config, layers). berth/tool: like for \
         like (fetch+unpack) only; < 1 means berth is faster.\n\
         Fetch-only rows are references for the transfer alone: berth has no fetch-only \
         mode (its pull always unpacks).\n\
         peak RSS: VmHWM of the daemon after the pull + of the client, sampled every 5 ms; \
         medians. berth fetches 3 layers at a time (default config); ctr 1.6 without a \
         limit. sync(2) before every sample (untimed)."
    );

    if let Some(path) = &args.bench.json {
        let doc = json!({
            "bench": "pull",
            "machine": m.json(),
            "versions": versions,
            "image": {
                "size_mb": args.bench.size_mb,
                "layers": args.bench.layers,
                "seed": args.bench.seed,
                "bytes": image_bytes,
                "manifest_digest": img.manifest_digest,
            },
            "runs": args.bench.runs,
            "results": summary,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
