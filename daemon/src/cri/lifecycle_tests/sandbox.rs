//! RunPodSandbox, StopPodSandbox, RemovePodSandbox: the happy path, retries
//! of a failed teardown, a failed setup, and CreateContainer racing a remove.

use berth_api::runtime::v1 as cri;

use super::super::sandbox::fake_host::Step;
use super::*;
use crate::error::Kind;
use crate::metadata::{SANDBOXES, TASKS};
use crate::shim::fake::FakeState;

#[tokio::test]
async fn pod_and_container_happy_path() {
    let node = Node::new();
    let d = node.start().await;
    let pod = d.run_pod("web").await.unwrap();
    assert_eq!(d.pod_state(&pod), cri::PodSandboxState::SandboxReady);
    assert!(node.host.attached(&pod));
    let status = d
        .cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .unwrap();
    let ip = status.status.unwrap().network.unwrap().ip;
    assert!(ip.starts_with("10.88.0."), "{ip}");
    // The shim starts with the pod, before its first container.
    assert_eq!(node.shims.starts(), 1);

    let c = d.create(&pod, "app").await.unwrap();
    assert_eq!(d.state(&c), cri::ContainerState::ContainerCreated);
    assert_eq!(node.shim(&pod).state_of(&c), Some(FakeState::Created));
    d.cri.start_container(&c).await.unwrap();
    assert_eq!(d.state(&c), cri::ContainerState::ContainerRunning);
    let st = d.status(&c);
    assert!(st.started_at > 0);
    // A retried start (kubelet after a dropped reply) answers as the first.
    d.cri.start_container(&c).await.unwrap();

    node.shim(&pod).exit(&c, 0);
    d.until_state(&c, cri::ContainerState::ContainerExited)
        .await;
    let st = d.status(&c);
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));
    assert!(st.finished_at >= st.started_at);
    // The exited task is deleted from its shim, and the idle shim shut down.
    assert!(node.shims.live().is_empty());

    d.cri.remove_container(&c).await.unwrap();
    assert!(d.cri.list_containers(None).is_empty());
    assert!(!d.bundle(&c).exists());
    d.cri.stop_pod_sandbox(&pod).await.unwrap();
    assert_eq!(d.pod_state(&pod), cri::PodSandboxState::SandboxNotready);
    assert!(!node.host.attached(&pod));
    d.cri.remove_pod_sandbox(&pod).await.unwrap();
    assert!(d.cri.list_pod_sandboxes(None).is_empty());
    assert!(!node.host.holds_anything(&pod));
    assert!(d.records(SANDBOXES).is_empty() && d.records(TASKS).is_empty());
    assert!(!d.config.sandboxes_dir().join(&pod).exists());
}

#[tokio::test]
async fn stop_and_remove_are_idempotent() {
    let node = Node::new();
    let d = node.start().await;
    let (pod, c) = d.running("web", "app").await;
    d.cri.stop_container(&c, 0).await.unwrap();
    assert_eq!(d.state(&c), cri::ContainerState::ContainerExited);
    assert_eq!(d.status(&c).exit_code, 137);
    d.cri.stop_container(&c, 10).await.unwrap();
    assert_eq!(d.status(&c).exit_code, 137, "a second stop changes nothing");

    d.cri.stop_pod_sandbox(&pod).await.unwrap();
    d.cri.stop_pod_sandbox(&pod).await.unwrap();
    assert_eq!(node.host.count(Step::Teardown), 1, "one CNI DEL");
    assert_eq!(d.pod_state(&pod), cri::PodSandboxState::SandboxNotready);

    d.cri.remove_pod_sandbox(&pod).await.unwrap();
    d.cri.remove_pod_sandbox(&pod).await.unwrap();
    d.cri.stop_pod_sandbox(&pod).await.unwrap();
    d.cri.stop_container(&c, 0).await.unwrap();
    d.cri.remove_container(&c).await.unwrap();
    assert!(d.cri.list_pod_sandboxes(None).is_empty());
    assert!(d.cri.list_containers(None).is_empty());
}

