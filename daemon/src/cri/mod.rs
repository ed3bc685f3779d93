//! The Kubernetes CRI (`runtime.v1`) served on berthd's socket, as thin layers
//! over berth's own services (one image store: the CRI sees what berthctl sees;
//! one runtime core: a CRI container is a task in its pod's shim).
//!
//! [`CriRuntime`] holds the pod (sandbox) index and the in-flight creates;
//! containers live in the [`TaskService`]'s index. Both indexes are in
//! memory, rebuilt from the metadata DB at start, and answer every list call;
//! no lock is held across a shim, CNI or disk-heavy call.

pub mod container;
mod container_stats;
pub mod error;
pub mod image;
pub mod limits;
pub mod podfiles;
pub mod runtime;
pub mod sandbox;
pub mod seccomp;
pub mod spec;
pub mod stats;
mod stream_urls;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::runtime::v1 as cri;
use tokio::sync::{broadcast, watch};
use tracing::error;

use crate::config::Config;
use crate::error::Kind;
use crate::images::ImageService;
use crate::metadata::cri::SandboxRecord;
use crate::metadata::{MetaStore, SANDBOXES};
use crate::tasks::error::blocking;
use crate::tasks::TaskService;
use berth_network::PodNetworks;
use berth_sysutil::now_nanos;
use error::{CriError, Result};

/// What a create that others may join ends with: the new object's id, or
/// the error (kind and message; the error itself is not `Clone`).
type Outcome = Result<String, (Kind, String)>;

/// How long a create nobody waited for keeps its result for a retry
/// (kubelet retries within its 4-minute runtime request timeout).
const UNCLAIMED_TTL: Duration = Duration::from_secs(600);

/// One pod in memory.
pub struct Sandbox {
    pub id: String,
    rec: Mutex<SandboxRecord>,
    /// Stop and remove of this pod hold it exclusively (they call CNI and
    /// shims); CreateContainer and StartContainer hold it shared for the part
    /// that needs the pod to stay (its netns, dir and state), so a stop or
    /// remove never runs under them.
    op: tokio::sync::RwLock<()>,
}

impl Sandbox {
    fn new(rec: SandboxRecord) -> Sandbox {
        Sandbox {
            id: rec.id.clone(),
            rec: Mutex::new(rec),
            op: tokio::sync::RwLock::new(()),
        }
    }

    pub fn record(&self) -> SandboxRecord {
        lock(&self.rec).clone()
    }

    fn update(&self, f: impl FnOnce(&mut SandboxRecord)) -> SandboxRecord {
        let mut r = lock(&self.rec);
        f(&mut r);
        r.clone()
    }
}

use berth_sysutil::lock;

pub struct CriRuntime {
    config: Arc<Config>,
    meta: Arc<dyn MetaStore>,
    images: Arc<ImageService>,
    tasks: Arc<TaskService>,
    /// Namespaces, /dev/shm and network of pods.
    host: Arc<dyn sandbox::SandboxHost>,
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    /// Creates under way, by unique name: a retry with the same name joins.
    inflight: Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>,
    /// Creates that finished after every caller had given up (kubelet's
    /// deadline passed): the id is handed to the first retry with the name.
    unclaimed: Mutex<HashMap<String, (String, Instant)>>,
    /// ListPodSandbox / ListContainers bytes of creates under way.
    pending_pods: limits::PendingListBytes,
    pending_containers: limits::PendingListBytes,
    events: broadcast::Sender<cri::ContainerEventResponse>,
    cgroups: stats::CgroupLayout,
    /// The streaming server exec/attach/port-forward URLs point at.
    streaming: std::sync::OnceLock<Arc<berth_streaming::StreamServer>>,
    /// Writable-layer usage by snapshot key: (bytes, inodes, when measured).
    layer_usage: Mutex<HashMap<String, (u64, u64, i64)>>,
    /// Host facts the OCI spec builder needs, read once.
    spec_opts: spec::SpecOptions,
}

