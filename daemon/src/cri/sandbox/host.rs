//! The seam between the pod sandbox state machine and the host: what a pod
//! holds there (pinned IPC/UTS namespaces, a /dev/shm tmpfs, a network
//! namespace with its CNI attachment) is made and undone through
//! [`SandboxHost`]. [`NodeHost`] does it for real (root only: mounts,
//! namespaces, CNI plugins); unit tests use an in-memory fake
//! (`fake_host.rs`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use berth_network::podns::{self, PodNamespaces, PodNsError};
use berth_network::{CniError, NetworkError, PodNetworkOptions, PodNetworks, PodRef};

use super::super::podfiles;

/// A pod's network after a successful setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAttachment {
    /// The pinned network namespace.
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
}

/// What a pod sandbox makes on the host. Every undo is idempotent: what is
/// already gone is fine, so a failed stop or remove can be repeated.
#[async_trait]
pub trait SandboxHost: Send + Sync {
    /// Where the pod's network namespace is pinned (recorded before it
    /// exists, so a crash during setup is torn down at start).
    fn netns_path(&self, sandbox_id: &str) -> PathBuf;

    /// Pins new IPC and/or UTS namespaces for the pod (`uts` carries the
    /// hostname set in the new UTS namespace). On error nothing is left.
    async fn pin_namespaces(
        &self,
        sandbox_id: &str,
        ipc: bool,
        uts: Option<&str>,
    ) -> Result<PodNamespaces, PodNsError>;

    /// Removes the pod's namespace pins.
    async fn unpin_namespaces(&self, sandbox_id: &str) -> Result<(), PodNsError>;

    /// Mounts the pod's /dev/shm (a tmpfs at `<pod_dir>/shm`); returns it.
    async fn mount_shm(&self, pod_dir: &Path) -> std::io::Result<PathBuf>;

    /// Unmounts the pod's /dev/shm.
    async fn unmount_shm(&self, pod_dir: &Path) -> std::io::Result<()>;

    /// Creates the pod's network namespace and attaches it (CNI ADD). On
    /// failure nothing is left behind.
    async fn setup_network(
        &self,
        pod: &PodRef,
        opts: &PodNetworkOptions,
    ) -> Result<PodAttachment, NetworkError>;

    /// Detaches the pod (CNI DEL) and removes its network namespace.
    async fn teardown_network(&self, pod: &PodRef, netns: &Path) -> Result<(), NetworkError>;

    /// The name of the network pods get now (an error: the network plugin
    /// is not ready).
    async fn network_name(&self) -> Result<String, CniError>;
}

/// The host for real: CNI and pinned namespaces from `berth_network`, the
/// shm tmpfs from [`podfiles`].
pub struct NodeHost {
    networks: PodNetworks,
    /// Where the IPC/UTS pins go (`<state>/sandboxes`).
    sandboxes_dir: PathBuf,
}

impl NodeHost {
    pub fn new(networks: PodNetworks, sandboxes_dir: PathBuf) -> NodeHost {
        NodeHost {
            networks,
            sandboxes_dir,
        }
    }
}

/// Runs blocking host work off the async workers.
async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
}

#[async_trait]
impl SandboxHost for NodeHost {
    fn netns_path(&self, sandbox_id: &str) -> PathBuf {
        self.networks.netns_dir().join(sandbox_id)
    }

    async fn pin_namespaces(
        &self,
        sandbox_id: &str,
        ipc: bool,
        uts: Option<&str>,
    ) -> Result<PodNamespaces, PodNsError> {
        podns::pin(&self.sandboxes_dir, sandbox_id, ipc, uts).await
    }

    async fn unpin_namespaces(&self, sandbox_id: &str) -> Result<(), PodNsError> {
        podns::unpin(&self.sandboxes_dir, sandbox_id).await
    }

    async fn mount_shm(&self, pod_dir: &Path) -> std::io::Result<PathBuf> {
        let dir = pod_dir.to_path_buf();
        off_thread(move || podfiles::mount_shm(&dir)).await
    }

    async fn unmount_shm(&self, pod_dir: &Path) -> std::io::Result<()> {
        let dir = pod_dir.to_path_buf();
        off_thread(move || podfiles::unmount_shm(&dir)).await
    }

    async fn setup_network(
        &self,
        pod: &PodRef,
        opts: &PodNetworkOptions,
    ) -> Result<PodAttachment, NetworkError> {
        let net = self.networks.setup(pod, opts).await?;
        Ok(PodAttachment {
            netns: net.netns.path().to_path_buf(),
            ips: net.ips,
        })
    }

    async fn teardown_network(&self, pod: &PodRef, netns: &Path) -> Result<(), NetworkError> {
        self.networks.teardown(pod, netns).await
    }

    async fn network_name(&self) -> Result<String, CniError> {
        self.networks.load_config().await.map(|l| l.name)
    }
}
