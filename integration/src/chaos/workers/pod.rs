//! The pod workers: each runs pod and container lifecycles over and over,
//! checking every answer against the model.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tonic::{Code, Status};

use super::{
    call, not_found_is_done, remove_pod, reserved_for, retry, shim_killed, OnErr, STEP_BUDGET,
};
use crate::chaos::env::Setup;
use crate::chaos::model::{allowed_exit, CtrState, Model, PodState, Role};
use crate::chaos::{lock, Ctx, LIFECYCLE_DEADLINE, LIST_DEADLINE};
use crate::cri::{api, Rt};

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
        acked: impl FnOnce(&mut Model, &T),
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
