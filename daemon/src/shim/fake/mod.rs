//! An in-memory shim for unit tests: [`FakeShims`] implements
//! [`ShimProcesses`] (start, connect, clean-up) and each pod's [`FakeShim`]
//! (`task_shim.rs`) implements [`TaskShim`](super::TaskShim).

mod task_shim;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim_protos::api;

use super::binary::{ShimBinary, StartReply, StdioScheme};
use super::client::{ShimError, TaskApi};
use super::connection::{Connected, ShimProcesses, TaskShim};
use berth_sysutil::lock;
pub use task_shim::{ExecScript, FakeShim, FakeState};

/// The fake shims of one test: every pod's shim by address, shared by the
/// daemons of a test across a simulated restart.
#[derive(Default)]
pub struct FakeShims {
    shims: Mutex<HashMap<String, Arc<FakeShim>>>,
    /// Errors the next `start`s return.
    start_failures: Mutex<VecDeque<ShimError>>,
    /// `(task id, bundle)` of every shim-binary clean-up.
    cleanups: Mutex<Vec<(String, PathBuf)>>,
    starts: AtomicU32,
}

impl FakeShims {
    pub fn new() -> Arc<FakeShims> {
        Arc::new(FakeShims::default())
    }

    /// The live (or last) shim of a pod.
    pub fn shim_of(&self, sandbox_id: &str) -> Option<Arc<FakeShim>> {
        lock(&self.shims)
            .values()
            .filter(|s| s.sandbox_id == sandbox_id)
            .max_by_key(|s| s.pid)
            .cloned()
    }

    /// The next start fails with `err`.
    pub fn fail_next_start(&self, err: ShimError) {
        lock(&self.start_failures).push_back(err);
    }

    /// How many shims were started.
    pub fn starts(&self) -> u32 {
        self.starts.load(Ordering::SeqCst)
    }

    pub fn cleanups(&self) -> Vec<(String, PathBuf)> {
        lock(&self.cleanups).clone()
    }

    /// Shims still running.
    pub fn live(&self) -> Vec<Arc<FakeShim>> {
        lock(&self.shims)
            .values()
            .filter(|s| !s.is_dead())
            .cloned()
            .collect()
    }
}

#[async_trait]
impl ShimProcesses for FakeShims {
    fn binary(&self) -> Result<ShimBinary, ShimError> {
        Ok(ShimBinary {
            path: PathBuf::from("/fake/berth-shim"),
            stdio: StdioScheme::CriLog,
            bootstrap: false,
        })
    }

    async fn start(
        &self,
        _binary: &ShimBinary,
        sandbox_id: &str,
        _cwd: &Path,
    ) -> Result<StartReply, ShimError> {
        if let Some(e) = lock(&self.start_failures).pop_front() {
            return Err(e);
        }
        let n = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        let address = format!("unix://@fake-shim-{sandbox_id}-{n}");
        // Pids far from real ones; each shim's tasks count up from it.
        let pid = 4_000_000 + n * 1000;
        lock(&self.shims).insert(address.clone(), Arc::new(FakeShim::new(sandbox_id, pid)));
        Ok(StartReply {
            address,
            api: TaskApi::V3,
        })
    }

    async fn connect(
        &self,
        address: &str,
        _api: TaskApi,
        sandbox_id: &str,
    ) -> Result<Connected, ShimError> {
        let shim = lock(&self.shims)
            .get(address)
            .filter(|s| !s.is_dead())
            .cloned();
        let Some(shim) = shim else {
            return Err(ShimError::Connect {
                address: address.to_string(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            });
        };
        let info = shim.connect_info(sandbox_id).await?;
        Ok((shim, info.shim_pid))
    }

    async fn cleanup(
        &self,
        _binary: &ShimBinary,
        id: &str,
        bundle: &Path,
    ) -> Result<api::DeleteResponse, ShimError> {
        lock(&self.cleanups).push((id.to_string(), bundle.to_path_buf()));
        Ok(api::DeleteResponse {
            exit_status: 137,
            ..Default::default()
        })
    }

    fn follow_log(
        &self,
        _cwd: &Path,
        _sandbox_id: &str,
        _create: bool,
    ) -> Result<Option<tokio::task::AbortHandle>, ShimError> {
        Ok(None)
    }

    fn alive(&self, pid: u32) -> bool {
        lock(&self.shims)
            .values()
            .any(|s| s.pid == pid && !s.is_dead())
    }

    fn kill_unrecorded(&self, _sandbox_id: &str) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::task_shim::rpc;
    use super::*;
    use crate::shim::RpcCode;

    fn create_req(id: &str) -> api::CreateTaskRequest {
        api::CreateTaskRequest {
            id: id.to_string(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn tasks_follow_runcs_state_machine() {
        let shims = FakeShims::new();
        let binary = shims.binary().unwrap();
        let reply = shims.start(&binary, "pod", Path::new("/")).await.unwrap();
        let (client, pid) = shims
            .connect(&reply.address, reply.api, "pod")
            .await
            .unwrap();
        let shim = shims.shim_of("pod").unwrap();
        assert_eq!(pid, shim.pid);

        client.create(&create_req("t")).await.unwrap();
        assert!(
            client.create(&create_req("t")).await.is_err(),
            "ids are unique"
        );
        client.start("t").await.unwrap();
        assert_eq!(shim.state_of("t"), Some(FakeState::Running));
        let e = client.delete("t").await.unwrap_err();
        assert_eq!(e.code(), Some(RpcCode::FailedPrecondition), "{e}");

        let waiter = {
            let c = client.clone();
            tokio::spawn(async move { c.wait("t").await })
        };
        client.kill("t", 15, false).await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap().exit_status, 143);
        assert!(client.kill("t", 9, true).await.unwrap_err().is_not_found());
        assert_eq!(client.delete("t").await.unwrap().exit_status, 143);
        assert!(client.state("t").await.unwrap_err().is_not_found());

        shim.fail_next("Start", rpc("Start", RpcCode::Other(2), "injected"));
        client.create(&create_req("u")).await.unwrap();
        assert!(client.start("u").await.is_err());
        client.start("u").await.unwrap();
        let waiter = {
            let c = client.clone();
            tokio::spawn(async move { c.wait("u").await })
        };
        shim.die();
        assert!(waiter.await.unwrap().unwrap_err().is_connection());
        let reconnect = shims.connect(&reply.address, reply.api, "pod").await;
        assert!(reconnect.is_err_and(|e| e.is_connection()));
    }
}
