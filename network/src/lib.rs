//! Pod networking: a pinned network namespace per pod plus CNI ADD/DEL with
//! the first config in the CNI conf dir. RunPodSandbox calls [`PodNetworks::setup`],
//! StopPodSandbox/RemovePodSandbox call [`PodNetworks::teardown`]. No daemon
//! types: berthd builds [`PodNetworks`] from its `[cni]` config.
//!
//! Nothing here holds a lock across a plugin call; plugin processes are run
//! with tokio's process support under a timeout, and namespace work runs on
//! dedicated OS threads (see [`netns`]).

pub mod cni;
pub mod netns;
pub mod podns;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub use cni::{Cni, CniError, CniResult, NetworkConfigList, RuntimeConf};
pub use netns::{NetNs, NetnsError};

/// The interface name pods get.
pub const POD_IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("setting up the network of pod {pod}: {source}; cleanup also failed: {cleanup}")]
    Cleanup {
        pod: String,
        #[source]
        source: Box<NetworkError>,
        cleanup: String,
    },
}

/// The pod a network is for (the CRI sandbox metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRef {
    /// The sandbox id: CNI_CONTAINERID and the netns pin's name.
    pub sandbox_id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

impl PodRef {
    fn cni_args(&self) -> Vec<(String, String)> {
        vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), self.namespace.clone()),
            ("K8S_POD_NAME".into(), self.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), self.sandbox_id.clone()),
            ("K8S_POD_UID".into(), self.uid.clone()),
        ]
    }
}

/// A CRI port mapping, passed to plugins with the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    /// Empty means all host addresses.
    pub host_ip: String,
}

/// Optional capability arguments for a pod's ADD.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodNetworkOptions {
    pub port_mappings: Vec<PortMapping>,
    /// The `dns` capability: nameservers, searches, options.
    pub dns: Option<Value>,
    /// The `bandwidth` capability (ingressRate/ingressBurst/egressRate/egressBurst).
    pub bandwidth: Option<Value>,
}

impl PodNetworkOptions {
    fn capability_args(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if !self.port_mappings.is_empty() {
            let pms: Vec<Value> = self
                .port_mappings
                .iter()
                .filter(|p| p.host_port != 0)
                .map(|p| {
                    let mut v = json!({
                        "hostPort": p.host_port,
                        "containerPort": p.container_port,
                        "protocol": if p.protocol.is_empty() { "tcp".to_string() } else { p.protocol.to_lowercase() },
                    });
                    if !p.host_ip.is_empty() {
                        v["hostIP"] = Value::String(p.host_ip.clone());
                    }
                    v
                })
                .collect();
            if !pms.is_empty() {
                m.insert("portMappings".into(), Value::Array(pms));
            }
        }
        if let Some(d) = &self.dns {
            m.insert("dns".into(), d.clone());
        }
        if let Some(b) = &self.bandwidth {
            m.insert("bandwidth".into(), b.clone());
        }
        m
    }
}

/// A pod's network after a successful setup.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    pub netns: NetNs,
    pub result: CniResult,
    pub ips: Vec<IpAddr>,
}

/// Sets up and tears down pod networks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PodNetworks {
    cni: Cni,
    conf_dir: PathBuf,
    netns_dir: PathBuf,
}

impl PodNetworks {
    pub fn new(
        conf_dir: PathBuf,
        bin_dirs: Vec<PathBuf>,
        netns_dir: PathBuf,
        cache_dir: PathBuf,
        plugin_timeout: Duration,
    ) -> PodNetworks {
        PodNetworks {
            cni: Cni::new(bin_dirs, cache_dir, plugin_timeout),
            conf_dir,
            netns_dir,
        }
    }

    pub fn cni(&self) -> &Cni {
        &self.cni
    }

    pub fn netns_dir(&self) -> &Path {
        &self.netns_dir
    }

    /// Loads the network config pods get now (the first in the conf dir).
    pub async fn load_config(&self) -> Result<NetworkConfigList, CniError> {
        let dir = self.conf_dir.clone();
        tokio::task::spawn_blocking(move || NetworkConfigList::load_first(&dir))
            .await
            .unwrap_or_else(|_| Err(CniError::NoConfig(self.conf_dir.clone())))
    }

    fn runtime_conf(&self, pod: &PodRef, netns: &Path, opts: &PodNetworkOptions) -> RuntimeConf {
        RuntimeConf {
            container_id: pod.sandbox_id.clone(),
            netns: netns.to_path_buf(),
            ifname: POD_IFNAME.into(),
            args: pod.cni_args(),
            capability_args: opts.capability_args(),
        }
    }

