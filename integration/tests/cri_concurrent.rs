//! Many pods at once: concurrent RunPodSandbox/CreateContainer/StartContainer
//! and removal against one real berthd and one CNI bridge network. Each pod
//! must get its own address, run, answer ExecSync, and leave nothing behind.

use std::collections::HashSet;

use anyhow::{ensure, Context, Result};
use integration::cri::{self, Env};

const PODS: usize = 16;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_pods_at_once() -> Result<()> {
    let _net = cri::host_network_lock().await;
    let env = Env::start()?;
    let rt = env.rt().await?;
    let mut jobs = Vec::new();
    for i in 0..PODS {
        let mut pod = env.pod(&format!("many{i}"))?;
        // Half with a host port: the portmap plugin's iptables work is what
        // concurrent pods would race on.
        if i % 2 == 0 {
            let port = free_port()?;
            pod.port_mappings = vec![cri::port_mapping("127.0.0.1", port, 80)];
        }
        let ctr = env.container("main", &["sleep", "3600"]);
        let mut rt = rt.clone();
        let env_ref = &env;
        jobs.push(async move {
            let pod_id = env_ref.run_pod(&mut rt, &pod).await?;
            let c = env_ref.create_start(&mut rt, &pod_id, &pod, &ctr).await?;
            let ip = cri::pod_status(&mut rt, &pod_id, false)
                .await?
                .status
                .and_then(|s| s.network)
                .map(|n| n.ip)
                .unwrap_or_default();
            let host = cri::exec_ok(&mut rt, &c, &["hostname"]).await?;
            Ok::<_, anyhow::Error>((pod_id, c, ip, host))
        });
    }
    let results = futures::future::join_all(jobs).await;
    let mut pods = Vec::new();
    let mut ips = HashSet::new();
    for r in results {
        let (pod_id, c, ip, host) = r?;
        ensure!(!ip.is_empty(), "pod {pod_id} has no IP");
        ensure!(ips.insert(ip.clone()), "two pods got {ip}");
        ensure!(host.trim().starts_with("many"), "hostname {host:?}");
        pods.push((pod_id, c));
    }
    ensure!(cri::list_pods(&mut rt.clone(), None).await?.len() == PODS);
    let removals = pods.iter().map(|(p, _)| {
        let mut rt = rt.clone();
        let env_ref = &env;
        async move { env_ref.stop_remove_pod(&mut rt, p).await }
    });
    for r in futures::future::join_all(removals).await {
        r.context("removing a pod")?;
    }
    for (p, c) in &pods {
        env.assert_no_leaks(p, std::slice::from_ref(c), &[])?;
    }
    Ok(())
}

/// A record berthd cannot read (disk corruption, a downgrade) is moved to the
/// `quarantine` bucket at start; the daemon starts and serves the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_records_are_quarantined() -> Result<()> {
    use berthd::metadata::{MetaStore, SledStore, QUARANTINE, SANDBOXES, TASKS};
    let _net = cri::host_network_lock().await;
    let mut env = Env::start()?;
    let pod = env.pod("kept")?;
    let pod_id = {
        let mut rt = env.rt().await?;
        env.run_pod(&mut rt, &pod).await?
    };
    env.d_mut().stop()?;
    {
        let meta = SledStore::open(&env.d().root().join("meta"))?;
        meta.put(SANDBOXES, "garbage-pod", b"{not json".to_vec())?;
        meta.put(TASKS, "garbage-task", b"\x00\x01".to_vec())?;
        meta.flush()?;
    }
    env.d_mut().restart()?;
    let mut rt = env.rt().await?;
    let pods = cri::list_pods(&mut rt, None).await?;
    ensure!(
        pods.len() == 1 && pods[0].id == pod_id,
        "pods after restart: {pods:?}"
    );
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    env.d_mut().stop()?;
    let meta = SledStore::open(&env.d().root().join("meta"))?;
    ensure!(meta.get(SANDBOXES, "garbage-pod")?.is_none());
    ensure!(meta.get(TASKS, "garbage-task")?.is_none());
    ensure!(meta.get(QUARANTINE, "sandboxes/garbage-pod")?.as_deref() == Some(&b"{not json"[..]));
    ensure!(meta.get(QUARANTINE, "tasks/garbage-task")?.as_deref() == Some(&b"\x00\x01"[..]));
    Ok(())
}

/// berthctl's task commands leave the CRI's containers alone: they belong to
/// kubelet, and removing one behind its back would corrupt its view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berthctl_does_not_touch_cri_containers() -> Result<()> {
    let _net = cri::host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("owned")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let c = env
        .create_start(
            &mut rt,
            &pod_id,
            &pod,
            &env.container("main", &["sleep", "3600"]),
        )
        .await?;
    let ls = env.d().ctl_ok(["tasks", "ls"])?;
    ensure!(
        !ls.contains(&c[..12]),
        "berthctl lists a CRI container: {ls}"
    );
    for args in [
        vec!["tasks", "rm", "--force", c.as_str()],
        vec!["tasks", "kill", c.as_str()],
    ] {
        let err = env.d().ctl_err(&args)?;
        ensure!(err.contains("CRI container"), "{args:?}: {err}");
    }
    ensure!(
        cri::cstatus(&mut rt, &c).await?.state
            == berth_api::runtime::v1::ContainerState::ContainerRunning as i32,
        "the container did not survive"
    );
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    env.assert_no_leaks(&pod_id, &[c], &[])?;
    Ok(())
}

