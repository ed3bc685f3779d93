//! The two runtimes `bench-cri` drives through the same CRI client code: berthd and
//! Debian's containerd 1.6 with its CRI plugin, each on its own temp root/state/socket,
//! its own CNI network ([`TestNet`]: bridge, subnet, conf dir), its own cgroup parent
//! and pod log dir; both pull from one local registry through a `hosts.toml` dir.
//!
//! [`Side`] holds one runtime with its pods; [`Side::cleanup`] stops and removes every
//! pod through the CRI, and drop (of the daemon harnesses, the network, and the side
//! itself) sweeps what is left: shims, runc containers, mounts, netns pins, bridges,
//! portmap rules, cgroups, and the few host dirs containerd 1.6 writes to whatever its
//! config says (`/run/containerd/{s,fifo}`, `/var/lib/cni/results`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::containerd::{Containerd, ContainerdOpts};
use crate::cri::{self, api, Img, Rt, TestNet};
use crate::daemon::{Daemon, DaemonOpts};

/// Host dirs containerd 1.6 writes to regardless of its root/state.
pub const CONTAINERD_HOST_DIRS: &[&str] = &["/run/containerd/s", "/run/containerd/fifo"];
/// libcni's cache (containerd 1.6 cannot move it).
pub const CNI_CACHE_DIR: &str = "/var/lib/cni/results";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Berth,
    Containerd,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Berth => "berth",
            Runtime::Containerd => "containerd",
        }
    }

    /// The shim's comm (truncated to 15 bytes by the kernel).
    fn shim_comm(self) -> &'static str {
        match self {
            Runtime::Berth => "berth-shim",
            Runtime::Containerd => "containerd-shim",
        }
    }
}

/// What both sides share.
#[derive(Clone, Debug)]
pub struct Common {
    /// berthd/berthctl/berth-shim.
    pub bin_dir: PathBuf,
    /// containerd-style `<host>/hosts.toml` dir for the local registry.
    pub hosts_dir: PathBuf,
    /// The pause image (a registry reference), containerd's `sandbox_image`.
    pub pause_image: String,
    /// berth's `[cri] sandbox_mode` ("pinned", its default, or "pause").
    pub berth_sandbox_mode: String,
    /// berthd's `--log-level`.
    pub berth_log_level: String,
}

impl Common {
    /// berthd's config: CNI from `net` (if any), cgroupfs below `cgroup_parent`,
    /// the registry hosts dir.
    pub fn berth_config(&self, net: Option<&TestNet>, cgroup_parent: &str) -> String {
        let sandbox_image = if self.berth_sandbox_mode == "pause" {
            self.pause_image.as_str()
        } else {
            ""
        };
        format!(
            "{}\n[cri]\nsandbox_mode = {:?}\nsandbox_image = {:?}\ncgroup_driver = \"cgroupfs\"\n\
             cgroup_parent = {:?}\n\n[registry]\nconfig_path = {:?}\n",
            net.map(TestNet::config_toml).unwrap_or_default(),
            self.berth_sandbox_mode,
            sandbox_image,
            cgroup_parent,
            self.hosts_dir.display().to_string(),
        )
    }

    /// The CRI plugin's table for containerd 1.6 (`@DIR@` is its harness dir).
    pub fn containerd_cri_config(&self, cni_conf_dir: &Path) -> String {
        format!(
            r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {pause:?}
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "@DIR@/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {bin:?}
    conf_dir = {conf:?}
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {hosts:?}
"#,
            pause = self.pause_image,
            bin = cri::CNI_PLUGINS,
            conf = cni_conf_dir.display().to_string(),
            hosts = self.hosts_dir.display().to_string(),
        )
    }
}

/// Writes `<dir>/<addr>/hosts.toml`: the registry at `addr` over plain HTTP.
pub fn write_hosts_toml(dir: &Path, addr: &str) -> Result<()> {
    let toml = format!(
        "server = \"http://{addr}\"\n\n[host.\"http://{addr}\"]\n  \
         capabilities = [\"pull\", \"resolve\"]\n"
    );
    crate::util::write_file(&dir.join(addr).join("hosts.toml"), toml.as_bytes())
}

/// One running pod: its id, config and containers.
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub config: api::PodSandboxConfig,
    pub containers: Vec<String>,
}

/// Times of one pod start.
#[derive(Clone, Copy, Debug, Default)]
pub struct PodStart {
    pub run: f64,
    pub create: f64,
    pub start: f64,
}

