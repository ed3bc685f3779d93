//! The CRI `runtime.v1.RuntimeService` over [`CriRuntime`]: request
//! plumbing, list streaming, runtime status and metrics. The pod and
//! container semantics are in `sandbox.rs` and `container.rs`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use berth_api::runtime::v1 as cri;
use berth_api::runtime::v1::runtime_service_server::RuntimeService;
use futures::Stream;
use serde_json::json;
use tonic::{Request, Response, Status};

use super::error::CriError;
use super::CriRuntime;
use berth_sysutil::now_nanos;

type GrpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The CRI API version berth serves.
const API_VERSION: &str = "v1";

pub struct CriRuntimeApi {
    rt: Arc<CriRuntime>,
}

impl CriRuntimeApi {
    pub fn new(rt: Arc<CriRuntime>) -> CriRuntimeApi {
        CriRuntimeApi { rt }
    }

    fn chunk(&self) -> usize {
        self.rt.config.cri.stream_chunk.max(1)
    }
}

/// A stream of `items` in messages of at most `n`.
fn chunked<T, M>(items: Vec<T>, n: usize, wrap: fn(Vec<T>) -> M) -> GrpcStream<M>
where
    T: Send + 'static,
    M: Send + 'static,
{
    let mut msgs = Vec::new();
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        msgs.push(Ok(wrap(it.by_ref().take(n).collect())));
    }
    Box::pin(futures::stream::iter(msgs))
}

fn metric_descriptors() -> Vec<cri::MetricDescriptor> {
    let d = |name: &str, help: &str, labels: &[&str]| cri::MetricDescriptor {
        name: name.into(),
        help: help.into(),
        label_keys: labels.iter().map(|s| s.to_string()).collect(),
    };
    vec![
        d(
            "container_cpu_usage_seconds_total",
            "Cumulative cpu time consumed in seconds.",
            &[],
        ),
        d(
            "container_memory_working_set_bytes",
            "Current working set in bytes.",
            &[],
        ),
        d(
            "container_memory_usage_bytes",
            "Current memory usage in bytes, including all memory regardless of when it was accessed.",
            &[],
        ),
        d("container_memory_rss", "Size of RSS in bytes.", &[]),
        d(
            "container_processes",
            "Number of processes running inside the container.",
            &[],
        ),
        d(
            "container_fs_usage_bytes",
            "Number of bytes that are consumed by the container on this filesystem.",
            &["device"],
        ),
        d(
            "container_network_receive_bytes_total",
            "Cumulative count of bytes received.",
            &["interface"],
        ),
        d(
            "container_network_transmit_bytes_total",
            "Cumulative count of bytes transmitted.",
            &["interface"],
        ),
    ]
}

fn metric(name: &str, ty: cri::MetricType, labels: Vec<String>, v: u64) -> cri::Metric {
    cri::Metric {
        name: name.into(),
        timestamp: now_nanos(),
        metric_type: ty as i32,
        label_values: labels,
        value: Some(cri::UInt64Value { value: v }),
    }
}

fn container_metrics(s: &cri::ContainerStats) -> Vec<cri::Metric> {
    use cri::MetricType::{Counter, Gauge};
    let mut out = Vec::new();
    if let Some(v) = s
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
    {
        // The descriptor says seconds; CRI metric values are integers, so
        // this is whole seconds (cadvisor's float is not expressible).
        out.push(metric(
            "container_cpu_usage_seconds_total",
            Counter,
            vec![],
            v.value / 1_000_000_000,
        ));
    }
    if let Some(m) = &s.memory {
        for (name, v) in [
            ("container_memory_working_set_bytes", &m.working_set_bytes),
            ("container_memory_usage_bytes", &m.usage_bytes),
            ("container_memory_rss", &m.rss_bytes),
        ] {
            if let Some(v) = v {
                out.push(metric(name, Gauge, vec![], v.value));
            }
        }
    }
    if let Some(v) = s
        .writable_layer
        .as_ref()
        .and_then(|w| w.used_bytes.as_ref())
    {
        out.push(metric(
            "container_fs_usage_bytes",
            Gauge,
            vec!["rootfs".into()],
            v.value,
        ));
    }
    out
}

