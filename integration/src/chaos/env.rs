//! What a chaos run stands on, and the final sweep that counts what berthd leaked.
//!
//! Faults reach berth through hooks it cannot tell from the real thing: the CNI
//! network's first plugin is `chaos-bridge` (a wrapper of the bridge plugin) and the
//! OCI runtime is `chaos-runc` (a wrapper of runc). Each fails once per token file
//! the injector drops in the fault dir (`cni-fail`, `cni-hang`, `cni-die`,
//! `runc-die`); the wrapper that takes a token renames it to `<token>.hit.<pid>`, so
//! the injector can count what hit.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tonic::Code;

use super::{lock, Ctx, LIFECYCLE_DEADLINE, LIST_DEADLINE};
use crate::cri::{self, api, Img, Rt, TestNet};
use crate::daemon::{Daemon, DaemonOpts};
use crate::{bench, fixtures, Registry};

/// Bigger images the puller pulls and removes (MiB each, layers each).
const BIG_IMAGES: usize = 3;
const BIG_MIB: usize = 24;

/// The CNI wrapper. `@FAULTS@` and `@REAL@` are filled in.
const CNI_WRAPPER: &str = r#"#!/bin/sh
# berth chaos suite: the bridge plugin, failing once per token in the fault dir.
faults=@FAULTS@
real=@REAL@
if [ "$CNI_COMMAND" = ADD ]; then
  if mv "$faults/cni-fail" "$faults/cni-fail.hit.$$" 2>/dev/null; then
    cat >/dev/null
    echo '{"cniVersion":"1.0.0","code":11,"msg":"chaos: injected CNI ADD failure"}'
    exit 1
  fi
  if mv "$faults/cni-hang" "$faults/cni-hang.hit.$$" 2>/dev/null; then
    cat >/dev/null
    exec sleep 3600
  fi
  if mv "$faults/cni-die" "$faults/cni-die.hit.$$" 2>/dev/null; then
    # The real ADD starts (veth, IPAM lease), then both die.
    exec 3<&0
    "$real" <&3 >/dev/null 2>&1 &
    child=$!
    sleep 0.03
    kill -9 $child
    kill -9 $$
  fi
fi
exec "$real"
"#;

/// The OCI runtime wrapper: `create` dies (with runc) once per `runc-die` token.
const RUNC_WRAPPER: &str = r#"#!/bin/sh
# berth chaos suite: runc, SIGKILLed mid-create once per token in the fault dir.
faults=@FAULTS@
real=@REAL@
for a in "$@"; do
  if [ "$a" = create ]; then
    if mv "$faults/runc-die" "$faults/runc-die.hit.$$" 2>/dev/null; then
      exec 3<&0
      "$real" "$@" <&3 &
      child=$!
      sleep 0.05
      kill -9 $child
      kill -9 $$
    fi
    break
  fi
done
exec "$real" "$@"
"#;

