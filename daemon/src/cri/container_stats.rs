//! ContainerStats, ListContainerStats, PodSandboxStats and
//! ListPodSandboxStats: cgroup readings, writable-layer usage and the pod's
//! network counters, in CRI form.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_api::runtime::v1 as cri;

use super::error::Result;
use super::{labels_match, lock, stats, CriRuntime};
use crate::metadata::cri::SandboxState;
use crate::tasks::{TaskKind, TaskRecord, TaskStatus};
use berth_sysutil::now_nanos;

/// How often the writable layers' disk usage is measured.
const LAYER_USAGE_PERIOD: Duration = Duration::from_secs(10);

fn u64v(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

fn cpu_pb(s: &stats::CgroupStats) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: s.timestamp_ns,
        usage_core_nano_seconds: u64v(s.cpu_usage_ns),
        usage_nano_cores: None,
        psi: None,
    }
}

fn memory_pb(s: &stats::CgroupStats) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: s.timestamp_ns,
        working_set_bytes: u64v(s.memory_working_set_bytes),
        available_bytes: u64v(s.memory_available_bytes),
        usage_bytes: u64v(s.memory_usage_bytes),
        rss_bytes: u64v(s.memory_rss_bytes),
        page_faults: u64v(s.page_faults),
        major_page_faults: u64v(s.major_page_faults),
        psi: None,
    }
}

