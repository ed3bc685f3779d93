//! Recovery on start: re-adopting the shims and tasks a previous berthd left
//! running, settling the ones whose shim died, sweeping leftovers.

use super::*;

impl TaskService {
    /// Recovery on start: loads the records, reconnects to every recorded
    /// shim, re-adopts running tasks, collects the exits missed while berthd
    /// was down, settles the tasks of dead shims and sweeps leftovers. One bad
    /// record or shim never stops the rest.
    pub async fn recover(self: &Arc<Self>) {
        // No exec can be in flight before the first request.
        self.sweep_exec_dirs().await;
        let meta = self.meta.clone();
        let rows = match blocking(move || Ok(meta.list(TASKS)?)).await {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "cannot read the task records; starting without them");
                Vec::new()
            }
        };
        let mut by_pod: BTreeMap<String, Vec<Arc<Task>>> = BTreeMap::new();
        let mut unfinished = Vec::new();
        let mut exited = Vec::new();
        for (key, value) in rows {
            let rec = match serde_json::from_slice::<TaskRecord>(&value) {
                Ok(r) => r,
                Err(e) => {
                    error!(task = %key, error = %e, "quarantining a corrupt task record");
                    let meta = self.meta.clone();
                    let moved = blocking(move || {
                        meta.put(QUARANTINE, &format!("tasks/{key}"), value)?;
                        meta.delete(TASKS, &key)?;
                        Ok(meta.flush()?)
                    })
                    .await;
                    if let Err(e) = moved {
                        warn!(error = %e, "cannot quarantine a corrupt task record");
                    }
                    continue;
                }
            };
            let task = Arc::new(Task::new(rec.clone()));
            lock(&self.tasks).insert(rec.id.clone(), task.clone());
            // A CRI create that did not finish failed for its caller (who
            // retries with a new id): whatever it made goes.
            if rec.kind == TaskKind::Cri && rec.status == TaskStatus::Creating {
                unfinished.push(task.clone());
            }
            if rec.status.is_live() || rec.status == TaskStatus::Creating {
                by_pod.entry(rec.sandbox_id.clone()).or_default().push(task);
            } else if rec.status == TaskStatus::Exited {
                exited.push(task);
            }
        }
        let mut pod_records: HashMap<String, PodRecord> = HashMap::new();
        let mut broken_pods = Vec::new();
        for r in self.shims.load_records() {
            match r {
                Ok(p) => {
                    pod_records.insert(p.sandbox_id.clone(), p);
                }
                Err(id) => broken_pods.push(id),
            }
        }
        // An exit recorded just before a crash may still be held by its shim
        // (the delete had not happened): the pod's recovery deletes it.
        for t in exited {
            let sandbox = t.record().sandbox_id;
            if pod_records.contains_key(&sandbox) {
                by_pod.entry(sandbox).or_default().push(t);
            }
        }
        let mut jobs = Vec::new();
        for (sandbox, tasks) in by_pod {
            let rec = pod_records.remove(&sandbox);
            let this = self.clone();
            jobs.push(tokio::spawn(async move {
                this.recover_pod(sandbox, tasks, rec).await
            }));
        }
        for j in jobs {
            if let Err(e) = j.await {
                error!(error = %e, "recovering a pod failed");
            }
        }
        // Shims nobody's task needs any more.
        for (sandbox, rec) in pod_records {
            match self.shims.reconnect(rec.clone()).await {
                Ok(pod) => {
                    info!(pod = %sandbox, "shutting down a shim without tasks");
                    self.shims.shutdown(&pod).await;
                }
                Err(_) => self.shims.remove_leftovers(&sandbox, Some(&rec.address)),
            }
        }
        for id in broken_pods {
            self.shims.kill_unrecorded(&id);
            self.shims.remove_leftovers(&id, None);
        }
        for t in unfinished {
            info!(task = %t.id, "removing a container whose create did not finish");
            if let Err(e) = self.remove_resources(&t).await {
                warn!(task = %t.id, error = %e, "cannot remove an unfinished create");
            }
        }
        self.sweep_orphans().await;
        // Exited tasks that asked to go.
        let doomed: Vec<Arc<Task>> = lock(&self.tasks)
            .values()
            .filter(|t| {
                let r = lock(&t.rec);
                r.auto_remove && !r.status.is_live() && r.status != TaskStatus::Creating
            })
            .cloned()
            .collect();
        for t in doomed {
            if let Err(e) = self.remove_resources(&t).await {
                warn!(task = %t.id, error = %e, "auto-remove at start failed");
            }
        }
        let n = lock(&self.tasks).len();
        info!(tasks = n, "tasks recovered");
    }

    async fn recover_pod(
        self: Arc<Self>,
        sandbox: String,
        tasks: Vec<Arc<Task>>,
        rec: Option<PodRecord>,
    ) {
        let (exited, tasks): (Vec<_>, Vec<_>) = tasks
            .into_iter()
            .partition(|t| t.record().status == TaskStatus::Exited);
        let pod = match &rec {
            Some(r) => match self.shims.reconnect(r.clone()).await {
                Ok(p) => Some(p),
                Err(e) => {
                    warn!(pod = %sandbox, error = %e, "the shim is gone");
                    None
                }
            },
            None => None,
        };
        let Some(pod) = pod else {
            let binary = match &rec {
                Some(r) => Some(r.binary()),
                None => self.shims.binary().ok(),
            };
            for t in &tasks {
                self.settle_without_shim(t, binary.as_ref(), "shim died while berthd was down")
                    .await;
            }
            self.shims
                .remove_leftovers(&sandbox, rec.as_ref().map(|r| r.address.as_str()));
            return;
        };
        for t in &exited {
            match pod.client().delete(&t.id).await {
                Ok(_) => info!(task = %t.id, "deleted an exited task its shim still held"),
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    warn!(task = %t.id, error = %e, "cannot delete an exited task from its shim")
                }
            }
        }
        for t in &tasks {
            pod.add_task(&t.id);
        }
        for t in &tasks {
            if pod.is_dead() {
                break;
            }
            let client = pod.client();
            match client.state(&t.id).await {
                Ok(st) => {
                    use containerd_shim_protos::api::Status;
                    let status = st.status.enum_value().unwrap_or(Status::UNKNOWN);
                    match status {
                        Status::STOPPED => {
                            info!(task = %t.id, exit = st.exit_status, "collecting an exit missed while berthd was down");
                            let at = ts_nanos(&st.exited_at);
                            self.finish(t, &pod, st.exit_status, at, String::new())
                                .await;
                        }
                        Status::RUNNING | Status::PAUSED | Status::PAUSING => {
                            let rec = t.update(|r| {
                                r.status = TaskStatus::Running;
                                if st.pid != 0 {
                                    r.pid = st.pid;
                                }
                                if r.started_at == 0 {
                                    r.started_at = now_nanos();
                                }
                            });
                            self.persist_logged(&rec).await;
                            self.reopen_stdin(&rec).await;
                            info!(task = %rec.name, pid = rec.pid, "re-adopted a running task");
                            tokio::spawn(self.clone().watch(t.clone(), pod.clone()));
                        }
                        Status::CREATED
                            if t.record().kind == TaskKind::Cri
                                && t.record().status == TaskStatus::Created =>
                        {
                            // A CRI container lives in `created` until
                            // StartContainer: keep it, watched.
                            self.reopen_stdin(&t.record()).await;
                            info!(task = %t.id, "re-adopted a created container");
                            tokio::spawn(self.clone().watch(t.clone(), pod.clone()));
                        }
                        Status::CREATED | Status::UNKNOWN => {
                            // berthd died between create and start: the Run
                            // failed for its caller, so the task goes.
                            let _ = client.kill(&t.id, 9, true).await;
                            let _ = client.delete(&t.id).await;
                            pod.remove_task(&t.id);
                            let rec = t.update(|r| {
                                r.status = TaskStatus::Unknown;
                                r.finished_at = now_nanos();
                                r.reason = "berthd stopped before the task started".into();
                            });
                            self.persist_logged(&rec).await;
                            t.exit.send_replace(Some(rec.exit_pb()));
                        }
                    }
                }
                Err(e) if e.is_not_found() => {
                    pod.remove_task(&t.id);
                    let binary = pod.record.binary();
                    self.settle_without_shim(t, Some(&binary), "the shim lost the task")
                        .await;
                }
                Err(e) => {
                    warn!(pod = %sandbox, error = %e, "the shim does not answer");
                    if pod.mark_dead() {
                        self.shim_died(pod.clone(), "shim stopped answering").await;
                    }
                    break;
                }
            }
        }
        if !pod.is_dead() && pod.tasks().is_empty() && self.shims.get(&sandbox).is_some() {
            self.shims.shutdown(&pod).await;
        }
    }

    /// Rootfs snapshots and bundles no record owns (a crash mid-run or
    /// mid-remove).
    async fn sweep_orphans(&self) {
        let known: HashSet<String> = lock(&self.tasks).keys().cloned().collect();
        let snap = self.images.unpacker.snapshotter.clone();
        let bundles = self.bundles_dir();
        let logs = self.logs_dir();
        let r = blocking(move || {
            if let Ok(list) = snap.walk(&|i| i.labels.contains_key(TASK_LABEL)) {
                for i in list {
                    let owner = i.labels.get(TASK_LABEL).cloned().unwrap_or_default();
                    if known.contains(&owner) {
                        continue;
                    }
                    let rootfs = bundles.join(&owner).join("rootfs");
                    if is_mount_point(&rootfs) {
                        let _ = snapshotter::unmount(&rootfs);
                    }
                    match snap.remove(&i.name) {
                        Ok(()) => info!(snapshot = %i.name, "removed the rootfs of a vanished task"),
                        Err(e) => warn!(snapshot = %i.name, error = %e, "cannot remove an orphaned rootfs"),
                    }
                }
            }
            for dir in [&bundles, &logs] {
                let Ok(rd) = std::fs::read_dir(dir) else { continue };
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let id = name.strip_suffix(".log").unwrap_or(&name);
                    if known.contains(id) {
                        continue;
                    }
                    let path = e.path();
                    if path.is_dir() {
                        let rootfs = path.join("rootfs");
                        if is_mount_point(&rootfs) {
                            let _ = snapshotter::unmount(&rootfs);
                        }
                        if is_mount_point(&rootfs) {
                            warn!(path = %path.display(), "orphaned bundle still mounted; leaving it");
                            continue;
                        }
                        let _ = std::fs::remove_dir_all(&path);
                    } else {
                        let _ = std::fs::remove_file(&path);
                    }
                    info!(path = %path.display(), "removed a leftover of a vanished task");
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = r {
            warn!(error = %e, "sweeping task leftovers failed");
        }
    }
}
