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

use super::error::{CriError, Result};
pub use crate::config::{
    MAX_ANNOTATIONS_TOTAL, MAX_LABELS_TOTAL, MAX_LIST_BYTES, MAX_MESSAGE_BYTES,
};

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
/// `adding` more with it) larger than `max`: kubelet could never list again.
pub fn list_budget(
    what: &str,
    list: &str,
    listing: usize,
    adding: usize,
    max: usize,
) -> Result<()> {
    if listing + adding > max {
        return Err(CriError::resource_exhausted(
            what,
            format!(
                "its labels and annotations ({adding} bytes) would make {list} {} bytes, \
                 more than {max} ([cri] max_list_bytes; kubelet refuses replies over 16 MiB): \
                 remove objects or make their labels and annotations smaller",
                listing + adding
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(list_budget("pod p", "ListPodSandbox", 0, adding, 4096).is_ok());
        let e = list_budget("pod p", "ListPodSandbox", 3500, adding, 4096).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.to_string().contains("max_list_bytes"), "{e}");
    }
}
