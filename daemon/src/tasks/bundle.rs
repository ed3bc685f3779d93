//! A task's files: its bundle and root filesystem, its stdin FIFO, and their
//! removal.

use super::*;

/// The bundle of a task: rootfs snapshot mounted, config.json, an empty log.
/// Blocking.
pub(super) fn prepare_bundle(
    rec: &TaskRecord,
    snap: &dyn snapshotter::Snapshotter,
    top: Option<&str>,
    cfg: &spec::ContainerConfig,
    extra_env: &[String],
    logs_dir: &Path,
) -> Result<(), TaskError> {
    let bundle = prepare_rootfs(rec, snap, top)?;
    let spec = spec::task_spec(rec, cfg, extra_env, &bundle.rootfs())?;
    bundle.write_spec(&spec).map_err(bundle_error(format!(
        "writing the config.json of {}",
        rec.name
    )))?;
    std::fs::create_dir_all(logs_dir)
        .map_err(TaskError::io(format!("creating {}", logs_dir.display())))?;
    std::fs::File::create(&rec.log_path).map_err(TaskError::io(format!(
        "creating {}",
        rec.log_path.display()
    )))?;
    Ok(())
}

/// Opens (making it first with `create`) a task's stdin FIFO read-write:
/// the handle keeps a writer alive without blocking for a reader. Blocking.
pub(super) fn open_stdin_fifo(path: &Path, create: bool) -> Result<std::fs::File, TaskError> {
    if create {
        nix::unistd::mkfifo(
            path,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .map_err(|e| {
            TaskError::io(format!("making the FIFO {}", path.display()))(std::io::Error::from(e))
        })?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(TaskError::io(format!("opening {}", path.display())))
}

/// Whether the kernel's OOM killer killed a process in the cgroup (cgroup
/// v1 `memory.oom_control` or v2 `memory.events`, both `oom_kill N`).
/// Blocking.
pub(super) fn oom_killed(cgroups_path: &str) -> bool {
    let rel = cgroups_path.trim_start_matches('/');
    if rel.is_empty() || !cgroups_path.starts_with('/') || rel.contains("..") {
        return false;
    }
    [
        format!("/sys/fs/cgroup/memory/{rel}/memory.oom_control"),
        format!("/sys/fs/cgroup/{rel}/memory.events"),
    ]
    .iter()
    .filter_map(|f| std::fs::read_to_string(f).ok())
    .any(|text| {
        text.lines().any(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    })
}

/// A task's bundle (see [`Bundle`]) with its rootfs: an active snapshot on
/// `top` (labelled with the task id, so an orphan is found at start)
/// mounted at `<bundle>/rootfs`. The caller writes the spec. Blocking.
pub fn prepare_rootfs(
    rec: &TaskRecord,
    snap: &dyn snapshotter::Snapshotter,
    top: Option<&str>,
) -> Result<Bundle, TaskError> {
    let bundle = Bundle::create(&rec.bundle)
        .map_err(bundle_error(format!("creating the bundle of {}", rec.name)))?;
    let mut labels = snapshotter::Labels::new();
    labels.insert(TASK_LABEL.to_string(), rec.id.clone());
    let mounts =
        snap.prepare(&rec.snapshot, top, labels)
            .map_err(|source| TaskError::Snapshot {
                context: format!("preparing the rootfs of {}", rec.name),
                source,
            })?;
    snapshotter::mount_all(&mounts, &bundle.rootfs()).map_err(|source| TaskError::Snapshot {
        context: format!("mounting the rootfs of {}", rec.name),
        source,
    })?;
    Ok(bundle)
}

/// A bundle that cannot be laid out: an I/O error (a full disk stays
/// ResourceExhausted) with `context`, else Internal.
pub fn bundle_error(context: String) -> impl FnOnce(BundleError) -> TaskError {
    move |e| match e {
        BundleError::Create { source, .. } | BundleError::Write { source, .. } => {
            TaskError::io(context)(source)
        }
        BundleError::Encode(e) => TaskError::Internal(format!("{context}: {e}")),
    }
}

/// Unmounts and removes a task's rootfs snapshot, bundle and log. Blocking;
/// idempotent.
pub(super) fn remove_files(
    rec: &TaskRecord,
    snap: &dyn snapshotter::Snapshotter,
) -> Result<(), TaskError> {
    let rootfs = rec.rootfs();
    if is_mount_point(&rootfs) {
        snapshotter::unmount(&rootfs).map_err(|source| TaskError::Snapshot {
            context: format!("unmounting the rootfs of {}", rec.name),
            source,
        })?;
    }
    if is_mount_point(&rootfs) {
        return Err(TaskError::FailedPrecondition(format!(
            "the rootfs of {} is still mounted at {}",
            rec.name,
            rootfs.display()
        )));
    }
    match snap.remove(&rec.snapshot) {
        Ok(()) | Err(snapshotter::Error::NotFound { .. }) => {}
        Err(source) => {
            return Err(TaskError::Snapshot {
                context: format!("removing the rootfs of {}", rec.name),
                source,
            })
        }
    }
    if rec.bundle.exists() {
        std::fs::remove_dir_all(&rec.bundle)
            .map_err(TaskError::io(format!("removing {}", rec.bundle.display())))?;
    }
    if rec.keep_log {
        return Ok(());
    }
    match std::fs::remove_file(&rec.log_path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TaskError::io(format!(
            "removing {}",
            rec.log_path.display()
        ))(e)),
    }
}
