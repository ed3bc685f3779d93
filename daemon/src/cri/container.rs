//! Containers: CreateContainer, StartContainer, StopContainer,
//! RemoveContainer, status, lists, ExecSync, stats, resource updates and
//! log reopening. A CRI container is a task (kind `Cri`) in its pod's shim;
//! what the CRI adds (names, labels, the request) rides in the task record.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_api::runtime::v1 as cri;
use prost::Message;
use serde_json::json;
use tracing::{debug, info};

use super::error::{Cause, CriError, Result};
use super::{find_by_prefix, in_created_order, labels_match, lock, spec, CriRuntime, Sandbox};
use crate::error::Kind;
use crate::metadata::cri::{ContainerMeta, SandboxState};
use crate::tasks::{
    prepare_rootfs, NewTask, Prepare, Task, TaskError, TaskKind, TaskRecord, TaskStatus,
};
use berth_sysutil::now_nanos;

/// How long a SIGKILLed container may take to be reported gone.
const KILL_GRACE: Duration = Duration::from_secs(30);

/// `<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>`: unique per pod
/// and attempt (containerd's form).
pub(crate) fn container_name(c: &cri::ContainerMetadata, pod: &cri::PodSandboxMetadata) -> String {
    format!(
        "{}_{}_{}_{}_{}",
        c.name, pod.name, pod.namespace, pod.uid, c.attempt
    )
}

/// `<log_directory>/<log_path>`; the relative part may not climb out.
pub(crate) fn log_path(pod_dir: &str, rel: &str, name: &str) -> Result<Option<PathBuf>> {
    if pod_dir.is_empty() || rel.is_empty() {
        return Ok(None);
    }
    let rel_path = Path::new(rel);
    if rel_path.is_absolute()
        || rel_path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(CriError::invalid(
            format!("container {name}"),
            format!("log_path {rel:?} must be relative to the pod's log directory, without '..'"),
        ));
    }
    Ok(Some(Path::new(pod_dir).join(rel_path)))
}

fn state_pb(s: TaskStatus) -> cri::ContainerState {
    match s {
        TaskStatus::Creating | TaskStatus::Created => cri::ContainerState::ContainerCreated,
        TaskStatus::Running => cri::ContainerState::ContainerRunning,
        TaskStatus::Exited => cri::ContainerState::ContainerExited,
        TaskStatus::Unknown => cri::ContainerState::ContainerUnknown,
    }
}

/// kubelet's reasons: `Completed` for 0, `OOMKilled` when the kernel killed
/// it for memory, `Error` otherwise.
fn exit_reason(rec: &TaskRecord) -> String {
    match rec.status {
        TaskStatus::Exited if rec.reason.contains("OOMKilled") => "OOMKilled".into(),
        TaskStatus::Exited if rec.exit_code == Some(0) => "Completed".into(),
        TaskStatus::Exited => "Error".into(),
        TaskStatus::Unknown => "Unknown".into(),
        _ => String::new(),
    }
}

fn spec_error(e: spec::SpecError) -> TaskError {
    match e {
        spec::SpecError::NotFound(m) => TaskError::NotFound(m),
        spec::SpecError::InvalidArgument(m) => TaskError::InvalidArgument(m),
        spec::SpecError::Internal(m) => TaskError::Internal(m),
    }
}

impl CriRuntime {
    /// The CRI containers of a pod (created or later), from memory.
    pub(crate) fn containers_of(&self, sandbox_id: &str) -> Vec<Arc<Task>> {
        self.tasks
            .tasks_of(sandbox_id)
            .into_iter()
            .filter(|t| t.record().kind == TaskKind::Cri)
            .collect()
    }

