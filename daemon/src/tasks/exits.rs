//! Exits: watching each task for its exit, recording and publishing it, and
//! settling the tasks of a shim that died.

use super::*;

impl TaskService {
    /// Waits for a task's exit in its shim and settles it.
    pub(super) async fn watch(self: Arc<Self>, task: Arc<Task>, pod: Arc<PodShim>) {
        let mut failures = 0u32;
        loop {
            let client = pod.client();
            match client.wait(&task.id).await {
                Ok(w) => {
                    let at = ts_nanos(&w.exited_at);
                    self.finish(&task, &pod, w.exit_status, at, String::new())
                        .await;
                    return;
                }
                Err(e) if e.is_connection() => {
                    if pod.is_dead() {
                        return;
                    }
                    if self.shims.try_reconnect(&pod).await {
                        continue;
                    }
                    if pod.mark_dead() {
                        self.shim_died(pod.clone(), "shim died").await;
                    }
                    return;
                }
                Err(e) if e.is_not_found() => {
                    warn!(task = %task.id, error = %e, "the shim does not know the task");
                    pod.remove_task(&task.id);
                    let binary = pod.record.binary();
                    self.settle_without_shim(&task, Some(&binary), "the shim lost the task")
                        .await;
                    if pod.tasks().is_empty() {
                        self.shims.shutdown(&pod).await;
                    }
                    return;
                }
                Err(e) => {
                    failures += 1;
                    warn!(task = %task.id, error = %e, failures, "waiting for the task failed");
                    tokio::time::sleep(Duration::from_millis(200 << failures.min(6))).await;
                }
            }
        }
    }

