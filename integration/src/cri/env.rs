//! A berthd with a test network and the fixtures imported ([`Env`]), and how
//! its `[cri]` section is set up ([`CriOpts`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use super::builders::{container_config, pod_config};
use super::leaks::{
    alive, cgroup_dirs_naming, cmdline, mounts_under, processes_naming, remove_cgroup_tree,
};
use super::net::TestNet;
use super::{api, image_client, runtime_client, unique, Img, Rt};
use crate::daemon::Daemon;
use crate::fixtures;
use crate::util::wait_for;

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
