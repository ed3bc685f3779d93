//! The distribution client: how berth names images (`reference`), where it
//! fetches them from (`hosts`: containerd's `hosts.toml` mirrors, TLS and
//! credentials), the registry HTTP API with its token auth (`registry`), and
//! the OCI/Docker image-spec documents it reads (`oci`). No daemon types:
//! the content store and the pull orchestration live in berthd.

pub mod hosts;
pub mod oci;
pub mod reference;
pub mod registry;
