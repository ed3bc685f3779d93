//! PodSandboxStatus and ListPodSandbox: pods as the CRI reports them.

use super::*;

impl CriRuntime {
    /// Ready, and its pause process (if it has one) still runs.
    pub(super) fn sandbox_ready(&self, rec: &SandboxRecord) -> bool {
        rec.state == SandboxState::Ready
            && rec.pause.as_deref().is_none_or(|id| {
                self.tasks
                    .get_task(id)
                    .is_some_and(|t| t.record().status == crate::tasks::TaskStatus::Running)
            })
    }

    pub(crate) fn sandbox_status_pb(&self, rec: &SandboxRecord) -> cri::PodSandboxStatus {
        let cfg = rec.config();
        let state = if self.sandbox_ready(rec) {
            cri::PodSandboxState::SandboxReady
        } else {
            cri::PodSandboxState::SandboxNotready
        };
        let mut ips = rec.ips.iter();
        let network = if host_network(cfg) {
            None
        } else {
            Some(cri::PodSandboxNetworkStatus {
                ip: ips.next().cloned().unwrap_or_default(),
                additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
            })
        };
        cri::PodSandboxStatus {
            id: rec.id.clone(),
            metadata: cfg.metadata.clone(),
            state: state as i32,
            created_at: rec.created_at,
            network,
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(namespace_options(cfg)),
                }),
            }),
            labels: cfg.labels.clone(),
            annotations: cfg.annotations.clone(),
            runtime_handler: rec.runtime_handler.clone(),
        }
    }

    pub fn pod_sandbox_status(
        &self,
        req: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse> {
        let sandbox = self.sandbox(&req.pod_sandbox_id)?;
        let rec = sandbox.record();
        let mut info = HashMap::new();
        if req.verbose {
            let v = json!({
                "pid": rec.pause_pid,
                "pauseContainer": rec.pause,
                "sandboxMode": self.config.cri.sandbox_mode,
                "netNamespacePath": rec.netns,
                "ipcNamespacePath": rec.ipc_ns,
                "utsNamespacePath": rec.uts_ns,
                "cgroupParent": rec.cgroup_parent,
                "podDir": rec.dir,
                "runtimeHandler": rec.runtime_handler,
                "config": pod_config_json(rec.config()),
            });
            info.insert("info".to_string(), v.to_string());
        }
        let containers_statuses = self
            .containers_of(&rec.id)
            .iter()
            .map(|t| self.container_status_pb(&t.record()))
            .collect();
        Ok(cri::PodSandboxStatusResponse {
            status: Some(self.sandbox_status_pb(&rec)),
            info,
            containers_statuses,
            timestamp: now_nanos(),
        })
    }

    pub fn list_pod_sandboxes(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Vec<cri::PodSandbox> {
        // Built from the records in place (no copies of whole records):
        // kubelet lists every second.
        let out: Vec<cri::PodSandbox> = lock(&self.sandboxes)
            .values()
            .filter_map(|s| {
                let r = lock(&s.rec);
                let state = if self.sandbox_ready(&r) {
                    cri::PodSandboxState::SandboxReady
                } else {
                    cri::PodSandboxState::SandboxNotready
                } as i32;
                let cfg = r.config();
                if let Some(f) = &filter {
                    let keep = (f.id.is_empty() || r.id.starts_with(&f.id))
                        && f.state.as_ref().is_none_or(|s| s.state == state)
                        && (f.label_selector.is_empty()
                            || labels_match(&cfg.labels, &f.label_selector));
                    if !keep {
                        return None;
                    }
                }
                Some(cri::PodSandbox {
                    id: r.id.clone(),
                    metadata: cfg.metadata.clone(),
                    state,
                    created_at: r.created_at,
                    labels: cfg.labels.clone(),
                    annotations: cfg.annotations.clone(),
                    runtime_handler: r.runtime_handler.clone(),
                })
            })
            .collect();
        in_created_order(out, |p| p.created_at)
    }
}
