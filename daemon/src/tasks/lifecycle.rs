//! A task's lifecycle: run (create and start), create in its pod's shim,
//! start, kill, wait, remove, and the undo of a create that failed half-way.

use super::*;

impl TaskService {
    /// Creates and starts a task. With `follow`, also returns a reader of its
    /// log opened before the task started, so no output is missed and an
    /// auto-remove cannot take the file away.
    pub async fn run(
        self: &Arc<Self>,
        req: pb::RunRequest,
        follow: bool,
    ) -> Result<(Arc<Task>, Option<LogFollower>), TaskError> {
        let image = self.images.lookup(&req.image)?;
        let id = new_id();
        let name = if req.name.trim().is_empty() {
            default_name(&image.name, &id)
        } else {
            let n = req.name.trim().to_string();
            validate_name(&n)?;
            n
        };
        for e in &req.env {
            if !e.contains('=') || e.starts_with('=') {
                return Err(TaskError::InvalidArgument(format!(
                    "environment entry {e:?} is not KEY=VALUE"
                )));
            }
        }
        let resolved = self.images.resolve(image.clone(), None).await?;
        let cfg = spec::parse_image_config(&resolved.config, &image.name)?;
        let args = spec::command_line(&cfg, &req.args);
        if args.is_empty() {
            return Err(TaskError::InvalidArgument(format!(
                "image {} has no Entrypoint or Cmd: give a command",
                image.name
            )));
        }
        let chain = self.images.platform_chain(&image).await?;
        let top = chain.last().map(|c| c.chain_id.clone());
        {
            let images = self.images.clone();
            let image_name = image.name.clone();
            blocking(move || images.unpack_chain(&image_name, &chain).map_err(Into::into)).await?;
        }
        let new = NewTask {
            id: id.clone(),
            name,
            sandbox_id: id.clone(),
            image: image.name.clone(),
            args,
            tty: req.tty,
            stdin: false,
            auto_remove: req.rm,
            kind: TaskKind::Native,
            log_path: self.logs_dir().join(format!("{id}.log")),
            keep_log: false,
            cgroups_path: format!("/berth/{id}"),
            cri: None,
            runtime: None,
        };
        let snap = self.images.unpacker.snapshotter.clone();
        let logs_dir = self.logs_dir();
        let extra_env = req.env.clone();
        let prepare: Prepare = Box::new(move |rec: &TaskRecord| {
            prepare_bundle(
                rec,
                snap.as_ref(),
                top.as_deref(),
                &cfg,
                &extra_env,
                &logs_dir,
            )
        });
        let task = self.create(new, prepare).await?;
        let follower = if follow {
            match LogFollower::open(&task.record().log_path, task.record().stdio).await {
                Ok(f) => Some(f),
                Err(e) => {
                    let e = TaskError::io(format!("opening the log of {}", task.record().name))(e);
                    self.abort_run(&task).await;
                    return Err(e);
                }
            }
        } else {
            None
        };
        if let Err(e) = self.start(&task.id).await {
            warn!(task = %task.id, error = %e, "start failed; cleaning up");
            self.abort_run(&task).await;
            return Err(e);
        }
        Ok((task, follower))
    }

