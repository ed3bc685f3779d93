//! A client for the shim task API over ttrpc that speaks both versions of it.
//!
//! `containerd.task.v2.Task` (containerd 1.x shims, e.g. Debian's
//! `containerd-shim-runc-v2`) and `containerd.task.v3.Task` (containerd 2.x)
//! carry identical messages; only the service name differs. The generated
//! clients of `containerd-shim-protos` hard-code v3, so requests are built here
//! with ttrpc's low-level client: service name, method name and the
//! protobuf-encoded v3 message.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Enum, Message};
use ttrpc::asynchronous::transport::Socket;
use ttrpc::asynchronous::Client;
use ttrpc::proto::KeyValue;

use super::connection::TaskShim;

/// The ttrpc metadata key containerd puts the namespace in.
const NAMESPACE_HEADER: &str = "containerd-namespace-ttrpc";

/// Which version of the task service a shim serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TaskApi {
    V2,
    V3,
}

impl TaskApi {
    pub fn service(self) -> &'static str {
        match self {
            TaskApi::V2 => "containerd.task.v2.Task",
            TaskApi::V3 => "containerd.task.v3.Task",
        }
    }

    pub fn number(self) -> u32 {
        match self {
            TaskApi::V2 => 2,
            TaskApi::V3 => 3,
        }
    }

    pub fn from_number(n: u32) -> Option<TaskApi> {
        match n {
            2 => Some(TaskApi::V2),
            3 => Some(TaskApi::V3),
            _ => None,
        }
    }
}

impl fmt::Display for TaskApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.service())
    }
}

/// ttrpc status codes berth tells apart (the numbers are gRPC's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcCode {
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Unimplemented,
    InvalidArgument,
    DeadlineExceeded,
    Unavailable,
    Other(i32),
}

impl RpcCode {
    fn from_i32(c: i32) -> RpcCode {
        match c {
            3 => RpcCode::InvalidArgument,
            4 => RpcCode::DeadlineExceeded,
            5 => RpcCode::NotFound,
            6 => RpcCode::AlreadyExists,
            9 => RpcCode::FailedPrecondition,
            12 => RpcCode::Unimplemented,
            14 => RpcCode::Unavailable,
            other => RpcCode::Other(other),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The shim answered with an error status.
    #[error("shim {method}: {message}")]
    Rpc {
        method: &'static str,
        code: RpcCode,
        message: String,
    },
    /// The connection failed or closed: the shim is gone or going.
    #[error("shim {method}: connection lost: {message}")]
    Transport {
        method: &'static str,
        message: String,
    },
    #[error("shim {method}: no reply within {}s", timeout.as_secs())]
    Timeout {
        method: &'static str,
        timeout: Duration,
    },
    #[error("connecting to the shim at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("shim {method}: {message}")]
    Protocol {
        method: &'static str,
        message: String,
    },
    /// Starting or deleting a shim process failed.
    #[error("{0}")]
    Binary(String),
}

impl ShimError {
    pub fn code(&self) -> Option<RpcCode> {
        match self {
            ShimError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(RpcCode::NotFound)
    }

    /// The shim cannot be reached (any more): the caller should check whether
    /// it died.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            ShimError::Transport { .. } | ShimError::Connect { .. }
        )
    }
}

/// Turns what a shim's `start` printed into a dialable address: ttrpc's
/// `unix://` form, with `@name` for an abstract socket.
pub fn normalize_address(address: &str) -> String {
    let a = address.trim();
    let rest = a.strip_prefix("unix://").unwrap_or(a);
    // Go shims of old wrote abstract sockets as a leading NUL.
    let rest = match rest.strip_prefix('\0') {
        Some(name) => format!("@{name}"),
        None => rest.to_string(),
    };
    format!("unix://{rest}")
}

/// The filesystem path of a path-based unix socket address (None for an
/// abstract one).
pub fn socket_path(address: &str) -> Option<std::path::PathBuf> {
    let n = normalize_address(address);
    let rest = n.strip_prefix("unix://")?;
    if rest.starts_with('@') || rest.is_empty() {
        None
    } else {
        Some(std::path::PathBuf::from(rest))
    }
}

/// Dials a unix socket address (path or abstract) without blocking the
/// async workers.
async fn dial(
    address: &str,
    timeout: Duration,
) -> Result<std::os::unix::net::UnixStream, ShimError> {
    let addr = normalize_address(address);
    let err = |source| ShimError::Connect {
        address: address.to_string(),
        source,
    };
    let target = addr.strip_prefix("unix://").unwrap_or(&addr).to_string();
    let join = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        use std::os::unix::net::{SocketAddr, UnixStream};
        let sa = match target.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(&target)?,
        };
        UnixStream::connect_addr(&sa)
    });
    match tokio::time::timeout(timeout, join).await {
        Ok(Ok(Ok(stream))) => Ok(stream),
        Ok(Ok(Err(e))) => Err(err(e)),
        Ok(Err(e)) => Err(err(std::io::Error::other(e.to_string()))),
        Err(_) => Err(err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ))),
    }
}

