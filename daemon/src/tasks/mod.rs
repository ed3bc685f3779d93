//! Tasks: containers run from images through a shim (`berthctl run`). Until
//! the CRI issue lands each task is its own pod, with a shim of its own; the
//! shim manager already groups by sandbox id, so several containers can share
//! one shim later.
//!
//! A task's life: the record is written (`creating`), its rootfs is an active
//! snapshot on the image's top layer mounted at `<bundle>/rootfs`, config.json
//! is built from the image config, the pod's shim is started (`start`, with
//! the bundle as working directory) and the task is created and started in it.
//! A watcher per task waits for its exit, records it, deletes the task from
//! the shim and shuts the shim down when the pod has no task left. Records
//! live in the metadata DB and are flushed before a reply; on start berthd
//! reconnects to every recorded shim, re-adopts what still runs, collects the
//! exits it missed, and settles the tasks of shims that died.

mod bundle;
pub mod error;
pub mod exec;
pub mod exec_stream;
mod exits;
pub mod grpc;
mod lifecycle;
pub mod logs;
pub mod record;
mod recovery;
pub mod spec;

pub use bundle::{bundle_error, prepare_rootfs};
use bundle::{oom_killed, open_stdin_fifo, prepare_bundle, remove_files};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::tasks::v1 as pb;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::images::ImageService;
use crate::metadata::{MetaStore, QUARANTINE, TASKS};
use crate::runtime_spec::{Bundle, BundleError};
use crate::shim::{PodRecord, PodShim, ShimBinary, ShimManager, ShimProcesses, NAMESPACE};
use berth_sysutil::now_nanos;
use error::blocking;
pub use error::TaskError;
use logs::LogFollower;
pub use record::{TaskKind, TaskRecord, TaskRuntime, TaskStatus};

/// Label on a task's rootfs snapshot naming the task.
pub const TASK_LABEL: &str = "berth.io/task";
/// How long Remove --force waits for a killed task to exit.
const KILL_WAIT: Duration = Duration::from_secs(20);

/// What a caller gives [`TaskService::create`].
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub name: String,
    pub sandbox_id: String,
    pub image: String,
    pub args: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub auto_remove: bool,
    pub kind: TaskKind,
    pub log_path: PathBuf,
    pub keep_log: bool,
    pub cgroups_path: String,
    pub cri: Option<crate::metadata::cri::ContainerMeta>,
    /// The RuntimeClass handler; None: the default one.
    pub runtime: Option<crate::config::RuntimeHandler>,
}

/// Builds a task's bundle (blocking): rootfs mounted, config.json written.
pub type Prepare = Box<dyn FnOnce(&TaskRecord) -> Result<(), TaskError> + Send>;

/// One task in memory: its record and a channel carrying its exit.
pub struct Task {
    pub id: String,
    rec: Mutex<TaskRecord>,
    exit: watch::Sender<Option<pb::Exit>>,
    removing: AtomicBool,
    /// Orders this task's writes to the metadata store (see `persist`).
    persisting: tokio::sync::Mutex<()>,
}

use berth_sysutil::{is_mount_point, lock};

impl Task {
    fn new(rec: TaskRecord) -> Task {
        let exit = if rec.status.is_live() || rec.status == TaskStatus::Creating {
            None
        } else {
            Some(rec.exit_pb())
        };
        Task {
            id: rec.id.clone(),
            rec: Mutex::new(rec),
            exit: watch::channel(exit).0,
            removing: AtomicBool::new(false),
            persisting: tokio::sync::Mutex::new(()),
        }
    }

    pub fn record(&self) -> TaskRecord {
        lock(&self.rec).clone()
    }

    fn update(&self, f: impl FnOnce(&mut TaskRecord)) -> TaskRecord {
        let mut r = lock(&self.rec);
        f(&mut r);
        r.clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<pb::Exit>> {
        self.exit.subscribe()
    }
}

type ExitHook = Box<dyn Fn(&TaskRecord) + Send + Sync>;

pub struct TaskService {
    config: Arc<Config>,
    meta: Arc<dyn MetaStore>,
    images: Arc<ImageService>,
    shims: ShimManager,
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    /// Names of Runs that have not written their record yet.
    reserved: Mutex<HashSet<String>>,
    /// Told of each exit before waiters see it (the CRI's CONTAINER_STOPPED
    /// events, which must come before a Stop's reply and so before a Remove).
    exit_hooks: std::sync::RwLock<Vec<ExitHook>>,
    /// Write ends of the stdin FIFOs of tasks created with stdin, held so
    /// the task does not read EOF between attaches.
    stdin_keepers: Mutex<HashMap<String, std::fs::File>>,
}

/// Releases a reserved name when a Run ends, however it ends.
struct Reservation<'a> {
    svc: &'a TaskService,
    name: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.svc.reserved).remove(&self.name);
    }
}

