//! Bounds on what a CRI request may carry (issue 14): a pod or container that
//! is accepted must never make a later reply (ListPodSandbox, ListContainers)
//! larger than what kubelet and crictl accept (16 MiB), and an error never
//! echoes an unbounded string back.
//!
//! The limits follow Kubernetes' own validation where it has one: names are
//! DNS subdomains (253 bytes) or labels (63), a label key is at most 253 + 1 +
//! 63 bytes, and all of an object's annotations together at most 256 KiB
//! (`TotalAnnotationSizeLimitB`). Label values get more room than Kubernetes'
//! 63 bytes because kubelet itself puts the pod's name (253) in a label.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use berth_api::runtime::v1 as cri;

use super::error::{CriError, Result};

/// metadata.name of a pod (a DNS subdomain in Kubernetes).
pub const MAX_POD_NAME: usize = 253;
/// metadata.namespace (a DNS label).
pub const MAX_NAMESPACE: usize = 63;
/// metadata.uid (a UUID in Kubernetes; room for other clients' ids).
pub const MAX_UID: usize = 128;
/// metadata.name of a container (a DNS label in Kubernetes; room for
/// clients that add a suffix).
pub const MAX_CONTAINER_NAME: usize = 253;
/// A label key: an optional DNS-subdomain prefix, '/', a 63-byte name.
pub const MAX_LABEL_KEY: usize = 253 + 1 + 63;
/// A label value.
pub const MAX_LABEL_VALUE: usize = 1024;
/// Room for what a listed object carries besides its metadata, labels and
/// annotations (id, state, timestamps, image, handler).
const LIST_ITEM_OVERHEAD: usize = 512;
pub use berth_sysutil::echo;

fn too_long(what: &str, field: &str, value: &str, max: usize) -> CriError {
    CriError::invalid(
        what,
        format!("{field} {} is longer than {max} bytes", echo(value)),
    )
}

/// A metadata field: not longer than `max`.
pub fn field(what: &str, field: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(too_long(what, field, value, max));
    }
    Ok(())
}

/// All of a map's keys and values together at most `max`.
fn map_total(
    what: &str,
    kind: &str,
    map: &HashMap<String, String>,
    max: usize,
    key: &str,
) -> Result<()> {
    let total: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > max {
        return Err(CriError::invalid(
            what,
            format!(
                "its {} {kind} take {total} bytes, more than {max} ([cri] {key})",
                map.len()
            ),
        ));
    }
    Ok(())
}

/// Labels: each key and value bounded, all of them together at most `max`.
pub fn labels(what: &str, labels: &HashMap<String, String>, max: usize) -> Result<()> {
    for (k, v) in labels {
        field(what, "label key", k, MAX_LABEL_KEY)?;
        if v.len() > MAX_LABEL_VALUE {
            return Err(too_long(
                what,
                &format!("label {}", echo(k)),
                v,
                MAX_LABEL_VALUE,
            ));
        }
    }
    map_total(what, "labels", labels, max, "max_labels_bytes")
}

/// Annotations: all of them together at most `max` (Kubernetes' limit by
/// default).
pub fn annotations(what: &str, annotations: &HashMap<String, String>, max: usize) -> Result<()> {
    map_total(
        what,
        "annotations",
        annotations,
        max,
        "max_annotations_bytes",
    )
}

/// Nameservers of a pod (Kubernetes' `MaxDNSNameservers`; the resolver reads
/// no more).
pub const MAX_DNS_SERVERS: usize = 3;
/// Search domains (`MaxDNSSearchPaths`) and their total length
/// (`MaxDNSSearchListChars`), as kubelet trims them.
pub const MAX_DNS_SEARCHES: usize = 32;
pub const MAX_DNS_SEARCH_CHARS: usize = 2048;
/// resolv.conf options (Kubernetes has no limit: far more than any real use).
pub const MAX_DNS_OPTIONS: usize = 256;

