//! The load: kubelet-like pod workers, a PLEG-like lister, an image puller and
//! long-lived pods writing numbered log lines.
//!
//! A worker's call that fails is tried again as kubelet's next sync would: with the
//! same name, on a fresh connection when the old one broke. A create whose answer
//! was lost (berthd killed after it acted) comes back as "name ... is reserved for
//! <id>": the worker adopts that object, after checking through a listing that it
//! is the only one with that name. A pod that cannot finish its cycle is abandoned:
//! stopped and removed; one that cannot even be removed is a violation.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tonic::{Code, Status};

use super::env::Setup;
use super::model::{allowed_exit, CtrState, PodState, Role};
use super::{lock, reconnect, transient, Ctx, LIFECYCLE_DEADLINE, LIST_DEADLINE, PULL_DEADLINE};
use crate::cri::{self, api, Img, Rt};

/// How long one step of a cycle keeps trying through transient failures.
const STEP_BUDGET: Duration = Duration::from_secs(150);
/// How many answers that are errors (not transient) a step accepts before giving up.
const STEP_ERRORS: usize = 6;

/// What to do with a failed call.
pub enum OnErr<T> {
    Retry,
    Done(T),
    Fail,
}

/// Retries of one call, kubelet-style. `f` makes the call on a client. The
/// error names the method, the object and the last answer.
#[allow(clippy::too_many_arguments)]
pub async fn call<T, F, Fut>(
    ctx: &Ctx,
    rt: &mut Rt,
    method: &'static str,
    object: &str,
    deadline: Duration,
    budget: Duration,
    f: F,
    on_err: impl Fn(&Status) -> OnErr<T>,
) -> Result<T>
where
    F: Fn(Rt) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let give_up = Instant::now() + budget;
    let mut backoff = Duration::from_millis(50);
    let mut errors = 0;
    loop {
        let s = match ctx.rpc(method, object, deadline, f(rt.clone())).await {
            Ok(v) => return Ok(v),
            Err(s) => s,
        };
        if reconnect(&s) {
            if let Some((r, _)) = ctx.connect(Duration::from_secs(60)).await {
                *rt = r;
            }
        }
        let failed = |s: Status| anyhow!("{method} {object}: {:?}: {}", s.code(), s.message());
        match on_err(&s) {
            OnErr::Done(v) => return Ok(v),
            OnErr::Fail => return Err(failed(s)),
            OnErr::Retry => {}
        }
        if !transient(&s) {
            errors += 1;
        }
        if errors >= STEP_ERRORS || Instant::now() >= give_up {
            return Err(failed(s));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

fn retry<T>(_: &Status) -> OnErr<T> {
    OnErr::Retry
}

/// NotFound means done (a remove or stop retried after it went through).
fn not_found_is_done<T: Default>(s: &Status) -> OnErr<T> {
    if s.code() == Code::NotFound {
        OnErr::Done(T::default())
    } else {
        OnErr::Retry
    }
}

/// The id in "... is reserved for <id>" (berth's and containerd's message).
fn reserved_for(s: &Status) -> Option<String> {
    let (_, id) = s.message().rsplit_once("reserved for ")?;
    let id = id.trim().trim_end_matches(['.', ')']);
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_string())
}

/// Stops and removes a pod, trying for up to `budget` whatever the errors (as
/// kubelet's pod cleanup does: a disk full for a while fails several tries).
pub async fn remove_pod(ctx: &Ctx, rt: &mut Rt, id: &str, budget: Duration) -> Result<()> {
    let give_up = Instant::now() + budget;
    loop {
        match stop_remove_pod(ctx, rt, id, budget).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= give_up => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

async fn stop_remove_pod(ctx: &Ctx, rt: &mut Rt, id: &str, budget: Duration) -> Result<()> {
    let pid = id.to_string();
    call(
        ctx,
        rt,
        "StopPodSandbox",
        id,
        LIFECYCLE_DEADLINE,
        budget,
        |mut rt| {
            let pod_sandbox_id = pid.clone();
            async move {
                rt.stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id })
                    .await
            }
        },
        not_found_is_done,
    )
    .await?;
    call(
        ctx,
        rt,
        "RemovePodSandbox",
        id,
        LIFECYCLE_DEADLINE,
        budget,
        |mut rt| {
            let pod_sandbox_id = pid.clone();
            async move {
                rt.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id })
                    .await
            }
        },
        not_found_is_done,
    )
    .await?;
    lock(&ctx.model).remove_pod(id);
    Ok(())
}