#[tonic::async_trait]
impl RuntimeService for CriRuntimeApi {
    async fn version(
        &self,
        _req: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "berth".into(),
            runtime_version: crate::VERSION.into(),
            runtime_api_version: API_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let id = self.rt.run_pod_sandbox(req.into_inner()).await?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        self.rt
            .stop_pod_sandbox(&req.into_inner().pod_sandbox_id)
            .await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        self.rt
            .remove_pod_sandbox(&req.into_inner().pod_sandbox_id)
            .await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        Ok(Response::new(self.rt.pod_sandbox_status(req.into_inner())?))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let items = self.rt.list_pod_sandboxes(req.into_inner().filter);
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    type StreamPodSandboxesStream = GrpcStream<cri::StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(
        &self,
        req: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let items = self.rt.list_pod_sandboxes(req.into_inner().filter);
        Ok(Response::new(chunked(
            items,
            self.chunk(),
            |pod_sandboxes| cri::StreamPodSandboxesResponse { pod_sandboxes },
        )))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let id = self.rt.create_container(req.into_inner()).await?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        self.rt
            .start_container(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = req.into_inner();
        self.rt
            .stop_container(&req.container_id, req.timeout)
            .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        self.rt
            .remove_container(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let containers = self.rt.list_containers(req.into_inner().filter);
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    type StreamContainersStream = GrpcStream<cri::StreamContainersResponse>;

    async fn stream_containers(
        &self,
        req: Request<cri::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let items = self.rt.list_containers(req.into_inner().filter);
        Ok(Response::new(chunked(items, self.chunk(), |containers| {
            cri::StreamContainersResponse { containers }
        })))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        Ok(Response::new(self.rt.container_status(req.into_inner())?))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        self.rt.update_container_resources(req.into_inner()).await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        self.rt
            .reopen_container_log(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        req: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        Ok(Response::new(self.rt.exec_sync(req.into_inner()).await?))
    }

    async fn exec(
        &self,
        req: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let url = self.rt.exec_url(req.into_inner())?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(
        &self,
        req: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let url = self.rt.attach_url(req.into_inner())?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let url = self.rt.port_forward_url(req.into_inner())?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let stats = self
            .rt
            .container_stats(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let stats = self.rt.list_container_stats(req.into_inner().filter).await;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    type StreamContainerStatsStream = GrpcStream<cri::StreamContainerStatsResponse>;

    async fn stream_container_stats(
        &self,
        req: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let stats = self.rt.list_container_stats(req.into_inner().filter).await;
        Ok(Response::new(chunked(
            stats,
            self.chunk(),
            |container_stats| cri::StreamContainerStatsResponse { container_stats },
        )))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let stats = self
            .rt
            .pod_sandbox_stats(&req.into_inner().pod_sandbox_id)
            .await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let stats = self
            .rt
            .list_pod_sandbox_stats(req.into_inner().filter)
            .await;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    type StreamPodSandboxStatsStream = GrpcStream<cri::StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let stats = self
            .rt
            .list_pod_sandbox_stats(req.into_inner().filter)
            .await;
        Ok(Response::new(chunked(
            stats,
            self.chunk(),
            |pod_sandbox_stats| cri::StreamPodSandboxStatsResponse { pod_sandbox_stats },
        )))
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        // kubelet sends the node's pod CIDR here; berth takes pod addresses
        // from the CNI config (as containerd does without a conf template),
        // so there is nothing to change. Logged so an operator can see it.
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        tracing::info!(pod_cidr = %cidr, "UpdateRuntimeConfig (pod CIDR comes from the CNI config)");
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        req: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let verbose = req.into_inner().verbose;
        let (net_ok, net_reason, net_msg) = match self.rt.host.network_name().await {
            Ok(name) => (true, String::new(), format!("CNI network {name}")),
            Err(e) => (false, "NetworkPluginNotReady".to_string(), e.to_string()),
        };
        let shim = crate::shim::binary::resolve(&self.rt.config);
        let (rt_ok, rt_reason, rt_msg) = match &shim {
            Ok(_) => (true, String::new(), String::new()),
            Err(e) => (false, "ShimNotFound".to_string(), e.to_string()),
        };
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: rt_ok,
                reason: rt_reason,
                message: rt_msg,
            },
            cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: net_ok,
                reason: net_reason,
                message: if net_ok {
                    String::new()
                } else {
                    net_msg.clone()
                },
            },
        ];
        let mut info = HashMap::new();
        if verbose {
            let c = &self.rt.config;
            info.insert(
                "config".to_string(),
                json!({
                    "root": c.root,
                    "state": c.state,
                    "sandboxMode": c.cri.sandbox_mode,
                    "sandboxImage": c.cri.sandbox_image,
                    "cgroupDriver": c.cri.cgroup_driver,
                    "cgroupParent": c.cri.cgroup_parent,
                    "shim": shim.as_ref().map(|s| s.path.display().to_string()).unwrap_or_default(),
                    "runtime": c.shim.runtime,
                    "defaultRuntime": c.cri.default_runtime,
                    "runtimes": c.runtime_handlers(),
                    "snapshotter": c.snapshotter.backend,
                    "cni": {"confDir": c.cni.conf_dir, "binDirs": c.cni.bin_dirs, "network": net_msg},
                })
                .to_string(),
            );
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            // Each handler by name, the default also as "" (what a pod
            // without a RuntimeClass asks for), as containerd 2.0 lists them.
            runtime_handlers: std::iter::once(String::new())
                .chain(
                    self.rt
                        .config
                        .runtime_handlers()
                        .into_iter()
                        .map(|h| h.name),
                )
                .map(|name| cri::RuntimeHandler {
                    name,
                    // Neither is implemented by berth's spec generation.
                    features: Some(cri::RuntimeHandlerFeatures {
                        recursive_read_only_mounts: false,
                        user_namespaces: false,
                    }),
                })
                .collect(),
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: false,
                user_namespaces_host_network: false,
            }),
        }))
    }

    async fn checkpoint_container(
        &self,
        _req: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(CriError::unimplemented(
            "CheckpointContainer",
            "berth does not checkpoint (no CRIU integration)",
        )
        .into())
    }

    async fn checkpoint_pod(
        &self,
        _req: Request<cri::CheckpointPodRequest>,
    ) -> Result<Response<cri::CheckpointPodResponse>, Status> {
        Err(CriError::unimplemented(
            "CheckpointPod",
            "berth does not checkpoint (no CRIU integration)",
        )
        .into())
    }

    async fn restore_pod(
        &self,
        _req: Request<cri::RestorePodRequest>,
    ) -> Result<Response<cri::RestorePodResponse>, Status> {
        Err(CriError::unimplemented(
            "RestorePod",
            "berth does not checkpoint or restore (no CRIU integration)",
        )
        .into())
    }

    type GetContainerEventsStream = GrpcStream<cri::ContainerEventResponse>;

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let mut rx = self.rt.subscribe();
        let stream = async_stream::stream! {
            loop {
                match rx.recv().await {
                    Ok(ev) => yield Ok(ev),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a slow event subscriber missed events");
                    }
                    Err(_) => break,
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: metric_descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        let pod_metrics = self.pod_metrics().await;
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
    }

    type StreamPodSandboxMetricsStream = GrpcStream<cri::StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        _req: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let pod_metrics = self.pod_metrics().await;
        Ok(Response::new(chunked(
            pod_metrics,
            self.chunk(),
            |pod_sandbox_metrics| cri::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            },
        )))
    }