    /// A container by id or unique id prefix.
    pub(super) fn container(&self, id: &str) -> Result<Arc<Task>> {
        let id = id.trim();
        if id.is_empty() {
            return Err(CriError::invalid("container id", "empty"));
        }
        if let Some(t) = self.tasks.get_task(id) {
            if t.record().kind == TaskKind::Cri {
                return Ok(t);
            }
        }
        let ids: Vec<String> = self.tasks.map_kind(TaskKind::Cri, |r| {
            r.id.starts_with(id).then(|| r.id.clone())
        });
        let full = find_by_prefix(ids.iter().map(|k| (k, k)), id, "container")?;
        self.tasks
            .get_task(full)
            .ok_or_else(|| CriError::not_found(format!("container {id}")))
    }

    pub async fn create_container(
        self: &Arc<Self>,
        req: cri::CreateContainerRequest,
    ) -> Result<String> {
        let sandbox = self.sandbox(&req.pod_sandbox_id)?;
        let cfg = req
            .config
            .ok_or_else(|| CriError::invalid("CreateContainer", "no container config"))?;
        let m = cfg
            .metadata
            .clone()
            .ok_or_else(|| CriError::invalid("CreateContainer", "the config has no metadata"))?;
        if m.name.trim().is_empty() {
            return Err(CriError::invalid(
                "CreateContainer",
                "metadata.name is empty",
            ));
        }
        super::limits::field(
            "CreateContainer",
            "metadata.name",
            &m.name,
            super::limits::MAX_CONTAINER_NAME,
        )?;
        let what = format!("container {}", m.name);
        let limits = &self.config.cri;
        super::limits::labels(&what, &cfg.labels, limits.max_labels_bytes)?;
        super::limits::annotations(&what, &cfg.annotations, limits.max_annotations_bytes)?;
        let listed_bytes = super::limits::list_item_bytes(
            prost::Message::encoded_len(&m),
            &cfg.labels,
            &cfg.annotations,
        ) + cfg.image.as_ref().map_or(0, |i| i.image.len());
        let image = cfg
            .image
            .as_ref()
            .map(|i| i.image.trim().to_string())
            .unwrap_or_default();
        if image.is_empty() {
            return Err(CriError::invalid(what, "no image given"));
        }
        let srec = sandbox.record();
        if srec.state != SandboxState::Ready {
            return Err(CriError::failed_precondition(
                what,
                format!("pod sandbox {} is not ready", srec.id),
            ));
        }
        // The pod's config as the pod was made: kubelet sends it again, but
        // the record is what the pod's namespaces and files follow.
        let pod_cfg = srec.config();
        let pod_meta = pod_cfg.metadata.clone().unwrap_or_default();
        let name = container_name(&m, &pod_meta);
        let this = self.clone();
        let n = name.clone();
        self.create_once(
            format!("container/{name}"),
            move |rt| {
                rt.tasks
                    .map_kind(TaskKind::Cri, |r| (r.name == n).then(|| r.id.clone()))
                    .pop()
                    .map(|id| format!("container name {n:?} is reserved for {id}"))
            },
            // Admitted only if ListContainers stays within the budget with
            // it and every other create under way; its share is held until
            // the create ends.
            move |rt| {
                rt.pending_containers.reserve(
                    &what,
                    "ListContainers",
                    || {
                        prost::Message::encoded_len(&cri::ListContainersResponse {
                            containers: rt.list_containers(None),
                        })
                    },
                    listed_bytes,
                    rt.config.cri.max_list_bytes,
                )
            },
            move |hold| async move {
                let made = this.do_create_container(sandbox, cfg, image, name).await;
                drop(hold);
                made
            },
        )
        .await
    }

