//! Connecting to berthd's gRPC socket.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Result};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::root_cause_message;

/// Largest message we accept; List and Get replies can outgrow tonic's 4 MiB default.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Accepts a bare path or a `unix://` URL, as containerd's clients do.
pub fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

/// Connects eagerly, so a missing or dead daemon is reported before any request.
pub async fn connect(address: &str) -> Result<Channel> {
    let path = socket_path(address);
    let dial = path.clone();
    // The URI is a placeholder: the connector below ignores it and dials the socket.
    // No per-request timeout: a pull or an export may rightly take a long time.
    Endpoint::try_from("http://[::]:50051")?
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let dial = dial.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(dial).await?)) }
        }))
        .await
        .map_err(|e| {
            anyhow!(
                "cannot connect to berthd at {}: {} (is berthd running?)",
                path.display(),
                root_cause_message(&e)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_scheme_is_stripped() {
        assert_eq!(
            socket_path("unix:///run/x.sock"),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(socket_path("/run/x.sock"), PathBuf::from("/run/x.sock"));
        assert_eq!(socket_path("rel.sock"), PathBuf::from("rel.sock"));
    }

    #[tokio::test]
    async fn missing_socket_gives_one_clear_line() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let err = connect(sock.to_str().unwrap()).await.unwrap_err();
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!(
                "cannot connect to berthd at {}: no such file or directory (is berthd running?)",
                sock.display()
            )
        );
    }
}