/// Pulls `image` (retrying through restarts) and records it.
pub async fn pull_ok(ctx: &Ctx, img: &mut Img, image: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = ctx
            .rpc(
                "PullImage",
                image,
                PULL_DEADLINE,
                img.pull_image(api::PullImageRequest {
                    image: Some(api::ImageSpec {
                        image: image.to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            )
            .await;
        match r {
            Ok(_) => return Ok(()),
            Err(s) if Instant::now() >= deadline => bail!("PullImage {image}: {s}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// A long-lived pod whose container writes `line 0`, `line 1`, ... every 100 ms.
pub struct Logger {
    pub pod: String,
    pub ctr: String,
    pub log: PathBuf,
}

pub async fn start_logger(ctx: &Ctx, setup: &Setup, rt: &mut Rt, i: usize) -> Result<Logger> {
    let name = format!("long{i}");
    let cfg = setup.pod_config(&name)?;
    let pod = rt
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|s| anyhow!("RunPodSandbox {name}: {s}"))?
        .into_inner()
        .pod_sandbox_id;
    let cc = crate::bench_cri::container_config(
        &setup.busybox,
        &cfg,
        "log",
        &[
            "sh",
            "-c",
            "i=0; while :; do echo \"line $i\"; i=$((i+1)); sleep 0.1; done",
        ],
    )?;
    let log = cri::log_path_of(&cfg, &cc)?;
    let ctr = rt
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cc),
            sandbox_config: Some(cfg),
        })
        .await
        .map_err(|s| anyhow!("CreateContainer in {name}: {s}"))?
        .into_inner()
        .container_id;
    rt.start_container(api::StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .map_err(|s| anyhow!("StartContainer in {name}: {s}"))?;
    let mut m = lock(&ctx.model);
    m.add_pod(&pod, &name, true);
    m.add_ctr(&ctr, &pod, "log", Role::Logger);
    m.set_ctr_state(&ctr, CtrState::Started);
    Ok(Logger { pod, ctr, log })
}

/// The logger's CRI log holds `line 0` .. `line N` once each, in order.
pub fn check_logger_log(ctx: &Ctx, l: &Logger) {
    let lines = match cri::read_cri_log(&l.log) {
        Ok(v) => v,
        Err(e) => {
            ctx.violation("log", &l.ctr, format!("{e:#}"));
            return;
        }
    };
    // Partial records (P) are joined with the next one.
    let mut full = Vec::new();
    let mut part = String::new();
    for line in lines.iter().filter(|x| x.stream == "stdout") {
        part.push_str(&line.text);
        if line.tag == "F" {
            full.push(std::mem::take(&mut part));
        }
    }
    let mut problems = Vec::new();
    for (want, got) in full.iter().enumerate() {
        if *got != format!("line {want}") {
            problems.push(format!("record {want} is {got:?}"));
            break;
        }
    }
    if full.is_empty() {
        problems.push("no lines".into());
    }
    if problems.is_empty() {
        ctx.stats().log_lines += full.len() as u64;
    } else {
        ctx.violation(
            "log",
            &l.ctr,
            format!(
                "{} ({} lines in {}): lines lost, duplicated or torn",
                problems.join("; "),
                full.len(),
                l.log.display()
            ),
        );
    }
}

fn shim_killed(ctx: &Ctx, pod: &str) -> bool {
    lock(&ctx.model)
        .pods
        .get(pod)
        .is_some_and(|p| p.shim_killed)
}

/// One kubelet-like pod worker.
struct Worker {
    ctx: Arc<Ctx>,
    setup: Arc<Setup>,
    rt: Rt,
    w: usize,
}

pub async fn pod_worker(ctx: Arc<Ctx>, setup: Arc<Setup>, w: usize) {
    let Some((rt, _)) = ctx.connect(Duration::from_secs(60)).await else {
        ctx.violation(
            "suite-error",
            format!("worker {w}"),
            "no connection to berthd",
        );
        return;
    };
    let mut wk = Worker { ctx, setup, rt, w };
    let mut n = 0;
    while !wk.ctx.stopping() {
        n += 1;
        let name = format!("w{w}-{n}");
        let mut pod_id = None;
        match wk.cycle(&name, &mut pod_id).await {
            Ok(()) => wk.ctx.stats().cycles += 1,
            Err(e) => wk.abandon(&name, pod_id, e).await,
        }
    }
}

impl Worker {
    async fn begin(&self, pod: &str) {
        lock(&self.ctx.model).begin(pod);
    }

    fn end(&self, pod: &str) {
        lock(&self.ctx.model).end(pod);
    }

    /// One lifecycle call on `pod` (or a container of it), kubelet-style: the
    /// pod is busy meanwhile; `acked` records an acknowledged answer.
    async fn step<T, F, Fut>(
        &mut self,
        pod: &str,
        method: &'static str,
        object: &str,
        f: F,
        on_err: impl Fn(&Status) -> OnErr<T>,
        acked: impl FnOnce(&mut super::model::Model, &T),
    ) -> Result<T>
    where
        F: Fn(Rt) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.begin(pod).await;
        let r = call(
            &self.ctx,
            &mut self.rt,
            method,
            object,
            LIFECYCLE_DEADLINE,
            STEP_BUDGET,
            f,
            on_err,
        )
        .await;
        let mut m = lock(&self.ctx.model);
        if let Ok(v) = &r {
            acked(&mut m, v);
        }
        m.end(pod);
        r
    }

    fn shim_killed(&self, pod: &str) -> bool {
        shim_killed(&self.ctx, pod)
    }

    /// The pods listed with label `app=<name>`.
    async fn pods_named(&mut self, name: &str) -> Result<Vec<api::PodSandbox>> {
        let filter = api::PodSandboxFilter {
            label_selector: [("app".to_string(), name.to_string())].into(),
            ..Default::default()
        };
        call(
            &self.ctx,
            &mut self.rt,
            "ListPodSandbox",
            name,
            LIST_DEADLINE,
            STEP_BUDGET,
            |mut rt| {
                let filter = filter.clone();
                async move {
                    rt.list_pod_sandbox(api::ListPodSandboxRequest {
                        filter: Some(filter),
                    })
                    .await
                }
            },
            retry,
        )
        .await
        .map(|r| r.items)
    }

    async fn run_pod(&mut self, name: &str, cfg: &api::PodSandboxConfig) -> Result<String> {
        let req = api::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        };
        let adopted = AtomicBool::new(false);
        let id = call(
            &self.ctx,
            &mut self.rt,
            "RunPodSandbox",
            name,
            LIFECYCLE_DEADLINE,
            STEP_BUDGET,
            |mut rt| {
                let req = req.clone();
                async move { rt.run_pod_sandbox(req).await }
            },
            |s| match reserved_for(s) {
                Some(id) => {
                    adopted.store(true, Ordering::Relaxed);
                    OnErr::Done(api::RunPodSandboxResponse { pod_sandbox_id: id })
                }
                None => OnErr::Retry,
            },
        )
        .await?
        .pod_sandbox_id;
        if adopted.load(Ordering::Relaxed) {
            self.ctx.stats().adopted += 1;
            let listed = self.pods_named(name).await?;
            let ids: Vec<&str> = listed.iter().map(|p| p.id.as_str()).collect();
            if ids != [id.as_str()] {
                self.ctx.violation(
                    "retry-result",
                    name,
                    format!("a retried RunPodSandbox was told the name is reserved for {id}; listed: {ids:?}"),
                );
            }
        }
        lock(&self.ctx.model).add_pod(&id, name, false);
        Ok(id)
    }

    async fn create(
        &mut self,
        pod: &str,
        cfg: &api::PodSandboxConfig,
        name: &str,
        role: Role,
        cmd: &[&str],
    ) -> Result<String> {
        let cc = crate::bench_cri::container_config(&self.setup.busybox, cfg, name, cmd)?;
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(cc),
            sandbox_config: Some(cfg.clone()),
        };
        let adopted = AtomicBool::new(false);
        let id = self
            .step(
                pod,
                "CreateContainer",
                name,
                |mut rt| {
                    let req = req.clone();
                    async move { rt.create_container(req).await }
                },
                |s| match reserved_for(s) {
                    Some(id) => {
                        adopted.store(true, Ordering::Relaxed);
                        OnErr::Done(api::CreateContainerResponse { container_id: id })
                    }
                    None => OnErr::Retry,
                },
                |m, r| m.add_ctr(&r.container_id, pod, name, role),
            )
            .await?
            .container_id;
        if adopted.load(Ordering::Relaxed) {
            self.ctx.stats().adopted += 1;
        }
        Ok(id)
    }

    /// Starts a container; a retry told "is exited" counts as started only if
    /// berthd recorded a start (an adopted container whose create failed and was
    /// killed never started: kubelet would make a new attempt).
    async fn start(&mut self, pod: &str, id: &str) -> Result<()> {
        let inferred = AtomicBool::new(false);
        self.start_call(pod, id, &inferred).await?;
        if inferred.load(Ordering::Relaxed) {
            // Busy until known: the checker must not judge it meanwhile.
            self.begin(pod).await;
            if self.status(id).await?.started_at == 0 {
                // Left busy: the cycle is abandoned and the pod removed.
                bail!("container {id} exited without ever starting (its create failed)");
            }
            self.end(pod);
        }
        Ok(())
    }

    async fn start_call(&mut self, pod: &str, id: &str, inferred: &AtomicBool) -> Result<()> {
        let cid = id.to_string();
        self.step(
            pod,
            "StartContainer",
            id,
            |mut rt| {
                let container_id = cid.clone();
                async move {
                    rt.start_container(api::StartContainerRequest { container_id })
                        .await
                }
            },
            // A retried start of a container that ran to its end meanwhile (the
            // job): the start went through; kubelet sees the exit in its next list.
            |s| {
                if s.code() == Code::FailedPrecondition && s.message().contains("is exited") {
                    inferred.store(true, Ordering::Relaxed);
                    OnErr::Done(api::StartContainerResponse::default())
                } else {
                    OnErr::Retry
                }
            },
            |m, _| m.set_ctr_state(id, CtrState::Started),
        )
        .await
        .map(|_| ())
    }

    async fn status(&mut self, id: &str) -> Result<api::ContainerStatus> {
        let cid = id.to_string();
        call(
            &self.ctx,
            &mut self.rt,
            "ContainerStatus",
            id,
            LIST_DEADLINE,
            STEP_BUDGET,
            |mut rt| {
                let container_id = cid.clone();
                async move {
                    rt.container_status(api::ContainerStatusRequest {
                        container_id,
                        verbose: false,
                    })
                    .await
                }
            },
            retry,
        )
        .await?
        .status
        .with_context(|| format!("ContainerStatus {id}: no status"))
    }

    /// The container exited with one of the codes its role allows.
    fn check_exit(&self, pod: &str, id: &str, role: Role, st: &api::ContainerStatus) {
        let allowed = allowed_exit(role, self.shim_killed(pod));
        if !allowed.contains(&st.exit_code) || st.finished_at == 0 {
            self.ctx.violation(
                "exit-code",
                id,
                format!(
                    "{role:?} container exited {} (finished_at {}, reason {:?}, message {:?}), expected one of {allowed:?}",
                    st.exit_code, st.finished_at, st.reason, st.message
                ),
            );
        }
    }

    async fn cycle(&mut self, name: &str, pod_id: &mut Option<String>) -> Result<()> {
        let cfg = self.setup.pod_config(name)?;
        let pod = self.run_pod(name, &cfg).await?;
        *pod_id = Some(pod.clone());
        let main = self
            .create(&pod, &cfg, "main", Role::Main, &["sleep", "3600"])
            .await?;
        let job = self
            .create(
                &pod,
                &cfg,
                "job",
                Role::Job,
                &["sh", "-c", "echo job done; exit 3"],
            )
            .await?;
        self.start(&pod, &main).await?;
        self.start(&pod, &job).await?;

        // ExecSync in main: a container whose shim was killed has no process left.
        let cid = main.clone();
        let ctx = self.ctx.clone();
        let r = call(
            &self.ctx,
            &mut self.rt,
            "ExecSync",
            &main,
            LIFECYCLE_DEADLINE,
            STEP_BUDGET,
            |mut rt| {
                let container_id = cid.clone();
                async move {
                    rt.exec_sync(api::ExecSyncRequest {
                        container_id,
                        cmd: vec!["echo".into(), "ok".into()],
                        timeout: 20,
                    })
                    .await
                }
            },
            |_| {
                if shim_killed(&ctx, &pod) {
                    OnErr::Fail
                } else {
                    OnErr::Retry
                }
            },
        )
        .await;
        match r {
            Ok(r) if r.exit_code == 0 && r.stdout == b"ok\n" => {}
            Ok(r) => self.ctx.violation(
                "exec",
                &main,
                format!(
                    "ExecSync `echo ok` exited {} with stdout {:?}",
                    r.exit_code,
                    String::from_utf8_lossy(&r.stdout)
                ),
            ),
            Err(_) if self.shim_killed(&pod) => {}
            Err(e) => return Err(e),
        }

        // The job exits 3 by itself.
        let t = Instant::now();
        loop {
            let st = self.status(&job).await?;
            if st.state == api::ContainerState::ContainerExited as i32 {
                self.check_exit(&pod, &job, Role::Job, &st);
                break;
            }
            if st.state == api::ContainerState::ContainerUnknown as i32 {
                self.ctx.violation(
                    "container-state",
                    &job,
                    format!(
                        "the job container is UNKNOWN ({:?}: {:?})",
                        st.reason, st.message
                    ),
                );
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                self.ctx.violation(
                    "container-state",
                    &job,
                    format!(
                        "the job container is still {:?} 60 s after it was started",
                        st.state
                    ),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // StopContainer main: sleep ignores SIGTERM as PID 1, so SIGKILL after 1 s.
        let cid = main.clone();
        self.step(
            &pod,
            "StopContainer",
            &main,
            |mut rt| {
                let container_id = cid.clone();
                async move {
                    rt.stop_container(api::StopContainerRequest {
                        container_id,
                        timeout: 1,
                    })
                    .await
                }
            },
            retry,
            |m, _| m.set_ctr_state(&main, CtrState::Stopped),
        )
        .await?;
        let st = self.status(&main).await?;
        // A shim killed before it reaped the container takes the exit status
        // with it (the process was its child): UNKNOWN is the honest answer.
        let lost =
            st.state == api::ContainerState::ContainerUnknown as i32 && self.shim_killed(&pod);
        if st.state == api::ContainerState::ContainerExited as i32 {
            self.check_exit(&pod, &main, Role::Main, &st);
        } else if !lost {
            self.ctx.violation(
                "container-state",
                &main,
                format!("StopContainer returned and the container is {:?}", st.state),
            );
        }

        for id in [&main, &job] {
            let cid = id.to_string();
            self.step(
                &pod,
                "RemoveContainer",
                id,
                |mut rt| {
                    let container_id = cid.clone();
                    async move {
                        rt.remove_container(api::RemoveContainerRequest { container_id })
                            .await
                    }
                },
                not_found_is_done,
                |m, _| m.remove_ctr(id),
            )
            .await?;
        }
        let p = pod.clone();
        self.step(
            &pod,
            "StopPodSandbox",
            &pod,
            |mut rt| {
                let pod_sandbox_id = p.clone();
                async move {
                    rt.stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id })
                        .await
                }
            },
            retry,
            |m, _| m.set_pod_state(&pod, PodState::Stopped),
        )
        .await?;
        self.step(
            &pod,
            "RemovePodSandbox",
            &pod,
            |mut rt| {
                let pod_sandbox_id = p.clone();
                async move {
                    rt.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id })
                        .await
                }
            },
            not_found_is_done,
            |m, _| m.remove_pod(&pod),
        )
        .await?;
        Ok(())
    }

    /// Gives up on a cycle: removes whatever pod carries its name, as kubelet's
    /// garbage collection would.
    async fn abandon(&mut self, name: &str, pod_id: Option<String>, why: anyhow::Error) {
        self.ctx.stats().abandoned += 1;
        self.ctx.progress(&format!(
            "worker {}: abandoning pod {name}: {why:#}",
            self.w
        ));
        let mut ids: Vec<String> = match self.pods_named(name).await {
            Ok(p) => p.into_iter().map(|p| p.id).collect(),
            Err(_) => Vec::new(),
        };
        if let Some(id) = pod_id {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        for id in ids {
            if let Some(p) = lock(&self.ctx.model).pods.get_mut(&id) {
                p.busy = true;
            }
            if let Err(e) = remove_pod(&self.ctx, &mut self.rt, &id, STEP_BUDGET).await {
                self.ctx.violation(
                    "pod-stuck",
                    &id,
                    format!("pod {name} cannot be stopped and removed: {e:#}"),
                );
                lock(&self.ctx.model).remove_pod(&id);
            }
        }
    }
}

/// Lists pods, containers and container stats every second, as the PLEG and the
/// stats provider do.
pub async fn lister(ctx: Arc<Ctx>) {
    let Some((mut rt, _)) = ctx.connect(Duration::from_secs(60)).await else {
        return;
    };
    while !ctx.stopping() {
        let t = Instant::now();
        let r1 = ctx.list_pods(&mut rt, "lister").await.map(|_| ());
        let r2 = ctx.list_containers(&mut rt, "lister").await.map(|_| ());
        let r3 = ctx
            .rpc(
                "ListContainerStats",
                "lister",
                LIST_DEADLINE,
                rt.list_container_stats(api::ListContainerStatsRequest { filter: None }),
            )
            .await
            .map(|_| ());
        let secs = t.elapsed().as_secs_f64();
        match (&r1, &r2, &r3) {
            (Ok(_), Ok(_), Ok(_)) => {
                ctx.stats().lat_lister.push(secs);
                if secs > ctx.opts.max_lister_secs {
                    ctx.violation(
                        "lister-latency",
                        "lister",
                        format!(
                            "one PLEG round (3 list calls) took {secs:.2} s, bound {} s",
                            ctx.opts.max_lister_secs
                        ),
                    );
                }
            }
            _ => {
                let bad = [r1.err(), r2.err(), r3.err()];
                if bad.iter().flatten().any(reconnect) {
                    if let Some((r, _)) = ctx.connect(Duration::from_secs(60)).await {
                        rt = r;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(t.elapsed())).await;
    }
}

/// Pulls the big images in turn and removes each again; a pull that fails must
/// leave no image behind, one acknowledged must be there whole.
pub async fn puller(ctx: Arc<Ctx>, setup: Arc<Setup>) {
    let Some((_, mut img)) = ctx.connect(Duration::from_secs(60)).await else {
        return;
    };
    let mut n = 0usize;
    while !ctx.stopping() {
        let image = setup.big[n % setup.big.len()].clone();
        n += 1;
        let epoch = ctx.epoch();
        let full_before = ctx.disk_full.load(Ordering::SeqCst);
        ctx.pulling.store(true, Ordering::SeqCst);
        let r = ctx
            .rpc(
                "PullImage",
                &image,
                PULL_DEADLINE,
                img.pull_image(api::PullImageRequest {
                    image: Some(api::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            )
            .await;
        ctx.pulling.store(false, Ordering::SeqCst);
        let full = full_before || ctx.disk_full.load(Ordering::SeqCst);
        match r {
            Ok(_) => {
                ctx.stats().pulls_ok += 1;
                let seq = n as u64;
                lock(&ctx.model).images.insert(image.clone(), seq);
            }
            Err(s) => {
                ctx.stats().pulls_failed += 1;
                if full && s.code() == Code::ResourceExhausted {
                    ctx.disk_full_hit.store(true, Ordering::SeqCst);
                }
                if reconnect(&s) {
                    if let Some((_, i)) = ctx.connect(Duration::from_secs(60)).await {
                        img = i;
                    }
                }
                // A pull that failed while berthd stayed up leaves nothing visible.
                if ctx.epoch() == epoch && !ctx.is_down() && s.code() != Code::Unavailable {
                    failed_pull_leaves_nothing(&ctx, &mut img, &image, &s).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        remove_image(&ctx, &mut img, &image).await;
    }
}

async fn failed_pull_leaves_nothing(ctx: &Ctx, img: &mut Img, image: &str, why: &Status) {
    let r = ctx
        .rpc(
            "ImageStatus",
            image,
            LIST_DEADLINE,
            img.image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            }),
        )
        .await;
    if let Ok(r) = r {
        if r.image.is_some() {
            ctx.violation(
                "failed-pull-visible",
                image,
                format!(
                    "PullImage failed ({:?}: {}) and the image is listed",
                    why.code(),
                    why.message()
                ),
            );
        }
    }
}

async fn remove_image(ctx: &Ctx, img: &mut Img, image: &str) {
    // From here on the image is no longer promised to be there.
    lock(&ctx.model).images.remove(image);
    let deadline = Instant::now() + STEP_BUDGET;
    loop {
        let r = ctx
            .rpc(
                "RemoveImage",
                image,
                LIFECYCLE_DEADLINE,
                img.remove_image(api::RemoveImageRequest {
                    image: Some(api::ImageSpec {
                        image: image.to_string(),
                        ..Default::default()
                    }),
                }),
            )
            .await;
        match r {
            Ok(_) => break,
            Err(s) if s.code() == Code::NotFound => break,
            Err(s) => {
                if reconnect(&s) {
                    if let Some((_, i)) = ctx.connect(Duration::from_secs(60)).await {
                        *img = i;
                    }
                }
                if Instant::now() >= deadline {
                    ctx.violation(
                        "image-stuck",
                        image,
                        format!("RemoveImage keeps failing: {:?}: {}", s.code(), s.message()),
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
