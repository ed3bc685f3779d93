//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, status,
//! lists, and their recovery at start.
//!
//! A pod holds its namespaces without any process ("pinned" mode): its
//! network namespace (with CNI ADD done in it), IPC and UTS namespaces are
//! bind-mounted files under `<state>`, so no pause image has to be pulled and
//! no process per pod sits idle. Containers join them by path. The pod's
//! shim starts with its first container.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use berth_api::runtime::v1 as cri;
use serde_json::json;
use tracing::{debug, info, warn};

use super::error::{Cause, CriError, Result};
use super::{
    find_by_prefix, in_created_order, labels_match, limits, lock, podfiles, stats, CriRuntime,
    Sandbox,
};
use crate::config::CriConfig;
use crate::error::Kind;
use crate::metadata::cri::{SandboxRecord, SandboxState};
use berth_network::{podns, PodNetworkOptions, PodRef, PortMapping};
use berth_sysutil::now_nanos;

const NS_NODE: i32 = cri::NamespaceMode::Node as i32;

/// The pod's namespace options (all POD when unset).
pub(crate) fn namespace_options(cfg: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    cfg.linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

pub(crate) fn host_network(cfg: &cri::PodSandboxConfig) -> bool {
    namespace_options(cfg).network == NS_NODE
}

/// `<name>_<namespace>_<uid>_<attempt>`, unique per pod (containerd's form).
pub(crate) fn sandbox_name(m: &cri::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

pub(crate) fn validate<'a>(
    cfg: &'a cri::PodSandboxConfig,
    limits: &CriConfig,
) -> Result<&'a cri::PodSandboxMetadata> {
    let m = cfg
        .metadata
        .as_ref()
        .ok_or_else(|| CriError::invalid("RunPodSandbox", "the sandbox config has no metadata"))?;
    for (field, value, max) in [
        ("name", &m.name, limits::MAX_POD_NAME),
        ("namespace", &m.namespace, limits::MAX_NAMESPACE),
        ("uid", &m.uid, limits::MAX_UID),
    ] {
        limits::field("RunPodSandbox", &format!("metadata.{field}"), value, max)?;
        if value.trim().is_empty() {
            return Err(CriError::invalid(
                "RunPodSandbox",
                format!("metadata.{field} is empty (pod {})", limits::echo(&m.name)),
            ));
        }
    }
    let what = format!("pod {}", m.name);
    limits::labels(&what, &cfg.labels, limits.max_labels_bytes)?;
    limits::annotations(&what, &cfg.annotations, limits.max_annotations_bytes)?;
    // A relative log directory would be taken from berthd's working directory.
    let log_dir = Path::new(&cfg.log_directory);
    if !cfg.log_directory.is_empty()
        && (!log_dir.is_absolute()
            || log_dir
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir)))
    {
        return Err(CriError::invalid(
            what,
            format!(
                "log_directory {} must be an absolute path without '..'",
                limits::echo(&cfg.log_directory)
            ),
        ));
    }
    // CNI gets them as u16: 70000 would silently become 4464, and -1 was
    // dropped without a word.
    for p in &cfg.port_mappings {
        if !(0..=65535).contains(&p.host_port) || !(0..=65535).contains(&p.container_port) {
            return Err(CriError::invalid(
                what,
                format!(
                    "port mapping {}:{} is out of range (ports are 1 to 65535)",
                    p.host_port, p.container_port
                ),
            ));
        }
    }
    if cfg.hostname.len() > 64 {
        return Err(CriError::invalid(
            what,
            format!(
                "hostname {} is longer than 64 bytes",
                limits::echo(&cfg.hostname)
            ),
        ));
    }
    Ok(m)
}

pub(crate) fn port_mappings(cfg: &cri::PodSandboxConfig) -> Vec<PortMapping> {
    cfg.port_mappings
        .iter()
        .filter(|p| p.host_port > 0 && p.container_port > 0)
        .map(|p| PortMapping {
            host_port: p.host_port as u16,
            container_port: p.container_port as u16,
            protocol: match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            }
            .to_string(),
            host_ip: p.host_ip.clone(),
        })
        .collect()
}

