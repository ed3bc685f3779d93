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

use tonic::Status;

/// The largest CRI request berthd decodes: kubelet's and crictl's own limit
/// for what they send and receive.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
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
/// All labels of one object together (keys and values).
pub const MAX_LABELS_TOTAL: usize = 64 << 10;
/// All annotations of one object together (keys and values).
pub const MAX_ANNOTATIONS_TOTAL: usize = 256 << 10;
/// How much of a caller's string an error message repeats.
pub const ECHO_BYTES: usize = 128;

/// `s` for an error message: at most [`ECHO_BYTES`], control characters
/// escaped (`{:?}`), and the full length named when cut.
pub fn echo(s: &str) -> String {
    if s.len() <= ECHO_BYTES {
        return format!("{s:?}");
    }
    let mut end = ECHO_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &s[..end], s.len())
}

fn too_long(what: &str, field: &str, value: &str, max: usize) -> Status {
    Status::invalid_argument(format!(
        "{what}: {field} {} is longer than {max} bytes",
        echo(value)
    ))
}

/// A metadata field: not longer than `max`.
pub fn field(what: &str, field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(too_long(what, field, value, max));
    }
    Ok(())
}

/// Labels: each key and value bounded, all of them together too.
pub fn labels(what: &str, labels: &HashMap<String, String>) -> Result<(), Status> {
    let mut total = 0;
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
        total += k.len() + v.len();
    }
    if total > MAX_LABELS_TOTAL {
        return Err(Status::invalid_argument(format!(
            "{what}: its {} labels take {total} bytes, more than {MAX_LABELS_TOTAL}",
            labels.len()
        )));
    }
    Ok(())
}

/// Annotations: all of them together bounded (Kubernetes' limit).
pub fn annotations(what: &str, annotations: &HashMap<String, String>) -> Result<(), Status> {
    let total: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ANNOTATIONS_TOTAL {
        return Err(Status::invalid_argument(format!(
            "{what}: its {} annotations take {total} bytes, more than {MAX_ANNOTATIONS_TOTAL}",
            annotations.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_is_bounded_and_escaped() {
        assert_eq!(echo("web"), "\"web\"");
        let long = "é".repeat(1000);
        let e = echo(&long);
        assert!(e.len() < 200 && e.ends_with("(2000 bytes)"), "{e}");
        assert_eq!(echo("a\u{1b}[31m"), "\"a\\u{1b}[31m\"");
    }

    #[test]
    fn labels_and_annotations() {
        let mut l = HashMap::from([("app".to_string(), "web".to_string())]);
        assert!(labels("pod p", &l).is_ok());
        l.insert("k".repeat(MAX_LABEL_KEY + 1), String::new());
        let e = labels("pod p", &l).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().len() < 400, "{}", e.message());
        let many: HashMap<String, String> = (0..20_000)
            .map(|i| (format!("k{i}"), "v".repeat(10)))
            .collect();
        assert!(labels("pod p", &many)
            .unwrap_err()
            .message()
            .contains("20000 labels"));
        let big = HashMap::from([("a".to_string(), "x".repeat(MAX_ANNOTATIONS_TOTAL))]);
        assert!(annotations("pod p", &big).is_err());
        let ok = HashMap::from([("a".to_string(), "x".repeat(MAX_ANNOTATIONS_TOTAL - 1))]);
        assert!(annotations("pod p", &ok).is_ok());
    }
}
