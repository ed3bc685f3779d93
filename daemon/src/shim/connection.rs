//! The seams between berthd and its shims: [`TaskShim`], the task API of one
//! pod's shim (ttrpc to a shim process in production, [`super::fake`] in unit
//! tests), and [`ShimProcesses`], how shims are started, reached and cleaned
//! up after. The [`super::ShimManager`] and the task service only see these.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;

use super::binary::{ShimBinary, StartReply};
use super::client::{ShimError, TaskApi};

/// The containerd task API of one pod's shim (v2 or v3), as berthd calls it.
/// Every call names the task (`id`) and, for exec processes, the exec id.
#[async_trait]
pub trait TaskShim: Send + Sync {
    /// The version of the task service this connection speaks.
    fn api(&self) -> TaskApi;

    /// Who the shim is (its pid, the task's pid).
    async fn connect_info(&self, id: &str) -> Result<api::ConnectResponse, ShimError>;

    /// Creates a task (the OCI runtime's create) from a bundle.
    async fn create(
        &self,
        req: &api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse, ShimError>;

    /// Starts a created task.
    async fn start(&self, id: &str) -> Result<api::StartResponse, ShimError>;

    async fn state(&self, id: &str) -> Result<api::StateResponse, ShimError>;

    /// Signals a task's init (`all`: every process in its container).
    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), ShimError>;

    /// Blocks until the task's init process has exited; returns at once for
    /// one that already has.
    async fn wait(&self, id: &str) -> Result<api::WaitResponse, ShimError>;

    /// Forgets a task that is not running (the OCI runtime's delete).
    async fn delete(&self, id: &str) -> Result<api::DeleteResponse, ShimError>;

    /// Registers an exec process in a task (not started yet).
    async fn exec(&self, req: &api::ExecProcessRequest) -> Result<(), ShimError>;

    /// Starts a registered exec process.
    async fn start_exec(&self, id: &str, exec_id: &str) -> Result<api::StartResponse, ShimError>;

    /// Blocks until an exec process has exited.
    async fn wait_exec(&self, id: &str, exec_id: &str) -> Result<api::WaitResponse, ShimError>;

    /// Signals an exec process.
    async fn kill_exec(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ShimError>;

    /// Forgets an exited (or never started) exec process.
    async fn delete_exec(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse, ShimError>;

    /// Sets the terminal size of a task (empty `exec_id`) or exec process.
    async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), ShimError>;

    /// Closes the stdin of a task (empty `exec_id`) or exec process.
    async fn close_io(&self, id: &str, exec_id: &str, stdin: bool) -> Result<(), ShimError>;

    /// Updates a task's resources and passes `annotations`.
    async fn update(
        &self,
        id: &str,
        resources: Option<Any>,
        annotations: HashMap<String, String>,
    ) -> Result<(), ShimError>;

    /// The processes in a task's container.
    async fn pids(&self, id: &str) -> Result<api::PidsResponse, ShimError>;

    /// A task's cgroup metrics.
    async fn stats(&self, id: &str) -> Result<api::StatsResponse, ShimError>;

    /// Asks the shim to exit (it does once it holds no task).
    async fn shutdown(&self, id: &str) -> Result<(), ShimError>;
}

/// A connection to a shim and the shim's pid (0 when it does not say).
pub type Connected = (Arc<dyn TaskShim>, u32);

/// How shim processes are started, reached and cleaned up after: the shim
/// binaries of the containerd convention (see [`super::processes`]) or an
/// in-memory fake. The [`super::ShimManager`] keeps the records and the
/// per-pod bookkeeping on top.
#[async_trait]
pub trait ShimProcesses: Send + Sync {
    /// The configured shim binary, resolved now (a missing one fails a create
    /// before any work).
    fn binary(&self) -> Result<ShimBinary, ShimError>;

    /// Starts the shim of `sandbox_id` with `cwd` as its working directory;
    /// returns where it listens.
    async fn start(
        &self,
        binary: &ShimBinary,
        sandbox_id: &str,
        cwd: &Path,
    ) -> Result<StartReply, ShimError>;

    /// Connects to a shim and asks who it is (Connect), speaking v2 when a
    /// v3 shim turns out not to serve v3.
    async fn connect(
        &self,
        address: &str,
        api: TaskApi,
        sandbox_id: &str,
    ) -> Result<Connected, ShimError>;

    /// The shim binary's clean-up of a task whose shim is gone (`<shim> ...
    /// -bundle B delete`): force-deletes the container in the runtime.
    async fn cleanup(
        &self,
        binary: &ShimBinary,
        id: &str,
        bundle: &Path,
    ) -> Result<api::DeleteResponse, ShimError>;

    /// Copies what a shim writes to the `log` fifo in `cwd` into berthd's
    /// log (`create`: make the fifo if it is missing, else only follow an
    /// existing one). None when there is no log to follow.
    fn follow_log(
        &self,
        cwd: &Path,
        sandbox_id: &str,
        create: bool,
    ) -> Result<Option<tokio::task::AbortHandle>, ShimError>;

    /// Whether the shim process `pid` still runs.
    fn alive(&self, pid: u32) -> bool;

    /// Kills the shims started for `sandbox_id` that have no record (berthd
    /// died between starting one and recording it); returns how many.
    fn kill_unrecorded(&self, sandbox_id: &str) -> usize;
}