    /// Creates a task in its pod's shim: the record is written first
    /// (`creating`), then `prepare` (blocking) builds the bundle (rootfs
    /// mounted at `<bundle>/rootfs`, config.json), then the shim creates the
    /// task. On failure everything is undone. The task is not started.
    pub async fn create(
        self: &Arc<Self>,
        new: NewTask,
        prepare: Prepare,
    ) -> Result<Arc<Task>, TaskError> {
        let reservation = {
            let tasks = lock(&self.tasks);
            let mut reserved = lock(&self.reserved);
            if tasks.values().any(|t| lock(&t.rec).name == new.name) || reserved.contains(&new.name)
            {
                return Err(TaskError::AlreadyExists(format!(
                    "a task named {} already exists",
                    new.name
                )));
            }
            reserved.insert(new.name.clone());
            Reservation {
                svc: self,
                name: new.name.clone(),
            }
        };
        // A missing shim binary is the caller's to fix: say so before any work.
        let binary = self
            .shims
            .binary()
            .map_err(TaskError::shim(format!("cannot create {}", new.name)))?;
        let handler = match new.runtime {
            Some(h) => h,
            None => self.config.runtime_handler("").ok_or_else(|| {
                TaskError::Internal("the default runtime handler is not configured".into())
            })?,
        };
        let runtime_root = handler.root.clone();
        let runtime = TaskRuntime {
            handler: handler.name,
            binary: handler.runtime,
            systemd_cgroup: handler.systemd_cgroup,
            no_pivot_root: handler.no_pivot_root,
        };
        let rec = TaskRecord {
            id: new.id.clone(),
            name: new.name.clone(),
            sandbox_id: new.sandbox_id,
            image: new.image,
            args: new.args,
            tty: new.tty,
            auto_remove: new.auto_remove,
            status: TaskStatus::Creating,
            pid: 0,
            exit_code: None,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            reason: String::new(),
            bundle: self.bundles_dir().join(&new.id),
            log_path: new.log_path,
            stdio: binary.stdio,
            snapshot: new.id.clone(),
            shim_address: String::new(),
            shim_binary: binary.path.clone(),
            runtime_root,
            runtime,
            kind: new.kind,
            keep_log: new.keep_log,
            stdin: new.stdin,
            cgroups_path: new.cgroups_path,
            cri: new.cri,
        };
        self.persist(&rec).await?;
        let task = Arc::new(Task::new(rec));
        lock(&self.tasks).insert(new.id.clone(), task.clone());
        drop(reservation);
        match self.create_in_shim(&task, prepare).await {
            Ok(()) => {
                let rec = task.record();
                crate::events::publish(
                    "/tasks/create",
                    &rec.id,
                    [("name", rec.name.clone()), ("image", rec.image.clone())],
                );
                Ok(task)
            }
            Err(e) => {
                warn!(task = %new.name, error = %e, "create failed; cleaning up");
                self.abort_run(&task).await;
                Err(e)
            }
        }
    }

    pub(super) async fn create_in_shim(
        self: &Arc<Self>,
        task: &Arc<Task>,
        prepare: Prepare,
    ) -> Result<(), TaskError> {
        let rec = task.record();
        {
            let rec = rec.clone();
            blocking(move || prepare(&rec)).await?;
        }
        let pod = self
            .shims
            .get_or_start(&rec.sandbox_id, &rec.bundle)
            .await
            .map_err(TaskError::shim(format!(
                "starting the shim of task {}",
                rec.name
            )))?;
        pod.add_task(&rec.id);
        let rec = task.update(|r| {
            r.shim_address = pod.record.address.clone();
            r.shim_binary = pod.record.binary.clone();
            r.stdio = pod.record.stdio;
        });
        let uri = rec.stdio.uri(&rec.log_path, rec.tty);
        let stdin = if rec.stdin {
            let path = rec.bundle.join("stdin");
            let p = path.clone();
            let keeper = blocking(move || open_stdin_fifo(&p, true)).await?;
            lock(&self.stdin_keepers).insert(rec.id.clone(), keeper);
            path.display().to_string()
        } else {
            String::new()
        };
        let create = api::CreateTaskRequest {
            id: rec.id.clone(),
            bundle: rec.bundle.display().to_string(),
            terminal: rec.tty,
            stdin,
            stdout: uri.clone(),
            stderr: if rec.tty { String::new() } else { uri },
            options: MessageField::some(self.runc_options(&rec)?),
            ..Default::default()
        };
        let created = pod
            .client()
            .create(&create)
            .await
            .map_err(TaskError::shim(format!("creating task {}", rec.name)))?;
        let rec = task.update(|r| {
            r.status = TaskStatus::Created;
            r.pid = created.pid;
        });
        // Watched from now on: a created task that is killed exits too.
        let persisted = self.persist(&rec).await;
        tokio::spawn(self.clone().watch(task.clone(), pod));
        persisted
    }