fn pod_ref(rec: &SandboxRecord) -> PodRef {
    let m = rec.config().metadata.clone().unwrap_or_default();
    PodRef {
        sandbox_id: rec.id.clone(),
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
    }
}

impl CriRuntime {
    pub(crate) fn sandbox(&self, id: &str) -> Result<Arc<Sandbox>> {
        let id = id.trim();
        if id.is_empty() {
            return Err(CriError::invalid("pod sandbox id", "empty"));
        }
        let map = lock(&self.sandboxes);
        find_by_prefix(map.iter(), id, "pod sandbox").map(Arc::clone)
    }

    /// Holds the pod's operation lock shared and checks under it that the pod
    /// is still there and ready, for a container call (`what`) that needs it
    /// to stay: a stop or remove waits for the guard, and one that finished
    /// first is seen here.
    pub(crate) async fn ready_pod<'a>(
        &self,
        sandbox: &'a Sandbox,
        what: &str,
    ) -> Result<(tokio::sync::RwLockReadGuard<'a, ()>, SandboxRecord)> {
        let guard = sandbox.op.read().await;
        if !lock(&self.sandboxes).contains_key(&sandbox.id) {
            return Err(CriError::new(
                Kind::NotFound,
                what,
                format!("pod sandbox {} was removed", sandbox.id),
            ));
        }
        let rec = sandbox.record();
        if rec.state != SandboxState::Ready || rec.stopping {
            return Err(CriError::failed_precondition(
                what,
                format!("pod sandbox {} is not ready", rec.id),
            ));
        }
        Ok((guard, rec))
    }

    /// Refuses a pod that would make ListPodSandbox too large for kubelet.
    fn pod_list_budget(&self, cfg: &cri::PodSandboxConfig) -> Result<()> {
        let listing = prost::Message::encoded_len(&cri::ListPodSandboxResponse {
            items: self.list_pod_sandboxes(None),
        });
        let metadata = cfg.metadata.as_ref().map_or(0, prost::Message::encoded_len);
        let adding = limits::list_item_bytes(metadata, &cfg.labels, &cfg.annotations);
        let what = format!(
            "pod {}",
            cfg.metadata
                .as_ref()
                .map(|m| m.name.as_str())
                .unwrap_or_default()
        );
        limits::list_budget(
            &what,
            "ListPodSandbox",
            listing,
            adding,
            self.config.cri.max_list_bytes,
        )
    }

    pub async fn run_pod_sandbox(
        self: &Arc<Self>,
        req: cri::RunPodSandboxRequest,
    ) -> Result<String> {
        let cfg = req
            .config
            .ok_or_else(|| CriError::invalid("RunPodSandbox", "no sandbox config"))?;
        let m = validate(&cfg, &self.config.cri)?;
        self.pod_list_budget(&cfg)?;
        let name = sandbox_name(m);
        let handler = req.runtime_handler;
        if !handler.is_empty() && handler != "runc" && handler != "berth" {
            return Err(CriError::new(
                Kind::NotFound,
                format!("pod {}", m.name),
                format!("runtime handler {handler:?} is not configured (berth knows \"\", \"runc\" and \"berth\")"),
            ));
        }
        let this = self.clone();
        let key = format!("sandbox/{name}");
        let n = name.clone();
        self.create_once(
            key,
            move |rt| {
                lock(&rt.sandboxes)
                    .values()
                    .find(|s| lock(&s.rec).name == n)
                    .map(|s| format!("pod sandbox name {n:?} is reserved for {}", s.id))
            },
            async move { this.create_sandbox(name, cfg, handler).await },
        )
        .await
    }

    async fn create_sandbox(
        self: Arc<Self>,
        name: String,
        cfg: cri::PodSandboxConfig,
        handler: String,
    ) -> Result<String> {
        let id = crate::tasks::new_long_id();
        let dir = self.config.sandboxes_dir().join(&id);
        let cgroup_parent = cfg
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.trim().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| format!("{}/{}", self.config.cri.cgroup_parent, id));
        let rec = SandboxRecord {
            id: id.clone(),
            name: name.clone(),
            state: SandboxState::Creating,
            created_at: now_nanos(),
            config: cfg.clone(),
            runtime_handler: handler,
            dir: dir.clone(),
            netns: None,
            ipc_ns: None,
            uts_ns: None,
            shm: None,
            ips: Vec::new(),
            cgroup_parent,
            network_ready: false,
            stopping: false,
            pause: None,
            pause_pid: 0,
        };
        // Written first, so a crash from here on is cleaned up at start.
        self.persist_sandbox(&rec).await?;
        let sandbox = Arc::new(Sandbox::new(rec));
        match self.setup_sandbox(&sandbox, &cfg).await {
            Ok(()) => {
                let rec = sandbox.update(|r| r.state = SandboxState::Ready);
                if let Err(e) = self.persist_sandbox(&rec).await {
                    // Its failures are logged; the start sweep retries them.
                    let _ = self.teardown_sandbox(&sandbox).await;
                    let _ = self.delete_sandbox_record(&id).await;
                    return Err(e);
                }
                lock(&self.sandboxes).insert(id.clone(), sandbox.clone());
                info!(pod = %id, name = %name, ips = ?rec.ips, "pod sandbox ready");
                self.emit(
                    &id,
                    cri::ContainerEventType::ContainerCreatedEvent,
                    Some(self.sandbox_status_pb(&rec)),
                    Vec::new(),
                );
                self.emit(
                    &id,
                    cri::ContainerEventType::ContainerStartedEvent,
                    Some(self.sandbox_status_pb(&rec)),
                    Vec::new(),
                );
                Ok(id)
            }
            Err(e) => {
                warn!(pod = %id, name = %name, error = %e, "RunPodSandbox failed; cleaning up");
                let _ = self.teardown_sandbox(&sandbox).await;
                if let Err(d) = self.delete_sandbox_record(&id).await {
                    warn!(pod = %id, error = %d, "cannot delete the record of a failed pod");
                }
                Err(e)
            }
        }
    }

    /// Namespaces, network, files. Each step records what it made, so a
    /// teardown after any failure undoes exactly that.
    async fn setup_sandbox(&self, sandbox: &Sandbox, cfg: &cri::PodSandboxConfig) -> Result<()> {
        let rec = sandbox.record();
        let pod_name = cfg
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let ns = namespace_options(cfg);
        let host_net = ns.network == NS_NODE;
        let host_ipc = ns.ipc == NS_NODE;
        // No hostname: the node's, as containerd (a pod name may be longer
        // than a hostname can be).
        let hostname = if cfg.hostname.is_empty() {
            node_hostname()
        } else {
            cfg.hostname.clone()
        };
        let what = format!("pod {pod_name}");
        std::fs::create_dir_all(&rec.dir)
            .map_err(|e| CriError::of(format!("{what}: creating {}", rec.dir.display()), e))?;
        // Files first: bad DNS input fails before any namespace exists.
        let host_hostname = if host_net {
            node_hostname()
        } else {
            hostname.clone()
        };
        {
            let dir = rec.dir.clone();
            let dns = cfg.dns_config.clone();
            let h = host_hostname.clone();
            let files = tokio::task::spawn_blocking(move || {
                podfiles::write_pod_files(
                    &dir,
                    &h,
                    dns.as_ref(),
                    host_net,
                    Path::new("/etc/resolv.conf"),
                    Path::new("/etc/hosts"),
                )
            })
            .await
            .map_err(|e| CriError::internal(&what, Cause::other(e)))?;
            if let Err(e) = files {
                let what = format!("{what}: writing its resolv.conf/hosts/hostname");
                // Bad DNS input is the caller's; any other failure is the disk's.
                return Err(if e.kind() == std::io::ErrorKind::InvalidInput {
                    CriError::invalid(what, e.to_string())
                } else {
                    CriError::of(what, e)
                });
            }
        }
        // Pins before the shm mount: the first pin makes the sandboxes dir
        // a (shared) bind mount of itself, which would hide a mount made
        // under it before.
        let pins = podns::pin(
            &self.config.sandboxes_dir(),
            &rec.id,
            !host_ipc,
            (!host_net).then_some(hostname.as_str()),
        )
        .await
        .map_err(|e| {
            CriError::internal(format!("{what}: pinning its namespaces"), Cause::other(e))
        })?;
        sandbox.update(|r| {
            r.ipc_ns = pins.ipc.clone();
            r.uts_ns = pins.uts.clone();
        });
        if !host_ipc {
            let dir = rec.dir.clone();
            let shm = tokio::task::spawn_blocking(move || podfiles::mount_shm(&dir))
                .await
                .map_err(|e| CriError::internal(&what, Cause::other(e)))?
                .map_err(CriError::with(format!("{what}: mounting its /dev/shm")))?;
            sandbox.update(|r| r.shm = Some(shm));
        }
        // The pod's shim starts while CNI runs: the first container then
        // finds it ready. A failure here is not the pod's: the first
        // container tries again.
        let network = async {
            if !host_net {
                let opts = PodNetworkOptions {
                    port_mappings: port_mappings(cfg),
                    dns: cfg.dns_config.as_ref().map(
                        |d| json!({"servers": d.servers, "searches": d.searches, "options": d.options}),
                    ),
                    bandwidth: None,
                };
                // Recorded before the namespace exists: a berthd killed during
                // the ADD finds it at start and tears it down (DEL is fine for a
                // pod whose ADD never ran).
                let rec = sandbox.update(|r| {
                    r.netns = Some(self.networks.netns_dir().join(&r.id));
                });
                self.persist_sandbox(&rec).await?;
                let pod = pod_ref(&rec);
                let net = self.networks.setup(&pod, &opts).await.map_err(|e| {
                    CriError::failed_precondition(
                        format!("{what}: setting up its network"),
                        Cause::other(e),
                    )
                })?;
                let ips: Vec<String> = net.ips.iter().map(|ip| ip.to_string()).collect();
                sandbox.update(|r| {
                    r.netns = Some(net.netns.path().to_path_buf());
                    r.ips = ips;
                    r.network_ready = true;
                });
            }
            Ok::<(), CriError>(())
        };
        let (network, shim) = tokio::join!(network, self.tasks.prestart_shim(&rec.id, &rec.dir));
        if let Err(e) = shim {
            warn!(pod = %rec.id, error = %e, "starting the pod's shim early failed");
        }
        network?;
        if self.wants_pause(cfg) {
            self.start_pause(sandbox, cfg).await?;
        }
        Ok(())
    }

    /// Whether the pod gets a pause container: always in "pause" mode; in
    /// "pinned" mode only to hold a PID namespace the pod's containers
    /// share, when a sandbox image is configured (a PID namespace cannot
    /// outlive its first process, so it cannot be pinned).
    fn wants_pause(&self, cfg: &cri::PodSandboxConfig) -> bool {
        let ns = namespace_options(cfg);
        self.config.cri.sandbox_mode == "pause"
            || (ns.pid == cri::NamespaceMode::Pod as i32
                && !self.config.cri.sandbox_image.trim().is_empty())
    }

    /// The sandbox image's record, pulled first if it is not here yet (as
    /// containerd does; concurrent pods share one pull).
    async fn sandbox_image(
        &self,
        pod: &str,
        image_name: &str,
    ) -> Result<crate::images::store::ImageRecord> {
        let what = format!("pod {pod}: the sandbox image {image_name}");
        let context = |e: crate::images::error::ImageError| CriError::of(what.as_str(), e);
        match self.images.lookup(image_name) {
            Err(crate::images::error::ImageError::NotFound(_)) => {}
            found => return found.map_err(context),
        }
        info!(pod = %pod, image = %image_name, "pulling the sandbox image");
        let handle = self
            .images
            .pull(image_name, crate::images::pull::PullOptions::default())
            .map_err(context)?;
        handle.wait().await.map_err(context)
    }

    /// Creates and starts the pod's pause container from the sandbox image.
    /// It joins the pod's pinned namespaces and owns a new PID namespace.
    async fn start_pause(&self, sandbox: &Sandbox, cfg: &cri::PodSandboxConfig) -> Result<()> {
        let rec = sandbox.record();
        let image_name = self.config.cri.sandbox_image.trim().to_string();
        let image = self.sandbox_image(&rec.name, &image_name).await?;
        let (image_cfg, top) = self.image_rootfs(&image).await?;
        let id = crate::tasks::new_long_id();
        let pause_cfg = pause_config(cfg, &image_name);
        let driver = if self.config.cri.cgroup_driver == "systemd" {
            super::spec::CgroupDriver::Systemd
        } else {
            super::spec::CgroupDriver::Cgroupfs
        };
        let cgroups_path =
            super::spec::cgroups_path(driver, &rec.cgroup_parent, &rec.id, &id).map_err(
                CriError::with(format!("pod {}: its pause container", rec.id)),
            )?;
        let new = crate::tasks::NewTask {
            id: id.clone(),
            name: format!("{}_POD", rec.name),
            sandbox_id: rec.id.clone(),
            image: image.name.clone(),
            args: Vec::new(),
            tty: false,
            stdin: false,
            auto_remove: false,
            kind: crate::tasks::TaskKind::Sandbox,
            log_path: self.config.root.join("logs").join(format!("{id}.log")),
            keep_log: false,
            cgroups_path,
            cri: None,
        };
        let snap = self.tasks.snapshotter();
        let opts = self.spec_opts.clone();
        let pod_cfg = cfg.clone();
        let srec = rec.clone();
        let prepare: crate::tasks::Prepare = Box::new(move |t: &crate::tasks::TaskRecord| {
            if let Some(dir) = t.log_path.parent() {
                std::fs::create_dir_all(dir).map_err(crate::tasks::TaskError::io(format!(
                    "creating {}",
                    dir.display()
                )))?;
            }
            std::fs::File::create(&t.log_path).map_err(crate::tasks::TaskError::io(format!(
                "creating {}",
                t.log_path.display()
            )))?;
            let bundle = crate::tasks::prepare_rootfs(t, snap.as_ref(), top.as_deref())?;
            let pod = super::spec::PodContext {
                sandbox_id: &srec.id,
                config: &pod_cfg,
                netns: srec.netns.as_deref(),
                ipc_ns: srec.ipc_ns.as_deref(),
                uts_ns: srec.uts_ns.as_deref(),
                pid_ns: None,
                resolv_conf: None,
                hostname_file: None,
                hosts_file: None,
                shm: srec.shm.as_deref(),
            };
            let mut doc = super::spec::container_spec(
                &t.id,
                &pause_cfg,
                &pod,
                &image_cfg,
                &bundle.rootfs(),
                &opts,
            )
            .map_err(|e| crate::tasks::TaskError::InvalidArgument(e.to_string()))?;
            if let Some(l) = doc.linux_mut().as_mut() {
                l.set_cgroups_path(Some(std::path::PathBuf::from(&t.cgroups_path)));
            }
            bundle.write_spec(&doc).map_err(crate::tasks::bundle_error(
                "writing the pause container's config.json".to_string(),
            ))
        });
        // Recorded before it exists, so a failure below is cleaned up.
        let rec = sandbox.update(|r| r.pause = Some(id.clone()));
        self.persist_sandbox(&rec).await?;
        self.tasks.create(new, prepare).await?;
        let started = self.tasks.start(&id).await?;
        let rec = sandbox.update(|r| r.pause_pid = started.pid);
        self.persist_sandbox(&rec).await?;
        info!(pod = %rec.id, pid = started.pid, image = %image_name, "pause container started");
        Ok(())
    }

    /// Kills and removes the pod's pause container, if it has one.
    async fn remove_pause(&self, sandbox: &Sandbox) -> Result<(), crate::tasks::TaskError> {
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
    async fn teardown_sandbox(&self, sandbox: &Sandbox) -> Result<()> {
        let pause = self.remove_pause(sandbox).await;
        let mut clean = pause.is_ok();
        self.tasks.shutdown_idle_shim(&sandbox.id).await;
        clean &= self.teardown_network(sandbox).await;
        let rec = sandbox.record();
        if let Err(e) = podns::unpin(&self.config.sandboxes_dir(), &rec.id).await {
            warn!(pod = %rec.id, error = %e, "cannot remove the pod's namespace pins");
            clean = false;
        }
        let dir = rec.dir.clone();
        let id = rec.id.clone();
        let cgroup = (rec.cgroup_parent == format!("{}/{}", self.config.cri.cgroup_parent, rec.id))
            .then(|| rec.cgroup_parent.clone());
        let layout = self.cgroups.clone();
        let files_ok = tokio::task::spawn_blocking(move || {
            let mut ok = true;
            if let Err(e) = podfiles::unmount_shm(&dir) {
                warn!(pod = %id, error = %e, "cannot unmount the pod's /dev/shm");
                ok = false;
            }
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

    async fn teardown_network(&self, sandbox: &Sandbox) -> bool {
        let rec = sandbox.record();
        let Some(netns) = rec.netns.clone() else {
            return true;
        };
        let pod = pod_ref(&rec);
        let r = self.networks.teardown(&pod, &netns).await;
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

    async fn stop_sandbox_locked(&self, sandbox: &Sandbox) -> Result<()> {
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
        let dir = rec.dir.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || podfiles::unmount_shm(&dir))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
        {
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

    /// Ready, and its pause process (if it has one) still runs.
    fn sandbox_ready(&self, rec: &SandboxRecord) -> bool {
        rec.state == SandboxState::Ready
            && rec.pause.as_deref().is_none_or(|id| {
                self.tasks
                    .get_task(id)
                    .is_some_and(|t| t.record().status == crate::tasks::TaskStatus::Running)
            })
    }

    pub(crate) fn sandbox_status_pb(&self, rec: &SandboxRecord) -> cri::PodSandboxStatus {
        let cfg = rec.config();
        let state = if self.sandbox_ready(rec) {
            cri::PodSandboxState::SandboxReady
        } else {
            cri::PodSandboxState::SandboxNotready
        };
        let mut ips = rec.ips.iter();
        let network = if host_network(cfg) {
            None
        } else {
            Some(cri::PodSandboxNetworkStatus {
                ip: ips.next().cloned().unwrap_or_default(),
                additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
            })
        };
        cri::PodSandboxStatus {
            id: rec.id.clone(),
            metadata: cfg.metadata.clone(),
            state: state as i32,
            created_at: rec.created_at,
            network,
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(namespace_options(cfg)),
                }),
            }),
            labels: cfg.labels.clone(),
            annotations: cfg.annotations.clone(),
            runtime_handler: rec.runtime_handler.clone(),
        }
    }

    pub fn pod_sandbox_status(
        &self,
        req: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse> {
        let sandbox = self.sandbox(&req.pod_sandbox_id)?;
        let rec = sandbox.record();
        let mut info = HashMap::new();
        if req.verbose {
            let v = json!({
                "pid": rec.pause_pid,
                "pauseContainer": rec.pause,
                "sandboxMode": self.config.cri.sandbox_mode,
                "netNamespacePath": rec.netns,
                "ipcNamespacePath": rec.ipc_ns,
                "utsNamespacePath": rec.uts_ns,
                "cgroupParent": rec.cgroup_parent,
                "podDir": rec.dir,
                "runtimeHandler": rec.runtime_handler,
                "config": pod_config_json(rec.config()),
            });
            info.insert("info".to_string(), v.to_string());
        }
        let containers_statuses = self
            .containers_of(&rec.id)
            .iter()
            .map(|t| self.container_status_pb(&t.record()))
            .collect();
        Ok(cri::PodSandboxStatusResponse {
            status: Some(self.sandbox_status_pb(&rec)),
            info,
            containers_statuses,
            timestamp: now_nanos(),
        })
    }

    pub fn list_pod_sandboxes(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Vec<cri::PodSandbox> {
        // Built from the records in place (no copies of whole records):
        // kubelet lists every second.
        let out: Vec<cri::PodSandbox> = lock(&self.sandboxes)
            .values()
            .filter_map(|s| {
                let r = lock(&s.rec);
                let state = if self.sandbox_ready(&r) {
                    cri::PodSandboxState::SandboxReady
                } else {
                    cri::PodSandboxState::SandboxNotready
                } as i32;
                let cfg = r.config();
                if let Some(f) = &filter {
                    let keep = (f.id.is_empty() || r.id.starts_with(&f.id))
                        && f.state.as_ref().is_none_or(|s| s.state == state)
                        && (f.label_selector.is_empty()
                            || labels_match(&cfg.labels, &f.label_selector));
                    if !keep {
                        return None;
                    }
                }
                Some(cri::PodSandbox {
                    id: r.id.clone(),
                    metadata: cfg.metadata.clone(),
                    state,
                    created_at: r.created_at,
                    labels: cfg.labels.clone(),
                    annotations: cfg.annotations.clone(),
                    runtime_handler: r.runtime_handler.clone(),
                })
            })
            .collect();
        in_created_order(out, |p| p.created_at)
    }

    /// Recovery: loads pod records, removes pods whose RunPodSandbox never
    /// finished, finishes stops that were under way. A bad record is logged
    /// and left aside (quarantined) without stopping the rest.
    pub async fn recover_sandboxes(self: &Arc<Self>) {
        use crate::metadata::SANDBOXES;
        let meta = self.meta.clone();
        let rows = match tokio::task::spawn_blocking(move || meta.list(SANDBOXES)).await {
            Ok(Ok(r)) => r,
            other => {
                warn!(result = ?other.map(|r| r.map(|v| v.len())), "cannot read the pod records");
                return;
            }
        };
        let mut unfinished = Vec::new();
        let mut stopping = Vec::new();
        for (key, value) in rows {
            let rec = match serde_json::from_slice::<SandboxRecord>(&value) {
                Ok(r) => r,
                Err(e) => {
                    warn!(pod = %key, error = %e, "quarantining a corrupt pod record");
                    self.quarantine(&key, value).await;
                    continue;
                }
            };
            let s = Arc::new(Sandbox::new(rec.clone()));
            if rec.state == SandboxState::Creating {
                unfinished.push(s);
                continue;
            }
            if rec.stopping {
                stopping.push(s.clone());
            }
            lock(&self.sandboxes).insert(rec.id.clone(), s);
        }
        for s in unfinished {
            info!(pod = %s.id, "removing a pod whose RunPodSandbox did not finish");
            for c in self.containers_of(&s.id) {
                let _ = self.remove_container_task(&c).await;
            }
            if self.teardown_sandbox(&s).await.is_ok() {
                let _ = self.delete_sandbox_record(&s.id).await;
            } else {
                // Kept (hidden) so the next start tries again.
                warn!(pod = %s.id, "cleanup of an unfinished pod failed; will retry at next start");
            }
        }
        for s in stopping {
            info!(pod = %s.id, "finishing a stop that was under way");
            let _op = s.op.write().await;
            if let Err(e) = self.stop_sandbox_locked(&s).await {
                warn!(pod = %s.id, error = %e, "finishing the stop failed");
            }
        }
        // Containers whose pod is gone (a remove that died half-way).
        let known: std::collections::HashSet<String> =
            lock(&self.sandboxes).keys().cloned().collect();
        for t in self.tasks.list_kind(crate::tasks::TaskKind::Cri) {
            if !known.contains(&t.sandbox_id) {
                if let Ok(task) = self.tasks.lookup(&t.id) {
                    info!(container = %t.id, pod = %t.sandbox_id, "removing a container of a vanished pod");
                    let _ = self.remove_container_task(&task).await;
                }
            }
        }
        info!(pods = lock(&self.sandboxes).len(), "pods recovered");
    }

    /// Moves a record that cannot be read out of the way (bucket
    /// `quarantine`), so it is neither lost nor tried again.
    async fn quarantine(&self, key: &str, value: Vec<u8>) {
        use crate::metadata::{QUARANTINE, SANDBOXES};
        let meta = self.meta.clone();
        let key = key.to_string();
        let r = tokio::task::spawn_blocking(move || {
            meta.put(QUARANTINE, &format!("sandboxes/{key}"), value)?;
            meta.delete(SANDBOXES, &key)?;
            meta.flush()
        })
        .await;
        if !matches!(r, Ok(Ok(()))) {
            warn!("cannot quarantine a corrupt pod record");
        }
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

/// The pod config as JSON for verbose status (kubelet and crictl show it).
pub(crate) fn pod_config_json(cfg: &cri::PodSandboxConfig) -> serde_json::Value {
    let ns = namespace_options(cfg);
    json!({
        "metadata": cfg.metadata.as_ref().map(|m| json!({
            "name": m.name, "uid": m.uid, "namespace": m.namespace, "attempt": m.attempt,
        })),
        "hostname": cfg.hostname,
        "log_directory": cfg.log_directory,
        "dns_config": cfg.dns_config.as_ref().map(|d| json!({
            "servers": d.servers, "searches": d.searches, "options": d.options,
        })),
        "port_mappings": cfg.port_mappings.iter().map(|p| json!({
            "protocol": p.protocol, "container_port": p.container_port,
            "host_port": p.host_port, "host_ip": p.host_ip,
        })).collect::<Vec<_>>(),
        "labels": cfg.labels,
        "annotations": cfg.annotations,
        "linux": cfg.linux.as_ref().map(|l| json!({
            "cgroup_parent": l.cgroup_parent,
            "sysctls": l.sysctls,
            "namespace_options": {"network": ns.network, "pid": ns.pid, "ipc": ns.ipc},
        })),
    })
}

/// The node's hostname (the UTS name berthd runs under).
fn node_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The CRI config the pod's pause container is built from: the pod's
/// namespaces with a PID namespace of its own, no new privileges.
pub(crate) fn pause_config(cfg: &cri::PodSandboxConfig, image_name: &str) -> cri::ContainerConfig {
    let mut ns = namespace_options(cfg);
    ns.pid = cri::NamespaceMode::Container as i32;
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "POD".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image_name.to_string(),
            ..Default::default()
        }),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(ns),
                no_new_privs: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: "u".into(),
                namespace: "default".into(),
                attempt: 1,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(validate(&cfg("web"), &CriConfig::default()).is_ok());
        let e = validate(&cfg(""), &CriConfig::default()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().contains("metadata.name"), "{e}");
        let e = validate(&cri::PodSandboxConfig::default(), &CriConfig::default()).unwrap_err();
        assert!(e.to_string().contains("no metadata"));
        assert_eq!(
            sandbox_name(cfg("web").metadata.as_ref().unwrap()),
            "web_default_u_1"
        );
    }

    /// Found writing the cri_requests fuzz target's port check: a port
    /// past 65535 was truncated to u16 (70000 -> 4464) on its way to CNI.
    #[test]
    fn ports_past_65535_are_refused() {
        for (host_port, container_port) in [(70000, 80), (8080, 65536)] {
            let mut c = cfg("web");
            c.port_mappings = vec![cri::PortMapping {
                host_port,
                container_port,
                ..Default::default()
            }];
            let e = validate(&c, &CriConfig::default()).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.to_string().contains("out of range"), "{e}");
        }
        let mut c = cfg("web");
        c.port_mappings = vec![cri::PortMapping {
            host_port: 65535,
            container_port: 1,
            ..Default::default()
        }];
        assert!(validate(&c, &CriConfig::default()).is_ok());
        assert_eq!(port_mappings(&c)[0].host_port, 65535);
    }

    #[test]
    fn port_mappings_convert() {
        let mut c = cfg("web");
        c.port_mappings = vec![
            cri::PortMapping {
                protocol: cri::Protocol::Udp as i32,
                container_port: 53,
                host_port: 5353,
                host_ip: "127.0.0.1".into(),
            },
            cri::PortMapping {
                protocol: 0,
                container_port: 80,
                host_port: 0,
                host_ip: String::new(),
            },
        ];
        let p = port_mappings(&c);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].protocol, "udp");
        assert_eq!(p[0].host_port, 5353);
    }
}
