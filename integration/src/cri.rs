//! Shared helpers for the CRI `runtime.v1` end-to-end tests: gRPC clients over
//! berthd's Unix socket, a per-test CNI network (unique bridge, subnet and
//! host-local data dir), a berthd started with it and the busybox fixture
//! imported, builders for pod and container configs, CRI log readers, and
//! leak checkers (netns pins, mounts, veths, cgroups, processes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use api::image_service_client::ImageServiceClient;
use api::runtime_service_client::RuntimeServiceClient;
pub use berth_api::runtime::v1 as api;

use crate::daemon::Daemon;
use crate::fixtures;
use crate::util::wait_for;

pub type Rt = RuntimeServiceClient<Channel>;
pub type Img = ImageServiceClient<Channel>;

/// CNI plugins from Debian's containernetworking-plugins.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";
/// The namespace every test pod is created in.
pub const POD_NAMESPACE: &str = "berth-e2e";
/// Generous deadline for anything asynchronous (a 2-core box shared with others).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Tests here change the host's links, routes and iptables; plugins running
/// at the same time can trip over each other (see tests/cni.rs). Tests that
/// run pods with CNI networking hold this for their whole run.
pub async fn host_network_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A number unique within this process.
pub fn next_seq() -> u32 {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A name unique to this process and call (`<prefix>-<pid>-<seq>`).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), next_seq())
}

/// Unix time in nanoseconds.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------- clients

/// A channel to berthd's gRPC socket.
pub async fn channel(socket: &Path) -> Result<Channel> {
    let path = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("connecting to berthd at {}", socket.display()))
}

/// A CRI RuntimeService client for `d`.
pub async fn runtime_client(d: &Daemon) -> Result<Rt> {
    Ok(RuntimeServiceClient::new(channel(&d.socket_path()).await?))
}

/// A CRI ImageService client for `d`.
pub async fn image_client(d: &Daemon) -> Result<Img> {
    Ok(ImageServiceClient::new(channel(&d.socket_path()).await?))
}

// ---------------------------------------------------------------- network

/// A per-test CNI network: its own bridge name, /24 subnet, conf dir,
/// host-local data dir and netns dir, all in a temp dir. On drop the netns
/// pins left below the netns dir are unmounted, the netns dir itself too, and
/// the bridge is deleted.
pub struct TestNet {
    dir: tempfile::TempDir,
    pub name: String,
    pub bridge: String,
    /// The first three octets of the subnet, e.g. "10.123.4".
    pub prefix: String,
    pub conf_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// berthd's `[cni] plugin_timeout_secs` for this network.
    pub plugin_timeout_secs: u64,
}

impl TestNet {
    /// A network with a bridge + host-local + portmap conflist.
    pub fn new() -> Result<Self> {
        let n = Self::empty()?;
        n.write_conflist(&n.bridge_conflist())?;
        Ok(n)
    }

