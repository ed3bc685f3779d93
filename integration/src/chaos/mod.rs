//! The chaos suite (`make chaos`, binary `chaos`): a real berthd on a private
//! root/state/socket/CNI network, driven over the CRI as kubelet drives it while
//! faults are thrown at it, with invariants checked after every fault and at the end.
//!
//! - [`env`]: the registry, images, network, fault hooks (a CNI plugin wrapper and a
//!   runc wrapper that fail on cue), the small root filesystem, berthd; the final
//!   sweep that counts leaks.
//! - [`workers`]: kubelet-like pod workers (retries reuse the name), the PLEG-like
//!   lister, the image puller, the long-lived pods writing numbered log lines.
//! - [`faults`]: the injector: SIGKILL berthd and restart it, SIGKILL a shim, runc
//!   dying mid-create, CNI ADD failing/hanging/dying, the registry stopped mid-blob,
//!   the root filesystem full during a pull.
//! - [`model`]: what the CRI acknowledged, and the checks of it against berthd's
//!   answers and the processes.
//! - [`report`]: the table and `--json`.

pub mod env;
pub mod faults;
pub mod model;
pub mod report;
pub mod workers;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::cri::{self, Img, Rt};

/// What a run does; the `chaos` binary's flags.
#[derive(Clone, Debug)]
pub struct Options {
    /// SIGKILLs of berthd (each followed by a restart).
    pub kills: usize,
    /// Other faults (shim kill, runc death, CNI, registry stop, disk full), in
    /// rotation so that each kind comes up when there are at least 7.
    pub other_faults: usize,
    /// Minimum run time; the run ends when both the faults and this are done.
    pub min_secs: u64,
    /// Concurrent pod workers.
    pub workers: usize,
    /// Long-lived pods writing numbered log lines.
    pub long_lived: usize,
    /// Seconds between faults: uniform in [min, max].
    pub gap_ms: (u64, u64),
    /// PRNG seed (the fault order and timing).
    pub seed: u64,
    /// Size of the tmpfs berth's root lives on, MiB.
    pub root_mib: u64,
    /// Bound on a lister call's latency (seconds) while berthd serves.
    pub max_lister_secs: f64,
    /// Bound on berthd's VmRSS (MiB) at any sample.
    pub max_rss_mib: u64,
    /// berthd's `--log-level`.
    pub log_level: String,
    /// berth's `[cri] sandbox_mode`.
    pub sandbox_mode: String,
    /// Where berthd, berthctl and berth-shim are.
    pub bin_dir: PathBuf,
}

/// Deadlines a kubelet-like client gives each kind of call.
pub const LIFECYCLE_DEADLINE: Duration = Duration::from_secs(60);
pub const LIST_DEADLINE: Duration = Duration::from_secs(15);
pub const PULL_DEADLINE: Duration = Duration::from_secs(120);
/// How long after berthd serves again latencies count as "during recovery".
pub const RECOVERY_WINDOW: Duration = Duration::from_secs(5);

/// Different messages kept per CRI method and code.
pub const MESSAGES_KEPT: usize = 4;