    async fn runtime_config(
        &self,
        _req: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        let driver = if self.rt.config.cri.cgroup_driver == "systemd" {
            cri::CgroupDriver::Systemd
        } else {
            cri::CgroupDriver::Cgroupfs
        };
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        }))
    }

    async fn update_pod_sandbox_resources(
        &self,
        req: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        let req = req.into_inner();
        // A pinned pod has no process of its own: its containers' limits
        // (UpdateContainerResources) are what the kernel enforces, and the
        // pod-level cgroup is kubelet's. This validates and acknowledges,
        // as containerd does without NRI plugins.
        let sandbox = self.rt.sandbox(&req.pod_sandbox_id)?;
        for r in [&req.resources, &req.overhead].into_iter().flatten() {
            super::spec::linux_resources(
                &format!("pod sandbox {}", sandbox.id),
                r,
                &self.rt.spec_opts,
            )
            .map_err(CriError::from)?;
        }
        tracing::info!(pod = %sandbox.id, "pod sandbox resources updated");
        Ok(Response::new(cri::UpdatePodSandboxResourcesResponse {}))
    }
}

impl CriRuntimeApi {
    async fn pod_metrics(&self) -> Vec<cri::PodSandboxMetrics> {
        use cri::MetricType::Counter;
        let stats = self.rt.list_pod_sandbox_stats(None).await;
        stats
            .into_iter()
            .map(|p| {
                let id = p.attributes.map(|a| a.id).unwrap_or_default();
                let linux = p.linux.unwrap_or_default();
                let mut metrics = Vec::new();
                if let Some(net) = &linux.network {
                    for i in &net.interfaces {
                        if let Some(v) = &i.rx_bytes {
                            metrics.push(metric(
                                "container_network_receive_bytes_total",
                                Counter,
                                vec![i.name.clone()],
                                v.value,
                            ));
                        }
                        if let Some(v) = &i.tx_bytes {
                            metrics.push(metric(
                                "container_network_transmit_bytes_total",
                                Counter,
                                vec![i.name.clone()],
                                v.value,
                            ));
                        }
                    }
                }
                let container_metrics = linux
                    .containers
                    .iter()
                    .map(|c| cri::ContainerMetrics {
                        container_id: c
                            .attributes
                            .as_ref()
                            .map(|a| a.id.clone())
                            .unwrap_or_default(),
                        metrics: container_metrics(c),
                    })
                    .collect();
                cri::PodSandboxMetrics {
                    pod_sandbox_id: id,
                    metrics,
                    container_metrics,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn lists_stream_in_chunks() {
        let s = chunked((0..5).collect::<Vec<u32>>(), 2, |v| v);
        let got: Vec<Vec<u32>> = s.map(|r| r.unwrap()).collect().await;
        assert_eq!(got, vec![vec![0, 1], vec![2, 3], vec![4]]);
        let s = chunked(Vec::<u32>::new(), 2, |v| v);
        assert_eq!(s.count().await, 0);
    }

    #[test]
    fn descriptors_cover_metrics() {
        let names: Vec<String> = metric_descriptors().into_iter().map(|d| d.name).collect();
        let stats = cri::ContainerStats {
            cpu: Some(cri::CpuUsage {
                usage_core_nano_seconds: Some(cri::UInt64Value {
                    value: 3_000_000_000,
                }),
                ..Default::default()
            }),
            memory: Some(cri::MemoryUsage {
                working_set_bytes: Some(cri::UInt64Value { value: 10 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = container_metrics(&stats);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].value.as_ref().unwrap().value, 3);
        for x in &m {
            assert!(names.contains(&x.name), "{}", x.name);
        }
    }
}