    /// The dirs and names, with an empty conf dir (no network config).
    pub fn empty() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-cri-net-")
            .tempdir()?;
        let pid = std::process::id();
        let seq = next_seq();
        // IFNAMSIZ is 16: "bc" + 5 digits + "x" + up to 3 digits.
        let bridge = format!("bc{}x{}", pid % 100_000, seq % 1000);
        let prefix = pick_subnet(pid, seq)?;
        let conf_dir = dir.path().join("net.d");
        let netns_dir = dir.path().join("netns");
        std::fs::create_dir_all(&conf_dir)?;
        Ok(TestNet {
            name: format!("berthcri{}x{}", pid, seq),
            bridge,
            prefix,
            conf_dir,
            netns_dir,
            bin_dirs: vec![PathBuf::from(CNI_PLUGINS)],
            plugin_timeout_secs: 30,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The host-local IPAM data dir (leases live in `<ipam_dir>/<name>/`).
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// The gateway address on the bridge.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// bridge (gateway, no masquerade) + host-local on this net's subnet +
    /// portmap.
    pub fn bridge_conflist(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": format!("{}.0/24", self.prefix)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.ipam_dir(),
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
    }

    /// Writes `conflist` as the only config in the conf dir.
    pub fn write_conflist(&self, conflist: &Value) -> Result<()> {
        for e in std::fs::read_dir(&self.conf_dir)?.flatten() {
            std::fs::remove_file(e.path())?;
        }
        std::fs::write(
            self.conf_dir.join("10-berth-test.conflist"),
            serde_json::to_vec_pretty(conflist)?,
        )?;
        Ok(())
    }

    /// Adds a directory of stand-in plugins before the real ones.
    pub fn prepend_bin_dir(&mut self, dir: PathBuf) {
        self.bin_dirs.insert(0, dir);
    }

    /// Writes an executable stand-in CNI plugin `name` into `<dir>/bin` (added
    /// first to the bin dirs) that fails ADD with a CNI error whose message is
    /// `msg`, and succeeds DEL, CHECK and VERSION.
    pub fn add_failing_plugin(&mut self, name: &str, msg: &str) -> Result<PathBuf> {
        let bin = self.dir.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        let script = format!(
            r#"#!/bin/sh
cat >/dev/null
case "$CNI_COMMAND" in
ADD)
  echo '{{"cniVersion":"1.0.0","code":11,"msg":"{msg}","details":"stand-in plugin"}}'
  exit 1;;
VERSION)
  echo '{{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}}'
  exit 0;;
*)
  exit 0;;
esac
"#
        );
        let p = bin.join(name);
        std::fs::write(&p, script)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        if !self.bin_dirs.contains(&bin) {
            self.prepend_bin_dir(bin.clone());
        }
        Ok(p)
    }

    /// The `[cni]` section of berthd's config for this network.
    pub fn config_toml(&self) -> String {
        let bins: Vec<String> = self
            .bin_dirs
            .iter()
            .map(|b| format!("{:?}", b.display().to_string()))
            .collect();
        format!(
            "[cni]\nconf_dir = {:?}\nbin_dirs = [{}]\nnetns_dir = {:?}\nplugin_timeout_secs = {}\n",
            self.conf_dir.display().to_string(),
            bins.join(", "),
            self.netns_dir.display().to_string(),
            self.plugin_timeout_secs,
        )
    }

    /// Host-side interfaces enslaved to this net's bridge (the pods' veths).
    pub fn bridge_ports(&self) -> Vec<String> {
        bridge_ports(&self.bridge)
    }

    /// Entries (pins) in the netns dir plus mounts below it.
    pub fn netns_pins(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.netns_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path().display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        for m in mounts_under(&self.netns_dir) {
            if !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }

    /// host-local leases still held in this network.
    pub fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.ipam_dir().join(&self.name))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for m in mounts_under(&self.netns_dir) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        if let Ok(rd) = std::fs::read_dir(&self.netns_dir) {
            for e in rd.flatten() {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(e.path())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.netns_dir)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        remove_portmap_rules(&self.name);
    }
}

