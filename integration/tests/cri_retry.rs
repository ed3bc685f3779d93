//! End-to-end CRI tests for retried creates and for berthd dying half-way
//! (SIGKILL) through RunPodSandbox, StopPodSandbox, between CreateContainer
//! and StartContainer, and while a container exits.
//!
//! Pod creation and teardown are made slow with a stand-in CNI plugin
//! (`slowbridge`, a shell script first in `[cni] bin_dirs`) that sleeps
//! before running the real bridge plugin when a flag file for the CNI
//! command (`slow-ADD`, `slow-DEL`) exists in its control dir, and leaves
//! marker files saying when it started sleeping (with its pid and the
//! sandbox id) and when the real plugin returned.
//!
//! Needs root, runc, the CNI plugins in /usr/lib/cni and cgroup v1.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use integration::cri::{
    self, api, cstatus, expect_code, has_line, host_network_lock, list_containers, list_pods,
    log_path_of, now_nanos, pod_status, wait_container_state, wait_log, CriOpts, Env, TestNet,
    CNI_PLUGINS, TIMEOUT,
};
use integration::util::wait_for;
use tonic::Code;

/// How long `slowbridge` sleeps before the real plugin runs.
const PLUGIN_SLEEP: Duration = Duration::from_secs(4);

/// A CNI network whose first plugin is the `slowbridge` stand-in.
struct SlowNet {
    net: TestNet,
    /// Flag and marker files of the stand-in plugin.
    ctl: PathBuf,
}

impl SlowNet {
    fn new() -> Result<Self> {
        let mut net = TestNet::empty()?;
        let bin = net.dir().join("slowbin");
        let ctl = net.dir().join("slowctl");
        std::fs::create_dir_all(&bin)?;
        std::fs::create_dir_all(&ctl)?;
        let script = format!(
            r#"#!/bin/sh
# Stand-in CNI plugin: sleeps when $C/slow-$CNI_COMMAND exists, then runs the
# real bridge plugin with the same stdin and environment.
C={ctl:?}
if [ -e "$C/slow-$CNI_COMMAND" ]; then
  echo "$$ $CNI_CONTAINERID" > "$C/sleeping-$CNI_COMMAND.$$"
  sleep {secs}
fi
{plugins}/bridge
rc=$?
echo "$rc $CNI_CONTAINERID" > "$C/done-$CNI_COMMAND.$$"
exit $rc
"#,
            ctl = ctl.display().to_string(),
            secs = PLUGIN_SLEEP.as_secs(),
            plugins = CNI_PLUGINS,
        );
        let p = bin.join("slowbridge");
        std::fs::write(&p, script)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        net.prepend_bin_dir(bin);
        let mut conflist = net.bridge_conflist();
        conflist["plugins"][0]["type"] = "slowbridge".into();
        net.write_conflist(&conflist)?;
        Ok(SlowNet { net, ctl })
    }

    /// Makes CNI `command` (ADD, DEL) sleep, or not.
    fn set_slow(ctl: &Path, command: &str, slow: bool) -> Result<()> {
        let f = ctl.join(format!("slow-{command}"));
        if slow {
            std::fs::write(&f, b"")?;
        } else if f.exists() {
            std::fs::remove_file(&f)?;
        }
        Ok(())
    }
}

/// The plugin runs (pid, sandbox id) that started sleeping on `command`.
fn sleepers(ctl: &Path, command: &str) -> Vec<(i32, String)> {
    markers(ctl, &format!("sleeping-{command}."))
}

/// The plugin runs (exit code, sandbox id) that finished `command`.
fn finished(ctl: &Path, command: &str) -> Vec<(i32, String)> {
    markers(ctl, &format!("done-{command}."))
}

fn markers(ctl: &Path, prefix: &str) -> Vec<(i32, String)> {
    let Ok(rd) = std::fs::read_dir(ctl) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|e| {
            let s = std::fs::read_to_string(e.path()).ok()?;
            let (n, id) = s.trim().split_once(' ')?;
            Some((n.parse().ok()?, id.to_string()))
        })
        .collect()
}

