//! berthd killed and started again: what it does with the shims, tasks and
//! pods the previous one left.

use std::time::Duration;

use berth_api::runtime::v1 as cri;

use super::super::sandbox::fake_host::Step;
use super::*;
use crate::metadata::cri::{SandboxRecord, SandboxState};
use crate::metadata::{SANDBOXES, TASKS};
use crate::shim::NAMESPACE;

#[test]
fn a_live_shim_is_reattached() {
    let node = Node::new();
    let (pod, c) = node.with_daemon_then_kill(async |d: &Daemon| d.running("web", "app").await);
    node.with_daemon_then_kill(async |d: &Daemon| {
        assert_eq!(d.state(&c), cri::ContainerState::ContainerRunning);
        assert_eq!(d.pod_state(&pod), cri::PodSandboxState::SandboxReady);
        assert_eq!(node.shims.starts(), 1, "no new shim");
        // Watched again: its exit is seen.
        node.shim(&pod).exit(&c, 3);
        d.until_state(&c, cri::ContainerState::ContainerExited)
            .await;
        assert_eq!(d.status(&c).exit_code, 3);
    });
}

#[test]
fn the_containers_of_a_dead_shim_are_settled() {
    let node = Node::new();
    let (pod, c) = node.with_daemon_then_kill(async |d: &Daemon| d.running("web", "app").await);
    node.shim(&pod).die();
    // The runtime still holds the container (runc's state dir): the shim
    // binary's clean-up deletes it.
    let runtime_state = node.config().runtime_root().join(NAMESPACE).join(&c);
    std::fs::create_dir_all(&runtime_state).unwrap();
    node.with_daemon_then_kill(async |d: &Daemon| {
        let cleaned: Vec<String> = node
            .shims
            .cleanups()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(cleaned, vec![c.to_string()]);
        let st = d.status(&c);
        assert_eq!(st.state, cri::ContainerState::ContainerUnknown as i32);
        assert!(
            st.message.contains("shim died while berthd was down"),
            "{st:?}"
        );
        assert!(!d.config.state.join("pods").join(&pod).exists());
        d.cri.remove_pod_sandbox(&pod).await.unwrap();
        assert!(d.records(TASKS).is_empty());
    });
}

#[test]
fn an_exit_missed_while_down_is_collected() {
    let node = Node::new();
    let (pod, c) = node.with_daemon_then_kill(async |d: &Daemon| d.running("web", "app").await);
    node.shim(&pod).exit(&c, 7);
    node.with_daemon_then_kill(async |d: &Daemon| {
        let st = d.status(&c);
        assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!(st.exit_code, 7);
        // Deleted from the shim, which (idle) was shut down.
        assert!(node.shim(&pod).task_ids().is_empty());
        assert!(node.shims.live().is_empty());
    });
}

#[test]
fn a_pod_whose_setup_never_finished_is_torn_down() {
    let node = Node::new();
    let pod = node.with_daemon_then_kill(async |d: &Daemon| {
        let pod = d.run_pod("web").await.unwrap();
        // As if berthd died during the CNI ADD: the record still says
        // "creating" while the namespace and attachment exist.
        let raw = d.meta.get(SANDBOXES, &pod).unwrap().unwrap();
        let mut rec: SandboxRecord = serde_json::from_slice(&raw).unwrap();
        rec.state = SandboxState::Creating;
        d.meta
            .put(SANDBOXES, &pod, serde_json::to_vec(&rec).unwrap())
            .unwrap();
        d.meta.flush().unwrap();
        pod
    });
    assert!(node.host.attached(&pod));
    node.with_daemon_then_kill(async |d: &Daemon| {
        assert!(d.cri.list_pod_sandboxes(None).is_empty());
        assert!(d.records(SANDBOXES).is_empty());
        assert!(!node.host.holds_anything(&pod));
        assert!(node.shims.live().is_empty());
    });
}

#[test]
fn a_stop_under_way_is_finished() {
    let node = Node::new();
    let (pod, c) = node.with_daemon_then_kill(async |d: &Daemon| {
        let (pod, c) = d.running("web", "app").await;
        node.host.fail(Step::Teardown, 1);
        assert!(d.cri.stop_pod_sandbox(&pod).await.is_err());
        (pod, c)
    });
    assert!(node.host.attached(&pod));
    node.with_daemon_then_kill(async |d: &Daemon| {
        assert_eq!(d.pod_state(&pod), cri::PodSandboxState::SandboxNotready);
        assert!(!node.host.attached(&pod));
        assert_eq!(d.state(&c), cri::ContainerState::ContainerExited);
    });
}

#[test]
fn a_create_that_did_not_finish_is_removed() {
    let node = Node::new();
    let pod = node.with_daemon_then_kill(async |d: &Daemon| {
        let pod = d.run_pod("web").await.unwrap();
        // The runtime's create hangs; berthd dies meanwhile.
        node.shim(&pod).delay("Create", Duration::from_secs(3600));
        let create = {
            let cri = d.cri.clone();
            let pod = pod.clone();
            tokio::spawn(async move {
                cri.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container_config("app")),
                    sandbox_config: Some(pod_config("web")),
                })
                .await
            })
        };
        for _ in 0..500 {
            if node
                .shim(&pod)
                .calls()
                .iter()
                .any(|c| c.starts_with("Create"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(d.records(TASKS).len(), 1, "recorded as creating");
        create.abort();
        pod
    });
    node.with_daemon_then_kill(async |d: &Daemon| {
        assert!(d.cri.list_containers(None).is_empty());
        assert!(d.records(TASKS).is_empty());
        let bundles = std::fs::read_dir(d.config.state.join("containers")).unwrap();
        assert_eq!(bundles.count(), 0);
        assert_eq!(d.pod_state(&pod), cri::PodSandboxState::SandboxReady);
    });
}