/// Removes the portmap plugin's NAT rules for the CNI network `net_name`
/// (left behind when a test fails before its pods are removed): each jump
/// from CNI-HOSTPORT-DNAT whose comment names the network, and the
/// per-pod CNI-DN-* chain it jumps to.
pub fn remove_portmap_rules(net_name: &str) {
    let needle = format!("dnat name: \"{net_name}\"");
    // Rule numbers shift after each delete: list again every time.
    for _ in 0..64 {
        let Ok(out) = Command::new("iptables")
            .args([
                "-t",
                "nat",
                "-L",
                "CNI-HOSTPORT-DNAT",
                "-n",
                "--line-numbers",
            ])
            .stderr(Stdio::null())
            .output()
        else {
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let Some((num, target)) = text.lines().find(|l| l.contains(&needle)).and_then(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        }) else {
            return;
        };
        let deleted = Command::new("iptables")
            .args(["-t", "nat", "-D", "CNI-HOSTPORT-DNAT", &num])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if target.starts_with("CNI-DN-") {
            for op in ["-F", "-X"] {
                let _ = Command::new("iptables")
                    .args(["-t", "nat", op, &target])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if !deleted {
            return;
        }
    }
}

/// A 10.X.Y.0/24 subnet derived from the pid and a sequence number that no
/// address or route on the host uses yet (avoiding 10.88 and 10.99, which
/// other runtimes and tests use).
fn pick_subnet(pid: u32, seq: u32) -> Result<String> {
    let used = {
        let a = Command::new("ip").args(["-4", "-o", "addr"]).output()?;
        let r = Command::new("ip").args(["-4", "route"]).output()?;
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&a.stdout),
            String::from_utf8_lossy(&r.stdout)
        )
    };
    for k in 0..200u32 {
        let x = 100 + (pid + k / 50) % 150;
        let y = 1 + (seq * 7 + k) % 250;
        let prefix = format!("10.{x}.{y}");
        if !used.contains(&format!("{prefix}.")) {
            return Ok(prefix);
        }
    }
    bail!("no free 10.x.y.0/24 subnet found")
}

/// Host-side interfaces enslaved to `bridge`.
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .stderr(Stdio::null())
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

// ---------------------------------------------------------------- env

/// How the `[cri]` section is set up.
#[derive(Debug, Clone)]
pub struct CriOpts {
    /// "pinned" or "pause".
    pub sandbox_mode: String,
    /// Import the pause fixture and name it as `sandbox_image`.
    pub pause_image: bool,
    /// `sandbox_image` as given (e.g. a registry reference to be pulled on
    /// demand); wins over `pause_image`.
    pub sandbox_image: Option<String>,
    /// `default_stop_timeout_secs`; left out of the config when `None`.
    pub default_stop_timeout_secs: Option<u64>,
    /// Extra TOML appended to the config.
    pub extra: String,
}

impl Default for CriOpts {
    fn default() -> Self {
        CriOpts {
            sandbox_mode: "pinned".into(),
            pause_image: false,
            sandbox_image: None,
            default_stop_timeout_secs: None,
            extra: String::new(),
        }
    }
}

/// Where berthd may keep per-pod state below its state dir.
pub const POD_STATE_DIRS: &[&str] = &["pods", "sandboxes"];

/// The name the busybox fixture is imported under.
pub const BUSYBOX: &str = "docker.io/berth-e2e/busybox:latest";
/// The name the pause fixture is imported under.
pub const PAUSE: &str = "docker.io/berth-e2e/pause:latest";

/// A berthd with a per-test CNI network, a per-test default cgroup parent, a
/// log dir for pods, and the busybox fixture imported. Drop order: the
/// daemon (its harness kills shims and containers), then the cgroups below
/// the parent, then the network (pins, bridge).
pub struct Env {
    pub daemon: Option<Daemon>,
    pub net: TestNet,
    /// Default cgroup parent configured in `[cri] cgroup_parent` (absolute).
    pub cgroup_parent: String,
    /// Temp dir for pod log dirs and other test files.
    pub files: tempfile::TempDir,
    /// The busybox image as imported (name) and its id (config digest).
    pub image: String,
    pub image_id: String,
}

impl Env {
    /// A daemon with a bridge network and the default `[cri]` options.
    pub fn start() -> Result<Self> {
        Self::start_with(TestNet::new()?, CriOpts::default())
    }

