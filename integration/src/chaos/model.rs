//! What the CRI acknowledged, and the checks of it against berthd's answers and
//! the host's processes.
//!
//! Workers write here only after a call's answer came back (an acknowledged
//! create, start, stop or remove). A pod is `busy` while a call on it or one of
//! its containers is in flight; the checker looks only at pods that were idle and
//! unchanged (same `seq`) across its own listing, so that it never mistakes a
//! worker's progress for berthd's mistake.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{lock, Ctx, LIST_DEADLINE};
use crate::cri::{self, api, Rt};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodState {
    Ready,
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `sleep`, stopped by StopContainer.
    Main,
    /// Exits 3 on its own.
    Job,
    /// A long-lived pod's numbered log writer.
    Logger,
}

/// The exit code of a [`Role::Job`] container.
pub const JOB_EXIT: i32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtrState {
    Created,
    Started,
    Stopped,
}

#[derive(Clone, Debug)]
pub struct PodRec {
    pub name: String,
    pub state: PodState,
    pub busy: bool,
    pub seq: u64,
    /// The injector SIGKILLed this pod's shim.
    pub shim_killed: bool,
    pub long_lived: bool,
}

#[derive(Clone, Debug)]
pub struct CtrRec {
    pub pod: String,
    pub name: String,
    pub role: Role,
    pub state: CtrState,
}

/// An idle pod (id, record) with its containers (id, record).
type PodSnapshot = (String, PodRec, Vec<(String, CtrRec)>);

#[derive(Default)]
pub struct Model {
    pub pods: HashMap<String, PodRec>,
    pub ctrs: HashMap<String, CtrRec>,
    /// Images whose pull was acknowledged and whose removal was not (yet).
    pub images: HashMap<String, u64>,
    /// Blob files already hashed (committed blobs never change).
    pub verified: HashSet<String>,
}

impl Model {
    pub fn add_pod(&mut self, id: &str, name: &str, long_lived: bool) {
        self.pods.insert(
            id.to_string(),
            PodRec {
                name: name.to_string(),
                state: PodState::Ready,
                busy: false,
                seq: 0,
                shim_killed: false,
                long_lived,
            },
        );
    }

    /// A call on the pod (or one of its containers) starts.
    pub fn begin(&mut self, pod: &str) {
        if let Some(p) = self.pods.get_mut(pod) {
            p.busy = true;
            p.seq += 1;
        }
    }

    /// The call ended (acknowledged or not).
    pub fn end(&mut self, pod: &str) {
        if let Some(p) = self.pods.get_mut(pod) {
            p.busy = false;
            p.seq += 1;
        }
    }

    pub fn set_pod_state(&mut self, pod: &str, state: PodState) {
        if let Some(p) = self.pods.get_mut(pod) {
            p.state = state;
        }
    }

    pub fn remove_pod(&mut self, pod: &str) {
        self.pods.remove(pod);
        self.ctrs.retain(|_, c| c.pod != pod);
    }

    pub fn add_ctr(&mut self, id: &str, pod: &str, name: &str, role: Role) {
        self.ctrs.insert(
            id.to_string(),
            CtrRec {
                pod: pod.to_string(),
                name: name.to_string(),
                role,
                state: CtrState::Created,
            },
        );
    }

    pub fn set_ctr_state(&mut self, id: &str, state: CtrState) {
        if let Some(c) = self.ctrs.get_mut(id) {
            c.state = state;
        }
    }

    pub fn remove_ctr(&mut self, id: &str) {
        self.ctrs.remove(id);
    }

    fn snapshot(&self) -> Vec<PodSnapshot> {
        self.pods
            .iter()
            .filter(|(_, p)| !p.busy)
            .map(|(id, p)| {
                let cs = self
                    .ctrs
                    .iter()
                    .filter(|(_, c)| &c.pod == id)
                    .map(|(cid, c)| (cid.clone(), c.clone()))
                    .collect();
                (id.clone(), p.clone(), cs)
            })
            .collect()
    }

    fn unchanged(&self, id: &str, seq: u64) -> bool {
        self.pods.get(id).is_some_and(|p| !p.busy && p.seq == seq)
    }
}

/// Exit codes a container of `role` may report once exited; a killed shim takes its
/// containers with SIGKILL (137).
pub fn allowed_exit(role: Role, shim_killed: bool) -> &'static [i32] {
    match (role, shim_killed) {
        (Role::Job, false) => &[JOB_EXIT],
        (Role::Job, true) => &[JOB_EXIT, 137],
        // StopContainer: SIGTERM (busybox sleep as PID 1 ignores it), SIGKILL.
        (Role::Main | Role::Logger, _) => &[137, 143],
    }
}