/// A pod's DNS config within what kubelet itself ever sends (it trims to
/// these limits) and what the resolver reads. (Each entry's syntax is checked
/// where resolv.conf is written.)
pub fn dns(what: &str, dns: &cri::DnsConfig) -> Result<()> {
    let count = |field: &str, n: usize, max: usize| -> Result<()> {
        if n > max {
            return Err(CriError::invalid(
                what,
                format!("dns_config.{field} has {n} entries, more than {max}"),
            ));
        }
        Ok(())
    };
    count("servers", dns.servers.len(), MAX_DNS_SERVERS)?;
    count("searches", dns.searches.len(), MAX_DNS_SEARCHES)?;
    count("options", dns.options.len(), MAX_DNS_OPTIONS)?;
    // resolv.conf's search line: the domains and a space between each.
    let chars = dns.searches.iter().map(|s| s.len() + 1).sum::<usize>();
    if chars > MAX_DNS_SEARCH_CHARS + 1 {
        return Err(CriError::invalid(
            what,
            format!(
                "dns_config.searches take {} characters, more than {MAX_DNS_SEARCH_CHARS}",
                chars - 1
            ),
        ));
    }
    Ok(())
}

/// What one more object adds to a list reply: its metadata, labels and
/// annotations as encoded (each map entry is a nested message: a few bytes
/// of framing over its key and value), and the rest of the item.
pub fn list_item_bytes(
    metadata: usize,
    labels: &HashMap<String, String>,
    annotations: &HashMap<String, String>,
) -> usize {
    let entries = |m: &HashMap<String, String>| -> usize {
        m.iter().map(|(k, v)| k.len() + v.len() + 12).sum()
    };
    metadata + entries(labels) + entries(annotations) + LIST_ITEM_OVERHEAD
}

/// Refuses an object that would make a list reply (`listing` bytes today,
/// `pending` more for objects still being made, `adding` more with it)
/// larger than `max`: kubelet could never list again.
pub fn list_budget(
    what: &str,
    list: &str,
    listing: usize,
    pending: usize,
    adding: usize,
    max: usize,
) -> Result<()> {
    let total = listing + pending + adding;
    if total > max {
        let others = if pending > 0 {
            format!(" (with {pending} bytes of objects still being made)")
        } else {
            String::new()
        };
        return Err(CriError::resource_exhausted(
            what,
            format!(
                "its labels and annotations ({adding} bytes) would make {list} {total} bytes{others}, \
                 more than {max} ([cri] max_list_bytes; kubelet refuses replies over 16 MiB): \
                 remove objects or make their labels and annotations smaller",
            ),
        ));
    }
    Ok(())
}

/// The list-reply bytes of objects whose create is under way and that may
/// not be listed yet: each create holds its share until it ends, so creates
/// that run at once cannot together pass the budget that each passes alone.
#[derive(Default)]
pub struct PendingListBytes(Arc<AtomicUsize>);

