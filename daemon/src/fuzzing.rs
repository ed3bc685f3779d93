//! Entry points for the cargo-fuzz targets in `fuzz/` (not an API).
//!
//! The CRI request checks and the image import's name rules are private to
//! their modules; these thin wrappers let the fuzz targets drive exactly the
//! code the daemon runs on what kubelet or an archive sends, without making
//! those modules' internals public.

use std::path::PathBuf;

use berth_api::runtime::v1 as cri;

use berth_distribution::oci::Descriptor;
use berth_network::PortMapping;

/// RunPodSandbox's config checks; `Ok` is the pod's unique name.
pub fn validate_pod_sandbox(cfg: &cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    crate::cri::sandbox::validate(cfg, &crate::config::CriConfig::default())
        .map(crate::cri::sandbox::sandbox_name)
        .map_err(tonic::Status::from)
}

/// The port mappings handed to CNI for a pod config.
pub fn pod_port_mappings(cfg: &cri::PodSandboxConfig) -> Vec<PortMapping> {
    crate::cri::sandbox::port_mappings(cfg)
}

/// The pod config as verbose PodSandboxStatus shows it.
pub fn pod_config_json(cfg: &cri::PodSandboxConfig) -> serde_json::Value {
    crate::cri::sandbox::pod_config_json(cfg)
}

/// CreateContainer's unique container name.
pub fn container_name(c: &cri::ContainerMetadata, pod: &cri::PodSandboxMetadata) -> String {
    crate::cri::container::container_name(c, pod)
}

/// CreateContainer's log path: `<log_directory>/<log_path>`, never outside.
pub fn container_log_path(
    pod_dir: &str,
    rel: &str,
    name: &str,
) -> Result<Option<PathBuf>, tonic::Status> {
    crate::cri::container::log_path(pod_dir, rel, name).map_err(tonic::Status::from)
}

/// The image config's user as CRI ImageStatus reports it: (uid, username).
pub fn image_user(config: &serde_json::Value) -> (Option<i64>, String) {
    let u = crate::cri::image::user_from_config(config);
    (u.uid, u.username)
}

/// The image name an imported archive's index entry gets.
pub fn import_entry_name(desc: &Descriptor, base: &str) -> Result<Option<String>, String> {
    crate::images::archive::entry_name(desc, base).map_err(|e| e.to_string())
}