/// Rounds of each race below; the pod operation starts after a different
/// delay each round so it lands before, during and after the container calls.
const RACE_ROUNDS: u64 = 6;
/// Container calls raced against one pod operation.
const RACE_CALLS: usize = 6;

/// A container call that lost a race with its pod's stop or removal must
/// fail cleanly: NotFound (the pod is gone) or FailedPrecondition (the pod is
/// not ready), naming the pod; never Internal or Unknown.
fn lost_cleanly(what: &str, pod_id: &str, s: &tonic::Status) -> Result<()> {
    ensure!(
        matches!(
            s.code(),
            tonic::Code::NotFound | tonic::Code::FailedPrecondition
        ),
        "{what}: a lost race answered {:?}: {}",
        s.code(),
        s.message()
    );
    ensure!(
        s.message().contains(pod_id),
        "{what}: the error does not name pod {pod_id}: {}",
        s.message()
    );
    Ok(())
}

/// CreateContainer racing RemovePodSandbox (issue 15): every create either
/// fails cleanly or yields a container that the removal takes with the pod;
/// nothing (netns pin, mount, dir, shim, cgroup) is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_container_races_remove_pod() -> Result<()> {
    use berth_api::runtime::v1 as api;
    let _net = cri::host_network_lock().await;
    let env = Env::start()?;
    let rt = env.rt().await?;
    for round in 0..RACE_ROUNDS {
        let pod = env.pod(&format!("race-rm{round}"))?;
        let pod_id = env.run_pod(&mut rt.clone(), &pod).await?;
        let creates = (0..RACE_CALLS).map(|i| {
            let mut rt = rt.clone();
            let req = api::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(env.container(&format!("c{i}"), &["sleep", "3600"])),
                sandbox_config: Some(pod.clone()),
            };
            async move {
                // Spread over the removal's start: some land before, some
                // while it runs, some after.
                tokio::time::sleep(std::time::Duration::from_millis(i as u64 * 30)).await;
                rt.create_container(req)
                    .await
                    .map(|r| r.into_inner().container_id)
            }
        });
        let remove = {
            let mut rt = rt.clone();
            let req = api::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            };
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(round * 30)).await;
                rt.remove_pod_sandbox(req).await
            }
        };
        let (results, removed) = tokio::join!(futures::future::join_all(creates), remove);
        removed.map_err(|s| env.status_err("RemovePodSandbox", s))?;
        let mut created = Vec::new();
        for r in results {
            match r {
                Ok(id) => created.push(id),
                Err(s) => lost_cleanly("CreateContainer", &pod_id, &s)
                    .map_err(|e| e.context(env.log_excerpt(40)))?,
            }
        }
        eprintln!(
            "round {round}: {} of {RACE_CALLS} creates won",
            created.len()
        );
        let mut rt = rt.clone();
        for id in &created {
            let st = rt
                .container_status(api::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await;
            ensure!(
                st.as_ref().err().map(|s| s.code()) == Some(tonic::Code::NotFound),
                "container {id} outlived its removed pod {pod_id}: {st:?}"
            );
        }
        let left = cri::list_containers(&mut rt, None).await?;
        ensure!(
            left.is_empty(),
            "containers outlived pod {pod_id}: {left:?}"
        );
        env.assert_no_leaks(&pod_id, &created, &[])?;
    }
    Ok(())
}

/// StartContainer racing StopPodSandbox: a start either wins (and the stop
/// then stops the container) or fails cleanly; once both answered, no
/// container of the stopped pod runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_container_races_stop_pod() -> Result<()> {
    use berth_api::runtime::v1 as api;
    let _net = cri::host_network_lock().await;
    let env = Env::start()?;
    let rt = env.rt().await?;
    for round in 0..RACE_ROUNDS {
        let pod = env.pod(&format!("race-stop{round}"))?;
        let mut rt0 = rt.clone();
        let pod_id = env.run_pod(&mut rt0, &pod).await?;
        let mut ids = Vec::new();
        for i in 0..RACE_CALLS {
            let c = env.container(&format!("c{i}"), &["sleep", "3600"]);
            ids.push(env.create(&mut rt0, &pod_id, &pod, &c).await?);
        }
        let starts = ids.iter().enumerate().map(|(i, id)| {
            let mut rt = rt.clone();
            let req = api::StartContainerRequest {
                container_id: id.clone(),
            };
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(i as u64 * 30)).await;
                rt.start_container(req).await
            }
        });
        let stop = {
            let mut rt = rt.clone();
            let req = api::StopPodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            };
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(round * 30)).await;
                rt.stop_pod_sandbox(req).await
            }
        };
        let (results, stopped) = tokio::join!(futures::future::join_all(starts), stop);
        stopped.map_err(|s| env.status_err("StopPodSandbox", s))?;
        let mut won = 0;
        for r in results {
            match r {
                Ok(_) => won += 1,
                Err(s) => lost_cleanly("StartContainer", &pod_id, &s)
                    .map_err(|e| e.context(env.log_excerpt(40)))?,
            }
        }
        eprintln!("round {round}: {won} of {RACE_CALLS} starts won");
        for id in &ids {
            let st = cri::cstatus(&mut rt0, id).await?;
            ensure!(
                st.state != api::ContainerState::ContainerRunning as i32,
                "container {id} runs in stopped pod {pod_id}: {st:?}"
            );
        }
        env.stop_remove_pod(&mut rt0, &pod_id).await?;
        env.assert_no_leaks(&pod_id, &ids, &[])?;
    }
    Ok(())
}