#[tokio::test]
async fn a_failed_cni_teardown_is_retried_by_the_next_stop() {
    let node = Node::new();
    let d = node.start().await;
    let (pod, c) = d.running("web", "app").await;
    node.host.fail(Step::Teardown, 1);
    let e = d.cri.stop_pod_sandbox(&pod).await.unwrap_err();
    assert_eq!(e.kind(), Kind::Internal, "{e}");
    // The containers are stopped, but the pod still holds its network: it
    // is not reported stopped and clean.
    assert_eq!(d.state(&c), cri::ContainerState::ContainerExited);
    assert!(node.host.attached(&pod));
    assert_ne!(d.pod_state(&pod), cri::PodSandboxState::SandboxNotready);
    let ready = d.create(&pod, "late").await.unwrap_err();
    assert_eq!(ready.kind(), Kind::FailedPrecondition, "{ready}");

    d.cri.stop_pod_sandbox(&pod).await.unwrap();
    assert_eq!(node.host.count(Step::Teardown), 2);
    assert!(!node.host.attached(&pod));
    assert_eq!(d.pod_state(&pod), cri::PodSandboxState::SandboxNotready);
    d.cri.remove_pod_sandbox(&pod).await.unwrap();
    assert!(!node.host.holds_anything(&pod));
}

#[tokio::test]
async fn remove_retries_a_stop_whose_teardown_failed() {
    let node = Node::new();
    let d = node.start().await;
    let (pod, _c) = d.running("web", "app").await;
    node.host.fail(Step::Teardown, 2);
    assert!(d.cri.stop_pod_sandbox(&pod).await.is_err());
    assert!(d.cri.remove_pod_sandbox(&pod).await.is_err());
    assert_eq!(d.cri.list_pod_sandboxes(None).len(), 1, "kept for a retry");
    d.cri.remove_pod_sandbox(&pod).await.unwrap();
    assert!(d.cri.list_pod_sandboxes(None).is_empty());
    assert!(d.cri.list_containers(None).is_empty());
    assert!(!node.host.holds_anything(&pod));
    assert!(d.records(SANDBOXES).is_empty() && d.records(TASKS).is_empty());
}

#[tokio::test]
async fn a_failed_setup_leaves_nothing() {
    let node = Node::new();
    let d = node.start().await;
    node.host.fail(Step::Setup, 1);
    let e = d.run_pod("web").await.unwrap_err();
    assert_eq!(e.kind(), Kind::FailedPrecondition, "{e}");
    assert!(d.cri.list_pod_sandboxes(None).is_empty());
    assert!(d.records(SANDBOXES).is_empty());
    assert_eq!(node.host.count(Step::Unpin), 1, "the pins made go");
    assert!(node.shims.live().is_empty(), "the early shim is shut down");
    // Nothing is left in the way of a retry.
    let pod = d.run_pod("web").await.unwrap();
    assert_eq!(d.pod_state(&pod), cri::PodSandboxState::SandboxReady);

    node.host.fail(Step::MountShm, 1);
    assert!(d.run_pod("db").await.is_err());
    assert_eq!(d.cri.list_pod_sandboxes(None).len(), 1);
}