impl PodStart {
    pub fn total(&self) -> f64 {
        self.run + self.create + self.start
    }
}

/// A daemon process handle, either kind.
pub enum Daemonish {
    Berth(Daemon),
    Containerd(Containerd),
}

impl Daemonish {
    pub fn pid(&self) -> Option<u32> {
        match self {
            Daemonish::Berth(d) => d.pid(),
            Daemonish::Containerd(c) => c.pid(),
        }
    }
    pub fn dir(&self) -> &Path {
        match self {
            Daemonish::Berth(d) => d.dir(),
            Daemonish::Containerd(c) => c.dir(),
        }
    }
    pub fn socket(&self) -> PathBuf {
        match self {
            Daemonish::Berth(d) => d.socket_path(),
            Daemonish::Containerd(c) => c.socket(),
        }
    }
    pub fn log(&self) -> String {
        match self {
            Daemonish::Berth(d) => d.log(),
            Daemonish::Containerd(c) => c.log(),
        }
    }
    pub fn log_path(&self) -> PathBuf {
        match self {
            Daemonish::Berth(d) => d.log_path(),
            Daemonish::Containerd(c) => c.log_path(),
        }
    }
    /// SIGTERM (SIGKILL after 10 s).
    pub fn stop(&mut self) -> Result<()> {
        match self {
            Daemonish::Berth(d) => d.stop().map(|_| ()),
            Daemonish::Containerd(c) => c.stop().map(|_| ()),
        }
    }
    pub fn respawn_nowait(&mut self) -> Result<()> {
        match self {
            Daemonish::Berth(d) => d.respawn_nowait(),
            Daemonish::Containerd(c) => c.respawn_nowait(),
        }
    }
}

/// A started daemon of either kind, not yet connected.
pub fn start_daemon(
    kind: Runtime,
    common: &Common,
    net: Option<&TestNet>,
    cgroup_parent: &str,
    empty_conf_dir: &Path,
) -> Result<Daemonish> {
    Ok(match kind {
        Runtime::Berth => Daemonish::Berth(Daemon::start_with(DaemonOpts {
            config: common.berth_config(net, cgroup_parent),
            bin_dir: Some(common.bin_dir.clone()),
            log_level: Some(common.berth_log_level.clone()),
            ..Default::default()
        })?),
        Runtime::Containerd => {
            let conf = net.map(|n| n.conf_dir.clone());
            let conf = conf.as_deref().unwrap_or(empty_conf_dir);
            Daemonish::Containerd(Containerd::start_with(ContainerdOpts {
                extra_config: common.containerd_cri_config(conf),
                cri: true,
                ..Default::default()
            })?)
        }
    })
}

/// CRI clients for a socket, once the CRI answers `Version` (containerd's own socket
/// accepts connections before its CRI plugin serves).
pub async fn connect(socket: &Path, timeout: Duration) -> Result<(Rt, Img)> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = async {
            let ch = cri::channel(socket).await?;
            let mut rt = Rt::new(ch.clone());
            rt.version(api::VersionRequest::default()).await?;
            anyhow::Ok((rt, Img::new(ch)))
        }
        .await;
        match r {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("CRI at {}", socket.display())))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// One runtime under test.
pub struct Side {
    pub kind: Runtime,
    pub daemon: Daemonish,
    pub rt: Rt,
    pub img: Img,
    pub pods: Vec<Pod>,
    pub image: String,
    pub cgroup_parent: String,
    /// Pod log dirs.
    pub files: tempfile::TempDir,
    // Dropped after the daemon (fields drop in order): pins and bridge last.
    pub net: TestNet,
    /// Entries of [`CONTAINERD_HOST_DIRS`] that existed before this side started.
    host_dirs_before: HashSet<PathBuf>,
    /// Whether [`CNI_CACHE_DIR`] existed before.
    cni_cache_existed: bool,
}