/// One ttrpc connection to a shim, speaking one version of the task API.
#[derive(Clone)]
pub struct TaskClient {
    client: Client,
    api: TaskApi,
    namespace: String,
    timeout: Duration,
    address: String,
}

impl fmt::Debug for TaskClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskClient")
            .field("address", &self.address)
            .field("api", &self.api)
            .finish()
    }
}

impl TaskClient {
    /// Connects to `address`. `timeout` bounds the connect and every call
    /// but Wait.
    pub async fn connect(
        address: &str,
        api: TaskApi,
        namespace: &str,
        timeout: Duration,
    ) -> Result<TaskClient, ShimError> {
        let stream = dial(address, timeout).await?;
        let socket = Socket::try_from(stream).map_err(|source| ShimError::Connect {
            address: address.to_string(),
            source,
        })?;
        Ok(TaskClient {
            client: Client::new(socket),
            api,
            namespace: namespace.to_string(),
            timeout,
            address: normalize_address(address),
        })
    }

    /// The same connection, speaking another version of the API.
    pub fn with_api(&self, api: TaskApi) -> TaskClient {
        TaskClient {
            api,
            ..self.clone()
        }
    }

    async fn call<Req: Message, Resp: Message>(
        &self,
        method: &'static str,
        req: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, ShimError> {
        let payload = req.write_to_bytes().map_err(|e| ShimError::Protocol {
            method,
            message: format!("encoding the request: {e}"),
        })?;
        let mut request = ttrpc::Request::new();
        request.set_service(self.api.service().to_string());
        request.set_method(method.to_string());
        request.payload = payload;
        if let Some(t) = timeout {
            request.set_timeout_nano(t.as_nanos().min(i64::MAX as u128) as i64);
        }
        let mut ns = KeyValue::new();
        ns.set_key(NAMESPACE_HEADER.to_string());
        ns.set_value(self.namespace.clone());
        request.metadata.push(ns);

        let fut = self.client.request(request);
        let result = match timeout {
            // A little slack past the deadline the shim was told about.
            Some(t) => match tokio::time::timeout(t + Duration::from_secs(1), fut).await {
                Ok(r) => r,
                Err(_) => return Err(ShimError::Timeout { method, timeout: t }),
            },
            None => fut.await,
        };
        let response = result.map_err(|e| map_ttrpc_error(method, e, timeout))?;
        Resp::parse_from_bytes(&response.payload).map_err(|e| ShimError::Protocol {
            method,
            message: format!("decoding the reply: {e}"),
        })
    }
}

#[async_trait]
impl TaskShim for TaskClient {
    fn api(&self) -> TaskApi {
        self.api
    }

    async fn connect_info(&self, id: &str) -> Result<api::ConnectResponse, ShimError> {
        let req = api::ConnectRequest {
            id: id.to_string(),
            ..Default::default()
        };
        self.call("Connect", &req, Some(self.timeout)).await
    }