/// A message with hex ids and numbers masked, to tell kinds of errors apart.
pub fn message_shape(m: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 8 || run.chars().all(|c| c.is_ascii_digit()) && !run.is_empty() {
            out.push('#');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in m.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// One invariant broken.
#[derive(Clone, Debug)]
pub struct Violation {
    pub at: f64,
    pub kind: &'static str,
    pub object: String,
    pub detail: String,
}

/// Counts of one fault kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultCount {
    /// Armed or done by the injector.
    pub injected: u64,
    /// Known to have hit its target (a hook consumed, a pull in flight...).
    pub hit: u64,
}

/// Everything counted during a run.
#[derive(Default)]
pub struct StatsInner {
    /// (method, code) -> calls.
    pub rpcs: BTreeMap<(String, String), u64>,
    /// (method, code) -> up to [`MESSAGES_KEPT`] different messages of such
    /// answers (not OK), told apart with ids and numbers masked: a bug's error
    /// is not hidden behind the many broken connections of the kills.
    pub first_msg: BTreeMap<(String, String), Vec<String>>,
    /// Latency (s) of calls that got an answer while berthd served normally...
    pub lat_normal: Vec<f64>,
    /// ...and within [`RECOVERY_WINDOW`] of a restart.
    pub lat_recovery: Vec<f64>,
    /// Lister calls that got an answer (s).
    pub lat_lister: Vec<f64>,
    pub faults: BTreeMap<&'static str, FaultCount>,
    pub violations: Vec<Violation>,
    /// (kind, what) left after the final teardown.
    pub leaks: Vec<(&'static str, String)>,
    /// Partial downloads left after the teardown (kept so that a retried pull
    /// resumes them; swept after `gc.stale_ingest_secs`): count, bytes.
    pub kept_ingests: (u64, u64),
    /// Pod cycles finished (created, exercised, removed).
    pub cycles: u64,
    /// Pods given up on and removed without finishing their cycle.
    pub abandoned: u64,
    /// Creates whose answer was lost and whose object a retry found by name.
    pub adopted: u64,
    /// Seconds from respawn to serving, per berthd restart.
    pub restarts: Vec<f64>,
    pub pulls_ok: u64,
    pub pulls_failed: u64,
    pub checks: u64,
    /// Lines checked in the long-lived pods' logs.
    pub log_lines: u64,
    /// berthd's RSS (KiB) at each check, with the run time (s).
    pub rss: Vec<(f64, u64)>,
}

/// State shared by the workers, the injector and the checks.
pub struct Ctx {
    pub opts: Options,
    pub socket: PathBuf,
    t0: Instant,
    /// Bumped by every berthd kill: a call spanning two epochs met a kill.
    epoch: AtomicU64,
    /// berthd killed and not serving yet.
    down: AtomicBool,
    /// Until when latencies count as recovery (ms since t0).
    recovering_until_ms: AtomicU64,
    /// The root filesystem is being held full.
    pub disk_full: AtomicBool,
    /// Workers, lister and puller stop their loops.
    pub stopping: AtomicBool,
    /// The puller has a pull in flight.
    pub pulling: AtomicBool,
    /// A pull failed with ResourceExhausted while the disk was held full.
    pub disk_full_hit: AtomicBool,
    stats: Mutex<StatsInner>,
    pub model: Mutex<model::Model>,
}

/// Locks `m`, ignoring poisoning (a panicked worker must not hide the report).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctx {
    pub fn new(opts: Options, socket: PathBuf) -> Arc<Ctx> {
        Arc::new(Ctx {
            opts,
            socket,
            t0: Instant::now(),
            epoch: AtomicU64::new(0),
            down: AtomicBool::new(false),
            recovering_until_ms: AtomicU64::new(0),
            disk_full: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            pulling: AtomicBool::new(false),
            disk_full_hit: AtomicBool::new(false),
            stats: Mutex::new(StatsInner::default()),
            model: Mutex::new(model::Model::default()),
        })
    }

    pub fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    pub fn stats(&self) -> MutexGuard<'_, StatsInner> {
        lock(&self.stats)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// berthd is about to be killed.
    pub fn mark_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// berthd serves again.
    pub fn mark_up(&self) {
        self.recovering_until_ms.store(
            self.now_ms() + RECOVERY_WINDOW.as_millis() as u64,
            Ordering::SeqCst,
        );
        self.down.store(false, Ordering::SeqCst);
    }

    fn recovering(&self) -> bool {
        self.is_down() || self.now_ms() < self.recovering_until_ms.load(Ordering::SeqCst)
    }

    pub fn violation(
        &self,
        kind: &'static str,
        object: impl Into<String>,
        detail: impl Into<String>,
    ) {
        let v = Violation {
            at: self.secs(),
            kind,
            object: object.into(),
            detail: detail.into(),
        };
        // One per object and kind: a broken record seen again by every later
        // check is one violation.
        if self
            .stats()
            .violations
            .iter()
            .any(|o| o.kind == v.kind && o.object == v.object)
        {
            return;
        }
        eprintln!(
            "[{:7.1}s] VIOLATION {}: {}: {}",
            v.at, v.kind, v.object, v.detail
        );
        self.stats().violations.push(v);
    }

    pub fn fault_injected(&self, kind: &'static str) {
        self.stats().faults.entry(kind).or_default().injected += 1;
    }

    pub fn fault_hit(&self, kind: &'static str) {
        self.stats().faults.entry(kind).or_default().hit += 1;
    }

    pub fn progress(&self, msg: &str) {
        eprintln!("[{:7.1}s] {msg}", self.secs());
    }

    /// Runs one CRI call with a client-side deadline, counting it; a call that
    /// reaches its deadline while berthd was up the whole time is a hang.
    pub async fn rpc<T>(
        &self,
        method: &'static str,
        object: &str,
        deadline: Duration,
        fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        let epoch = self.epoch();
        let was_down = self.is_down();
        let start = Instant::now();
        let r = match tokio::time::timeout(deadline, fut).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "chaos client: no answer within {deadline:?}"
            ))),
        };
        let secs = start.elapsed().as_secs_f64();
        let code = match &r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        let timed_out = matches!(&r, Err(s) if s.message().starts_with("chaos client: no answer"));
        let same_epoch = !was_down && epoch == self.epoch() && !self.is_down();
        {
            let recovering = self.recovering();
            let mut st = self.stats();
            let key = (method.to_string(), format!("{code:?}"));
            if let Err(s) = &r {
                let kept = st.first_msg.entry(key.clone()).or_default();
                let shape = message_shape(s.message());
                if kept.len() < MESSAGES_KEPT && !kept.iter().any(|k| message_shape(k) == shape) {
                    kept.push(s.message().to_string());
                }
            }
            *st.rpcs.entry(key).or_default() += 1;
            if code != Code::Unavailable && !timed_out {
                if recovering {
                    st.lat_recovery.push(secs);
                } else {
                    st.lat_normal.push(secs);
                }
            }
        }
        if let Err(s) = &r {
            let m = s.message().to_lowercase();
            if s.code() != Code::ResourceExhausted
                && (m.contains("no space left") || m.contains("os error 28"))
            {
                self.violation(
                    "enospc-code",
                    object,
                    format!(
                        "{method}: a full disk answered {:?}, not ResourceExhausted: {}",
                        s.code(),
                        s.message()
                    ),
                );
            }
        }
        if timed_out && same_epoch {
            self.violation(
                "rpc-hang",
                object,
                format!("{method} got no answer within {deadline:?} while berthd was up"),
            );
        }
        r
    }

    /// Every pod (ListPodSandbox, no filter), for `who`.
    pub async fn list_pods(
        &self,
        rt: &mut Rt,
        who: &str,
    ) -> Result<Vec<cri::api::PodSandbox>, Status> {
        self.rpc(
            "ListPodSandbox",
            who,
            LIST_DEADLINE,
            rt.list_pod_sandbox(cri::api::ListPodSandboxRequest { filter: None }),
        )
        .await
        .map(|r| r.items)
    }

    /// Every container (ListContainers, no filter), for `who`.
    pub async fn list_containers(
        &self,
        rt: &mut Rt,
        who: &str,
    ) -> Result<Vec<cri::api::Container>, Status> {
        self.rpc(
            "ListContainers",
            who,
            LIST_DEADLINE,
            rt.list_containers(cri::api::ListContainersRequest { filter: None }),
        )
        .await
        .map(|r| r.containers)
    }

    /// CRI clients on a fresh connection; waits (up to `timeout`) for the socket.
    pub async fn connect(&self, timeout: Duration) -> Option<(Rt, Img)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(ch) = cri::channel(&self.socket).await {
                return Some((Rt::new(ch.clone()), Img::new(ch)));
            }
            if Instant::now() >= deadline || self.stopping() && !self.is_down() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether a failed call may succeed if tried again as is (the daemon went away,
/// the disk is full for now, a deadline passed).
pub fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
    ) || s.code() == Code::Unknown
        && ["transport", "connection", "broken pipe", "h2 protocol"]
            .iter()
            .any(|n| s.message().to_lowercase().contains(n))
}

