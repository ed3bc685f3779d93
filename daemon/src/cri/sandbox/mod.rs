//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, status,
//! lists, and their recovery at start.
//!
//! A pod holds its namespaces without any process ("pinned" mode): its
//! network namespace (with CNI ADD done in it), IPC and UTS namespaces are
//! bind-mounted files under `<state>`, so no pause image has to be pulled and
//! no process per pod sits idle. Containers join them by path. The pod's
//! shim starts with its first container.

#[cfg(test)]
pub(crate) mod fake_host;
mod host;
mod recovery;
mod setup;
mod status;
mod teardown;

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
use berth_network::{PodNetworkOptions, PodRef, PortMapping};
use berth_sysutil::now_nanos;
pub(crate) use host::{NodeHost, SandboxHost};

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
    if let Some(d) = &cfg.dns_config {
        limits::dns(&what, d)?;
    }
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
    /// The RuntimeClass handler a pod's containers run with.
    pub(crate) fn pod_runtime(&self, rec: &SandboxRecord) -> Result<crate::config::RuntimeHandler> {
        let name = rec.runtime_handler.as_str();
        // "berth" was accepted as the default's alias before handlers existed.
        let name = if name == "berth" && self.config.runtime_handler(name).is_none() {
            ""
        } else {
            name
        };
        self.config.runtime_handler(name).ok_or_else(|| {
            CriError::new(
                Kind::FailedPrecondition,
                format!("pod {}", rec.id),
                format!("its runtime handler {name:?} is no longer configured"),
            )
        })
    }

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

    /// Refuses a pod that would make ListPodSandbox too large for kubelet;
    /// an admitted pod holds its share until its create ends.
    fn pod_list_budget(&self, what: &str, adding: usize) -> Result<limits::ListHold> {
        self.pending_pods.reserve(
            what,
            "ListPodSandbox",
            || {
                prost::Message::encoded_len(&cri::ListPodSandboxResponse {
                    items: self.list_pod_sandboxes(None),
                })
            },
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
        let listed_bytes = limits::list_item_bytes(
            prost::Message::encoded_len(m),
            &cfg.labels,
            &cfg.annotations,
        );
        let what = format!("pod {}", m.name);
        let name = sandbox_name(m);
        let Some(handler) = self.config.runtime_handler(&req.runtime_handler) else {
            let known: Vec<String> = self
                .config
                .runtime_handlers()
                .into_iter()
                .map(|h| h.name)
                .collect();
            return Err(CriError::new(
                Kind::NotFound,
                format!("pod {}", m.name),
                format!(
                    "runtime handler {:?} is not configured (configured: {})",
                    req.runtime_handler,
                    known.join(", ")
                ),
            ));
        };
        // Recorded as asked ("" = the default, reported back as such, as
        // containerd does); each container records the runtime it got.
        debug!(pod = %m.name, handler = %handler.name, "runtime handler");
        let handler = req.runtime_handler;
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
            move |rt| rt.pod_list_budget(&what, listed_bytes),
            move |hold| async move {
                let made = this.create_sandbox(name, cfg, handler).await;
                drop(hold);
                made
            },
        )
        .await
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