impl CriRuntime {
    pub fn new(
        config: Arc<Config>,
        meta: Arc<dyn MetaStore>,
        images: Arc<ImageService>,
        tasks: Arc<TaskService>,
    ) -> Arc<CriRuntime> {
        let networks = PodNetworks::new(
            config.cni.conf_dir.clone(),
            config.cni.bin_dirs.clone(),
            config.netns_dir(),
            config.cni_cache_dir(),
            config.cni.plugin_timeout(),
        );
        let host = Arc::new(sandbox::NodeHost::new(networks, config.sandboxes_dir()));
        CriRuntime::with_host(config, meta, images, tasks, host)
    }

    /// A runtime whose pods are made on the host through `host` (an
    /// in-memory fake in unit tests).
    pub(crate) fn with_host(
        config: Arc<Config>,
        meta: Arc<dyn MetaStore>,
        images: Arc<ImageService>,
        tasks: Arc<TaskService>,
        host: Arc<dyn sandbox::SandboxHost>,
    ) -> Arc<CriRuntime> {
        let spec_opts = spec::SpecOptions::detect(if config.cri.cgroup_driver == "systemd" {
            spec::CgroupDriver::Systemd
        } else {
            spec::CgroupDriver::Cgroupfs
        });
        Arc::new(CriRuntime {
            host,
            config,
            meta,
            images,
            tasks,
            sandboxes: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            unclaimed: Mutex::new(HashMap::new()),
            pending_pods: Default::default(),
            pending_containers: Default::default(),
            events: broadcast::channel(1024).0,
            cgroups: stats::CgroupLayout::detect(),
            spec_opts,
            streaming: std::sync::OnceLock::new(),
            layer_usage: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `create` once per unique `name`: a second call while the first
    /// is under way waits for it and gets its result (kubelet retries a slow
    /// create with the same name); a name already taken by a finished object
    /// (`taken`) is `AlreadyExists`; a new create must first be admitted
    /// (`admit`, e.g. the list budget) and gets what that returns. The create
    /// runs in its own task, so a caller that gives up (deadline, disconnect)
    /// does not abort it half-way.
    async fn create_once<A, F>(
        self: &Arc<Self>,
        name: String,
        taken: impl FnOnce(&Self) -> Option<String>,
        admit: impl FnOnce(&Self) -> Result<A>,
        create: impl FnOnce(A) -> F,
    ) -> Result<String>
    where
        F: Future<Output = Result<String>> + Send + 'static,
    {
        let what = name.clone();
        let mut rx = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(&name) {
                Some(rx) => rx.clone(),
                None => {
                    if let Some(id) = self.claim(&name) {
                        return Ok(id);
                    }
                    if let Some(msg) = taken(self) {
                        return Err(CriError::new(Kind::AlreadyExists, "", msg));
                    }
                    // Only a new create is admitted (a retry joins the one
                    // under way); what it admits lives as long as the create.
                    let create = create(admit(self)?);
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(name.clone(), rx.clone());
                    let this = self.clone();
                    tokio::spawn(async move {
                        let outcome = create.await.map_err(|e| (e.kind(), e.to_string()));
                        // Under the lock, so no new caller can join between
                        // the count and the removal.
                        let mut inflight = lock(&this.inflight);
                        inflight.remove(&name);
                        // No caller is waiting any more: every one gave up.
                        // Keep a success for the retry.
                        if tx.receiver_count() == 0 {
                            if let Ok(id) = &outcome {
                                lock(&this.unclaimed).insert(name, (id.clone(), Instant::now()));
                            }
                        }
                        drop(inflight);
                        tx.send_replace(Some(outcome));
                    });
                    rx
                }
            }
        };
        loop {
            if let Some(o) = rx.borrow_and_update().clone() {
                return o.map_err(|(kind, msg)| CriError::new(kind, "", msg));
            }
            if rx.changed().await.is_err() {
                return Err(CriError::internal(
                    what,
                    "the create this call joined was lost",
                ));
            }
        }
    }

    /// The id of a create with this name that finished unclaimed (and not
    /// too long ago), taken out of the store.
    fn claim(&self, name: &str) -> Option<String> {
        let mut unclaimed = lock(&self.unclaimed);
        unclaimed.retain(|_, (_, at)| at.elapsed() < UNCLAIMED_TTL);
        let (id, _) = unclaimed.remove(name)?;
        // Removed meanwhile: nothing to hand over.
        let exists = lock(&self.sandboxes).contains_key(&id) || self.tasks.get_task(&id).is_some();
        exists.then_some(id)
    }

    fn emit(
        &self,
        id: &str,
        kind: cri::ContainerEventType,
        pod: Option<cri::PodSandboxStatus>,
        containers: Vec<cri::ContainerStatus>,
    ) {
        publish_lifecycle(id, kind, pod.as_ref(), &containers);
        // No subscriber is fine.
        let _ = self.events.send(cri::ContainerEventResponse {
            container_id: id.to_string(),
            container_event_type: kind as i32,
            created_at: now_nanos(),
            pod_sandbox_status: pod,
            containers_statuses: containers,
        });
    }

    /// Hands the runtime the streaming server (started after recovery).
    /// Where the streaming server listens, once it runs.
    pub fn streaming_address(&self) -> Option<std::net::SocketAddr> {
        self.streaming.get().map(|s| s.address())
    }

    /// The CNI network pods join (an error when none is usable).
    pub async fn network_name(&self) -> std::result::Result<String, String> {
        self.host.network_name().await.map_err(|e| e.to_string())
    }

    pub fn set_streaming(&self, server: Arc<berth_streaming::StreamServer>) {
        let _ = self.streaming.set(server);
    }

    fn streaming(&self) -> Result<&Arc<berth_streaming::StreamServer>> {
        self.streaming
            .get()
            .ok_or_else(|| CriError::unavailable("the streaming server", "not running"))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<cri::ContainerEventResponse> {
        self.events.subscribe()
    }

    async fn persist_sandbox(&self, rec: &SandboxRecord) -> Result<()> {
        let meta = self.meta.clone();
        let key = rec.id.clone();
        let value = serde_json::to_vec(rec)
            .map_err(|e| CriError::internal(format!("pod {}", rec.id), error::Cause::other(e)))?;
        blocking(move || {
            meta.put(SANDBOXES, &key, value)?;
            meta.flush()?;
            Ok(())
        })
        .await
        .map_err(CriError::with(format!(
            "pod {}: writing its record",
            rec.id
        )))
    }

    async fn persist_sandbox_logged(&self, rec: &SandboxRecord) {
        if let Err(e) = self.persist_sandbox(rec).await {
            error!(pod = %rec.id, error = %e, "cannot record the pod");
        }
    }

    async fn delete_sandbox_record(&self, id: &str) -> Result<()> {
        let meta = self.meta.clone();
        let key = id.to_string();
        blocking(move || {
            meta.delete(SANDBOXES, &key)?;
            meta.flush()?;
            Ok(())
        })
        .await
        .map_err(CriError::with(format!("pod {id}: deleting its record")))
    }
}

/// Finds one object by exact id or unique id prefix, as CRI callers (crictl)
/// abbreviate ids.
fn find_by_prefix<'a, T>(
    items: impl Iterator<Item = (&'a String, T)>,
    id: &str,
    what: &str,
) -> Result<T> {
    let mut hit = None;
    let mut n = 0;
    for (k, v) in items {
        if k == id {
            return Ok(v);
        }
        if k.starts_with(id) {
            n += 1;
            hit = Some(v);
        }
    }
    match (n, hit) {
        (1, Some(v)) => Ok(v),
        (0, _) => Err(CriError::not_found(format!("{what} {id}"))),
        _ => Err(CriError::invalid(
            format!("{what} id prefix {id}"),
            format!("ambiguous ({n} matches)"),
        )),
    }
}

/// A label map: containers keep theirs sorted, pods as the request sent them.
trait Labels {
    fn label(&self, key: &str) -> Option<&String>;
}

impl Labels for std::collections::BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&String> {
        self.get(key)
    }
}

impl Labels for HashMap<String, String> {
    fn label(&self, key: &str) -> Option<&String> {
        self.get(key)
    }
}

/// Whether `labels` has every pair of `selector`.
/// `items` in creation order (`key`), each moved once: the sort runs over (time,
/// index) pairs rather than over the messages, a few hundred bytes each, which a
/// sort would move several times (memmove was the top symbol of a ListContainers
/// profile).
fn in_created_order<T>(items: Vec<T>, key: impl Fn(&T) -> i64) -> Vec<T> {
    let mut order: Vec<(i64, usize)> = items.iter().map(key).zip(0..).collect();
    order.sort_unstable();
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|(_, i)| slots.get_mut(i).and_then(Option::take))
        .collect()
}

fn labels_match(labels: &impl Labels, selector: &HashMap<String, String>) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.label(k).is_some_and(|l| l == v))
}

