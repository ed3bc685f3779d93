//! CreateContainer, StartContainer, StopContainer, RemoveContainer against a
//! fake shim: states and exit codes, forced removal, stop escalation, a shim
//! call failing half-way, a shim that dies.

use berth_api::runtime::v1 as cri;

use super::*;
use crate::error::Kind;
use crate::metadata::TASKS;
use crate::shim::fake::ExecScript;
use crate::shim::{RpcCode, ShimError};

fn injected(method: &'static str) -> ShimError {
    ShimError::Rpc {
        method,
        code: RpcCode::Other(2),
        message: "injected failure".into(),
    }
}

#[tokio::test]
async fn remove_of_a_running_container_kills_it_first() {
    let node = Node::new();
    let d = node.start().await;
    let (pod, c) = d.running("web", "app").await;
    // The task API refuses to remove a running task unless forced...
    let e = d.tasks.remove(&c, false).await.unwrap_err();
    assert_eq!(e.kind(), Kind::FailedPrecondition, "{e}");
    assert_eq!(d.state(&c), cri::ContainerState::ContainerRunning);
    // ...and RemoveContainer forces it, as containerd's CRI does.
    d.cri.remove_container(&c).await.unwrap();
    assert!(d.cri.list_containers(None).is_empty());
    assert!(node.shim(&pod).calls().contains(&format!("Kill {c}")));
    assert!(node.shim(&pod).task_ids().is_empty());
    assert!(d.records(TASKS).is_empty());
    assert!(!d.bundle(&c).exists());
}

#[tokio::test]
async fn stop_sends_the_stop_signal_then_sigkill() {
    let node = Node::new();
    let d = node.start().await;
    let (pod, c) = d.running("web", "app").await;
    d.cri.stop_container(&c, 5).await.unwrap();
    let st = d.status(&c);
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (143, "Error"),
        "SIGTERM"
    );

    let c2 = d.create(&pod, "stubborn").await.unwrap();
    d.cri.start_container(&c2).await.unwrap();
    node.shim(&pod).ignore_sigterm(&c2);
    let t0 = std::time::Instant::now();
    d.cri.stop_container(&c2, 1).await.unwrap();
    assert!(
        t0.elapsed() >= std::time::Duration::from_secs(1),
        "waited the grace"
    );
    assert_eq!(d.status(&c2).exit_code, 137, "SIGKILL after the timeout");
}

#[tokio::test]
async fn a_failed_shim_create_leaves_nothing_half_made() {
    let node = Node::new();
    let d = node.start().await;
    let pod = d.run_pod("web").await.unwrap();
    node.shim(&pod).fail_next("Create", injected("Create"));
    let e = d.create(&pod, "app").await.unwrap_err();
    assert!(e.to_string().contains("injected"), "{e}");
    assert!(d.cri.list_containers(None).is_empty());
    assert!(d.tasks.tasks_of(&pod).is_empty());
    assert!(d.records(TASKS).is_empty(), "no record");
    assert!(
        node.shims.live().iter().all(|s| s.task_ids().is_empty()),
        "no task"
    );
    let bundles = std::fs::read_dir(d.config.state.join("containers")).unwrap();
    assert_eq!(bundles.count(), 0, "no bundle");
    // The name is free again.
    let c = d.create(&pod, "app").await.unwrap();
    assert_eq!(d.state(&c), cri::ContainerState::ContainerCreated);
}

#[tokio::test]
async fn a_shim_that_cannot_start_fails_the_create_cleanly() {
    let node = Node::new();
    let d = node.start().await;
    // The pod's early shim start fails (only logged), then the create's.
    node.shims
        .fail_next_start(ShimError::Binary("injected start failure".into()));
    node.shims
        .fail_next_start(ShimError::Binary("injected start failure".into()));
    let pod = d.run_pod("web").await.unwrap();
    assert_eq!(d.pod_state(&pod), cri::PodSandboxState::SandboxReady);
    let e = d.create(&pod, "app").await.unwrap_err();
    assert!(e.to_string().contains("injected start failure"), "{e}");
    assert!(d.records(TASKS).is_empty());
    let c = d.create(&pod, "app").await.unwrap();
    d.cri.start_container(&c).await.unwrap();
    assert_eq!(d.state(&c), cri::ContainerState::ContainerRunning);
}

