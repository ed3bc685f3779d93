// STUB
use super::*;
pub const REMOTE_COMMAND_PROTOCOLS: &[&str] = &["v4.channel.k8s.io"];
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct SpdyError;
pub async fn remote_command<
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
>(
    _io: IO,
    _p: &str,
    _o: StreamOpts,
    _l: Limits,
) -> Result<CommandIo, SpdyError> {
    todo!()
}
pub async fn port_forward<
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
>(
    _io: IO,
    _c: PortConnector,
    _l: Limits,
) -> Result<(), SpdyError> {
    todo!()
}