/// Whether the connection should be made again before the next try.
pub fn reconnect(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Cancelled | Code::Unknown
    )
}

/// Runs the whole suite; the stats and the verdict are in the returned context.
pub async fn run(opts: Options) -> anyhow::Result<(Arc<Ctx>, Arc<env::Setup>)> {
    let setup = env::Setup::new(&opts)?;
    let socket = lock(&setup.daemon).socket_path();
    let ctx = Ctx::new(opts, socket);
    let result = drive(&ctx, &setup).await;
    if let Err(e) = &result {
        ctx.violation("suite-error", "chaos", format!("{e:#}"));
    }
    Ok((ctx, setup))
}

async fn drive(ctx: &Arc<Ctx>, setup: &Arc<env::Setup>) -> anyhow::Result<()> {
    let (mut rt, mut img) = ctx
        .connect(Duration::from_secs(30))
        .await
        .ok_or_else(|| anyhow::anyhow!("berthd's CRI socket never accepted"))?;
    ctx.progress("pulling the pod image");
    workers::pull_ok(ctx, &mut img, &setup.busybox).await?;
    if ctx.opts.sandbox_mode == "pause" {
        workers::pull_ok(ctx, &mut img, &setup.pause).await?;
    }
    ctx.progress(&format!("starting {} long-lived pods", ctx.opts.long_lived));
    let mut loggers = Vec::new();
    for i in 0..ctx.opts.long_lived {
        loggers.push(workers::start_logger(ctx, setup, &mut rt, i).await?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..ctx.opts.workers {
        let (c, s) = (ctx.clone(), setup.clone());
        tasks.spawn(async move { workers::pod_worker(c, s, w).await });
    }
    {
        let c = ctx.clone();
        tasks.spawn(async move { workers::lister(c).await });
        let (c, s) = (ctx.clone(), setup.clone());
        tasks.spawn(async move { workers::puller(c, s).await });
    }
    let injected = faults::inject(ctx, setup).await;
    ctx.progress("faults done; letting the workers finish their cycles");
    ctx.stopping.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(()))) | Ok(None) => {}
            Ok(Some(Err(e))) => ctx.violation("suite-error", "worker", format!("{e}")),
            Err(_) => {
                ctx.violation(
                    "rpc-hang",
                    "workers",
                    "workers did not finish within 240 s of the last fault",
                );
                tasks.abort_all();
                break;
            }
        }
    }
    injected?;
    // Final: berthd serves, the model holds, the logs are whole, then teardown.
    let (mut rt, mut img) = ctx
        .connect(Duration::from_secs(30))
        .await
        .ok_or_else(|| anyhow::anyhow!("berthd does not serve at the end"))?;
    model::check(ctx, &mut rt, &setup.root, "final").await;
    for l in &loggers {
        workers::check_logger_log(ctx, l);
    }
    env::teardown(ctx, setup, &mut rt, &mut img).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_shapes_mask_ids_and_numbers() {
        assert_eq!(
            message_shape("task job_w5-9_uid-9428-65_0 is exited"),
            message_shape("task job_w1-12_uid-9428-301_0 is exited")
        );
        assert_eq!(
            message_shape("container 8598c907654834292b1b not found"),
            "container # not found"
        );
        assert_ne!(message_shape("transport error"), message_shape("not found"));
    }
}
