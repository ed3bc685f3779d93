//! `chaos`: berthd under kubelet-like CRI load while faults are thrown at it; counts
//! every broken invariant and every leak. See `integration::chaos`.
//!
//! `--profile ci` (10 berthd kills, the other 7 fault kinds once each, >= 2 min) is
//! what `.ci/run` runs; `--profile full` (100 kills, 35 other faults) is `make chaos`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Parser;
use integration::bench::{self, Machine};
use integration::chaos::{self, report, Options};

#[derive(Parser, Debug)]
#[command(
    name = "chaos",
    about = "berthd under CRI load and faults; fails on any violation or leak"
)]
struct Args {
    /// "ci" (10 kills, 7 other faults, 2 min) or "full" (100 kills, 35 other faults).
    #[arg(long, default_value = "full", value_parser = ["ci", "full"])]
    profile: String,
    /// SIGKILLs of berthd (overrides the profile).
    #[arg(long)]
    kills: Option<usize>,
    /// Other faults, the 7 kinds in rotation (overrides the profile).
    #[arg(long)]
    other_faults: Option<usize>,
    /// Minimum run time, seconds (overrides the profile).
    #[arg(long)]
    min_secs: Option<u64>,
    /// Concurrent pod workers.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Long-lived pods writing numbered log lines.
    #[arg(long, default_value_t = 2)]
    long_lived: usize,
    /// Shortest gap between faults, ms.
    #[arg(long, default_value_t = 500)]
    gap_min_ms: u64,
    /// Longest gap between faults, ms.
    #[arg(long, default_value_t = 2500)]
    gap_max_ms: u64,
    /// PRNG seed for the fault order and timing.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Size of the tmpfs berth's root lives on, MiB.
    #[arg(long, default_value_t = 512)]
    root_mib: u64,
    /// Bound on one lister round (3 list calls) that got answers, seconds.
    #[arg(long, default_value_t = 5.0)]
    max_lister_secs: f64,
    /// Bound on berthd's VmRSS at any sample (after each fault), MiB. Growth over
    /// many pod cycles without restarts is `make soak`'s to bound.
    #[arg(long, default_value_t = 256)]
    max_rss_mib: u64,
    /// berthd's --log-level.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// berth's [cri] sandbox_mode.
    #[arg(long, default_value = "pinned", value_parser = ["pinned", "pause"])]
    sandbox_mode: String,
    /// Print the results as JSON (after the tables) to this file, or - for stdout.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    match chaos_main(Args::parse()).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn chaos_main(a: Args) -> Result<bool> {
    ensure!(
        a.gap_min_ms <= a.gap_max_ms,
        "--gap-min-ms must not exceed --gap-max-ms"
    );
    let (kills, others, min_secs) = match a.profile.as_str() {
        "ci" => (10, 7, 120),
        _ => (100, 35, 0),
    };
    let opts = Options {
        kills: a.kills.unwrap_or(kills),
        other_faults: a.other_faults.unwrap_or(others),
        min_secs: a.min_secs.unwrap_or(min_secs),
        workers: a.workers,
        long_lived: a.long_lived,
        gap_ms: (a.gap_min_ms, a.gap_max_ms),
        seed: a.seed,
        root_mib: a.root_mib,
        max_lister_secs: a.max_lister_secs,
        max_rss_mib: a.max_rss_mib,
        log_level: a.log_level,
        sandbox_mode: a.sandbox_mode,
        bin_dir: bench::berth_bin_dir()?,
    };
    println!("{}", Machine::detect().line());
    println!(
        "chaos: {} berthd kills, {} other faults, {} workers, {} long-lived pods, seed {}, sandbox mode {}",
        opts.kills, opts.other_faults, opts.workers, opts.long_lived, opts.seed, opts.sandbox_mode
    );
    let t0 = Instant::now();
    let (ctx, setup) = chaos::run(opts).await?;
    let wall = t0.elapsed().as_secs_f64();
    report::print(&ctx, wall);
    if let Some(path) = &a.json {
        let j = serde_json::to_string_pretty(&report::json(&ctx, wall))?;
        if path.as_os_str() == "-" {
            println!("{j}");
        } else {
            std::fs::write(path, j)?;
        }
    }
    let ok = report::passed(&ctx);
    if !ok {
        eprintln!("berthd log: {}", setup.log_path().display());
        // Keep the evidence: berthd's log is copied out before the sweep.
        let keep = std::env::temp_dir().join(format!("berth-chaos-{}.log", std::process::id()));
        let _ = std::fs::write(&keep, setup.log());
        eprintln!("chaos: FAILED; berthd's log kept at {}", keep.display());
    }
    drop(setup);
    Ok(ok)
}
