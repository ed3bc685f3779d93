//! berthd's configuration: a TOML file whose every field has a default, so a
//! missing file or an empty one both mean "defaults". Command-line flags are
//! applied on top by `main`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";
pub const DEFAULT_ROOT: &str = "/var/lib/berth";
pub const DEFAULT_STATE: &str = "/run/berth";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing config {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid config {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent data: content, snapshots, metadata.
    pub root: PathBuf,
    /// Runtime state (tmpfs): socket, pods, bundles.
    pub state: PathBuf,
    /// gRPC socket; empty means `<state>/berth.sock`.
    pub address: PathBuf,
    /// tracing filter, e.g. "info" or "berthd=debug,info".
    pub log_level: String,
    /// "text" or "json".
    pub log_format: String,
    /// How long start waits for the root's lock while a previous berthd
    /// (killed, still exiting) holds it, before giving up (seconds).
    pub root_lock_wait_secs: u64,
    pub registry: RegistryConfig,
    pub pull: PullConfig,
    pub gc: GcConfig,
    pub snapshotter: SnapshotterConfig,
    pub shim: ShimConfig,
    pub cni: CniConfig,
    pub cri: CriConfig,
    pub streaming: StreamingConfig,
    pub metrics: MetricsConfig,
}

/// The Prometheus endpoint (`GET /metrics`, OpenMetrics text), off by
/// default as containerd's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` to serve on, e.g. "127.0.0.1:1338"; empty: no endpoint.
    pub address: String,
    /// Scrapes served at once; more connections wait in the backlog.
    pub max_connections: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            address: String::new(),
            max_connections: 16,
        }
    }
}

/// The streaming server (exec/attach/port-forward URLs the CRI hands out).
pub use berth_streaming::StreamingConfig;

// Defaults of the [cri] size limits (Kubernetes' own where it has one).
/// The largest CRI request berthd decodes: kubelet's and crictl's own limit
/// for what they send and receive.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// All labels of one object together (keys and values).
pub const MAX_LABELS_TOTAL: usize = 64 << 10;
/// All annotations of one object together (keys and values).
pub const MAX_ANNOTATIONS_TOTAL: usize = 256 << 10;
/// What one list reply (ListPodSandbox, ListContainers) may reach before a
/// new pod or container is refused: kubelet's 16 MiB less room for the
/// stats replies, which carry the same labels with the stats beside them.
pub const MAX_LIST_BYTES: usize = 12 << 20;

/// The CRI runtime service: how pods hold their namespaces, cgroups, limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CriConfig {
    /// "pinned" (default): a pod's network, IPC and UTS namespaces are
    /// bind-mounted files under the state dir, with no pause process and no
    /// image to pull; "pause": a pause container from `sandbox_image` holds
    /// them (needed for pods sharing one PID namespace).
    pub sandbox_mode: String,
    /// The pause image for "pause" mode and for pods that share a PID
    /// namespace (kubelet 1.29's default); pulled when a pod first needs it,
    /// and reported `pinned` so kubelet's image GC keeps it. "" = none: pods
    /// sharing a PID namespace then get one per container.
    pub sandbox_image: String,
    /// "cgroupfs" (default) or "systemd", as kubelet's cgroupDriver.
    pub cgroup_driver: String,
    /// The cgroup parent of pods whose config names none: each such pod gets
    /// `<cgroup_parent>/<pod id>` (cgroupfs driver).
    pub cgroup_parent: String,
    /// Output kept per stream by ExecSync (bytes); the rest is discarded.
    pub max_exec_output_bytes: usize,
    /// Containers per ListContainers/StreamContainers message.
    pub stream_chunk: usize,
    /// The largest CRI request decoded (bytes; kubelet's own send limit).
    pub max_request_bytes: usize,
    /// All labels of one pod or container together (keys and values, bytes).
    pub max_labels_bytes: usize,
    /// All annotations of one pod or container together (bytes;
    /// Kubernetes' own limit).
    pub max_annotations_bytes: usize,
    /// A pod or container whose labels and annotations would make
    /// ListPodSandbox or ListContainers larger than this is refused
    /// (bytes): kubelet and crictl refuse replies over 16 MiB, and the stats
    /// replies carry the same labels with a little more.
    pub max_list_bytes: usize,
    /// The RuntimeClass handler of pods that name none (an empty
    /// `runtime_handler`). When `runtimes` has no table of that name, it is
    /// the `[shim]` runtime and root (berth before RuntimeClass).
    pub default_runtime: String,
    /// RuntimeClass handlers by name (`[cri.runtimes.<name>]`), as
    /// containerd's `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]`.
    pub runtimes: BTreeMap<String, RuntimeHandlerConfig>,
}

