//! berth's content-addressed blob store.
//!
//! Blobs live at `<root>/blobs/sha256/<hex>` and are only ever created by
//! renaming a fully written, sha256-verified and fsynced ingest file into
//! place, so a crash can never leave a blob that a restart would trust but
//! that is wrong. In-progress writes live under `<root>/ingest/` and can be
//! resumed after a crash or a dropped connection. The API is synchronous
//! (`std::io`); the daemon calls it from blocking threads.
//!
//! The store knows nothing of images: it stores bytes by digest.

mod digest;
mod error;
mod store;

pub use digest::Digest;
pub use error::{Error, Result};
pub use store::{ContentStore, Expected, Info, IngestStatus, Reader, Space, Usage, Writer};

#[cfg(test)]
mod tests;