/// CreateContainer concurrent with RemovePodSandbox: the create either makes
/// its container in a ready pod (which the remove then removes with it) or
/// fails cleanly; never a container whose pod, netns or shim is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_container_racing_remove_pod_sandbox() {
    let node = Node::new();
    let d = Arc::new(node.start().await);
    let (mut created, mut refused) = (0, 0);
    for i in 0..12 {
        let pod = d.run_pod(&format!("p{i}")).await.unwrap();
        // A slow runtime create holds the window open; the remove comes at
        // different moments of the create, from before it looks at the pod
        // to while the shim creates the task.
        node.shim(&pod)
            .delay("Create", std::time::Duration::from_millis(20));
        let create = {
            let d = d.clone();
            let pod = pod.clone();
            tokio::spawn(async move { d.create(&pod, "app").await })
        };
        let remove = {
            let d = d.clone();
            let pod = pod.clone();
            let after = std::time::Duration::from_millis([0, 1, 3, 6, 10, 15][i % 6]);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                d.cri.remove_pod_sandbox(&pod).await
            })
        };
        let created_id = create.await.unwrap();
        remove.await.unwrap().unwrap();
        match created_id {
            Ok(_) => created += 1,
            Err(e) => {
                assert!(
                    matches!(e.kind(), Kind::NotFound | Kind::FailedPrecondition),
                    "{e}"
                );
                refused += 1;
            }
        }
        // Whatever happened, nothing of the pod is left.
        assert!(d.cri.list_containers(None).is_empty(), "iteration {i}");
        assert!(d.tasks.tasks_of(&pod).is_empty(), "iteration {i}");
        assert!(!node.host.holds_anything(&pod), "iteration {i}");
        assert!(
            node.shims.live().iter().all(|s| s.sandbox_id != pod),
            "iteration {i}"
        );
    }
    assert_eq!(created + refused, 12);
    assert!(d.records(SANDBOXES).is_empty() && d.records(TASKS).is_empty());
}

#[tokio::test]
async fn runtime_handlers_unknown_is_not_found_and_default_is_recorded() {
    let node = Node::new();
    let d = node.start().await;
    let e = d
        .cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("ghost")),
            runtime_handler: "kata-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Kind::NotFound, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("kata-nope") && msg.contains("runc"), "{msg}");
    assert!(d.records(SANDBOXES).is_empty());
    assert_eq!(node.shims.starts(), 0);

    // "" is the default handler: reported as asked, and the container runs
    // with the [shim] runtime and root.
    let (pod, c) = d.running("web", "app").await;
    let rec = d.cri.list_pod_sandboxes(None);
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].runtime_handler, "");
    let t = d.tasks.get_task(&c).unwrap().record();
    assert_eq!(t.runtime.handler, "runc");
    assert_eq!(t.runtime.binary, "runc");
    assert_eq!(t.runtime_root, d.config.runtime_root());
    assert!(!t.runtime.no_pivot_root && !t.runtime.systemd_cgroup);
    d.cri.stop_pod_sandbox(&pod).await.unwrap();
}

/// A handler's `pod_annotations` reach the pause container's spec as well as
/// the containers' (containerd puts them in the sandbox spec too).
#[tokio::test]
async fn pod_annotations_reach_the_pause_container_and_the_containers() {
    let node = Node::with_config(|c| {
        c.cri.sandbox_mode = "pause".into();
        c.cri.sandbox_image = IMAGE.into();
        c.cri.runtimes.insert(
            "runc".into(),
            crate::config::RuntimeHandlerConfig {
                pod_annotations: vec!["example.com/*".into()],
                ..Default::default()
            },
        );
    });
    let d = node.start().await;
    let mut cfg = pod_config("annotated");
    cfg.annotations
        .insert("example.com/gpu".into(), "passed".into());
    cfg.annotations
        .insert("other.com/secret".into(), "kept out".into());
    let pod = d
        .cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap();
    let c = d
        .cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("app")),
            sandbox_config: Some(cfg),
        })
        .await
        .unwrap();
    let pause = d
        .cri
        .sandbox(&pod)
        .unwrap()
        .record()
        .pause
        .expect("a pause container in pause mode");
    for id in [&pause, &c] {
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.bundle(id).join("config.json")).unwrap())
                .unwrap();
        let a = &spec["annotations"];
        assert_eq!(a["example.com/gpu"], "passed", "{id}: {a}");
        assert!(a.get("other.com/secret").is_none(), "{id}: {a}");
    }
    d.cri.stop_pod_sandbox(&pod).await.unwrap();
    d.cri.remove_pod_sandbox(&pod).await.unwrap();
}
