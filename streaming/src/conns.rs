//! Admission of the streaming server's TCP connections (issue 14): the
//! server listens on a port any local user can reach, and a connection costs
//! an fd and a task, so both are bounded.
//!
//! A connection is *pending* from accept until it presents a valid token
//! (exec, attach or port-forward URL from a CRI call, which only a CRI
//! client can get) and *active* after. Pending connections are bounded per
//! peer (an address, and for a client on this host the uid owning its
//! socket: see `peer`) and, with the active ones, in total; they also have
//! a deadline (see the server). When a bound is reached, a pending
//! connection is closed to make room: the peer's own oldest one, or for the
//! total the oldest one of the peer holding the most. A flood then only
//! ever closes the flooder's own connections, never a client that sends its
//! request at once, and active sessions are never closed for a newcomer.
//! With no pending connection to close, the newcomer is refused.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::peer::PeerKey;

/// The bounds, from `[streaming]` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections at once, pending and active.
    pub max_connections: usize,
    /// Pending connections at once from one peer address.
    pub max_pending_per_peer: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` active sessions: nothing to close for it.
    Full,
}

struct Entry {
    /// Set while pending: firing it closes the connection.
    evict: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct State {
    next: u64,
    live: HashMap<u64, Entry>,
    /// Pending connections, oldest first (ids grow with time).
    pending: BTreeMap<u64, PeerKey>,
    pending_by_peer: HashMap<PeerKey, BTreeSet<u64>>,
    /// Connections closed or refused to make room, for the log.
    evicted: u64,
    refused: u64,
}

impl State {
    fn unpend(&mut self, id: u64) {
        if let Some(peer) = self.pending.remove(&id) {
            if let Some(set) = self.pending_by_peer.get_mut(&peer) {
                set.remove(&id);
                if set.is_empty() {
                    self.pending_by_peer.remove(&peer);
                }
            }
        }
    }

    /// Closes pending connection `id`; its slot is free at once, whatever
    /// its task is doing.
    fn evict(&mut self, id: u64) {
        self.unpend(id);
        if let Some(e) = self.live.remove(&id) {
            if let Some(tx) = e.evict {
                let _ = tx.send(());
            }
        }
        self.evicted += 1;
    }
}

/// The admission state of one listener.
pub struct Conns {
    limits: ConnLimits,
    state: Mutex<State>,
}

/// A counts snapshot, for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnCounts {
    pub live: usize,
    pub pending: usize,
    pub evicted: u64,
    pub refused: u64,
}

impl Conns {
    pub fn new(limits: ConnLimits) -> Arc<Conns> {
        Arc::new(Conns {
            limits: ConnLimits {
                max_connections: limits.max_connections.max(1),
                max_pending_per_peer: limits.max_pending_per_peer.max(1),
            },
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `peer`, closing a pending one if a bound
    /// is reached. The returned receiver fires if this
    /// connection is itself closed for a newer one while still pending.
    pub fn admit(
        self: &Arc<Self>,
        peer: PeerKey,
    ) -> Result<(ConnSlot, oneshot::Receiver<()>), Refused> {
        let mut st = self.lock();
        let oldest_of_peer = st
            .pending_by_peer
            .get(&peer)
            .filter(|s| s.len() >= self.limits.max_pending_per_peer)
            .and_then(|s| s.first().copied());
        if let Some(id) = oldest_of_peer {
            st.evict(id);
        }
        if st.live.len() >= self.limits.max_connections {
            let oldest_of_most = st
                .pending_by_peer
                .values()
                .max_by_key(|s| s.len())
                .and_then(|s| s.first().copied());
            match oldest_of_most {
                Some(id) => st.evict(id),
                None => {
                    st.refused += 1;
                    return Err(Refused::Full);
                }
            }
        }
        let id = st.next;
        st.next += 1;
        let (tx, rx) = oneshot::channel();
        st.live.insert(id, Entry { evict: Some(tx) });
        st.pending.insert(id, peer);
        st.pending_by_peer.entry(peer).or_default().insert(id);
        Ok((
            ConnSlot {
                conns: self.clone(),
                id,
            },
            rx,
        ))
    }

    pub fn counts(&self) -> ConnCounts {
        let st = self.lock();
        ConnCounts {
            live: st.live.len(),
            pending: st.pending.len(),
            evicted: st.evicted,
            refused: st.refused,
        }
    }

    pub fn limits(&self) -> ConnLimits {
        self.limits
    }
}

/// One admitted connection; its slot is freed when the last clone of the
/// slot goes (the connection task and, once upgraded, the session).
pub struct ConnSlot {
    conns: Arc<Conns>,
    id: u64,
}

impl ConnSlot {
    /// The connection presented a valid token: it is no longer closed to
    /// make room, and no longer counts against its peer's pending bound.
    /// False if it was closed for a newer one just before.
    pub fn activate(&self) -> bool {
        let mut st = self.conns.lock();
        st.unpend(self.id);
        match st.live.get_mut(&self.id) {
            Some(e) => {
                e.evict = None;
                true
            }
            None => false,
        }
    }

    /// Still waiting for a valid request.
    pub fn is_pending(&self) -> bool {
        self.conns.lock().pending.contains_key(&self.id)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut st = self.conns.lock();
        st.unpend(self.id);
        st.live.remove(&self.id);
    }
}

impl std::fmt::Debug for ConnSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnSlot").field("id", &self.id).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> PeerKey {
        PeerKey {
            ip: std::net::IpAddr::from([127, 0, 0, last]),
            uid: None,
        }
    }

    fn conns(total: usize, per_peer: usize) -> Arc<Conns> {
        Conns::new(ConnLimits {
            max_connections: total,
            max_pending_per_peer: per_peer,
        })
    }

    #[test]
    fn a_peer_over_its_bound_loses_its_oldest_pending_connection() {
        let c = conns(100, 2);
        let (a, mut a_rx) = c.admit(ip(1)).unwrap();
        let (_b, mut b_rx) = c.admit(ip(1)).unwrap();
        let (_other, _) = c.admit(ip(2)).unwrap();
        let (_d, _) = c.admit(ip(1)).unwrap();
        assert!(a_rx.try_recv().is_ok(), "the oldest of that peer is closed");
        assert!(b_rx.try_recv().is_err());
        assert!(!a.is_pending());
        assert!(!a.activate(), "a closed connection cannot become active");
        let n = c.counts();
        assert_eq!((n.live, n.pending, n.evicted), (3, 3, 1));
        drop(a);
        assert_eq!(c.counts().live, 3, "the evicted slot was freed once");
    }

    #[test]
    fn the_total_bound_closes_a_pending_one_of_the_biggest_peer_never_an_active_one() {
        let c = conns(4, 10);
        let (active, mut active_rx) = c.admit(ip(1)).unwrap();
        assert!(active.activate());
        let (_lone, mut lone_rx) = c.admit(ip(2)).unwrap();
        let (_f1, mut f1_rx) = c.admit(ip(3)).unwrap();
        let (_f2, mut f2_rx) = c.admit(ip(3)).unwrap();
        let (_new, _) = c.admit(ip(4)).unwrap();
        assert!(f1_rx.try_recv().is_ok(), "the flooder's oldest goes");
        assert!(f2_rx.try_recv().is_err());
        assert!(lone_rx.try_recv().is_err(), "older, but its peer holds one");
        assert!(active_rx.try_recv().is_err());
        assert_eq!(c.counts().live, 4);
    }

    #[test]
    fn a_local_user_is_its_own_peer_on_loopback() {
        let c = conns(1000, 2);
        let user = |uid| PeerKey {
            uid: Some(uid),
            ..ip(1)
        };
        let (_kubelet, mut kubelet_rx) = c.admit(user(0)).unwrap();
        let flood: Vec<_> = (0..100).map(|_| c.admit(user(65534)).unwrap()).collect();
        assert!(kubelet_rx.try_recv().is_err());
        assert_eq!(c.counts().pending, 3);
        assert_eq!(c.counts().evicted, 98);
        drop(flood);
    }

    #[test]
    fn with_only_active_sessions_a_newcomer_is_refused_until_one_ends() {
        let c = conns(2, 10);
        let slots: Vec<_> = (0..2)
            .map(|i| {
                let (s, _) = c.admit(ip(i)).unwrap();
                assert!(s.activate());
                s
            })
            .collect();
        assert_eq!(c.admit(ip(9)).unwrap_err(), Refused::Full);
        assert_eq!(c.counts().refused, 1);
        drop(slots);
        assert!(c.admit(ip(9)).is_ok());
    }

    #[test]
    fn a_slot_shared_with_its_session_is_freed_by_the_last_holder() {
        let c = conns(10, 10);
        let (slot, _) = c.admit(ip(1)).unwrap();
        let slot = Arc::new(slot);
        assert!(slot.activate());
        let session = slot.clone();
        drop(slot);
        assert_eq!(c.counts().live, 1);
        drop(session);
        assert_eq!(
            c.counts(),
            ConnCounts {
                live: 0,
                pending: 0,
                evicted: 0,
                refused: 0
            }
        );
    }
}
