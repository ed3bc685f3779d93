//! The single-use tokens of streaming URLs: each stands for one validated
//! Exec, Attach or PortForward request until it is used or expires.
//!
//! At most [`MAX_IN_FLIGHT`] wait at once, as Kubernetes' own streaming
//! request cache (`maxInFlight`): a client asking for URLs it never uses
//! cannot grow the cache without bound within a TTL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_sysutil::lock;

use crate::Pending;

/// Tokens waiting at once (Kubernetes' `maxInFlight`).
pub const MAX_IN_FLIGHT: usize = 1000;

/// Too many URLs handed out and neither used nor expired.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} streaming URLs are waiting to be used (at most {MAX_IN_FLIGHT} at once); \
     try again once some are used or expire"
)]
pub struct TooManyInFlight(pub usize);

pub(crate) struct Tokens {
    map: Mutex<HashMap<String, (Pending, Instant)>>,
    ttl: Duration,
    max: usize,
}

impl Tokens {
    pub(crate) fn new(ttl: Duration) -> Tokens {
        Tokens::with_max(ttl, MAX_IN_FLIGHT)
    }

    fn with_max(ttl: Duration, max: usize) -> Tokens {
        Tokens {
            map: Mutex::new(HashMap::new()),
            ttl,
            max,
        }
    }

    /// A new random token for `p`.
    pub(crate) fn issue(&self, p: Pending) -> Result<String, TooManyInFlight> {
        let token = hex::encode(rand::random::<[u8; 16]>());
        let mut map = lock(&self.map);
        let ttl = self.ttl;
        if map.len() >= self.max {
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= self.max {
                return Err(TooManyInFlight(map.len()));
            }
        }
        map.insert(token.clone(), (p, Instant::now()));
        Ok(token)
    }

    /// Takes a token out (single use); None if unknown or expired.
    pub(crate) fn take(&self, token: &str) -> Option<Pending> {
        let (p, at) = lock(&self.map).remove(token)?;
        (at.elapsed() < self.ttl).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attach(id: &str) -> Pending {
        Pending::Attach {
            container_id: id.into(),
            opts: Default::default(),
        }
    }

    #[test]
    fn a_token_is_used_once_and_the_cache_is_bounded() {
        let t = Tokens::with_max(Duration::from_secs(60), 3);
        let a = t.issue(attach("a")).unwrap();
        let b = t.issue(attach("b")).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.take(&a), Some(attach("a")));
        assert_eq!(t.take(&a), None, "single use");
        t.issue(attach("c")).unwrap();
        t.issue(attach("d")).unwrap();
        let e = t.issue(attach("e")).unwrap_err();
        assert!(
            e.to_string().contains("3 streaming URLs are waiting"),
            "{e}"
        );
        // Using one makes room.
        assert!(t.take(&b).is_some());
        t.issue(attach("e")).unwrap();
    }

    #[test]
    fn expired_tokens_are_refused_and_make_room() {
        let t = Tokens::with_max(Duration::from_millis(50), 2);
        let a = t.issue(attach("a")).unwrap();
        t.issue(attach("b")).unwrap();
        assert!(t.issue(attach("c")).is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.take(&a), None, "expired");
        t.issue(attach("c")).unwrap();
        t.issue(attach("d")).unwrap();
    }
}
