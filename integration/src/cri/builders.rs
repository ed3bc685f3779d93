//! Builders for pod and container configs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{api, POD_NAMESPACE};

/// A pod config: metadata (name, uid, namespace [`POD_NAMESPACE`], attempt
/// 0), hostname, log dir, label `app=<name>`, network/ipc in the pod, pid per
/// container, no cgroup parent (set `linux.cgroup_parent` to add one).
pub fn pod_config(name: &str, uid: &str, log_dir: &Path) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: POD_NAMESPACE.to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        annotations: HashMap::from([("berth.test/kind".to_string(), "e2e".to_string())]),
        linux: Some(api::LinuxPodSandboxConfig {
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(api::NamespaceMode::Pod)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Namespace options with the network in `network` mode, ipc in the pod and
/// pid per container.
pub fn namespaces(network: api::NamespaceMode) -> api::NamespaceOption {
    api::NamespaceOption {
        network: network as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A TCP port mapping.
pub fn port_mapping(host_ip: &str, host_port: u16, container_port: u16) -> api::PortMapping {
    api::PortMapping {
        protocol: api::Protocol::Tcp as i32,
        container_port: container_port as i32,
        host_port: host_port as i32,
        host_ip: host_ip.to_string(),
    }
}

/// A container config: metadata (name, attempt 0), image, command, log path
/// `<name>/0.log` (relative to the pod's log dir), label `ctr=<name>`.
pub fn container_config(name: &str, image: &str, cmd: &[&str]) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels: HashMap::from([("ctr".to_string(), name.to_string())]),
        annotations: HashMap::from([("berth.test/ctr".to_string(), name.to_string())]),
        linux: Some(api::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// The absolute log path of `c` in `pod`, creating its parent dir as kubelet
/// does.
pub fn log_path_of(pod: &api::PodSandboxConfig, c: &api::ContainerConfig) -> Result<PathBuf> {
    let p = Path::new(&pod.log_directory).join(&c.log_path);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Ok(p)
}