/// Waits until one plugin run sleeps on `command`; returns its pid and the
/// sandbox id it was called for.
fn wait_sleeper(ctl: &Path, command: &str) -> Result<(i32, String)> {
    wait_for(
        &format!("the CNI plugin to sleep on {command}"),
        TIMEOUT,
        || Ok(sleepers(ctl, command).into_iter().next()),
    )
}

/// Waits until the process `pid` (a plugin run berthd left behind) is gone.
fn wait_gone(pid: i32, what: &str) -> Result<()> {
    wait_for(what, TIMEOUT, || Ok((!cri::alive(pid)).then_some(())))
}

/// An env whose network is a [`SlowNet`]; returns the env and the plugin's
/// control dir.
fn slow_env() -> Result<(Env, PathBuf)> {
    let slow = SlowNet::new()?;
    let ctl = slow.ctl.clone();
    let env = Env::start_with(slow.net, CriOpts::default())?;
    Ok((env, ctl))
}

fn run_req(pod: &api::PodSandboxConfig) -> api::RunPodSandboxRequest {
    api::RunPodSandboxRequest {
        config: Some(pod.clone()),
        runtime_handler: String::new(),
    }
}

/// RunPodSandbox with a client deadline (sent as `grpc-timeout`).
async fn run_pod_with_deadline(
    rt: &mut cri::Rt,
    pod: &api::PodSandboxConfig,
    deadline: Duration,
) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(run_req(pod));
    req.set_timeout(deadline);
    rt.run_pod_sandbox(req)
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

/// A call that ran out of its client deadline. gRPC says DEADLINE_EXCEEDED;
/// tonic's client and server timeout layers both report CANCELLED with
/// "Timeout expired" (tonic's `TimeoutExpired`), which is what a tonic
/// client sees whatever berthd does.
fn expect_deadline(what: &str, r: Result<String, tonic::Status>) -> Result<()> {
    match r {
        Ok(id) => bail!("{what}: expected a deadline error, got the id {id}"),
        Err(s) if s.code() == Code::DeadlineExceeded => Ok(()),
        Err(s) if s.code() == Code::Cancelled && s.message().contains("Timeout expired") => Ok(()),
        Err(s) => bail!(
            "{what}: expected DeadlineExceeded, got {:?}: {}",
            s.code(),
            s.message()
        ),
    }
}

fn pod_ids(ps: &[api::PodSandbox]) -> Vec<String> {
    ps.iter().map(|p| p.id.clone()).collect()
}

