//! StopPodSandbox and RemovePodSandbox, and the teardown of whatever a pod
//! made that both (and a failed RunPodSandbox) share.

use super::*;

impl CriRuntime {
    /// Kills and removes the pod's pause container, if it has one.
    pub(super) async fn remove_pause(
        &self,
        sandbox: &Sandbox,
    ) -> Result<(), crate::tasks::TaskError> {
        let Some(id) = sandbox.record().pause else {
            return Ok(());
        };
        match self.tasks.remove(&id, true).await {
            Ok(()) | Err(crate::tasks::TaskError::NotFound(_)) => {
                let rec = sandbox.update(|r| {
                    r.pause = None;
                    r.pause_pid = 0;
                });
                self.persist_sandbox_logged(&rec).await;
                Ok(())
            }
            Err(e) => {
                warn!(pod = %sandbox.id, error = %e, "cannot remove the pause container");
                Err(e)
            }
        }
    }

    /// Undoes a pod's set-up, whatever of it exists: network (CNI DEL,
    /// netns), namespace pins, shm, files. Errors are logged; the record is
    /// updated to say what is left. The error is the pause container's when
    /// that failed (e.g. a full disk is ResourceExhausted), else Internal.
    pub(super) async fn teardown_sandbox(&self, sandbox: &Sandbox) -> Result<()> {
        let pause = self.remove_pause(sandbox).await;
        let mut clean = pause.is_ok();
        self.tasks.shutdown_idle_shim(&sandbox.id).await;
        clean &= self.teardown_network(sandbox).await;
        let rec = sandbox.record();
        if let Err(e) = self.host.unpin_namespaces(&rec.id).await {
            warn!(pod = %rec.id, error = %e, "cannot remove the pod's namespace pins");
            clean = false;
        }
        let shm_ok = match self.host.unmount_shm(&rec.dir).await {
            Ok(()) => true,
            Err(e) => {
                warn!(pod = %rec.id, error = %e, "cannot unmount the pod's /dev/shm");
                false
            }
        };
        let dir = rec.dir.clone();
        let id = rec.id.clone();
        let cgroup = (rec.cgroup_parent == format!("{}/{}", self.config.cri.cgroup_parent, rec.id))
            .then(|| rec.cgroup_parent.clone());
        let layout = self.cgroups.clone();
        let files_ok = tokio::task::spawn_blocking(move || {
            let mut ok = shm_ok;
            if ok && dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    warn!(pod = %id, error = %e, "cannot remove the pod's directory");
                    ok = false;
                }
            }
            // The pod cgroup runc made under berth's default parent.
            if let Some(path) = cgroup {
                remove_cgroup(&layout, &path);
            }
            ok
        })
        .await
        .unwrap_or(false);
        sandbox.update(|r| r.shm = None);
        let retry = "(see berthd's log); RemovePodSandbox can be retried";
        match pause {
            Err(e) => Err(CriError::of(
                format!(
                    "pod {}: removing its pause container failed; RemovePodSandbox can be retried",
                    rec.id
                ),
                e,
            )),
            Ok(()) if clean && files_ok => Ok(()),
            Ok(()) => Err(CriError::internal(
                format!("pod {}", rec.id),
                format!("removing its files and namespaces failed {retry}"),
            )),
        }
    }

    pub(super) async fn teardown_network(&self, sandbox: &Sandbox) -> bool {
        let rec = sandbox.record();
        let Some(netns) = rec.netns.clone() else {
            return true;
        };
        let pod = pod_ref(&rec);
        let r = self.host.teardown_network(&pod, &netns).await;
        match r {
            Ok(()) => {
                // Made durable by the caller's next write (or the record's
                // removal); a crash before that repeats the DEL, which is
                // idempotent.
                sandbox.update(|r| {
                    r.network_ready = false;
                    r.netns = None;
                });
                true
            }
            Err(e) => {
                warn!(pod = %rec.id, error = %e, "tearing down the pod's network failed");
                false
            }
        }
    }

    /// Stops every container of the pod (SIGKILL at once, as containerd
    /// does) and tears its network down. Idempotent; a missing pod is fine.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let sandbox = match self.sandbox(id) {
            Ok(s) => s,
            Err(e) if e.kind() == Kind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = sandbox.op.write().await;
        self.stop_sandbox_locked(&sandbox).await
    }

    pub(super) async fn stop_sandbox_locked(&self, sandbox: &Sandbox) -> Result<()> {
        let t0 = std::time::Instant::now();
        let rec = sandbox.update(|r| r.stopping = true);
        self.persist_sandbox(&rec).await?;
        for c in self.containers_of(&rec.id) {
            self.stop_container_task(&c, 0).await?;
        }
        if let Some(pause) = rec.pause.as_deref().and_then(|id| self.tasks.get_task(id)) {
            self.stop_container_task(&pause, 0).await?;
        }
        let t_stopped = t0.elapsed();
        let network_down = self.teardown_network(sandbox).await;
        debug!(
            pod = %rec.id,
            containers_ms = t_stopped.as_millis() as u64,
            network_ms = (t0.elapsed() - t_stopped).as_millis() as u64,
            "pod's containers stopped, network torn down"
        );
        if !network_down {
            return Err(CriError::internal(
                format!("pod {}", rec.id),
                "tearing down its network failed (see berthd's log); StopPodSandbox can be retried",
            ));
        }
        if let Err(e) = self.host.unmount_shm(&rec.dir).await {
            warn!(pod = %rec.id, error = %e, "cannot unmount the pod's /dev/shm");
        }
        let was_ready = rec.state == SandboxState::Ready;
        let rec = sandbox.update(|r| {
            r.state = SandboxState::NotReady;
            r.stopping = false;
            r.shm = None;
        });
        self.persist_sandbox(&rec).await?;
        if was_ready {
            info!(pod = %rec.id, "pod sandbox stopped");
            self.emit(
                &rec.id,
                cri::ContainerEventType::ContainerStoppedEvent,
                Some(self.sandbox_status_pb(&rec)),
                Vec::new(),
            );
        }
        Ok(())
    }

    /// Stops (if needed) and removes the pod, its containers and everything
    /// it made. Idempotent; a missing pod is fine.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let sandbox = match self.sandbox(id) {
            Ok(s) => s,
            Err(e) if e.kind() == Kind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = sandbox.op.write().await;
        if !lock(&self.sandboxes).contains_key(&sandbox.id) {
            return Ok(());
        }
        let rec = sandbox.record();
        if rec.state != SandboxState::NotReady || rec.network_ready {
            self.stop_sandbox_locked(&sandbox).await?;
        }
        for c in self.containers_of(&rec.id) {
            self.remove_container_task(&c).await?;
        }
        self.teardown_sandbox(&sandbox).await?;
        self.delete_sandbox_record(&rec.id).await?;
        lock(&self.sandboxes).remove(&rec.id);
        info!(pod = %rec.id, "pod sandbox removed");
        self.emit(
            &rec.id,
            cri::ContainerEventType::ContainerDeletedEvent,
            Some(self.sandbox_status_pb(&rec)),
            Vec::new(),
        );
        Ok(())
    }
}

/// Removes a cgroup (and its children) in every hierarchy; what is already
/// gone or still busy is left (runc removed the containers' own).
fn remove_cgroup(layout: &stats::CgroupLayout, path: &str) {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() || rel.contains("..") {
        return;
    }
    let roots: Vec<std::path::PathBuf> = match layout {
        stats::CgroupLayout::V2 { root } => vec![root.clone()],
        stats::CgroupLayout::V1 { root } => std::fs::read_dir(root)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default(),
    };
    for r in roots {
        let dir = r.join(rel);
        if !dir.is_dir() {
            continue;
        }
        // Children first (rmdir of a cgroup with children fails).
        let mut dirs = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            if let Err(e) = std::fs::remove_dir(d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(cgroup = %d.display(), error = %e, "cannot remove a pod cgroup");
                }
            }
        }
    }
}