/// One create's share of [`PendingListBytes`], given back on drop (by then
/// the object is listed, or was never made).
#[must_use]
#[derive(Debug)]
pub struct ListHold {
    pending: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for ListHold {
    fn drop(&mut self) {
        self.pending.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

impl PendingListBytes {
    /// Takes `adding` bytes, then checks `listing()` plus every create's
    /// share against `max`. The share is taken before the listing is read:
    /// of two creates at once, the later one always counts the earlier (a
    /// create's object is listed before its share is given back).
    pub fn reserve(
        &self,
        what: &str,
        list: &str,
        listing: impl FnOnce() -> usize,
        adding: usize,
        max: usize,
    ) -> Result<ListHold> {
        self.0.fetch_add(adding, Ordering::SeqCst);
        let hold = ListHold {
            pending: self.0.clone(),
            bytes: adding,
        };
        let pending = self.0.load(Ordering::SeqCst).saturating_sub(adding);
        list_budget(what, list, listing(), pending, adding, max)?;
        Ok(hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MAX_ANNOTATIONS_TOTAL, MAX_LABELS_TOTAL};

    #[test]
    fn labels_and_annotations() {
        let mut l = HashMap::from([("app".to_string(), "web".to_string())]);
        assert!(labels("pod p", &l, MAX_LABELS_TOTAL).is_ok());
        l.insert("k".repeat(MAX_LABEL_KEY + 1), String::new());
        let e = labels("pod p", &l, MAX_LABELS_TOTAL).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().len() < 400, "{e}");
        let many: HashMap<String, String> = (0..20_000)
            .map(|i| (format!("k{i}"), "v".repeat(10)))
            .collect();
        assert!(labels("pod p", &many, MAX_LABELS_TOTAL)
            .unwrap_err()
            .to_string()
            .contains("20000 labels"));
        let big = HashMap::from([("a".to_string(), "x".repeat(MAX_ANNOTATIONS_TOTAL))]);
        assert!(annotations("pod p", &big, MAX_ANNOTATIONS_TOTAL).is_err());
        let ok = HashMap::from([("a".to_string(), "x".repeat(MAX_ANNOTATIONS_TOTAL - 1))]);
        assert!(annotations("pod p", &ok, MAX_ANNOTATIONS_TOTAL).is_ok());
    }

    #[test]
    fn the_list_budget_refuses_what_would_overflow_a_listing() {
        let a = HashMap::from([("a".to_string(), "x".repeat(1000))]);
        let adding = list_item_bytes(100, &HashMap::new(), &a);
        assert!(adding > 1100);
        assert!(list_budget("pod p", "ListPodSandbox", 0, 0, adding, 4096).is_ok());
        let e = list_budget("pod p", "ListPodSandbox", 3500, 0, adding, 4096).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.to_string().contains("max_list_bytes"), "{e}");
        let e = list_budget("pod p", "ListPodSandbox", 0, 3500, adding, 4096).unwrap_err();
        assert!(e.to_string().contains("still being made"), "{e}");
    }

    #[test]
    fn dns_configs_stay_within_what_kubelet_sends() {
        let ok = cri::DnsConfig {
            servers: vec!["10.0.0.10".into(); 3],
            searches: vec!["svc.cluster.local".into(); 32],
            options: vec!["ndots:5".into()],
        };
        assert!(dns("pod p", &ok).is_ok());
        let mut d = ok.clone();
        d.servers.push("10.0.0.11".into());
        let e = dns("pod p", &d).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.to_string().contains("servers has 4 entries, more than 3"),
            "{e}"
        );
        let mut d = ok.clone();
        d.searches.push("x".into());
        assert!(dns("pod p", &d)
            .unwrap_err()
            .to_string()
            .contains("more than 32"));
        let d = cri::DnsConfig {
            searches: vec!["a".repeat(1000); 3],
            ..Default::default()
        };
        let e = dns("pod p", &d).unwrap_err();
        assert!(
            e.to_string().contains("3002 characters, more than 2048"),
            "{e}"
        );
        let d = cri::DnsConfig {
            options: vec!["ndots:1".into(); 100_000],
            ..Default::default()
        };
        assert!(dns("pod p", &d).is_err());
    }

    #[test]
    fn creates_under_way_count_against_the_budget_until_they_end() {
        let pending = PendingListBytes::default();
        let listed = std::cell::Cell::new(0usize);
        let first = pending
            .reserve("pod a", "L", || listed.get(), 600, 1000)
            .unwrap();
        // A second create at once: the first is not listed yet but counts.
        let e = pending
            .reserve("pod b", "L", || listed.get(), 600, 1000)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        // A refused create gives its share back at once.
        assert!(pending
            .reserve("pod c", "L", || listed.get(), 400, 1000)
            .is_ok());
        // The first is listed, then ends: its bytes now count once, as listed.
        listed.set(600);
        drop(first);
        assert_eq!(pending.0.load(Ordering::SeqCst), 0);
        assert!(pending
            .reserve("pod d", "L", || listed.get(), 600, 1000)
            .is_err());
        assert!(pending
            .reserve("pod e", "L", || listed.get(), 400, 1000)
            .is_ok());
    }

    #[test]
    fn concurrent_creates_never_pass_the_budget_together() {
        // 32 threads each try to make a 100-byte object against a 1000-byte
        // budget, all checking before any is listed (the barriers); what
        // they hold plus what is listed never passes it.
        let pending = Arc::new(PendingListBytes::default());
        let listed = Arc::new(AtomicUsize::new(0));
        let (checked, start) = (
            Arc::new(std::sync::Barrier::new(32)),
            Arc::new(std::sync::Barrier::new(32)),
        );
        let made: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..32)
                .map(|i| {
                    let (pending, listed) = (pending.clone(), listed.clone());
                    let (checked, start) = (checked.clone(), start.clone());
                    s.spawn(move || {
                        let what = format!("pod {i}");
                        start.wait();
                        let hold = pending.reserve(
                            &what,
                            "L",
                            || listed.load(Ordering::SeqCst),
                            100,
                            1000,
                        );
                        // Every thread has checked before any is listed.
                        checked.wait();
                        let Ok(hold) = hold else { return false };
                        listed.fetch_add(100, Ordering::SeqCst);
                        drop(hold);
                        true
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let n = made.iter().filter(|m| **m).count();
        assert_eq!(listed.load(Ordering::SeqCst), n * 100);
        assert!(
            n <= 10,
            "{n} objects of 100 bytes passed a 1000-byte budget"
        );
        assert!(n >= 1);
    }
}