/// One RuntimeClass handler: the OCI runtime its pods' containers run with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeHandlerConfig {
    /// The OCI runtime binary (runc, crun or another runc-compatible one; a
    /// name looked up in PATH or a path).
    pub runtime: String,
    /// The runtime's state root; empty means `<state>/runtimes/<name>` (the
    /// `[shim]` root for the default handler).
    pub root: PathBuf,
    /// `--systemd-cgroup` (needs `cri.cgroup_driver = "systemd"`).
    pub systemd_cgroup: bool,
    /// `--no-pivot` on create (for rootfs on ramfs, where pivot_root fails).
    pub no_pivot_root: bool,
    /// Pod annotation keys passed to the OCI spec of the pod's containers
    /// (`*` matches any run of characters but `/`, as Go's `path.Match`).
    pub pod_annotations: Vec<String>,
}

impl Default for RuntimeHandlerConfig {
    fn default() -> Self {
        RuntimeHandlerConfig {
            runtime: "runc".into(),
            root: PathBuf::new(),
            systemd_cgroup: false,
            no_pivot_root: false,
            pod_annotations: Vec::new(),
        }
    }
}

/// A handler as pods use it: name, binary and root resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuntimeHandler {
    pub name: String,
    pub runtime: String,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    pub no_pivot_root: bool,
    pub pod_annotations: Vec<String>,
}

impl RuntimeHandler {
    /// The pod annotations this handler passes to container specs.
    pub fn passthrough<'a>(
        &self,
        annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Vec<(String, String)> {
        annotations
            .into_iter()
            .filter(|(k, _)| self.pod_annotations.iter().any(|p| glob_match(p, k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Go's `path.Match` without character classes: `*` is any run of
/// characters but `/`, `?` one such character, `\\` escapes.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => {
                let mut i = 0;
                loop {
                    if go(rest, &n[i..]) {
                        return true;
                    }
                    if i == n.len() || n[i] == '/' {
                        return false;
                    }
                    i += 1;
                }
            }
            Some(('?', rest)) => n
                .split_first()
                .is_some_and(|(c, nr)| *c != '/' && go(rest, nr)),
            Some(('\\', rest)) if !rest.is_empty() => {
                n.first() == Some(&rest[0]) && go(&rest[1..], &n[1..])
            }
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// A handler name as Kubernetes allows it for a RuntimeClass (a DNS label).
fn valid_handler_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The pause image kubelet 1.29 uses (`--pod-infra-container-image`).
pub const DEFAULT_SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.9";

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            sandbox_mode: "pinned".into(),
            sandbox_image: DEFAULT_SANDBOX_IMAGE.into(),
            cgroup_driver: "cgroupfs".into(),
            cgroup_parent: "/berth".into(),
            max_exec_output_bytes: 16 << 20,
            stream_chunk: 256,
            max_request_bytes: MAX_MESSAGE_BYTES,
            max_labels_bytes: MAX_LABELS_TOTAL,
            max_annotations_bytes: MAX_ANNOTATIONS_TOTAL,
            max_list_bytes: MAX_LIST_BYTES,
            default_runtime: "runc".into(),
            runtimes: BTreeMap::new(),
        }
    }
}

/// Pod networking: where CNI configs and plugins live, and where pod network
/// namespaces are pinned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    /// Directory searched (in lexical order) for the first `*.conflist`,
    /// `*.conf` or `*.json` network config.
    pub conf_dir: PathBuf,
    /// Directories searched, in order, for plugin binaries.
    pub bin_dirs: Vec<PathBuf>,
    /// Where pod network namespaces are bind-mounted; empty means
    /// `<state>/netns`.
    pub netns_dir: PathBuf,
    /// One plugin invocation (ADD, DEL or CHECK) gives up after this long
    /// (seconds).
    pub plugin_timeout_secs: u64,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            netns_dir: PathBuf::new(),
            plugin_timeout_secs: 30,
        }
    }
}

