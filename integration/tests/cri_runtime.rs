//! End-to-end CRI `runtime.v1.RuntimeService`: a real berthd (temp root and
//! state, its own CNI network with a unique bridge and subnet, its own cgroup
//! parent) driven over its Unix socket with the tonic-generated CRI client,
//! running the offline busybox fixture through berth's shim and runc.
//!
//! Needs root, runc, the CNI plugins in /usr/lib/cni and cgroup v1 (memory
//! controller at /sys/fs/cgroup/memory). Tests that run pods with CNI hold
//! one lock (bridges, routes and iptables are host-wide).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use integration::cri::{
    self, api, cstatus, exec, exec_ok, expect_code, has_line, host_network_lock, list_containers,
    list_pods, log_path_of, namespaces, now_nanos, pod_status, wait_container_state, wait_log,
    CriOpts, Env, TestNet, TIMEOUT,
};
use integration::fixtures;
use integration::registry::{Registry, RegistryOpts};
use tokio_stream::StreamExt;
use tonic::Code;

fn condition<'a>(st: &'a api::StatusResponse, ty: &str) -> Result<&'a api::RuntimeCondition> {
    st.status
        .as_ref()
        .context("StatusResponse without status")?
        .conditions
        .iter()
        .find(|c| c.r#type == ty)
        .with_context(|| format!("no {ty} condition in {st:?}"))
}

fn ids_of_containers(cs: &[api::Container]) -> Vec<String> {
    let mut v: Vec<String> = cs.iter().map(|c| c.id.clone()).collect();
    v.sort();
    v
}

fn ids_of_pods(ps: &[api::PodSandbox]) -> Vec<String> {
    let mut v: Vec<String> = ps.iter().map(|p| p.id.clone()).collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn state_filter(s: api::ContainerState) -> Option<api::ContainerStateValue> {
    Some(api::ContainerStateValue { state: s as i32 })
}

fn pod_state_filter(s: api::PodSandboxState) -> Option<api::PodSandboxStateValue> {
    Some(api::PodSandboxStateValue { state: s as i32 })
}

fn labels(k: &str, v: &str) -> HashMap<String, String> {
    HashMap::from([(k.to_string(), v.to_string())])
}

/// The pod's IPv4 address from PodSandboxStatus.
async fn pod_ip(rt: &mut cri::Rt, id: &str) -> Result<Ipv4Addr> {
    let st = pod_status(rt, id, false)
        .await?
        .status
        .context("no status")?;
    let ip = st
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    ip.parse()
        .with_context(|| format!("pod {id} has no IPv4 address: {st:?}"))
}

async fn stop_container(rt: &mut cri::Rt, id: &str, timeout: i64) -> Result<(), tonic::Status> {
    rt.stop_container(api::StopContainerRequest {
        container_id: id.to_string(),
        timeout,
    })
    .await
    .map(|_| ())
}

async fn remove_container(rt: &mut cri::Rt, id: &str) -> Result<(), tonic::Status> {
    rt.remove_container(api::RemoveContainerRequest {
        container_id: id.to_string(),
    })
    .await
    .map(|_| ())
}

/// `line N` numbers on stdout of a counting container, in file order.
fn counted(lines: &[cri::LogLine], word: &str) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l.stream == "stdout" && l.tag == "F")
        .filter_map(|l| l.text.strip_prefix(word)?.trim().parse().ok())
        .collect()
}

/// A shell loop printing `<word> 0`, `<word> 1`, ... every 0.2 s.
fn counter_cmd(word: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("i=0; while true; do echo {word} $i; i=$((i+1)); sleep 0.2; done"),
    ]
}

/// A non-loopback interface of the host (from /proc/net/dev).
fn host_iface() -> Result<String> {
    let dev = std::fs::read_to_string("/proc/net/dev")?;
    dev.lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_string())
        .find(|n| n != "lo" && !n.starts_with("veth") && !n.starts_with("bc"))
        .context("no non-lo interface on the host")
}

