//! Who is at the other end of a TCP connection. On loopback every client has
//! the same address, kubelet's streaming proxy and a local attacker alike, so
//! a local peer is told apart by the uid owning its socket, which the kernel
//! reports through sock_diag (the lookup `ss -e` does): one netlink round
//! trip, no scan of /proc/net/tcp.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// The bucket a connection's bounds are counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    pub ip: IpAddr,
    /// The owner of the peer's socket, when it is on this host.
    pub uid: Option<u32>,
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.uid {
            Some(uid) => write!(f, "{} (uid {uid})", self.ip),
            None => write!(f, "{}", self.ip),
        }
    }
}

impl PeerKey {
    /// The key of a connection accepted on `local` from `peer`: the uid is
    /// looked up for peers on this host (loopback, or the listener's own
    /// address).
    pub fn of(peer: SocketAddr, local: SocketAddr) -> PeerKey {
        let (peer, local) = (canonical(peer), canonical(local));
        let on_host = peer.ip().is_loopback() || peer.ip() == local.ip();
        PeerKey {
            ip: peer.ip(),
            uid: if on_host {
                socket_uid(peer, local)
            } else {
                None
            },
        }
    }
}

/// An IPv4-mapped IPv6 address (a dual-stack listener) as the IPv4 one the
/// client's own socket has.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
/// nlmsghdr (16) + inet_diag_req_v2 (8 + inet_diag_sockid 48).
const REQUEST_LEN: usize = 16 + 8 + 48;
/// Offset of idiag_uid in the reply: nlmsghdr, 4 bytes of family/state/
/// timer/retrans, the 48-byte id, expires, rqueue, wqueue.
const UID_OFFSET: usize = 16 + 4 + 48 + 12;

/// The sock_diag request for the socket whose own end is `sock` and whose
/// other end is `remote`.
fn request(sock: SocketAddr, remote: SocketAddr) -> Option<[u8; REQUEST_LEN]> {
    let family = match (sock.ip(), remote.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
        _ => return None,
    };
    let mut m = [0u8; REQUEST_LEN];
    m[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext, pad, states.
    m[16] = family as u8;
    m[17] = libc::IPPROTO_TCP as u8;
    m[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    // inet_diag_sockid: sport, dport (big endian), src[4], dst[4], if, cookie.
    let id = &mut m[24..];
    id[0..2].copy_from_slice(&sock.port().to_be_bytes());
    id[2..4].copy_from_slice(&remote.port().to_be_bytes());
    let put = |dst: &mut [u8], ip: IpAddr| match ip {
        IpAddr::V4(v4) => dst[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => dst[..16].copy_from_slice(&v6.octets()),
    };
    put(&mut id[4..20], sock.ip());
    put(&mut id[20..36], remote.ip());
    // No cookie: INET_DIAG_NOCOOKIE.
    id[40..48].copy_from_slice(&[0xff; 8]);
    Some(m)
}

/// The uid in a sock_diag reply; None for an error reply (no such socket).
fn reply_uid(reply: &[u8]) -> Option<u32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    // NLMSG_ERROR (2) when there is no such socket.
    if kind != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    Some(u32::from_ne_bytes(
        reply.get(UID_OFFSET..UID_OFFSET + 4)?.try_into().ok()?,
    ))
}

/// The uid owning the client socket of a connection from `peer` to `local`,
/// if that socket is on this host. The kernel answers within the send, so
/// the receive never waits.
fn socket_uid(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let msg = request(peer, local)?;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .ok()?;
    sendto(
        fd.as_raw_fd(),
        &msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .ok()?;
    let mut buf = [0u8; 512];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).ok()?;
    reply_uid(&buf[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_loopback_peer_is_known_by_the_uid_of_its_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let key = PeerKey::of(peer, listener.local_addr().unwrap());
        // Our own sockets belong to our uid (the test's, whoever runs it).
        let me = std::fs::metadata("/proc/self").unwrap().uid();
        assert_eq!(key.uid, Some(me), "{key}");
    }

    #[test]
    fn a_socket_that_is_not_there_has_no_uid() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(PeerKey::of(gone, listener.local_addr().unwrap()).uid, None);
    }

    #[test]
    fn a_remote_peer_is_known_by_its_address_alone() {
        let key = PeerKey::of(
            "192.0.2.7:40000".parse().unwrap(),
            "10.0.0.1:10010".parse().unwrap(),
        );
        assert_eq!(key.uid, None);
        assert_eq!(key.to_string(), "192.0.2.7");
    }
}