/// Checks berthd's answers against the model: every acknowledged pod and container
/// is listed in a state that matches what was acknowledged, no name is listed twice,
/// a RUNNING container has a live process, an exited one the right exit code,
/// every acknowledged image is listed, every blob verifies.
pub async fn check(ctx: &Ctx, rt: &mut Rt, root: &Path, when: &str) {
    ctx.stats().checks += 1;
    let snap = lock(&ctx.model).snapshot();
    let pods = ctx.list_pods(rt, "checker").await;
    let ctrs = ctx.list_containers(rt, "checker").await;
    let (pods, ctrs) = match (pods, ctrs) {
        (Ok(p), Ok(c)) => (p, c),
        (Err(s), _) | (_, Err(s)) => {
            if !ctx.is_down() {
                ctx.violation(
                    "list-failed",
                    when,
                    format!(
                        "listing for the check failed: {:?}: {}",
                        s.code(),
                        s.message()
                    ),
                );
            }
            return;
        }
    };
    duplicates(ctx, &pods, &ctrs);
    for c in ctrs
        .iter()
        .filter(|c| c.state == api::ContainerState::ContainerRunning as i32)
    {
        running_has_process(ctx, rt, &c.id).await;
    }
    for (pod_id, prec, cs) in snap {
        let Some(p) = pods.iter().find(|p| p.id == pod_id) else {
            if lock(&ctx.model).unchanged(&pod_id, prec.seq) {
                ctx.violation(
                    "pod-lost",
                    &pod_id,
                    format!(
                        "pod {} was acknowledged ({:?}) and is not listed ({when})",
                        prec.name, prec.state
                    ),
                );
            }
            continue;
        };
        let want = match prec.state {
            PodState::Ready => api::PodSandboxState::SandboxReady,
            PodState::Stopped => api::PodSandboxState::SandboxNotready,
        };
        if p.state != want as i32 && lock(&ctx.model).unchanged(&pod_id, prec.seq) {
            ctx.violation(
                "pod-state",
                &pod_id,
                format!(
                    "pod {} is {:?}, acknowledged {:?} ({when})",
                    prec.name, p.state, prec.state
                ),
            );
        }
        for (cid, crec) in cs {
            let listed = ctrs.iter().find(|c| c.id == cid);
            check_container(ctx, rt, &pod_id, &prec, &cid, &crec, listed, when).await;
        }
    }
    images(ctx, when).await;
    let root = root.to_path_buf();
    tokio::task::block_in_place(|| verify_blobs(ctx, &root));
}

#[allow(clippy::too_many_arguments)]
async fn check_container(
    ctx: &Ctx,
    rt: &mut Rt,
    pod_id: &str,
    prec: &PodRec,
    cid: &str,
    crec: &CtrRec,
    listed: Option<&api::Container>,
    when: &str,
) {
    let still = || lock(&ctx.model).unchanged(pod_id, prec.seq);
    let Some(c) = listed else {
        if still() {
            ctx.violation(
                "container-lost",
                cid,
                format!(
                    "container {} ({:?}) of pod {} was acknowledged and is not listed ({when})",
                    crec.name, crec.state, prec.name
                ),
            );
        }
        return;
    };
    use api::ContainerState as S;
    let state = S::try_from(c.state).unwrap_or(S::ContainerUnknown);
    let ok = match (crec.state, state) {
        // Its shim, killed before it reaped the container, took the status.
        (_, S::ContainerUnknown) => prec.shim_killed,
        (CtrState::Created, S::ContainerCreated) => true,
        // A container whose shim was killed is exited before it ever started.
        (CtrState::Created, S::ContainerExited) => prec.shim_killed,
        (CtrState::Started, S::ContainerRunning) => true,
        (CtrState::Started, S::ContainerExited) => {
            crec.role == Role::Job || prec.shim_killed || prec.state == PodState::Stopped
        }
        (CtrState::Stopped, S::ContainerExited) => true,
        _ => false,
    };
    if !ok {
        if still() {
            ctx.violation(
                "container-state",
                cid,
                format!(
                    "container {} of pod {} is {state:?}, acknowledged {:?} (shim killed: {}) ({when})",
                    crec.name, prec.name, crec.state, prec.shim_killed
                ),
            );
        }
        return;
    }
    if state != S::ContainerExited {
        return;
    }

    let st = ctx
        .rpc(
            "ContainerStatus",
            cid,
            LIST_DEADLINE,
            rt.container_status(api::ContainerStatusRequest {
                container_id: cid.to_string(),
                verbose: false,
            }),
        )
        .await;
    let Ok(Some(st)) = st.map(|r| r.status) else {
        return;
    };
    let allowed = if crec.state == CtrState::Created {
        &[137, 255, 128][..]
    } else {
        allowed_exit(crec.role, prec.shim_killed)
    };
    if (!allowed.contains(&st.exit_code) || st.finished_at == 0) && still() {
        ctx.violation(
            "exit-code",
            cid,
            format!(
                "container {} of pod {} exited {} (finished_at {}, reason {:?}), expected one of {allowed:?} ({when})",
                crec.name, prec.name, st.exit_code, st.finished_at, st.reason
            ),
        );
    }
}