    async fn do_create_container(
        self: Arc<Self>,
        sandbox: Arc<Sandbox>,
        cfg: cri::ContainerConfig,
        image_name: String,
        name: String,
    ) -> Result<String> {
        let short = cfg
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let what = format!("container {short}");
        let image = self.images.lookup(&image_name).map_err(|e| match e {
            crate::images::error::ImageError::NotFound(_) => CriError::new(
                Kind::NotFound,
                &what,
                format!("image {image_name} not found: pull it first"),
            ),
            other => CriError::of(&what, other),
        })?;
        let (image_cfg, top) = self.image_rootfs(&image).await?;
        // From here to the task's record the pod must stay: a remove that
        // ran meanwhile would have missed the new container and deleted the
        // netns and files it joins. The record is read again under the lock.
        let (_pod_op, srec) = self.ready_pod(&sandbox, &what).await?;
        let pod_cfg = srec.config().clone();
        let id = crate::tasks::new_long_id();
        let (log, keep_log) = match log_path(&pod_cfg.log_directory, &cfg.log_path, &short)? {
            Some(p) => (p, true),
            None => (
                self.config.root.join("logs").join(format!("{id}.log")),
                false,
            ),
        };
        let driver = if self.config.cri.cgroup_driver == "systemd" {
            spec::CgroupDriver::Systemd
        } else {
            spec::CgroupDriver::Cgroupfs
        };
        let cgroups_path = spec::cgroups_path(driver, &srec.cgroup_parent, &srec.id, &id)
            .map_err(CriError::with(&what))?;
        let stop_signal = spec::stop_signal(&cfg, &image_cfg)?;
        let mut args = cfg.command.clone();
        args.extend(cfg.args.iter().cloned());
        let meta = ContainerMeta {
            name: short.clone(),
            attempt: cfg.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
            labels: cfg.labels.clone().into_iter().collect(),
            annotations: cfg.annotations.clone().into_iter().collect(),
            image_spec: image_name.clone(),
            image_id: crate::cri::image::image_id(&image),
            config: cfg.clone(),
            stop_signal,
            resources: Vec::new(),
        };
        let handler = self.pod_runtime(&srec)?;
        // The pod annotations the handler takes, as containerd's
        // `pod_annotations`: the container's own win over them.
        let passthrough = handler.passthrough(&pod_cfg.annotations);
        let new = NewTask {
            id: id.clone(),
            name,
            sandbox_id: srec.id.clone(),
            image: image.name.clone(),
            args,
            tty: cfg.tty,
            stdin: cfg.stdin,
            auto_remove: false,
            kind: TaskKind::Cri,
            log_path: log,
            keep_log,
            cgroups_path,
            cri: Some(meta),
            runtime: Some(handler),
        };
        let snap = self.tasks.snapshotter();
        let opts = self.spec_opts.clone();
        let pod_status = self.sandbox_status_pb(&srec);
        // A pod sharing one PID namespace has it held by its pause process.
        let pid_ns = (srec.pause_pid != 0
            && super::sandbox::namespace_options(&pod_cfg).pid == cri::NamespaceMode::Pod as i32)
            .then(|| PathBuf::from(format!("/proc/{}/ns/pid", srec.pause_pid)));
        let prepare: Prepare = Box::new(move |rec: &TaskRecord| {
            // The log first: a log dir that cannot be written fails before
            // any mount exists.
            if let Some(dir) = rec.log_path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    TaskError::InvalidArgument(format!(
                        "container {short}: cannot create its log directory {}: {e}",
                        dir.display()
                    ))
                })?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&rec.log_path)
                .map_err(|e| {
                    TaskError::InvalidArgument(format!(
                        "container {short}: cannot write its log {}: {e}",
                        rec.log_path.display()
                    ))
                })?;
            let bundle = prepare_rootfs(rec, snap.as_ref(), top.as_deref())?;
            let pod = spec::PodContext {
                sandbox_id: &srec.id,
                config: &pod_cfg,
                netns: srec.netns.as_deref(),
                ipc_ns: srec.ipc_ns.as_deref(),
                uts_ns: srec.uts_ns.as_deref(),
                pid_ns: pid_ns.as_deref(),
                resolv_conf: Some(&srec.dir.join("resolv.conf")),
                hostname_file: Some(&srec.dir.join("hostname")),
                hosts_file: Some(&srec.dir.join("hosts")),
                shm: srec.shm.as_deref(),
            };
            let mut doc =
                spec::container_spec(&rec.id, &cfg, &pod, &image_cfg, &bundle.rootfs(), &opts)
                    .map_err(spec_error)?;
            // The path recorded at create (under the pod's cgroup) is the one
            // stats and updates read.
            if let Some(l) = doc.linux_mut().as_mut() {
                l.set_cgroups_path(Some(PathBuf::from(&rec.cgroups_path)));
            }
            spec::add_pod_annotations(&mut doc, passthrough);
            bundle
                .write_spec(&doc)
                .map_err(crate::tasks::bundle_error(format!(
                    "writing the config.json of container {short}"
                )))
        });
        let task = self.tasks.create(new, prepare).await?;
        let rec = task.record();
        info!(container = %id, name = %rec.name, pod = %rec.sandbox_id, "container created");
        self.emit(
            &id,
            cri::ContainerEventType::ContainerCreatedEvent,
            Some(pod_status),
            vec![self.container_status_pb(&rec)],
        );
        Ok(id)
    }

    /// An image's config and the top of its unpacked layer chain (unpacked
    /// now if GC or an import left it packed).
    pub(crate) async fn image_rootfs(
        &self,
        image: &crate::images::store::ImageRecord,
    ) -> Result<(crate::tasks::spec::ContainerConfig, Option<String>)> {
        let resolved = self.images.resolve(image.clone(), None).await?;
        let image_cfg = crate::tasks::spec::parse_image_config(&resolved.config, &image.name)?;
        let chain = self.images.platform_chain(image).await?;
        let top = chain.last().map(|c| c.chain_id.clone());
        let images = self.images.clone();
        let n = image.name.clone();
        crate::tasks::error::blocking(move || images.unpack_chain(&n, &chain).map_err(Into::into))
            .await?;
        Ok((image_cfg, top))
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let task = self.container(id)?;
        let current = task.record();
        if current.started_at != 0
            && matches!(current.status, TaskStatus::Running | TaskStatus::Exited)
        {
            // A retry of a start that went through (kubelet's after a dropped
            // connection): its answer is the first one's.
            debug!(container = %current.id, "StartContainer: already started");
            return Ok(());
        }
        // A stop of the pod must not run during the start: it would skip the
        // container (not running yet) and leave it running in a stopped pod.
        let sandbox = lock(&self.sandboxes)
            .get(&current.sandbox_id)
            .cloned()
            .ok_or_else(|| {
                CriError::new(
                    Kind::NotFound,
                    format!("container {}", current.id),
                    format!("pod sandbox {} not found", current.sandbox_id),
                )
            })?;
        let (_pod_op, _) = self
            .ready_pod(&sandbox, &format!("container {}", current.id))
            .await?;
        let rec = self.tasks.start(&task.id).await?;
        self.emit_container(&rec, cri::ContainerEventType::ContainerStartedEvent);
        // Its writable layer gets a first measurement now, not at the next sync.
        let snap = self.tasks.snapshotter();
        let key = rec.snapshot.clone();
        if let Ok(Ok(u)) = tokio::task::spawn_blocking(move || snap.usage(&key)).await {
            lock(&self.layer_usage).insert(rec.snapshot.clone(), (u.size, u.inodes, now_nanos()));
        }
        Ok(())
    }

    fn emit_container(&self, rec: &TaskRecord, kind: cri::ContainerEventType) {
        let pod = lock(&self.sandboxes)
            .get(&rec.sandbox_id)
            .map(|s| s.record());
        self.emit(
            &rec.id,
            kind,
            pod.map(|p| self.sandbox_status_pb(&p)),
            vec![self.container_status_pb(rec)],
        );
    }

    /// Turns task exits into CONTAINER_STOPPED events, for as long as the
    /// runtime lives. Emitted on the exit path itself, so a Stop's reply (and any
    /// Remove after it) never comes before its event.
    pub fn forward_exits(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        self.tasks.on_exit(move |rec| {
            if rec.kind != TaskKind::Cri {
                return;
            }
            if let Some(rt) = this.upgrade() {
                rt.emit_container(rec, cri::ContainerEventType::ContainerStoppedEvent);
            }
        });
    }

    /// StopContainer: the stop signal, then SIGKILL after `timeout` seconds.
    /// Stopping a container that is not running (or gone) succeeds.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let task = match self.container(id) {
            Ok(t) => t,
            Err(e) if e.kind() == Kind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_container_task(&task, timeout).await
    }

    pub(crate) async fn stop_container_task(&self, task: &Arc<Task>, timeout: i64) -> Result<()> {
        let rec = task.record();
        if rec.status != TaskStatus::Running {
            return Ok(());
        }
        let signal = rec
            .cri
            .as_ref()
            .map(|m| m.stop_signal)
            .filter(|s| *s > 0)
            .unwrap_or(15) as u32;
        if timeout > 0 && signal != 9 {
            match self.tasks.kill(&rec.id, signal, false).await {
                Ok(()) => {}
                // Not running, or its shim is gone: the exit is (being) settled.
                // Answer once it is, never while the container still shows
                // RUNNING (its shim's death takes a while to settle).
                Err(TaskError::FailedPrecondition(_)) => return self.exited(&rec.id).await,
                Err(e) if e.is_shim_gone() => return self.exited(&rec.id).await,
                Err(e) => return Err(e.into()),
            }
            let grace = Duration::from_secs(timeout as u64);
            if tokio::time::timeout(grace, self.tasks.wait(&rec.id))
                .await
                .is_ok()
            {
                return Ok(());
            }
            info!(container = %rec.id, timeout, "container ignored its stop signal; killing it");
        }
        // With a PID namespace of its own, the init's death takes every
        // process with it: no need for runc's cgroup-wide `kill --all`.
        let all = !self.own_pid_namespace(&rec);
        match self.tasks.kill(&rec.id, 9, all).await {
            Ok(()) | Err(TaskError::FailedPrecondition(_)) => {}
            Err(e) if e.is_shim_gone() => {}
            Err(e) => return Err(e.into()),
        }
        self.exited(&rec.id).await
    }

    /// Waits (up to [`KILL_GRACE`]) until the container's exit is recorded.
    async fn exited(&self, id: &str) -> Result<()> {
        match tokio::time::timeout(KILL_GRACE, self.tasks.wait(id)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(CriError::deadline_exceeded(
                format!("container {id}"),
                format!("still running {}s after SIGKILL", KILL_GRACE.as_secs()),
            )),
        }
    }

    /// Whether the container got a PID namespace of its own (CONTAINER
    /// mode, or POD mode in a pod without a pause process to hold one).
    fn own_pid_namespace(&self, rec: &TaskRecord) -> bool {
        let Some(meta) = rec.cri.as_ref() else {
            return false;
        };
        let pid = meta
            .config()
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .map(|n| n.pid)
            .unwrap_or(cri::NamespaceMode::Pod as i32);
        if pid == cri::NamespaceMode::Container as i32 {
            return true;
        }
        pid == cri::NamespaceMode::Pod as i32
            && lock(&self.sandboxes)
                .get(&rec.sandbox_id)
                .is_some_and(|s| s.record().pause_pid == 0)
    }

    /// RemoveContainer: kills it if it still runs, then removes its rootfs,
    /// bundle and record (kubelet's log stays). A missing one is fine.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let task = match self.container(id) {
            Ok(t) => t,
            Err(e) if e.kind() == Kind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        self.remove_container_task(&task).await
    }

    pub(crate) async fn remove_container_task(&self, task: &Arc<Task>) -> Result<()> {
        let rec = task.record();
        if rec.status == TaskStatus::Running {
            self.stop_container_task(task, 0).await?;
        }
        match self.tasks.remove(&rec.id, true).await {
            Ok(()) => {}
            Err(TaskError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        info!(container = %rec.id, "container removed");
        self.emit_container(&rec, cri::ContainerEventType::ContainerDeletedEvent);
        Ok(())
    }

    pub(crate) fn container_status_pb(&self, rec: &TaskRecord) -> cri::ContainerStatus {
        let fallback;
        let meta = match rec.cri.as_ref() {
            Some(m) => m,
            None => {
                fallback = ContainerMeta::default();
                &fallback
            }
        };
        let cfg = meta.config();
        let resources = meta
            .resources()
            .or_else(|| cfg.linux.as_ref().and_then(|l| l.resources.clone()));
        cri::ContainerStatus {
            id: rec.id.clone(),
            metadata: cfg.metadata.clone(),
            state: state_pb(rec.status) as i32,
            created_at: rec.created_at,
            started_at: rec.started_at,
            finished_at: rec.finished_at,
            exit_code: rec.exit_code.map(|c| c as i32).unwrap_or(0),
            image: Some(cri::ImageSpec {
                image: meta.image_spec.clone(),
                ..Default::default()
            }),
            image_ref: meta.image_id.clone(),
            reason: exit_reason(rec),
            message: rec.reason.clone(),
            labels: meta.labels_pb(),
            annotations: meta.annotations_pb(),
            mounts: cfg.mounts.clone(),
            log_path: rec.log_path.display().to_string(),
            resources: resources.map(|r| cri::ContainerResources {
                linux: Some(r),
                windows: None,
            }),
            image_id: meta.image_id.clone(),
            user: None,
            stop_signal: 0,
        }
    }

    pub fn container_status(
        &self,
        req: cri::ContainerStatusRequest,
    ) -> Result<cri::ContainerStatusResponse> {
        let task = self.container(&req.container_id)?;
        let rec = task.record();
        let mut info = HashMap::new();
        if req.verbose {
            let v = json!({
                "sandboxID": rec.sandbox_id,
                "pid": if rec.status == TaskStatus::Running { rec.pid } else { 0 },
                "bundle": rec.bundle,
                "rootfs": rec.rootfs(),
                "snapshotKey": rec.snapshot,
                "cgroupsPath": rec.cgroups_path,
                "shim": rec.shim_address,
                "runtimeType": rec.shim_binary,
                "args": rec.args,
                "image": rec.image,
                "reason": rec.reason,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(self.container_status_pb(&rec)),
            info,
        })
    }

    pub fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
        // Built from the records in place (no copy of whole records): kubelet
        // lists every second.
        let out: Vec<cri::Container> = self.tasks.map_kind(TaskKind::Cri, |r| {
            if r.status == TaskStatus::Creating {
                return None;
            }
            let state = state_pb(r.status) as i32;
            let meta = r.cri.as_ref()?;
            if let Some(f) = &filter {
                let keep = (f.id.is_empty() || r.id.starts_with(&f.id))
                    && (f.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&f.pod_sandbox_id))
                    && f.state.as_ref().is_none_or(|s| s.state == state)
                    && (f.label_selector.is_empty()
                        || labels_match(&meta.labels, &f.label_selector));
                if !keep {
                    return None;
                }
            }
            let c = cri::Container {
                id: r.id.clone(),
                pod_sandbox_id: r.sandbox_id.clone(),
                metadata: Some(cri::ContainerMetadata {
                    name: meta.name.clone(),
                    attempt: meta.attempt,
                }),
                image: Some(cri::ImageSpec {
                    image: meta.image_spec.clone(),
                    ..Default::default()
                }),
                image_ref: meta.image_id.clone(),
                state,
                created_at: r.created_at,
                labels: meta.labels_pb(),
                annotations: meta.annotations_pb(),
                image_id: meta.image_id.clone(),
            };
            Some(c)
        });
        in_created_order(out, |c| c.created_at)
    }

    pub async fn exec_sync(&self, req: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse> {
        let task = self.container(&req.container_id)?;
        if req.cmd.is_empty() {
            return Err(CriError::invalid(
                format!("ExecSync in container {}", task.id),
                "no command",
            ));
        }
        let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
        let out = self
            .tasks
            .exec_sync(
                &task.id,
                req.cmd,
                timeout,
                self.config.cri.max_exec_output_bytes,
            )
            .await?;
        Ok(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        })
    }

    /// UpdateContainerResources: the new limits go to the runtime through
    /// the shim (runc update) and are recorded for status.
    pub async fn update_container_resources(
        &self,
        req: cri::UpdateContainerResourcesRequest,
    ) -> Result<()> {
        let task = self.container(&req.container_id)?;
        let rec = task.record();
        let Some(res) = req.linux else {
            return Ok(());
        };
        let what = format!("container {}", rec.id);
        let doc = spec::linux_resources(&what, &res, &self.spec_opts)?;
        if rec.status == TaskStatus::Running || rec.status == TaskStatus::Created {
            let pod = self
                .tasks
                .pod_shim(&rec.sandbox_id)
                .ok_or_else(|| CriError::failed_precondition(&what, "its shim is gone"))?;
            let any = containerd_shim_protos::protobuf::well_known_types::any::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(&doc)
                    .map_err(|e| CriError::internal(&what, Cause::other(e)))?,
                ..Default::default()
            };
            pod.client()
                .update(&rec.id, Some(any), HashMap::new())
                .await
                .map_err(TaskError::shim(format!(
                    "updating the resources of container {}",
                    rec.id
                )))?;
        }
        self.tasks
            .update_cri(&rec.id, |m| m.resources = res.encode_to_vec())
            .await?;
        info!(container = %rec.id, "container resources updated");
        Ok(())
    }

    /// ReopenContainerLog: the shim reopens the log file (kubelet rotated
    /// it). Only a running container has a log being written.
    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let task = self.container(id)?;
        let rec = task.record();
        if rec.status != TaskStatus::Running {
            return Err(CriError::failed_precondition(
                format!("container {}", rec.id),
                "not running",
            ));
        }
        let pod = self.tasks.pod_shim(&rec.sandbox_id).ok_or_else(|| {
            CriError::failed_precondition(format!("container {}", rec.id), "its shim is gone")
        })?;
        let mut annotations = HashMap::new();
        annotations.insert(
            berth_shim_protocol::annotations::REOPEN_LOG.to_string(),
            "true".to_string(),
        );
        pod.client()
            .update(&rec.id, None, annotations)
            .await
            .map_err(TaskError::shim(format!(
                "reopening the log of container {}",
                rec.id
            )))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_log_paths() {
        let c = cri::ContainerMetadata {
            name: "app".into(),
            attempt: 2,
        };
        let p = cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "u1".into(),
            namespace: "ns".into(),
            attempt: 0,
        };
        assert_eq!(container_name(&c, &p), "app_web_ns_u1_2");
        assert_eq!(
            log_path("/var/log/pods/x", "app/0.log", "app").unwrap(),
            Some(PathBuf::from("/var/log/pods/x/app/0.log"))
        );
        assert_eq!(log_path("", "app/0.log", "app").unwrap(), None);
        assert!(log_path("/var/log/pods/x", "../../etc/passwd", "app").is_err());
        assert!(log_path("/var/log/pods/x", "/etc/passwd", "app").is_err());
    }

    #[test]
    fn reasons() {
        let mut r: TaskRecord = serde_json::from_value(json!({
            "id": "a", "name": "a", "sandbox_id": "s", "image": "i", "args": [],
            "status": "exited", "exit_code": 0, "created_at": 1, "bundle": "/b",
            "log_path": "/l", "stdio": "cri-log", "snapshot": "a", "runtime_root": "/r"
        }))
        .unwrap();
        assert_eq!(exit_reason(&r), "Completed");
        r.exit_code = Some(137);
        assert_eq!(exit_reason(&r), "Error");
        r.reason = "OOMKilled".into();
        assert_eq!(exit_reason(&r), "OOMKilled");
        r.status = TaskStatus::Running;
        assert_eq!(exit_reason(&r), "");
        assert_eq!(
            state_pb(TaskStatus::Unknown),
            cri::ContainerState::ContainerUnknown
        );
    }
}