    pub fn start_with(net: TestNet, opts: CriOpts) -> Result<Self> {
        let cgroup_parent = format!("/{}", unique("berth-test"));
        let sandbox_image = match &opts.sandbox_image {
            Some(image) => image.as_str(),
            None if opts.pause_image => PAUSE,
            None => "",
        };
        let stop_timeout = opts
            .default_stop_timeout_secs
            .map(|s| format!("default_stop_timeout_secs = {s}\n"))
            .unwrap_or_default();
        let config = format!(
            "{}\n[cri]\nsandbox_mode = {:?}\nsandbox_image = {:?}\ncgroup_driver = \"cgroupfs\"\n\
             cgroup_parent = {:?}\n{stop_timeout}{}\n",
            net.config_toml(),
            opts.sandbox_mode,
            sandbox_image,
            cgroup_parent,
            opts.extra,
        );
        let files = tempfile::Builder::new()
            .prefix("berth-cri-files-")
            .tempdir()?;
        let daemon = Daemon::start_with_config(&config)?;
        let env = Env {
            daemon: Some(daemon),
            net,
            cgroup_parent,
            files,
            image: BUSYBOX.to_string(),
            image_id: fixtures::busybox()?.config_digest.clone(),
        };
        env.import(fixtures::busybox()?, "docker.io/berth-e2e/busybox")?;
        if opts.pause_image {
            env.import(fixtures::pause()?, "docker.io/berth-e2e/pause")?;
        }
        Ok(env)
    }