/// The CRI's lifecycle events on berthd's own bus (`berthctl events`): a
/// pod's as `/pods/<verb>`, a container's as `/containers/<verb>`.
fn publish_lifecycle(
    id: &str,
    kind: cri::ContainerEventType,
    pod: Option<&cri::PodSandboxStatus>,
    containers: &[cri::ContainerStatus],
) {
    use cri::ContainerEventType as E;
    let container = containers.iter().find(|c| c.id == id);
    let topic = match (container.is_some(), kind) {
        (false, E::ContainerCreatedEvent) => "/pods/create",
        (false, E::ContainerStartedEvent) => "/pods/start",
        (false, E::ContainerStoppedEvent) => "/pods/stop",
        (false, E::ContainerDeletedEvent) => "/pods/delete",
        (true, E::ContainerCreatedEvent) => "/containers/create",
        (true, E::ContainerStartedEvent) => "/containers/start",
        (true, E::ContainerStoppedEvent) => "/containers/stop",
        (true, E::ContainerDeletedEvent) => "/containers/delete",
    };
    let meta = pod.and_then(|p| p.metadata.as_ref());
    let mut attrs = vec![
        ("pod", pod.map(|p| p.id.clone()).unwrap_or_default()),
        ("pod_name", meta.map(|m| m.name.clone()).unwrap_or_default()),
        (
            "namespace",
            meta.map(|m| m.namespace.clone()).unwrap_or_default(),
        ),
    ];
    if let Some(c) = container {
        attrs.push((
            "name",
            c.metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default(),
        ));
        attrs.push((
            "image",
            c.image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
        ));
        if kind == E::ContainerStoppedEvent {
            attrs.push(("exit_code", c.exit_code.to_string()));
        }
    }
    crate::events::publish(topic, id, attrs);
}