// ---------------------------------------------------------------------------
// 1. A retried create joins the one under way, or gets its result.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_run_pod_sandbox_calls_get_one_pod() -> Result<()> {
    let _net = host_network_lock().await;
    let (env, ctl) = slow_env()?;
    SlowNet::set_slow(&ctl, "ADD", true)?;
    let pod = env.pod("twin")?;
    let mut rt1 = env.rt().await?;
    let mut rt2 = env.rt().await?;
    let (a, b) = tokio::join!(
        rt1.run_pod_sandbox(run_req(&pod)),
        rt2.run_pod_sandbox(run_req(&pod))
    );
    let a = a
        .map_err(|s| env.status_err("RunPodSandbox #1", s))?
        .into_inner()
        .pod_sandbox_id;
    let b = b
        .map_err(|s| env.status_err("RunPodSandbox #2", s))?
        .into_inner()
        .pod_sandbox_id;
    ensure!(!a.is_empty() && a == b, "two ids for one pod: {a:?} {b:?}");
    let pods = list_pods(&mut rt1, None).await?;
    ensure!(pod_ids(&pods) == vec![a.clone()], "{pods:?}");
    ensure!(
        pods[0].state == api::PodSandboxState::SandboxReady as i32,
        "{pods:?}"
    );
    // The pod was set up once: one ADD ran.
    let adds = sleepers(&ctl, "ADD");
    ensure!(
        adds.len() == 1 && adds[0].1 == a,
        "CNI ADD runs for one pod: {adds:?}"
    );
    // And the name is now taken.
    let r = rt1.run_pod_sandbox(run_req(&pod)).await;
    expect_code(
        "RunPodSandbox once the pod exists",
        r,
        Code::AlreadyExists,
        &["twin", &a],
    )?;
    env.stop_remove_pod(&mut rt1, &a).await?;
    ensure!(list_pods(&mut rt1, None).await?.is_empty());
    env.assert_no_leaks(&a, &[], &[])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pod_sandbox_retried_after_its_deadline_gets_the_id() -> Result<()> {
    let _net = host_network_lock().await;
    let (env, ctl) = slow_env()?;
    SlowNet::set_slow(&ctl, "ADD", true)?;
    let mut rt = env.rt().await?;
    let short = Duration::from_millis(500);

    // (a) The retry comes while the first create is still under way.
    let pod = env.pod("early-retry")?;
    let r = run_pod_with_deadline(&mut rt, &pod, short).await;
    expect_deadline("RunPodSandbox with a 500 ms deadline", r)?;
    let (_, first) = wait_sleeper(&ctl, "ADD")?;
    ensure!(
        finished(&ctl, "ADD").is_empty(),
        "the plugin finished before the retry: the test cannot tell a join from a claim"
    );
    let id = env.run_pod(&mut rt, &pod).await?;
    ensure!(
        id == first,
        "the retry got {id}, the create under way is for {first}"
    );
    ensure!(
        sleepers(&ctl, "ADD").len() == 1,
        "the retry set up a second pod: {:?}",
        sleepers(&ctl, "ADD")
    );
    let pods = list_pods(&mut rt, None).await?;
    ensure!(pod_ids(&pods) == vec![id.clone()], "{pods:?}");
    // The joined retry took the result: a third call finds the name taken.
    let r = rt.run_pod_sandbox(run_req(&pod)).await;
    expect_code(
        "RunPodSandbox after the joined retry",
        r,
        Code::AlreadyExists,
        &["early-retry", &id],
    )?;

    // (b) The retry comes only after the first create has finished.
    let pod2 = env.pod("late-retry")?;
    let r = run_pod_with_deadline(&mut rt, &pod2, short).await;
    expect_deadline("RunPodSandbox with a 500 ms deadline", r)?;
    let id2 = wait_for("the abandoned create to finish", TIMEOUT, || {
        Ok(finished(&ctl, "ADD")
            .into_iter()
            .find(|(_, sid)| *sid != id))
    })?;
    ensure!(id2.0 == 0, "the bridge plugin failed ADD: {id2:?}");
    let id2 = id2.1;
    // Finished: the pod is listed (the create inserts it just before it
    // hands its result over, under the lock that retries check).
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let pods = loop {
        let pods = list_pods(&mut rt, None).await?;
        if pods.iter().any(|p| p.id == id2) {
            break pods;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the abandoned pod {id2} is not listed: {pods:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(pods.len() == 2, "{pods:?}");
    let got = env.run_pod(&mut rt, &pod2).await?;
    ensure!(
        got == id2,
        "the late retry got {got}, the abandoned create made {id2}"
    );
    ensure!(
        sleepers(&ctl, "ADD").len() == 2,
        "the late retry set up another pod: {:?}",
        sleepers(&ctl, "ADD")
    );
    // Exactly once: the next call finds the name taken.
    let r = rt.run_pod_sandbox(run_req(&pod2)).await;
    expect_code(
        "RunPodSandbox after the late retry",
        r,
        Code::AlreadyExists,
        &["late-retry", &id2],
    )?;
    let pods = list_pods(&mut rt, None).await?;
    ensure!(pods.len() == 2, "{pods:?}");

    SlowNet::set_slow(&ctl, "ADD", false)?;
    for p in [&id, &id2] {
        env.stop_remove_pod(&mut rt, p).await?;
    }
    ensure!(list_pods(&mut rt, None).await?.is_empty());
    env.assert_no_leaks(&id, &[], &[])?;
    env.assert_no_leaks(&id2, &[], &[])?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. berthd killed during RunPodSandbox.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_run_pod_sandbox_leaves_nothing() -> Result<()> {
    let _net = host_network_lock().await;
    let (mut env, ctl) = slow_env()?;
    SlowNet::set_slow(&ctl, "ADD", true)?;
    let pod = env.pod("crashed-create")?;
    let mut rt = env.rt().await?;
    let call = {
        let mut rt = rt.clone();
        let pod = pod.clone();
        tokio::spawn(async move { rt.run_pod_sandbox(run_req(&pod)).await })
    };
    let (plugin, pod_id) = wait_sleeper(&ctl, "ADD")?;
    env.d_mut().kill9()?;
    let r = call.await?;
    ensure!(
        r.is_err(),
        "RunPodSandbox succeeded with berthd killed: {r:?}"
    );
    drop(rt);
    SlowNet::set_slow(&ctl, "ADD", false)?;
    env.d_mut().restart()?;
    rt = env.rt().await?;

    let pods = list_pods(&mut rt, None).await?;
    ensure!(
        pods.is_empty(),
        "a pod whose create died is listed: {pods:?}"
    );
    // The plugin run berthd started may outlive it: whatever it does must
    // not stay (wait for it to be gone, then look).
    wait_gone(plugin, "the CNI plugin run of the killed berthd to end")?;
    env.assert_no_leaks(&pod_id, &[], &[])
        .with_context(|| format!("plugin markers: done {:?}", finished(&ctl, "ADD")))?;

    // The name is free again.
    let id = env.run_pod(&mut rt, &pod).await?;
    ensure!(id != pod_id);
    let st = pod_status(&mut rt, &id, false).await?;
    ensure!(
        st.status
            .as_ref()
            .is_some_and(|s| s.state == api::PodSandboxState::SandboxReady as i32
                && s.network.as_ref().is_some_and(|n| !n.ip.is_empty())),
        "{st:?}"
    );
    env.stop_remove_pod(&mut rt, &id).await?;
    env.assert_no_leaks(&id, &[], &[])?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. berthd killed during StopPodSandbox.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_stop_pod_sandbox_finishes_the_stop() -> Result<()> {
    let _net = host_network_lock().await;
    let (mut env, ctl) = slow_env()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("crashed-stop")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let sleeper = env.container("sleeper", &["sleep", "3600"]);
    let c = env.create_start(&mut rt, &pod_id, &pod, &sleeper).await?;
    let pid = cri::container_pid(&mut rt, &c).await?;
    ensure!(
        env.net.bridge_ports().len() == 1 && env.net.leases().len() == 1,
        "pod network: ports {:?} leases {:?}",
        env.net.bridge_ports(),
        env.net.leases()
    );

    SlowNet::set_slow(&ctl, "DEL", true)?;
    let call = {
        let mut rt = rt.clone();
        let id = pod_id.clone();
        tokio::spawn(async move {
            rt.stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })
    };
    let (plugin, del_for) = wait_sleeper(&ctl, "DEL")?;
    ensure!(del_for == pod_id, "DEL for {del_for}, not {pod_id}");
    env.d_mut().kill9()?;
    let r = call.await?;
    ensure!(
        r.is_err(),
        "StopPodSandbox succeeded with berthd killed: {r:?}"
    );
    drop(rt);
    SlowNet::set_slow(&ctl, "DEL", false)?;
    env.d_mut().restart()?;
    let mut rt = env.rt().await?;

    // The stop was finished at start.
    let st = pod_status(&mut rt, &pod_id, false).await?;
    let s = st.status.as_ref().context("no pod status")?;
    ensure!(
        s.state == api::PodSandboxState::SandboxNotready as i32,
        "pod after the restart: {st:?}"
    );
    let cs = cstatus(&mut rt, &c).await?;
    ensure!(
        cs.state == api::ContainerState::ContainerExited as i32,
        "container after the restart: {cs:?}"
    );
    ensure!(!cri::alive(pid), "container process {pid} alive");
    wait_gone(plugin, "the CNI DEL run of the killed berthd to end")?;
    ensure!(
        env.net.bridge_ports().is_empty(),
        "veths left on the bridge: {:?}",
        env.net.bridge_ports()
    );
    ensure!(
        env.net.leases().is_empty(),
        "leases left: {:?}",
        env.net.leases()
    );
    ensure!(
        env.net.netns_pins().is_empty(),
        "netns pins left: {:?}",
        env.net.netns_pins()
    );
    ensure!(
        pod_status(&mut rt, &pod_id, true)
            .await?
            .info
            .get("info")
            .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
            .is_some_and(|v| v["netNamespacePath"].is_null()),
        "the pod still names a netns"
    );

    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .map_err(|s| env.status_err("RemovePodSandbox", s))?;
    ensure!(list_pods(&mut rt, None).await?.is_empty());
    ensure!(list_containers(&mut rt, None).await?.is_empty());
    env.assert_no_leaks(&pod_id, std::slice::from_ref(&c), &[pid])?;
    Ok(())
}

/// berthd killed inside StopPodSandbox right after the netns pin was
/// unmounted (before it was unlinked and the record written): after the
/// restart the pin is a plain file. The stop must still finish (CNI DEL
/// without a namespace, as containerd does for a closed netns) instead of
/// failing on it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_finishes_when_the_netns_pin_lost_its_mount() -> Result<()> {
    let _net = host_network_lock().await;
    let mut env = Env::start()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("unmounted-netns")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    ensure!(env.net.leases().len() == 1, "{:?}", env.net.leases());
    let pins = env.net.netns_pins();
    ensure!(pins.len() == 1, "one netns pin: {pins:?}");
    let pin = std::path::PathBuf::from(&pins[0]);

    drop(rt);
    env.d_mut().kill9()?;
    let out = std::process::Command::new("umount").arg(&pin).output()?;
    ensure!(out.status.success(), "umount {}: {out:?}", pin.display());
    ensure!(pin.is_file(), "the pin is left as a plain file");
    env.d_mut().restart()?;
    let mut rt = env.rt().await?;

    rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .map_err(|s| env.status_err("StopPodSandbox with an unmounted pin", s))?;
    let st = pod_status(&mut rt, &pod_id, false).await?;
    ensure!(
        st.status
            .as_ref()
            .is_some_and(|s| s.state == api::PodSandboxState::SandboxNotready as i32),
        "{st:?}"
    );
    ensure!(
        env.net.leases().is_empty(),
        "leases left: {:?}",
        env.net.leases()
    );
    ensure!(
        env.net.bridge_ports().is_empty(),
        "veths left: {:?}",
        env.net.bridge_ports()
    );
    ensure!(!pin.exists(), "the pin file is removed");
    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .map_err(|s| env.status_err("RemovePodSandbox", s))?;
    ensure!(list_pods(&mut rt, None).await?.is_empty());
    env.assert_no_leaks(&pod_id, &[], &[])?;
    Ok(())
}

/// berthd killed inside RunPodSandbox after the pod's shim started but
/// before its record (`shim.json`) was written: the restart finds the shim
/// by its command line and kills it, and the pod goes on with a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_before_the_shim_record_leaks_no_shim() -> Result<()> {
    let _net = host_network_lock().await;
    let mut env = Env::start()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("unrecorded-shim")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    // The pod's shim starts during RunPodSandbox.
    let shims: Vec<i32> = cri::processes_naming(&pod_id)
        .into_iter()
        .filter(|p| cri::cmdline(*p).contains("shim"))
        .collect();
    ensure!(!shims.is_empty(), "the pod's shim runs");

    drop(rt);
    env.d_mut().kill9()?;
    // As if berthd had died before recording the shim it had started.
    let record = env.d().state().join("pods").join(&pod_id).join("shim.json");
    std::fs::remove_file(&record).with_context(|| record.display().to_string())?;
    env.d_mut().restart()?;
    for p in &shims {
        wait_gone(*p, "the unrecorded shim to be killed")?;
    }

    let mut rt = env.rt().await?;
    let again = env.container("again", &["sleep", "3600"]);
    let c2 = env.create_start(&mut rt, &pod_id, &pod, &again).await?;
    let pid2 = cri::container_pid(&mut rt, &c2).await?;
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    env.assert_no_leaks(&pod_id, &[c2], &[pid2])?;
    Ok(())
}

/// berthd killed right after it recorded a container's exit and before the
/// shim deleted the task (which makes the shim forget the status): after the
/// restart the container is exited with its real code, and the shim's copy
/// is deleted. (The old order, delete then record, lost the status: the
/// container became CONTAINER_UNKNOWN with exit code 0.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_between_recording_an_exit_and_the_shim_delete() -> Result<()> {
    let _net = host_network_lock().await;
    let mut env = Env::start()?;
    env.d_mut().kill9()?;
    env.d_mut()
        .set_env("BERTH_FAILPOINTS", Some("tasks.exit-recorded"));
    env.d_mut().restart()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("exit-recorded")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let seven = env.container("seven", &["sh", "-c", "sleep 1; exit 7"]);
    let c = env.create_start(&mut rt, &pod_id, &pod, &seven).await?;
    let pid = cri::container_pid(&mut rt, &c).await?;
    drop(rt);
    let deadline = Instant::now() + TIMEOUT;
    while env.d_mut().is_running() {
        ensure!(Instant::now() < deadline, "the failpoint never fired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        env.d().log().contains("tasks.exit-recorded"),
        "{}",
        env.d().log()
    );

    env.d_mut().set_env("BERTH_FAILPOINTS", None);
    env.d_mut().kill9()?;
    env.d_mut().restart()?;
    let mut rt = env.rt().await?;
    let st = cstatus(&mut rt, &c).await?;
    ensure!(
        st.state == api::ContainerState::ContainerExited as i32 && st.exit_code == 7,
        "the recorded exit survives: {st:?}"
    );
    ensure!(
        env.d()
            .log()
            .contains("deleted an exited task its shim still held"),
        "the shim's copy is deleted at start"
    );
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    env.assert_no_leaks(&pod_id, std::slice::from_ref(&c), &[pid])?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. berthd killed between CreateContainer and StartContainer.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_between_create_and_start_container() -> Result<()> {
    let _net = host_network_lock().await;
    let mut env = Env::start()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("crashed-created")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let cfg = env.container("late", &["sh", "-c", "echo started-late; sleep 3600"]);
    let log = log_path_of(&pod, &cfg)?;
    let c = env.create(&mut rt, &pod_id, &pod, &cfg).await?;
    let before = cstatus(&mut rt, &c).await?;
    ensure!(
        before.state == api::ContainerState::ContainerCreated as i32,
        "{before:?}"
    );

    drop(rt);
    env.d_mut().kill9()?;
    env.d_mut().restart()?;
    let mut rt = env.rt().await?;

    let st = cstatus(&mut rt, &c).await?;
    ensure!(
        st.state == api::ContainerState::ContainerCreated as i32,
        "a created container after the restart: {st:?}"
    );
    ensure!(
        st.created_at == before.created_at && st.started_at == 0,
        "{st:?}"
    );
    rt.start_container(api::StartContainerRequest {
        container_id: c.clone(),
    })
    .await
    .map_err(|s| env.status_err("StartContainer after the restart", s))?;
    let st =
        wait_container_state(&mut rt, &c, api::ContainerState::ContainerRunning, TIMEOUT).await?;
    ensure!(st.started_at > 0, "{st:?}");
    let pid = cri::container_pid(&mut rt, &c).await?;
    ensure!(cri::alive(pid), "container process {pid} is not running");
    wait_log(&log, "the container's output in its log", TIMEOUT, |l| {
        has_line(l, "stdout", "started-late")
    })?;

    env.stop_remove_pod(&mut rt, &pod_id).await?;
    ensure!(list_containers(&mut rt, None).await?.is_empty());
    env.assert_no_leaks(&pod_id, std::slice::from_ref(&c), &[pid])?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. A container exits while berthd is down.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_exit_while_berthd_is_down() -> Result<()> {
    let _net = host_network_lock().await;
    let mut env = Env::start()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("exit-while-down")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let cfg = env.container("seven", &["sh", "-c", "sleep 2; exit 7"]);
    let c = env.create_start(&mut rt, &pod_id, &pod, &cfg).await?;
    let pid = cri::container_pid(&mut rt, &c).await?;
    let running = cstatus(&mut rt, &c).await?;
    ensure!(
        running.state == api::ContainerState::ContainerRunning as i32,
        "{running:?}"
    );

    drop(rt);
    env.d_mut().kill9()?;
    wait_gone(pid, "the container to exit while berthd is down")?;
    // Gone may mean a zombie; its shim reaps it and stamps the time just after.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted_at = now_nanos();
    env.d_mut().restart()?;
    let mut rt = env.rt().await?;

    let st =
        wait_container_state(&mut rt, &c, api::ContainerState::ContainerExited, TIMEOUT).await?;
    ensure!(st.exit_code == 7, "exit code: {st:?}");
    ensure!(
        st.started_at == running.started_at,
        "started_at changed: {st:?}"
    );
    // It ran about 2 s and ended before berthd came back.
    ensure!(
        st.finished_at - st.started_at >= 1_500_000_000,
        "finished_at {} is not ~2 s after started_at {}",
        st.finished_at,
        st.started_at
    );
    ensure!(
        st.finished_at <= restarted_at,
        "finished_at {} is after berthd was restarted ({restarted_at}): the recovery time, not the exit time",
        st.finished_at
    );

    env.stop_remove_pod(&mut rt, &pod_id).await?;
    env.assert_no_leaks(&pod_id, std::slice::from_ref(&c), &[pid])?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 6. The OCI runtime dies in the middle of `create` (found by the chaos suite).

/// A runc that, while the token file exists, starts the real `create`, waits
/// until the container's memory cgroup exists and then SIGKILLs it and itself:
/// runc has made the cgroup and not yet written its state, so `runc delete`
/// knows nothing to remove.
const DYING_RUNC: &str = r#"#!/bin/sh
token=@TOKEN@
real=@REAL@
bundle=
prev=
for a in "$@"; do
  [ "$prev" = --bundle ] && bundle=$a
  prev=$a
done
case " $* " in
*" create "*)
  if [ -n "$bundle" ] && rm "$token" 2>/dev/null; then
    cg=$(tr ',' '\n' < "$bundle/config.json" | sed -n 's/.*"cgroupsPath": *"\([^"]*\)".*/\1/p')
    exec 3<&0
    "$real" "$@" <&3 &
    child=$!
    i=0
    while [ ! -d "/sys/fs/cgroup/memory$cg" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
    kill -9 $child
    kill -9 $$
  fi;;
esac
exec "$real" "$@"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_killed_mid_create_leaves_no_cgroup() -> Result<()> {
    let _net = host_network_lock().await;
    let hooks = tempfile::tempdir()?;
    let token = hooks.path().join("die");
    let wrapper = hooks.path().join("dying-runc");
    let real = integration::bench::which("runc").context("runc on PATH")?;
    std::fs::write(
        &wrapper,
        DYING_RUNC
            .replace("@TOKEN@", &token.display().to_string())
            .replace("@REAL@", &real.display().to_string()),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let env = Env::start_with(
        TestNet::new()?,
        CriOpts {
            extra: format!("\n[shim]\nruntime = {:?}\n", wrapper.display().to_string()),
            ..Default::default()
        },
    )?;
    let mut rt = env.rt().await?;
    let pod = env.pod("runc-dies")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let pod_cgroup = pod
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    let cfg = env.container("victim", &["sleep", "3600"]);

    std::fs::write(&token, b"")?;
    let r = rt
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(cfg.clone()),
            sandbox_config: Some(pod.clone()),
        })
        .await;
    ensure!(!token.exists(), "the wrapper never ran create");
    let err = match r {
        Ok(r) => bail!(
            "CreateContainer succeeded with runc killed: {:?}",
            r.into_inner()
        ),
        Err(s) => s,
    };
    ensure!(
        err.message().contains("victim"),
        "the error names the container: {err:?}"
    );
    // Nothing of the half-made container is left: no cgroup below the pod's,
    // no process in it.
    let leftover = cri::cgroup_dirs_naming(&pod_cgroup, &[String::new()]);
    ensure!(
        leftover.is_empty(),
        "cgroups left by the killed create: {leftover:?}"
    );
    // kubelet's retry with the same name works.
    let c = env.create_start(&mut rt, &pod_id, &pod, &cfg).await?;
    let pid = cri::container_pid(&mut rt, &c).await?;
    ensure!(cri::alive(pid));
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    env.assert_no_leaks(&pod_id, std::slice::from_ref(&c), &[pid])?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 7. StopContainer while the container's shim has just died (found by the chaos
// suite: StopContainer answered OK at once while the shim's death was still being
// settled, and the container still showed RUNNING).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_container_after_its_shim_died_answers_once_exited() -> Result<()> {
    let _net = host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("shim-dies")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let cfg = env.container("main", &["sleep", "3600"]);
    let c = env.create_start(&mut rt, &pod_id, &pod, &cfg).await?;
    let shims = cri::processes_naming(&format!("-id {pod_id}"));
    ensure!(!shims.is_empty(), "no shim names pod {pod_id}");
    for p in shims {
        cri::kill(p, libc::SIGKILL);
    }
    // kubelet retries a StopContainer that failed (the shim's connection broke).
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = rt
            .stop_container(api::StopContainerRequest {
                container_id: c.clone(),
                timeout: 2,
            })
            .await;
        match r {
            Ok(_) => break,
            Err(s) if Instant::now() < deadline => {
                eprintln!("StopContainer: {:?}: {}", s.code(), s.message());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => return Err(env.status_err("StopContainer", s)),
        }
    }
    let st = cstatus(&mut rt, &c).await?;
    ensure!(
        st.state == api::ContainerState::ContainerExited as i32 && st.exit_code == 137,
        "StopContainer answered OK and the container is {st:?}"
    );
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 8. A container that exits while its start is still being recorded (found by the
// chaos suite: the start's write of "running" reached the store after the exit
// watcher's "exited"; after a crash the exit status was lost).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_exit_recorded_before_the_start_survives_a_crash() -> Result<()> {
    let _net = host_network_lock().await;
    let mut env = Env::start()?;
    // The start's write waits 3 s: the exit (0.2 s after the start) is recorded
    // meanwhile, even on a loaded machine.
    env.d_mut()
        .set_env("BERTH_FAILPOINTS", Some("tasks.start-persist@3000"));
    env.d_mut().restart()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("quick-exit")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    // It exits while the start is still being recorded (after the start itself).
    let cfg = env.container("job", &["sh", "-c", "sleep 0.2; exit 3"]);
    let c = env.create_start(&mut rt, &pod_id, &pod, &cfg).await?;
    let st = cstatus(&mut rt, &c).await?;
    ensure!(
        st.state == api::ContainerState::ContainerExited as i32 && st.exit_code == 3,
        "{st:?}"
    );
    drop(rt);
    env.d_mut().kill9()?;
    env.d_mut().set_env("BERTH_FAILPOINTS", None);
    env.d_mut().restart()?;
    let mut rt = env.rt().await?;
    let st = cstatus(&mut rt, &c).await?;
    ensure!(
        st.state == api::ContainerState::ContainerExited as i32 && st.exit_code == 3,
        "after a crash, the job that exited 3 is {st:?}"
    );
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 9. The shim dies after a container's exit was recorded and before it deleted
// the task (found by the chaos suite: the runtime's state and the container's
// cgroup stayed after RemoveContainer).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_death_before_the_task_delete_leaves_no_runtime_state() -> Result<()> {
    let _net = host_network_lock().await;
    let mut env = Env::start()?;
    // After the exit is recorded, berthd waits 1.5 s before the shim's delete.
    env.d_mut()
        .set_env("BERTH_FAILPOINTS", Some("tasks.exit-recorded@1500"));
    env.d_mut().restart()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("shim-dies-late")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let cfg = env.container("job", &["sh", "-c", "sleep 0.3; exit 3"]);
    let c = env.create_start(&mut rt, &pod_id, &pod, &cfg).await?;
    let st =
        wait_container_state(&mut rt, &c, api::ContainerState::ContainerExited, TIMEOUT).await?;
    ensure!(st.exit_code == 3, "{st:?}");
    let state_dir = env.d().state().join("runc").join("berth").join(&c);
    ensure!(
        state_dir.exists(),
        "runc has no state for {c} before the delete"
    );
    for p in cri::processes_naming(&format!("-id {pod_id}")) {
        cri::kill(p, libc::SIGKILL);
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    rt.remove_container(api::RemoveContainerRequest {
        container_id: c.clone(),
    })
    .await
    .map_err(|s| env.status_err("RemoveContainer", s))?;
    ensure!(
        !state_dir.exists(),
        "the runtime's state of {c} stayed after RemoveContainer"
    );
    let parent = pod
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    let left = cri::cgroup_dirs_naming(&parent, std::slice::from_ref(&c));
    ensure!(left.is_empty(), "cgroups of {c} left: {left:?}");
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    Ok(())
}
