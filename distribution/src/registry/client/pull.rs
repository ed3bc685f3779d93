//! Reading from a repository: manifests by tag or digest (tags only on
//! resolve-capable hosts) and blob streams, resumable by range.

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};
use tracing::warn;

use super::read_limited;
use super::{BlobBody, Endpoint, RegistryError, Repository};

impl Repository {
    /// Fetches a manifest or index by tag or digest. Returns the media type,
    /// the digest (verified when asked by digest) and the body. Tags are only
    /// resolved on hosts with the "resolve" capability.
    pub async fn get_manifest(
        &self,
        object: &str,
        what: &str,
    ) -> Result<(String, String, Bytes), RegistryError> {
        let by_digest = by_digest(object);
        let mut last = None;
        for ep in &self.endpoints {
            if !ep.host.can_fetch(by_digest) {
                continue;
            }
            match self.get_manifest_from(ep, object, what).await {
                Ok(r) => return Ok(r),
                Err(e) if e.try_next_host() => {
                    warn!(host = %ep.host.host, error = %e, "manifest fetch failed; trying next host");
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            RegistryError::Config(format!(
                "{what}: no configured host can {} it",
                if by_digest { "pull" } else { "resolve" }
            ))
        }))
    }

    async fn get_manifest_from(
        &self,
        ep: &Endpoint,
        object: &str,
        what: &str,
    ) -> Result<(String, String, Bytes), RegistryError> {
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT,
            HeaderValue::from_str(&crate::oci::MANIFEST_ACCEPT.join(", "))
                .map_err(|e| RegistryError::Config(e.to_string()))?,
        );
        let suffix = format!("/{}/manifests/{}", self.path, object);
        let resp = self.send(ep, Method::GET, &suffix, h, None, what).await?;
        let resp = Self::check_status(&ep.host.host, what, resp).await?;
        let header_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let limit = self.client.max_manifest;
        let body = read_limited(resp, limit, self.client.pace(&ep.host.host, what), || {
            RegistryError::TooLarge {
                what: format!("{what}: manifest"),
                limit,
            }
        })
        .await?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if by_digest(object) && digest != object {
            return Err(RegistryError::DigestMismatch {
                what: format!("{what}: manifest"),
                expected: object.into(),
                actual: digest,
            });
        }
        // The document's own mediaType wins over the header (registries vary).
        let media_type = crate::oci::sniff_media_type(&body)
            .or(header_type)
            .ok_or_else(|| RegistryError::Protocol {
                what: what.into(),
                cause: "manifest is not a JSON document with a media type".into(),
            })?;
        Ok((media_type, digest, body))
    }

    /// Starts a blob download at `offset` (a Range request when non-zero).
    /// The caller verifies the digest while writing.
    pub async fn get_blob(
        &self,
        digest: &str,
        offset: u64,
        what: &str,
    ) -> Result<BlobBody, RegistryError> {
        let mut last = None;
        for ep in &self.endpoints {
            if !ep.host.can_fetch(true) {
                continue;
            }
            let mut h = HeaderMap::new();
            if offset > 0 {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                    h.insert(RANGE, v);
                }
            }
            let suffix = format!("/{}/blobs/{}", self.path, digest);
            let resp = match self.send(ep, Method::GET, &suffix, h, None, what).await {
                Ok(r) => r,
                Err(e) if e.try_next_host() => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let resp = match Self::check_status(&ep.host.host, what, resp).await {
                Ok(r) => r,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let partial = resp.status() == StatusCode::PARTIAL_CONTENT;
            let start = if partial { offset } else { 0 };
            let ranges = partial
                || resp
                    .headers()
                    .get(reqwest::header::ACCEPT_RANGES)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.split(',').any(|u| u.trim().eq_ignore_ascii_case("bytes")));
            let total = resp.content_length().map(|l| l + start);
            let pace = self.client.pace(&ep.host.host, what);
            let stream =
                futures::stream::unfold(Some((resp.bytes_stream(), pace)), |state| async move {
                    let (mut body, mut pace) = state?;
                    match pace.next(&mut body).await {
                        Ok(Some(chunk)) => Some((Ok(chunk), Some((body, pace)))),
                        Ok(None) => None,
                        // An error ends the body.
                        Err(e) => Some((Err(e), None)),
                    }
                });
            return Ok(BlobBody {
                offset: start,
                total,
                ranges,
                host: ep.host.host.clone(),
                stream: Box::pin(stream),
            });
        }
        Err(last.unwrap_or_else(|| {
            RegistryError::Config(format!("{what}: no configured host can pull it"))
        }))
    }
}

/// Tags cannot contain ':', digests always do.
fn by_digest(object: &str) -> bool {
    object.contains(':')
}
