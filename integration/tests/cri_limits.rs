//! Bounds on CRI requests (issue 14, findings 2, 4, 5): a request kubelet could
//! never send, a pod whose labels or annotations would make every later listing
//! too large for kubelet, ports that wrap, relative log directories — each gets
//! InvalidArgument (or the transport's size error) naming the field, with an
//! error of bounded length, and nothing is made.

use std::collections::HashMap;

use anyhow::{ensure, Result};
use integration::cri::{self, api, host_network_lock, Env};
use tonic::Code;

fn run_req(cfg: api::PodSandboxConfig) -> api::RunPodSandboxRequest {
    api::RunPodSandboxRequest {
        config: Some(cfg),
        runtime_handler: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_malformed_pods_are_refused_and_listing_stays_small() -> Result<()> {
    let _net = host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;
    let base = env.pod("limits")?;
    let mut refused = Vec::new();

    // Larger than kubelet's own 16 MiB: refused before it is decoded.
    let mut c = base.clone();
    c.annotations.insert("big".into(), "x".repeat(20 << 20));
    let s = rt.run_pod_sandbox(run_req(c)).await.unwrap_err();
    ensure!(
        matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted),
        "a 20 MiB request: {:?}: {}",
        s.code(),
        s.message()
    );

    let mut cases: Vec<(&str, api::PodSandboxConfig, &str)> = Vec::new();
    let mut c = base.clone();
    c.annotations.insert("big".into(), "x".repeat(300 << 10));
    cases.push(("300 KiB of annotations", c, "annotations"));
    let mut c = base.clone();
    c.labels = (0..100_000)
        .map(|i| (format!("l{i}"), "v".into()))
        .collect::<HashMap<_, _>>();
    cases.push(("100,000 labels", c, "labels"));
    let mut c = base.clone();
    c.labels.insert("k".into(), "v".repeat(1 << 20));
    cases.push(("a 1 MiB label", c, "label"));
    let mut c = base.clone();
    if let Some(m) = c.metadata.as_mut() {
        m.name = "n".repeat(1 << 20);
    }
    cases.push(("a 1 MiB name", c, "metadata.name"));
    let mut c = base.clone();
    c.port_mappings = vec![cri::port_mapping("127.0.0.1", 0, 80)];
    c.port_mappings[0].host_port = 70000;
    cases.push(("host port 70000", c, "out of range"));
    let mut c = base.clone();
    c.port_mappings = vec![cri::port_mapping("127.0.0.1", 0, 80)];
    c.port_mappings[0].host_port = -1;
    cases.push(("host port -1", c, "out of range"));
    let mut c = base.clone();
    c.log_directory = "../../../../tmp/berth-limits-x".into();
    cases.push(("a relative log directory", c, "log_directory"));
    for (what, cfg, needle) in cases {
        let r = rt.run_pod_sandbox(run_req(cfg)).await;
        let s = match r {
            Ok(r) => anyhow::bail!("{what}: accepted as {}", r.into_inner().pod_sandbox_id),
            Err(s) => s,
        };
        ensure!(
            s.code() == Code::InvalidArgument && s.message().contains(needle),
            "{what}: {:?}: {}",
            s.code(),
            &s.message()[..s.message().len().min(300)]
        );
        ensure!(
            s.message().len() < 1024,
            "{what}: a {}-byte error",
            s.message().len()
        );
        refused.push(what);
    }
    ensure!(
        !std::path::Path::new("/tmp/berth-limits-x").exists(),
        "the relative log directory was created"
    );
    // Nothing was made: the listing is empty, and a normal pod still works.
    ensure!(cri::list_pods(&mut rt, None).await?.is_empty());
    let id = env.run_pod(&mut rt, &base).await?;
    env.stop_remove_pod(&mut rt, &id).await?;
    eprintln!("refused: {refused:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_container_labels_are_refused() -> Result<()> {
    let _net = host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("limits-ctr")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let mut cfg = env.container("c", &["sleep", "1"]);
    cfg.annotations.insert("big".into(), "x".repeat(300 << 10));
    let r = rt
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod.clone()),
        })
        .await;
    let s = r
        .err()
        .ok_or_else(|| anyhow::anyhow!("300 KiB of annotations accepted"))?;
    ensure!(
        s.code() == Code::InvalidArgument && s.message().contains("annotations"),
        "{:?}: {}",
        s.code(),
        s.message()
    );
    ensure!(cri::list_containers(&mut rt, None).await?.is_empty());
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    Ok(())
}

