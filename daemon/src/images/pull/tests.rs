use super::*;

#[test]
fn the_platforms_named_in_an_error_are_bounded() {
    let manifests: Vec<serde_json::Value> = (0..10_000)
        .map(|i| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{:064x}", i),
                "size": 1,
                "platform": {"os": "linux", "architecture": format!("arch{i}\u{1b}[31m")},
            })
        })
        .collect();
    let index: oci::Index = serde_json::from_value(serde_json::json!({
        "schemaVersion": 2,
        "manifests": manifests,
    }))
    .unwrap();
    let s = platforms_of(&index);
    assert!(s.len() < 1024, "{} bytes", s.len());
    assert!(s.ends_with("and 9984 more"), "{s}");
    assert!(!s.contains('\u{1b}'), "{s}");
    assert!(s.starts_with("\"linux/arch0\\u{1b}[31m\""), "{s}");
}