// ---------------------------------------------------------------------------
// 1. Version, Status, RuntimeConfig

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_status_runtime_config() -> Result<()> {
    let env = Env::start()?;
    let mut rt = env.rt().await?;

    let v = rt
        .version(api::VersionRequest {
            version: "v1".into(),
        })
        .await?
        .into_inner();
    ensure!(v.runtime_name == "berth", "{v:?}");
    ensure!(v.runtime_api_version == "v1", "{v:?}");
    ensure!(!v.runtime_version.is_empty(), "{v:?}");
    ensure!(!v.version.is_empty(), "{v:?}");

    let st = rt
        .status(api::StatusRequest { verbose: true })
        .await?
        .into_inner();
    let r = condition(&st, "RuntimeReady")?;
    ensure!(r.status, "{r:?}");
    let n = condition(&st, "NetworkReady")?;
    ensure!(n.status, "NetworkReady with a conflist: {n:?}");

    let rc = rt
        .runtime_config(api::RuntimeConfigRequest {})
        .await?
        .into_inner();
    let driver = rc.linux.as_ref().map(|l| l.cgroup_driver);
    ensure!(
        driver == Some(api::CgroupDriver::Cgroupfs as i32),
        "cgroup driver: {rc:?}"
    );

    // No network config: the runtime is ready, the network is not, and says why.
    let env2 = Env::start_with(TestNet::empty()?, CriOpts::default())?;
    let mut rt2 = env2.rt().await?;
    let st = rt2
        .status(api::StatusRequest { verbose: false })
        .await?
        .into_inner();
    let r = condition(&st, "RuntimeReady")?;
    ensure!(r.status, "{r:?}");
    let n = condition(&st, "NetworkReady")?;
    ensure!(!n.status, "NetworkReady without a conflist: {n:?}");
    ensure!(
        !n.reason.is_empty(),
        "NetworkReady=false needs a reason: {n:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Pod and container lifecycle

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_and_container_lifecycle() -> Result<()> {
    let _net = host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;
    let t0 = now_nanos();

    // --- RunPodSandbox
    let pod = env.pod("web")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let ps = pod_status(&mut rt, &pod_id, true).await?;
    let s = ps.status.clone().context("no pod status")?;
    ensure!(s.id == pod_id, "{s:?}");
    ensure!(
        s.state == api::PodSandboxState::SandboxReady as i32,
        "{s:?}"
    );
    ensure!(s.metadata == pod.metadata, "{s:?}");
    ensure!(
        s.labels == pod.labels && s.annotations == pod.annotations,
        "{s:?}"
    );
    ensure!(
        s.created_at >= t0 && s.created_at <= now_nanos(),
        "created_at {s:?}"
    );
    let ip = pod_ip(&mut rt, &pod_id).await?;
    ensure!(
        ip.to_string().starts_with(&format!("{}.", env.net.prefix)) && ip.octets()[0] == 10,
        "pod IP {ip} not in {}.0/24",
        env.net.prefix
    );
    cri::verbose_info(&ps.info).context("PodSandboxStatus verbose info")?;
    ensure!(
        env.net.bridge_ports().len() == 1,
        "one veth: {:?}",
        env.net.bridge_ports()
    );
    ensure!(
        env.net.netns_pins().len() == 1,
        "one netns pin: {:?}",
        env.net.netns_pins()
    );

    // --- CreateContainer / StartContainer
    let mut c1cfg = env.container(
        "main",
        &["sh", "-c", "echo hello; echo err >&2; sleep 3600"],
    );
    c1cfg.envs = vec![api::KeyValue {
        key: "BERTH_E2E".into(),
        value: "env-from-config".into(),
    }];
    let log1 = log_path_of(&pod, &c1cfg)?;
    let c1 = env.create(&mut rt, &pod_id, &pod, &c1cfg).await?;
    let st = cstatus(&mut rt, &c1).await?;
    ensure!(st.id == c1, "{st:?}");
    ensure!(
        st.state == api::ContainerState::ContainerCreated as i32,
        "{st:?}"
    );
    ensure!(st.metadata == c1cfg.metadata, "{st:?}");
    ensure!(
        st.labels == c1cfg.labels && st.annotations == c1cfg.annotations,
        "{st:?}"
    );
    ensure!(
        st.created_at >= t0 && st.created_at <= now_nanos(),
        "created_at: {st:?}"
    );
    ensure!(st.started_at == 0 && st.finished_at == 0, "{st:?}");
    ensure!(
        st.log_path == log1.display().to_string(),
        "log_path {:?} != {}",
        st.log_path,
        log1.display()
    );
    ensure!(!st.image_ref.is_empty(), "image_ref: {st:?}");

    rt.start_container(api::StartContainerRequest {
        container_id: c1.clone(),
    })
    .await
    .map_err(|s| env.status_err("StartContainer", s))?;
    let st = cstatus(&mut rt, &c1).await?;
    ensure!(
        st.state == api::ContainerState::ContainerRunning as i32,
        "{st:?}"
    );
    ensure!(
        st.started_at >= st.created_at && st.started_at <= now_nanos(),
        "started_at: {st:?}"
    );
    ensure!(st.finished_at == 0, "{st:?}");
    let pid1 = cri::container_pid(&mut rt, &c1).await?;
    ensure!(cri::alive(pid1), "pid {pid1} of {c1} not alive");
    // A retried StartContainer (kubelet's, after a dropped connection) gets
    // the first answer and changes nothing.
    rt.start_container(api::StartContainerRequest {
        container_id: c1.clone(),
    })
    .await
    .map_err(|s| env.status_err("StartContainer (retry)", s))?;
    ensure!(cri::container_pid(&mut rt, &c1).await? == pid1);
    ensure!(cstatus(&mut rt, &c1).await?.started_at == st.started_at);
    // The pod's shim names the pod in its command line: what the leak check
    // looks for once the pod is gone.
    let shims: Vec<String> = cri::processes_naming(&pod_id)
        .into_iter()
        .map(cri::cmdline)
        .collect();
    ensure!(
        shims.iter().any(|c| c.contains("shim")),
        "no shim process names pod {pod_id}: {shims:?}"
    );
    let cg = cri::memory_cgroup_of(pid1)?;
    let parent = pod.linux.as_ref().unwrap().cgroup_parent.clone();
    ensure!(
        cg.starts_with(&parent),
        "memory cgroup {cg} not below {parent}"
    );
    let vinfo = cri::verbose_info(&cri::container_status(&mut rt, &c1, true).await?.info)?;
    ensure!(vinfo.is_object(), "{vinfo}");

    // --- Logs in CRI format
    let lines = wait_log(&log1, "hello and err in the log", TIMEOUT, |l| {
        has_line(l, "stdout", "hello") && has_line(l, "stderr", "err")
    })?;
    ensure!(lines.len() == 2, "{lines:?}");

    // --- A second container (created, not started) for the filters
    let c2cfg = env.container("done", &["sh", "-c", "echo bye"]);
    let log2 = log_path_of(&pod, &c2cfg)?;
    let c2 = env.create(&mut rt, &pod_id, &pod, &c2cfg).await?;

    // --- ListContainers with filters
    let all = list_containers(&mut rt, None).await?;
    ensure!(
        ids_of_containers(&all) == sorted(vec![c1.clone(), c2.clone()]),
        "{all:?}"
    );
    let l1 = all.iter().find(|c| c.id == c1).unwrap();
    ensure!(
        l1.pod_sandbox_id == pod_id && l1.metadata == c1cfg.metadata,
        "{l1:?}"
    );
    ensure!(
        l1.state == api::ContainerState::ContainerRunning as i32,
        "{l1:?}"
    );
    ensure!(
        l1.labels == c1cfg.labels && l1.annotations == c1cfg.annotations,
        "{l1:?}"
    );
    ensure!(!l1.image_ref.is_empty() && l1.created_at > 0, "{l1:?}");
    let f = |id: &str| api::ContainerFilter {
        id: id.to_string(),
        ..Default::default()
    };
    ensure!(ids_of_containers(&list_containers(&mut rt, Some(f(&c1))).await?) == vec![c1.clone()]);
    ensure!(
        ids_of_containers(&list_containers(&mut rt, Some(f(&c1[..12]))).await?) == vec![c1.clone()],
        "id prefix filter"
    );
    ensure!(list_containers(&mut rt, Some(f("0000nothere")))
        .await?
        .is_empty());
    let running = list_containers(
        &mut rt,
        Some(api::ContainerFilter {
            state: state_filter(api::ContainerState::ContainerRunning),
            ..Default::default()
        }),
    )
    .await?;
    ensure!(
        ids_of_containers(&running) == vec![c1.clone()],
        "running: {running:?}"
    );
    let created = list_containers(
        &mut rt,
        Some(api::ContainerFilter {
            state: state_filter(api::ContainerState::ContainerCreated),
            ..Default::default()
        }),
    )
    .await?;
    ensure!(
        ids_of_containers(&created) == vec![c2.clone()],
        "created: {created:?}"
    );
    let in_pod = list_containers(
        &mut rt,
        Some(api::ContainerFilter {
            pod_sandbox_id: pod_id.clone(),
            ..Default::default()
        }),
    )
    .await?;
    ensure!(in_pod.len() == 2, "{in_pod:?}");
    let other_pod = list_containers(
        &mut rt,
        Some(api::ContainerFilter {
            pod_sandbox_id: "0000nothere".into(),
            ..Default::default()
        }),
    )
    .await?;
    ensure!(other_pod.is_empty(), "{other_pod:?}");
    let by_label = list_containers(
        &mut rt,
        Some(api::ContainerFilter {
            label_selector: labels("ctr", "main"),
            ..Default::default()
        }),
    )
    .await?;
    ensure!(
        ids_of_containers(&by_label) == vec![c1.clone()],
        "{by_label:?}"
    );
    let no_label = list_containers(
        &mut rt,
        Some(api::ContainerFilter {
            label_selector: labels("ctr", "nomatch"),
            ..Default::default()
        }),
    )
    .await?;
    ensure!(no_label.is_empty(), "{no_label:?}");

    // --- ListPodSandbox with filters
    let pods = list_pods(&mut rt, None).await?;
    ensure!(ids_of_pods(&pods) == vec![pod_id.clone()], "{pods:?}");
    let p = &pods[0];
    ensure!(
        p.metadata == pod.metadata && p.labels == pod.labels,
        "{p:?}"
    );
    ensure!(
        p.state == api::PodSandboxState::SandboxReady as i32 && p.created_at > 0,
        "{p:?}"
    );
    let pf = |f: api::PodSandboxFilter| f;
    for (what, filter, want) in [
        (
            "id",
            pf(api::PodSandboxFilter {
                id: pod_id.clone(),
                ..Default::default()
            }),
            true,
        ),
        (
            "id prefix",
            pf(api::PodSandboxFilter {
                id: pod_id[..12].to_string(),
                ..Default::default()
            }),
            true,
        ),
        (
            "other id",
            pf(api::PodSandboxFilter {
                id: "0000nothere".into(),
                ..Default::default()
            }),
            false,
        ),
        (
            "ready",
            pf(api::PodSandboxFilter {
                state: pod_state_filter(api::PodSandboxState::SandboxReady),
                ..Default::default()
            }),
            true,
        ),
        (
            "notready",
            pf(api::PodSandboxFilter {
                state: pod_state_filter(api::PodSandboxState::SandboxNotready),
                ..Default::default()
            }),
            false,
        ),
        (
            "label",
            pf(api::PodSandboxFilter {
                label_selector: labels("app", "web"),
                ..Default::default()
            }),
            true,
        ),
        (
            "other label",
            pf(api::PodSandboxFilter {
                label_selector: labels("app", "db"),
                ..Default::default()
            }),
            false,
        ),
    ] {
        let got = list_pods(&mut rt, Some(filter)).await?;
        let want = if want { vec![pod_id.clone()] } else { vec![] };
        ensure!(
            ids_of_pods(&got) == want,
            "ListPodSandbox filter {what}: {got:?}"
        );
    }

    // --- ExecSync
    let r = exec(&mut rt, &c1, &["echo", "hi"], 10).await?;
    ensure!(r.stdout == b"hi\n" && r.exit_code == 0, "{r:?}");
    let r = exec(&mut rt, &c1, &["sh", "-c", "echo oops >&2; exit 3"], 10).await?;
    ensure!(r.exit_code == 3, "{r:?}");
    ensure!(r.stderr == b"oops\n" && r.stdout.is_empty(), "{r:?}");
    let started = Instant::now();
    // A unique argument, to find the command on the host afterwards.
    let r = exec(&mut rt, &c1, &["sleep", "1317"], 1).await;
    let took = started.elapsed();
    match r {
        Err(s) => ensure!(
            s.code() == Code::DeadlineExceeded,
            "ExecSync timeout: {:?}: {}",
            s.code(),
            s.message()
        ),
        Ok(r) => anyhow::bail!("ExecSync with timeout 1 of sleep 1317 returned {r:?}"),
    }
    // Far below the command's 1317 s, with room for a loaded machine.
    ensure!(
        took < Duration::from_secs(20),
        "ExecSync timeout took {took:?}"
    );
    // The timed-out command was killed; the container is unharmed.
    integration::util::wait_for("the timed-out exec to be killed", TIMEOUT, || {
        Ok(cri::processes_naming("sleep 1317").is_empty().then_some(()))
    })?;
    ensure!(exec_ok(&mut rt, &c1, &["true"]).await?.is_empty());
    // The config's environment and the pod's hostname (its own UTS namespace).
    ensure!(exec_ok(&mut rt, &c1, &["sh", "-c", "echo $BERTH_E2E"]).await? == "env-from-config\n");
    ensure!(exec_ok(&mut rt, &c1, &["hostname"]).await? == format!("{}\n", pod.hostname));

    // --- Stats
    let cs = rt
        .container_stats(api::ContainerStatsRequest {
            container_id: c1.clone(),
        })
        .await?
        .into_inner()
        .stats
        .context("ContainerStats without stats")?;
    ensure!(
        cs.attributes.as_ref().map(|a| a.id.as_str()) == Some(c1.as_str()),
        "{cs:?}"
    );
    let ws = cs
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value)
        .unwrap_or(0);
    ensure!(ws > 0, "memory working set: {cs:?}");
    let cpu = cs.cpu.as_ref().context("no cpu stats")?;
    ensure!(
        cpu.timestamp > 0 && cpu.usage_core_nano_seconds.is_some(),
        "{cpu:?}"
    );
    // The writable layer is measured (at start, then every few seconds).
    let layer = cs
        .writable_layer
        .as_ref()
        .context("no writable layer stats")?;
    ensure!(
        layer.used_bytes.is_some() && layer.inodes_used.is_some(),
        "{layer:?}"
    );
    let all_stats = rt
        .list_container_stats(api::ListContainerStatsRequest { filter: None })
        .await?
        .into_inner()
        .stats;
    ensure!(
        all_stats
            .iter()
            .any(|s| s.attributes.as_ref().is_some_and(|a| a.id == c1)),
        "{all_stats:?}"
    );
    let pod_stats_filtered = rt
        .list_container_stats(api::ListContainerStatsRequest {
            filter: Some(api::ContainerStatsFilter {
                pod_sandbox_id: pod_id.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .stats;
    ensure!(
        pod_stats_filtered
            .iter()
            .any(|s| s.attributes.as_ref().is_some_and(|a| a.id == c1)),
        "{pod_stats_filtered:?}"
    );
    let none = rt
        .list_container_stats(api::ListContainerStatsRequest {
            filter: Some(api::ContainerStatsFilter {
                id: "0000nothere".into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .stats;
    ensure!(none.is_empty(), "{none:?}");
    let pst = rt
        .pod_sandbox_stats(api::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await?
        .into_inner()
        .stats
        .context("PodSandboxStats without stats")?;
    ensure!(
        pst.attributes.as_ref().map(|a| a.id.as_str()) == Some(pod_id.as_str()),
        "{pst:?}"
    );
    let lin = pst.linux.as_ref().context("no linux pod stats")?;
    ensure!(lin.cpu.is_some() || lin.memory.is_some(), "{pst:?}");
    let lps = rt
        .list_pod_sandbox_stats(api::ListPodSandboxStatsRequest {
            filter: Some(api::PodSandboxStatsFilter {
                label_selector: labels("app", "web"),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .stats;
    ensure!(
        lps.iter()
            .any(|s| s.attributes.as_ref().is_some_and(|a| a.id == pod_id)),
        "{lps:?}"
    );

    // --- A container that exits 0: Completed
    rt.start_container(api::StartContainerRequest {
        container_id: c2.clone(),
    })
    .await
    .map_err(|s| env.status_err("StartContainer", s))?;
    let st =
        wait_container_state(&mut rt, &c2, api::ContainerState::ContainerExited, TIMEOUT).await?;
    ensure!(st.exit_code == 0 && st.reason == "Completed", "{st:?}");
    ensure!(
        st.finished_at >= st.started_at && st.started_at > 0,
        "{st:?}"
    );
    wait_log(&log2, "bye in the log", TIMEOUT, |l| {
        has_line(l, "stdout", "bye")
    })?;

    // --- StopContainer: sh ignores TERM, so it is killed after 2 s.
    let started = Instant::now();
    stop_container(&mut rt, &c1, 2)
        .await
        .map_err(|s| env.status_err("StopContainer", s))?;
    let took = started.elapsed();
    ensure!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(20),
        "stop with timeout 2 took {took:?}"
    );
    let st = cstatus(&mut rt, &c1).await?;
    ensure!(
        st.state == api::ContainerState::ContainerExited as i32,
        "{st:?}"
    );
    ensure!(st.exit_code == 137 && st.reason == "Error", "{st:?}");
    ensure!(
        st.finished_at >= st.started_at && st.finished_at <= now_nanos(),
        "{st:?}"
    );
    ensure!(!cri::alive(pid1), "pid {pid1} alive after stop");
    // Stopping a stopped container is fine.
    stop_container(&mut rt, &c1, 2)
        .await
        .map_err(|s| env.status_err("StopContainer again", s))?;
    let exited = list_containers(
        &mut rt,
        Some(api::ContainerFilter {
            state: state_filter(api::ContainerState::ContainerExited),
            ..Default::default()
        }),
    )
    .await?;
    ensure!(
        ids_of_containers(&exited) == sorted(vec![c1.clone(), c2.clone()]),
        "{exited:?}"
    );

    // --- RemoveContainer
    for c in [&c1, &c2] {
        remove_container(&mut rt, c)
            .await
            .map_err(|s| env.status_err("RemoveContainer", s))?;
        expect_code(
            "ContainerStatus after remove",
            cri::container_status(&mut rt, c, false)
                .await
                .map_err(to_status),
            Code::NotFound,
            &[c],
        )?;
    }
    ensure!(list_containers(&mut rt, None).await?.is_empty());

    // --- StopPodSandbox: NOTREADY, network released
    rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .map_err(|s| env.status_err("StopPodSandbox", s))?;
    let s = pod_status(&mut rt, &pod_id, false)
        .await?
        .status
        .context("status")?;
    ensure!(
        s.state == api::PodSandboxState::SandboxNotready as i32,
        "{s:?}"
    );
    ensure!(
        env.net.bridge_ports().is_empty(),
        "veth after stop: {:?}",
        env.net.bridge_ports()
    );
    ensure!(
        env.net.leases().is_empty(),
        "IP lease after stop: {:?}",
        env.net.leases()
    );
    let nr = list_pods(
        &mut rt,
        Some(api::PodSandboxFilter {
            state: pod_state_filter(api::PodSandboxState::SandboxNotready),
            ..Default::default()
        }),
    )
    .await?;
    ensure!(ids_of_pods(&nr) == vec![pod_id.clone()], "{nr:?}");
    rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .map_err(|s| env.status_err("StopPodSandbox again", s))?;

    // --- RemovePodSandbox: gone, nothing left behind
    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .map_err(|s| env.status_err("RemovePodSandbox", s))?;
    expect_code(
        "PodSandboxStatus after remove",
        pod_status(&mut rt, &pod_id, false).await.map_err(to_status),
        Code::NotFound,
        &[&pod_id],
    )?;
    ensure!(list_pods(&mut rt, None).await?.is_empty());
    env.assert_no_leaks(&pod_id, &[c1, c2], &[pid1])?;
    Ok(())
}

/// Turns an anyhow error that wraps a tonic::Status back into the Status.
fn to_status(e: anyhow::Error) -> tonic::Status {
    match e.downcast::<tonic::Status>() {
        Ok(s) => s,
        Err(e) => tonic::Status::unknown(format!("not a gRPC status: {e:#}")),
    }
}

// ---------------------------------------------------------------------------
// 3. Networking: pod to pod, port mapping

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_ping_each_other_and_port_mapping() -> Result<()> {
    let _net = host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;

    let pa = env.pod("ping-a")?;
    let pb = env.pod("ping-b")?;
    let a = env.run_pod(&mut rt, &pa).await?;
    let b = env.run_pod(&mut rt, &pb).await?;
    let sleeper = env.container("sleeper", &["sleep", "3600"]);
    let ca = env.create_start(&mut rt, &a, &pa, &sleeper).await?;
    let cb = env.create_start(&mut rt, &b, &pb, &sleeper).await?;
    let ipa = pod_ip(&mut rt, &a).await?;
    let ipb = pod_ip(&mut rt, &b).await?;
    ensure!(ipa != ipb, "{ipa} == {ipb}");
    for (from, to) in [(&ca, ipb), (&cb, ipa)] {
        let r = exec(
            &mut rt,
            from,
            &["ping", "-c", "3", "-W", "2", &to.to_string()],
            20,
        )
        .await?;
        ensure!(
            r.exit_code == 0,
            "ping {to} from {from}: {r:?}\nstdout {}\nstderr {}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
    }
    // The pod sees its own address on eth0.
    let addrs = exec_ok(&mut rt, &ca, &["ip", "-4", "addr", "show", "eth0"]).await?;
    ensure!(addrs.contains(&format!("{ipa}/24")), "{addrs}");

    // A web server reachable through a host port on 127.0.0.1.
    let host_port = integration::util::free_port()?;
    let mut pw = env.pod("web")?;
    pw.port_mappings = vec![cri::port_mapping("127.0.0.1", host_port, 80)];
    let w = env.run_pod(&mut rt, &pw).await?;
    let httpd = env.container(
        "httpd",
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-berth > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
    );
    let cw = env.create_start(&mut rt, &w, &pw, &httpd).await?;
    let ipw = pod_ip(&mut rt, &w).await?;
    let via_host: SocketAddr = ([127, 0, 0, 1], host_port).into();
    let direct: SocketAddr = (ipw, 80).into();
    for addr in [direct, via_host] {
        let body = integration::util::wait_for(&format!("GET http://{addr}/"), TIMEOUT, || {
            Ok(cri::http_get_raw(addr, "/index.html")
                .ok()
                .filter(|r| r.contains("hello-from-berth")))
        })
        .with_context(|| format!("berthd log tail:\n{}", env.log_excerpt(40)))?;
        ensure!(body.starts_with("HTTP/1."), "{body}");
    }

    let mut pids = Vec::new();
    for c in [&ca, &cb, &cw] {
        pids.push(cri::container_pid(&mut rt, c).await?);
    }
    // The leak check looks at every pod's traces, so it runs once all are gone.
    for p in [&a, &b, &w] {
        env.stop_remove_pod(&mut rt, p).await?;
    }
    for (p, cs) in [(&a, vec![ca]), (&b, vec![cb]), (&w, vec![cw])] {
        env.assert_no_leaks(p, &cs, &[])?;
    }
    for p in pids {
        ensure!(
            !cri::alive(p),
            "container process {p} alive after its pod was removed"
        );
    }
    let nat = std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()?;
    let nat = String::from_utf8_lossy(&nat.stdout);
    ensure!(
        !nat.contains(&format!("--dport {host_port} "))
            && !nat.contains(&format!("--dport {host_port}\n")),
        "port mapping left in iptables:\n{nat}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. Names, idempotent stop/remove, NotFound

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_reserved_and_missing_ids() -> Result<()> {
    let _net = host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;

    let pod = env.pod("dup")?;
    let p1 = env.run_pod(&mut rt, &pod).await?;
    let r = rt
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await;
    expect_code(
        "second RunPodSandbox, same metadata",
        r,
        Code::AlreadyExists,
        &["dup"],
    )?;
    ensure!(list_pods(&mut rt, None).await?.len() == 1);

    let ccfg = env.container("same", &["sleep", "3600"]);
    let c1 = env.create(&mut rt, &p1, &pod, &ccfg).await?;
    let r = rt
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: p1.clone(),
            config: Some(ccfg.clone()),
            sandbox_config: Some(pod.clone()),
        })
        .await;
    expect_code(
        "second CreateContainer, same name",
        r,
        Code::AlreadyExists,
        &["same"],
    )?;
    ensure!(list_containers(&mut rt, None).await?.len() == 1);
    // Another attempt number is another name.
    let mut ccfg1 = ccfg.clone();
    ccfg1.metadata.as_mut().unwrap().attempt = 1;
    ccfg1.log_path = "same/1.log".into();
    let c1b = env.create(&mut rt, &p1, &pod, &ccfg1).await?;
    ensure!(c1b != c1);

    // After removal the names are free again.
    remove_container(&mut rt, &c1).await?;
    let c2 = env.create(&mut rt, &p1, &pod, &ccfg).await?;
    ensure!(c2 != c1, "a new container gets a new id");
    env.stop_remove_pod(&mut rt, &p1).await?;
    // Removing the pod removed its containers.
    ensure!(list_containers(&mut rt, None).await?.is_empty());
    env.assert_no_leaks(&p1, &[c1, c1b, c2], &[])?;
    // The name is free again; this time without a cgroup parent in the
    // config, so the configured default parent applies.
    let mut pod2 = pod.clone();
    pod2.linux.as_mut().unwrap().cgroup_parent = String::new();
    let p2 = env.run_pod(&mut rt, &pod2).await?;
    ensure!(p2 != p1, "a new pod gets a new id");
    let c3 = env.create_start(&mut rt, &p2, &pod2, &ccfg).await?;
    let pid3 = cri::container_pid(&mut rt, &c3).await?;
    let cg = cri::memory_cgroup_of(pid3)?;
    ensure!(
        cg.starts_with(&format!("{}/", env.cgroup_parent)),
        "memory cgroup {cg} of a pod without a cgroup parent is not below the default {}",
        env.cgroup_parent
    );
    env.stop_remove_pod(&mut rt, &p2).await?;
    env.assert_no_leaks(&p2, &[c3], &[pid3])?;

    // Missing ids: stop and remove succeed, the rest is NotFound naming the id.
    let missing = "0123456789abcdef0123456789abcdef";
    stop_container(&mut rt, missing, 1)
        .await
        .map_err(|s| env.status_err("StopContainer(missing)", s))?;
    remove_container(&mut rt, missing)
        .await
        .map_err(|s| env.status_err("RemoveContainer(missing)", s))?;
    rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: missing.into(),
    })
    .await
    .map_err(|s| env.status_err("StopPodSandbox(missing)", s))?;
    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: missing.into(),
    })
    .await
    .map_err(|s| env.status_err("RemovePodSandbox(missing)", s))?;
    expect_code(
        "ContainerStatus(missing)",
        cri::container_status(&mut rt, missing, false)
            .await
            .map_err(to_status),
        Code::NotFound,
        &[missing],
    )?;
    expect_code(
        "PodSandboxStatus(missing)",
        pod_status(&mut rt, missing, false).await.map_err(to_status),
        Code::NotFound,
        &[missing],
    )?;
    let r = rt
        .start_container(api::StartContainerRequest {
            container_id: missing.into(),
        })
        .await;
    expect_code("StartContainer(missing)", r, Code::NotFound, &[missing])?;
    expect_code(
        "ExecSync(missing)",
        exec(&mut rt, missing, &["true"], 5).await,
        Code::NotFound,
        &[missing],
    )?;
    let r = rt
        .container_stats(api::ContainerStatsRequest {
            container_id: missing.into(),
        })
        .await;
    expect_code("ContainerStats(missing)", r, Code::NotFound, &[missing])?;
    let r = rt
        .pod_sandbox_stats(api::PodSandboxStatsRequest {
            pod_sandbox_id: missing.into(),
        })
        .await;
    expect_code("PodSandboxStats(missing)", r, Code::NotFound, &[missing])?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. Bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_leaves_nothing() -> Result<()> {
    let _net = host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;

    // Pods.
    let r = rt
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: None,
            runtime_handler: String::new(),
        })
        .await;
    expect_code(
        "RunPodSandbox without config",
        r,
        Code::InvalidArgument,
        &["config"],
    )?;
    let mut no_meta = env.pod("nometa")?;
    no_meta.metadata = None;
    let r = rt
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(no_meta),
            runtime_handler: String::new(),
        })
        .await;
    expect_code(
        "RunPodSandbox without metadata",
        r,
        Code::InvalidArgument,
        &["metadata"],
    )?;
    ensure!(list_pods(&mut rt, None).await?.is_empty());
    ensure!(
        env.net.netns_pins().is_empty(),
        "{:?}",
        env.net.netns_pins()
    );

    let pod = env.pod("good")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let create = |cfg: Option<api::ContainerConfig>, sandbox: &str| api::CreateContainerRequest {
        pod_sandbox_id: sandbox.to_string(),
        config: cfg,
        sandbox_config: Some(pod.clone()),
    };
    let good = env.container("wrongcfg", &["sleep", "3600"]);

    let r = rt.create_container(create(None, &pod_id)).await;
    expect_code(
        "CreateContainer without config",
        r,
        Code::InvalidArgument,
        &["config"],
    )?;

    let mut c = good.clone();
    c.metadata = None;
    let r = rt.create_container(create(Some(c), &pod_id)).await;
    expect_code(
        "CreateContainer without metadata",
        r,
        Code::InvalidArgument,
        &["metadata"],
    )?;

    let mut c = good.clone();
    c.image = Some(api::ImageSpec::default());
    let r = rt.create_container(create(Some(c), &pod_id)).await;
    expect_code(
        "CreateContainer with an empty image",
        r,
        Code::InvalidArgument,
        &["image", "wrongcfg"],
    )?;

    let mut c = good.clone();
    c.image = None;
    let r = rt.create_container(create(Some(c), &pod_id)).await;
    expect_code(
        "CreateContainer without an image",
        r,
        Code::InvalidArgument,
        &["image", "wrongcfg"],
    )?;

    let mut c = good.clone();
    c.image = Some(api::ImageSpec {
        image: "docker.io/berth-e2e/nothere:1".into(),
        ..Default::default()
    });
    let r = rt.create_container(create(Some(c), &pod_id)).await;
    expect_code(
        "CreateContainer with an unknown image",
        r,
        Code::NotFound,
        &["nothere", "wrongcfg"],
    )?;

    let unknown_pod = "fedcba9876543210fedcba9876543210";
    let r = rt
        .create_container(create(Some(good.clone()), unknown_pod))
        .await;
    expect_code(
        "CreateContainer in an unknown pod",
        r,
        Code::NotFound,
        &[unknown_pod],
    )?;

    let missing_src = env.files.path().join("does-not-exist");
    let mut c = good.clone();
    c.mounts = vec![api::Mount {
        container_path: "/data".into(),
        host_path: missing_src.display().to_string(),
        ..Default::default()
    }];
    let r = rt.create_container(create(Some(c), &pod_id)).await;
    let s = r
        .err()
        .context("CreateContainer with a missing host_path succeeded")?;
    ensure!(
        matches!(s.code(), Code::InvalidArgument | Code::NotFound),
        "missing host_path: {:?}: {}",
        s.code(),
        s.message()
    );
    ensure!(
        s.message().contains(&missing_src.display().to_string())
            && s.message().contains("wrongcfg"),
        "message does not name the container and {}: {}",
        missing_src.display(),
        s.message()
    );
    ensure!(!missing_src.exists(), "the missing host_path was created");

    let mut c = good.clone();
    c.linux = Some(api::LinuxContainerConfig {
        resources: Some(api::LinuxContainerResources {
            cpu_period: -1,
            cpu_quota: 50_000,
            ..Default::default()
        }),
        ..Default::default()
    });
    let r = rt.create_container(create(Some(c), &pod_id)).await;
    expect_code(
        "CreateContainer with cpu_period -1",
        r,
        Code::InvalidArgument,
        &["cpu", "period", "wrongcfg"],
    )?;

    // None of these reserved the name or left a container behind.
    ensure!(list_containers(&mut rt, None).await?.is_empty());
    let ok = env.create(&mut rt, &pod_id, &pod, &good).await?;

    // A log directory that cannot be created (below a regular file).
    let file = env.files.path().join("regular-file");
    std::fs::write(&file, "x")?;
    let mut bad = None;
    let mut badlog = env.pod("badlog")?;
    badlog.log_directory = file.join("logs").display().to_string();
    match rt
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(badlog.clone()),
            runtime_handler: String::new(),
        })
        .await
    {
        Err(s) => ensure!(
            s.message().contains(&badlog.log_directory),
            "RunPodSandbox with an unusable log dir: message does not name it: {}",
            s.message()
        ),
        Ok(r) => {
            let bad_pod = r.into_inner().pod_sandbox_id;
            let cfg = env.container("logger", &["sh", "-c", "echo hi; sleep 3600"]);
            let res = match env.create(&mut rt, &bad_pod, &badlog, &cfg).await {
                Err(e) => Err(e),
                Ok(id) => rt
                    .start_container(api::StartContainerRequest {
                        container_id: id.clone(),
                    })
                    .await
                    .map(|_| id)
                    .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message())),
            };
            let err = match res {
                Ok(id) => anyhow::bail!("container {id} started with its log below a regular file"),
                Err(e) => format!("{e:#}"),
            };
            ensure!(
                err.contains(&badlog.log_directory),
                "an unusable log path must be named in the error: {err}"
            );
            let running = list_containers(
                &mut rt,
                Some(api::ContainerFilter {
                    pod_sandbox_id: bad_pod.clone(),
                    state: state_filter(api::ContainerState::ContainerRunning),
                    ..Default::default()
                }),
            )
            .await?;
            ensure!(running.is_empty(), "{running:?}");
            let cs: Vec<String> = list_containers(
                &mut rt,
                Some(api::ContainerFilter {
                    pod_sandbox_id: bad_pod.clone(),
                    ..Default::default()
                }),
            )
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
            env.stop_remove_pod(&mut rt, &bad_pod).await?;
            bad = Some((bad_pod, cs));
        }
    }

    env.stop_remove_pod(&mut rt, &pod_id).await?;
    // The leak check looks at every pod's traces, so it runs once all are gone.
    if let Some((bad_pod, cs)) = bad {
        env.assert_no_leaks(&bad_pod, &cs, &[])?;
    }
    env.assert_no_leaks(&pod_id, &[ok], &[])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_cni_plugin_fails_the_pod_and_leaks_nothing() -> Result<()> {
    let _net = host_network_lock().await;
    const MSG: &str = "injected failure from the berth e2e plugin";
    let mut net = TestNet::empty()?;
    net.add_failing_plugin("berth-e2e-fail", MSG)?;
    net.write_conflist(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": net.name,
        "plugins": [{"type": "berth-e2e-fail"}]
    }))?;
    let env = Env::start_with(net, CriOpts::default())?;
    let mut rt = env.rt().await?;
    let pod = env.pod("nonet")?;
    let parent = pod.linux.as_ref().unwrap().cgroup_parent.clone();
    for attempt in 0..2 {
        // The second attempt proves the name was released.
        let r = rt
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: String::new(),
            })
            .await;
        let s = r
            .err()
            .context("RunPodSandbox with a failing CNI plugin succeeded")?;
        ensure!(
            s.message().contains(MSG),
            "attempt {attempt}: the plugin's error is not passed on: {:?}: {}",
            s.code(),
            s.message()
        );
        ensure!(s.code() != Code::AlreadyExists, "attempt {attempt}: {s:?}");
        ensure!(list_pods(&mut rt, None).await?.is_empty());
        ensure!(
            env.net.netns_pins().is_empty(),
            "netns pins: {:?}",
            env.net.netns_pins()
        );
        let d = env.d();
        let pins_dir = d.state().join("sandboxes").display().to_string();
        for dir in [d.root(), d.state()] {
            let m: Vec<String> = cri::mounts_under(&dir)
                .into_iter()
                .filter(|m| *m != pins_dir)
                .collect();
            ensure!(m.is_empty(), "mounts left: {m:?}");
        }
        let left: Vec<_> = cri::POD_STATE_DIRS
            .iter()
            .flat_map(|sub| {
                std::fs::read_dir(d.state().join(sub))
                    .map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect();
        ensure!(left.is_empty(), "pod dirs left: {left:?}");
        // Below the configured default parent, only the pod's own parent
        // (kubelet's to manage) may exist: no sandbox or container cgroups.
        let mut cgs = Vec::new();
        for ctl in cri::cgroup_controllers() {
            let ctl_root = std::path::Path::new("/sys/fs/cgroup").join(ctl);
            let pod_cg = ctl_root.join(parent.trim_start_matches('/'));
            let root = ctl_root.join(env.cgroup_parent.trim_start_matches('/'));
            let out = std::process::Command::new("find")
                .arg(&root)
                .args(["-mindepth", "1", "-type", "d"])
                .output()?;
            cgs.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(std::path::PathBuf::from)
                    .filter(|p| *p != pod_cg),
            );
        }
        ensure!(
            cgs.is_empty(),
            "cgroups left below {}: {cgs:?}",
            env.cgroup_parent
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 6. Container events

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_events_stream() -> Result<()> {
    let _net = host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;
    let mut events = env
        .rt()
        .await?
        .get_container_events(api::GetEventsRequest {})
        .await?
        .into_inner();
    let t0 = now_nanos();

    let pod = env.pod("events")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let c = env
        .create_start(
            &mut rt,
            &pod_id,
            &pod,
            &env.container("ev", &["sleep", "3600"]),
        )
        .await?;
    stop_container(&mut rt, &c, 1).await?;
    remove_container(&mut rt, &c).await?;
    env.stop_remove_pod(&mut rt, &pod_id).await?;

    use api::ContainerEventType as E;
    let want_c = [
        E::ContainerCreatedEvent,
        E::ContainerStartedEvent,
        E::ContainerStoppedEvent,
        E::ContainerDeletedEvent,
    ];
    let mut got: Vec<api::ContainerEventResponse> = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let done = |got: &[api::ContainerEventResponse], id: &str, last: E| {
        got.iter()
            .any(|e| e.container_id == id && e.container_event_type == last as i32)
    };
    while !(done(&got, &c, E::ContainerDeletedEvent)
        && done(&got, &pod_id, E::ContainerDeletedEvent))
    {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(ev)) => got.push(ev?),
            Ok(None) => anyhow::bail!("event stream ended; got {got:#?}"),
            Err(_) => anyhow::bail!("timed out waiting for events; got {got:#?}"),
        }
    }
    let of = |id: &str| -> Vec<i32> {
        got.iter()
            .filter(|e| e.container_id == id)
            .map(|e| e.container_event_type)
            .collect()
    };
    ensure!(
        of(&c) == want_c.iter().map(|e| *e as i32).collect::<Vec<_>>(),
        "container events: {:?}\nall: {got:#?}",
        of(&c)
    );
    let pod_events = of(&pod_id);
    for want in [
        E::ContainerCreatedEvent,
        E::ContainerStartedEvent,
        E::ContainerStoppedEvent,
        E::ContainerDeletedEvent,
    ] {
        ensure!(
            pod_events.contains(&(want as i32)),
            "sandbox event {want:?} missing: {pod_events:?}"
        );
    }
    for e in got.iter().filter(|e| e.container_id == c) {
        ensure!(e.created_at >= t0 && e.created_at <= now_nanos(), "{e:?}");
        let ps = e.pod_sandbox_status.as_ref();
        ensure!(
            ps.is_some_and(|p| p.id == pod_id),
            "event without its pod's status: {e:?}"
        );
    }
    let started = got
        .iter()
        .find(|e| e.container_id == c && e.container_event_type == E::ContainerStartedEvent as i32)
        .unwrap();
    ensure!(
        started
            .containers_statuses
            .iter()
            .any(|s| s.id == c && s.state == api::ContainerState::ContainerRunning as i32),
        "STARTED event without the running container's status: {started:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 7. Recovery after berthd is SIGKILLed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_kill9() -> Result<()> {
    let _net = host_network_lock().await;
    let mut env = Env::start()?;
    let mut rt = env.rt().await?;

    let pod = env.pod("survivor")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let ip = pod_ip(&mut rt, &pod_id).await?;
    let mut counter = env.container("counter", &[]);
    counter.command = counter_cmd("line");
    let log = log_path_of(&pod, &counter)?;
    let c1 = env.create_start(&mut rt, &pod_id, &pod, &counter).await?;
    let sleeper = env.container("sleeper", &["sleep", "3600"]);
    let c2 = env.create_start(&mut rt, &pod_id, &pod, &sleeper).await?;
    // Exits 7 on SIGUSR1 (sent from the host while berthd is down).
    let quitter = env.container(
        "quitter",
        &[
            "sh",
            "-c",
            "trap 'exit 7' USR1; while true; do sleep 0.1; done",
        ],
    );
    let c3 = env.create_start(&mut rt, &pod_id, &pod, &quitter).await?;
    let pid1 = cri::container_pid(&mut rt, &c1).await?;
    let pid2 = cri::container_pid(&mut rt, &c2).await?;
    let pid3 = cri::container_pid(&mut rt, &c3).await?;
    let before = wait_log(&log, "5 lines counted", TIMEOUT, |l| {
        counted(l, "line").len() >= 5
    })?;
    let before_max = *counted(&before, "line").last().unwrap();
    let created: HashMap<String, i64> = {
        let mut m = HashMap::new();
        for c in [&c1, &c2, &c3] {
            m.insert(c.clone(), cstatus(&mut rt, c).await?.created_at);
        }
        m
    };

    drop(rt);
    env.d_mut().kill9()?;
    cri::kill(pid3, libc::SIGUSR1);
    integration::util::wait_for("the quitter to exit", TIMEOUT, || {
        Ok((!cri::alive(pid3)).then_some(()))
    })?;
    // The log keeps growing while berthd is down (the shim writes it).
    wait_log(&log, "the count to go on without berthd", TIMEOUT, |l| {
        counted(l, "line")
            .last()
            .is_some_and(|&n| n >= before_max + 3)
    })?;
    env.d_mut().restart()?;
    let mut rt = env.rt().await?;

    let pods = list_pods(&mut rt, None).await?;
    ensure!(ids_of_pods(&pods) == vec![pod_id.clone()], "{pods:?}");
    ensure!(
        pods[0].state == api::PodSandboxState::SandboxReady as i32,
        "{pods:?}"
    );
    ensure!(pod_ip(&mut rt, &pod_id).await? == ip);
    let cs = list_containers(&mut rt, None).await?;
    ensure!(
        ids_of_containers(&cs) == sorted(vec![c1.clone(), c2.clone(), c3.clone()]),
        "{cs:?}"
    );
    for (c, pid) in [(&c1, pid1), (&c2, pid2)] {
        let st = cstatus(&mut rt, c).await?;
        ensure!(
            st.state == api::ContainerState::ContainerRunning as i32,
            "{st:?}"
        );
        ensure!(
            st.created_at == created[c.as_str()],
            "created_at changed: {st:?}"
        );
        ensure!(
            cri::container_pid(&mut rt, c).await? == pid,
            "pid of {c} changed"
        );
    }
    let st =
        wait_container_state(&mut rt, &c3, api::ContainerState::ContainerExited, TIMEOUT).await?;
    ensure!(
        st.exit_code == 7,
        "exit code of a container that exited while berthd was down: {st:?}"
    );
    ensure!(
        st.finished_at >= st.started_at && st.finished_at > 0,
        "{st:?}"
    );

    // The names are still taken.
    let r = rt
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await;
    expect_code(
        "RunPodSandbox after restart, same metadata",
        r,
        Code::AlreadyExists,
        &["survivor"],
    )?;
    let r = rt
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(counter.clone()),
            sandbox_config: Some(pod.clone()),
        })
        .await;
    expect_code(
        "CreateContainer after restart, same name",
        r,
        Code::AlreadyExists,
        &["counter"],
    )?;

    // Exec still works, and the log has no gap.
    ensure!(exec_ok(&mut rt, &c2, &["echo", "back"]).await? == "back\n");
    let lines = wait_log(&log, "the count to go on after restart", TIMEOUT, |l| {
        counted(l, "line")
            .last()
            .is_some_and(|&n| n >= before_max + 10)
    })?;
    let nums = counted(&lines, "line");
    ensure!(
        nums.iter().enumerate().all(|(i, &n)| n == i as u64),
        "gap or duplicate in the count: {nums:?}"
    );

    // Stop and remove work after the restart.
    stop_container(&mut rt, &c1, 2)
        .await
        .map_err(|s| env.status_err("StopContainer", s))?;
    let st = cstatus(&mut rt, &c1).await?;
    ensure!(
        st.state == api::ContainerState::ContainerExited as i32 && st.exit_code == 137,
        "{st:?}"
    );
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    ensure!(list_pods(&mut rt, None).await?.is_empty());
    ensure!(list_containers(&mut rt, None).await?.is_empty());
    env.assert_no_leaks(&pod_id, &[c1, c2, c3], &[pid1, pid2, pid3])?;

    // A clean stop (SIGTERM) with no pod left takes down berthd's own
    // self-bind mounts (the netns and sandboxes dirs) too.
    let daemon = env.daemon.as_mut().context("the daemon")?;
    let state = daemon.state();
    daemon.stop()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|p| std::path::Path::new(p).starts_with(&state))
        })
        .collect();
    ensure!(
        left.is_empty(),
        "mounts left under {}: {left:#?}\n{}",
        state.display(),
        integration::daemon::tail(&daemon.log(), 20)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 8. UpdateContainerResources, ReopenContainerLog

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_resources_and_reopen_log() -> Result<()> {
    let _net = host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("tuned")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let mut cfg = env.container("ticker", &[]);
    cfg.command = counter_cmd("tick");
    cfg.linux = Some(api::LinuxContainerConfig {
        resources: Some(api::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    });
    let log = log_path_of(&pod, &cfg)?;
    let c = env.create_start(&mut rt, &pod_id, &pod, &cfg).await?;
    let pid = cri::container_pid(&mut rt, &c).await?;
    let cg = cri::memory_cgroup_of(pid)?;
    let parent = &pod.linux.as_ref().unwrap().cgroup_parent;
    ensure!(
        cg.starts_with(parent.as_str()),
        "memory cgroup {cg} not below {parent}"
    );
    ensure!(cri::memory_cgroup_file(&cg, "memory.limit_in_bytes")? == (64u64 << 20).to_string());

    rt.update_container_resources(api::UpdateContainerResourcesRequest {
        container_id: c.clone(),
        linux: Some(api::LinuxContainerResources {
            memory_limit_in_bytes: 128 << 20,
            cpu_shares: 1024,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .map_err(|s| env.status_err("UpdateContainerResources", s))?;
    ensure!(
        cri::memory_cgroup_file(&cg, "memory.limit_in_bytes")? == (128u64 << 20).to_string(),
        "memory limit after update"
    );
    let cpu_cg = cri::cgroup_of(pid, "cpu")?;
    let shares = cri::cgroup_file("cpu", &cpu_cg, "cpu.shares")?;
    ensure!(shares == "1024", "cpu.shares after update: {shares}");
    // The container still runs.
    ensure!(cstatus(&mut rt, &c).await?.state == api::ContainerState::ContainerRunning as i32);

    // ReopenContainerLog: rotate the file away, reopen, new lines go to a new file.
    wait_log(&log, "a tick", TIMEOUT, |l| !counted(l, "tick").is_empty())?;
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated)?;
    rt.reopen_container_log(api::ReopenContainerLogRequest {
        container_id: c.clone(),
    })
    .await
    .map_err(|s| env.status_err("ReopenContainerLog", s))?;
    let old_size = std::fs::metadata(&rotated)?.len();
    let new_lines = wait_log(&log, "three ticks in the new file", TIMEOUT, |l| {
        counted(l, "tick").len() >= 3
    })?;
    ensure!(
        std::fs::metadata(&rotated)?.len() == old_size,
        "the rotated file still grows after ReopenContainerLog"
    );
    let old = counted(&cri::read_cri_log(&rotated)?, "tick");
    let new = counted(&new_lines, "tick");
    ensure!(
        new[0] == old.last().unwrap() + 1,
        "lines lost or duplicated across the reopen: old {old:?}, new {new:?}"
    );

    stop_container(&mut rt, &c, 0).await?;
    wait_container_state(&mut rt, &c, api::ContainerState::ContainerExited, TIMEOUT).await?;
    let r = rt
        .reopen_container_log(api::ReopenContainerLogRequest {
            container_id: c.clone(),
        })
        .await;
    ensure!(
        r.is_err(),
        "ReopenContainerLog of a stopped container succeeded"
    );
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    env.assert_no_leaks(&pod_id, &[c], &[pid])?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 9. hostNetwork pods

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod_sees_host_interfaces() -> Result<()> {
    let _net = host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;
    let mut pod = env.pod("hostnet")?;
    pod.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options = Some(namespaces(api::NamespaceMode::Node));
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let s = pod_status(&mut rt, &pod_id, false)
        .await?
        .status
        .context("status")?;
    ensure!(
        s.state == api::PodSandboxState::SandboxReady as i32,
        "{s:?}"
    );
    let ns = s
        .linux
        .as_ref()
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref())
        .map(|o| o.network);
    ensure!(
        ns == Some(api::NamespaceMode::Node as i32),
        "network mode in status: {s:?}"
    );
    ensure!(
        env.net.netns_pins().is_empty(),
        "a hostNetwork pod pinned a netns: {:?}",
        env.net.netns_pins()
    );
    ensure!(
        env.net.bridge_ports().is_empty(),
        "a hostNetwork pod got a veth"
    );

    let c = env
        .create_start(
            &mut rt,
            &pod_id,
            &pod,
            &env.container("host", &["sleep", "3600"]),
        )
        .await?;
    let dev = exec_ok(&mut rt, &c, &["cat", "/proc/net/dev"]).await?;
    let iface = host_iface()?;
    ensure!(dev.contains("lo:"), "{dev}");
    ensure!(
        dev.contains(&format!("{iface}:")),
        "host interface {iface} not seen in the pod:\n{dev}"
    );
    let host_ns = std::fs::read_link("/proc/self/ns/net")?;
    let pid = cri::container_pid(&mut rt, &c).await?;
    let ctr_ns = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
    ensure!(host_ns == ctr_ns, "{host_ns:?} != {ctr_ns:?}");

    env.stop_remove_pod(&mut rt, &pod_id).await?;
    env.assert_no_leaks(&pod_id, &[c], &[pid])?;
    Ok(())
}

/// The sandbox image is pulled when the first pod needs it (as containerd
/// does) and reported pinned, so kubelet's image GC keeps it; one that
/// cannot be pulled fails RunPodSandbox naming the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_image_pulled_on_demand_and_pinned() -> Result<()> {
    let _net = host_network_lock().await;
    let reg = Registry::start(RegistryOpts::default())?;
    reg.push_layout(fixtures::pause()?, "pause:3.9")?;
    let pause = reg.reference("pause:3.9");
    let env = Env::start_with(
        TestNet::new()?,
        CriOpts {
            sandbox_mode: "pause".into(),
            sandbox_image: Some(pause.clone()),
            ..Default::default()
        },
    )?;
    let mut rt = env.rt().await?;
    let mut img = env.img().await?;
    let status = |image: &str| api::ImageStatusRequest {
        image: Some(api::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        verbose: false,
    };
    let before = img.image_status(status(&pause)).await?.into_inner();
    ensure!(before.image.is_none(), "not pulled yet: {before:?}");

    let pod = env.pod("pulls-pause")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let after = img.image_status(status(&pause)).await?.into_inner();
    let image = after.image.context("the sandbox image was pulled")?;
    ensure!(image.pinned, "the sandbox image is pinned: {image:?}");
    let busybox = img.image_status(status(&env.image)).await?.into_inner();
    ensure!(
        busybox.image.is_some_and(|i| !i.pinned),
        "other images are not pinned"
    );
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    drop(env);

    // An image nobody has: the pod fails, and the error names the image.
    let missing = reg.reference("no-such-pause:1");
    let env = Env::start_with(
        TestNet::new()?,
        CriOpts {
            sandbox_mode: "pause".into(),
            sandbox_image: Some(missing.clone()),
            ..Default::default()
        },
    )?;
    let mut rt = env.rt().await?;
    let pod = env.pod("no-pause")?;
    let err = rt
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(pod),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("RunPodSandbox without a pullable sandbox image");
    ensure!(err.code() == Code::NotFound, "{err:?}");
    ensure!(err.message().contains(&missing), "{err:?}");
    ensure!(
        list_pods(&mut rt, None).await?.is_empty(),
        "nothing half-made is listed"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 10. sandbox_mode = "pause": a pause container holds the namespaces

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_sandbox_mode_lifecycle() -> Result<()> {
    let _net = host_network_lock().await;
    let env = Env::start_with(
        TestNet::new()?,
        CriOpts {
            sandbox_mode: "pause".into(),
            pause_image: true,
            ..Default::default()
        },
    )?;
    let mut rt = env.rt().await?;
    let pod = env.pod("paused")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let ip = pod_ip(&mut rt, &pod_id).await?;
    ensure!(
        ip.to_string().starts_with(&format!("{}.", env.net.prefix)),
        "{ip}"
    );
    let c = env
        .create_start(
            &mut rt,
            &pod_id,
            &pod,
            &env.container("app", &["sleep", "3600"]),
        )
        .await?;
    let addrs = exec_ok(&mut rt, &c, &["ip", "-4", "addr", "show", "eth0"]).await?;
    ensure!(addrs.contains(&format!("{ip}/24")), "{addrs}");
    // The containers of the pod share its network namespace with the pause process.
    let pid = cri::container_pid(&mut rt, &c).await?;
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
    let pause: Vec<i32> = cri::processes_naming("/pause")
        .into_iter()
        .filter(|p| std::fs::read_link(format!("/proc/{p}/ns/net")).is_ok_and(|n| n == ns))
        .collect();
    ensure!(
        pause.len() == 1,
        "one pause process in the pod's netns: {pause:?}"
    );
    // Pod containers are not listed by ListContainers.
    ensure!(ids_of_containers(&list_containers(&mut rt, None).await?) == vec![c.clone()]);
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    env.assert_no_leaks(&pod_id, &[c], &[pid, pause[0]])?;
    Ok(())
}