    pub fn d(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    pub fn d_mut(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("daemon running")
    }

    /// Imports a fixture with `berthctl images import --base-name`.
    pub fn import(&self, img: &fixtures::Image, base_name: &str) -> Result<()> {
        let tar = self.files.path().join(format!("{}.tar", unique("image")));
        fixtures::write_oci_archive(&img.layout_dir, &tar)?;
        let out = self.d().ctl_ok([
            "images",
            "import",
            "--base-name",
            base_name,
            tar.to_str().context("utf-8 path")?,
        ])?;
        let _ = std::fs::remove_file(&tar);
        ensure!(
            out.contains(base_name),
            "import of {} printed {out:?}",
            img.layout_dir.display()
        );
        Ok(())
    }

    pub async fn rt(&self) -> Result<Rt> {
        runtime_client(self.d()).await
    }

    pub async fn img(&self) -> Result<Img> {
        image_client(self.d()).await
    }

    /// A fresh, existing pod log directory (kubelet creates it before
    /// RunPodSandbox).
    pub fn log_dir(&self, pod: &str) -> Result<PathBuf> {
        let d = self.files.path().join("pods").join(unique(pod));
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// A pod config (network mode POD, cgroup parent below the configured
    /// default parent) with its own log dir.
    pub fn pod(&self, name: &str) -> Result<api::PodSandboxConfig> {
        let uid = unique("uid");
        let mut c = pod_config(name, &uid, &self.log_dir(name)?);
        if let Some(l) = c.linux.as_mut() {
            l.cgroup_parent = format!("{}/pod{uid}", self.cgroup_parent);
        }
        Ok(c)
    }

    /// A container config for the busybox image.
    pub fn container(&self, name: &str, cmd: &[&str]) -> api::ContainerConfig {
        container_config(name, &self.image, cmd)
    }

    /// Runs a pod; returns its id.
    pub async fn run_pod(&self, rt: &mut Rt, config: &api::PodSandboxConfig) -> Result<String> {
        let id = rt
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|s| self.status_err("RunPodSandbox", s))?
            .into_inner()
            .pod_sandbox_id;
        ensure!(!id.is_empty(), "RunPodSandbox returned an empty id");
        Ok(id)
    }

    /// Creates a container; returns its id.
    pub async fn create(
        &self,
        rt: &mut Rt,
        pod_id: &str,
        pod: &api::PodSandboxConfig,
        config: &api::ContainerConfig,
    ) -> Result<String> {
        let id = rt
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod_id.to_string(),
                config: Some(config.clone()),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .map_err(|s| self.status_err("CreateContainer", s))?
            .into_inner()
            .container_id;
        ensure!(!id.is_empty(), "CreateContainer returned an empty id");
        Ok(id)
    }

    /// Creates and starts a container; returns its id.
    pub async fn create_start(
        &self,
        rt: &mut Rt,
        pod_id: &str,
        pod: &api::PodSandboxConfig,
        config: &api::ContainerConfig,
    ) -> Result<String> {
        let id = self.create(rt, pod_id, pod, config).await?;
        rt.start_container(api::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(|s| self.status_err("StartContainer", s))?;
        Ok(id)
    }

    /// Stops and removes a pod (errors are returned, not ignored).
    pub async fn stop_remove_pod(&self, rt: &mut Rt, pod_id: &str) -> Result<()> {
        rt.stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        })
        .await
        .map_err(|s| self.status_err("StopPodSandbox", s))?;
        rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        })
        .await
        .map_err(|s| self.status_err("RemovePodSandbox", s))?;
        Ok(())
    }

    /// An error for an unexpected gRPC failure, with berthd's log excerpt.
    pub fn status_err(&self, what: &str, s: tonic::Status) -> anyhow::Error {
        anyhow::anyhow!(
            "{what} failed: {:?}: {}\n--- berthd log excerpt ---\n{}",
            s.code(),
            s.message(),
            self.log_excerpt(40)
        )
    }

    /// The last `n` lines of berthd's log without the h2/sled/hyper debug
    /// chatter and colour codes.
    pub fn log_excerpt(&self, n: usize) -> String {
        self.daemon
            .as_ref()
            .map(|d| log_excerpt(&d.log(), n))
            .unwrap_or_default()
    }

    /// Everything a pod may leave behind, after it was removed: netns pins,
    /// mounts below berthd's root and state, veths on the bridge, host-local
    /// leases, cgroup dirs named after the pod or its containers, processes
    /// (shims) whose command line names the pod or its containers, and the
    /// container processes themselves. Polls up to 15 s (shims exit after
    /// their last task is deleted), then fails listing what is left.
    pub fn assert_no_leaks(&self, pod_id: &str, containers: &[String], pids: &[i32]) -> Result<()> {
        let mut ids: Vec<String> = vec![pod_id.to_string()];
        ids.extend(containers.iter().cloned());
        let res = wait_for(
            "pod resources to be released",
            Duration::from_secs(15),
            || {
                let l = self.leaks(&ids, pids);
                Ok(l.is_empty().then_some(()))
            },
        );
        if res.is_err() {
            bail!(
                "pod {pod_id} leaked: {:#?}\n--- berthd log tail ---\n{}",
                self.leaks(&ids, pids),
                self.log_excerpt(60)
            );
        }
        Ok(())
    }

    /// What is currently leaked for `ids` (see [`Env::assert_no_leaks`]).
    pub fn leaks(&self, ids: &[String], pids: &[i32]) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.net.netns_pins() {
            out.push(format!("netns pin {p}"));
        }
        let d = self.d();
        // The pin directory is a shared bind mount of itself for the
        // daemon's lifetime (as `ip netns` does with /run/netns), not a pod's.
        let pins_dir = d.state().join("sandboxes").display().to_string();
        for dir in [d.root(), d.state()] {
            for m in mounts_under(&dir) {
                if m != pins_dir {
                    out.push(format!("mount {m}"));
                }
            }
        }
        for v in self.net.bridge_ports() {
            out.push(format!("veth {v} on {}", self.net.bridge));
        }
        for l in self.net.leases() {
            out.push(format!("host-local lease {l}"));
        }
        for c in cgroup_dirs_naming(&self.cgroup_parent, ids) {
            out.push(format!("cgroup {}", c.display()));
        }
        for id in ids {
            for p in processes_naming(id) {
                out.push(format!("process {p} ({}) names {id}", cmdline(p)));
            }
            for sub in POD_STATE_DIRS {
                let pod_dir = d.state().join(sub).join(id);
                if pod_dir.exists() {
                    out.push(format!("pod dir {}", pod_dir.display()));
                }
            }
            let ctr_dir = d.state().join("containers").join(id);
            if ctr_dir.exists() {
                out.push(format!("container dir {}", ctr_dir.display()));
            }
        }
        for &p in pids {
            if alive(p) {
                out.push(format!("container process {p} ({}) alive", cmdline(p)));
            }
        }
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Captured by the test harness: shown only when the test fails.
        println!(
            "--- berthd log excerpt ({}) ---\n{}",
            self.daemon
                .as_ref()
                .map(|d| d.log_path().display().to_string())
                .unwrap_or_default(),
            self.log_excerpt(150)
        );
        drop(self.daemon.take());
        remove_cgroup_tree(&self.cgroup_parent);
    }
}

