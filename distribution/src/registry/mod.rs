//! The registry client: the distribution API (manifests, blobs, uploads) over
//! reqwest, with berth's own host resolution (containerd's hosts.toml), token
//! and basic auth, size limits and no-progress timeouts. oci-client was
//! checked and set aside: it reads manifests without a size limit, has no
//! mirror/hosts.toml model and no per-host headers (see the issue note).

pub mod auth;
mod client;

pub use auth::Credentials;
pub use client::{BlobBody, Endpoint, RegistryClient, RegistryError, Repository};