/// The registry, the images, the network, the hooks and berthd of one run.
pub struct Setup {
    // Dropped first: berthd, its shims and containers, its temp dir.
    pub daemon: Mutex<Daemon>,
    pub reg: Registry,
    pub net: TestNet,
    /// Pod log dirs.
    pub files: tempfile::TempDir,
    pub hosts: tempfile::TempDir,
    pub fault_dir: PathBuf,
    pub cgroup_parent: String,
    pub busybox: String,
    pub pause: String,
    pub big: Vec<String>,
    pub root: PathBuf,
    pub state: PathBuf,
    pub dir: PathBuf,
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn hook(template: &str, faults: &Path, real: &Path) -> String {
    template
        .replace("@FAULTS@", &shell_quote(&faults.display().to_string()))
        .replace("@REAL@", &shell_quote(&real.display().to_string()))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Setup {
    pub fn new(opts: &super::Options) -> Result<Arc<Setup>> {
        ensure!(
            Path::new(crate::registry::REGISTRY_BIN).is_file(),
            "{} missing (apt-get install docker-registry)",
            crate::registry::REGISTRY_BIN
        );
        let runc = bench::which("runc").context("runc not on PATH (apt-get install runc)")?;
        let reg = Registry::start_default()?;
        reg.push_layout(fixtures::busybox()?, "chaos/busybox:1")?;
        reg.push_layout(fixtures::pause()?, "chaos/pause:1")?;
        let mut big = Vec::new();
        for i in 0..BIG_IMAGES {
            let name = format!("chaos/big{i}:1");
            reg.push_layout(fixtures::large(BIG_MIB, 2, 1000 + i as u64)?, &name)?;
            big.push(reg.reference(&name));
        }
        let hosts = tempfile::Builder::new()
            .prefix("berth-chaos-hosts-")
            .tempdir()?;
        crate::bench_cri::write_hosts_toml(hosts.path(), reg.addr())?;

        let mut net = TestNet::empty()?;
        net.plugin_timeout_secs = 5;
        let fault_dir = net.dir().join("faults");
        let bin = net.dir().join("bin");
        std::fs::create_dir_all(&fault_dir)?;
        std::fs::create_dir_all(&bin)?;
        write_exec(
            &bin.join("chaos-bridge"),
            &hook(
                CNI_WRAPPER,
                &fault_dir,
                &Path::new(cri::CNI_PLUGINS).join("bridge"),
            ),
        )?;
        let runc_wrapper = net.dir().join("chaos-runc");
        write_exec(&runc_wrapper, &hook(RUNC_WRAPPER, &fault_dir, &runc))?;
        net.prepend_bin_dir(bin);
        let mut conflist = net.bridge_conflist();
        conflist["plugins"][0]["type"] = Value::from("chaos-bridge");
        net.write_conflist(&conflist)?;

        let cgroup_parent = format!("/{}", cri::unique("berth-chaos"));
        let files = tempfile::Builder::new()
            .prefix("berth-chaos-pods-")
            .tempdir()?;
        let pause = reg.reference("chaos/pause:1");
        let busybox = reg.reference("chaos/busybox:1");
        let config =
            format!(
            "{}\n[cri]\nsandbox_mode = {:?}\nsandbox_image = {:?}\ncgroup_driver = \"cgroupfs\"\n\
             cgroup_parent = {:?}\n\n[registry]\nconfig_path = {:?}\n\n[shim]\nruntime = {:?}\n\n\
             [pull]\nno_progress_timeout_secs = 4\n",
            net.config_toml(),
            opts.sandbox_mode,
            if opts.sandbox_mode == "pause" { pause.as_str() } else { "" },
            cgroup_parent,
            hosts.path().display().to_string(),
            runc_wrapper.display().to_string(),
        );
        let mut daemon = Daemon::start_with(DaemonOpts {
            config,
            bin_dir: Some(opts.bin_dir.clone()),
            log_level: Some(opts.log_level.clone()),
            ..Default::default()
        })?;
        // berth's root on a small tmpfs, so that the disk can be filled.
        daemon.stop()?;
        let root = daemon.root();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={}m", opts.root_mib))
            .arg("berth-chaos-root")
            .arg(&root)
            .output()?;
        ensure!(
            out.status.success(),
            "mount tmpfs on {}: {out:?}",
            root.display()
        );
        daemon.restart()?;
        let state = daemon.state();
        let dir = daemon.dir().to_path_buf();
        Ok(Arc::new(Setup {
            daemon: Mutex::new(daemon),
            reg,
            net,
            files,
            hosts,
            fault_dir,
            cgroup_parent,
            busybox,
            pause,
            big,
            root,
            state,
            dir,
        }))
    }

    /// A pod config below this run's log dir and cgroup parent.
    pub fn pod_config(&self, name: &str) -> Result<api::PodSandboxConfig> {
        crate::bench_cri::pod_config(self.files.path(), &self.cgroup_parent, name)
    }

    pub fn log(&self) -> String {
        lock(&self.daemon).log()
    }

    pub fn log_path(&self) -> PathBuf {
        lock(&self.daemon).log_path()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let d = self.daemon.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = d.stop();
        crate::daemon::delete_containers(&d.state().join("runc"));
        crate::util::sweep_dir(d.dir());
        std::thread::sleep(Duration::from_millis(100));
        cri::remove_cgroup_tree(&self.cgroup_parent);
    }
}

/// Stops and removes every pod, removes every image, and counts what is left:
/// blobs, snapshots and ingests while berthd runs; after a clean stop, processes,
/// mounts, netns pins, cgroups, veths, IPAM leases and runc state.
pub async fn teardown(ctx: &Ctx, setup: &Setup, rt: &mut Rt, img: &mut Img) -> Result<()> {
    ctx.progress("teardown: removing every pod and image");
    let pods = ctx
        .list_pods(rt, "teardown")
        .await
        .map_err(|s| anyhow::anyhow!("ListPodSandbox: {s}"))?;
    for p in pods {
        if let Err(e) = super::workers::remove_pod(ctx, rt, &p.id, Duration::from_secs(120)).await {
            ctx.violation(
                "pod-stuck",
                &p.id,
                format!("teardown could not remove the pod: {e:#}"),
            );
        }
    }
    let images = ctx
        .rpc(
            "ListImages",
            "teardown",
            LIST_DEADLINE,
            img.list_images(api::ListImagesRequest { filter: None }),
        )
        .await
        .map_err(|s| anyhow::anyhow!("ListImages: {s}"))?
        .images;
    for i in images {
        let r = ctx
            .rpc(
                "RemoveImage",
                &i.id,
                LIFECYCLE_DEADLINE,
                img.remove_image(api::RemoveImageRequest {
                    image: Some(api::ImageSpec {
                        image: i.id.clone(),
                        ..Default::default()
                    }),
                }),
            )
            .await;
        if let Err(s) = r {
            if s.code() != Code::NotFound {
                ctx.violation(
                    "teardown",
                    &i.id,
                    format!("RemoveImage: {:?}: {}", s.code(), s.message()),
                );
            }
        }
    }
    super::model::verify_blobs(ctx, &setup.root);
    // Garbage collection runs in the background: poll for an empty store.
    let (blobs, snaps) = {
        let d = lock(&setup.daemon);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let blobs = lines(&d.ctl_ok(["content", "ls", "-q"])?);
            let snaps = lines(&d.ctl_ok(["snapshots", "ls", "-q"])?);
            if blobs.is_empty() && snaps.is_empty() || Instant::now() >= deadline {
                break (blobs, snaps);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let mut leaks: Vec<(&'static str, String)> = Vec::new();
    leaks.extend(blobs.into_iter().map(|b| ("blob", b)));
    leaks.extend(snaps.into_iter().map(|s| ("snapshot", s)));
    // Partial downloads of pulls a kill interrupted stay, resumable (one per
    // blob, keyed by digest); anything else in the ingest dir is a leak.
    let mut kept = (0, 0);
    for e in dir_entries(&setup.root.join("content").join("ingest")) {
        let reference = std::fs::read_to_string(Path::new(&e).join("ref")).unwrap_or_default();
        if reference.starts_with("fetch-sha256:") {
            kept.0 += 1;
            kept.1 += std::fs::metadata(Path::new(&e).join("data")).map_or(0, |m| m.len());
        } else {
            leaks.push(("ingest", format!("{e} (ref {reference:?})")));
        }
    }
    ctx.stats().kept_ingests = kept;

    ctx.progress("teardown: stopping berthd (SIGTERM)");
    let status = lock(&setup.daemon).stop()?;
    if !status.is_some_and(|s| s.success()) {
        ctx.violation(
            "stop",
            "berthd",
            format!("SIGTERM did not end berthd cleanly: {status:?}"),
        );
    }
    // Processes exit and the kernel drops veths asynchronously: poll briefly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let l = host_leaks(setup);
        if l.is_empty() || Instant::now() >= deadline {
            break l;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    leaks.extend(after);
    for (kind, what) in &leaks {
        eprintln!("LEAK {kind}: {what}");
    }
    ctx.stats().leaks = leaks;
    Ok(())
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// What berthd left on the host after a clean stop.
fn host_leaks(setup: &Setup) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let dir = setup.dir.display().to_string();
    for pid in cri::processes_naming(&dir) {
        out.push(("process", format!("{pid} {}", cri::cmdline(pid))));
    }
    for (cg, pids) in cgroups_below(&setup.cgroup_parent) {
        if pids.is_empty() {
            out.push(("cgroup", cg.display().to_string()));
        } else {
            for pid in pids {
                out.push((
                    "container process",
                    format!("{pid} {} in {}", cri::cmdline(pid), cg.display()),
                ));
            }
        }
    }
    let root = std::fs::canonicalize(&setup.root).unwrap_or_else(|_| setup.root.clone());
    for m in cri::mounts_under(&setup.dir) {
        if Path::new(&m) != root {
            out.push(("mount", m));
        }
    }
    out.extend(setup.net.netns_pins().into_iter().map(|p| ("netns pin", p)));
    out.extend(setup.net.bridge_ports().into_iter().map(|p| ("veth", p)));
    out.extend(setup.net.leases().into_iter().map(|l| ("ipam lease", l)));
    let runc_root = setup.state.join("runc");
    if let Ok(rd) = std::fs::read_dir(&runc_root) {
        for ns in rd.flatten().filter(|e| e.path().is_dir()) {
            for c in dir_entries(&ns.path()) {
                out.push(("runc state", c));
            }
        }
    }
    out
}

/// Every cgroup dir below `parent` (any v1 controller, or the unified tree) with
/// the processes in it, deepest first.
fn cgroups_below(parent: &str) -> Vec<(PathBuf, Vec<i32>)> {
    let rel = parent.trim_start_matches('/');
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    let mut roots: Vec<PathBuf> = rd.flatten().map(|e| e.path().join(rel)).collect();
    roots.push(Path::new("/sys/fs/cgroup").join(rel));
    for root in roots {
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            // `<parent>/pod<uid>` is the pod's cgroup, kubelet's to make and remove;
            // below it are berth's (one per container or sandbox).
            let depth = d.strip_prefix(&root).map_or(0, |r| r.components().count());
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            let procs: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if depth >= 2 || !procs.is_empty() {
                out.push((d.clone(), procs));
            }
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Fails unless `setup`'s tmpfs root is mounted (a sanity check for `--root-mib`).
pub fn root_is_tmpfs(setup: &Setup) -> Result<()> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
    let root = setup.root.display().to_string();
    if !mi
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(root.as_str()) && l.contains(" - tmpfs "))
    {
        bail!("berth's root {root} is not on its tmpfs");
    }
    Ok(())
}