impl CniConfig {
    pub fn plugin_timeout(&self) -> Duration {
        Duration::from_secs(self.plugin_timeout_secs.max(1))
    }
}

/// How berthd starts and talks to the per-pod shims.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShimConfig {
    /// The shim binary: a path, or a name looked up in PATH. Empty means
    /// `berth-shim` next to berthd's own executable, else in PATH. Debian's
    /// `containerd-shim-runc-v2` works too.
    pub binary: String,
    /// The OCI runtime the shim drives ("runc", "crun", or a path).
    pub runtime: String,
    /// The OCI runtime's state root; empty means `<state>/runc`. The shim
    /// keeps each namespace under `<runtime_root>/berth`.
    pub runtime_root: PathBuf,
    /// Where a shim that supports it (bootstrap protocol) puts its socket;
    /// empty means `<state>/s`.
    pub socket_dir: PathBuf,
    /// How the shim writes a task's stdout/stderr: "file" (raw output, the
    /// `file://` scheme containerd's runc shim understands), "cri-log" (CRI log
    /// format, written by berth-shim) or "auto" (file for containerd's shims,
    /// cri-log otherwise).
    pub stdio: String,
    /// Whether `start` gets containerd 2.3's bootstrap parameters on stdin:
    /// "auto" (all but containerd's own shims), "always" or "never".
    pub bootstrap: String,
    /// Starting a shim (its `start` or `delete` command) gives up after this
    /// long (seconds).
    pub start_timeout_secs: u64,
    /// Calls to a shim other than Wait give up after this long (seconds).
    pub rpc_timeout_secs: u64,
}

impl Default for ShimConfig {
    fn default() -> Self {
        ShimConfig {
            binary: String::new(),
            runtime: "runc".into(),
            runtime_root: PathBuf::new(),
            socket_dir: PathBuf::new(),
            stdio: "auto".into(),
            bootstrap: "auto".into(),
            start_timeout_secs: 10,
            rpc_timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotterConfig {
    /// "overlayfs" (default) or "native" (plain copies, for filesystems
    /// where overlayfs cannot run).
    pub backend: String,
    /// Whether layers may create character/block device nodes.
    pub allow_device_nodes: bool,
    /// Largest single file a layer may create (bytes).
    pub max_file_bytes: u64,
    /// Largest uncompressed layer (bytes).
    pub max_layer_bytes: u64,
    /// Most entries in one layer.
    pub max_layer_entries: u64,
}

impl Default for SnapshotterConfig {
    fn default() -> Self {
        SnapshotterConfig {
            backend: "overlayfs".into(),
            allow_device_nodes: true,
            max_file_bytes: 64 << 30,
            max_layer_bytes: 256 << 30,
            max_layer_entries: 10_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Directory of containerd-style `<host>/hosts.toml` files.
    pub config_path: PathBuf,
    /// Credentials per registry host (e.g. "127.0.0.1:5000" or "docker.io").
    pub auths: BTreeMap<String, AuthConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub username: String,
    pub password: String,
    /// Identity or bearer token, used instead of username/password.
    pub identity_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PullConfig {
    /// Layers fetched at once per pull.
    pub max_concurrent_downloads: usize,
    /// A transfer that makes no progress for this long fails (seconds).
    pub no_progress_timeout_secs: u64,
    /// From the end of its first `no_progress_timeout_secs` on, a transfer
    /// (manifest, config, layer) that averages fewer bytes a second than this
    /// fails like a stalled one: a registry sending a byte just inside each
    /// timeout could otherwise hold a pull for days. (A token response must
    /// arrive whole within the no-progress timeout.) 0: no minimum.
    pub min_transfer_rate: u64,
    /// Connecting to a registry gives up after this long (seconds).
    pub connect_timeout_secs: u64,
    /// Manifests and indexes larger than this are refused (bytes).
    pub max_manifest_bytes: u64,
    /// Image configs larger than this are refused (bytes).
    pub max_config_bytes: u64,
    /// Blobs (layers) whose descriptor declares more than this are refused
    /// before a byte is fetched (bytes; default 64 GiB, a quarter of
    /// `snapshotter.max_layer_bytes`: a compressed layer is smaller than what
    /// it unpacks to). A registry that sends more than a descriptor declares
    /// is cut off at the declared size whatever this says. A blob is also
    /// refused up front when it cannot fit in the free space of the content
    /// store's filesystem (less a reserve of 1%, at most 64 MiB).
    pub max_blob_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Ingests untouched for this long are removed at start (seconds).
    pub stale_ingest_secs: u64,
    /// How long a pull's partial download is kept for a retry to resume
    /// (seconds). A pull keeps one only when it failed on a transient error
    /// (a stall, a broken connection, a 5xx) from a registry that serves byte
    /// ranges; a cancelled pull, a failure a retry cannot cure (digest or
    /// size mismatch, a limit, a full disk, a 4xx) and a registry without
    /// ranges remove the ingest at once. Kept ones idle for longer than this
    /// are swept while berthd runs and at start. 0: never kept.
    pub partial_ingest_keep_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            state: PathBuf::from(DEFAULT_STATE),
            address: PathBuf::new(),
            log_level: "info".into(),
            log_format: "text".into(),
            root_lock_wait_secs: 60,
            registry: RegistryConfig::default(),
            pull: PullConfig::default(),
            gc: GcConfig::default(),
            snapshotter: SnapshotterConfig::default(),
            shim: ShimConfig::default(),
            cni: CniConfig::default(),
            cri: CriConfig::default(),
            streaming: StreamingConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            config_path: PathBuf::from("/etc/berth/certs.d"),
            auths: BTreeMap::new(),
        }
    }
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            max_concurrent_downloads: 3,
            no_progress_timeout_secs: 30,
            min_transfer_rate: 4096,
            connect_timeout_secs: 10,
            max_manifest_bytes: 4 << 20,
            max_config_bytes: 8 << 20,
            max_blob_bytes: 64 << 30,
        }
    }
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            stale_ingest_secs: 24 * 3600,
            // kubelet's image pull back-off tops out at 5 minutes: a retry
            // it schedules comes well within this.
            partial_ingest_keep_secs: 600,
        }
    }
}

