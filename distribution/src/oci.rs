//! The parts of the OCI image spec (and Docker schema2) berth reads: media
//! types, descriptors, manifests, indexes and the image config. Parsing is
//! lenient about unknown fields but strict about the ones berth relies on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_NONDIST: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NONDIST_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_LAYER_NONDIST_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Accept header values for manifest requests: every type berth can use, so a
/// registry never converts to schema1 nor hides an OCI manifest (see HOST.md).
pub const MANIFEST_ACCEPT: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

pub fn is_config(media_type: &str) -> bool {
    media_type == OCI_CONFIG || media_type == DOCKER_CONFIG
}

/// Layer compression as named by the media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        OCI_LAYER | OCI_LAYER_NONDIST | DOCKER_LAYER => Some(Compression::None),
        OCI_LAYER_GZIP | OCI_LAYER_NONDIST_GZIP | DOCKER_LAYER_GZIP | DOCKER_FOREIGN_LAYER => {
            Some(Compression::Gzip)
        }
        OCI_LAYER_ZSTD | OCI_LAYER_NONDIST_ZSTD => Some(Compression::Zstd),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: i64,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: i64,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// Just enough of the image config for unpacking and display.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The media type a JSON document declares, falling back to sniffing its shape
/// (old registries omit `mediaType` in OCI documents).
pub fn sniff_media_type(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        // Only their presence counts; skipped as `Index`/`Manifest` skip
        // unknown fields, so a document those parse always sniffs.
        manifests: Option<serde::de::IgnoredAny>,
        config: Option<serde::de::IgnoredAny>,
    }
    let p: Probe = serde_json::from_slice(body).ok()?;
    if let Some(mt) = p.media_type {
        return Some(mt);
    }
    if p.manifests.is_some() {
        Some(OCI_INDEX.into())
    } else if p.config.is_some() {
        Some(OCI_MANIFEST.into())
    } else {
        None
    }
}

/// The platform berth runs on, in OCI terms.
pub fn host_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform {
        architecture: arch.into(),
        os: "linux".into(),
        variant: if arch == "arm64" {
            Some("v8".into())
        } else {
            None
        },
        os_version: None,
    }
}

/// Parses `os/arch[/variant]`.
pub fn parse_platform(s: &str) -> Option<Platform> {
    let mut parts = s.split('/');
    let os = parts.next().filter(|p| !p.is_empty())?;
    let arch = parts.next().filter(|p| !p.is_empty())?;
    let variant = parts.next().map(str::to_string);
    if parts.next().is_some() {
        return None;
    }
    Some(Platform {
        architecture: arch.into(),
        os: os.into(),
        variant,
        os_version: None,
    })
}

/// Whether an index entry's platform satisfies the wanted one. A missing
/// variant on either side matches (arm64 images often omit "v8").
pub fn platform_matches(want: &Platform, have: &Platform) -> bool {
    want.os == have.os
        && want.architecture == have.architecture
        && match (&want.variant, &have.variant) {
            (Some(w), Some(h)) => w == h,
            _ => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_parsing_and_matching() {
        let p = parse_platform("linux/arm64/v8").unwrap();
        assert_eq!(p.architecture, "arm64");
        assert!(parse_platform("linux").is_none());
        assert!(parse_platform("a/b/c/d").is_none());
        let amd = parse_platform("linux/amd64").unwrap();
        assert!(platform_matches(&amd, &amd));
        assert!(!platform_matches(&amd, &p));
        let arm = parse_platform("linux/arm64").unwrap();
        assert!(platform_matches(&arm, &p));
    }

    #[test]
    fn sniffs_documents() {
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(OCI_INDEX)
        );
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"mediaType":"x/y","config":{}}"#).as_deref(),
            Some("x/y")
        );
        assert_eq!(sniff_media_type(b"not json"), None);
        // Found by the image_json fuzz target: invalid UTF-8 in a field
        // nothing reads made the sniff fail on an index that parses.
        let body = b"{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"a\",\"x\":\"\xff\",\"digest\":\"d\",\"size\":1}]}";
        assert!(serde_json::from_slice::<Index>(body).is_ok());
        assert_eq!(sniff_media_type(body).as_deref(), Some(OCI_INDEX));
    }
}