/// No two pods with the same metadata, no two containers of a pod with the same
/// name and attempt.
fn duplicates(ctx: &Ctx, pods: &[api::PodSandbox], ctrs: &[api::Container]) {
    let mut seen = HashMap::new();
    for p in pods {
        let Some(m) = &p.metadata else { continue };
        let key = format!("{}/{}/{}/{}", m.namespace, m.name, m.uid, m.attempt);
        if let Some(other) = seen.insert(key.clone(), p.id.clone()) {
            ctx.violation(
                "duplicate",
                &p.id,
                format!("pod {key} is listed twice ({other} and {})", p.id),
            );
        }
    }
    let mut seen = HashMap::new();
    for c in ctrs {
        let Some(m) = &c.metadata else { continue };
        let key = format!("{}/{}/{}", c.pod_sandbox_id, m.name, m.attempt);
        if let Some(other) = seen.insert(key.clone(), c.id.clone()) {
            ctx.violation(
                "duplicate",
                &c.id,
                format!("container {key} is listed twice ({other} and {})", c.id),
            );
        }
    }
}

/// A container berthd lists RUNNING has a live process (berthd may be a moment
/// behind an exit: asked again for up to 3 s before it counts).
async fn running_has_process(ctx: &Ctx, rt: &mut Rt, id: &str) {
    let mut last = String::new();
    for _ in 0..30 {
        let r = ctx
            .rpc(
                "ContainerStatus",
                id,
                LIST_DEADLINE,
                rt.container_status(api::ContainerStatusRequest {
                    container_id: id.to_string(),
                    verbose: true,
                }),
            )
            .await;
        let Ok(r) = r else { return };
        let running = r
            .status
            .as_ref()
            .is_some_and(|s| s.state == api::ContainerState::ContainerRunning as i32);
        if !running {
            return;
        }
        let pid = cri::verbose_info(&r.info)
            .ok()
            .and_then(|v| v["pid"].as_i64())
            .unwrap_or(0);
        if pid > 0 && cri::alive(pid as i32) {
            return;
        }
        last = format!("pid {pid}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ctx.violation(
        "running-without-process",
        id,
        format!("listed RUNNING for 3 s but its process is gone ({last})"),
    );
}

/// Every image whose pull was acknowledged (and not removed) is listed.
async fn images(ctx: &Ctx, when: &str) {
    let want: Vec<(String, u64)> = lock(&ctx.model)
        .images
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if want.is_empty() {
        return;
    }
    let Some((_, mut img)) = ctx.connect(Duration::from_secs(5)).await else {
        return;
    };
    for (name, seq) in want {
        let r = ctx
            .rpc(
                "ImageStatus",
                &name,
                LIST_DEADLINE,
                img.image_status(api::ImageStatusRequest {
                    image: Some(api::ImageSpec {
                        image: name.clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                }),
            )
            .await;
        let Ok(r) = r else { continue };
        let still = lock(&ctx.model).images.get(&name) == Some(&seq);
        if r.image.is_none() && still {
            ctx.violation(
                "image-lost",
                &name,
                format!("the pull was acknowledged and the image is not there ({when})"),
            );
        }
    }
}

/// Hashes every committed blob not hashed before; a blob whose content does not
/// match its name is a violation.
pub fn verify_blobs(ctx: &Ctx, root: &Path) {
    let dir = root.join("content").join("blobs").join("sha256");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if lock(&ctx.model).verified.contains(&name) {
            continue;
        }
        let Ok(mut f) = std::fs::File::open(e.path()) else {
            continue; // collected meanwhile
        };
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(_) => return,
            }
        }
        let got = hex::encode(h.finalize());
        if got == name {
            lock(&ctx.model).verified.insert(name);
        } else {
            ctx.violation(
                "blob-corrupt",
                format!("sha256:{name}"),
                format!("its content hashes to sha256:{got}"),
            );
        }
    }
}