    /// Records an exit: deletes the task from its shim (which flushes its
    /// output and frees the runtime's state), shuts the shim down when the pod
    /// is empty, persists, notifies waiters, and auto-removes.
    pub(super) async fn finish(
        &self,
        task: &Arc<Task>,
        pod: &Arc<PodShim>,
        code: u32,
        at: i64,
        reason: String,
    ) {
        let client = pod.client();
        // Read before the delete: the runtime removes the cgroup with it.
        let reason = if reason.is_empty() && code != 0 {
            let path = task.record().cgroups_path;
            let killed = blocking(move || Ok(oom_killed(&path)))
                .await
                .unwrap_or(false);
            if killed {
                "OOMKilled: the kernel killed it for exceeding its memory limit".to_string()
            } else {
                reason
            }
        } else {
            reason
        };
        // The exit is durable before the shim is told to forget it: a crash
        // in between leaves an exited record and a task the next start
        // deletes, never a lost status.
        let rec = task.update(|r| {
            r.status = TaskStatus::Exited;
            r.exit_code = Some(code);
            r.finished_at = if at > 0 { at } else { now_nanos() };
            r.reason = reason;
        });
        info!(task = %rec.name, id = %rec.id, exit_code = code, "task exited");
        self.persist_logged(&rec).await;
        crate::failpoint::hit("tasks.exit-recorded");
        crate::failpoint::delay("tasks.exit-recorded").await;
        match client.delete(&task.id).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                warn!(task = %task.id, error = %e, "deleting the exited task from its shim failed")
            }
        }
        if pod.remove_task(&task.id) == 0 {
            self.shims.shutdown(pod).await;
        }
        lock(&self.stdin_keepers).remove(&task.id);
        self.publish_exit(task, &rec).await;
    }

    /// Tells waiters a task has exited, after auto-removing it (so that a
    /// `run --rm` returns once the task is gone).
    pub(super) async fn publish_exit(&self, task: &Arc<Task>, rec: &TaskRecord) {
        if rec.auto_remove {
            if let Err(e) = self.remove_resources(task).await {
                warn!(task = %rec.name, error = %e, "auto-remove failed");
            }
        }
        for hook in self
            .exit_hooks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            hook(rec);
        }
        task.exit.send_replace(Some(rec.exit_pb()));
        crate::events::publish(
            "/tasks/exit",
            &rec.id,
            [
                ("name", rec.name.clone()),
                ("pid", rec.pid.to_string()),
                (
                    "exit_status",
                    rec.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                ),
                ("reason", rec.reason.clone()),
            ],
        );
    }

    /// A shim died: settles every task it had and forgets it.
    pub(super) async fn shim_died(&self, pod: Arc<PodShim>, why: &str) {
        warn!(pod = %pod.id(), pid = pod.record.pid, "{why}; settling its tasks");
        crate::events::publish(
            "/shims/exit",
            pod.id(),
            [
                ("pid", pod.record.pid.to_string()),
                ("reason", why.to_string()),
            ],
        );
        let binary = pod.record.binary();
        for id in pod.tasks() {
            if let Some(task) = self.get(&id) {
                self.settle_without_shim(&task, Some(&binary), why).await;
            }
            pod.remove_task(&id);
        }
        self.shims.forget(&pod);
    }

    /// What the runtime holds of `rec`'s container (off the runtime).
    pub(super) async fn runtime_view(&self, rec: &TaskRecord) -> RuntimeView {
        let r = rec.clone();
        blocking(move || Ok(runtime_view(&r)))
            .await
            .unwrap_or(RuntimeView {
                exists: true,
                alive: false,
            })
    }

    /// The shim binary's clean-up (`<shim> ... -bundle B delete`, as
    /// containerd runs it when a shim is gone): it force-deletes the
    /// container in the runtime and unmounts its rootfs. berthd itself never
    /// runs the OCI runtime. `binary` None = the configured shim.
    pub(super) async fn shim_cleanup(
        &self,
        rec: &TaskRecord,
        binary: Option<&ShimBinary>,
    ) -> Option<api::DeleteResponse> {
        match self.shims.cleanup(binary, &rec.id, &rec.bundle).await {
            Ok(d) => Some(d),
            Err(e) => {
                warn!(task = %rec.name, id = %rec.id, error = %e, "the shim's delete failed: the runtime may still hold the container");
                None
            }
        }
    }

    /// Settles a task whose shim is gone (or lost it): whether it still
    /// runs is read from the runtime's state dir and /proc; the shim
    /// binary's `delete` command kills and deletes it. A task that was still running is
    /// recorded as killed; one that had already gone has lost its status.
    pub(super) async fn settle_without_shim(
        &self,
        task: &Arc<Task>,
        binary: Option<&ShimBinary>,
        why: &str,
    ) {
        let rec = task.record();
        if !rec.status.is_live() && rec.status != TaskStatus::Creating {
            return;
        }
        let view = self.runtime_view(&rec).await;
        let alive = view.alive;
        debug!(task = %rec.name, ?view, "runtime state of a task without a shim");
        // Without a container in the runtime there is nothing to kill; the
        // rootfs is unmounted when the task is removed.
        let deleted = if view.exists {
            self.shim_cleanup(&rec, binary).await
        } else {
            None
        };
        let now = now_nanos();
        let rec = task.update(|r| {
            if alive {
                r.status = TaskStatus::Exited;
                r.exit_code = Some(
                    deleted
                        .as_ref()
                        .map(|d| d.exit_status)
                        .filter(|c| *c != 0)
                        .unwrap_or(137),
                );
                let at = deleted
                    .as_ref()
                    .map(|d| ts_nanos(&d.exited_at))
                    .unwrap_or(0);
                r.finished_at = if at > 0 { at } else { now };
                r.reason = format!("{why}; the task was killed");
            } else {
                r.status = TaskStatus::Unknown;
                r.exit_code = None;
                r.finished_at = now;
                r.reason = format!("{why}; exit status lost");
            }
        });
        warn!(task = %rec.name, status = ?rec.status, reason = %rec.reason, "task settled without its shim");
        self.persist_logged(&rec).await;
        self.publish_exit(task, &rec).await;
    }
}
