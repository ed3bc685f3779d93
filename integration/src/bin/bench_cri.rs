//! `bench-cri`: the same CRI workload against berthd and against Debian's containerd
//! 1.6 (its CRI plugin, `containerd-shim-runc-v2`, runc) on this machine in one run.
//!
//! Both daemons run at once, each on its own temp root/state/socket, CNI network
//! (bridge + host-local + portmap on its own subnet), cgroup parent and pod log dir, and
//! pull the same busybox image from one local docker-registry through CRI `PullImage`.
//! They are driven one at a time by the same client code (`berth_api::runtime::v1` over
//! the Unix socket); every workload is split into rounds and the order of the two
//! runtimes alternates per round, so machine noise hits both alike. Each phase checks
//! that the pods really run (READY pods, RUNNING containers, ExecSync exit codes).
//!
//! The table gives medians, berth/containerd (< 1: berth is faster or smaller) and p90
//! for latencies; `--json FILE` writes the same with every sample. Progress goes to
//! stderr. Everything is removed afterwards on both sides, also on errors (pods through
//! the CRI, then the harnesses sweep shims, runc containers, mounts, netns pins,
//! bridges, portmap rules and cgroups).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use integration::bench::{self, Machine};
use integration::bench_cri::{
    self, container_config, med_p90, pod_config, Common, Results, Runtime, Side,
};
use integration::cri::{self, api};
use integration::{containerd, fixtures, Registry};
use serde_json::json;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench-cri",
    about = "The same CRI workload against berthd and containerd 1.6, side by side"
)]
struct Args {
    /// Pods started one after another (each: sandbox + one busybox `sleep` container).
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Pods started at once, per batch.
    #[arg(long, default_value_t = 20)]
    concurrent: usize,
    /// Batches of concurrent pod starts per runtime.
    #[arg(long, default_value_t = 2)]
    concurrent_rounds: usize,
    /// Rounds each sequential workload is split into (runtime order alternates).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Containers present for the list/status latencies (extra containers are added to
    /// the pods; their create/start/stop/remove are the lifecycle samples). 1000 works
    /// if memory allows.
    #[arg(long, default_value_t = 200)]
    containers: usize,
    /// Calls of each of ListContainers, ListPodSandbox and ContainerStatus.
    #[arg(long, default_value_t = 200)]
    list_calls: usize,
    /// ExecSync `true` calls.
    #[arg(long, default_value_t = 50)]
    execs: usize,
    /// Daemon restarts (with the pods running) per runtime.
    #[arg(long, default_value_t = 3)]
    restarts: usize,
    /// Size of the large image's random layers for the cold pull, in MiB (0: skip).
    #[arg(long, default_value_t = 128)]
    pull_size_mb: usize,
    /// Random layers of the large image.
    #[arg(long, default_value_t = 4)]
    pull_layers: usize,
    /// Cold pulls per runtime (a fresh daemon each).
    #[arg(long, default_value_t = 3)]
    pull_runs: usize,
    /// berth's `[cri] sandbox_mode`: "pinned" (its default: namespaces pinned, no pause
    /// process) or "pause" (a pause container, as containerd does).
    #[arg(long, default_value = "pinned")]
    berth_sandbox_mode: String,
    /// berthd's `--log-level` (containerd logs at its default, info).
    #[arg(long, default_value = "info")]
    berth_log_level: String,
    /// For profiling and inspection (perf, smaps): wait for Enter after this phase,
    /// with its pods still running: "memory" (all pods up, memory measured), "lists"
    /// (all extra containers up, lists measured) or "cleanup" (before cleaning up).
    #[arg(long, value_name = "PHASE", value_parser = ["memory", "lists", "cleanup"])]
    pause_after: Option<String>,
    /// Also write all samples and the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

const BOTH: [Runtime; 2] = [Runtime::Berth, Runtime::Containerd];

/// The order of the runtimes in round `r`.
fn order(r: usize) -> [Runtime; 2] {
    if r.is_multiple_of(2) {
        BOTH
    } else {
        [Runtime::Containerd, Runtime::Berth]
    }
}

fn idx(rt: Runtime) -> usize {
    match rt {
        Runtime::Berth => 0,
        Runtime::Containerd => 1,
    }
}

/// `0..n` split into `rounds` nearly equal consecutive ranges.
fn chunks(n: usize, rounds: usize) -> Vec<std::ops::Range<usize>> {
    let rounds = rounds.max(1).min(n.max(1));
    (0..rounds)
        .map(|r| (n * r / rounds)..(n * (r + 1) / rounds))
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Ctx {
    args: Args,
    t0: Instant,
    res: Results,
}

impl Ctx {
    fn progress(&self, msg: &str) {
        eprintln!("[{:6.1}s] {msg}", self.t0.elapsed().as_secs_f64());
    }

    /// Waits for Enter when `--pause-after` names this phase.
    fn pause_after(&self, phase: &str) {
        if self.args.pause_after.as_deref() == Some(phase) {
            eprintln!("paused after {phase}: press Enter to go on");
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.pods >= 1 && args.rounds >= 1 && args.concurrent >= 1,
        "--pods, --rounds and --concurrent must be at least 1"
    );
    ensure!(
        matches!(args.berth_sandbox_mode.as_str(), "pinned" | "pause"),
        "--berth-sandbox-mode is pinned or pause"
    );
    let bin_dir = bench::check_tools(&[])?;
    let m = Machine::detect();
    println!("{}", m.line());
    let versions = json!({
        "containerd": bench::version_of(containerd::CONTAINERD_BIN, &["--version"]),
        "runc": bench::version_of("runc", &["--version"]),
        "berthd": bench::version_of(bin_dir.join("berthd").to_str().unwrap_or("berthd"), &["--version"]),
    });
    println!(
        "versions: {} ; {} ; {}",
        versions["berthd"].as_str().unwrap_or_default(),
        versions["containerd"].as_str().unwrap_or_default(),
        versions["runc"].as_str().unwrap_or_default()
    );
    let mut ctx = Ctx {
        args: args.clone(),
        t0: Instant::now(),
        res: Results::default(),
    };

    ctx.progress("building fixtures, starting the local registry");
    let reg = Registry::start_default()?;
    reg.push_layout(fixtures::busybox()?, "bench/busybox:1")?;
    reg.push_layout(fixtures::pause()?, "bench/pause:1")?;
    let hosts = tempfile::Builder::new()
        .prefix("berth-bench-hosts-")
        .tempdir()?;
    bench_cri::write_hosts_toml(hosts.path(), reg.addr())?;
    let common = Common {
        bin_dir,
        hosts_dir: hosts.path().to_path_buf(),
        pause_image: reg.reference("bench/pause:1"),
        berth_sandbox_mode: args.berth_sandbox_mode.clone(),
        berth_log_level: args.berth_log_level.clone(),
    };
    let busybox = reg.reference("bench/busybox:1");

    // Started one after the other; both idle while the other is measured.
    let mut sides: Vec<Side> = Vec::new();
    let mut result = async {
        for rt in BOTH {
            ctx.progress(&format!("starting {}", rt.name()));
            sides.push(Side::start(rt, &common).await?);
        }
        pod_phases(&mut ctx, &mut sides, &busybox).await
    }
    .await;
    ctx.pause_after("cleanup");
    for s in sides.iter_mut() {
        ctx.progress(&format!("cleaning up {}", s.name()));
        if let Err(e) = s.cleanup().await {
            eprintln!("cleanup of {}: {e:#}", s.name());
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    drop(sides);
    result?;

    if args.pull_size_mb > 0 && args.pull_runs > 0 {
        pull_phase(&mut ctx, &common, &reg).await?;
    }
    drop(reg);
    drop(hosts);
    ctx.progress("done");

    report(&ctx, &m, &versions)
}

/// Everything with pods: memory, sequential and concurrent starts, lifecycle, lists,
/// exec, restart.
async fn pod_phases(ctx: &mut Ctx, sides: &mut [Side], busybox: &str) -> Result<()> {
    let a = ctx.args.clone();
    let r = &mut ctx.res;
    r.metric("rss_idle", "daemon RSS, idle after start (MiB)");
    r.metric("pss_idle", "daemon PSS, idle after start (MiB)");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for s in sides.iter() {
        let (rss, pss) = s.daemon_mem()?;
        r.add("rss_idle", s.kind, mib(rss));
        r.add("pss_idle", s.kind, mib(pss));
    }

    ctx.progress("pulling busybox (and the pause image) through CRI PullImage");
    for s in sides.iter_mut() {
        s.image = busybox.to_string();
        s.pull(busybox).await?;
        if s.kind == Runtime::Containerd || a.berth_sandbox_mode == "pause" {
            s.pull(&common_pause(busybox)).await?;
        }
    }

    // ---- sequential pod starts
    for (k, l) in [
        ("pod_seq", "pod start, sequential: Run+Create+Start (ms)"),
        ("pod_seq_run", "  RunPodSandbox (ms)"),
        ("pod_seq_create", "  CreateContainer (ms)"),
        ("pod_seq_start", "  StartContainer (ms)"),
    ] {
        ctx.res.metric(k, l);
    }
    for (round, range) in chunks(a.pods, a.rounds).into_iter().enumerate() {
        for rt in order(round) {
            let s = &mut sides[idx(rt)];
            for i in range.clone() {
                let t = s.start_pod(&format!("seq{i}")).await?;
                ctx.res.add("pod_seq", rt, t.total() * 1000.0);
                ctx.res.add("pod_seq_run", rt, t.run * 1000.0);
                ctx.res.add("pod_seq_create", rt, t.create * 1000.0);
                ctx.res.add("pod_seq_start", rt, t.start * 1000.0);
            }
            s.check_running().await?;
        }
        ctx.progress(&format!(
            "sequential pod starts: {}/{} per runtime",
            range.end, a.pods
        ));
    }

    // ---- memory with the pods running
    ctx.res.metric(
        "rss_pods",
        &format!("daemon RSS with {} pods (MiB)", a.pods),
    );
    ctx.res.metric(
        "pss_pods",
        &format!("daemon PSS with {} pods (MiB)", a.pods),
    );
    ctx.res.metric("shim_rss", "shim RSS per pod (MiB)");
    ctx.res.metric("shim_pss", "shim PSS per pod (MiB)");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for s in sides.iter() {
        let (rss, pss) = s.daemon_mem()?;
        ctx.res.add("rss_pods", s.kind, mib(rss));
        ctx.res.add("pss_pods", s.kind, mib(pss));
        let shims = s.shims();
        ensure!(
            shims.len() == a.pods,
            "{}: {} shim processes for {} pods",
            s.name(),
            shims.len(),
            a.pods
        );
        let n = a.pods as f64;
        ctx.res.add(
            "shim_rss",
            s.kind,
            mib(shims.iter().map(|x| x.1).sum::<u64>()) / n,
        );
        ctx.res.add(
            "shim_pss",
            s.kind,
            mib(shims.iter().map(|x| x.2).sum::<u64>()) / n,
        );
    }
    ctx.progress("memory measured");
    ctx.pause_after("memory");

    // ---- ExecSync
    ctx.res.metric("exec", "ExecSync `true` (ms)");
    for (round, range) in chunks(a.execs, a.rounds).into_iter().enumerate() {
        for rt in order(round) {
            let s = &mut sides[idx(rt)];
            let cid = s.pods[0].containers[0].clone();
            for _ in range.clone() {
                let t = Instant::now();
                let r = cri::exec(&mut s.rt, &cid, &["true"], 10).await;
                let d = t.elapsed();
                let r = r.map_err(|e| s.err("ExecSync", e))?;
                ensure!(r.exit_code == 0, "{}: ExecSync true: {r:?}", s.name());
                ctx.res.add("exec", rt, ms(d));
            }
        }
    }
    ctx.progress("ExecSync done");

    // ---- restart with the pods running
    ctx.res.metric(
        "restart",
        &format!(
            "daemon restart with {} pods: until Status + full ListContainers (ms)",
            a.pods
        ),
    );
    for round in 0..a.restarts {
        for rt in order(round) {
            let s = &mut sides[idx(rt)];
            let want = s.pods.len();
            let secs = s.restart(want).await?;
            s.check_running().await?;
            ctx.res.add("restart", rt, secs * 1000.0);
        }
        ctx.progress(&format!("restart {}/{}", round + 1, a.restarts));
    }

    // ---- more containers: create/start latencies
    let per_pod = a.containers.div_ceil(a.pods).max(1) - 1;
    ctx.res
        .metric("ctr_create", "CreateContainer, pods running (ms)");
    ctx.res.metric("ctr_start", "StartContainer (ms)");
    let sh = "trap 'exit 0' TERM; sleep 3600 & wait";
    for (round, range) in chunks(a.pods, a.rounds).into_iter().enumerate() {
        for rt in order(round) {
            let s = &mut sides[idx(rt)];
            for p in range.clone() {
                for j in 0..per_pod {
                    let pod = s.pods[p].clone();
                    let cc = container_config(
                        &s.image,
                        &pod.config,
                        &format!("extra{j}"),
                        &["sh", "-c", sh],
                    )?;
                    let t = Instant::now();
                    let cid =
                        s.rt.create_container(api::CreateContainerRequest {
                            pod_sandbox_id: pod.id.clone(),
                            config: Some(cc),
                            sandbox_config: Some(pod.config.clone()),
                        })
                        .await
                        .map_err(|e| s.err("CreateContainer", e))?
                        .into_inner()
                        .container_id;
                    let t1 = Instant::now();
                    s.rt.start_container(api::StartContainerRequest {
                        container_id: cid.clone(),
                    })
                    .await
                    .map_err(|e| s.err("StartContainer", e))?;
                    let t2 = Instant::now();
                    ctx.res.add("ctr_create", rt, ms(t1 - t));
                    ctx.res.add("ctr_start", rt, ms(t2 - t1));
                    s.pods[p].containers.push(cid);
                }
            }
            s.check_running().await?;
        }
    }
    let total: usize = sides[0].pods.iter().map(|p| p.containers.len()).sum();
    ctx.progress(&format!("{total} containers running on each side"));

    // ---- list and status latencies
    ctx.res.metric(
        "list_containers",
        &format!("ListContainers, {total} containers (ms)"),
    );
    ctx.res.metric(
        "list_pods",
        &format!("ListPodSandbox, {} pods (ms)", a.pods),
    );
    ctx.res.metric("container_status", "ContainerStatus (ms)");
    // Where the floor is: the same call answering nothing, and the client's own
    // decoding of the full reply (same bytes for both runtimes up to ids and times).
    ctx.res
        .metric("list_none", "  ListContainers, filter matching none (ms)");
    ctx.res.metric(
        "list_decode",
        &format!("  client decode of the {total}-container reply (ms)"),
    );
    for (round, range) in chunks(a.list_calls, a.rounds).into_iter().enumerate() {
        for rt in order(round) {
            let s = &mut sides[idx(rt)];
            let ids: Vec<String> = s
                .pods
                .iter()
                .flat_map(|p| p.containers.iter().cloned())
                .collect();
            for i in range.clone() {
                let t = Instant::now();
                let list = cri::list_containers(&mut s.rt, None).await?;
                ctx.res.add("list_containers", rt, ms(t.elapsed()));
                let n = list.len();
                ensure!(n == total, "{}: ListContainers gave {n}", s.name());
                let bytes = prost::Message::encode_to_vec(&api::ListContainersResponse {
                    containers: list,
                });
                let t = Instant::now();
                let back: api::ListContainersResponse = prost::Message::decode(&bytes[..])?;
                ctx.res.add("list_decode", rt, ms(t.elapsed()));
                ensure!(back.containers.len() == n);
                let none = api::ContainerFilter {
                    id: "0000000000000000".into(),
                    ..Default::default()
                };
                let t = Instant::now();
                let n = cri::list_containers(&mut s.rt, Some(none)).await?.len();
                ctx.res.add("list_none", rt, ms(t.elapsed()));
                ensure!(
                    n == 0,
                    "{}: ListContainers by a missing id gave {n}",
                    s.name()
                );
                let t = Instant::now();
                let n = cri::list_pods(&mut s.rt, None).await?.len();
                ctx.res.add("list_pods", rt, ms(t.elapsed()));
                ensure!(n == a.pods, "{}: ListPodSandbox gave {n}", s.name());
                let id = &ids[(i * 7919) % ids.len()];
                let t = Instant::now();
                let st = cri::cstatus(&mut s.rt, id).await?;
                ctx.res.add("container_status", rt, ms(t.elapsed()));
                ensure!(
                    st.state == api::ContainerState::ContainerRunning as i32,
                    "{}: {id} not running: {st:?}",
                    s.name()
                );
            }
        }
    }
    ctx.progress("list/status done");
    ctx.pause_after("lists");

    // ---- stop/remove of the extra containers
    ctx.res.metric(
        "ctr_stop",
        "StopContainer (SIGTERM, exits at once; timeout 10 s) (ms)",
    );
    ctx.res.metric("ctr_remove", "RemoveContainer (ms)");
    for (round, range) in chunks(a.pods, a.rounds).into_iter().enumerate() {
        for rt in order(round) {
            let s = &mut sides[idx(rt)];
            for p in range.clone() {
                let extras: Vec<String> = s.pods[p].containers.drain(1..).collect();
                for cid in extras {
                    let t = Instant::now();
                    s.rt.stop_container(api::StopContainerRequest {
                        container_id: cid.clone(),
                        timeout: 10,
                    })
                    .await
                    .map_err(|e| s.err("StopContainer", e))?;
                    let t1 = Instant::now();
                    s.rt.remove_container(api::RemoveContainerRequest {
                        container_id: cid.clone(),
                    })
                    .await
                    .map_err(|e| s.err("RemoveContainer", e))?;
                    let t2 = Instant::now();
                    ctx.res.add("ctr_stop", rt, ms(t1 - t));
                    ctx.res.add("ctr_remove", rt, ms(t2 - t1));
                }
            }
            s.check_running().await?;
        }
    }
    ctx.progress("container stop/remove done");

    // ---- pod stop + remove, sequential
    ctx.res.metric("pod_stop", "StopPodSandbox (ms)");
    ctx.res.metric("pod_remove", "RemovePodSandbox (ms)");
    for (round, range) in chunks(a.pods, a.rounds).into_iter().enumerate() {
        for rt in order(round) {
            let s = &mut sides[idx(rt)];
            let ids: Vec<String> = s.pods[range.clone()].iter().map(|p| p.id.clone()).collect();
            for id in ids {
                let t = Instant::now();
                s.rt.stop_pod_sandbox(api::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .map_err(|e| s.err("StopPodSandbox", e))?;
                let t1 = Instant::now();
                s.rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .map_err(|e| s.err("RemovePodSandbox", e))?;
                let t2 = Instant::now();
                ctx.res.add("pod_stop", rt, ms(t1 - t));
                ctx.res.add("pod_remove", rt, ms(t2 - t1));
            }
        }
    }
    for s in sides.iter_mut() {
        s.cleanup().await?;
    }
    ctx.progress("pods removed (no shims, netns pins or veths left)");

    // ---- concurrent pod starts
    ctx.res.metric(
        "pod_conc",
        &format!("pod start, {} at once: per pod (ms)", a.concurrent),
    );
    ctx.res.metric(
        "pod_conc_wall",
        &format!("pod start, {} at once: all ready (ms)", a.concurrent),
    );
    for round in 0..a.concurrent_rounds {
        for rt in order(round) {
            let s = &mut sides[idx(rt)];
            let mut tasks = Vec::new();
            let t = Instant::now();
            for i in 0..a.concurrent {
                let config = pod_config(s.files.path(), &s.cgroup_parent, &format!("conc{i}"))?;
                let cc = container_config(&s.image, &config, "main", &["sleep", "3600"])?;
                let mut client = s.rt.clone();
                tasks.push(tokio::spawn(async move {
                    bench_cri::start_pod(&mut client, config, cc).await
                }));
            }
            let mut err = None;
            for task in tasks {
                match task.await? {
                    Ok((pod, st)) => {
                        ctx.res.add("pod_conc", rt, st.total() * 1000.0);
                        s.pods.push(pod);
                    }
                    Err((w, e)) => {
                        err.get_or_insert_with(|| s.err(w, e));
                    }
                }
            }
            ctx.res.add("pod_conc_wall", rt, ms(t.elapsed()));
            if let Some(e) = err {
                return Err(e);
            }
            s.check_running().await?;
            s.cleanup().await?;
        }
        ctx.progress(&format!(
            "concurrent pod starts: round {}/{}",
            round + 1,
            a.concurrent_rounds
        ));
    }
    Ok(())
}

/// The pause reference next to the busybox one (same registry).
fn common_pause(busybox: &str) -> String {
    busybox.replace("bench/busybox:1", "bench/pause:1")
}

/// Cold PullImage of the large fixture, a fresh daemon (empty store) per sample.
async fn pull_phase(ctx: &mut Ctx, common: &Common, reg: &Registry) -> Result<()> {
    let a = ctx.args.clone();
    ctx.progress(&format!(
        "building the large image ({} MiB in {} layers)",
        a.pull_size_mb, a.pull_layers
    ));
    let img = fixtures::large(a.pull_size_mb, a.pull_layers, 1)?;
    let bytes = bench::image_bytes(img)?;
    reg.push_layout(img, "bench/large:1")?;
    let reference = reg.reference("bench/large:1");
    ctx.res.metric(
        "pull",
        &format!(
            "PullImage {:.0} MB, {} layers, cold store: fetch+unpack (ms)",
            bytes as f64 / 1e6,
            img.layers.len()
        ),
    );
    let empty = tempfile::Builder::new()
        .prefix("berth-bench-empty-")
        .tempdir()?;
    for round in 0..a.pull_runs {
        for rt in order(round) {
            let d = bench_cri::start_daemon(rt, common, None, "/berth-bench-pull", empty.path())?;
            let (_rt, mut imgc) = bench_cri::connect(&d.socket(), Duration::from_secs(30)).await?;
            bench::settle();
            let t = Instant::now();
            let r = imgc
                .pull_image(api::PullImageRequest {
                    image: Some(api::ImageSpec {
                        image: reference.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await;
            let d_ms = ms(t.elapsed());
            let r = r.map_err(|s| {
                anyhow::anyhow!(
                    "{}: PullImage {reference}: {s}\n{}",
                    rt.name(),
                    cri::log_excerpt(&d.log(), 30)
                )
            })?;
            let id = r.into_inner().image_ref;
            ensure!(
                id.contains(&img.config_digest) || id == img.config_digest,
                "{}: PullImage answered {id}, want {}",
                rt.name(),
                img.config_digest
            );
            ctx.res.add("pull", rt, d_ms);
            drop(d);
        }
        ctx.progress(&format!("cold pull {}/{}", round + 1, a.pull_runs));
    }
    Ok(())
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn report(ctx: &Ctx, m: &Machine, versions: &serde_json::Value) -> Result<()> {
    let header = [
        "metric",
        "berth",
        "containerd",
        "berth/containerd",
        "berth p90",
        "containerd p90",
        "n",
    ];
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for (key, label) in ctx.res.keys() {
        let b = ctx.res.get(key, Runtime::Berth);
        let c = ctx.res.get(key, Runtime::Containerd);
        let (Some((bm, bp)), Some((cm, cp))) = (med_p90(b), med_p90(c)) else {
            continue;
        };
        let is_latency = label.ends_with("(ms)");
        let ratio = if cm > 0.0 { bm / cm } else { f64::NAN };
        rows.push(vec![
            label.clone(),
            fmt(bm),
            fmt(cm),
            format!("{ratio:.2}"),
            if is_latency { fmt(bp) } else { "-".into() },
            if is_latency { fmt(cp) } else { "-".into() },
            b.len().to_string(),
        ]);
        json_rows.push(json!({
            "metric": key,
            "label": label,
            "berth": {"median": bm, "p90": bp, "samples": b},
            "containerd": {"median": cm, "p90": cp, "samples": c},
            "berth_over_containerd": ratio,
        }));
    }
    println!();
    bench::print_table(&header, &rows);
    println!(
        "medians; berth/containerd < 1 means berth is faster or smaller; n = samples per \
         runtime; RSS/PSS from /proc (shims: sum over the shim processes / pods)."
    );
    if let Some(path) = &ctx.args.json {
        let a = &ctx.args;
        let doc = json!({
            "bench": "cri",
            "machine": m.json(),
            "versions": versions,
            "args": {
                "pods": a.pods, "concurrent": a.concurrent,
                "concurrent_rounds": a.concurrent_rounds, "rounds": a.rounds,
                "containers": a.containers, "list_calls": a.list_calls, "execs": a.execs,
                "restarts": a.restarts, "pull_size_mb": a.pull_size_mb,
                "pull_layers": a.pull_layers, "pull_runs": a.pull_runs,
                "berth_sandbox_mode": a.berth_sandbox_mode,
                "berth_log_level": a.berth_log_level,
            },
            "results": json_rows,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if rows.is_empty() {
        bail!("no results");
    }
    Ok(())
}