/// `refused` is the list budget's answer for `list`, and that listing (`listed`
/// bytes) stayed under the bound.
fn refused_by_the_budget(
    refused: &tonic::Status,
    list: &str,
    listed: usize,
    max: usize,
) -> Result<()> {
    ensure!(
        refused.code() == Code::ResourceExhausted
            && refused.message().contains("max_list_bytes")
            && refused.message().contains(list),
        "{:?}: {}",
        refused.code(),
        refused.message()
    );
    ensure!(listed <= max, "{list} answered {listed} bytes");
    Ok(())
}

/// Issue 14, finding 2: pods each within their own limits can still add up
/// to a ListPodSandbox larger than kubelet accepts; the pod that would do it
/// is refused (ResourceExhausted), and the listing stays under the bound.
/// Here the bound is 1 MiB (`[cri] max_list_bytes`) and each pod carries
/// 200 KiB of annotations: the fifth or sixth is refused. Containers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_containers_that_would_overflow_a_listing_are_refused() -> Result<()> {
    use integration::cri::{CriOpts, TestNet};
    use prost::Message;
    const MAX_LIST: usize = 1 << 20;
    let _net = host_network_lock().await;
    let env = Env::start_with(
        TestNet::new()?,
        CriOpts {
            extra: format!("max_list_bytes = {MAX_LIST}\n"),
            ..Default::default()
        },
    )?;
    let mut rt = env.rt().await?;
    let mut accepted = Vec::new();
    let refused = loop {
        ensure!(
            accepted.len() < 10,
            "10 pods of 200 KiB accepted under a 1 MiB bound"
        );
        let mut cfg = env.pod(&format!("fat-{}", accepted.len()))?;
        cfg.annotations.insert("fat".into(), "x".repeat(200 << 10));
        match rt.run_pod_sandbox(run_req(cfg.clone())).await {
            Ok(r) => accepted.push((r.into_inner().pod_sandbox_id, cfg)),
            Err(s) => break s,
        }
    };
    ensure!(
        (4..=5).contains(&accepted.len()),
        "{} pods accepted",
        accepted.len()
    );
    let listing = rt
        .list_pod_sandbox(api::ListPodSandboxRequest::default())
        .await?
        .into_inner();
    refused_by_the_budget(&refused, "ListPodSandbox", listing.encoded_len(), MAX_LIST)?;

    // Containers: the first pod's containers fill ListContainers the same way.
    let (pod_id, pod) = accepted[0].clone();
    let mut made = 0;
    let refused = loop {
        ensure!(
            made < 10,
            "10 containers of 200 KiB accepted under a 1 MiB bound"
        );
        let mut cfg = env.container(&format!("c{made}"), &["sleep", "1"]);
        cfg.annotations.insert("fat".into(), "x".repeat(200 << 10));
        let r = rt
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(cfg),
                sandbox_config: Some(pod.clone()),
            })
            .await;
        match r {
            Ok(_) => made += 1,
            Err(s) => break s,
        }
    };
    let listing = rt
        .list_containers(api::ListContainersRequest::default())
        .await?
        .into_inner();
    refused_by_the_budget(&refused, "ListContainers", listing.encoded_len(), MAX_LIST)?;
    for (id, _) in accepted {
        env.stop_remove_pod(&mut rt, &id).await?;
    }

    // Twelve such pods at once: creates under way count against the budget
    // too, so together they cannot pass it either.
    let mut calls = Vec::new();
    for i in 0..12 {
        let mut cfg = env.pod(&format!("burst-{i}"))?;
        cfg.annotations.insert("fat".into(), "x".repeat(200 << 10));
        let mut rt = rt.clone();
        calls.push(tokio::spawn(async move {
            rt.run_pod_sandbox(run_req(cfg)).await
        }));
    }
    let (mut made, mut refusals) = (Vec::new(), Vec::new());
    for c in calls {
        match c.await? {
            Ok(r) => made.push(r.into_inner().pod_sandbox_id),
            Err(s) => refusals.push(s),
        }
    }
    let listing = rt
        .list_pod_sandbox(api::ListPodSandboxRequest::default())
        .await?
        .into_inner();
    ensure!(
        (1..=5).contains(&made.len()),
        "{} of 12 concurrent pods accepted",
        made.len()
    );
    for refused in &refusals {
        refused_by_the_budget(refused, "ListPodSandbox", listing.encoded_len(), MAX_LIST)?;
    }
    for id in made {
        env.stop_remove_pod(&mut rt, &id).await?;
    }
    Ok(())
}