fn ts_nanos(t: &MessageField<Timestamp>) -> i64 {
    match t.as_ref() {
        // Go's zero time is year 1: negative seconds mean "unset".
        Some(t) if t.seconds > 0 => t.seconds.saturating_mul(1_000_000_000) + i64::from(t.nanos),
        _ => 0,
    }
}

/// A 64-hex id, the length containerd's CRI ids have.
pub fn new_long_id() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn validate_name(name: &str) -> Result<(), TaskError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(TaskError::InvalidArgument(format!(
            "invalid task name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit (at most 128)"
        )))
    }
}

/// `busybox-3fa2c1` for docker.io/library/busybox:latest.
fn default_name(image: &str, id: &str) -> String {
    let base = image.rsplit('/').next().unwrap_or(image);
    let base = base.split([':', '@']).next().unwrap_or(base);
    let base: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .take(40)
        .collect();
    let short = &id[..6.min(id.len())];
    if base.is_empty() || !base.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        format!("task-{short}")
    } else {
        format!("{base}-{short}")
    }
}

/// What berthd sees of a task's container in the OCI runtime, without
/// running the runtime (only the shim drives it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RuntimeView {
    /// The runtime still keeps the container's state (runc and crun keep
    /// it in `<runtime root>/<namespace>/<id>`).
    exists: bool,
    /// Its init process still runs: the recorded pid is alive and in the
    /// task's cgroup (not a pid reused since).
    alive: bool,
}

/// Looks at the runtime's state directory and /proc. Blocking.
fn runtime_view(rec: &TaskRecord) -> RuntimeView {
    let exists = rec.runtime_root.join(NAMESPACE).join(&rec.id).exists();
    let alive = exists
        && rec.pid != 0
        && crate::shim::pid_alive(rec.pid)
        && std::fs::read_to_string(format!("/proc/{}/cgroup", rec.pid))
            .is_ok_and(|c| c.contains(&rec.id));
    RuntimeView { exists, alive }
}

impl TaskService {
    pub fn new(
        config: Arc<Config>,
        meta: Arc<dyn MetaStore>,
        images: Arc<ImageService>,
    ) -> Arc<TaskService> {
        let shims = ShimManager::new(config.clone());
        TaskService::with_shims(config, meta, images, shims)
    }

    /// A task service whose shims are reached through `processes` (an
    /// in-memory fake in unit tests).
    pub fn with_shim_processes(
        config: Arc<Config>,
        meta: Arc<dyn MetaStore>,
        images: Arc<ImageService>,
        processes: Arc<dyn ShimProcesses>,
    ) -> Arc<TaskService> {
        let shims = ShimManager::with_processes(&config, processes);
        TaskService::with_shims(config, meta, images, shims)
    }

    fn with_shims(
        config: Arc<Config>,
        meta: Arc<dyn MetaStore>,
        images: Arc<ImageService>,
        shims: ShimManager,
    ) -> Arc<TaskService> {
        Arc::new(TaskService {
            shims,
            config,
            meta,
            images,
            tasks: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
            exit_hooks: std::sync::RwLock::new(Vec::new()),
            stdin_keepers: Mutex::new(HashMap::new()),
        })
    }

    fn logs_dir(&self) -> PathBuf {
        self.config.root.join("logs")
    }

    fn bundles_dir(&self) -> PathBuf {
        self.config.state.join("containers")
    }

    fn get(&self, id: &str) -> Option<Arc<Task>> {
        lock(&self.tasks).get(id).cloned()
    }

