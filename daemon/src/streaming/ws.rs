// STUB
use super::*;
pub const REMOTE_COMMAND_PROTOCOLS: &[&str] = &["v5.channel.k8s.io"];
pub const PORT_FORWARD_PROTOCOLS: &[&str] = &["v4.channel.k8s.io"];
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct WsError;
pub fn accept_key(_k: &str) -> String {
    todo!()
}
pub async fn remote_command<
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
>(
    _io: IO,
    _p: &str,
    _o: StreamOpts,
    _l: Limits,
) -> Result<CommandIo, WsError> {
    todo!()
}
pub async fn port_forward<
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
>(
    _io: IO,
    _p: &str,
    _ports: Vec<u16>,
    _c: PortConnector,
    _l: Limits,
) -> Result<(), WsError> {
    todo!()
}
