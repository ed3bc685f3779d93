//! Writing to a repository: blob existence checks, blob uploads, manifests.

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;

use super::connect_error;
use super::{Endpoint, RegistryError, Repository};

impl Repository {
    /// The first endpoint allowed to push (the upstream server by default).
    fn push_endpoint(&self, what: &str) -> Result<&Endpoint, RegistryError> {
        self.endpoints
            .iter()
            .find(|e| e.host.can_push())
            .ok_or_else(|| RegistryError::Config(format!("{what}: no configured host allows push")))
    }

    pub async fn blob_exists(&self, digest: &str, what: &str) -> Result<bool, RegistryError> {
        let ep = self.push_endpoint(what)?;
        let suffix = format!("/{}/blobs/{}", self.path, digest);
        let resp = self
            .send(ep, Method::HEAD, &suffix, HeaderMap::new(), None, what)
            .await?;
        Ok(resp.status().is_success())
    }

    /// Uploads a blob in one monolithic PUT after opening an upload session.
    pub async fn put_blob(
        &self,
        digest: &str,
        size: u64,
        body: reqwest::Body,
        what: &str,
    ) -> Result<(), RegistryError> {
        let ep = self.push_endpoint(what)?;
        let suffix = format!("/{}/blobs/uploads/", self.path);
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::CONTENT_LENGTH, HeaderValue::from(0));
        let resp = self
            .send(ep, Method::POST, &suffix, h, Some(Bytes::new()), what)
            .await?;
        let resp = Self::check_status(&ep.host.host, what, resp).await?;
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Protocol {
                what: what.into(),
                cause: "upload session without a Location header".into(),
            })?
            .to_string();
        let sep = if location.contains('?') { '&' } else { '?' };
        let http = self.client.http(&ep.host, what)?;
        let url = if location.starts_with("http://") || location.starts_with("https://") {
            format!("{location}{sep}digest={digest}")
        } else {
            format!(
                "{}://{}{location}{sep}digest={digest}",
                ep.host.scheme, ep.host.host
            )
        };
        let mut req = http
            .put(&url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(body);
        if let Some(a) = self.cached_auth(&(ep.host.host.clone(), self.scope())) {
            req = req.header(AUTHORIZATION, a);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| connect_error(&ep.host.host, what, &e, self.client.no_progress))?;
        Self::check_status(&ep.host.host, what, resp).await?;
        Ok(())
    }

    pub async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        body: Bytes,
        what: &str,
    ) -> Result<(), RegistryError> {
        let ep = self.push_endpoint(what)?;
        let suffix = format!("/{}/manifests/{}", self.path, reference);
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|e| RegistryError::Protocol {
                what: what.into(),
                cause: format!("bad media type: {e}"),
            })?,
        );
        let resp = self
            .send(ep, Method::PUT, &suffix, h, Some(body), what)
            .await?;
        Self::check_status(&ep.host.host, what, resp).await?;
        Ok(())
    }
}