    /// Finds a task by id, name or unique id prefix.
    pub fn lookup(&self, name: &str) -> Result<Arc<Task>, TaskError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(TaskError::InvalidArgument("task name is empty".into()));
        }
        let tasks = lock(&self.tasks);
        if let Some(t) = tasks.get(name) {
            return Ok(t.clone());
        }
        if let Some(t) = tasks.values().find(|t| lock(&t.rec).name == name) {
            return Ok(t.clone());
        }
        if name.len() >= 3 {
            let hits: Vec<&Arc<Task>> = tasks.values().filter(|t| t.id.starts_with(name)).collect();
            match hits.len() {
                1 => return Ok(hits[0].clone()),
                n if n > 1 => {
                    return Err(TaskError::InvalidArgument(format!(
                        "task id prefix {name} is ambiguous ({n} tasks)"
                    )))
                }
                _ => {}
            }
        }
        Err(TaskError::NotFound(format!("task {name} not found")))
    }

    /// Every task, from memory.
    pub fn list(&self) -> Vec<TaskRecord> {
        let mut out = self.list_kind(TaskKind::Native);
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        out
    }

    /// The tasks of one kind (e.g. the CRI's containers), from memory.
    /// Shim processes berthd is connected to.
    pub fn live_shims(&self) -> usize {
        self.shims.live()
    }

    pub fn list_kind(&self, kind: TaskKind) -> Vec<TaskRecord> {
        lock(&self.tasks)
            .values()
            .map(|t| t.record())
            .filter(|r| r.kind == kind)
            .collect()
    }

    /// `f` applied to each record of one kind, in place (no copies of
    /// whole records), keeping what it returns.
    pub fn map_kind<T>(
        &self,
        kind: TaskKind,
        mut f: impl FnMut(&TaskRecord) -> Option<T>,
    ) -> Vec<T> {
        lock(&self.tasks)
            .values()
            .filter_map(|t| {
                let r = lock(&t.rec);
                if r.kind == kind {
                    f(&r)
                } else {
                    None
                }
            })
            .collect()
    }

    /// The task objects of one pod, from memory.
    pub fn tasks_of(&self, sandbox_id: &str) -> Vec<Arc<Task>> {
        lock(&self.tasks)
            .values()
            .filter(|t| lock(&t.rec).sandbox_id == sandbox_id)
            .cloned()
            .collect()
    }

    /// Writes a task's record and makes it durable. A known task's writes are
    /// ordered and each writes its latest record, not the caller's copy: a start
    /// and the exit watcher of a quick command update it in turn, and their
    /// writes could otherwise reach the store in the other order, leaving
    /// "running" on disk after "exited" (and, once the shim forgot the task,
    /// a lost exit status after a crash).
    async fn persist(&self, rec: &TaskRecord) -> Result<(), TaskError> {
        let task = self.get(&rec.id);
        let _order = match &task {
            Some(t) => Some(t.persisting.lock().await),
            None => None,
        };
        let latest = task.as_ref().map(|t| t.record());
        let rec = latest.as_ref().unwrap_or(rec);
        let meta = self.meta.clone();
        let key = rec.id.clone();
        let value = serde_json::to_vec(rec).map_err(|e| TaskError::Internal(e.to_string()))?;
        blocking(move || {
            meta.put(TASKS, &key, value)?;
            meta.flush()?;
            Ok(())
        })
        .await
    }

    async fn persist_logged(&self, rec: &TaskRecord) {
        if let Err(e) = self.persist(rec).await {
            error!(task = %rec.name, error = %e, "cannot record the task");
        }
    }

    fn runc_options(&self, rec: &TaskRecord) -> Result<Any, TaskError> {
        let binary = if rec.runtime.binary.is_empty() {
            self.config.shim.runtime.clone()
        } else {
            rec.runtime.binary.clone()
        };
        let opts = RuncOptions {
            binary_name: binary,
            root: rec.runtime_root.display().to_string(),
            systemd_cgroup: rec.runtime.systemd_cgroup,
            no_pivot_root: rec.runtime.no_pivot_root,
            ..Default::default()
        };
        let value = opts
            .write_to_bytes()
            .map_err(|e| TaskError::Internal(format!("encoding runtime options: {e}")))?;
        Ok(Any {
            type_url: "containerd.runc.v1.Options".to_string(),
            value,
            ..Default::default()
        })
    }

    /// Changes the CRI metadata of a task and records it.
    pub async fn update_cri(
        &self,
        id: &str,
        f: impl FnOnce(&mut crate::metadata::cri::ContainerMeta),
    ) -> Result<(), TaskError> {
        let task = self
            .get(id)
            .ok_or_else(|| TaskError::NotFound(format!("container {id} not found")))?;
        let rec = task.update(|r| {
            if let Some(m) = r.cri.as_mut() {
                f(m)
            }
        });
        self.persist(&rec).await
    }

    /// Holds the stdin FIFO of a re-adopted task open again. The shim read
    /// EOF if it looked while berthd was down (a limitation containerd's
    /// CRI shares); a later attach still finds the FIFO.
    async fn reopen_stdin(&self, rec: &TaskRecord) {
        if !rec.stdin {
            return;
        }
        let path = rec.bundle.join("stdin");
        match blocking(move || open_stdin_fifo(&path, false)).await {
            Ok(f) => {
                lock(&self.stdin_keepers).insert(rec.id.clone(), f);
            }
            Err(e) => warn!(task = %rec.id, error = %e, "cannot reopen the task's stdin"),
        }
    }

    /// Calls `hook` with the record of each task that exits from now on, before
    /// anyone waiting for the exit is woken. It runs on the exit path: keep it short
    /// and non-blocking.
    pub fn on_exit(&self, hook: impl Fn(&TaskRecord) + Send + Sync + 'static) {
        self.exit_hooks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(hook));
    }

    /// The snapshotter that holds task rootfs snapshots.
    pub fn snapshotter(&self) -> Arc<dyn snapshotter::Snapshotter> {
        self.images.unpacker.snapshotter.clone()
    }

    /// A task by exact id.
    pub fn get_task(&self, id: &str) -> Option<Arc<Task>> {
        self.get(id)
    }

    /// Starts a pod's shim before its first task (RunPodSandbox does this
    /// while CNI runs). `cwd` is the shim's working directory.
    pub async fn prestart_shim(&self, sandbox_id: &str, cwd: &Path) -> Result<(), TaskError> {
        self.shims
            .get_or_start(sandbox_id, cwd)
            .await
            .map(|_| ())
            .map_err(TaskError::shim(format!(
                "starting the shim of pod {sandbox_id}"
            )))
    }

    /// Shuts a pod's shim down if it holds no task (a pod being removed).
    pub async fn shutdown_idle_shim(&self, sandbox_id: &str) {
        if let Some(pod) = self.shims.get(sandbox_id) {
            if pod.tasks().is_empty() {
                self.shims.shutdown(&pod).await;
            }
        }
    }

    /// The running shim of a task's pod.
    fn live_shim(&self, rec: &TaskRecord) -> Result<Arc<PodShim>, TaskError> {
        self.shims
            .get(&rec.sandbox_id)
            .filter(|p| !p.is_dead())
            .ok_or_else(|| {
                TaskError::FailedPrecondition(format!("the shim of task {} is gone", rec.name))
            })
    }

    /// A shim of a pod, if one is running.
    pub fn pod_shim(&self, sandbox_id: &str) -> Option<Arc<PodShim>> {
        self.shims.get(sandbox_id).filter(|p| !p.is_dead())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_view_reads_the_state_dir_and_proc() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec: TaskRecord = serde_json::from_value(serde_json::json!({
            "id": "c0ffee", "name": "t", "sandbox_id": "c0ffee", "image": "i",
            "args": [], "status": "running", "created_at": 0,
            "bundle": "/b", "log_path": "/l", "stdio": "file", "snapshot": "s",
            "runtime_root": dir.path(),
        }))
        .unwrap();
        rec.pid = std::process::id();
        let none = RuntimeView {
            exists: false,
            alive: false,
        };
        assert_eq!(runtime_view(&rec), none, "no state dir: nothing to delete");
        std::fs::create_dir_all(dir.path().join(NAMESPACE).join("c0ffee")).unwrap();
        // A live pid outside the task's cgroup is a reused pid, not the task.
        assert_eq!(
            runtime_view(&rec),
            RuntimeView {
                exists: true,
                alive: false
            }
        );
        // The test's own cgroup stands in for the task's (when it has one
        // below the root).
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let leaf = own
            .lines()
            .filter_map(|l| l.rsplit(':').next()?.rsplit('/').next())
            .find(|s| !s.is_empty());
        if let Some(leaf) = leaf {
            rec.id = leaf.to_string();
            std::fs::create_dir_all(dir.path().join(NAMESPACE).join(&rec.id)).unwrap();
            assert!(runtime_view(&rec).alive, "in its cgroup: alive");
            rec.pid = 0;
            assert!(!runtime_view(&rec).alive, "never started");
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("web-1.a_b").is_ok());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name(&"a".repeat(129)).is_err());
        assert_eq!(
            default_name("docker.io/library/busybox:latest", "3fa2c1ffee"),
            "busybox-3fa2c1"
        );
        assert_eq!(
            default_name("127.0.0.1:5000/x/y@sha256:ab", "abcdef12"),
            "y-abcdef"
        );
        assert_eq!(new_id().len(), 32);
    }

    #[test]
    fn timestamps() {
        let mut t = Timestamp::new();
        t.seconds = 2;
        t.nanos = 5;
        assert_eq!(ts_nanos(&MessageField::some(t)), 2_000_000_005);
        let mut zero = Timestamp::new();
        zero.seconds = -62135596800;
        assert_eq!(ts_nanos(&MessageField::some(zero)), 0);
        assert_eq!(ts_nanos(&MessageField::none()), 0);
    }
}
