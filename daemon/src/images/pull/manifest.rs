//! Manifests and indexes: fetching (size-limited, digest-verified), storing,
//! and choosing the platform's manifest from an index.

use berth_distribution::oci::{self, Descriptor, Platform};
use berth_distribution::registry::Repository;
use bytes::Bytes;
use content_store::Digest;

use crate::images::error::{blocking, ImageError};
use crate::images::gc::Lease;
use crate::images::ImageService;

impl ImageService {
    /// Writes a small document (already fetched and verified) to the store.
    pub(super) async fn store_document(
        &self,
        lease: &Lease,
        name: &str,
        digest: &str,
        body: Bytes,
    ) -> Result<(), ImageError> {
        lease.add(digest).await;
        let d = Digest::parse(digest).map_err(ImageError::content(name))?;
        let content = self.content.clone();
        let image = name.to_string();
        blocking(move || {
            content
                .write_blob(&body, Some(&d))
                .map(|_| ())
                .map_err(ImageError::content(&image))
        })
        .await
    }

    /// Fetches a manifest or config by descriptor (local copy first), verified
    /// and size-limited.
    pub(super) async fn fetch_document(
        &self,
        repo: &Repository,
        lease: &Lease,
        name: &str,
        desc: &Descriptor,
    ) -> Result<Bytes, ImageError> {
        let (limit, key) = if oci::is_config(&desc.media_type) {
            (self.config.pull.max_config_bytes, "pull.max_config_bytes")
        } else {
            (
                self.config.pull.max_manifest_bytes,
                "pull.max_manifest_bytes",
            )
        };
        if desc.size < 0 {
            return Err(ImageError::BadImage {
                image: name.into(),
                reason: format!("{} declares a negative size {}", desc.digest, desc.size),
            });
        }
        // A bound like every other: ResourceExhausted, as the registry's own
        // answer past it (RegistryError::TooLarge) is.
        if desc.size as u64 > limit {
            return Err(ImageError::OverLimit {
                image: name.into(),
                reason: format!(
                    "{} of {} bytes is larger than the limit of {limit} ({key})",
                    desc.digest, desc.size
                ),
            });
        }
        let d = Digest::parse(&desc.digest).map_err(ImageError::content(name))?;
        lease.add(&desc.digest).await;
        if !self.content.exists(&d) && !oci::is_config(&desc.media_type) {
            // A manifest arrives whole and verified: keep it, no need to read it back.
            let (_, digest, body) =
                repo.get_manifest(&desc.digest, name)
                    .await
                    .map_err(|source| ImageError::Registry {
                        image: name.into(),
                        source,
                    })?;
            crate::metrics::global()
                .pull_bytes
                .inc_by(body.len() as u64);
            self.store_document(lease, name, &digest, body.clone())
                .await?;
            return Ok(body);
        }
        if !self.content.exists(&d) {
            self.fetch_blob(repo, lease, name, desc, None).await?;
        }
        let content = self.content.clone();
        let image = name.to_string();
        let body = blocking(move || {
            content
                .read_all(&d, limit)
                .map_err(ImageError::content(&image))
        })
        .await?;
        Ok(Bytes::from(body))
    }
}

/// Picks the index entry for a platform: an exact variant match first.
pub fn select_platform(index: &oci::Index, want: &Platform) -> Option<Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| oci::platform_matches(want, p))
        })
        .collect();
    candidates
        .iter()
        .find(|m| m.platform.as_ref().and_then(|p| p.variant.as_ref()) == want.variant.as_ref())
        .or_else(|| candidates.first())
        .map(|d| (*d).clone())
}

/// The platforms an index offers, for an error: each once, escaped and cut,
/// at most [`PLATFORMS_SHOWN`] (an index of 10,000 entries made an error too
/// large for a client's header limit).
pub(super) fn platforms_of(index: &oci::Index) -> String {
    let mut seen: Vec<String> = Vec::new();
    let mut more = 0;
    for p in index.manifests.iter().filter_map(|m| m.platform.as_ref()) {
        let shown = format!("{}/{}", p.os, p.architecture);
        let shown = berth_sysutil::echo(&shown);
        if seen.contains(&shown) {
            continue;
        }
        if seen.len() < PLATFORMS_SHOWN {
            seen.push(shown);
        } else {
            more += 1;
        }
    }
    let mut out = seen.join(", ");
    if more > 0 {
        out.push_str(&format!(" and {more} more"));
    }
    out
}

/// How many platforms a "no manifest for platform" error names.
const PLATFORMS_SHOWN: usize = 16;