    /// Creates the pod's namespace and runs CNI ADD in it. On failure nothing
    /// is left behind: the attachment is deleted and the namespace removed.
    pub async fn setup(
        &self,
        pod: &PodRef,
        opts: &PodNetworkOptions,
    ) -> Result<PodNetwork, NetworkError> {
        let list = self.load_config().await?;
        let ns = NetNs::create(&self.netns_dir, &pod.sandbox_id).await?;
        match ns.run(netns::loopback_up).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(pod = %pod.sandbox_id, error = %e, "cannot bring up the pod's loopback")
            }
            Err(e) => {
                tracing::warn!(pod = %pod.sandbox_id, error = %e, "cannot enter the pod's network namespace")
            }
        }
        let rt = self.runtime_conf(pod, ns.path(), opts);
        match self.cni.add(&list, &rt).await {
            Ok(result) => {
                let ips = result.pod_ips();
                Ok(PodNetwork {
                    netns: ns,
                    result,
                    ips,
                })
            }
            // `add` has already DELeted whatever plugins ran.
            Err(e) => match ns.remove().await {
                Ok(()) => Err(e.into()),
                Err(r) => Err(NetworkError::Cleanup {
                    pod: pod.sandbox_id.clone(),
                    source: Box::new(e.into()),
                    cleanup: r.to_string(),
                }),
            },
        }
    }

    /// CHECKs a pod's attachment (a no-op for configs with disableCheck).
    pub async fn check(&self, pod: &PodRef, netns: &Path) -> Result<(), NetworkError> {
        let list = self.load_config().await?;
        let rt = self.runtime_conf(pod, netns, &PodNetworkOptions::default());
        Ok(self.cni.check(&list, &rt).await?)
    }

    /// CNI DEL (retried; idempotent) and removal of the namespace. `netns` is
    /// the pin path recorded at setup.
    pub async fn teardown(&self, pod: &PodRef, netns: &Path) -> Result<(), NetworkError> {
        let list = match self.load_config().await {
            Ok(l) => Some(l),
            Err(CniError::NoConfig(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let rt = self.runtime_conf(pod, netns, &PodNetworkOptions::default());
        self.cni.del(list.as_ref(), &rt).await?;
        NetNs::from_path(netns).remove().await?;
        Ok(())
    }
}

/// The network `berthd config cni` writes: a bridge with NAT for pod
/// egress, addresses from 10.88.0.0/16, host port mappings, and loopback.
pub fn default_conflist() -> String {
    let v = json!({
        "cniVersion": "1.0.0",
        "name": "berth",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "berth0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.88.0.0/16"}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// Writes [`default_conflist`] as `<dir>/10-berth.conflist` when `dir` has
/// no network config yet; returns the path written, or None if one exists.
pub fn install_default_conflist(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    if NetworkConfigList::load_first(dir).is_ok() {
        return Ok(None);
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join("10-berth.conflist");
    berth_sysutil::write_atomic(&path, default_conflist().as_bytes())?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_become_the_portmap_capability() {
        let opts = PodNetworkOptions {
            port_mappings: vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: "TCP".into(),
                    host_ip: String::new(),
                },
                PortMapping {
                    host_port: 0,
                    container_port: 81,
                    protocol: "tcp".into(),
                    host_ip: String::new(),
                },
            ],
            ..Default::default()
        };
        let caps = opts.capability_args();
        assert_eq!(
            caps["portMappings"],
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
        );
        assert!(PodNetworkOptions::default().capability_args().is_empty());
    }

    #[test]
    fn default_network_loads_and_installs_once() {
        let dir = tempfile::tempdir().unwrap();
        let list = NetworkConfigList::from_conflist(
            default_conflist().as_bytes(),
            Path::new("x.conflist"),
        )
        .unwrap();
        assert_eq!(list.name, "berth");
        let p = install_default_conflist(dir.path()).unwrap().unwrap();
        assert!(p.ends_with("10-berth.conflist"));
        assert_eq!(install_default_conflist(dir.path()).unwrap(), None);
    }

    #[test]
    fn cni_args_name_the_pod() {
        let pod = PodRef {
            sandbox_id: "s1".into(),
            name: "web".into(),
            namespace: "default".into(),
            uid: "u1".into(),
        };
        let args: Vec<String> = pod
            .cni_args()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            args.join(";"),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=s1;K8S_POD_UID=u1"
        );
    }
}