    /// Starts a created task.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<TaskRecord, TaskError> {
        let task = self.lookup(id)?;
        let rec = task.record();
        if rec.status != TaskStatus::Created {
            return Err(TaskError::FailedPrecondition(format!(
                "task {} is {}, not created",
                rec.name,
                rec.status.as_str()
            )));
        }
        let pod = self.live_shim(&rec)?;
        // Taken before the start: an exit the watcher records meanwhile
        // (a quick command) is always later than this.
        let started_at = now_nanos();
        let started = pod
            .client()
            .start(&rec.id)
            .await
            .map_err(TaskError::shim(format!("starting task {}", rec.name)))?;
        let rec = task.update(|r| {
            // A quick exit may already have been recorded by the watcher.
            if r.status == TaskStatus::Created {
                r.status = TaskStatus::Running;
            }
            if started.pid != 0 {
                r.pid = started.pid;
            }
            r.started_at = started_at;
        });
        crate::failpoint::delay("tasks.start-persist").await;
        self.persist(&rec).await?;
        info!(task = %rec.name, id = %rec.id, pid = rec.pid, image = %rec.image, "task started");
        crate::events::publish(
            "/tasks/start",
            &rec.id,
            [("name", rec.name.clone()), ("pid", rec.pid.to_string())],
        );
        Ok(rec)
    }

    /// Undoes a Run that failed half-way: the task in the shim, the shim if it
    /// has nothing else, the rootfs, bundle, log and record.
    pub(super) async fn abort_run(&self, task: &Arc<Task>) {
        let rec = task.record();
        if let Some(pod) = self.shims.get(&rec.sandbox_id) {
            let client = pod.client();
            let _ = client.kill(&rec.id, 9, true).await;
            if let Err(e) = client.delete(&rec.id).await {
                debug!(task = %rec.name, error = %e, "delete after a failed run");
            }
            if pod.remove_task(&rec.id) == 0 {
                self.shims.shutdown(&pod).await;
            }
        } else {
            self.shims.remove_leftovers(&rec.sandbox_id, None);
        }
        // A create that failed after the runtime's create (e.g. in the
        // shim's stdio set-up) leaves a container and its cgroup behind.
        if self.runtime_view(&rec).await.exists {
            self.shim_cleanup(&rec, None).await;
        }
        task.removing.store(true, Ordering::SeqCst);
        if let Err(e) = self.drop_task(&rec).await {
            error!(task = %rec.name, error = %e, "cannot clean up after a failed run");
            // Left for a later remove (kubelet's RemoveContainer or
            // RemovePodSandbox) to finish, e.g. once the full disk has room.
            let mut settled = false;
            let rec = task.update(|r| {
                if r.status == TaskStatus::Creating {
                    r.status = TaskStatus::Unknown;
                    r.finished_at = now_nanos();
                    r.reason = "its create failed".into();
                    settled = true;
                }
            });
            if settled {
                task.exit.send_replace(Some(rec.exit_pb()));
            }
            task.removing.store(false, Ordering::SeqCst);
        }
    }

    /// Sends a signal (0 means SIGTERM) to a running task.
    pub async fn kill(&self, name: &str, signal: u32, all: bool) -> Result<(), TaskError> {
        let task = self.lookup(name)?;
        let rec = task.record();
        if !rec.status.is_live() {
            return Err(TaskError::FailedPrecondition(format!(
                "task {} is not running",
                rec.name
            )));
        }
        let pod = self.live_shim(&rec)?;
        let signal = if signal == 0 { 15 } else { signal };
        pod.client().kill(&rec.id, signal, all).await.map_err(|e| {
            if e.is_not_found() {
                TaskError::FailedPrecondition(format!("task {} is not running", rec.name))
            } else {
                TaskError::shim(format!("signalling task {}", rec.name))(e)
            }
        })?;
        info!(task = %rec.name, signal, "task signalled");
        Ok(())
    }

    /// Waits until the task has exited.
    pub async fn wait(&self, name: &str) -> Result<pb::Exit, TaskError> {
        let task = self.lookup(name)?;
        wait_exit(&task).await
    }

    /// Removes a task that is not running (kills it first with `force`).
    pub async fn remove(&self, name: &str, force: bool) -> Result<(), TaskError> {
        let task = self.lookup(name)?;
        let rec = task.record();
        match rec.status {
            TaskStatus::Creating => {
                return Err(TaskError::FailedPrecondition(format!(
                    "task {} is being created",
                    rec.name
                )))
            }
            TaskStatus::Created | TaskStatus::Running => {
                if !force {
                    return Err(TaskError::FailedPrecondition(format!(
                        "task {} is running: kill it first or use --force",
                        rec.name
                    )));
                }
                match self.kill(&rec.id, 9, true).await {
                    Ok(()) | Err(TaskError::FailedPrecondition(_)) => {}
                    Err(e) => return Err(e),
                }
                if tokio::time::timeout(KILL_WAIT, wait_exit(&task))
                    .await
                    .is_err()
                {
                    return Err(TaskError::DeadlineExceeded(format!(
                        "task {} did not exit within {}s of SIGKILL",
                        rec.name,
                        KILL_WAIT.as_secs()
                    )));
                }
                // An auto-remove task is gone by the time its exit is out.
                if self.get(&rec.id).is_none() {
                    return Ok(());
                }
            }
            TaskStatus::Exited | TaskStatus::Unknown => {}
        }
        self.remove_resources(&task).await
    }

    /// Removes what a settled task leaves: rootfs mount and snapshot, bundle,
    /// log, record.
    pub(super) async fn remove_resources(&self, task: &Arc<Task>) -> Result<(), TaskError> {
        if task.removing.swap(true, Ordering::SeqCst) {
            return Err(TaskError::FailedPrecondition(format!(
                "task {} is already being removed",
                task.record().name
            )));
        }
        let rec = task.record();
        // A shim that still holds the task (e.g. one recovery could not
        // settle) lets go of it first.
        if let Some(pod) = self.shims.get(&rec.sandbox_id) {
            if pod.tasks().contains(&rec.id) {
                let _ = pod.client().delete(&rec.id).await;
                if pod.remove_task(&rec.id) == 0 {
                    self.shims.shutdown(&pod).await;
                }
            }
        }
        // A shim that died after the exit was recorded and before it deleted
        // the task leaves the runtime's container (state, cgroup): the
        // runtime deletes it.
        if self.runtime_view(&rec).await.exists {
            self.shim_cleanup(&rec, None).await;
        }
        let result = self.drop_task(&rec).await;
        if result.is_err() {
            task.removing.store(false, Ordering::SeqCst);
        } else {
            info!(task = %rec.name, id = %rec.id, "task removed");
        }
        result
    }

    pub(super) async fn drop_task(&self, rec: &TaskRecord) -> Result<(), TaskError> {
        let snap = self.images.unpacker.snapshotter.clone();
        let meta = self.meta.clone();
        let r = rec.clone();
        blocking(move || {
            remove_files(&r, snap.as_ref())?;
            meta.delete(TASKS, &r.id)?;
            meta.flush()?;
            Ok(())
        })
        .await?;
        lock(&self.tasks).remove(&rec.id);
        lock(&self.stdin_keepers).remove(&rec.id);
        crate::events::publish("/tasks/delete", &rec.id, [("name", rec.name.clone())]);
        Ok(())
    }
}

pub(super) async fn wait_exit(task: &Task) -> Result<pb::Exit, TaskError> {
    let mut rx = task.subscribe();
    loop {
        if let Some(e) = rx.borrow_and_update().clone() {
            return Ok(e);
        }
        if rx.changed().await.is_err() {
            return rx.borrow().clone().ok_or_else(|| {
                TaskError::Internal(format!("task {} went away while waited for", task.id))
            });
        }
    }
}