    async fn create(
        &self,
        req: &api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse, ShimError> {
        // Create runs the OCI runtime's create: allow it more time.
        self.call("Create", req, Some(self.timeout * 3)).await
    }

    async fn start(&self, id: &str) -> Result<api::StartResponse, ShimError> {
        let req = api::StartRequest {
            id: id.to_string(),
            ..Default::default()
        };
        self.call("Start", &req, Some(self.timeout * 3)).await
    }

    async fn state(&self, id: &str) -> Result<api::StateResponse, ShimError> {
        let req = api::StateRequest {
            id: id.to_string(),
            ..Default::default()
        };
        self.call("State", &req, Some(self.timeout)).await
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), ShimError> {
        let req = api::KillRequest {
            id: id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        let _: api::Empty = self.call("Kill", &req, Some(self.timeout)).await?;
        Ok(())
    }

    /// Blocks until the task's init process has exited; returns at once for
    /// one that already has.
    async fn wait(&self, id: &str) -> Result<api::WaitResponse, ShimError> {
        let req = api::WaitRequest {
            id: id.to_string(),
            ..Default::default()
        };
        self.call("Wait", &req, None).await
    }

    async fn delete(&self, id: &str) -> Result<api::DeleteResponse, ShimError> {
        let req = api::DeleteRequest {
            id: id.to_string(),
            ..Default::default()
        };
        self.call("Delete", &req, Some(self.timeout * 3)).await
    }

    /// Registers an exec process in a task (not started yet).
    async fn exec(&self, req: &api::ExecProcessRequest) -> Result<(), ShimError> {
        let _: api::Empty = self.call("Exec", req, Some(self.timeout)).await?;
        Ok(())
    }

    /// Starts a registered exec process: the OCI runtime's exec, so it gets
    /// Create's allowance. A command the runtime cannot run fails here.
    async fn start_exec(&self, id: &str, exec_id: &str) -> Result<api::StartResponse, ShimError> {
        let req = api::StartRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.call("Start", &req, Some(self.timeout * 3)).await
    }

    /// Blocks until an exec process has exited. No deadline is sent: berth-shim
    /// kills an exec whose Wait deadline passes, and how long a command may
    /// run is the caller's decision.
    async fn wait_exec(&self, id: &str, exec_id: &str) -> Result<api::WaitResponse, ShimError> {
        let req = api::WaitRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.call("Wait", &req, None).await
    }

    /// Signals an exec process (`all` is meaningful for a task's init only).
    async fn kill_exec(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ShimError> {
        let req = api::KillRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        let _: api::Empty = self.call("Kill", &req, Some(self.timeout)).await?;
        Ok(())
    }

    /// Forgets an exited (or never started) exec process. Shims wait for its
    /// output to drain first (up to a couple of seconds), hence the allowance.
    async fn delete_exec(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse, ShimError> {
        let req = api::DeleteRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.call("Delete", &req, Some(self.timeout * 3)).await
    }

    /// Sets the terminal size of a task (empty `exec_id`) or exec process.
    async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), ShimError> {
        let req = api::ResizePtyRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            width,
            height,
            ..Default::default()
        };
        let _: api::Empty = self.call("ResizePty", &req, Some(self.timeout)).await?;
        Ok(())
    }

    /// Closes the stdin of a task (empty `exec_id`) or exec process, so it
    /// reads EOF.
    async fn close_io(&self, id: &str, exec_id: &str, stdin: bool) -> Result<(), ShimError> {
        let req = api::CloseIORequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin,
            ..Default::default()
        };
        let _: api::Empty = self.call("CloseIO", &req, Some(self.timeout)).await?;
        Ok(())
    }

    /// Updates a task's resources (`LinuxResources` as JSON in an `Any`, as
    /// containerd sends it; None changes none) and passes `annotations`
    /// (berth-shim reopens the task's CRI logs for
    /// `io.berth.shim.reopen-log`). Runs the OCI runtime's update.
    async fn update(
        &self,
        id: &str,
        resources: Option<Any>,
        annotations: HashMap<String, String>,
    ) -> Result<(), ShimError> {
        let req = api::UpdateTaskRequest {
            id: id.to_string(),
            resources: resources.into(),
            annotations,
            ..Default::default()
        };
        let _: api::Empty = self.call("Update", &req, Some(self.timeout * 3)).await?;
        Ok(())
    }

    /// The processes in a task's container (the OCI runtime's `ps`), with
    /// the exec id of those that are exec processes.
    async fn pids(&self, id: &str) -> Result<api::PidsResponse, ShimError> {
        let req = api::PidsRequest {
            id: id.to_string(),
            ..Default::default()
        };
        self.call("Pids", &req, Some(self.timeout * 3)).await
    }

    /// A task's cgroup metrics, as an `Any` holding
    /// `io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`.
    async fn stats(&self, id: &str) -> Result<api::StatsResponse, ShimError> {
        let req = api::StatsRequest {
            id: id.to_string(),
            ..Default::default()
        };
        self.call("Stats", &req, Some(self.timeout)).await
    }

    async fn shutdown(&self, id: &str) -> Result<(), ShimError> {
        let req = api::ShutdownRequest {
            id: id.to_string(),
            ..Default::default()
        };
        match self
            .call::<_, api::Empty>("Shutdown", &req, Some(self.timeout))
            .await
        {
            Ok(_) => Ok(()),
            // A shim may exit before its reply gets out.
            Err(e) if e.is_connection() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn map_ttrpc_error(method: &'static str, e: ttrpc::Error, timeout: Option<Duration>) -> ShimError {
    match e {
        ttrpc::Error::RpcStatus(status) => ShimError::Rpc {
            method,
            code: RpcCode::from_i32(status.code().value()),
            message: status.message().to_string(),
        },
        ttrpc::Error::Others(m) if m.contains("deadline") => ShimError::Timeout {
            method,
            timeout: timeout.unwrap_or_default(),
        },
        ttrpc::Error::Socket(m) | ttrpc::Error::Others(m) => {
            ShimError::Transport { method, message: m }
        }
        other => ShimError::Transport {
            method,
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_normalise() {
        assert_eq!(
            normalize_address("unix:///run/x/s/ab\n"),
            "unix:///run/x/s/ab"
        );
        assert_eq!(normalize_address("/run/x/s/ab"), "unix:///run/x/s/ab");
        assert_eq!(normalize_address("unix://@shim"), "unix://@shim");
        assert_eq!(normalize_address("@shim"), "unix://@shim");
        assert_eq!(normalize_address("unix://\0shim"), "unix://@shim");
        assert_eq!(
            socket_path("unix:///run/x/s/ab"),
            Some(std::path::PathBuf::from("/run/x/s/ab"))
        );
        assert_eq!(socket_path("unix://@shim"), None);
    }

    #[test]
    fn api_versions() {
        assert_eq!(TaskApi::V2.service(), "containerd.task.v2.Task");
        assert_eq!(TaskApi::from_number(3), Some(TaskApi::V3));
        assert_eq!(TaskApi::from_number(1), None);
    }

    #[tokio::test]
    async fn dead_socket_is_a_connection_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("none.sock");
        let err = TaskClient::connect(
            p.to_str().unwrap(),
            TaskApi::V2,
            "berth",
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(err.is_connection(), "{err}");
    }
}