#[tokio::test]
async fn a_failed_start_leaves_a_created_container_to_remove() {
    let node = Node::new();
    let d = node.start().await;
    let pod = d.run_pod("web").await.unwrap();
    let c = d.create(&pod, "app").await.unwrap();
    node.shim(&pod).fail_next("Start", injected("Start"));
    assert!(d.cri.start_container(&c).await.is_err());
    assert_eq!(d.state(&c), cri::ContainerState::ContainerCreated);
    d.cri.remove_container(&c).await.unwrap();
    assert!(d.cri.list_containers(None).is_empty());
    assert!(node.shims.live().iter().all(|s| s.task_ids().is_empty()));
}

#[tokio::test]
async fn exits_are_reported_with_their_codes_and_events() {
    let node = Node::new();
    let d = node.start().await;
    let mut events = d.cri.subscribe();
    let (pod, c) = d.running("web", "app").await;
    node.shim(&pod).exit(&c, 3);
    d.until_state(&c, cri::ContainerState::ContainerExited)
        .await;
    let st = d.status(&c);
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"));
    let mut kinds = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e.container_id == c {
            kinds.push(cri::ContainerEventType::try_from(e.container_event_type).unwrap());
        }
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !kinds.contains(&cri::ContainerEventType::ContainerStoppedEvent)
        && tokio::time::Instant::now() < deadline
    {
        if let Ok(Ok(e)) =
            tokio::time::timeout(std::time::Duration::from_millis(100), events.recv()).await
        {
            if e.container_id == c {
                kinds.push(cri::ContainerEventType::try_from(e.container_event_type).unwrap());
            }
        }
    }
    assert_eq!(
        kinds,
        [
            cri::ContainerEventType::ContainerCreatedEvent,
            cri::ContainerEventType::ContainerStartedEvent,
            cri::ContainerEventType::ContainerStoppedEvent,
        ]
    );
}

#[tokio::test]
async fn a_dead_shim_settles_its_containers() {
    let node = Node::new();
    let d = node.start().await;
    let (pod, c) = d.running("web", "app").await;
    node.shim(&pod).die();
    d.until_state(&c, cri::ContainerState::ContainerUnknown)
        .await;
    assert!(
        d.status(&c).message.contains("shim died"),
        "{:?}",
        d.status(&c)
    );
    assert!(
        !d.config.state.join("pods").join(&pod).exists(),
        "forgotten"
    );
    // Stop and remove still work, and the pod's next container gets a new shim.
    d.cri.stop_container(&c, 0).await.unwrap();
    d.cri.remove_container(&c).await.unwrap();
    let c2 = d.create(&pod, "again").await.unwrap();
    d.cri.start_container(&c2).await.unwrap();
    assert_eq!(node.shims.starts(), 2);
    d.cri.remove_pod_sandbox(&pod).await.unwrap();
    assert!(node.shims.live().is_empty());
}

#[tokio::test]
async fn exec_sync_reports_output_and_exit_code() {
    let node = Node::new();
    let d = node.start().await;
    let (pod, c) = d.running("web", "app").await;
    node.shim(&pod).on_exec(ExecScript {
        stdout: b"hello\n".to_vec(),
        exit: Some(3),
    });
    let out = d
        .cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: c.clone(),
            cmd: vec!["echo".into(), "hello".into()],
            timeout: 0,
        })
        .await
        .unwrap();
    assert_eq!((out.stdout.as_slice(), out.exit_code), (&b"hello\n"[..], 3));
    assert!(
        node.shim(&pod).exec_ids().is_empty(),
        "deleted from the shim"
    );

    // A command outliving its timeout is killed, reaped and deleted.
    node.shim(&pod).on_exec(ExecScript {
        stdout: Vec::new(),
        exit: None,
    });
    let e = d
        .cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: c.clone(),
            cmd: vec!["sleep".into(), "1000".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Kind::DeadlineExceeded, "{e}");
    assert!(node.shim(&pod).exec_ids().is_empty());

    d.cri.stop_container(&c, 0).await.unwrap();
    let e = d
        .cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: c,
            cmd: vec!["true".into()],
            timeout: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Kind::FailedPrecondition, "{e}");
}
