//! berthd's event bus: what the daemon does, published where it happens
//! (image pulls and removals, pod and container lifecycle, task exits,
//! shim exits, garbage collection) and streamed to `berthctl events`
//! through `System.Events`, as containerd's `/events` feed `ctr events`.
//!
//! One process-wide bounded channel: publishing never blocks or fails, and
//! a subscriber that falls more than [`CAPACITY`] events behind is told how
//! many it lost instead of holding memory.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use tokio::sync::broadcast;

/// Events a subscriber may fall behind by.
pub(crate) const CAPACITY: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    /// Unix nanoseconds.
    pub timestamp: i64,
    pub topic: &'static str,
    /// The object: an image name, a pod, container or task id.
    pub id: String,
    pub attributes: BTreeMap<String, String>,
}

static BUS: LazyLock<broadcast::Sender<Arc<Event>>> =
    LazyLock::new(|| broadcast::channel(CAPACITY).0);

/// Publishes an event; without subscribers it goes nowhere.
pub(crate) fn publish<'a>(
    topic: &'static str,
    id: &str,
    attributes: impl IntoIterator<Item = (&'a str, String)>,
) {
    if BUS.receiver_count() == 0 {
        return;
    }
    let event = Event {
        timestamp: berth_sysutil::now_nanos(),
        topic,
        id: id.to_string(),
        attributes: attributes
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    };
    tracing::trace!(topic, id, "event");
    let _ = BUS.send(Arc::new(event));
}

pub(crate) fn subscribe() -> broadcast::Receiver<Arc<Event>> {
    BUS.subscribe()
}

/// Whether `topic` is one of `prefixes` (all when there are none).
pub(crate) fn wanted(prefixes: &[String], topic: &str) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| topic.starts_with(p.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_events_in_order_and_lag_is_reported() {
        let mut rx = subscribe();
        publish(
            "/test/a",
            "x1",
            [("k", "v".to_string()), ("empty", String::new())],
        );
        publish("/test/b", "x2", []);
        let a = rx.recv().await.unwrap();
        assert_eq!((a.topic, a.id.as_str()), ("/test/a", "x1"));
        assert_eq!(a.attributes.get("k").map(String::as_str), Some("v"));
        assert!(
            !a.attributes.contains_key("empty"),
            "empty values are left out"
        );
        assert_eq!(rx.recv().await.unwrap().topic, "/test/b");
        // Other tests may publish too: fill well past the capacity.
        for i in 0..(CAPACITY + 10) {
            publish("/test/flood", &i.to_string(), []);
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(n)) if n >= 10
        ));
    }

    #[test]
    fn topic_filters() {
        assert!(wanted(&[], "/pods/start"));
        let f = vec!["/pods/".to_string(), "/gc".to_string()];
        assert!(wanted(&f, "/pods/start"));
        assert!(wanted(&f, "/gc/run"));
        assert!(!wanted(&f, "/images/pull"));
    }
}