impl Side {
    pub async fn start(kind: Runtime, common: &Common) -> Result<Side> {
        let net = TestNet::new()?;
        let cgroup_parent = format!("/{}", cri::unique(&format!("berth-bench-{}", kind.name())));
        let files = tempfile::Builder::new()
            .prefix(&format!("berth-bench-{}-", kind.name()))
            .tempdir()?;
        let host_dirs_before = list_host_dirs();
        let cni_cache_existed = Path::new(CNI_CACHE_DIR).exists();
        let daemon = start_daemon(kind, common, Some(&net), &cgroup_parent, files.path())?;
        let (rt, img) = connect(&daemon.socket(), Duration::from_secs(30)).await?;
        Ok(Side {
            kind,
            daemon,
            rt,
            img,
            pods: Vec::new(),
            image: String::new(),
            cgroup_parent,
            files,
            net,
            host_dirs_before,
            cni_cache_existed,
        })
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// An error with the daemon's log tail.
    pub fn err(&self, what: &str, s: tonic::Status) -> anyhow::Error {
        anyhow::anyhow!(
            "{}: {what}: {:?}: {}\n--- {} log ({}) ---\n{}",
            self.name(),
            s.code(),
            s.message(),
            self.name(),
            self.daemon.log_path().display(),
            cri::log_excerpt(&self.daemon.log(), 30)
        )
    }

    pub async fn pull(&mut self, image: &str) -> Result<String> {
        let r = self
            .img
            .pull_image(api::PullImageRequest {
                image: Some(api::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        let r = r.map_err(|s| self.err(&format!("PullImage {image}"), s))?;
        Ok(r.into_inner().image_ref)
    }

    /// A pod config (own log dir, cgroup parent below this side's parent).
    pub fn pod_config(&self, name: &str) -> Result<api::PodSandboxConfig> {
        pod_config(self.files.path(), &self.cgroup_parent, name)
    }

    /// A busybox container config; the log dir kubelet would create is created.
    pub fn container_config(
        &self,
        pod: &api::PodSandboxConfig,
        name: &str,
        cmd: &[&str],
    ) -> Result<api::ContainerConfig> {
        container_config(&self.image, pod, name, cmd)
    }

    /// RunPodSandbox + CreateContainer + StartContainer (`sleep 3600`), timed.
    pub async fn start_pod(&mut self, name: &str) -> Result<PodStart> {
        let config = self.pod_config(name)?;
        let cc = self.container_config(&config, "main", &["sleep", "3600"])?;
        let mut rt = self.rt.clone();
        let (pod, t) = start_pod(&mut rt, config, cc)
            .await
            .map_err(|(w, s)| self.err(w, s))?;
        self.pods.push(pod);
        Ok(t)
    }

    /// Number of containers in `state` and of READY pods, from the list calls.
    pub async fn count_states(&mut self) -> Result<(usize, usize)> {
        let cs = cri::list_containers(&mut self.rt, None).await?;
        let running = cs
            .iter()
            .filter(|c| c.state == api::ContainerState::ContainerRunning as i32)
            .count();
        let ps = cri::list_pods(&mut self.rt, None).await?;
        let ready = ps
            .iter()
            .filter(|p| p.state == api::PodSandboxState::SandboxReady as i32)
            .count();
        Ok((running, ready))
    }

    /// Fails unless every pod this side holds is READY and every container RUNNING.
    pub async fn check_running(&mut self) -> Result<()> {
        let want_c: usize = self.pods.iter().map(|p| p.containers.len()).sum();
        let want_p = self.pods.len();
        let (c, p) = self.count_states().await?;
        ensure!(
            c == want_c && p == want_p,
            "{}: {c} running containers and {p} ready pods, expected {want_c} and {want_p}",
            self.name()
        );
        Ok(())
    }

    /// The shims serving this daemon: (pid, rss KiB, pss KiB).
    pub fn shims(&self) -> Vec<(i32, u64, u64)> {
        let needle = self.daemon.socket().display().to_string();
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if !self.kind.shim_comm().starts_with(comm.trim()) || comm.trim().is_empty() {
                continue;
            }
            if !cri::cmdline(pid).contains(&needle) {
                continue;
            }
            if let Ok((rss, pss)) = rss_pss_kib(pid as u32) {
                out.push((pid, rss, pss));
            }
        }
        out
    }

    /// (RSS, PSS) of the daemon in KiB.
    pub fn daemon_mem(&self) -> Result<(u64, u64)> {
        let pid = self.daemon.pid().context("daemon not running")?;
        rss_pss_kib(pid)
    }

    /// Stops and removes every pod (and its containers), in parallel batches.
    pub async fn remove_all_pods(&mut self) -> Result<()> {
        let pods = cri::list_pods(&mut self.rt, None).await?;
        let mut first_err = None;
        for chunk in pods.chunks(10) {
            let mut tasks = Vec::new();
            for p in chunk {
                let mut rt = self.rt.clone();
                let id = p.id.clone();
                tasks.push(tokio::spawn(async move {
                    rt.stop_pod_sandbox(api::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await?;
                    rt.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id })
                        .await?;
                    Ok::<_, tonic::Status>(())
                }));
            }
            for t in tasks {
                if let Err(s) = t.await? {
                    first_err.get_or_insert(s);
                }
            }
        }
        self.pods.clear();
        if let Some(s) = first_err {
            return Err(self.err("StopPodSandbox/RemovePodSandbox", s));
        }
        let left = cri::list_pods(&mut self.rt, None).await?.len()
            + cri::list_containers(&mut self.rt, None).await?.len();
        ensure!(left == 0, "{}: {left} pods/containers left", self.name());
        Ok(())
    }

    /// Removes every pod through the CRI, then checks the shims are gone and no netns
    /// pin or veth is left (polls up to 15 s).
    pub async fn cleanup(&mut self) -> Result<()> {
        self.remove_all_pods().await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let shims = self.shims().len();
            let pins = self.net.netns_pins();
            let veths = self.net.bridge_ports();
            if shims == 0 && pins.is_empty() && veths.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: after removing every pod: {shims} shims, netns pins {pins:?}, veths {veths:?}",
                    self.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the daemon, starts it again and times until `Status` answers (runtime
    /// ready) and `ListContainers` returns `want` containers. Reconnects the clients.
    pub async fn restart(&mut self, want: usize) -> Result<f64> {
        self.daemon.stop()?;
        let t0 = Instant::now();
        self.daemon.respawn_nowait()?;
        let socket = self.daemon.socket();
        let deadline = t0 + Duration::from_secs(60);
        loop {
            if let Ok(n) = ready_count(&socket).await {
                if n == want {
                    break;
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: not ready with {want} containers 60 s after restart; log:\n{}",
                    self.name(),
                    cri::log_excerpt(&self.daemon.log(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let (rt, img) = connect(&socket, Duration::from_secs(10)).await?;
        self.rt = rt;
        self.img = img;
        Ok(secs)
    }
}

/// Status (runtime ready) then ListContainers; the number of containers.
async fn ready_count(socket: &Path) -> Result<usize> {
    let ch = cri::channel(socket).await?;
    let mut rt = Rt::new(ch);
    let st = rt
        .status(api::StatusRequest { verbose: false })
        .await?
        .into_inner();
    let ready = st
        .status
        .map(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "RuntimeReady" && c.status)
        })
        .unwrap_or(false);
    ensure!(ready, "runtime not ready");
    Ok(cri::list_containers(&mut rt, None).await?.len())
}

/// A pod config below `files` and `cgroup_parent`.
pub fn pod_config(files: &Path, cgroup_parent: &str, name: &str) -> Result<api::PodSandboxConfig> {
    let uid = cri::unique("uid");
    let log_dir = files.join("pods").join(&uid);
    std::fs::create_dir_all(&log_dir)?;
    let mut c = cri::pod_config(name, &uid, &log_dir);
    if let Some(l) = c.linux.as_mut() {
        l.cgroup_parent = format!("{cgroup_parent}/pod{uid}");
    }
    Ok(c)
}

pub fn container_config(
    image: &str,
    pod: &api::PodSandboxConfig,
    name: &str,
    cmd: &[&str],
) -> Result<api::ContainerConfig> {
    let cc = cri::container_config(name, image, cmd);
    std::fs::create_dir_all(Path::new(&pod.log_directory).join(name))?;
    Ok(cc)
}

/// RunPodSandbox + CreateContainer + StartContainer, each timed; on error the failed
/// call's name and status.
pub async fn start_pod(
    rt: &mut Rt,
    config: api::PodSandboxConfig,
    cc: api::ContainerConfig,
) -> Result<(Pod, PodStart), (&'static str, tonic::Status)> {
    let t0 = Instant::now();
    let id = rt
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|s| ("RunPodSandbox", s))?
        .into_inner()
        .pod_sandbox_id;
    let t1 = Instant::now();
    let cid = rt
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(cc),
            sandbox_config: Some(config.clone()),
        })
        .await
        .map_err(|s| ("CreateContainer", s))?
        .into_inner()
        .container_id;
    let t2 = Instant::now();
    rt.start_container(api::StartContainerRequest {
        container_id: cid.clone(),
    })
    .await
    .map_err(|s| ("StartContainer", s))?;
    let t3 = Instant::now();
    Ok((
        Pod {
            id,
            config,
            containers: vec![cid],
        },
        PodStart {
            run: (t1 - t0).as_secs_f64(),
            create: (t2 - t1).as_secs_f64(),
            start: (t3 - t2).as_secs_f64(),
        },
    ))
}

/// VmRSS and Pss (smaps_rollup) of `pid`, in KiB.
pub fn rss_pss_kib(pid: u32) -> Result<(u64, u64)> {
    let rss = crate::containerd::rss_kib_of(pid)?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("read /proc/{pid}/smaps_rollup"))?;
    let pss = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no Pss in smaps_rollup")?;
    Ok((rss, pss))
}

fn list_host_dirs() -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    for d in CONTAINERD_HOST_DIRS {
        if let Ok(rd) = std::fs::read_dir(d) {
            out.extend(rd.flatten().map(|e| e.path()));
        }
    }
    out
}

impl Drop for Side {
    fn drop(&mut self) {
        // The daemon harness (dropped after this) kills shims and runc containers;
        // do it here first so that the cgroups below can go.
        let _ = self.daemon.stop();
        let runc_root = match &self.daemon {
            Daemonish::Berth(d) => d.state().join("runc"),
            Daemonish::Containerd(c) => c.runc_root(),
        };
        crate::daemon::delete_containers(&runc_root);
        crate::util::sweep_dir(self.daemon.dir());
        std::thread::sleep(Duration::from_millis(100));
        cri::remove_cgroup_tree(&self.cgroup_parent);
        if self.kind == Runtime::Containerd {
            for p in list_host_dirs() {
                if !self.host_dirs_before.contains(&p) {
                    let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
                }
            }
            let prefix = format!("{}-", self.net.name);
            if let Ok(rd) = std::fs::read_dir(CNI_CACHE_DIR) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&prefix) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            if !self.cni_cache_existed {
                // Only if empty (another user may have started using it meanwhile).
                let _ = std::fs::remove_dir(CNI_CACHE_DIR);
            }
        }
    }
}

/// Nearest-rank percentile and median of unsorted samples.
pub fn med_p90(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some((crate::bench::median(&s), crate::bench::percentile(&s, 90.0)))
}

/// Samples per metric and runtime, in insertion order of the metrics.
#[derive(Default)]
pub struct Results {
    order: Vec<(String, String)>,
    samples: HashMap<(String, Runtime), Vec<f64>>,
}

impl Results {
    /// Declares a metric (key, label with its unit) in table order.
    pub fn metric(&mut self, key: &str, label: &str) {
        if !self.order.iter().any(|(k, _)| k == key) {
            self.order.push((key.to_string(), label.to_string()));
        }
    }
    pub fn add(&mut self, key: &str, rt: Runtime, v: f64) {
        self.samples
            .entry((key.to_string(), rt))
            .or_default()
            .push(v);
    }
    pub fn get(&self, key: &str, rt: Runtime) -> &[f64] {
        self.samples
            .get(&(key.to_string(), rt))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
    pub fn keys(&self) -> &[(String, String)] {
        &self.order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs() {
        let c = Common {
            bin_dir: "/b".into(),
            hosts_dir: "/h".into(),
            pause_image: "127.0.0.1:5/pause:1".into(),
            berth_sandbox_mode: "pinned".into(),
            berth_log_level: "info".into(),
        };
        let b = c.berth_config(None, "/p");
        let v: toml::Value = toml::from_str(&b).unwrap();
        assert_eq!(v["cri"]["sandbox_image"].as_str(), Some(""));
        assert_eq!(v["registry"]["config_path"].as_str(), Some("/h"));
        let k = c.containerd_cri_config(Path::new("/conf"));
        let v: toml::Value = toml::from_str(&k).unwrap();
        let cri = &v["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["sandbox_image"].as_str(), Some("127.0.0.1:5/pause:1"));
        assert_eq!(cri["cni"]["conf_dir"].as_str(), Some("/conf"));
        assert_eq!(cri["restrict_oom_score_adj"].as_bool(), Some(true));
    }

    #[test]
    fn stats() {
        assert_eq!(med_p90(&[3.0, 1.0, 2.0]), Some((2.0, 3.0)));
        assert_eq!(med_p90(&[]), None);
    }
}