/// The last `n` lines of a berthd log, without ANSI colours and without the
/// debug chatter of h2, hyper, tower and sled.
pub fn log_excerpt(log: &str, n: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    for l in log.lines() {
        let clean = crate::crictl::strip_ansi(l);
        const NOISE: &[&str] = &["h2::", "sled::", "hyper", "tower::", "tonic::transport"];
        if NOISE.iter().any(|n| clean.contains(n)) {
            continue;
        }
        lines.push(clean);
    }
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------- builders

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

// ---------------------------------------------------------------- queries

pub async fn container_status(
    rt: &mut Rt,
    id: &str,
    verbose: bool,
) -> Result<api::ContainerStatusResponse> {
    Ok(rt
        .container_status(api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose,
        })
        .await?
        .into_inner())
}

/// The container's state and full status.
pub async fn cstatus(rt: &mut Rt, id: &str) -> Result<api::ContainerStatus> {
    container_status(rt, id, false)
        .await?
        .status
        .with_context(|| format!("ContainerStatus({id}) without a status"))
}

pub async fn pod_status(
    rt: &mut Rt,
    id: &str,
    verbose: bool,
) -> Result<api::PodSandboxStatusResponse> {
    Ok(rt
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose,
        })
        .await?
        .into_inner())
}

/// The pid from the verbose ContainerStatus info (`info["info"].pid`, as
/// containerd reports it).
pub async fn container_pid(rt: &mut Rt, id: &str) -> Result<i32> {
    let r = container_status(rt, id, true).await?;
    let info = verbose_info(&r.info)?;
    let pid = info["pid"]
        .as_i64()
        .with_context(|| format!("verbose info of {id} has no pid: {info}"))?;
    ensure!(pid > 0, "pid {pid} in {info}");
    Ok(pid as i32)
}

/// The JSON object in a verbose `info` map (key "info").
pub fn verbose_info(info: &HashMap<String, String>) -> Result<Value> {
    let raw = info
        .get("info")
        .with_context(|| format!("verbose info has no \"info\" key: {info:?}"))?;
    let v: Value = serde_json::from_str(raw).with_context(|| format!("info is not JSON: {raw}"))?;
    ensure!(
        v.as_object().is_some_and(|o| !o.is_empty()),
        "info is not a non-empty object: {v}"
    );
    Ok(v)
}

