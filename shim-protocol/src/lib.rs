//! What berthd and berth-shim agree on beyond the containerd task API itself:
//! the annotations a bundle's `config.json` carries for the shim, the
//! environment a shim is started with, the containerd namespace and runtime
//! name, and the default paths. One definition each, so the two binaries
//! cannot drift apart.

/// The containerd namespace berth's containers live in (runc's `--root` is
/// `<runc root>/<namespace>`).
pub const NAMESPACE: &str = "berth";

/// The runtime name berth-shim registers as (containerd's `runtime_type`).
pub const RUNTIME_NAME: &str = "io.containerd.berth.v2";

/// Bundle annotations (`config.json` `annotations`) the shim reads.
pub mod annotations {
    /// The pod sandbox a container belongs to: containers with the same value
    /// share one shim (as containerd's runc shim groups them).
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    /// `sandbox` or `container`.
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
    pub const CONTAINER_TYPE_CONTAINER: &str = "container";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    /// `"true"`: the shim writes the container's CRI log itself and reopens it
    /// on `ReopenContainerLog` (berth's extension; containerd's shim only pipes).
    pub const REOPEN_LOG: &str = "io.berth.shim.reopen-log";
}

/// The environment berthd starts a shim with.
pub mod env {
    /// Directory for shim sockets (default [`super::DEFAULT_SOCKET_DIR`]).
    pub const SOCKET_DIR: &str = "BERTH_SHIM_SOCKET_DIR";
    /// The OCI runtime binary (default [`super::DEFAULT_RUNTIME`]).
    pub const RUNTIME: &str = "BERTH_SHIM_RUNTIME";
    /// Base of the runtime's `--root` (default [`super::DEFAULT_RUNC_ROOT`]);
    /// the namespace is appended.
    pub const RUNC_ROOT: &str = "BERTH_SHIM_RUNC_ROOT";
    /// File for the shim's own log (default: the bundle's `log` FIFO when
    /// containerd created one, else `<bundle>/shim.log`).
    pub const LOG: &str = "BERTH_SHIM_LOG";
    /// Set by containerd: its ttrpc socket, where events are forwarded.
    pub const TTRPC_ADDRESS: &str = "TTRPC_ADDRESS";
}

pub const DEFAULT_SOCKET_DIR: &str = "/run/berth/s";
pub const DEFAULT_RUNC_ROOT: &str = "/run/berth/runc";
pub const DEFAULT_RUNTIME: &str = "runc";