impl PullConfig {
    pub fn no_progress_timeout(&self) -> Duration {
        Duration::from_secs(self.no_progress_timeout_secs.max(1))
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }
}

impl Config {
    /// Loads the file at `path`; a missing file means defaults, as the issue asks.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |reason: &str| ConfigError::Invalid {
            path: path.into(),
            reason: reason.into(),
        };
        if self.pull.max_concurrent_downloads == 0 {
            return Err(invalid("pull.max_concurrent_downloads must be at least 1"));
        }
        if !matches!(self.snapshotter.backend.as_str(), "overlayfs" | "native") {
            return Err(invalid(
                "snapshotter.backend must be \"overlayfs\" or \"native\"",
            ));
        }
        if !matches!(self.shim.stdio.as_str(), "auto" | "file" | "cri-log") {
            return Err(invalid(
                "shim.stdio must be \"auto\", \"file\" or \"cri-log\"",
            ));
        }
        if !matches!(self.shim.bootstrap.as_str(), "auto" | "always" | "never") {
            return Err(invalid(
                "shim.bootstrap must be \"auto\", \"always\" or \"never\"",
            ));
        }
        if self.shim.runtime.trim().is_empty() {
            return Err(invalid("shim.runtime must name an OCI runtime"));
        }
        if self.cni.bin_dirs.is_empty() {
            return Err(invalid("cni.bin_dirs must list at least one directory"));
        }
        if !matches!(self.cri.sandbox_mode.as_str(), "pinned" | "pause") {
            return Err(invalid("cri.sandbox_mode must be \"pinned\" or \"pause\""));
        }
        if !matches!(self.cri.cgroup_driver.as_str(), "cgroupfs" | "systemd") {
            return Err(invalid(
                "cri.cgroup_driver must be \"cgroupfs\" or \"systemd\"",
            ));
        }
        if self.cri.sandbox_mode == "pause" && self.cri.sandbox_image.trim().is_empty() {
            return Err(invalid(
                "cri.sandbox_mode \"pause\" needs cri.sandbox_image",
            ));
        }
        if !self.cri.cgroup_parent.is_empty() && !self.cri.cgroup_parent.starts_with('/') {
            return Err(invalid("cri.cgroup_parent must be an absolute cgroup path"));
        }
        if self
            .streaming
            .address
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(invalid(
                "streaming.address must be IP:PORT (port 0 = any free port)",
            ));
        }
        if self.streaming.tls_cert.as_os_str().is_empty()
            != self.streaming.tls_key.as_os_str().is_empty()
        {
            return Err(invalid(
                "streaming.tls_cert and streaming.tls_key go together",
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(invalid("log_format must be \"text\" or \"json\""));
        }
        if !valid_handler_name(&self.cri.default_runtime) {
            return Err(invalid(
                "cri.default_runtime must name a runtime handler (a DNS label)",
            ));
        }
        for (name, h) in &self.cri.runtimes {
            if !valid_handler_name(name) {
                return Err(invalid(&format!(
                    "cri.runtimes.{name:?}: a handler name must be a DNS label (a-z, 0-9, '-')"
                )));
            }
            if h.runtime.trim().is_empty() {
                return Err(invalid(&format!(
                    "cri.runtimes.{name}.runtime must name an OCI runtime"
                )));
            }
            if h.systemd_cgroup && self.cri.cgroup_driver != "systemd" {
                return Err(invalid(&format!(
                    "cri.runtimes.{name}.systemd_cgroup needs cri.cgroup_driver = \"systemd\""
                )));
            }
        }
        let mut roots: Vec<PathBuf> = self
            .runtime_handlers()
            .into_iter()
            .map(|h| h.root)
            .collect();
        roots.sort();
        if roots.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid(
                "two runtime handlers share one root (their containers would collide)",
            ));
        }
        Ok(())
    }

    /// Every RuntimeClass handler, the default first.
    pub fn runtime_handlers(&self) -> Vec<RuntimeHandler> {
        let default = &self.cri.default_runtime;
        let mut out = vec![self.resolve_handler(default, self.cri.runtimes.get(default))];
        out.extend(
            self.cri
                .runtimes
                .iter()
                .filter(|(n, _)| *n != default)
                .map(|(n, h)| self.resolve_handler(n, Some(h))),
        );
        out
    }

    /// The handler a pod asked for ("" = the default); None if unknown.
    pub fn runtime_handler(&self, name: &str) -> Option<RuntimeHandler> {
        let name = if name.is_empty() {
            self.cri.default_runtime.as_str()
        } else {
            name
        };
        if name == self.cri.default_runtime {
            return Some(self.resolve_handler(name, self.cri.runtimes.get(name)));
        }
        self.cri
            .runtimes
            .get(name)
            .map(|h| self.resolve_handler(name, Some(h)))
    }

    fn resolve_handler(&self, name: &str, h: Option<&RuntimeHandlerConfig>) -> RuntimeHandler {
        let is_default = name == self.cri.default_runtime;
        match h {
            // The default handler without a table is the [shim] runtime.
            None => RuntimeHandler {
                name: name.to_string(),
                runtime: self.shim.runtime.clone(),
                root: self.runtime_root(),
                systemd_cgroup: false,
                no_pivot_root: false,
                pod_annotations: Vec::new(),
            },
            Some(h) => RuntimeHandler {
                name: name.to_string(),
                runtime: h.runtime.clone(),
                root: if !h.root.as_os_str().is_empty() {
                    h.root.clone()
                } else if is_default {
                    self.runtime_root()
                } else {
                    self.state.join("runtimes").join(name)
                },
                systemd_cgroup: h.systemd_cgroup,
                no_pivot_root: h.no_pivot_root,
                pod_annotations: h.pod_annotations.clone(),
            },
        }
    }

    /// The socket path, defaulting to `<state>/berth.sock`.
    pub fn socket_path(&self) -> PathBuf {
        if self.address.as_os_str().is_empty() {
            self.state.join("berth.sock")
        } else {
            self.address.clone()
        }
    }

    /// The OCI runtime's state root, defaulting to `<state>/runc`.
    pub fn runtime_root(&self) -> PathBuf {
        if self.shim.runtime_root.as_os_str().is_empty() {
            self.state.join("runc")
        } else {
            self.shim.runtime_root.clone()
        }
    }

    /// The shim socket directory, defaulting to `<state>/s`.
    pub fn shim_socket_dir(&self) -> PathBuf {
        if self.shim.socket_dir.as_os_str().is_empty() {
            self.state.join("s")
        } else {
            self.shim.socket_dir.clone()
        }
    }

    /// Where pod network namespaces are pinned, defaulting to `<state>/netns`.
    /// Per-pod files (resolv.conf, hostname, hosts, shm, namespace pins).
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.state.join("sandboxes")
    }

    pub fn netns_dir(&self) -> PathBuf {
        if self.cni.netns_dir.as_os_str().is_empty() {
            self.state.join("netns")
        } else {
            self.cni.netns_dir.clone()
        }
    }

    /// Where CNI ADD results are cached for DEL and CHECK: `<state>/cni`.
    pub fn cni_cache_dir(&self) -> PathBuf {
        self.state.join("cni")
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_defaults() {
        let cfg = Config::load(Path::new("/nonexistent/berth.toml")).unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.socket_path(), PathBuf::from("/run/berth/berth.sock"));
    }

    #[test]
    fn default_round_trips() {
        let text = Config::default().to_toml();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "root = \"/x\"\n[pull]\nmax_concurrent_downloads = 5\n[registry.auths.\"127.0.0.1:5000\"]\nusername = \"u\"\npassword = \"p\"\n",
        )
        .unwrap();
        let cfg = Config::load(&p).unwrap();
        assert_eq!(cfg.root, PathBuf::from("/x"));
        assert_eq!(cfg.pull.max_concurrent_downloads, 5);
        assert_eq!(cfg.pull.no_progress_timeout_secs, 30);
        assert_eq!(cfg.registry.auths["127.0.0.1:5000"].username, "u");
    }

    #[test]
    fn unknown_field_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "rooot = \"/x\"\n").unwrap();
        let err = format!("{:#}", anyhow::Error::from(Config::load(&p).unwrap_err()));
        assert!(err.contains("rooot"), "{err}");
        std::fs::write(&p, "[pull]\nmax_concurrent_downloads = 0\n").unwrap();
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(err.contains("max_concurrent_downloads"), "{err}");
        std::fs::write(&p, "[shim]\nstdio = \"fifo\"\n").unwrap();
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(err.contains("shim.stdio"), "{err}");
    }

    #[test]
    fn shim_section_and_derived_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "state = \"/s\"\n[shim]\nbinary = \"containerd-shim-runc-v2\"\n",
        )
        .unwrap();
        let cfg = Config::load(&p).unwrap();
        assert_eq!(cfg.shim.binary, "containerd-shim-runc-v2");
        assert_eq!(cfg.shim.runtime, "runc");
        assert_eq!(cfg.runtime_root(), PathBuf::from("/s/runc"));
        assert_eq!(cfg.shim_socket_dir(), PathBuf::from("/s/s"));
    }

    #[test]
    fn runtime_handlers_default_from_shim_and_tables() {
        let cfg = Config::default();
        let hs = cfg.runtime_handlers();
        assert_eq!(hs.len(), 1);
        assert_eq!(hs[0].name, "runc");
        assert_eq!(hs[0].runtime, "runc");
        assert_eq!(hs[0].root, PathBuf::from("/run/berth/runc"));
        assert_eq!(cfg.runtime_handler("").unwrap().name, "runc");
        assert!(cfg.runtime_handler("kata").is_none());

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "state = \"/s\"\n[cri.runtimes.runc-alt]\nroot = \"/alt\"\nno_pivot_root = true\n\
             pod_annotations = [\"example.com/*\"]\n[cri.runtimes.crun]\nruntime = \"crun\"\n",
        )
        .unwrap();
        let cfg = Config::load(&p).unwrap();
        let names: Vec<String> = cfg.runtime_handlers().into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["runc", "crun", "runc-alt"]);
        let alt = cfg.runtime_handler("runc-alt").unwrap();
        assert_eq!(alt.runtime, "runc");
        assert_eq!(alt.root, PathBuf::from("/alt"));
        assert!(alt.no_pivot_root);
        let crun = cfg.runtime_handler("crun").unwrap();
        assert_eq!(crun.root, PathBuf::from("/s/runtimes/crun"));
        assert_eq!(
            cfg.runtime_handler("").unwrap().root,
            PathBuf::from("/s/runc")
        );

        // A table for the default handler replaces the [shim] runtime.
        std::fs::write(
            &p,
            "state = \"/s\"\n[cri]\ndefault_runtime = \"crun\"\n[cri.runtimes.crun]\nruntime = \"/usr/bin/crun\"\n",
        )
        .unwrap();
        let cfg = Config::load(&p).unwrap();
        let hs = cfg.runtime_handlers();
        assert_eq!(hs.len(), 1);
        assert_eq!(hs[0].runtime, "/usr/bin/crun");
        assert_eq!(hs[0].root, PathBuf::from("/s/runc"));
    }

    #[test]
    fn runtime_handlers_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        for (toml, needle) in [
            ("[cri.runtimes.Bad_Name]\n", "Bad_Name"),
            ("[cri]\ndefault_runtime = \"\"\n", "default_runtime"),
            (
                "[cri.runtimes.x]\nruntime = \" \"\n",
                "cri.runtimes.x.runtime",
            ),
            (
                "[cri.runtimes.x]\nsystemd_cgroup = true\n",
                "systemd_cgroup",
            ),
            (
                "[cri.runtimes.x]\nroot = \"/run/berth/runc\"\n",
                "share one root",
            ),
            ("[cri.runtimes.x]\nbinary = \"y\"\n", "binary"),
        ] {
            std::fs::write(&p, toml).unwrap();
            let err = format!("{:#}", anyhow::Error::from(Config::load(&p).unwrap_err()));
            assert!(err.contains(needle), "{toml}: {err}");
        }
    }

    #[test]
    fn pod_annotation_patterns_match_like_go_path_match() {
        assert!(glob_match("example.com/*", "example.com/a"));
        assert!(!glob_match("example.com/*", "example.com/a/b"));
        assert!(!glob_match("example.com/*", "other.com/a"));
        assert!(glob_match("io.kata?", "io.katax"));
        assert!(glob_match("*", "plain"));
        assert!(!glob_match("*", "a/b"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("a\\*", "a*"));
        assert!(!glob_match("a\\*", "ab"));
        let h = RuntimeHandler {
            name: "x".into(),
            runtime: "runc".into(),
            root: "/r".into(),
            systemd_cgroup: false,
            no_pivot_root: false,
            pod_annotations: vec!["example.com/*".into()],
        };
        let ann: BTreeMap<String, String> = [("example.com/k", "v"), ("other", "w")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            h.passthrough(&ann),
            [("example.com/k".to_string(), "v".to_string())]
        );
    }

    #[test]
    fn cni_section_defaults_and_overrides() {
        let cfg = Config::default();
        assert_eq!(cfg.cni.conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(
            cfg.cni.bin_dirs,
            vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")]
        );
        assert_eq!(cfg.netns_dir(), PathBuf::from("/run/berth/netns"));
        assert_eq!(cfg.cni.plugin_timeout(), Duration::from_secs(30));

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "state = \"/s\"\n[cni]\nconf_dir = \"/c\"\nbin_dirs = [\"/b\"]\nplugin_timeout_secs = 5\n",
        )
        .unwrap();
        let cfg = Config::load(&p).unwrap();
        assert_eq!(cfg.cni.conf_dir, PathBuf::from("/c"));
        assert_eq!(cfg.cni.bin_dirs, vec![PathBuf::from("/b")]);
        assert_eq!(cfg.netns_dir(), PathBuf::from("/s/netns"));
        assert_eq!(cfg.cni_cache_dir(), PathBuf::from("/s/cni"));
        assert_eq!(cfg.cni.plugin_timeout(), Duration::from_secs(5));

        std::fs::write(&p, "[cni]\nnetns_dir = \"/n\"\nbin_dirs = []\n").unwrap();
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(err.contains("cni.bin_dirs"), "{err}");
    }
}