/// Polls until the container reaches `state`; returns its status.
pub async fn wait_container_state(
    rt: &mut Rt,
    id: &str,
    state: api::ContainerState,
    timeout: Duration,
) -> Result<api::ContainerStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut interval = Duration::from_millis(10);
    loop {
        let st = cstatus(rt, id).await?;
        if st.state == state as i32 {
            return Ok(st);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("container {id} not {state:?} after {timeout:?}: {st:?}");
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}

pub async fn list_containers(
    rt: &mut Rt,
    filter: Option<api::ContainerFilter>,
) -> Result<Vec<api::Container>> {
    Ok(rt
        .list_containers(api::ListContainersRequest { filter })
        .await?
        .into_inner()
        .containers)
}

pub async fn list_pods(
    rt: &mut Rt,
    filter: Option<api::PodSandboxFilter>,
) -> Result<Vec<api::PodSandbox>> {
    Ok(rt
        .list_pod_sandbox(api::ListPodSandboxRequest { filter })
        .await?
        .into_inner()
        .items)
}

/// ExecSync `cmd` with `timeout` seconds (0 = none).
pub async fn exec(
    rt: &mut Rt,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<api::ExecSyncResponse, tonic::Status> {
    rt.exec_sync(api::ExecSyncRequest {
        container_id: id.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    })
    .await
    .map(|r| r.into_inner())
}

/// ExecSync that must exit 0; returns stdout.
pub async fn exec_ok(rt: &mut Rt, id: &str, cmd: &[&str]) -> Result<String> {
    let r = exec(rt, id, cmd, 30).await.map_err(|s| {
        anyhow::anyhow!("ExecSync {cmd:?} in {id}: {:?}: {}", s.code(), s.message())
    })?;
    ensure!(
        r.exit_code == 0,
        "ExecSync {cmd:?} in {id} exited {}: stdout {:?} stderr {:?}",
        r.exit_code,
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    Ok(String::from_utf8_lossy(&r.stdout).into_owned())
}

/// Asserts `r` failed with `code` and a message containing every one of
/// `needles` (case-insensitively); returns the message.
pub fn expect_code<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    needles: &[&str],
) -> Result<String> {
    let s = match r {
        Ok(v) => bail!("{what}: expected {code:?}, got success: {v:?}"),
        Err(s) => s,
    };
    ensure!(
        s.code() == code,
        "{what}: expected {code:?}, got {:?}: {}",
        s.code(),
        s.message()
    );
    let msg = s.message().to_lowercase();
    for n in needles {
        ensure!(
            msg.contains(&n.to_lowercase()),
            "{what}: message {:?} does not name {n:?}",
            s.message()
        );
    }
    Ok(s.message().to_string())
}

// ---------------------------------------------------------------- logs

/// One line of a CRI log file.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub time: String,
    pub stream: String,
    pub tag: String,
    pub text: String,
}

/// Parses a CRI-format log (`<RFC3339Nano> <stdout|stderr> <F|P> <text>`);
/// a malformed line is an error.
pub fn parse_cri_log(content: &str) -> Result<Vec<LogLine>> {
    let mut out = Vec::new();
    for l in content.lines() {
        let mut parts = l.splitn(4, ' ');
        let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("malformed CRI log line {l:?}");
        };
        let text = parts.next().unwrap_or("");
        ensure!(
            stream == "stdout" || stream == "stderr",
            "bad stream in CRI log line {l:?}"
        );
        ensure!(tag == "F" || tag == "P", "bad tag in CRI log line {l:?}");
        ensure!(is_rfc3339_nano(time), "bad timestamp in CRI log line {l:?}");
        out.push(LogLine {
            time: time.to_string(),
            stream: stream.to_string(),
            tag: tag.to_string(),
            text: text.to_string(),
        });
    }
    Ok(out)
}

/// `2016-10-06T00:17:09.669794202Z` or with a numeric offset.
fn is_rfc3339_nano(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
            .iter()
            .all(|&i| b[i].is_ascii_digit())
        && (s.ends_with('Z') || s[19..].contains('+') || s[19..].contains('-'))
}

/// The parsed log at `path` (empty if it does not exist yet).
pub fn read_cri_log(path: &Path) -> Result<Vec<LogLine>> {
    match std::fs::read_to_string(path) {
        Ok(s) => parse_cri_log(&s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Polls until `pred` holds for the parsed log at `path`; returns the lines.
pub fn wait_log(
    path: &Path,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&[LogLine]) -> bool,
) -> Result<Vec<LogLine>> {
    let r = wait_for(what, timeout, || {
        let lines = read_cri_log(path)?;
        Ok(pred(&lines).then_some(lines))
    });
    r.with_context(|| {
        format!(
            "log {}:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_else(|e| format!("<{e}>"))
        )
    })
}

/// Whether the log has a full line `text` on `stream`.
pub fn has_line(lines: &[LogLine], stream: &str, text: &str) -> bool {
    lines
        .iter()
        .any(|l| l.stream == stream && l.tag == "F" && l.text == text)
}

// ---------------------------------------------------------------- leaks

/// Mount points at or below `dir` (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let d = dir.display().to_string();
    let prefix = format!("{d}/");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|mp| mp.starts_with(&prefix))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// The cgroup v1 hierarchies mounted below /sys/fs/cgroup (e.g. "memory",
/// "cpu" or "cpu,cpuacct"; symlinks to them are skipped, "unified" and
/// "systemd" too).
pub fn cgroup_controllers() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "unified" && n != "systemd")
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Reads `/sys/fs/cgroup/<hierarchy>/<path>/<file>` (trimmed), where
/// `hierarchy` is the mounted dir holding controller `ctl`.
pub fn cgroup_file(ctl: &str, path: &str, file: &str) -> Result<String> {
    let hier = cgroup_controllers()
        .into_iter()
        .find(|h| h.split(',').any(|c| c == ctl))
        .with_context(|| format!("no cgroup v1 hierarchy for {ctl}"))?;
    let p = Path::new("/sys/fs/cgroup")
        .join(hier)
        .join(path.trim_start_matches('/'))
        .join(file);
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("read {}", p.display()))?
        .trim()
        .to_string())
}