impl CriRuntime {
    /// Stats of one container: its cgroup and its writable layer. Blocking.
    fn container_stats_blocking(
        layout: &stats::CgroupLayout,
        layer_usage: &HashMap<String, (u64, u64, i64)>,
        rec: &TaskRecord,
    ) -> cri::ContainerStats {
        let meta = rec.cri.clone().unwrap_or_default();
        let cg = if rec.status == TaskStatus::Running && !rec.cgroups_path.is_empty() {
            stats::read(layout, &rec.cgroups_path).ok()
        } else {
            None
        };
        let usage = layer_usage.get(&rec.snapshot).copied();
        cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: rec.id.clone(),
                metadata: Some(cri::ContainerMetadata {
                    name: meta.name.clone(),
                    attempt: meta.attempt,
                }),
                labels: meta.labels.into_iter().collect(),
                annotations: meta.annotations.into_iter().collect(),
            }),
            cpu: cg.as_ref().map(cpu_pb),
            memory: cg.as_ref().map(memory_pb),
            writable_layer: usage.map(|(size, inodes, at)| cri::FilesystemUsage {
                timestamp: at,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: rec.rootfs().display().to_string(),
                }),
                used_bytes: Some(cri::UInt64Value { value: size }),
                inodes_used: Some(cri::UInt64Value { value: inodes }),
            }),
            swap: None,
            io: None,
        }
    }

    async fn stats_of(&self, recs: Vec<TaskRecord>) -> Vec<cri::ContainerStats> {
        let layout = self.cgroups.clone();
        let usage = lock(&self.layer_usage).clone();
        tokio::task::spawn_blocking(move || {
            recs.iter()
                .map(|r| Self::container_stats_blocking(&layout, &usage, r))
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Keeps the writable layers' disk usage in memory, refreshed every
    /// `LAYER_USAGE_PERIOD` (as containerd's snapshot syncer does): a stats
    /// call must not walk a container's files.
    pub fn spawn_layer_usage_sync(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(rt) = this.upgrade() else { return };
                rt.refresh_layer_usage().await;
                drop(rt);
                tokio::time::sleep(LAYER_USAGE_PERIOD).await;
            }
        });
    }

    pub(crate) async fn refresh_layer_usage(&self) {
        let keys: Vec<String> = self
            .tasks
            .list_kind(TaskKind::Cri)
            .into_iter()
            .filter(|r| r.status.is_live())
            .map(|r| r.snapshot)
            .collect();
        let snap = self.tasks.snapshotter();
        let fresh = tokio::task::spawn_blocking(move || {
            keys.into_iter()
                .filter_map(|k| {
                    let u = snap.usage(&k).ok()?;
                    Some((k, (u.size, u.inodes, now_nanos())))
                })
                .collect::<HashMap<_, _>>()
        })
        .await
        .unwrap_or_default();
        *lock(&self.layer_usage) = fresh;
    }

    pub async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let task = self.container(id)?;
        Ok(self
            .stats_of(vec![task.record()])
            .await
            .pop()
            .unwrap_or_default())
    }

    pub async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Vec<cri::ContainerStats> {
        let recs: Vec<TaskRecord> = self
            .tasks
            .list_kind(TaskKind::Cri)
            .into_iter()
            .filter(|r| r.status == TaskStatus::Running)
            .filter(|r| match &filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || r.id.starts_with(&f.id))
                        && (f.pod_sandbox_id.is_empty()
                            || r.sandbox_id.starts_with(&f.pod_sandbox_id))
                        && (f.label_selector.is_empty()
                            || r.cri
                                .as_ref()
                                .is_some_and(|m| labels_match(&m.labels, &f.label_selector)))
                }
            })
            .collect();
        self.stats_of(recs).await
    }

    /// Stats of one pod: its cgroup, its network interfaces, its containers.
    pub async fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats> {
        let sandbox = self.sandbox(id)?;
        let rec = sandbox.record();
        let containers: Vec<TaskRecord> = self
            .containers_of(&rec.id)
            .iter()
            .map(|t| t.record())
            .filter(|r| r.status == TaskStatus::Running)
            .collect();
        let containers = self.stats_of(containers).await;
        let layout = self.cgroups.clone();
        let cgroup = rec.cgroup_parent.clone();
        let driver_systemd = self.config.cri.cgroup_driver == "systemd";
        let cg = tokio::task::spawn_blocking(move || {
            // A systemd parent is a slice name; the reader resolves the
            // "slice:prefix:name" form, so give it one.
            let path = if driver_systemd && !cgroup.starts_with('/') {
                format!("{cgroup}::")
            } else {
                cgroup
            };
            stats::read(&layout, &path).ok()
        })
        .await
        .ok()
        .flatten();
        let network = match &rec.netns {
            Some(ns) => network_usage(ns).await,
            None => None,
        };
        let cfg = rec.config();
        Ok(cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: rec.id.clone(),
                metadata: cfg.metadata.clone(),
                labels: cfg.labels.clone(),
                annotations: cfg.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: cg.as_ref().map(cpu_pb),
                memory: cg.as_ref().map(memory_pb),
                network,
                process: cg.as_ref().map(|s| cri::ProcessUsage {
                    timestamp: s.timestamp_ns,
                    process_count: u64v(s.pids),
                }),
                containers,
                io: None,
            }),
            windows: None,
        })
    }

    pub async fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Vec<cri::PodSandboxStats> {
        let ids: Vec<String> = lock(&self.sandboxes)
            .values()
            .map(|s| s.record())
            .filter(|r| r.state == SandboxState::Ready)
            .filter(|r| match &filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || r.id.starts_with(&f.id))
                        && (f.label_selector.is_empty()
                            || labels_match(&r.config().labels, &f.label_selector))
                }
            })
            .map(|r| r.id)
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Ok(s) = self.pod_sandbox_stats(&id).await {
                out.push(s);
            }
        }
        out
    }
}

/// rx/tx counters of the pod's interfaces, read inside its namespace.
async fn network_usage(netns: &Path) -> Option<cri::NetworkUsage> {
    let ns = berth_network::NetNs::from_path(netns);
    let text = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))
        .await
        .ok()?
        .ok()?;
    let now = now_nanos();
    let mut interfaces = Vec::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() < 16 {
            continue;
        }
        interfaces.push(cri::NetworkInterfaceUsage {
            name: name.to_string(),
            rx_bytes: u64v(Some(f[0])),
            rx_errors: u64v(Some(f[2])),
            tx_bytes: u64v(Some(f[8])),
            tx_errors: u64v(Some(f[10])),
        });
    }
    let default_interface = interfaces
        .iter()
        .find(|i| i.name == berth_network::POD_IFNAME)
        .cloned();
    Some(cri::NetworkUsage {
        timestamp: now,
        default_interface,
        interfaces,
    })
}
