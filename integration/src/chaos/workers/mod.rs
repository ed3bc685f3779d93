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
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tonic::{Code, Status};

use super::{lock, reconnect, transient, Ctx, LIFECYCLE_DEADLINE, LIST_DEADLINE};
use crate::cri::{api, Rt};

mod images;
mod logger;
mod pod;

pub use images::{pull_ok, puller};
pub use logger::{check_logger_log, start_logger, Logger};
pub use pod::pod_worker;

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

fn shim_killed(ctx: &Ctx, pod: &str) -> bool {
    lock(&ctx.model)
        .pods
        .get(pod)
        .is_some_and(|p| p.shim_killed)
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
