//! Shared helpers for the CRI `runtime.v1` end-to-end tests: gRPC clients over
//! berthd's Unix socket, a per-test CNI network (unique bridge, subnet and
//! host-local data dir), a berthd started with it and the busybox fixture
//! imported, builders for pod and container configs, CRI log readers, and
//! leak checkers (netns pins, mounts, veths, cgroups, processes).

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use api::image_service_client::ImageServiceClient;
use api::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::daemon::Daemon;

pub use berth_api::runtime::v1 as api;

mod builders;
mod env;
mod leaks;
mod logs;
mod net;
mod queries;

pub use builders::*;
pub use env::*;
pub use leaks::*;
pub use logs::*;
pub use net::*;
pub use queries::*;

pub type Rt = RuntimeServiceClient<Channel>;
pub type Img = ImageServiceClient<Channel>;

/// CNI plugins from Debian's containernetworking-plugins.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";
/// The namespace every test pod is created in.
pub const POD_NAMESPACE: &str = "berth-e2e";
/// Generous deadline for anything asynchronous (a 2-core box shared with others).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Tests here change the host's links, routes and iptables; plugins running
/// at the same time can trip over each other (see tests/cni.rs). Tests that
/// run pods with CNI networking hold this for their whole run.
pub async fn host_network_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A number unique within this process.
pub fn next_seq() -> u32 {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A name unique to this process and call (`<prefix>-<pid>-<seq>`).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), next_seq())
}

/// Unix time in nanoseconds.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------- clients

/// A channel to berthd's gRPC socket.
pub async fn channel(socket: &Path) -> Result<Channel> {
    let path = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("connecting to berthd at {}", socket.display()))
}

/// A CRI RuntimeService client for `d`.
pub async fn runtime_client(d: &Daemon) -> Result<Rt> {
    Ok(RuntimeServiceClient::new(channel(&d.socket_path()).await?))
}

/// A CRI ImageService client for `d`.
pub async fn image_client(d: &Daemon) -> Result<Img> {
    Ok(ImageServiceClient::new(channel(&d.socket_path()).await?))
}

#[cfg(test)]
mod tests;
