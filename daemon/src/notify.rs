//! systemd's readiness protocol (`sd_notify(3)`): with `Type=notify` the
//! unit is started once berthd sends `READY=1`, and `STOPPING=1` tells
//! systemd a shutdown is under way.
//!
//! The socket's address is taken from the environment once, at start, and
//! the variable removed: shims (and runc below them) must not inherit it,
//! or runc would proxy the container's own readiness to berthd's unit.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

static SOCKET: OnceLock<Option<OsString>> = OnceLock::new();

/// Takes `NOTIFY_SOCKET` out of the environment. Call it first thing in
/// `main`, before any thread exists (the environment is not thread-safe).
pub fn take_from_env() {
    let addr = std::env::var_os(NOTIFY_SOCKET);
    if addr.is_some() {
        std::env::remove_var(NOTIFY_SOCKET);
    }
    let _ = SOCKET.set(addr);
}

/// Sends `state` (newline-separated `KEY=value` lines) to the service
/// manager, if berthd runs under one. A failure is logged, never fatal: the
/// daemon serves either way.
pub(crate) fn notify(state: &str) {
    let Some(Some(addr)) = SOCKET.get() else {
        return;
    };
    match send(addr, state) {
        Ok(()) => tracing::debug!(state, "notified the service manager"),
        Err(e) => tracing::warn!(
            socket = %addr.to_string_lossy(),
            state,
            error = %e,
            "cannot notify the service manager"
        ),
    }
}

/// One datagram to a path or, with a leading `@`, an abstract address.
fn send(addr: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    let bytes = addr.as_bytes();
    let to = match bytes.split_first() {
        Some((b'@', name)) => SocketAddr::from_abstract_name(name)?,
        Some((b'/', _)) => SocketAddr::from_pathname(addr)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an abstract address",
            ))
        }
    };
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &to)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the notification was cut short",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        assert_eq!(recv(&listener), "READY=1\nSTATUS=serving");

        let name = format!("berth-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        send(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        assert_eq!(recv(&listener), "STOPPING=1");
    }

    #[test]
    fn a_relative_or_empty_address_is_an_error() {
        for bad in ["", "relative/sock"] {
            let e = send(std::ffi::OsStr::new(bad), "READY=1").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