/// Dirs below `/sys/fs/cgroup/<ctl>/<parent>` whose name contains one of `ids`.
pub fn cgroup_dirs_naming(parent: &str, ids: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for ctl in cgroup_controllers() {
        let root = Path::new("/sys/fs/cgroup")
            .join(ctl)
            .join(parent.trim_start_matches('/'));
        walk_dirs(&root, &mut |p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if ids.iter().any(|id| name.contains(id.as_str())) {
                out.push(p.to_path_buf());
            }
        });
    }
    out
}

fn walk_dirs(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let p = e.path();
            f(&p);
            walk_dirs(&p, f);
        }
    }
}

/// Removes `/sys/fs/cgroup/<ctl>/<parent>` and everything below it (deepest
/// first), for every v1 controller; a busy or missing dir is skipped.
pub fn remove_cgroup_tree(parent: &str) {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for ctl in rd.flatten() {
        let root = ctl.path().join(rel);
        let mut dirs = Vec::new();
        walk_dirs(&root, &mut |p| dirs.push(p.to_path_buf()));
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
        let _ = std::fs::remove_dir(&root);
    }
}

/// The cgroup v1 path (relative to the controller's mount) of `pid` for
/// controller `ctl` (e.g. "memory", "cpu").
pub fn cgroup_of(pid: i32, ctl: &str) -> Result<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    s.lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctls, path) = (p.next()?, p.next()?, p.next()?);
            ctls.split(',').any(|c| c == ctl).then(|| path.to_string())
        })
        .with_context(|| format!("no {ctl} cgroup for {pid}: {s}"))
}

/// The memory cgroup path (relative to the v1 memory mount) of `pid`.
pub fn memory_cgroup_of(pid: i32) -> Result<String> {
    cgroup_of(pid, "memory")
}

/// Reads a file of the memory controller for the cgroup `path`.
pub fn memory_cgroup_file(path: &str, file: &str) -> Result<String> {
    cgroup_file("memory", path, file)
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X")
    })
}

pub fn cmdline(pid: i32) -> String {
    let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&c)
        .replace('\0', " ")
        .trim()
        .to_string()
}

/// Live processes other than this one whose command line contains `needle`.
pub fn processes_naming(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if cmdline(pid).contains(needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Sends `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: plain kill(2); a pid that is gone just fails.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A plain HTTP/1.0 GET over TCP; returns the whole response.
pub fn http_get_raw(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_parse() {
        let l = parse_cri_log(
            "2016-10-06T00:17:09.669794202Z stdout F hello\n2016-10-06T00:17:09.669794202Z stderr P part\n2016-10-06T00:17:09.669794202Z stdout F \n",
        )
        .unwrap();
        assert_eq!(l.len(), 3);
        assert!(has_line(&l, "stdout", "hello"));
        assert_eq!(l[1].tag, "P");
        assert_eq!(l[2].text, "");
        assert!(parse_cri_log("garbage\n").is_err());
        assert!(parse_cri_log("2016-10-06T00:17:09Z stdin F x\n").is_err());
    }

    #[test]
    fn mountinfo_escape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }
}