#[cfg(test)]
mod lifecycle_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_order_keeps_every_item() {
        let items = vec![(30, "c"), (10, "a"), (20, "b"), (10, "a2")];
        let out = in_created_order(items, |x| x.0);
        let names: Vec<&str> = out.iter().map(|x| x.1).collect();
        assert_eq!(names, ["a", "a2", "b", "c"]);
        assert!(in_created_order(Vec::<(i64, u8)>::new(), |x| x.0).is_empty());
    }

    #[test]
    fn prefix_lookup() {
        let m: HashMap<String, u32> = [("abc1".to_string(), 1), ("abd2".to_string(), 2)]
            .into_iter()
            .collect();
        assert_eq!(find_by_prefix(m.iter(), "abc1", "pod").unwrap(), &1);
        assert_eq!(find_by_prefix(m.iter(), "abd", "pod").unwrap(), &2);
        assert_eq!(
            find_by_prefix(m.iter(), "ab", "pod").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            find_by_prefix(m.iter(), "x", "pod").unwrap_err().code(),
            tonic::Code::NotFound
        );
    }

    #[test]
    fn label_selection() {
        let labels: std::collections::BTreeMap<String, String> =
            [("a".to_string(), "1".to_string())].into_iter().collect();
        let mut sel = HashMap::new();
        assert!(labels_match(&labels, &sel));
        sel.insert("a".to_string(), "1".to_string());
        assert!(labels_match(&labels, &sel));
        sel.insert("b".to_string(), "2".to_string());
        assert!(!labels_match(&labels, &sel));
    }
}
