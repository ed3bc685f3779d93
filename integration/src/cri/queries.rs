//! CRI calls the tests repeat: statuses, listings, waits, exec, expected
//! error codes.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::{api, Rt};

pub async fn container_status(
    rt: &mut Rt,
    id: &str,
    verbose: bool,
) -> Result<api::ContainerStatusResponse> {
    Ok(rt
        .container_status(api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose,
        })
        .await?
        .into_inner())
}

/// The container's state and full status.
pub async fn cstatus(rt: &mut Rt, id: &str) -> Result<api::ContainerStatus> {
    container_status(rt, id, false)
        .await?
        .status
        .with_context(|| format!("ContainerStatus({id}) without a status"))
}

pub async fn pod_status(
    rt: &mut Rt,
    id: &str,
    verbose: bool,
) -> Result<api::PodSandboxStatusResponse> {
    Ok(rt
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose,
        })
        .await?
        .into_inner())
}

/// The pid from the verbose ContainerStatus info (`info["info"].pid`, as
/// containerd reports it).
pub async fn container_pid(rt: &mut Rt, id: &str) -> Result<i32> {
    let r = container_status(rt, id, true).await?;
    let info = verbose_info(&r.info)?;
    let pid = info["pid"]
        .as_i64()
        .with_context(|| format!("verbose info of {id} has no pid: {info}"))?;
    ensure!(pid > 0, "pid {pid} in {info}");
    Ok(pid as i32)
}

/// The JSON object in a verbose `info` map (key "info").
pub fn verbose_info(info: &HashMap<String, String>) -> Result<Value> {
    let raw = info
        .get("info")
        .with_context(|| format!("verbose info has no \"info\" key: {info:?}"))?;
    let v: Value = serde_json::from_str(raw).with_context(|| format!("info is not JSON: {raw}"))?;
    ensure!(
        v.as_object().is_some_and(|o| !o.is_empty()),
        "info is not a non-empty object: {v}"
    );
    Ok(v)
}

/// Polls until the container reaches `state`; returns its status.
pub async fn wait_container_state(
    rt: &mut Rt,
    id: &str,
    state: api::ContainerState,
    timeout: Duration,
) -> Result<api::ContainerStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut interval = Duration::from_millis(10);
    loop {
        let st = cstatus(rt, id).await?;
        if st.state == state as i32 {
            return Ok(st);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("container {id} not {state:?} after {timeout:?}: {st:?}");
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}

pub async fn list_containers(
    rt: &mut Rt,
    filter: Option<api::ContainerFilter>,
) -> Result<Vec<api::Container>> {
    Ok(rt
        .list_containers(api::ListContainersRequest { filter })
        .await?
        .into_inner()
        .containers)
}

pub async fn list_pods(
    rt: &mut Rt,
    filter: Option<api::PodSandboxFilter>,
) -> Result<Vec<api::PodSandbox>> {
    Ok(rt
        .list_pod_sandbox(api::ListPodSandboxRequest { filter })
        .await?
        .into_inner()
        .items)
}

/// ExecSync `cmd` with `timeout` seconds (0 = none).
pub async fn exec(
    rt: &mut Rt,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<api::ExecSyncResponse, tonic::Status> {
    rt.exec_sync(api::ExecSyncRequest {
        container_id: id.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    })
    .await
    .map(|r| r.into_inner())
}

/// ExecSync that must exit 0; returns stdout.
pub async fn exec_ok(rt: &mut Rt, id: &str, cmd: &[&str]) -> Result<String> {
    let r = exec(rt, id, cmd, 30).await.map_err(|s| {
        anyhow::anyhow!("ExecSync {cmd:?} in {id}: {:?}: {}", s.code(), s.message())
    })?;
    ensure!(
        r.exit_code == 0,
        "ExecSync {cmd:?} in {id} exited {}: stdout {:?} stderr {:?}",
        r.exit_code,
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    Ok(String::from_utf8_lossy(&r.stdout).into_owned())
}

/// Asserts `r` failed with `code` and a message containing every one of
/// `needles` (case-insensitively); returns the message.
pub fn expect_code<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    needles: &[&str],
) -> Result<String> {
    let s = match r {
        Ok(v) => bail!("{what}: expected {code:?}, got success: {v:?}"),
        Err(s) => s,
    };
    ensure!(
        s.code() == code,
        "{what}: expected {code:?}, got {:?}: {}",
        s.code(),
        s.message()
    );
    let msg = s.message().to_lowercase();
    for n in needles {
        ensure!(
            msg.contains(&n.to_lowercase()),
            "{what}: message {:?} does not name {n:?}",
            s.message()
        );
    }
    Ok(s.message().to_string())
}
